//! kine's increments: rows by id. kine writes through one SQLite connection at
//! a time, and ids come from AUTOINCREMENT inside the writing transaction, so
//! rows commit in id order: a read transaction that sees revision M (`max(id)`,
//! or `sqlite_sequence` when compaction deleted the newest rows) sees every row up to M. Inside one read transaction the feed
//! 1. reads the compact revision (`compact_rev_key`'s `prev_revision`);
//! 2. if it passed the id shipped last, rows never shipped may be gone, so it
//!    asks for a full backup;
//! 3. otherwise ships the rows with `id` in `(last, max]`, every column as it is.
//!
//! On restore the rows go into the restored database with their ids; the
//! compact revision is raised to the highest one the increments saw (kine
//! updates that row in place, so `id > last` alone would miss it). Rows that
//! the live store compacted after they were shipped stay in the restored one:
//! superseded history, which kine's reads skip and its next compaction removes.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::feed::{Feed, FullReason, Poll};
use super::format::{Header, KineRow, Reader, Writer};
use crate::source::SqliteSource;

const ROWS_AFTER: &str =
    "SELECT id, name, created, deleted, create_revision, prev_revision, lease, value, old_value
     FROM kine WHERE id > ?1 AND id <= ?2 ORDER BY id";

/// Changes of kine's SQLite database, read through a read-only connection.
pub struct KineFeed {
    source: SqliteSource,
    /// The range the open read transaction covers, between `poll` and `write`.
    open: Option<(i64, i64)>,
}

impl KineFeed {
    pub fn new(source: SqliteSource) -> Self {
        KineFeed { source, open: None }
    }

    fn conn(&self) -> &Connection {
        self.source.connection()
    }

    fn end(&mut self) {
        if self.open.take().is_some() {
            // Ends the read; nothing was written, so there is nothing to lose.
            let _ = self.conn().execute_batch("COMMIT");
        }
    }
}

/// The compact revision kine keeps in the one `compact_rev_key` row; 0 before any.
pub fn compact_revision(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce(max(prev_revision), 0) FROM kine WHERE name = 'compact_rev_key'",
        [],
        |row| row.get(0),
    )
}

impl Feed for KineFeed {
    fn poll(&mut self, shipped: i64) -> Result<Poll> {
        self.end();
        let context = || format!("read changes of {}", self.source.path().display());
        self.conn()
            .execute_batch("BEGIN DEFERRED")
            .with_context(context)?;
        let read = (|| -> rusqlite::Result<(i64, i64)> {
            let compact = compact_revision(self.conn())?;
            // Rows compaction deleted at the top still count (sqlite_sequence).
            Ok((compact, crate::source::kine::kine_revision(self.conn())?))
        })();
        let (compact, max) = match read {
            Ok(read) => read,
            Err(err) => {
                let _ = self.conn().execute_batch("COMMIT");
                return Err(err).with_context(context);
            }
        };
        let poll = if compact > shipped {
            Poll::NeedFull(FullReason::Compacted { compact, shipped })
        } else if max < shipped {
            Poll::NeedFull(FullReason::WentBack {
                revision: max,
                shipped,
            })
        } else if max == shipped {
            Poll::Nothing
        } else {
            self.open = Some((shipped, max));
            return Ok(Poll::Changes {
                first: shipped + 1,
                last: max,
                compact,
            });
        };
        self.conn().execute_batch("COMMIT").with_context(context)?;
        Ok(poll)
    }

    fn write(&mut self, header: &Header, out: &mut dyn Write) -> Result<u64> {
        let Some((after, last)) = self.open else {
            bail!("no changes to write: poll first");
        };
        let written = write_rows(self.conn(), after, last, header, out);
        self.end();
        written.with_context(|| format!("read changes of {}", self.source.path().display()))
    }

    fn release(&mut self) {
        self.end();
    }
}

fn write_rows(
    conn: &Connection,
    after: i64,
    last: i64,
    header: &Header,
    out: &mut dyn Write,
) -> Result<u64> {
    let mut writer = Writer::start(out, header)?;
    let mut statement = conn.prepare(ROWS_AFTER)?;
    let mut rows = statement.query([after, last])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let bytes = |i: usize| -> Result<Option<Vec<u8>>> {
            Ok(match row.get_ref(i)? {
                ValueRef::Null => None,
                ValueRef::Blob(b) | ValueRef::Text(b) => Some(b.to_vec()),
                other => bail!(
                    "kine row {id}: column {i} holds {:?}, not bytes",
                    other.data_type()
                ),
            })
        };
        let name = match row.get_ref(1)? {
            ValueRef::Text(t) => String::from_utf8(t.to_vec())
                .with_context(|| format!("kine row {id}: the name is not UTF-8"))?,
            other => bail!(
                "kine row {id}: the name is {:?}, not text",
                other.data_type()
            ),
        };
        let int = |i: usize| -> Result<i64> {
            Ok(row
                .get::<_, Option<i64>>(i)
                .with_context(|| format!("kine row {id}: column {i}"))?
                .unwrap_or(0))
        };
        writer.change(&KineRow {
            id,
            name,
            created: int(2)?,
            deleted: int(3)?,
            create_revision: int(4)?,
            prev_revision: int(5)?,
            lease: int(6)?,
            value: bytes(7)?,
            old_value: bytes(8)?,
        })?;
    }
    writer.finish()
}

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
        let mut last_id = self.applied;
        while let Some(row) = reader.next::<KineRow>()? {
            if row.id <= last_id && row.id > self.applied {
                bail!("apply {what}: row {} is out of order", row.id);
            }
            if row.id > header.last_revision || row.id < header.first_revision {
                bail!(
                    "apply {what}: row {} is outside the increment's revisions {}..={}",
                    row.id,
                    header.first_revision,
                    header.last_revision
                );
            }
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
            last_id = row.id;
            inserted += 1;
        }
        self.applied = self.applied.max(header.last_revision);
        self.compact = self.compact.max(header.compact_revision);
        Ok(inserted)
    }

    /// Raises the compact revision to the highest one the increments saw, and commits.
    pub fn finish(self, what: &str) -> Result<i64> {
        let done = (|| -> rusqlite::Result<()> {
            self.conn.execute(
                "UPDATE kine SET prev_revision = ?1 WHERE name = 'compact_rev_key' AND prev_revision < ?1",
                [self.compact],
            )?;
            self.conn.execute_batch("COMMIT")
        })();
        done.with_context(|| format!("apply the increments to restored {what}"))?;
        Ok(self.applied)
    }
}
