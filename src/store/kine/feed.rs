//! kine's change feed: rows by id. kine writes through one SQLite connection at
//! a time, and ids come from AUTOINCREMENT inside the writing transaction, so
//! rows commit in id order: a read transaction that sees revision M (`max(id)`,
//! or `sqlite_sequence` when compaction deleted the newest rows) sees every row up to M. Inside one read transaction the feed
//! 1. reads the compact revision (`compact_rev_key`'s `prev_revision`);
//! 2. if it passed the id shipped last, rows never shipped may be gone, so it
//!    asks for a full backup;
//! 3. otherwise ships the rows with `id` in `(last, max]`, every column as it is.

use std::io::Write;

use anyhow::{Context, Result, bail};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::live::LiveDb;
use super::row::KineRow;
use super::{compact_revision, kine_revision};
use crate::increment::feed::{Feed, FullReason, Poll};
use crate::increment::format::{Header, Writer};

const ROWS_AFTER: &str =
    "SELECT id, name, created, deleted, create_revision, prev_revision, lease, value, old_value
     FROM kine WHERE id > ?1 AND id <= ?2 ORDER BY id";

/// Changes of kine's SQLite database, read through a read-only connection.
pub struct KineFeed {
    source: LiveDb,
    /// The range the open read transaction covers, between `poll` and `write`.
    open: Option<(i64, i64)>,
}

impl KineFeed {
    pub fn new(source: LiveDb) -> Self {
        KineFeed { source, open: None }
    }

    fn conn(&self) -> &Connection {
        self.source.connection()
    }

    /// Ends any read transaction, whatever happened before: one left open
    /// would hold kine's checkpoints back and grow its WAL without bound.
    fn end(&mut self) {
        self.open = None;
        if !self.conn().is_autocommit() {
            // Nothing was written: rolling back a read loses nothing.
            if let Err(err) = self.conn().execute_batch("ROLLBACK") {
                tracing::warn!("end the read of {}: {err}", self.source.path().display());
            }
        }
    }
}

impl Feed for KineFeed {
    fn poll(&mut self, shipped: i64) -> Result<Poll> {
        self.end();
        let shown = self.source.path().display().to_string();
        let context = || format!("read changes of {shown}");
        self.conn()
            .execute_batch("BEGIN DEFERRED")
            .with_context(context)?;
        let read = (|| -> rusqlite::Result<(i64, i64)> {
            let compact = compact_revision(self.conn())?;
            // Rows compaction deleted at the top still count (sqlite_sequence).
            Ok((compact, kine_revision(self.conn())?))
        })();
        let (compact, max) = match read {
            Ok(read) => read,
            Err(err) => {
                self.end();
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
        self.end();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::increment::format::VERSION;
    use crate::manifest::SourceKind;
    use crate::store::kine::apply::tests::database;

    #[test]
    fn a_look_never_leaves_a_read_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA journal_mode=WAL")
            .unwrap();
        let mut feed = KineFeed::new(LiveDb::open(&path).unwrap());
        let changes = Poll::Changes {
            first: 2,
            last: 2,
            compact: 1,
        };
        // Changes found, then stored: the read ends after writing them.
        assert_eq!(feed.poll(1).unwrap(), changes);
        assert!(
            !feed.conn().is_autocommit(),
            "the read stays open until written"
        );
        let mut out = Vec::new();
        let header = Header {
            vcbackup_increment: VERSION,
            kind: SourceKind::Sqlite,
            base: "b".into(),
            first_revision: 2,
            last_revision: 2,
            compact_revision: 1,
        };
        assert_eq!(feed.write(&header, &mut out).unwrap(), 1);
        assert!(feed.conn().is_autocommit());
        // Changes found, then the upload failed: released.
        assert_eq!(feed.poll(1).unwrap(), changes);
        feed.release();
        assert!(feed.conn().is_autocommit());
        // Nothing new, and compaction past the shipped revision: ended at once.
        assert_eq!(feed.poll(2).unwrap(), Poll::Nothing);
        assert!(feed.conn().is_autocommit());
        assert!(matches!(
            feed.poll(0).unwrap(),
            Poll::NeedFull(FullReason::Compacted { .. })
        ));
        assert!(feed.conn().is_autocommit());
    }
}
