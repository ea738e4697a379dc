//! Continuous backups (`run --incremental-interval`) against a real SQLite
//! writer and a real etcd: what a SIGKILLed agent had shipped, compaction
//! forcing a full backup (and no delete coming back), point-in-time
//! restores, retention by chain, and a crash mid-increment.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use common::*;
use rusqlite::Connection;

struct Scene {
    dir: tempfile::TempDir,
    db: PathBuf,
    dest: String,
    keys: Keys,
}

fn scene(db_bytes: u64) -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    small_kine_db(&db, db_bytes);
    // kine writes its compact revision row at start.
    let conn = kine::open(&db).unwrap();
    kine::put(&conn, "compact_rev_key", false, None::<Vec<u8>>);
    let dest = file_url(&dir.path().join("backups"));
    let keys = age_keys(dir.path(), "key.txt");
    Scene {
        dir,
        db,
        dest,
        keys,
    }
}

impl Scene {
    /// `vcbackup run` on `source` with increments every `interval`, full
    /// backups daily unless `extra` gives a schedule.
    fn run(&self, source: &str, interval: &str, extra: &[&str]) -> Command {
        let mut cmd = vcbackup();
        cmd.args(["run", "--name", "demo", "--destination", &self.dest])
            .args(["--recipient", &self.keys.recipient, "--source", source])
            .args(["--incremental-interval", interval])
            .args(extra);
        if !extra.contains(&"--schedule") {
            cmd.args(["--schedule", "@daily"]);
        }
        cmd
    }

    fn daemon(&self, interval: &str, extra: &[&str]) -> Daemon {
        let source = self.db.to_string_lossy().into_owned();
        Daemon::start_logged(self.run(&source, interval, extra), &self.log())
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = vcbackup();
        cmd.args(args)
            .args(["--name", "demo", "--destination", &self.dest, "--identity"])
            .arg(&self.keys.identity);
        cmd
    }

    fn restore(&self, to: &Path, args: &[&str]) -> Command {
        let mut cmd = self.command(&["restore", "--bump-revision", "0"]);
        cmd.arg("--to").arg(to).args(args);
        cmd
    }

    fn folder(&self) -> PathBuf {
        self.dir.path().join("backups/demo")
    }

    /// Full backups (with a manifest), oldest first.
    fn bases(&self) -> Vec<String> {
        files(&self.folder())
            .into_iter()
            .filter(|n| n.ends_with("-sqlite.zst.age") || n.ends_with("-etcd.zst.age"))
            .filter(|n| self.folder().join(format!("{n}.json")).exists())
            .collect()
    }

    /// Increment objects (with or without a manifest), sorted by name.
    fn increments(&self) -> Vec<String> {
        files(&self.folder())
            .into_iter()
            .filter(|n| n.contains(".incr-") && n.ends_with(".zst.age"))
            .collect()
    }

    fn manifest(&self, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.folder().join(format!("{name}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// Every column of every kine row, in id order: two stores hold the same
/// state when these are equal.
fn rows(db: &Path) -> Vec<String> {
    let conn = Connection::open(db).unwrap();
    let mut statement = conn
        .prepare(
            "SELECT id, name, created, deleted, create_revision, prev_revision, lease,
                    hex(value), hex(old_value) FROM kine ORDER BY id",
        )
        .unwrap();
    statement
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}|{}|{}|{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, String>(8)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// kine's invariants in a restored store: ids above every sequence value
/// never, one compact revision row, no two rows of a key with one
/// prev_revision, and SQLite's own integrity check.
fn assert_kine_invariants(db: &Path) {
    let conn = Connection::open(db).unwrap();
    let integrity: String = kine::query_one(&conn, "PRAGMA integrity_check", []);
    assert_eq!(integrity, "ok");
    let max_id: i64 = kine::query_one(&conn, "SELECT coalesce(max(id), 0) FROM kine", []);
    let seq: i64 = kine::query_one(
        &conn,
        "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'kine'",
        [],
    );
    assert!(
        seq >= max_id,
        "sqlite_sequence {seq} below max(id) {max_id}"
    );
    let compact_rows: i64 = kine::query_one(
        &conn,
        "SELECT count(*) FROM kine WHERE name = 'compact_rev_key'",
        [],
    );
    assert_eq!(compact_rows, 1);
    let duplicates: i64 = kine::query_one(
        &conn,
        "SELECT count(*) FROM (SELECT name, prev_revision FROM kine
         GROUP BY name, prev_revision HAVING count(*) > 1)",
        [],
    );
    assert_eq!(duplicates, 0);
}

/// When the agent last saw every change shipped, from `/status` `rpo_seconds`
/// (seconds since then, null before a chain), never later than the truth.
fn in_sync_since(daemon: &Daemon) -> Option<chrono::DateTime<Utc>> {
    let asked = Utc::now();
    let rpo = daemon.status()["rpo_seconds"].as_f64()?;
    // The status rounds down to the millisecond: one more keeps this a lower bound.
    Some(asked - chrono::TimeDelta::milliseconds((rpo * 1000.0).round() as i64 + 1))
}

fn shipped(daemon: &Daemon) -> f64 {
    daemon
        .metric("vcbackup_increments_total{result=\"shipped\"}")
        .unwrap_or(0.0)
}

fn rfc3339(time: chrono::DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[test]
fn a_sigkilled_agent_keeps_every_commit_acknowledged_two_intervals_before() {
    let s = scene(2 << 20);
    let writer = start_writer(&s.db);
    let mut daemon = s.daemon("2s", &[]);
    // A random moment after a few increments: mid-read, mid-upload or asleep.
    let run_for = Duration::from_millis(9000 + u64::from(rand::random::<u16>() % 4000));
    let started = Instant::now();
    let mut acked = Vec::new();
    // Until the random moment, and at least two increments stored: on a
    // loaded machine the first can take longer than the random moment.
    let chain_started = || s.increments().len() >= 2 || started.elapsed() > Duration::from_secs(60);
    while started.elapsed() < run_for || !chain_started() {
        acked.push((Instant::now(), writer.acked()));
        // The scenario's clock (a sample of the writer every 20 ms until the
        // random moment), not a wait.
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    daemon.kill();
    let total = writer.stop();

    // 2 × the interval, plus 2 s for an upload to a local directory.
    let bound = Duration::from_secs(6);
    let must_hold = acked
        .iter()
        .rev()
        .find(|(at, _)| killed.duration_since(*at) >= bound)
        .map(|(_, n)| *n)
        .unwrap();
    assert!(must_hold > 0, "the writer made no progress");
    assert!(
        s.increments().len() >= 2,
        "expected increments, found {:?}\n{}",
        files(&s.folder()),
        daemon.log()
    );
    let to = s.dir.path().join("restored.db");
    ok(&mut s.restore(&to, &["latest"]));
    let prefix = committed_prefix(&to);
    assert!(
        prefix >= must_hold,
        "the restore holds commits up to {prefix}, but {must_hold} was acknowledged {bound:?} before the kill"
    );
    assert!(prefix <= total);
    assert_kine_invariants(&to);
    // Whatever the kill cut off is not applied, and the chain verifies.
    let verified = ok_stdout(&mut s.command(&["verify", "latest"]));
    assert!(verified.contains("ok      chain of"), "{verified}");
}

#[test]
fn compaction_past_the_shipped_revision_forces_a_full_backup_and_no_delete_comes_back() {
    let s = scene(1 << 20);
    let daemon = s.daemon("1s", &[]);
    let conn = kine::open(&s.db).unwrap();
    let doomed = "/registry/configmaps/default/doomed";
    kine::put(&conn, doomed, false, b"v1".to_vec());
    daemon.wait_for("the create to ship", Duration::from_secs(20), || {
        (shipped(&daemon) >= 1.0).then_some(())
    });

    // One transaction, between two looks: the key is deleted, then compaction
    // removes its rows and its tombstone, before the tombstone ever shipped.
    let tx = conn.unchecked_transaction().unwrap();
    kine::put(&tx, doomed, true, b"".to_vec());
    let max: i64 = kine::query_one(&tx, "SELECT max(id) FROM kine", []);
    tx.execute("DELETE FROM kine WHERE name = ?1", [doomed])
        .unwrap();
    tx.execute(
        "UPDATE kine SET prev_revision = ?1 WHERE name = 'compact_rev_key'",
        [max],
    )
    .unwrap();
    tx.commit().unwrap();

    daemon.wait_metric(
        "vcbackup_full_backups_forced_total{reason=\"compacted\"}",
        1.0,
        Duration::from_secs(30),
    );
    daemon.wait_for("a second base", Duration::from_secs(30), || {
        (s.bases().len() >= 2).then_some(())
    });
    assert!(
        daemon.log().contains("compacted at revision"),
        "{}",
        daemon.log()
    );
    let before = shipped(&daemon);
    kine::put(
        &conn,
        "/registry/configmaps/default/after",
        false,
        b"a".to_vec(),
    );
    daemon.wait_for("the next change to ship", Duration::from_secs(20), || {
        (shipped(&daemon) > before).then_some(())
    });

    let to = s.dir.path().join("restored.db");
    ok(&mut s.restore(&to, &["latest"]));
    let restored = rows(&to);
    assert!(
        !restored.iter().any(|r| r.contains(doomed)),
        "the deleted key came back"
    );
    assert_eq!(restored, rows(&s.db), "the restore differs from the store");
    assert_kine_invariants(&to);
}

#[test]
fn point_in_time_restores_equal_the_store_at_three_times_in_one_chain() {
    let s = scene(1 << 20);
    let daemon = s.daemon("1s", &[]);
    daemon.wait_for("the base", Duration::from_secs(20), || {
        (s.bases().len() == 1).then_some(())
    });
    let conn = kine::open(&s.db).unwrap();
    let mut points = Vec::new();
    for round in 0..3 {
        let before = shipped(&daemon);
        for i in 0..5 {
            let name = format!("/registry/configmaps/default/r{round}-{i}");
            kine::put(&conn, &name, false, format!("v{round}").into_bytes());
        }
        kine::put(
            &conn,
            "/registry/configmaps/default/r0-0",
            round == 2,
            b"x".to_vec(),
        );
        daemon.wait_for("the round to ship", Duration::from_secs(20), || {
            (shipped(&daemon) > before).then_some(())
        });
        // One more look finds nothing new: everything up to now is stored.
        let written = Utc::now();
        daemon.wait_for(
            "a look after the round to find everything shipped",
            Duration::from_secs(20),
            || (in_sync_since(&daemon)? > written).then_some(()),
        );
        points.push((Utc::now(), rows(&s.db)));
    }
    assert_eq!(s.bases().len(), 1, "one chain");
    // Looks found nothing after each round (at least one each): they shipped nothing.
    let shipped_count = s.increments().len();
    assert!(
        (3..=6).contains(&shipped_count),
        "{shipped_count} increments for 3 rounds of changes: {:?}",
        s.increments()
    );
    for (i, (at, expected)) in points.iter().enumerate() {
        let to = s.dir.path().join(format!("at-{i}.db"));
        ok(&mut s.restore(&to, &["--at", &rfc3339(*at)]));
        assert_eq!(&rows(&to), expected, "restore --at point {i}");
        assert_kine_invariants(&to);
    }
    // An increment reads without vcbackup (age, zstd), and `decrypt` checks it
    // against the manifest beside it.
    let increment = s.folder().join(&s.increments()[0]);
    let ours = s.dir.path().join("increment.jsonl");
    ok(&mut decrypt(&increment, &s.keys.identity, &ours));
    let age = Command::new(tool("age"))
        .arg("-d")
        .arg("-i")
        .arg(&s.keys.identity)
        .arg(&increment)
        .output()
        .unwrap();
    let zstd = Command::new(tool("zstd"))
        .args(["-d", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut zstd.stdin.as_ref().unwrap(), &age.stdout).unwrap();
    let theirs = zstd.wait_with_output().unwrap().stdout;
    let text = std::fs::read_to_string(&ours).unwrap();
    assert_eq!(text.as_bytes(), &theirs[..]);
    assert!(
        text.starts_with("{\"vcbackup_increment\":1,\"kind\":\"sqlite\""),
        "{text}"
    );
    assert!(text.contains("/registry/configmaps/default/r0-"), "{text}");
    let manifest_path = s.folder().join(format!("{}.json", s.increments()[0]));
    let original = std::fs::read(&manifest_path).unwrap();
    let mut manifest = s.manifest(&s.increments()[0]);
    manifest["sha256"] = serde_json::json!("00");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let refused = fails(&mut decrypt(
        &increment,
        &s.keys.identity,
        &s.dir.path().join("x"),
    ));
    assert!(refused.contains("does not match its manifest"), "{refused}");
    // A restore through that increment refuses too, and replaces nothing.
    let target = s.dir.path().join("at-0.db");
    let before = std::fs::read(&target).unwrap();
    let refused = fails(&mut s.restore(&target, &["latest", "--force"]));
    assert!(refused.contains("does not match its manifest"), "{refused}");
    assert_eq!(std::fs::read(&target).unwrap(), before);
    std::fs::write(&manifest_path, original).unwrap();
    // `export --at` holds the same keys.
    let archive = s.dir.path().join("at-1.tar.gz");
    let mut export = s.command(&["export", "--at", &rfc3339(points[1].0)]);
    ok(export.arg("-o").arg(&archive));
    let listing = ok_stdout(Command::new("tar").arg("tzf").arg(&archive));
    assert!(
        listing.contains("registry/configmaps/default/r1-4"),
        "{listing}"
    );
    assert!(!listing.contains("r2-0"), "{listing}");
}

#[test]
fn retention_deletes_chains_with_their_base_and_a_crash_mid_increment_is_never_applied() {
    let s = scene(1 << 20);
    let conn = kine::open(&s.db).unwrap();
    // Full backups every 4 s, none deleted by the agent.
    let mut daemon = s.daemon("1s", &["--schedule", "@every 4s", "--max-snapshots", "0"]);
    let mut n = 0;
    daemon.wait_for(
        "three chains and four increments",
        Duration::from_secs(60),
        || {
            if s.bases().len() >= 3 && s.increments().len() >= 4 {
                return Some(());
            }
            kine::put(
                &conn,
                &format!("/registry/pods/default/p{n}"),
                false,
                b"p".to_vec(),
            );
            n += 1;
            // The writer's pace (a pod every 300 ms or so), not a wait.
            std::thread::sleep(Duration::from_millis(300));
            None
        },
    );
    daemon.terminate();
    let bases = s.bases();
    let newest = bases.last().unwrap().clone();
    let newest_stem = newest.strip_suffix(".zst.age").unwrap();
    let chain: Vec<String> = s
        .increments()
        .into_iter()
        .filter(|i| i.starts_with(newest_stem))
        .collect();
    let live = rows(&s.db);

    // What a crash between an increment and its manifest leaves: an object
    // without a manifest, covering revisions nobody else shipped.
    let last: i64 = kine::query_one(&conn, "SELECT max(id) FROM kine", []);
    let any_increment = s.increments().into_iter().next().unwrap();
    let crashed = format!(
        "{newest_stem}.incr-{}-{}-{}-0badc0de.zst.age",
        Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        last + 1,
        last + 50
    );
    std::fs::copy(s.folder().join(&any_increment), s.folder().join(&crashed)).unwrap();
    // An increment whose base is gone, with its manifest.
    let orphan =
        "demo-20200101T000000.000Z-deadbeef-sqlite.incr-20200101T000001.000Z-2-3-00000001.zst.age";
    std::fs::copy(s.folder().join(&any_increment), s.folder().join(orphan)).unwrap();
    std::fs::copy(
        s.folder().join(format!("{any_increment}.json")),
        s.folder().join(format!("{orphan}.json")),
    )
    .unwrap();

    let to = s.dir.path().join("restored.db");
    ok(&mut s.restore(&to, &["latest"]));
    assert_eq!(
        rows(&to),
        live,
        "restore latest with a crashed increment beside the chain"
    );

    let mut prune = vcbackup();
    prune.args(["prune", "--name", "demo", "--destination", &s.dest]);
    let plan = ok_stdout(prune.args(["--max-snapshots", "1", "--retention-days", "0"]));
    assert!(plan.contains(&format!("keep {newest}")), "{plan}");
    let left = files(&s.folder());
    for old in &bases[..bases.len() - 1] {
        let stem = old.strip_suffix(".zst.age").unwrap();
        let kept: Vec<&String> = left.iter().filter(|f| f.starts_with(stem)).collect();
        assert!(kept.is_empty(), "{old}'s chain was kept: {kept:?}");
    }
    assert!(
        !left.iter().any(|f| f.starts_with("demo-20200101")),
        "orphan kept: {left:?}"
    );
    for increment in &chain {
        assert!(
            left.contains(increment),
            "{increment} of the kept chain was deleted"
        );
        assert!(left.contains(&format!("{increment}.json")));
    }
    let to = s.dir.path().join("after-prune.db");
    ok(&mut s.restore(&to, &["latest"]));
    assert_eq!(rows(&to), live);
}

/// The keys and values of an export archive, in order.
fn archive_pairs(archive: &Path) -> Vec<(String, String)> {
    let file = std::fs::File::open(archive).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.entries()
        .unwrap()
        .map(|entry| {
            let mut entry = entry.unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let mut value = String::new();
            std::io::Read::read_to_string(&mut entry, &mut value).unwrap();
            (name, value)
        })
        .collect()
}

/// Every key of the etcd member with its value, in key order.
fn etcd_pairs(etcd: &Etcd) -> Vec<(String, String)> {
    let json = ok_stdout(etcd.etcdctl().args(["get", "", "--from-key", "-w", "json"]));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let decode = |v: &serde_json::Value| {
        String::from_utf8(common::etcd::base64_decode(v.as_str().unwrap())).unwrap()
    };
    value["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| (decode(&kv["key"]), decode(&kv["value"])))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn etcd_increments_start_right_after_the_snapshot_and_compaction_forces_a_full_snapshot() {
    let s = scene(1 << 16);
    let mut etcd = Etcd::start(&s.dir.path().join("etcd"));
    for i in 0..5 {
        etcd.put(&format!("/registry/configmaps/default/c{i}"), "v0");
    }
    let daemon = Daemon::start_logged(s.run(&etcd.endpoint.clone(), "1s", &[]), &s.log());
    daemon.wait_for("the base", Duration::from_secs(30), || {
        (s.bases().len() == 1).then_some(())
    });
    for i in 0..5 {
        etcd.put(&format!("/registry/configmaps/default/c{i}"), "v1");
    }
    etcd.delete("/registry/configmaps/default/c3");
    etcd.put("/registry/configmaps/default/new", "n");
    let settled = etcd.revision();
    daemon.wait_for("the changes to ship", Duration::from_secs(30), || {
        let last = s
            .increments()
            .iter()
            .filter(|i| s.folder().join(format!("{i}.json")).exists())
            .map(|i| s.manifest(i)["last_revision"].as_i64().unwrap())
            .max()?;
        (last >= settled).then_some(())
    });
    // The first increment starts at the revision after the snapshot's own.
    let base = s.manifest(&s.bases()[0]);
    let first = s
        .increments()
        .iter()
        .map(|i| s.manifest(i)["first_revision"].as_i64().unwrap())
        .min()
        .unwrap();
    assert_eq!(first, base["revision"].as_i64().unwrap() + 1);

    let archive = s.dir.path().join("latest.tar.gz");
    ok(s.command(&["export", "latest"]).arg("-o").arg(&archive));
    assert_eq!(archive_pairs(&archive), etcd_pairs(&etcd));
    // A snapshot file cannot hold the increments: restore says what to do instead.
    let refused = fails(&mut s.restore(&s.dir.path().join("snap.db"), &["latest"]));
    assert!(
        refused.contains("export --at") && refused.contains("--base-only"),
        "{refused}"
    );

    // The agent is frozen, its connection broken (a restart of etcd), and
    // changes are made and compacted away before it comes back: its watch
    // cannot resume from the revision after the last it received.
    daemon.signal("STOP");
    etcd.restart();
    etcd.put("/registry/configmaps/default/c0", "v2");
    etcd.delete("/registry/configmaps/default/c1");
    let revision = etcd.revision().to_string();
    ok(etcd.etcdctl().args(["compaction", &revision]));
    daemon.signal("CONT");
    let forced = "vcbackup_full_backups_forced_total{reason=\"compacted\"}";
    daemon.wait_for(
        "a full backup forced by compaction",
        Duration::from_secs(60),
        || (daemon.metric(forced)? >= 1.0).then_some(()),
    );
    daemon.wait_for("a second base", Duration::from_secs(30), || {
        (s.bases().len() >= 2).then_some(())
    });
    etcd.put("/registry/configmaps/default/last", "l");
    let settled = etcd.revision();
    let newest = s
        .bases()
        .last()
        .unwrap()
        .trim_end_matches(".zst.age")
        .to_string();
    daemon.wait_for("the new chain to ship", Duration::from_secs(30), || {
        s.increments()
            .iter()
            .filter(|i| i.starts_with(&newest) && s.folder().join(format!("{i}.json")).exists())
            .any(|i| s.manifest(i)["last_revision"].as_i64() >= Some(settled))
            .then_some(())
    });
    let archive = s.dir.path().join("after.tar.gz");
    ok(s.command(&["export", "latest"]).arg("-o").arg(&archive));
    assert_eq!(archive_pairs(&archive), etcd_pairs(&etcd));
    let verified = ok_stdout(&mut s.command(&["verify", "--all"]));
    assert_eq!(
        verified.matches("ok      chain of").count(),
        2,
        "{verified}"
    );
}
