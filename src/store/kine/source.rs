//! kine's SQLite database, copied while the control plane writes to it.
//!
//! One read transaction streams every page of one snapshot through the
//! `sqlite_dbpage` virtual table. In WAL mode a reader never blocks the writer
//! (the WAL just grows until we finish), nothing is written to the source, and
//! no temporary copy exists. `sqlite3 .backup` and `Backup::step` restart
//! whenever another connection writes, so on a live control plane they never
//! finish: measured before the first line of code, on a live kine writer.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::live::LiveDb;
use super::{has_kine_table, kine_revision};
use crate::increment::feed::Feed;
use crate::manifest::{SemanticRevision, SourceKind};
use crate::store::{SnapshotFacts, Source};

/// kine's live database as a backup source.
pub struct SqliteSource {
    db: LiveDb,
}

impl SqliteSource {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(SqliteSource {
            db: LiveDb::open(path)?,
        })
    }

    fn has_kine_table(&self) -> Result<bool> {
        Ok(has_kine_table(self.db.connection())?)
    }

    fn copy_pages(&self, out: &mut dyn Write) -> Result<SnapshotFacts> {
        // The first read fixes the snapshot that every later read in this transaction sees.
        // Rows compaction deleted at the top still count: increments continue above them.
        let revision = if self.has_kine_table()? {
            Some(kine_revision(self.db.connection())?)
        } else {
            tracing::warn!(source = %self.db.path().display(), "source has no kine table; backing it up as a plain SQLite database");
            None
        };
        let mut pages = self
            .db
            .connection()
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
    fn semantic_revision(&mut self) -> Result<Option<SemanticRevision>> {
        let context = || format!("read the semantic revision of {}", self.db.path().display());
        if !self.has_kine_table().with_context(context)? {
            return Ok(None);
        }
        self.db
            .connection()
            .execute_batch("BEGIN DEFERRED")
            .with_context(context)?;
        let read = super::semantic::semantic_revision(self.db.connection());
        let ended = self.db.connection().execute_batch("COMMIT");
        let semantic = read.with_context(context)?;
        ended.with_context(context)?;
        Ok(Some(semantic))
    }

    fn describe(&self) -> String {
        self.db.path().display().to_string()
    }

    fn changes_after(self: Box<Self>, _revision: i64) -> Result<Option<Box<dyn Feed>>> {
        if !self.has_kine_table()? {
            return Ok(None);
        }
        Ok(Some(Box::new(super::feed::KineFeed::new(self.db))))
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<SnapshotFacts> {
        let context = || format!("copy source {}", self.db.path().display());
        self.db
            .connection()
            .execute_batch("BEGIN DEFERRED")
            .with_context(context)?;
        let copied = self.copy_pages(out);
        // Ends the read transaction, letting checkpoints past our snapshot again.
        let ended = self.db.connection().execute_batch("COMMIT");
        let facts = copied.with_context(context)?;
        ended.with_context(context)?;
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};

    use std::path::PathBuf;

    use rusqlite::Connection;

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
