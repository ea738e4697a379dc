//! kine's live database, opened read-only beside the control plane that
//! writes it, and the files SQLite leaves beside it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use super::SQLITE_HEADER;

/// A read-only connection to the live database: the snapshot and the change
/// feed read through it.
pub struct LiveDb {
    path: PathBuf,
    conn: Connection,
    /// After `conn`: fields drop in order, so this runs once the connection is closed.
    _leftovers: Leftovers,
}

impl LiveDb {
    pub fn open(path: &Path) -> Result<Self> {
        check_header(path)?;
        // Declared before `conn`, so an early return closes the connection first.
        let leftovers = Leftovers::before_open(path);
        // Read-only: we never create tables, change the journal mode or checkpoint.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("open source {}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))
            .with_context(|| format!("open source {}", path.display()))?;
        let journal_mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .with_context(|| format!("read source {}", path.display()))?;
        if !journal_mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                source = %path.display(),
                journal_mode,
                "source is not in WAL mode: writers wait while the copy runs (kine always uses WAL)"
            );
        }
        Ok(LiveDb {
            path: path.to_path_buf(),
            conn,
            _leftovers: leftovers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The read-only connection: continuous backups read rows through it.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// The `-wal` and `-shm` files SQLite creates beside a WAL database when none
/// is there, even for a read-only connection, and leaves behind because a
/// read-only connection never deletes them. They are the control plane's
/// whenever it has the database open, so we remove only those that were absent
/// before we opened it, and only when no connection holds a lock on the database:
/// SQLite's own last-connection check (`sqlite3WalClose`). Every connection in WAL
/// mode holds a shared lock on the database file, and opens the `-wal` only while
/// holding it; our exclusive lock, held while we unlink, keeps any new one out.
struct Leftovers {
    database: PathBuf,
    /// Suffix and path of each file that was not there before we opened.
    absent: Vec<(&'static str, PathBuf)>,
}

impl Leftovers {
    fn before_open(database: &Path) -> Self {
        let absent = ["-wal", "-shm"]
            .into_iter()
            .map(|suffix| {
                let mut name = database.as_os_str().to_owned();
                name.push(suffix);
                (suffix, PathBuf::from(name))
            })
            .filter(|(_, p)| matches!(p.try_exists(), Ok(false)))
            .collect();
        Leftovers {
            database: database.to_path_buf(),
            absent,
        }
    }

    fn remove(&self) -> std::io::Result<()> {
        let created: Vec<&(&str, PathBuf)> = self
            .absent
            .iter()
            .filter(|(_, p)| p.symlink_metadata().is_ok())
            .collect();
        if created.is_empty() {
            return Ok(());
        }
        // An exclusive fcntl lock needs a writable descriptor; nothing is written.
        let database = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.database)?;
        if rustix::fs::fcntl_lock(
            &database,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_err()
        {
            tracing::debug!(source = %self.database.display(), "another connection has the source open; its -wal and -shm stay");
            return Ok(());
        }
        for (suffix, path) in created {
            // A read-only connection never writes the WAL. One with frames got them from a
            // writer that came and went while we read: they are commits, not ours to drop.
            if *suffix == "-wal" && path.metadata().is_ok_and(|m| m.len() > 0) {
                continue;
            }
            match std::fs::remove_file(path) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                _ => {}
            }
        }
        // Closing `database` releases the lock (every fcntl lock this process holds on the
        // file, but our connection is closed by now, so that takes none from anyone).
        Ok(())
    }
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        if let Err(err) = self.remove() {
            tracing::warn!(source = %self.database.display(), "could not remove the -wal and -shm files SQLite created beside the source: {err}");
        }
    }
}

/// Names a missing or foreign file before SQLite's generic "file is not a database".
fn check_header(path: &Path) -> Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("open source {}", path.display()))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        bail!(
            "open source {}: is a directory, expected kine's state.db",
            path.display()
        );
    }
    let mut header = [0u8; 16];
    match file.read_exact(&mut header) {
        Ok(()) if &header == SQLITE_HEADER => Ok(()),
        _ => bail!("open source {}: not an SQLite database", path.display()),
    }
}
