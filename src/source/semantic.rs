//! The semantic revision: the newest change to anything a user cares about.
//!
//! An idle control plane still writes: leader-election Leases, Events, the
//! apiserver's `compact_rev_key`, kine's `gap-*` rows. The semantic revision
//! looks past those prefixes and is two numbers:
//!
//! - `revision`: the newest revision of a key outside them;
//! - `keys`: how many keys (etcd) or rows (kine) lie outside them.
//!
//! The count is what catches a delete. In etcd a deleted key simply vanishes
//! from range reads, so the newest remaining revision need not move. In kine a
//! delete is a new row, but compaction removes it together with the key's
//! older rows once it is old enough, and then the newest row is the one from
//! before. Either way the count drops. A create or an update always brings a
//! revision above every earlier one. So if neither number moved, nothing
//! outside the ignored prefixes changed; compaction of superseded rows can
//! move the kine count without a change, which only costs one extra backup.

use rusqlite::Connection;

use crate::manifest::SemanticRevision;

/// Written by an idle control plane on its own; never restored meaningfully either.
pub const IGNORED_PREFIXES: [&[u8]; 4] = [
    b"/registry/events/",
    b"/registry/leases/",
    b"compact_rev_key",
    b"gap-",
];

pub fn ignored(name: &[u8]) -> bool {
    IGNORED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The key ranges outside the ignored prefixes, `[start, end)`; `None`: to the last key.
pub fn ranges() -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut prefixes: Vec<&[u8]> = IGNORED_PREFIXES.to_vec();
    prefixes.sort();
    let mut ranges = Vec::new();
    // etcd refuses an empty key: the smallest key is "\0".
    let mut start = vec![0u8];
    for prefix in prefixes {
        ranges.push((start, Some(prefix.to_vec())));
        start = prefix_end(prefix);
    }
    ranges.push((start, None));
    ranges
}

/// The first key after every key with `prefix`, as etcd's `WithPrefix` computes it.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// kine's semantic revision, from one read transaction of `conn`: the newest
/// row outside the ignored prefixes, found by walking ids down from the top
/// (the primary key: only the idle writes since the last real change are
/// passed), and the number of rows outside them, counted in kine's name
/// index range by range.
pub fn kine(conn: &Connection) -> rusqlite::Result<SemanticRevision> {
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
    fn ranges_cover_everything_but_the_ignored_prefixes() {
        let ranges = ranges();
        let inside = |key: &[u8]| {
            ranges
                .iter()
                .any(|(s, e)| key >= s.as_slice() && e.as_ref().is_none_or(|e| key < e.as_slice()))
        };
        for key in [
            &b"/registry/configmaps/default/x"[..],
            b"/registry/events",
            b"/registry/events0",
            b"/registry/leasesx/a",
            b"/registry/leases",
            b"compact_rev_kez",
            b"gap",
            b"gap.1",
            b"zzz",
            b"\x01",
        ] {
            assert!(
                inside(key) && !ignored(key),
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
        for key in [
            &b"/registry/events/default/e1"[..],
            b"/registry/leases/kube-system/kube-scheduler",
            b"compact_rev_key",
            b"compact_rev_key_apiserver",
            b"gap-17",
        ] {
            assert!(
                !inside(key) && ignored(key),
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

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
        let before = kine(&conn).unwrap();
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
        assert_eq!(kine(&conn).unwrap(), before, "idle writes");
        // Deleting `a`, then compaction removing the delete row and `a` itself:
        // the newest row is `b` again, but one row fewer.
        let delete = put("/registry/configmaps/default/a");
        assert_eq!(kine(&conn).unwrap().revision, delete);
        conn.execute("DELETE FROM kine WHERE id IN (?1, ?2)", [a, delete])
            .unwrap();
        let after = kine(&conn).unwrap();
        assert_eq!(after.revision, before.revision);
        assert_ne!(after, before);
    }
}
