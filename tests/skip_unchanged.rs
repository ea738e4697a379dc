//! `run --skip-unchanged` against a live kine database and a real etcd, each
//! with a writer that does what an idle control plane does (renew Leases,
//! write Events, move compact_rev_key, leave gap rows, compact): ten scheduled
//! runs upload nothing, one ConfigMap change gives a backup at the next run,
//! and so does a delete, even once compaction has removed it.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);
const UNCHANGED: &str = r#"vcbackup_backups_total{result="unchanged"}"#;
const SUCCESS: &str = r#"vcbackup_backups_total{result="success"}"#;

fn run_daemon(source: &str, dest: &Path, extra: &[&str]) -> Daemon {
    let mut cmd = vcbackup();
    cmd.args([
        "run",
        "--name",
        "demo",
        "--no-encryption",
        "--skip-unchanged",
    ])
    .args(["--source", source, "--destination", &file_url(dest)])
    .args(["--schedule", "@every 2s", "--vcluster-config", "/none"])
    .args(extra);
    Daemon::start(cmd)
}

fn backups(dest: &Path) -> Vec<String> {
    files(&dest.join("demo"))
        .into_iter()
        .filter(|f| f.ends_with(".zst"))
        .collect()
}

fn marks(dest: &Path) -> Vec<String> {
    files(&dest.join("demo"))
        .into_iter()
        .filter(|f| f.contains(".unchanged-"))
        .collect()
}

/// Ten scheduled runs while only the idle writer writes: no upload. `taken`:
/// the backups this daemon process took so far.
fn ten_idle_runs(daemon: &Daemon, dest: &Path, backups_before: usize, taken: usize) {
    let start = daemon.metric(UNCHANGED).unwrap_or(0.0);
    daemon.wait_metric(UNCHANGED, start + 10.0, LONG);
    assert_eq!(backups(dest).len(), backups_before, "an upload while idle");
    assert_eq!(daemon.metric(SUCCESS), Some(taken as f64));
    // One mark on the newest backup, replaced at each check (older backups' go with them).
    let newest = backups(dest).pop().unwrap();
    let on_newest = marks(dest)
        .into_iter()
        .filter(|m| m.starts_with(&format!("{newest}.unchanged-")))
        .count();
    assert_eq!(on_newest, 1, "{:?}", files(&dest.join("demo")));
}

/// kine as an idle control plane leaves it busy: lease renewals, events, the
/// compact revision, gap rows, and compaction of superseded lease rows.
fn kine_idle_step(conn: &rusqlite::Connection, n: u64) {
    let lease = ["kube-controller-manager", "kube-scheduler"][n as usize % 2];
    let name = format!("/registry/leases/kube-system/{lease}");
    conn.execute(
        "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
         VALUES (?1, 0, 0, 1, (SELECT coalesce(max(id), 0) FROM kine WHERE name = ?1), 0, x'01', x'')",
        [&name],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
         VALUES (?1, 1, 0, 0, 0, 3600, x'02', x'')",
        [format!("/registry/events/default/pod.{n:x}")],
    )
    .unwrap();
    conn.execute(
        "UPDATE kine SET prev_revision = (SELECT max(id) FROM kine) WHERE name = 'compact_rev_key'",
        [],
    )
    .unwrap();
    if n.is_multiple_of(7) {
        let next: i64 = conn
            .query_row("SELECT max(id) + 1 FROM kine", [], |r| r.get(0))
            .unwrap();
        conn.execute(
            "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)
             VALUES (?1, 'gap-' || ?1, 0, 1, 0, 0, 0, NULL, NULL)",
            [next],
        )
        .unwrap();
    }
    if n.is_multiple_of(10) {
        conn.execute(
            "DELETE FROM kine WHERE name LIKE '/registry/leases/%' AND id NOT IN
               (SELECT max(id) FROM kine WHERE name LIKE '/registry/leases/%' GROUP BY name)",
            [],
        )
        .unwrap();
    }
}

/// A connection as kine holds one: WAL, waiting for the other writers.
fn connect(db: &Path) -> rusqlite::Connection {
    let conn = kine::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// A create, or an update pointing at the key's previous row, as kine writes them.
fn kine_put(conn: &rusqlite::Connection, name: &str) {
    conn.execute(
        "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
         VALUES (?1, 1, 0, 0, (SELECT coalesce(max(id), 0) FROM kine WHERE name = ?1), 0, x'03', x'')",
        [name],
    )
    .unwrap();
}

#[test]
fn kine_idle_writes_upload_nothing_and_a_change_or_a_compacted_delete_backs_up() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let dest = dir.path().join("dest");
    {
        let conn = kine::open(&db).unwrap();
        for i in 0..20 {
            kine_put(&conn, &format!("/registry/configmaps/default/cm-{i}"));
        }
        conn.execute(
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
             VALUES ('compact_rev_key', 1, 0, 0, 0, 0, NULL, NULL)",
            [],
        )
        .unwrap();
    }
    let path = db.clone();
    let writer = Repeating::start(Duration::from_millis(50), move |n| {
        kine_idle_step(&connect(&path), n);
    });
    let source = db.display().to_string();
    let daemon = run_daemon(&source, &dest, &[]);
    daemon.wait_metric(SUCCESS, 1.0, LONG);
    ten_idle_runs(&daemon, &dest, 1, 1);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dest.join("demo")
                .join(format!("{}.json", backups(&dest)[0])),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["semantic_revision"]["keys"], 20, "{manifest}");

    // Freshness follows the checks, not the backup: /metrics, a restarted agent, fleet.
    let status = daemon.status();
    let checked =
        chrono::DateTime::parse_from_rfc3339(status["last_unchanged"]["time"].as_str().unwrap())
            .unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(manifest["started"].as_str().unwrap()).unwrap();
    assert!(checked - created > chrono::TimeDelta::seconds(15));
    let fresh = daemon
        .metric("vcbackup_last_success_timestamp_seconds")
        .unwrap();
    assert!(fresh >= checked.timestamp() as f64, "{fresh} vs {checked}");
    drop(daemon);
    let restarted = run_daemon(&source, &dest, &["--no-catch-up"]);
    // The agent is ready before its first listing of storage (readiness never
    // waits on storage), so the seeded value comes a moment later.
    let seeded = restarted.wait_for(
        "a restart to read the mark",
        Duration::from_secs(20),
        || {
            restarted
                .metric("vcbackup_last_success_timestamp_seconds")
                .filter(|seeded| *seeded >= checked.timestamp() as f64 - 1.0)
        },
    );
    assert!(seeded <= fresh + 60.0, "a restart reads the mark: {seeded}");
    let fleet: serde_json::Value = serde_json::from_slice(
        &ok(vcbackup().args([
            "fleet",
            "-o",
            "json",
            "--max-age",
            "10s",
            "--destination",
            &file_url(&dest),
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(
        fleet[0]["status"], "unverified",
        "current, though the backup is old: {fleet}"
    );
    let daemon = restarted;

    // One ConfigMap changes: a backup at the next run, then idle again.
    kine_put(&connect(&db), "/registry/configmaps/default/cm-3");
    daemon.wait_metric(SUCCESS, 1.0, LONG);
    ten_idle_runs(&daemon, &dest, 2, 1);

    // A delete that compaction removed, with the deleted key's rows, before any run saw it:
    // the newest row is as before, one row fewer.
    {
        let mut conn = connect(&db);
        let tx = conn.transaction().unwrap();
        kine_put(&tx, "/registry/configmaps/default/cm-7");
        tx.execute(
            "DELETE FROM kine WHERE name = '/registry/configmaps/default/cm-7'",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    daemon.wait_metric(SUCCESS, 2.0, LONG);
    assert_eq!(backups(&dest).len(), 3);
    drop(writer);
}

#[test]
fn max_unchanged_age_forces_real_backups() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let dest = dir.path().join("dest");
    small_kine_db(&db, 50_000);
    let daemon = run_daemon(
        &db.display().to_string(),
        &dest,
        &["--max-unchanged-age", "5s"],
    );
    daemon.wait_metric(UNCHANGED, 1.0, LONG);
    daemon.wait_metric(SUCCESS, 2.0, LONG);
    assert!(backups(&dest).len() >= 2);
}

#[test]
fn etcd_idle_writes_upload_nothing_and_a_change_or_a_delete_backs_up() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Arc::new(Etcd::start(&dir.path().join("etcd")));
    let dest = dir.path().join("dest");
    for i in 0..10 {
        etcd.put(&format!("/registry/configmaps/default/cm-{i}"), "v1");
    }
    let idle = Arc::clone(&etcd);
    let writer = Repeating::start(Duration::from_millis(50), move |n| {
        let lease = ["kube-controller-manager", "kube-scheduler"][n as usize % 2];
        idle.put(
            &format!("/registry/leases/kube-system/{lease}"),
            &format!("renew-{n}"),
        );
        idle.put(&format!("/registry/events/default/pod.{n:x}"), "event");
        idle.put("compact_rev_key", &n.to_string());
        if n % 20 == 19 {
            let status = ok(idle.etcdctl().args(["endpoint", "status", "-w", "json"]));
            let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
            let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
            ok(idle
                .etcdctl()
                .args(["compact", &(revision - 5).to_string()]));
        }
    });
    let daemon = run_daemon(&etcd.endpoint, &dest, &[]);
    daemon.wait_metric(SUCCESS, 1.0, LONG);
    ten_idle_runs(&daemon, &dest, 1, 1);

    etcd.put("/registry/configmaps/default/cm-3", "v2");
    daemon.wait_metric(SUCCESS, 2.0, LONG);
    ten_idle_runs(&daemon, &dest, 2, 2);

    // A delete of a key that is not the newest: only the key count shows it.
    etcd.delete("/registry/configmaps/default/cm-0");
    daemon.wait_metric(SUCCESS, 3.0, LONG);
    assert_eq!(backups(&dest).len(), 3);
    drop(writer);
}
