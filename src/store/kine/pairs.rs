//! kine's SQLite database as key/value pairs (`store::pairs`): for each name its newest row,
//! unless that row is a delete; kine's own bookkeeping rows (`gap-*` fillers,
//! `compact_rev_key*`) are not keys.

use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, params};

use super::{has_kine_table, is_bookkeeping};
use crate::store::pairs::{Pages, Pair, page_full};

/// Each name with its newest row id, from an index on `name` (kine creates
/// two), so no query ever sorts the table.
const NEWEST_FIRST_PAGE: &str = "SELECT name, max(id) FROM kine GROUP BY name ORDER BY name";
const NEWEST_AFTER: &str =
    "SELECT name, max(id) FROM kine WHERE name > ?1 GROUP BY name ORDER BY name";
const ROW: &str = "SELECT deleted, value FROM kine WHERE id = ?1";

pub struct KinePages {
    conn: Connection,
    path: String,
}

impl KinePages {
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        // Read-write, though nothing but an index is written: the file is a
        // private copy, and a read-only open of a WAL database needs its -shm.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("open {shown}"))?;
        let has_kine = has_kine_table(&conn).with_context(|| format!("read {shown}"))?;
        if !has_kine {
            bail!("read {shown}: no kine table, so not kine's database");
        }
        let indexed: i64 = conn
            .query_row(
                "SELECT count(*) FROM pragma_index_list('kine') AS l, pragma_index_info(l.name) AS i
                 WHERE i.seqno = 0 AND i.name = 'name'",
                [],
                |row| row.get(0),
            )
            .with_context(|| format!("read {shown}"))?;
        if indexed == 0 {
            // Without it every page of pairs would sort the whole table again.
            tracing::info!(database = %shown, "kine table has no index on name; adding one to the working copy");
            conn.execute_batch("CREATE INDEX vcbackup_kine_name ON kine (name)")
                .with_context(|| format!("index {shown}"))?;
        }
        Ok(KinePages { conn, path: shown })
    }

    fn page(&self, after: Option<&[u8]>) -> rusqlite::Result<Vec<Pair>> {
        let mut names;
        let mut rows = match after {
            None => {
                names = self.conn.prepare_cached(NEWEST_FIRST_PAGE)?;
                names.query([])?
            }
            Some(after) => {
                names = self.conn.prepare_cached(NEWEST_AFTER)?;
                // kine writes names as text; bind the same type so they compare as text.
                match std::str::from_utf8(after) {
                    Ok(text) => names.query(params![text])?,
                    Err(_) => names.query(params![after])?,
                }
            }
        };
        let mut fetch = self.conn.prepare_cached(ROW)?;
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let key = match row.get_ref(0)? {
                ValueRef::Text(name) | ValueRef::Blob(name) => name.to_vec(),
                ValueRef::Integer(n) => n.to_string().into_bytes(),
                ValueRef::Real(_) | ValueRef::Null => continue,
            };
            if is_bookkeeping(&key) {
                continue;
            }
            let id: i64 = row.get(1)?;
            let (deleted, value) = fetch.query_row([id], |row| {
                let deleted: i64 = row.get::<_, Option<i64>>(0)?.unwrap_or(0);
                let value = match row.get_ref(1)? {
                    ValueRef::Blob(v) | ValueRef::Text(v) => v.to_vec(),
                    _ => Vec::new(),
                };
                Ok((deleted, value))
            })?;
            if deleted != 0 {
                continue;
            }
            bytes += value.len();
            page.push(Pair { key, value });
            if page_full(page.len(), bytes) {
                break;
            }
        }
        Ok(page)
    }
}

impl Pages for KinePages {
    fn next_page(&mut self, after: Option<&[u8]>) -> Result<Vec<Pair>> {
        self.page(after)
            .with_context(|| format!("read keys from {}", self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::open::key_values;

    const SCHEMA: &str = "CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER,
        created INTEGER, deleted INTEGER, create_revision INTEGER, prev_revision INTEGER,
        lease INTEGER, value BLOB, old_value BLOB)";

    fn pairs(path: &Path) -> Vec<(String, Vec<u8>)> {
        let scratch = tempfile::tempdir().unwrap();
        key_values(path, crate::manifest::SourceKind::Sqlite, scratch.path())
            .unwrap()
            .map(|p| {
                let p = p.unwrap();
                (String::from_utf8(p.key).unwrap(), p.value)
            })
            .collect()
    }

    #[test]
    fn newest_row_of_each_name_without_deletes_and_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let rows: [(&str, i64, &[u8]); 8] = [
            ("/registry/b", 0, b"b1"),
            ("/registry/a", 0, b"a1"),
            ("/registry/b", 0, b"b2"),
            ("compact_rev_key", 0, b""),
            ("/registry/gone", 0, b"x"),
            ("/registry/gone", 1, b"x"),
            ("gap-7", 1, b""),
            ("/registry/a", 0, b"a2"),
        ];
        for (name, deleted, value) in rows {
            conn.execute(
                "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value)
                 VALUES (?1, 0, ?2, 0, 0, 0, ?3)",
                params![name, deleted, value],
            )
            .unwrap();
        }
        drop(conn);
        // No index on name: one is added, so pages never sort the table.
        assert_eq!(
            pairs(&path),
            [
                ("/registry/a".to_string(), b"a2".to_vec()),
                ("/registry/b".to_string(), b"b2".to_vec())
            ]
        );
    }

    #[test]
    fn many_pages_of_keys_come_out_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch("CREATE INDEX kine_name_index ON kine (name)")
            .unwrap();
        let tx = conn.transaction().unwrap();
        // Three pages by count, and some values large enough to end a page by size.
        for i in (0..3000).rev() {
            let value = vec![b'v'; if i % 500 == 0 { 3 << 20 } else { 10 }];
            tx.execute(
                "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value)
                 VALUES (?1, 1, 0, 0, 0, 0, ?2)",
                params![format!("/registry/k{i:05}"), value],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        drop(conn);
        let got = pairs(&path);
        assert_eq!(got.len(), 3000);
        for (i, (key, value)) in got.iter().enumerate() {
            assert_eq!(key, &format!("/registry/k{i:05}"));
            assert_eq!(value.len(), if i % 500 == 0 { 3 << 20 } else { 10 });
        }
    }
}
