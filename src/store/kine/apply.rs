//! Applying kine's increments: the rows go into the restored database with
//! their ids; the compact revision is raised to the highest one the increments
//! saw (kine updates that row in place, so `id > last` alone would miss it).
//! Rows that the live store compacted after they were shipped stay in the
//! restored one: superseded history, which kine's reads skip and its next
//! compaction removes.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

use super::row::KineRow;
use super::{compact_revision, raise_compact_revision, raise_sequence};
use crate::increment::format::Reader;

/// Applies increments to a restored kine database, one transaction for all,
/// so a bad increment leaves the file as the base was.
pub struct KineApply {
    conn: Connection,
    applied: i64,
    compact: i64,
}

impl KineApply {
    /// Opens the restored database at `path`, whose revision is `revision`.
    pub fn open(path: &Path, revision: i64, what: &str) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("open restored {what}"))?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .with_context(|| format!("open restored {what}"))?;
        let compact = compact_revision(&conn).with_context(|| format!("read restored {what}"))?;
        Ok(KineApply {
            conn,
            applied: revision,
            compact,
        })
    }

    /// Inserts the rows of one increment above the revision applied so far
    /// (rows at or below it came in an overlapping increment). Returns the
    /// number of rows inserted.
    pub fn apply(&mut self, plaintext: impl BufRead, what: &str) -> Result<u64> {
        let mut reader = Reader::open(plaintext, what)?;
        let header = reader.header.clone();
        if header.first_revision > self.applied + 1 {
            bail!(
                "apply {what}: it starts at revision {}, but the restore reached only {}: a missing increment",
                header.first_revision,
                self.applied
            );
        }
        let mut insert = self
            .conn
            .prepare_cached(
                "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .with_context(|| format!("apply {what}"))?;
        let mut inserted = 0;
        while let Some(row) = reader.next::<KineRow>()? {
            // Shipped before, in an increment that overlapped this one.
            if row.id <= self.applied {
                continue;
            }
            insert
                .execute(rusqlite::params![
                    row.id,
                    row.name,
                    row.created,
                    row.deleted,
                    row.create_revision,
                    row.prev_revision,
                    row.lease,
                    row.value,
                    row.old_value
                ])
                .with_context(|| format!("apply {what}: insert row {}", row.id))?;
            inserted += 1;
        }
        self.applied = self.applied.max(header.last_revision);
        self.compact = self.compact.max(header.compact_revision);
        Ok(inserted)
    }

    /// Raises the compact revision to the highest one the increments saw and
    /// kine's revision to the end of their range, and commits.
    pub fn finish(self, what: &str) -> Result<i64> {
        let done = (|| -> rusqlite::Result<()> {
            raise_compact_revision(&self.conn, self.compact)?;
            // Rows compacted away at the top of the range still took their
            // revisions: without this kine would hand them out again.
            raise_sequence(&self.conn, self.applied)?;
            self.conn.execute_batch("COMMIT")
        })();
        done.with_context(|| format!("apply the increments to restored {what}"))?;
        Ok(self.applied)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::increment::format::{Header, VERSION, Writer};
    use crate::manifest::SourceKind;

    fn row(id: i64, name: &str) -> KineRow {
        KineRow {
            id,
            name: name.into(),
            created: 1,
            deleted: 0,
            create_revision: 0,
            prev_revision: 0,
            lease: 0,
            value: Some(vec![1, 2, 3]),
            old_value: None,
        }
    }

    fn increment(first: i64, last: i64, compact: i64, rows: &[KineRow]) -> Vec<u8> {
        let header = Header {
            vcbackup_increment: VERSION,
            kind: SourceKind::Sqlite,
            base: "b".into(),
            first_revision: first,
            last_revision: last,
            compact_revision: compact,
        };
        let mut out = Vec::new();
        let mut writer = Writer::start(&mut out, &header).unwrap();
        for row in rows {
            writer.change(row).unwrap();
        }
        writer.finish().unwrap();
        out
    }

    pub(in crate::store::kine) fn database(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER, created INTEGER,
               deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER,
               value BLOB, old_value BLOB);
             CREATE UNIQUE INDEX kine_name_prev_revision_uindex ON kine (name, prev_revision);
             INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease)
               VALUES ('compact_rev_key', 1, 0, 0, 1, 0), ('/a', 1, 0, 0, 0, 0);",
        )
        .unwrap();
        path
    }

    fn ids(path: &Path) -> Vec<i64> {
        let conn = Connection::open(path).unwrap();
        let mut statement = conn.prepare("SELECT id FROM kine ORDER BY id").unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn overlapping_increments_apply_once_and_raise_the_compact_revision() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let mut apply = KineApply::open(&path, 2, "base").unwrap();
        let first = increment(3, 5, 2, &[row(3, "/b"), row(5, "/c")]);
        assert_eq!(apply.apply(&first[..], "first").unwrap(), 2);
        // A second writer shipped 4..=7: 5 is there already, 4 was a hole.
        let second = increment(4, 7, 4, &[row(5, "/c"), row(7, "/d")]);
        assert_eq!(apply.apply(&second[..], "second").unwrap(), 1);
        assert_eq!(apply.finish("base").unwrap(), 7);
        assert_eq!(ids(&path), [1, 2, 3, 5, 7]);
        let conn = Connection::open(&path).unwrap();
        let compact: i64 = compact_revision(&conn).unwrap();
        assert_eq!(compact, 4);
        let seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'kine'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 7, "AUTOINCREMENT continues above the restored rows");
    }

    #[test]
    fn the_revision_reaches_the_end_of_the_range_when_its_top_rows_were_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let mut apply = KineApply::open(&path, 2, "base").unwrap();
        // Rows 3..=10 were written, 6..=10 deleted before the increment was read.
        let compacted = increment(3, 10, 1, &[row(3, "/b"), row(5, "/c")]);
        assert_eq!(apply.apply(&compacted[..], "compacted").unwrap(), 2);
        assert_eq!(apply.finish("base").unwrap(), 10);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(crate::store::kine::kine_revision(&conn).unwrap(), 10);
    }

    #[test]
    fn a_missing_increment_or_a_stray_row_fails_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let mut apply = KineApply::open(&path, 2, "base").unwrap();
        let after_a_hole = increment(5, 6, 0, &[row(5, "/c")]);
        let err = apply.apply(&after_a_hole[..], "late").unwrap_err();
        assert!(
            format!("{err:#}").contains("a missing increment"),
            "{err:#}"
        );
        let stray = increment(3, 4, 0, &[row(3, "/b"), row(9, "/x")]);
        let err = apply.apply(&stray[..], "stray").unwrap_err();
        assert!(
            format!("{err:#}").contains("change at revision 9 is out of order"),
            "{err:#}"
        );
        // Dropped without finish: the transaction rolls back.
        drop(apply);
        assert_eq!(ids(&path), [1, 2]);
    }
}
