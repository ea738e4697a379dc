//! A kine restore no client can be misled by: the restored store's revision
//! ends above the live store's (when one is replaced) and the backup's, and
//! the compact revision is raised to it, so watches relist instead of silently
//! missing the rollback. `--bump-revision 0` still writes the backed-up bytes.

mod common;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use common::kine;
use common::*;

/// Appends `n` kine-shaped revisions (creates, then updates of the same keys).
fn write(conn: &mut Connection, n: usize) {
    let tx = conn.transaction().unwrap();
    for _ in 0..n {
        let next: i64 = kine::query_one(&tx, "SELECT coalesce(max(id), 0) + 1 FROM kine", []);
        let name = format!("/registry/leases/l{}", next % 40);
        kine::put(&tx, &name, false, format!("v{next}"));
    }
    tx.commit().unwrap();
}

fn compact_rev_key(conn: &Connection, prev: i64) {
    conn.execute(
        "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value)
         VALUES ('compact_rev_key', 1, 0, 0, ?1, 0, x'')",
        [prev],
    )
    .unwrap();
}

struct Facts {
    max_id: i64,
    compact: i64,
    integrity: String,
    duplicates: i64,
}

fn facts(path: &Path) -> Facts {
    let conn = Connection::open(path).unwrap();
    let one = |sql: &str| -> i64 { kine::query_one(&conn, sql, []) };
    Facts {
        max_id: one("SELECT max(id) FROM kine"),
        compact: one(
            "SELECT coalesce(max(prev_revision), 0) FROM kine WHERE name = 'compact_rev_key'",
        ),
        integrity: kine::query_one(&conn, "PRAGMA integrity_check", []),
        duplicates: one(
            "SELECT count(*) FROM (SELECT 1 FROM kine GROUP BY name, prev_revision HAVING count(*) > 1)",
        ),
    }
}

/// A kine database with a compact_rev_key row and a backup of it; returns the
/// destination and the backup's revision.
fn backed_up(dir: &Path, db: &Path) -> (String, i64) {
    let mut conn = kine::open(db).unwrap();
    write(&mut conn, 300);
    compact_rev_key(&conn, 120);
    write(&mut conn, 200);
    drop(conn);
    let destination = file_url(&dir.join("backups"));
    ok(vcbackup()
        .args(["backup", "--name", "demo", "--no-encryption", "--source"])
        .arg(db)
        .args(["--destination", &destination]));
    let listed = list_json(&destination, "demo");
    (destination, listed[0]["revision"].as_i64().unwrap())
}

fn restore(destination: &str, to: &Path, extra: &[&str]) {
    ok(vcbackup()
        .args([
            "restore",
            "latest",
            "--name",
            "demo",
            "--destination",
            destination,
            "--to",
        ])
        .arg(to)
        .args(extra));
}

#[test]
fn replacing_a_live_store_5000_revisions_ahead_ends_above_it_and_compacts() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("state.db");
    let (destination, backup_rev) = backed_up(tmp.path(), &db);
    // The live store goes on 5,000 revisions, and its newest rows are then
    // compacted away: only sqlite_sequence still knows how far it went.
    let mut conn = Connection::open(&db).unwrap();
    write(&mut conn, 5000);
    let live_seq: i64 = kine::query_one(
        &conn,
        "SELECT seq FROM sqlite_sequence WHERE name = 'kine'",
        [],
    );
    conn.execute("DELETE FROM kine WHERE id > ?1", [live_seq - 10])
        .unwrap();
    drop(conn);
    assert_eq!(live_seq, backup_rev + 5000);

    restore(&destination, &db, &["--force"]);
    let restored = facts(&db);
    assert!(
        restored.max_id > live_seq,
        "restored revision {} is not above the live {live_seq}",
        restored.max_id
    );
    assert_eq!(restored.max_id, live_seq + 1000);
    assert!(
        restored.compact >= live_seq,
        "compact revision {}",
        restored.compact
    );
    assert_eq!(restored.integrity, "ok");
    assert_eq!(restored.duplicates, 0);
    // The keys are the backup's, not the live store's.
    let conn = Connection::open(&db).unwrap();
    let rows: i64 = kine::query_one(
        &conn,
        "SELECT count(*) FROM kine WHERE id <= ?1",
        [backup_rev],
    );
    assert_eq!(rows, backup_rev);
}

#[test]
fn without_a_live_store_the_bump_is_relative_to_the_backup_and_zero_keeps_the_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("state.db");
    let (destination, backup_rev) = backed_up(tmp.path(), &db);
    let fresh: PathBuf = tmp.path().join("fresh.db");
    restore(&destination, &fresh, &[]);
    let restored = facts(&fresh);
    assert_eq!(restored.max_id, backup_rev + 1000);
    assert!(
        restored.compact >= backup_rev + 1000,
        "compact revision {}",
        restored.compact
    );
    assert_eq!(restored.integrity, "ok");
    assert_eq!(restored.duplicates, 0);

    let exact = tmp.path().join("exact.db");
    restore(&destination, &exact, &["--bump-revision", "0"]);
    let listed = list_json(&destination, "demo");
    assert_eq!(listed[0]["sha256"], sha256(&exact));
}
