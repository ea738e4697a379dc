//! S3 storage against real protocol implementations: s3s-fs (in process, SigV4
//! checked), moto (IAM authentication on), and the AWS CLI. Each test runs the
//! built binary, as an operator or a Helm chart would.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::s3::*;
use common::*;

const ACCESS_KEY: &str = "AKIAVCBACKUPTEST0001";
const SECRET: &str = "vcbackup/test/secret/0123456789abcdefghij";
const MIB: usize = 1 << 20;
/// Incompressible, so the stored backup needs two 5 MiB parts.
const MULTIPART_DB: usize = 6 * MIB;

/// A destination on `endpoint` with 5 MiB parts, so small databases are multipart.
fn destination(endpoint: &str, extra: &str) -> String {
    format!(
        "s3://{BUCKET}/team/prod?endpoint={endpoint}&force-path-style=true&region={REGION}&part-size=5MiB{extra}"
    )
}

struct Fixture {
    scene: Scene,
    source: String,
    identity: String,
    recipient: String,
}

fn fixture(db_bytes: usize) -> Fixture {
    let scene = Scene::new();
    let source = scene.path("state.db");
    incompressible_kine_db(&source, db_bytes);
    let keys = age_keys(scene.dir.path(), "key.txt");
    Fixture {
        source: source.display().to_string(),
        identity: keys.identity.display().to_string(),
        recipient: keys.recipient,
        scene,
    }
}

/// A fixture whose scene has the static keys `access_key` and `secret`.
fn fixture_with_keys(db_bytes: usize, access_key: &str, secret: &str) -> Fixture {
    let mut f = fixture(db_bytes);
    f.scene.static_keys(access_key, secret);
    f
}

/// s3s-fs accepting [`ACCESS_KEY`], behind a proxy that injects `faults`.
fn s3s_fs_behind(faults: Faults) -> (S3sFs, FaultProxy) {
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    let proxy = FaultProxy::start(server.addr, faults);
    (server, proxy)
}

/// moto with the bucket [`BUCKET`], and an SDK client as its full-access user.
fn moto_with_bucket() -> (Moto, aws_sdk_s3::Client) {
    let moto = Moto::start();
    let client = s3_client(&moto.endpoint(), &moto.access_key, &moto.secret);
    rt().block_on(client.create_bucket().bucket(BUCKET).send())
        .unwrap();
    (moto, client)
}

/// `destination` with its `team/prod` prefix replaced by a fresh one.
fn fresh_prefix(destination: &str) -> String {
    destination.replace(
        "team/prod",
        &format!("team/{}", random_text(6).to_lowercase()),
    )
}

impl Fixture {
    /// The arguments of a backup of the source into `destination`.
    fn backup_args<'a>(&'a self, destination: &'a str) -> Vec<&'a str> {
        vec![
            "backup",
            "--source",
            &self.source,
            "--destination",
            destination,
            "--name",
            "demo",
            "--recipient",
            &self.recipient,
        ]
    }

    /// A backup into `destination` that must succeed; returns the name it printed.
    fn backup_ok(&self, destination: &str) -> String {
        self.scene
            .ok(&self.backup_args(destination))
            .trim()
            .to_string()
    }

    /// A backup into `destination` that must fail; returns its standard error.
    fn backup_fails(&self, destination: &str) -> String {
        self.scene.fails(&self.backup_args(destination))
    }

    fn restore(&self, destination: &str, name: &str, to: &str) {
        self.scene.ok(&[
            "restore",
            name,
            "--destination",
            destination,
            "--name",
            "demo",
            "--identity",
            &self.identity,
            "--to",
            to,
            "--bump-revision",
            "0",
        ]);
    }

    fn list(&self, destination: &str) -> Vec<String> {
        listed(&self.scene.ok(&[
            "list",
            "--destination",
            destination,
            "--name",
            "demo",
            "-o",
            "json",
        ]))
    }

    /// Restores `name` and checks it holds the source's rows.
    fn assert_restores(&self, destination: &str, name: &str) {
        let to = self.scene.path(&format!("restored-{}.db", random_text(6)));
        self.restore(destination, name, &to.display().to_string());
        assert_eq!(
            kine_digest(&to),
            kine_digest(std::path::Path::new(&self.source))
        );
    }
}

#[test]
fn backup_list_restore_round_trip_through_s3s_fs() {
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    // Two parts of 5 MiB: the multipart path.
    let f = fixture_with_keys(MULTIPART_DB, ACCESS_KEY, SECRET);
    let dest = destination(&server.endpoint(), "");

    let name = f.backup_ok(&dest);
    assert_eq!(f.list(&dest), std::slice::from_ref(&name));
    f.assert_restores(&dest, &name);

    // The object and its manifest, under prefix/vcluster/, and no upload left over.
    assert_eq!(
        server.objects(),
        [
            format!("team/prod/demo/{name}"),
            format!("team/prod/demo/{name}.json")
        ]
    );
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
    assert!(server.keys.rejected().is_empty());
}

#[test]
fn a_wrong_secret_fails_with_a_clear_message() {
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    let mut f = fixture(MIB);
    let wrong = "not-the-secret-0123456789abcdefghijklmn";
    f.scene.static_keys(ACCESS_KEY, wrong);
    let dest = destination(&server.endpoint(), "");

    let stderr = f.backup_fails(&dest);
    assert!(
        stderr.contains("error: store demo-")
            && stderr.contains("in s3://backups/team/prod/demo/")
            && stderr.contains("SignatureDoesNotMatch")
            && stderr.contains("secret access key is wrong"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong), "the secret leaked: {stderr}");
    assert!(server.objects().is_empty());

    // An unknown access key is named as such.
    f.scene.static_keys("AKIAUNKNOWN000000000", SECRET);
    let stderr = f
        .scene
        .fails(&["list", "--destination", &dest, "--name", "demo"]);
    assert!(
        stderr.contains("list s3://backups/team/prod/demo/")
            && stderr.contains("InvalidAccessKeyId"),
        "{stderr}"
    );
}

#[test]
fn a_missing_bucket_is_named() {
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    let f = fixture_with_keys(MIB, ACCESS_KEY, SECRET);
    let dest = destination(&server.endpoint(), "").replace("s3://backups/", "s3://elsewhere/");
    let stderr = f
        .scene
        .fails(&["list", "--destination", &dest, "--name", "demo"]);
    assert!(
        stderr.contains(&format!(
            "bucket \"elsewhere\" does not exist at {}",
            server.endpoint()
        )) && stderr.contains("list s3://elsewhere/team/prod/demo/"),
        "{stderr}"
    );
}

#[test]
fn the_daemon_keeps_retention_healthy_on_a_server_without_list_multipart_uploads() {
    // s3s-fs, like some S3-compatible stores, answers ListMultipartUploads with
    // NotImplemented: the stale-upload sweep must warn once, not fail every run.
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    let f = fixture_with_keys(MIB, ACCESS_KEY, SECRET);
    let dest = destination(&server.endpoint(), "");
    let mut daemon = Daemon::start(f.scene.command(&[
        "run",
        "--source",
        &f.source,
        "--destination",
        &dest,
        "--name",
        "demo",
        "--recipient",
        &f.recipient,
        "--schedule",
        "@every 2s",
        "--max-snapshots",
        "2",
    ]));
    // Retention after the third backup deletes the first.
    let metrics = daemon.wait_for(
        "retention to delete a backup",
        Duration::from_secs(60),
        || {
            let text = daemon.metrics();
            let deleted = metric(&text, "vcbackup_retention_deleted_total")?;
            (deleted >= 1.0).then_some(text)
        },
    );
    daemon.kill();
    let stderr = daemon.log();

    assert_eq!(
        metric(
            &metrics,
            r#"vcbackup_backup_failures_total{stage="retention"}"#
        ),
        Some(0.0),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("does not implement ListMultipartUploads")
            .count(),
        1,
        "{stderr}"
    );
    assert!(
        !stderr.contains("retention failed") && !stderr.contains("backup failed"),
        "{stderr}"
    );
    // Retention still ran: the newest two backups are left.
    assert_eq!(metric(&metrics, "vcbackup_snapshots_stored"), Some(2.0));
    assert_eq!(f.list(&dest).len(), 2, "{stderr}");
}

#[test]
fn an_unreachable_endpoint_is_named() {
    let mut f = fixture_with_keys(MIB, ACCESS_KEY, SECRET);
    f.scene.set("AWS_MAX_ATTEMPTS", "1");
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let stderr = f.scene.fails(&[
        "list",
        "--destination",
        &destination(&endpoint, ""),
        "--name",
        "demo",
    ]);
    assert!(
        stderr.contains(&format!("cannot connect to {endpoint}: connection refused")),
        "{stderr}"
    );
}

#[test]
fn transient_part_errors_are_retried() {
    let (server, proxy) = s3s_fs_behind(Faults {
        statuses: [500, 503, 500].into(),
        ..Faults::default()
    });
    let f = fixture_with_keys(MULTIPART_DB, ACCESS_KEY, SECRET);
    let dest = destination(&proxy.endpoint(), "");

    let name = f.backup_ok(&dest);
    {
        let faults = proxy.faults.lock().unwrap();
        assert_eq!(faults.injected, 3);
        assert_eq!(faults.part_requests, 5, "2 parts, 3 retries");
        // Every part, retries included, carries its CRC32 in a header.
        assert_eq!(faults.part_checksums, 5);
        assert_eq!(faults.aws_chunked, 0);
    }
    f.assert_restores(&dest, &name);
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
}

#[test]
fn a_connection_cut_mid_part_is_retried() {
    let (server, proxy) = s3s_fs_behind(Faults {
        cuts: 2,
        ..Faults::default()
    });
    let f = fixture_with_keys(MULTIPART_DB, ACCESS_KEY, SECRET);
    // For servers that reject the newer checksum headers: none is sent.
    let dest = destination(&proxy.endpoint(), "&checksum=when-required");

    let name = f.backup_ok(&dest);
    assert_eq!(proxy.faults.lock().unwrap().injected, 2);
    assert_eq!(proxy.faults.lock().unwrap().part_checksums, 0);
    f.assert_restores(&dest, &name);
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
}

#[test]
fn a_persistent_failure_aborts_the_upload() {
    let (server, proxy) = s3s_fs_behind(Faults {
        always: Some(503),
        ..Faults::default()
    });
    let mut f = fixture_with_keys(MULTIPART_DB, ACCESS_KEY, SECRET);
    // Fewer attempts than the default keeps the test short; the path is the same.
    f.scene.set("AWS_MAX_ATTEMPTS", "2");
    let dest = destination(&proxy.endpoint(), "");

    let stderr = f.backup_fails(&dest);
    assert!(
        stderr.contains("error: store demo-")
            && stderr.contains("in s3://backups/team/prod/demo/: upload part ")
            && stderr.contains("SlowDown"),
        "{stderr}"
    );
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
    assert!(f.list(&dest).is_empty());
}

#[test]
fn eks_pod_identity_credentials_are_refreshed_during_a_long_backup() {
    const LIFETIME: Duration = Duration::from_secs(6);
    let keys = std::sync::Arc::new(AccessKeys::default());
    let server = S3sFs::start(keys.clone());
    // Every request waits two seconds: the backup's five requests outlast one credential lifetime.
    let proxy = FaultProxy::start(
        server.addr,
        Faults {
            delay: Duration::from_secs(2),
            ..Faults::default()
        },
    );
    let mut f = fixture(MULTIPART_DB);
    let agent = PodIdentityAgent::start(keys.clone(), LIFETIME, f.scene.dir.path());
    f.scene
        .set("AWS_CONTAINER_CREDENTIALS_FULL_URI", &agent.url());
    f.scene.set(
        "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        &agent.token_file.display().to_string(),
    );
    assert!(
        !f.scene
            .env
            .iter()
            .any(|(k, _)| k.starts_with("AWS_ACCESS_KEY")),
        "no static key may be in the agent's environment"
    );
    let dest = destination(&proxy.endpoint(), "&concurrency=1");

    let started = Instant::now();
    let name = f.backup_ok(&dest);
    let took = started.elapsed();
    assert!(took > LIFETIME, "the backup took only {took:?}");
    assert!(agent.fetches.load(Ordering::SeqCst) >= 2);
    assert_eq!(agent.refused.load(Ordering::SeqCst), 0);
    // The server saw only credentials the agent issued, and more than one of them.
    assert!(keys.used().len() >= 2, "{:?}", keys.used());
    assert!(keys.used().iter().all(|k| k.starts_with("ASIA")));
    assert!(keys.rejected().is_empty(), "{:?}", keys.rejected());
    assert_eq!(f.list(&destination(&server.endpoint(), "")), [name]);

    // A wrong token is refused by the agent, and the error says credentials are the problem.
    std::fs::write(&agent.token_file, "not-the-token").unwrap();
    let stderr = f
        .scene
        .fails(&["list", "--destination", &dest, "--name", "demo"]);
    assert!(stderr.contains("no usable AWS credentials"), "{stderr}");
    assert!(agent.refused.load(Ordering::SeqCst) > 0);
}

#[test]
fn moto_with_iam_auth_stores_sse_kms_and_leaves_no_upload_behind() {
    let (moto, client) = moto_with_bucket();
    let mut f = fixture(MULTIPART_DB);
    let key = moto.aws(&["kms", "create-key", "--region", REGION]);
    let key: serde_json::Value = serde_json::from_slice(&key.stdout).unwrap();
    let key_arn = key["KeyMetadata"]["Arn"].as_str().unwrap().to_string();
    f.scene.static_keys(&moto.access_key, &moto.secret);
    let dest = destination(
        &moto.endpoint(),
        &format!("&server-side-encryption=aws:kms&kms-key-id={key_arn}"),
    );

    let name = f.backup_ok(&dest);
    assert_eq!(f.list(&dest), std::slice::from_ref(&name));
    f.assert_restores(&dest, &name);
    for object in [name.clone(), format!("{name}.json")] {
        let head = rt()
            .block_on(
                client
                    .head_object()
                    .bucket(BUCKET)
                    .key(format!("team/prod/demo/{object}"))
                    .send(),
            )
            .unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms),
            "{object}"
        );
        assert_eq!(head.ssekms_key_id(), Some(key_arn.as_str()), "{object}");
    }

    // Every part refused: the backup fails and its multipart upload is aborted.
    let proxy = FaultProxy::start(
        moto.addr,
        Faults {
            always: Some(500),
            ..Faults::default()
        },
    );
    f.scene.set("AWS_MAX_ATTEMPTS", "2");
    let failing = destination(
        &proxy.endpoint(),
        &format!("&server-side-encryption=aws:kms&kms-key-id={key_arn}"),
    );
    let stderr = f.backup_fails(&failing);
    assert!(
        stderr.contains("upload part") && stderr.contains("InternalError"),
        "{stderr}"
    );
    assert!(proxy.faults.lock().unwrap().injected >= 2);
    let uploads = rt()
        .block_on(client.list_multipart_uploads().bucket(BUCKET).send())
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
    assert_eq!(f.list(&dest), std::slice::from_ref(&name));

    // A role that may read but not write: backups fail naming the missing
    // permission and where it is needed, and nothing is stored.
    let (reader_key, reader_secret) = &moto.reader;
    f.scene.static_keys(reader_key, reader_secret);
    assert_eq!(f.list(&dest), std::slice::from_ref(&name));
    let stderr = f.backup_fails(&dest);
    assert!(
        stderr.contains("access denied")
            && stderr
                .contains("check the IAM role's s3:PutObject on arn:aws:s3:::backups/team/prod/*"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(reader_secret.as_str()),
        "the secret leaked: {stderr}"
    );
    f.scene.static_keys(&moto.access_key, &moto.secret);
    assert_eq!(f.list(&dest), std::slice::from_ref(&name));

    // A bucket that does not exist is named as such, for backups and listings.
    let missing = dest.replace("s3://backups/", "s3://no-such-bucket/");
    for args in [
        vec!["list", "--destination", &missing, "--name", "demo"],
        f.backup_args(&missing),
    ] {
        let stderr = f.scene.fails(&args);
        assert!(
            stderr.contains(&format!(
                "bucket \"no-such-bucket\" does not exist at {}",
                moto.endpoint()
            )),
            "{args:?}: {stderr}"
        );
    }

    // Moto checks signatures too.
    f.scene
        .static_keys(&moto.access_key, "wrong-secret-0123456789abcdefghijklmnopq");
    let stderr = f
        .scene
        .fails(&["list", "--destination", &dest, "--name", "demo"]);
    assert!(stderr.contains("SignatureDoesNotMatch"), "{stderr}");
}

#[test]
fn prune_aborts_unfinished_uploads_older_than_the_limit_under_its_prefix_only() {
    let (moto, client) = moto_with_bucket();
    // What an agent killed mid-upload leaves behind, here and beside us.
    for key in [
        "team/prod/demo/leftover.zst.age",
        "team/prod/other/theirs.zst.age",
    ] {
        rt().block_on(
            client
                .create_multipart_upload()
                .bucket(BUCKET)
                .key(key)
                .send(),
        )
        .unwrap();
    }
    let uploads = || -> Vec<String> {
        let listed = rt()
            .block_on(client.list_multipart_uploads().bucket(BUCKET).send())
            .unwrap();
        let mut keys: Vec<String> = listed
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    };
    let f = fixture_with_keys(MIB, &moto.access_key, &moto.secret);
    let dest = destination(&moto.endpoint(), "");
    let prune = |extra: &[&str]| {
        let mut args = vec!["prune", "--destination", &dest, "--name", "demo"];
        args.extend_from_slice(extra);
        f.scene.ok(&args)
    };
    // moto reports every upload as started on 2010-11-10 (a fixed `Initiated`),
    // so ours is stale unless the limit reaches back further than that.
    prune(&["--abort-uploads-after", "10000d"]);
    prune(&["--dry-run"]);
    assert_eq!(uploads().len(), 2);

    let out = prune(&[]);
    assert!(
        out.contains("aborted 1 unfinished upload(s) older than 24h"),
        "{out}"
    );
    // Another virtual cluster's upload is not ours to abort.
    assert_eq!(uploads(), ["team/prod/other/theirs.zst.age"]);

    let stderr = f.scene.fails(&[
        "prune",
        "--destination",
        &dest,
        "--name",
        "demo",
        "--abort-uploads-after",
        "soon",
    ]);
    assert!(stderr.contains("--abort-uploads-after"), "{stderr}");
}

#[test]
fn the_aws_cli_downloads_a_backup_that_age_and_zstd_restore() {
    tool("age");
    tool("zstd");
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    let f = fixture_with_keys(MULTIPART_DB, ACCESS_KEY, SECRET);
    let dest = destination(&server.endpoint(), "");
    let name = f.backup_ok(&dest);

    let downloaded = f.scene.path("downloaded.zst.age");
    aws_cli(
        &server.endpoint(),
        ACCESS_KEY,
        SECRET,
        &[
            "s3",
            "cp",
            &format!("s3://{BUCKET}/team/prod/demo/{name}"),
            &downloaded.display().to_string(),
        ],
        f.scene.dir.path(),
    );
    let plain = f.scene.path("by-hand.db");
    let by_hand = std::process::Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            r#"age -d -i "$1" "$2" | zstd -d -q -o "$3""#,
            "by-hand",
            &f.identity,
            &downloaded.display().to_string(),
            &plain.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        by_hand.status.success(),
        "{}",
        String::from_utf8_lossy(&by_hand.stderr)
    );

    let restored = f.scene.path("restored.db");
    f.restore(&dest, &name, &restored.display().to_string());
    assert!(
        std::fs::read(&plain).unwrap() == std::fs::read(&restored).unwrap(),
        "age | zstd and vcbackup restore differ"
    );
}

impl Fixture {
    /// `agents` backups into `destination` under one name, started together as
    /// HA replicas on one schedule are. Returns the names they printed.
    fn backups_at_once(&self, destination: &str, agents: usize, extra: &[&str]) -> Vec<String> {
        let mut args = self.backup_args(destination);
        args.extend_from_slice(extra);
        let barrier = std::sync::Barrier::new(agents);
        let outputs: Vec<std::process::Output> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..agents)
                .map(|_| {
                    let mut command = self.scene.command(&args);
                    let barrier = &barrier;
                    scope.spawn(move || {
                        barrier.wait();
                        command.output().unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        outputs
            .into_iter()
            .map(|out| {
                assert!(
                    out.status.success(),
                    "an agent failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8(out.stdout).unwrap().trim().to_string()
            })
            .collect()
    }

    /// Rounds of 2 and 3 agents at once: every agent's backup is kept under its
    /// own name, listed, and restores.
    fn assert_no_backup_lost(&self, destination: &str, extra: &[&str]) {
        let mut printed = Vec::new();
        for agents in [2, 3, 3] {
            printed.extend(self.backups_at_once(destination, agents, extra));
        }
        let mut distinct = printed.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            printed.len(),
            "two agents printed one name: {printed:?}"
        );
        let mut listed = self.list(destination);
        listed.sort();
        assert_eq!(listed, distinct);
        for name in &listed {
            self.assert_restores(destination, name);
        }
    }
}

#[test]
fn concurrent_agents_under_one_name_never_lose_a_backup_on_s3s_fs() {
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    // One of the two sizes is multipart (CompleteMultipartUpload), the other a single PUT.
    for db in [MULTIPART_DB, 64 << 10] {
        let f = fixture_with_keys(db, ACCESS_KEY, SECRET);
        let dest = destination(&server.endpoint(), "");
        let dest = fresh_prefix(&dest);
        f.assert_no_backup_lost(&dest, &[]);
    }
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
}

#[test]
fn concurrent_agents_under_one_name_never_lose_a_backup_on_moto() {
    let (moto, _client) = moto_with_bucket();
    for db in [MULTIPART_DB, 64 << 10] {
        let f = fixture_with_keys(db, &moto.access_key, &moto.secret);
        let dest = destination(&moto.endpoint(), "");
        let dest = fresh_prefix(&dest);
        // moto reports every multipart upload as initiated in 2010, so each
        // agent's sweep after its backup would abort the others' live uploads;
        // S3 reports the real time. Sweeping is tested on its own elsewhere.
        f.assert_no_backup_lost(&dest, &["--abort-uploads-after", "100years"]);
    }
}

#[test]
fn increments_ship_to_s3_and_a_restore_applies_them() {
    // Continuous backups through the same storage layer as backups: signed
    // requests, conditional writes, then a restore from the bucket.
    let server = S3sFs::start(AccessKeys::with(ACCESS_KEY, SECRET));
    let f = fixture_with_keys(MIB, ACCESS_KEY, SECRET);
    let dest = destination(&server.endpoint(), "");
    let mut daemon = Daemon::start({
        let mut cmd = f
            .scene
            .command(&["run", "--source", &f.source, "--destination", &dest]);
        cmd.args(["--name", "demo", "--recipient", &f.recipient])
            .args(["--schedule", "@daily", "--incremental-interval", "1s"]);
        cmd
    });
    let conn = kine::open(std::path::Path::new(&f.source)).unwrap();
    let mut written = 0;
    daemon.wait_for(
        "three increments in the bucket",
        Duration::from_secs(60),
        || {
            kine::put(
                &conn,
                &format!("/registry/secrets/default/s{written}"),
                false,
                b"s".to_vec(),
            );
            written += 1;
            // The writer's pace (a key every 300 ms or so), not a wait.
            std::thread::sleep(Duration::from_millis(300));
            let shipped = daemon.metric("vcbackup_increments_total{result=\"shipped\"}")?;
            (shipped >= 3.0).then_some(())
        },
    );
    daemon.kill();
    // The highest revision any stored increment covers (names carry the range).
    let objects = server.objects();
    let shipped: Vec<i64> = objects
        .iter()
        .filter(|o| o.ends_with(".zst.age") && o.contains(".incr-"))
        .filter(|o| objects.contains(&format!("{o}.json")))
        .map(|o| {
            let range = o.rsplit_once(".incr-").unwrap().1;
            range.split('-').nth(2).unwrap().parse().unwrap()
        })
        .collect();
    assert!(shipped.len() >= 3, "{objects:?}");
    let to = f.scene.path("restored.db");
    f.restore(&dest, "latest", &to.display().to_string());
    let restored: i64 = kine::query_one(&kine::open(&to).unwrap(), "SELECT max(id) FROM kine", []);
    assert_eq!(
        restored,
        *shipped.iter().max().unwrap(),
        "the restore ends at the newest increment"
    );
    let count: i64 = kine::query_one(
        &kine::open(&to).unwrap(),
        "SELECT count(*) FROM kine WHERE name LIKE '/registry/secrets/default/s%'",
        [],
    );
    assert!(count >= 3, "{count} of the written keys restored");
    assert!(server.leftovers().is_empty(), "{:?}", server.leftovers());
}
