//! kine's SQLite database, copied while the control plane writes to it.
//!
//! One read transaction streams every page of one snapshot through the
//! `sqlite_dbpage` virtual table. In WAL mode a reader never blocks the writer
//! (the WAL just grows until we finish), nothing is written to the source, and
//! no temporary copy exists. `sqlite3 .backup` and `Backup::step` restart
//! whenever another connection writes, so on a live control plane they never
//! finish: measured before the first line of code, on a live kine writer.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use super::{SnapshotFacts, Source};
use crate::manifest::SourceKind;

/// The first 16 bytes of every SQLite database file.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

pub struct SqliteSource {
    path: PathBuf,
    conn: Connection,
    /// After `conn`: fields drop in order, so this runs once the connection is closed.
    _leftovers: Leftovers,
}

impl SqliteSource {
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
        Ok(SqliteSource {
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

    fn has_kine_table(&self) -> Result<bool> {
        let count: i64 = self.conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'kine'",
            [],
            |row| row.get(0),
        )?;
        Ok(count > 0)
    }

    fn copy_pages(&self, out: &mut dyn Write) -> Result<SnapshotFacts> {
        // The first read fixes the snapshot that every later read in this transaction sees.
        // Rows compaction deleted at the top still count: increments continue above them.
        let revision = if self.has_kine_table()? {
            Some(super::kine::kine_revision(&self.conn)?)
        } else {
            tracing::warn!(source = %self.path.display(), "source has no kine table; backing it up as a plain SQLite database");
            None
        };
        let mut pages = self
            .conn
            .prepare("SELECT data FROM sqlite_dbpage('main') ORDER BY pgno")
            .context("read pages (is this SQLite built with SQLITE_ENABLE_DBPAGE_VTAB?)")?;
        let mut rows = pages.query([])?;
        while let Some(row) = rows.next()? {
            let page = row.get_ref(0)?.as_blob()?;
            out.write_all(page).context("write snapshot")?;
        }
        Ok(SnapshotFacts {
            revision,
            etcd: None,
        })
    }
}

impl Source for SqliteSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Sqlite
    }

    /// Both numbers from one read transaction, so they describe one state.
    fn semantic_revision(&mut self) -> Result<Option<crate::manifest::SemanticRevision>> {
        let context = || format!("read the semantic revision of {}", self.path.display());
        if !self.has_kine_table().with_context(context)? {
            return Ok(None);
        }
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .with_context(context)?;
        let read = super::semantic::kine(&self.conn);
        let ended = self.conn.execute_batch("COMMIT");
        let semantic = read.with_context(context)?;
        ended.with_context(context)?;
        Ok(Some(semantic))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn changes_after(
        self: Box<Self>,
        _revision: i64,
    ) -> Result<Option<Box<dyn crate::increment::feed::Feed>>> {
        if !self.has_kine_table()? {
            return Ok(None);
        }
        Ok(Some(Box::new(crate::increment::kine::KineFeed::new(*self))))
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<SnapshotFacts> {
        let context = || format!("copy source {}", self.path.display());
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .with_context(context)?;
        let copied = self.copy_pages(out);
        // Ends the read transaction, letting checkpoints past our snapshot again.
        let ended = self.conn.execute_batch("COMMIT");
        let facts = copied.with_context(context)?;
        ended.with_context(context)?;
        Ok(facts)
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use super::*;

    fn beside(db: &Path, suffix: &str) -> PathBuf {
        PathBuf::from(format!("{}{suffix}", db.display()))
    }

    /// A closed WAL database: SQLite removed its -wal and -shm when it closed.
    fn wal_db(dir: &Path) -> PathBuf {
        let db = dir.join("state.db");
        let conn = Connection::open(&db).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch(
            "CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT);
             INSERT INTO kine (name) VALUES ('first');",
        )
        .unwrap();
        drop(conn);
        assert!(!beside(&db, "-wal").exists() && !beside(&db, "-shm").exists());
        db
    }

    /// Another process: the sqlite3 shell, which scripts/setup installs.
    fn sqlite3(db: &Path) -> Command {
        let mut cmd = Command::new("sqlite3");
        cmd.arg(db);
        cmd
    }

    fn kine_names(db: &Path) -> Vec<String> {
        let conn = Connection::open(db).unwrap();
        let mut stmt = conn.prepare("SELECT name FROM kine ORDER BY id").unwrap();
        stmt.query_map([], |row| row.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    }

    #[test]
    fn reading_a_closed_wal_database_leaves_no_wal_or_shm() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_db(dir.path());
        let mut source = SqliteSource::open(&db).unwrap();
        source.snapshot(&mut Vec::new()).unwrap();
        // SQLite made them, even read-only: the test sees the case it is about.
        assert!(beside(&db, "-wal").exists() && beside(&db, "-shm").exists());
        drop(source);
        let mut files: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["state.db"]);
    }

    #[test]
    fn files_another_process_opened_while_we_read_stay() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_db(dir.path());
        let source = SqliteSource::open(&db).unwrap();
        let mut shell = sqlite3(&db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run sqlite3 (installed by scripts/setup)");
        let mut stdin = shell.stdin.take().unwrap();
        writeln!(stdin, "SELECT count(*) FROM kine;").unwrap();
        let mut line = String::new();
        BufReader::new(shell.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "1");
        // The shell now has the database open in WAL mode, using the -wal and -shm we made.
        drop(source);
        assert!(beside(&db, "-wal").exists() && beside(&db, "-shm").exists());
        writeln!(stdin, "INSERT INTO kine (name) VALUES ('second');").unwrap();
        drop(stdin);
        assert!(shell.wait().unwrap().success());
        assert_eq!(kine_names(&db), ["first", "second"]);
    }

    #[test]
    fn a_wal_holding_commits_of_a_writer_that_came_and_went_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = wal_db(dir.path());
        let source = SqliteSource::open(&db).unwrap();
        // The writer cannot checkpoint on exit while we hold the database open.
        let out = sqlite3(&db)
            .arg("INSERT INTO kine (name) VALUES ('late');")
            .output()
            .expect("run sqlite3 (installed by scripts/setup)");
        assert!(out.status.success(), "{out:?}");
        let wal = beside(&db, "-wal");
        assert!(
            wal.metadata().unwrap().len() > 0,
            "the commit is not in the WAL"
        );
        drop(source);
        assert!(wal.exists(), "a WAL with a commit in it was removed");
        assert_eq!(kine_names(&db), ["first", "late"]);
    }
}
