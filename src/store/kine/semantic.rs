//! kine's semantic revision (see `store::semantic`): the newest row outside
//! the ignored prefixes and how many rows lie outside them.

use rusqlite::Connection;

use crate::manifest::SemanticRevision;
use crate::store::semantic::{ignored, ranges};

/// kine's semantic revision, from one read transaction of `conn`: the newest
/// row outside the ignored prefixes, found by walking ids down from the top
/// (the primary key: only the idle writes since the last real change are
/// passed), and the number of rows outside them, counted in kine's name
/// index range by range.
pub fn semantic_revision(conn: &Connection) -> rusqlite::Result<SemanticRevision> {
    let mut newest = conn.prepare("SELECT id, name FROM kine ORDER BY id DESC")?;
    let mut rows = newest.query([])?;
    let mut revision = 0;
    while let Some(row) = rows.next()? {
        let name = match row.get_ref(1)? {
            rusqlite::types::ValueRef::Text(text) | rusqlite::types::ValueRef::Blob(text) => text,
            _ => b"",
        };
        if !ignored(name) {
            revision = row.get(0)?;
            break;
        }
    }
    drop(rows);
    let mut keys: i64 = 0;
    for (start, end) in ranges() {
        // kine's names are text; "\0" only stands in for etcd's smallest key.
        let start = match start.as_slice() {
            [0] => String::new(),
            start => String::from_utf8_lossy(start).into_owned(),
        };
        keys += match end {
            Some(end) => conn.query_row(
                "SELECT count(*) FROM kine WHERE name >= ?1 AND name < ?2",
                [start, String::from_utf8_lossy(&end).into_owned()],
                |row| row.get::<_, i64>(0),
            )?,
            None => conn.query_row(
                "SELECT count(*) FROM kine WHERE name >= ?1",
                [start],
                |row| row.get::<_, i64>(0),
            )?,
        };
    }
    Ok(SemanticRevision {
        revision,
        keys: u64::try_from(keys).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kine_ignores_idle_writes_and_sees_deletes_after_compaction() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER, created INTEGER,
                deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER,
                value BLOB, old_value BLOB);
             CREATE INDEX kine_name_index ON kine (name);",
        )
        .unwrap();
        let put = |name: &str| {
            conn.execute(
                "INSERT INTO kine (name, created, deleted) VALUES (?1, 1, 0)",
                [name],
            )
            .unwrap();
            conn.last_insert_rowid()
        };
        let a = put("/registry/configmaps/default/a");
        let b = put("/registry/configmaps/default/b");
        let before = semantic_revision(&conn).unwrap();
        assert_eq!(
            before,
            SemanticRevision {
                revision: b,
                keys: 2
            }
        );
        put("/registry/leases/kube-system/kube-scheduler");
        put("/registry/events/default/e");
        put("compact_rev_key");
        put("gap-99");
        assert_eq!(semantic_revision(&conn).unwrap(), before, "idle writes");
        // Deleting `a`, then compaction removing the delete row and `a` itself:
        // the newest row is `b` again, but one row fewer.
        let delete = put("/registry/configmaps/default/a");
        assert_eq!(semantic_revision(&conn).unwrap().revision, delete);
        conn.execute("DELETE FROM kine WHERE id IN (?1, ?2)", [a, delete])
            .unwrap();
        let after = semantic_revision(&conn).unwrap();
        assert_eq!(after.revision, before.revision);
        assert_ne!(after, before);
    }
}
