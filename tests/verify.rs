//! Restore drills (`vcbackup verify`, `run --verify-after-upload`) run as the
//! binary against real stores: each kind of damage fails the check that
//! should catch it, by name, and every drill leaves its record beside the
//! backup, which `list` shows and retention deletes with the backup.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::s3::Proxy;
use common::*;

struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    db: PathBuf,
    config: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = age_keys(dir.path(), "key.txt");
    let db = dir.path().join("state.db");
    small_kine_db(&db, 300_000);
    std::fs::create_dir(dir.path().join("scratch")).unwrap();
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, "controlPlane:\n  backingStore: {}\n").unwrap();
    Setup {
        dir,
        keys,
        db,
        config,
    }
}

impl Setup {
    fn dest(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A backup of `db` (with the config) into directory destination `dest`.
    fn backup(&self, db: &Path, dest: &Path) -> String {
        let out = ok(vcbackup()
            .args([
                "backup",
                "--name",
                "demo",
                "--recipient",
                &self.keys.recipient,
            ])
            .arg("--source")
            .arg(db)
            .args(["--destination", &file_url(dest)])
            .arg("--vcluster-config")
            .arg(&self.config));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn verify(&self, dest: &Path, extra: &[&str]) -> std::process::Command {
        let mut cmd = vcbackup();
        cmd.args(["verify", "--name", "demo", "--destination", &file_url(dest)])
            .arg("--scratch-dir")
            .arg(self.dir.path().join("scratch"))
            .args(extra);
        cmd
    }

    fn with_key(&self) -> [String; 2] {
        [
            "--identity".into(),
            self.keys.identity.display().to_string(),
        ]
    }
}

fn with(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A copy of a destination, to damage without touching the original.
fn copy_dest(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.join("demo")).unwrap();
    for name in files(&from.join("demo")) {
        std::fs::copy(from.join("demo").join(&name), to.join("demo").join(&name)).unwrap();
    }
}

fn edit(path: &Path, change: impl FnOnce(&mut Vec<u8>)) {
    let mut data = std::fs::read(path).unwrap();
    change(&mut data);
    std::fs::write(path, data).unwrap();
}

/// The (first) verify record in a folder.
fn verify_record(folder: &Path) -> serde_json::Value {
    let record = files(folder)
        .into_iter()
        .find(|f| f.contains(".verify-"))
        .unwrap();
    serde_json::from_slice(&std::fs::read(folder.join(record)).unwrap()).unwrap()
}

/// The names of a record's checks, in the order they ran.
fn check_names(record: &serde_json::Value) -> Vec<&str> {
    record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[test]
fn a_good_backup_passes_and_each_damage_fails_its_own_check() {
    let s = setup();
    let good = s.dest("good");
    let name = s.backup(&s.db, &good);
    let folder = good.join("demo");

    let out = ok(&mut s.verify(&good, &with(&s.with_key())));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with(&format!("ok      {name}")), "{stdout}");
    assert_eq!(
        verify_records(&folder),
        vec![(name.clone(), "full".into(), "ok".into())]
    );
    let record = verify_record(&folder);
    assert_eq!(
        check_names(&record),
        [
            "stored",
            "decrypt",
            "plaintext",
            "sqlite-integrity",
            "kine-table",
            "kine-revision",
            "kine-registry-keys",
            "config-stored",
            "config"
        ]
    );
    assert_eq!(record["result"], "ok");
    assert_eq!(record["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(record["duration_seconds"].as_f64().unwrap() > 0.0);
    // The scratch copy is gone once the drill ends.
    assert!(files(&s.dir.path().join("scratch")).is_empty());

    // Without the key: the key-less part only, recorded as such.
    ok(&mut s.verify(&good, &[]));
    assert!(verify_records(&folder).contains(&(name.clone(), "keyless".into(), "ok".into())));
    let listed = list_json(&file_url(&good), "demo");
    assert_eq!(listed[0]["verify"]["result"], "ok");
    assert_eq!(listed[0]["verify"]["mode"], "keyless");
    let table = String::from_utf8(
        ok(vcbackup().args(["list", "--name", "demo", "--destination", &file_url(&good)])).stdout,
    )
    .unwrap();
    assert!(
        table.contains("VERIFIED") && table.contains("ok 0s (keyless)"),
        "{table}"
    );

    // Each damage, on its own copy: (what, the check that must fail, key-less too?).
    type Damage = Box<dyn Fn(&Path)>;
    let object = name.clone();
    let cases: Vec<(&str, &str, bool, Damage)> = vec![
        ("a flipped bit", "stored", true, {
            let object = object.clone();
            Box::new(move |d: &Path| {
                edit(&d.join(&object), |b| {
                    let m = b.len() / 2;
                    b[m] ^= 1
                })
            })
        }),
        ("a truncated object", "stored", true, {
            let object = object.clone();
            Box::new(move |d: &Path| edit(&d.join(&object), |b| b.truncate(b.len() - 10)))
        }),
        (
            "a manifest with another revision",
            "kine-revision",
            false,
            {
                let manifest = format!("{object}.json");
                Box::new(move |d: &Path| {
                    edit(&d.join(&manifest), |b| {
                        let text = String::from_utf8(b.clone()).unwrap();
                        let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
                        m["revision"] = serde_json::json!(m["revision"].as_i64().unwrap() + 1);
                        *b = serde_json::to_vec(&m).unwrap();
                    })
                })
            },
        ),
        ("a damaged saved config", "config-stored", true, {
            let config = object.replace("-sqlite.zst.age", "-sqlite.config.yaml.zst.age");
            Box::new(move |d: &Path| {
                edit(&d.join(&config), |b| {
                    let m = b.len() / 2;
                    b[m] ^= 1
                })
            })
        }),
    ];
    for (i, (what, check, keyless, damage)) in cases.iter().enumerate() {
        let copy = s.dest(&format!("damaged-{i}"));
        copy_dest(&good, &copy);
        damage(&copy.join("demo"));
        let line = error_line(&fails(&mut s.verify(&copy, &with(&s.with_key()))));
        assert!(
            line.contains(&format!("verify {name}: check {check} failed")),
            "{what}: {line}"
        );
        assert!(
            verify_records(&copy.join("demo")).contains(&(
                name.clone(),
                "full".into(),
                "failed".into()
            )),
            "{what}: no failed record"
        );
        let keyless_run = run(&mut s.verify(&copy, &[]));
        assert_eq!(
            keyless_run.status.success(),
            !keyless,
            "{what}: key-less verdict"
        );
        assert!(
            files(&s.dir.path().join("scratch")).is_empty(),
            "{what}: scratch left"
        );
    }

    // Another key than the one the backup is encrypted to.
    let other = age_keys(s.dir.path(), "other.txt");
    let line = error_line(&fails(&mut s.verify(
        &good,
        &["--identity", &other.identity.display().to_string()],
    )));
    assert!(
        line.contains("check decrypt failed") && line.contains("does not match"),
        "{line}"
    );
}

#[test]
fn a_backup_that_is_intact_but_would_not_restore_fails_the_database_checks() {
    let s = setup();
    // A database whose name index is damaged: copied faithfully, then caught.
    let broken = s.dir.path().join("broken.db");
    small_kine_db(&broken, 300_000);
    let conn = rusqlite::Connection::open(&broken).unwrap();
    let (root, page_size): (i64, i64) = conn
        .query_row(
            "SELECT rootpage, (SELECT page_size FROM pragma_page_size) FROM sqlite_schema WHERE name = 'kine_name_index'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    drop(conn);
    edit(&broken, |b| {
        let at = ((root - 1) * page_size + page_size / 2) as usize;
        b[at..at + 200].fill(0xff);
    });
    let dest = s.dest("broken");
    let name = s.backup(&broken, &dest);
    let line = error_line(&fails(&mut s.verify(&dest, &with(&s.with_key()))));
    assert!(
        line.contains(&format!("verify {name}: check sqlite-integrity failed")),
        "{line}"
    );
    // The stored bytes are intact: the key-less drill cannot know.
    ok(&mut s.verify(&dest, &[]));

    // A kine database without a single Kubernetes object.
    let empty = s.dir.path().join("empty.db");
    let conn = kine::open(&empty).unwrap();
    conn.execute(
        "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES ('compact_rev_key', 1, 0, 0, 0, 0, NULL, NULL)",
        [],
    )
    .unwrap();
    drop(conn);
    let dest = s.dest("empty");
    s.backup(&empty, &dest);
    let line = error_line(&fails(&mut s.verify(&dest, &with(&s.with_key()))));
    assert!(line.contains("check kine-registry-keys failed"), "{line}");
}

#[test]
fn retention_deletes_verify_records_with_their_backups() {
    let s = setup();
    let dest = s.dest("dest");
    let folder = dest.join("demo");
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(s.backup(&s.db, &dest));
    }
    ok(&mut s.verify(&dest, &["--all"]));
    assert_eq!(verify_records(&folder).len(), 3);
    // A record whose backup is already gone (a deletion that was cut off).
    std::fs::write(
        folder.join("demo-20200101T000000.000Z-00000000-sqlite.zst.age.verify-20200101T000000.000Z-full-ok.json"),
        "{}",
    )
    .unwrap();
    ok(vcbackup().args([
        "prune",
        "--name",
        "demo",
        "--destination",
        &file_url(&dest),
        "--max-snapshots",
        "1",
    ]));
    let newest = names.last().unwrap();
    let left = files(&folder);
    assert!(
        left.iter()
            .all(|f| f.starts_with(newest.trim_end_matches(".zst.age"))),
        "only the newest backup {newest} and its objects stay: {left:?}"
    );
    assert_eq!(verify_records(&folder).len(), 1);
}

#[test]
fn an_etcd_backup_passes_the_drill_with_digest_walk_and_revision() {
    let s = setup();
    let etcd = Etcd::start(&s.dir.path().join("etcd"));
    for i in 0..50 {
        etcd.put(
            &format!("/registry/configmaps/default/cm-{i}"),
            &"v".repeat(200),
        );
    }
    let dest = s.dest("dest");
    ok(vcbackup()
        .args(["backup", "--name", "demo", "--recipient", &s.keys.recipient])
        .args([
            "--source",
            &etcd.endpoint,
            "--destination",
            &file_url(&dest),
        ])
        .args(["--vcluster-config", "/nonexistent"]));
    let out = ok(&mut s.verify(&dest, &with(&s.with_key())));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok "));
    assert_eq!(
        check_names(&verify_record(&dest.join("demo"))),
        [
            "stored",
            "decrypt",
            "plaintext",
            "etcd-digest",
            "bbolt-walk",
            "etcd-revision"
        ]
    );
}

#[test]
fn verify_all_vclusters_checks_every_cluster_on_s3_and_names_the_damaged_one() {
    use common::Scene;
    use common::s3::{AccessKeys as S3Keys, BUCKET, REGION, S3sFs};
    let server = S3sFs::start(S3Keys::with(
        "AKIAVERIFY0000000001",
        "verify/secret/0123456789",
    ));
    let mut scene = Scene::new();
    scene.static_keys("AKIAVERIFY0000000001", "verify/secret/0123456789");
    let keys = age_keys(scene.dir.path(), "key.txt");
    let db = scene.path("state.db");
    small_kine_db(&db, 200_000);
    let dest = format!(
        "s3://{BUCKET}/fleet?endpoint={}&force-path-style=true&region={REGION}",
        server.endpoint()
    );
    let mut names = Vec::new();
    for cluster in ["alpha", "bravo", "charlie"] {
        let out = scene.ok(&[
            "backup",
            "--name",
            cluster,
            "--recipient",
            &keys.recipient,
            "--source",
            &db.display().to_string(),
            "--destination",
            &dest,
        ]);
        names.push(out.trim().to_string());
    }
    // Bit rot in bravo's object, on the server's disk.
    let object = server
        .root
        .path()
        .join(BUCKET)
        .join("fleet/bravo")
        .join(&names[1]);
    edit(&object, |b| {
        let m = b.len() / 2;
        b[m] ^= 1
    });
    let identity = keys.identity.display().to_string();
    let args = [
        "verify",
        "--all-vclusters",
        "--destination",
        &dest,
        "-i",
        &identity,
    ];
    let err = scene.fails(&args);
    let line = error_line(&err);
    assert!(
        line.contains(&format!("verify {}: check stored failed", names[1])),
        "{line}"
    );
    let out = scene.run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (i, name) in names.iter().enumerate() {
        let want = if i == 1 { "FAILED  " } else { "ok      " };
        assert!(stdout.contains(&format!("{want}{name}")), "{stdout}");
    }
    for (cluster, result) in [("alpha", "ok"), ("bravo", "failed"), ("charlie", "ok")] {
        let listed: serde_json::Value = serde_json::from_str(&scene.ok(&[
            "list",
            "-o",
            "json",
            "--name",
            cluster,
            "--destination",
            &dest,
        ]))
        .unwrap();
        assert_eq!(listed[0]["verify"]["result"], result, "{cluster}");
        assert_eq!(listed[0]["verify"]["mode"], "full", "{cluster}");
    }
}

#[test]
fn the_sidecar_reads_every_upload_back_and_counts_a_damaged_one_as_failed() {
    use common::s3::{AccessKeys as S3Keys, BUCKET, REGION, S3sFs};
    let server = S3sFs::start(S3Keys::with(
        "AKIAVERIFY0000000002",
        "verify/secret/0123456789",
    ));
    let proxy = Proxy::start(server.addr);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    small_kine_db(&db, 200_000);
    let keys = age_keys(dir.path(), "key.txt");
    let dest = format!(
        "s3://{BUCKET}/vc?endpoint={}&force-path-style=true&region={REGION}",
        proxy.endpoint()
    );
    let mut cmd = vcbackup();
    cmd.args(["run", "--name", "demo", "--recipient", &keys.recipient])
        .args([
            "--destination",
            &dest,
            "--schedule",
            "@every 2s",
            "--verify-after-upload",
        ])
        .arg("--source")
        .arg(&db)
        .env("AWS_ACCESS_KEY_ID", "AKIAVERIFY0000000002")
        .env("AWS_SECRET_ACCESS_KEY", "verify/secret/0123456789")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let daemon = Daemon::start(cmd);
    let long = Duration::from_secs(60);
    daemon.wait_metric(r#"vcbackup_verifications_total{result="ok"}"#, 1.0, long);
    assert_eq!(
        daemon.metric(r#"vcbackup_backup_failures_total{stage="verify"}"#),
        Some(0.0)
    );
    assert!(proxy.seen.count("GET") >= 1, "the read-back is a GET");

    // From now on every backup object comes back damaged.
    *proxy.seen.corrupt_suffix.lock().unwrap() = Some(".zst.age".into());
    daemon.wait_metric(
        r#"vcbackup_backup_failures_total{stage="verify"}"#,
        1.0,
        long,
    );
    assert!(
        daemon
            .metric(r#"vcbackup_verifications_total{result="failed"}"#)
            .unwrap()
            >= 1.0
    );
    assert!(
        daemon
            .metric(r#"vcbackup_backups_total{result="failure"}"#)
            .unwrap()
            >= 1.0
    );
    assert!(
        proxy
            .seen
            .corrupted
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    );
    drop(daemon);
    let records: Vec<String> = server
        .objects()
        .into_iter()
        .filter(|o| o.contains(".verify-"))
        .collect();
    assert!(
        records.iter().any(|r| r.ends_with("-keyless-ok.json")),
        "{records:?}"
    );
    assert!(
        records.iter().any(|r| r.ends_with("-keyless-failed.json")),
        "{records:?}"
    );
}
