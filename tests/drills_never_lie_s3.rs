//! Drills that never lie, on S3 (s3s-fs, SigV4 checked): a chain with a gap
//! is refused by restore and fails its drill, whose record says so, `fleet`
//! and `list` see the failure, and `list` ignores a forged record. The same
//! rules as `tests/drills_never_lie.rs`, through the S3 backend.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::*;
use common::*;

const ACCESS_KEY: &str = "AKIAVCBACKUPTEST0024";
const SECRET: &str = "vcbackup/test/secret/drills-never-lie-24";

fn destination(endpoint: &str) -> String {
    format!("s3://{BUCKET}/team/prod?endpoint={endpoint}&force-path-style=true&region={REGION}")
}

/// The stored objects of cluster demo, as files in s3s-fs's root.
fn folder(server: &S3sFs) -> PathBuf {
    server.root.path().join(BUCKET).join("team/prod/demo")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn first_revision(increment: &str) -> i64 {
    let rest = increment.rsplit_once(".incr-").unwrap().1;
    rest.split('-').nth(1).unwrap().parse().unwrap()
}

#[test]
fn on_s3_a_gap_is_refused_the_drill_fails_and_a_forged_record_does_not_count() {
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    let mut scene = Scene::new();
    scene.static_keys(ACCESS_KEY, SECRET);
    let db = scene.path("state.db");
    small_kine_db(&db, 200_000);
    let conn = kine::open(&db).unwrap();
    kine::put(&conn, "compact_rev_key", false, None::<Vec<u8>>);
    let keys = age_keys(scene.dir.path(), "key.txt");
    let identity = keys.identity.display().to_string();
    let dest = destination(&server.endpoint());
    let source = db.display().to_string();

    // A backup and three increments, each after its own writes.
    let port = free_port();
    let mut daemon = scene
        .command(&["run", "--name", "demo", "--destination", &dest])
        .args(["--source", &source, "--recipient", &keys.recipient])
        .args(["--schedule", "@daily", "--incremental-interval", "1s"])
        .args(["--vcluster-config", "/none"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let sample = |name: &str| {
        let (_, text) = http_get(port, "/metrics")?;
        metric(&text, name)
    };
    wait_for("the base backup", Duration::from_secs(60), || {
        sample("vcbackup_backups_total{result=\"success\"}").filter(|v| *v >= 1.0)
    });
    for round in 1..=3 {
        for k in 0..5 {
            kine::put(
                &conn,
                &format!("/registry/s3/{round}/{k}"),
                false,
                b"v".to_vec(),
            );
        }
        wait_for("an increment shipped", Duration::from_secs(60), || {
            sample("vcbackup_increments_total{result=\"shipped\"}").filter(|v| *v >= round as f64)
        });
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    let mut increments: Vec<String> = names(&folder(&server))
        .into_iter()
        .filter(|n| n.contains(".incr-") && n.ends_with(".zst.age"))
        .collect();
    increments.sort_by_key(|n| first_revision(n));
    assert_eq!(increments.len(), 3, "{increments:?}");
    // `<base stem>.incr-…`: the base is `<base stem>.zst.age`.
    let backup = format!("{}.zst.age", increments[0].split(".incr-").next().unwrap());

    // A forged full-ok record (3 bytes) is not a drill.
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    let forged = folder(&server).join(format!("{backup}.verify-{stamp}-full-ok.json"));
    std::fs::write(&forged, b"{}").unwrap();
    let list_json = [
        "list",
        "-o",
        "json",
        "--name",
        "demo",
        "--destination",
        &dest,
    ];
    let out = scene.run(&list_json);
    assert!(out.status.success(), "{out:?}");
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["name"], backup.as_str(), "{list}");
    assert_eq!(list[0]["verify"], serde_json::Value::Null, "{list}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ignoring drill record"));
    std::fs::remove_file(&forged).unwrap();

    // The middle increment's manifest gone: a gap.
    std::fs::remove_file(folder(&server).join(format!("{}.json", increments[1]))).unwrap();
    let target = scene.path("restored.db");
    std::fs::write(&target, b"what was there").unwrap();
    let target_arg = target.display().to_string();
    let err = scene.fails(&[
        "restore",
        "latest",
        "--force",
        "--to",
        &target_arg,
        "--identity",
        &identity,
        "--name",
        "demo",
        "--destination",
        &dest,
    ]);
    assert!(err.contains("has a gap"), "{err}");
    assert!(err.contains("--up-to-gap"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"what was there");

    // The drill fails on the chain, and its record (stored through S3) says so.
    let scratch = scene.path("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let err = scene.fails(&[
        "verify",
        "latest",
        "--identity",
        &identity,
        "--scratch-dir",
        &scratch.display().to_string(),
        "--name",
        "demo",
        "--destination",
        &dest,
    ]);
    assert!(err.contains("check chain failed"), "{err}");
    let records: Vec<String> = names(&folder(&server))
        .into_iter()
        .filter(|n| n.contains(".verify-"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].ends_with("-full-failed.json"), "{records:?}");
    let list = scene.ok(&list_json);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["verify"]["result"], "failed", "{list}");
    let out = scene.run(&["fleet", "-o", "json", "--destination", &dest]);
    assert!(
        !out.status.success(),
        "fleet must exit non-zero on a failed drill"
    );
    let fleet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fleet[0]["status"], "failed", "{fleet}");
}
