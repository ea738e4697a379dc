//! kine's SQLite database, copied while the control plane writes to it.
//!
//! One read transaction streams every page of one snapshot through the
//! `sqlite_dbpage` virtual table. In WAL mode a reader never blocks the writer
//! (the WAL just grows until we finish), nothing is written to the source, and
//! no temporary copy exists. `sqlite3 .backup` and `Backup::step` restart
//! whenever another connection writes, so on a live control plane they never
//! finish (see docs/design-notes).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OpenFlags};

use super::{SnapshotFacts, Source};
use crate::manifest::SourceKind;

const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

pub struct SqliteSource {
    path: PathBuf,
    conn: Connection,
}

impl SqliteSource {
    pub fn open(path: &Path) -> Result<Self> {
        check_header(path)?;
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
        })
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
        let revision = if self.has_kine_table()? {
            self.conn
                .query_row("SELECT max(id) FROM kine", [], |row| row.get(0))?
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

    fn describe(&self) -> String {
        self.path.display().to_string()
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
