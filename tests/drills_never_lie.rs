//! Drills that never lie and chains that never shorten silently (issue 24):
//! a drill's record carries every check it made (the chain too), a key-less
//! pass never clears a full failure, kine's revision is read as a backup
//! records it, a chain restore keeps its revision range, a gap is refused
//! unless asked for, and a forged record does not count.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rusqlite::Connection;

struct Scene {
    dir: tempfile::TempDir,
    db: PathBuf,
    keys: Keys,
}

fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    small_kine_db(&db, 200_000);
    let conn = kine::open(&db).unwrap();
    kine::put(&conn, "compact_rev_key", false, None::<Vec<u8>>);
    let keys = age_keys(dir.path(), "key.txt");
    std::fs::create_dir(dir.path().join("scratch")).unwrap();
    Scene { dir, db, keys }
}

impl Scene {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn dest(&self, name: &str) -> String {
        file_url(&self.path(name))
    }

    fn folder(&self, dest: &str) -> PathBuf {
        self.path(dest).join("demo")
    }

    /// `vcbackup ARGS --name demo --destination DEST`.
    fn cmd(&self, dest: &str, args: &[&str]) -> Command {
        let mut cmd = vcbackup();
        cmd.args(args)
            .args(["--name", "demo", "--destination", &self.dest(dest)]);
        cmd
    }

    fn with_key(&self, dest: &str, args: &[&str]) -> Command {
        let mut cmd = self.cmd(dest, args);
        cmd.arg("--identity").arg(&self.keys.identity);
        cmd
    }

    fn verify(&self, dest: &str, key: bool) -> Command {
        let scratch = self.path("scratch").display().to_string();
        let args = ["verify", "latest", "--scratch-dir", &scratch];
        if key {
            self.with_key(dest, &args)
        } else {
            self.cmd(dest, &args)
        }
    }

    fn backup(&self, db: &Path, dest: &str) -> String {
        ok_stdout(
            self.cmd(dest, &["backup", "--recipient", &self.keys.recipient])
                .arg("--source")
                .arg(db)
                .args(["--vcluster-config", "/none"]),
        )
        .trim()
        .to_string()
    }

    fn restore(&self, dest: &str, to: &Path, args: &[&str]) -> Command {
        let mut cmd = self.with_key(dest, &["restore", "--force"]);
        cmd.arg("--to").arg(to).args(args);
        cmd
    }

    /// `fleet` over every cluster of `dest`: its JSON line for demo, and whether it exited 0.
    fn fleet(&self, dest: &str) -> (serde_json::Value, bool) {
        let out = run(vcbackup().args(["fleet", "--destination", &self.dest(dest), "-o", "json"]));
        let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (all[0].clone(), out.status.success())
    }

    /// A backup of the scene's store and three increments after it, each
    /// after its own writes (waited for on the agent's metric).
    fn chain(&self, dest: &str) -> Vec<String> {
        let mut cmd = self.cmd(dest, &["run", "--recipient", &self.keys.recipient]);
        cmd.arg("--source")
            .arg(&self.db)
            .args(["--incremental-interval", "1s", "--schedule", "@daily"])
            .args(["--vcluster-config", "/none"]);
        let mut daemon = Daemon::start_logged(cmd, &self.path("agent.log"));
        let shipped = "vcbackup_increments_total{result=\"shipped\"}";
        let conn = kine::open(&self.db).unwrap();
        daemon.wait_metric(
            "vcbackup_backups_total{result=\"success\"}",
            1.0,
            Duration::from_secs(60),
        );
        for round in 1..=3 {
            for k in 0..5 {
                kine::put(
                    &conn,
                    &format!("/registry/round/{round}/{k}"),
                    false,
                    b"v".to_vec(),
                );
            }
            daemon.wait_metric(shipped, round as f64, Duration::from_secs(60));
        }
        daemon.terminate();
        let mut increments: Vec<String> = files(&self.folder(dest))
            .into_iter()
            .filter(|n| n.contains(".incr-") && n.ends_with(".zst.age"))
            .collect();
        increments.sort_by_key(|n| first_revision(n));
        assert_eq!(increments.len(), 3, "{increments:?}");
        increments
    }

    /// A copy of destination `from` as `to`.
    fn copy(&self, from: &str, to: &str) {
        let (from, to) = (self.folder(from), self.folder(to));
        std::fs::create_dir_all(&to).unwrap();
        for name in files(&from) {
            std::fs::copy(from.join(&name), to.join(&name)).unwrap();
        }
    }
}

fn first_revision(increment: &str) -> i64 {
    let rest = increment.rsplit_once(".incr-").unwrap().1;
    rest.split('-').nth(1).unwrap().parse().unwrap()
}

fn revision(db: &Path) -> i64 {
    let conn = Connection::open(db).unwrap();
    let max_id: i64 = kine::query_one(&conn, "SELECT max(id) FROM kine", []);
    let seq: i64 = kine::query_one(
        &conn,
        "SELECT seq FROM sqlite_sequence WHERE name = 'kine'",
        [],
    );
    max_id.max(seq)
}

/// The drill records of `folder` as (backup, mode, result).
fn drills(folder: &Path) -> Vec<(String, String)> {
    verify_records(folder)
        .into_iter()
        .map(|(_, mode, result)| (mode, result))
        .collect()
}

#[test]
fn a_failed_chain_drill_is_recorded_as_failed_and_fleet_and_list_say_so() {
    let s = scene();
    let increments = s.chain("good");
    // One flipped byte in the middle increment.
    s.copy("good", "flipped");
    let middle = s.folder("flipped").join(&increments[1]);
    let mut data = std::fs::read(&middle).unwrap();
    let at = data.len() / 2;
    data[at] ^= 0x55;
    std::fs::write(&middle, data).unwrap();
    // The middle increment gone (object and manifest).
    s.copy("good", "gap");
    for name in [increments[1].clone(), format!("{}.json", increments[1])] {
        std::fs::remove_file(s.folder("gap").join(name)).unwrap();
    }
    for dest in ["flipped", "gap"] {
        let err = fails(&mut s.verify(dest, true));
        assert!(err.contains("chain"), "{dest}: {err}");
        assert_eq!(
            drills(&s.folder(dest)),
            [("full".to_string(), "failed".to_string())],
            "{dest}: the record must carry the chain's failure"
        );
        let list = list_json(&s.dest(dest), "demo");
        assert_eq!(list[0]["verify"]["result"], "failed", "{dest}: {list:?}");
        let (fleet, exited_ok) = s.fleet(dest);
        assert_eq!(fleet["status"], "failed", "{dest}: {fleet}");
        assert!(
            !exited_ok,
            "{dest}: fleet must exit non-zero on a failed drill"
        );
    }
    // The good chain's drill passes and says how far the chain goes.
    ok(&mut s.verify("good", true));
    let record = std::fs::read_to_string(
        s.folder("good").join(
            files(&s.folder("good"))
                .into_iter()
                .find(|f| f.contains(".verify-"))
                .unwrap(),
        ),
    )
    .unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    let chain = record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "chain")
        .unwrap_or_else(|| panic!("no chain check in {record}"));
    assert_eq!(chain["result"], "ok");
    assert!(
        chain["detail"].as_str().unwrap().contains("3 increment(s)"),
        "{chain}"
    );
}

#[test]
fn a_key_less_pass_never_clears_a_failed_full_drill() {
    let s = scene();
    // A store with no Kubernetes object: the full drill fails on it.
    let db = s.path("empty.db");
    let conn = kine::open(&db).unwrap();
    kine::put(&conn, "compact_rev_key", false, None::<Vec<u8>>);
    kine::put(&conn, "/other/thing", false, b"v".to_vec());
    drop(conn);
    s.backup(&db, "d");
    let err = fails(&mut s.verify("d", true));
    assert!(err.contains("kine-registry-keys"), "{err}");
    ok(&mut s.verify("d", false));
    let mut seen = drills(&s.folder("d"));
    seen.sort();
    assert_eq!(
        seen,
        [
            ("full".to_string(), "failed".to_string()),
            ("keyless".to_string(), "ok".to_string())
        ]
    );
    let (fleet, exited_ok) = s.fleet("d");
    assert_eq!(fleet["status"], "failed", "{fleet}");
    assert_eq!(fleet["last_verify"]["mode"], "full", "{fleet}");
    assert!(!exited_ok);
    let list = list_json(&s.dest("d"), "demo");
    assert_eq!(list[0]["verify"]["result"], "failed", "{list:?}");
    assert_eq!(list[0]["verify"]["mode"], "full", "{list:?}");
    let table = ok_stdout(&mut s.cmd("d", &["list"]));
    assert!(table.contains("FAILED"), "{table}");
}

#[test]
fn a_store_whose_newest_rows_were_compacted_passes_its_drill() {
    let s = scene();
    let top = revision(&s.db);
    let conn = Connection::open(&s.db).unwrap();
    conn.execute("DELETE FROM kine WHERE id > ?1", [top - 10])
        .unwrap();
    drop(conn);
    assert_eq!(revision(&s.db), top, "sqlite_sequence keeps the revision");
    let name = s.backup(&s.db, "d");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.folder("d").join(format!("{name}.json"))).unwrap())
            .unwrap();
    assert_eq!(manifest["revision"], top);
    let out = ok_stdout(&mut s.verify("d", true));
    assert!(out.starts_with("ok "), "{out}");
}

#[test]
fn a_chain_restore_keeps_the_revisions_its_increment_covered() {
    let s = scene();
    let mut cmd = s.cmd("d", &["run", "--recipient", &s.keys.recipient]);
    cmd.arg("--source")
        .arg(&s.db)
        .args(["--incremental-interval", "1s", "--schedule", "@daily"])
        .args(["--vcluster-config", "/none"]);
    let mut daemon = Daemon::start_logged(cmd, &s.path("agent.log"));
    daemon.wait_metric(
        "vcbackup_backups_total{result=\"success\"}",
        1.0,
        Duration::from_secs(60),
    );
    // One transaction: 100 rows written, the newest 10 deleted (compacted) again.
    let before = revision(&s.db);
    let mut conn = kine::open(&s.db).unwrap();
    let tx = conn.transaction().unwrap();
    for k in 0..100 {
        kine::put(&tx, &format!("/registry/burst/{k}"), false, b"v".to_vec());
    }
    tx.execute("DELETE FROM kine WHERE id > ?1", [before + 90])
        .unwrap();
    tx.commit().unwrap();
    let live = revision(&s.db);
    assert_eq!(live, before + 100);
    daemon.wait_metric(
        "vcbackup_increments_total{result=\"shipped\"}",
        1.0,
        Duration::from_secs(60),
    );
    daemon.terminate();
    let kept = s.path("kept.db");
    ok(&mut s.restore("d", &kept, &["--bump-revision", "0"]));
    assert_eq!(revision(&kept), live, "kine would hand out revisions again");
    let bumped = s.path("bumped.db");
    ok(&mut s.restore("d", &bumped, &[]));
    assert!(revision(&bumped) >= live + 1000, "{}", revision(&bumped));
}

#[test]
fn a_gap_in_a_chain_is_refused_unless_asked_for() {
    let s = scene();
    let increments = s.chain("good");
    let middle = &increments[1];
    let target = s.path("target.db");
    let damages: [(&str, Vec<String>); 3] = [
        ("both", vec![middle.clone(), format!("{middle}.json")]),
        ("object", vec![middle.clone()]),
        ("manifest", vec![format!("{middle}.json")]),
    ];
    for (dest, remove) in damages {
        s.copy("good", dest);
        for name in remove {
            std::fs::remove_file(s.folder(dest).join(name)).unwrap();
        }
        std::fs::write(&target, b"what was there").unwrap();
        let err = fails(&mut s.restore(dest, &target, &[]));
        assert!(err.contains("has a gap"), "{dest}: {err}");
        assert!(
            err.contains(&format!("missing before {}", increments[2])),
            "{err}"
        );
        assert!(err.contains("--up-to-gap"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"what was there", "{dest}");
        let archive = s.path("archive.tar.gz");
        let shown = archive.display().to_string();
        let err = fails(&mut s.with_key(dest, &["export", "latest", "-o", &shown]));
        assert!(err.contains("has a gap"), "{dest}: {err}");
        assert!(!archive.exists());
        // Asked for: up to the gap, or to the increment before it by name.
        let before_gap = first_revision(middle) - 1;
        let out = run(&mut s.restore(dest, &target, &["--up-to-gap", "--bump-revision", "0"]));
        assert!(out.status.success(), "{dest}: {out:?}");
        let warned = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(warned.contains("has a gap"), "{warned}");
        assert_eq!(revision(&target), before_gap, "{dest}: up to the gap");
        let named = s.path("named.db");
        ok(&mut s.restore(dest, &named, &[&increments[0], "--bump-revision", "0"]));
        assert_eq!(
            revision(&named),
            before_gap,
            "{dest}: the named increment's end"
        );
        std::fs::remove_file(&named).unwrap();
    }
}

#[test]
fn a_forged_drill_record_does_not_count() {
    let s = scene();
    let name = s.backup(&s.db, "d");
    let folder = s.folder("d");
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    std::fs::write(
        folder.join(format!("{name}.verify-{stamp}-full-ok.json")),
        b"{}",
    )
    .unwrap();
    let out = run(&mut s.cmd("d", &["list", "-o", "json"]));
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["verify"], serde_json::Value::Null, "{list}");
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(warned.contains("ignoring drill record"), "{warned}");
    // A real drill's record counts.
    ok(&mut s.verify("d", true));
    let list = list_json(&s.dest("d"), "demo");
    assert_eq!(list[0]["verify"]["result"], "ok", "{list:?}");
}
