//! A kine restore no client can be misled by: the restored store's revision
//! ends above the live store's (when one is replaced) and the backup's, and
//! the compact revision is raised to it, so watches relist instead of silently
//! missing the rollback. `--bump-revision 0` still writes the backed-up bytes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rusqlite::{Connection, params};

fn vcbackup() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vcbackup"));
    for (key, _) in std::env::vars() {
        if key.starts_with("VCBACKUP_") || key == "VCLUSTER_NAME" {
            cmd.env_remove(key);
        }
    }
    cmd.env("VCBACKUP_LOG", "warn");
    cmd
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const SCHEMA: &str = "
CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER, created INTEGER,
  deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB,
  old_value BLOB);
CREATE INDEX kine_name_index ON kine (name);
CREATE UNIQUE INDEX kine_name_prev_revision_uindex ON kine (name, prev_revision);
";

/// Appends `n` kine-shaped revisions (creates, then updates of the same keys).
fn write(conn: &mut Connection, n: usize) {
    let tx = conn.transaction().unwrap();
    for _ in 0..n {
        let next: i64 = tx
            .query_row("SELECT coalesce(max(id), 0) + 1 FROM kine", [], |r| {
                r.get(0)
            })
            .unwrap();
        let name = format!("/registry/leases/l{}", next % 40);
        let prev: i64 = tx
            .query_row(
                "SELECT coalesce(max(id), 0) FROM kine WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )
            .unwrap();
        tx.execute(
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
             VALUES (?1, ?2, 0, 0, ?3, 0, ?4, NULL)",
            params![name, prev == 0, prev, format!("v{next}")],
        )
        .unwrap();
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
    let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    Facts {
        max_id: one("SELECT max(id) FROM kine"),
        compact: one(
            "SELECT coalesce(max(prev_revision), 0) FROM kine WHERE name = 'compact_rev_key'",
        ),
        integrity: conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap(),
        duplicates: one(
            "SELECT count(*) FROM (SELECT 1 FROM kine GROUP BY name, prev_revision HAVING count(*) > 1)",
        ),
    }
}

/// A kine database with a compact_rev_key row and a backup of it; returns the
/// destination and the backup's revision.
fn backed_up(dir: &Path, db: &Path) -> (String, i64) {
    let mut conn = Connection::open(db).unwrap();
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(SCHEMA).unwrap();
    write(&mut conn, 300);
    compact_rev_key(&conn, 120);
    write(&mut conn, 200);
    drop(conn);
    let destination = format!("file://{}", dir.join("backups").display());
    ok(vcbackup()
        .args(["backup", "--name", "demo", "--no-encryption", "--source"])
        .arg(db)
        .args(["--destination", &destination]));
    let listed = ok(vcbackup().args([
        "list",
        "-o",
        "json",
        "--name",
        "demo",
        "--destination",
        &destination,
    ]));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
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
    let live_seq: i64 = conn
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'kine'",
            [],
            |r| r.get(0),
        )
        .unwrap();
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
    let rows: i64 = conn
        .query_row(
            "SELECT count(*) FROM kine WHERE id <= ?1",
            [backup_rev],
            |r| r.get(0),
        )
        .unwrap();
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
    let listed = ok(vcbackup().args([
        "list",
        "-o",
        "json",
        "--name",
        "demo",
        "--destination",
        &destination,
    ]));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&exact).unwrap()));
    assert_eq!(listed[0]["sha256"], digest);
}
