//! `vcbackup fleet` over 50 virtual clusters on real S3 servers (moto with
//! IAM on, s3s-fs with SigV4): statuses from listings alone, one delimiter
//! LIST plus one LIST per cluster and never a GET (counted by a proxy in
//! front of the server), exit status, and the exporter's gauges.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::Daemon;
use common::Scene;
use common::s3::Proxy;
use common::s3::{BUCKET, REGION, S3sFs, rt};

const CLUSTERS: usize = 50;
const STALE: &str = "vc-07";
const FAILED: &str = "vc-13";
const EMPTY: &str = "vc-21";
const UNVERIFIED: &str = "vc-30";

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

fn backup_name(cluster: &str, started: DateTime<Utc>, writer: u32) -> String {
    format!("{cluster}-{}-{writer:08x}-sqlite.zst.age", stamp(started))
}

/// Objects as the sidecars and drills leave them: backups, manifests and
/// records, at mixed ages. Fleet reads names and sizes only, so the bodies
/// are placeholders. Returns each cluster's expected (status, backups, bytes).
fn seed(
    client: &aws_sdk_s3::Client,
    now: DateTime<Utc>,
) -> BTreeMap<String, (&'static str, usize, u64)> {
    let mut expected = BTreeMap::new();
    let mut objects: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 1..CLUSTERS {
        let cluster = format!("vc-{i:02}");
        let before = objects.len();
        let newest_age = match cluster.as_str() {
            STALE => TimeDelta::hours(3),
            _ => TimeDelta::minutes(5 + 15 * (i as i64 % 6)),
        };
        let mut status = "ok";
        let mut backups = 0;
        if cluster != EMPTY {
            for (n, extra) in [TimeDelta::zero(), TimeDelta::hours(1), TimeDelta::hours(25)]
                .iter()
                .enumerate()
                .take(1 + i % 3)
            {
                let name = backup_name(
                    &cluster,
                    now - newest_age - *extra,
                    i as u32 * 16 + n as u32,
                );
                objects.push((name.clone(), vec![7u8; 1000 + i * 10]));
                objects.push((format!("{name}.json"), b"{}".to_vec()));
                backups += 1;
                if n == 0 && cluster != UNVERIFIED {
                    let drill = format!(
                        "{name}.verify-{}-full-ok.json",
                        stamp(now - TimeDelta::hours(3))
                    );
                    objects.push((drill, b"{}".to_vec()));
                    if cluster == FAILED {
                        let keyless = format!(
                            "{name}.verify-{}-keyless-failed.json",
                            stamp(now - TimeDelta::minutes(2))
                        );
                        objects.push((keyless, b"{}".to_vec()));
                    }
                }
            }
        } else {
            // Retention deleted the last backup; a record it left still lists the folder.
            let gone = backup_name(&cluster, now - TimeDelta::days(40), 1);
            objects.push((
                format!(
                    "{gone}.verify-{}-full-ok.json",
                    stamp(now - TimeDelta::days(39))
                ),
                b"{}".to_vec(),
            ));
        }
        status = match cluster.as_str() {
            STALE | EMPTY => "stale",
            FAILED => "failed",
            UNVERIFIED => "unverified",
            _ => status,
        };
        let bytes = objects[before..].iter().map(|(_, b)| b.len() as u64).sum();
        expected.insert(cluster.clone(), (status, backups, bytes));
        for (name, body) in &objects[before..] {
            rt().block_on(
                client
                    .put_object()
                    .bucket(BUCKET)
                    .key(format!("fleet/{cluster}/{name}"))
                    .body(body.clone().into())
                    .send(),
            )
            .unwrap();
        }
    }
    expected
}

/// vc-00 is real: a backup taken and drilled by the binary.
fn real_cluster(scene: &Scene, dest: &str) -> (String, u64) {
    let keys = common::age_keys(scene.dir.path(), "key.txt");
    let db = scene.path("state.db");
    common::small_kine_db(&db, 100_000);
    let name = scene
        .ok(&[
            "backup",
            "--name",
            "vc-00",
            "--recipient",
            &keys.recipient,
            "--source",
            &db.display().to_string(),
            "--destination",
            dest,
            "--vcluster-config",
            "/none",
            "--abort-uploads-after",
            "100years",
        ])
        .trim()
        .to_string();
    scene.ok(&[
        "verify",
        "--name",
        "vc-00",
        "--destination",
        dest,
        "-i",
        &keys.identity.display().to_string(),
    ]);
    let listed: serde_json::Value = serde_json::from_str(&scene.ok(&[
        "list",
        "-o",
        "json",
        "--name",
        "vc-00",
        "--destination",
        dest,
    ]))
    .unwrap();
    assert_eq!(listed[0]["verify"]["result"], "ok");
    (name, listed[0]["stored_size"].as_u64().unwrap())
}

fn check_fleet(scene: &Scene, proxy: &Proxy, client: &aws_sdk_s3::Client) {
    let now = Utc::now();
    let dest = format!(
        "s3://{BUCKET}/fleet?endpoint={}&force-path-style=true&region={REGION}",
        proxy.endpoint()
    );
    let (real, _) = real_cluster(scene, &dest);
    let mut expected = seed(client, now);
    proxy.seen.reset();

    let out = scene.run(&["fleet", "--destination", &dest, "-o", "json", "--verbose"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let line = common::error_line(&stderr);
    assert!(
        line.contains("3 of 50 virtual clusters stale or failed"),
        "{line}"
    );
    for cluster in [STALE, FAILED, EMPTY] {
        assert!(line.contains(&format!("{cluster} (")), "{line}");
    }
    assert!(
        !line.contains(UNVERIFIED),
        "unverified is no failure: {line}"
    );
    // The bound: one delimiter LIST, one LIST per cluster, nothing else.
    assert!(
        stderr.contains(
            "requests: 1 delimiter LIST for the cluster names, 50 LIST (one per cluster), 0 GET"
        ),
        "{stderr}"
    );
    let requests = proxy.seen.requests.lock().unwrap().clone();
    assert_eq!(proxy.seen.count("LIST/"), 1, "{requests:?}");
    assert_eq!(proxy.seen.count("LIST"), CLUSTERS, "{requests:?}");
    assert_eq!(requests.len(), CLUSTERS + 1, "no GET, no PUT: {requests:?}");

    let fleet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fleet = fleet.as_array().unwrap();
    assert_eq!(fleet.len(), CLUSTERS);
    let real_entry = &fleet[0];
    assert_eq!(real_entry["vcluster"], "vc-00");
    assert_eq!(real_entry["status"], "ok", "{real_entry}");
    assert_eq!(real_entry["newest"]["name"], real.as_str());
    assert_eq!(real_entry["last_verify"]["mode"], "full");
    expected.remove("vc-00");
    for entry in &fleet[1..] {
        let name = entry["vcluster"].as_str().unwrap();
        let (status, backups, bytes) = expected[name];
        assert_eq!(entry["status"], status, "{entry}");
        assert_eq!(entry["backups"], backups, "{entry}");
        assert_eq!(entry["bytes"], bytes, "{entry}");
    }
    let stale = fleet.iter().find(|e| e["vcluster"] == STALE).unwrap();
    let age = stale["newest"]["age_seconds"].as_i64().unwrap();
    assert!((3 * 3600..3 * 3600 + 120).contains(&age), "{stale}");
    let failed = fleet.iter().find(|e| e["vcluster"] == FAILED).unwrap();
    assert_eq!(failed["last_verify"]["result"], "failed");

    // The table, for people.
    let table = String::from_utf8(scene.run(&["fleet", "--destination", &dest]).stdout).unwrap();
    assert!(table.starts_with("VCLUSTER"), "{table}");
    assert_eq!(table.lines().count(), CLUSTERS + 1);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(STALE) && l.contains("stale") && l.contains(" 3h ")),
        "{table}"
    );

    // With a generous --max-age only the failed drill is left to fail on... and the empty folder.
    let out = scene.run(&["fleet", "--destination", &dest, "--max-age", "4h"]);
    let line = common::error_line(&String::from_utf8_lossy(&out.stderr));
    assert!(line.contains("2 of 50") && !line.contains(STALE), "{line}");
}

#[test]
fn fifty_clusters_on_s3s_fs() {
    let server = S3sFs::start(common::s3::AccessKeys::with(
        "AKIAFLEET00000000001",
        "fleet/secret/0123456789",
    ));
    let proxy = Proxy::start(server.addr);
    let mut scene = Scene::new();
    scene.static_keys("AKIAFLEET00000000001", "fleet/secret/0123456789");
    let client = common::s3::s3_client(
        &server.endpoint(),
        "AKIAFLEET00000000001",
        "fleet/secret/0123456789",
    );
    check_fleet(&scene, &proxy, &client);
}

#[test]
fn fifty_clusters_on_moto() {
    let moto = common::s3::Moto::start();
    let client = common::s3::s3_client(&moto.endpoint(), &moto.access_key, &moto.secret);
    rt().block_on(client.create_bucket().bucket(BUCKET).send())
        .unwrap();
    let proxy = Proxy::start(moto.addr);
    let mut scene = Scene::new();
    scene.static_keys(&moto.access_key, &moto.secret);
    check_fleet(&scene, &proxy, &client);
}

#[test]
fn the_exporter_serves_per_cluster_gauges_and_follows_the_bucket() {
    let server = S3sFs::start(common::s3::AccessKeys::with(
        "AKIAFLEET00000000002",
        "fleet/secret/0123456789",
    ));
    let client = common::s3::s3_client(
        &server.endpoint(),
        "AKIAFLEET00000000002",
        "fleet/secret/0123456789",
    );
    let now = Utc::now();
    let expected = seed(&client, now);
    let dest = format!(
        "s3://{BUCKET}/fleet?endpoint={}&force-path-style=true&region={REGION}",
        server.endpoint()
    );
    let mut cmd = common::vcbackup();
    cmd.args(["fleet", "--destination", &dest, "--refresh", "1s"])
        .env("AWS_ACCESS_KEY_ID", "AKIAFLEET00000000002")
        .env("AWS_SECRET_ACCESS_KEY", "fleet/secret/0123456789")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    // `Daemon` adds --listen; for fleet that makes it the exporter.
    let exporter = Daemon::start({
        let mut c = cmd;
        c.arg("--max-age").arg("2h");
        c
    });
    let gauge =
        |name: &str, cluster: &str| exporter.metric(&format!("{name}{{vcluster=\"{cluster}\"}}"));
    exporter.wait_for("the first survey", Duration::from_secs(30), || {
        gauge("vcbackup_fleet_backups", "vc-01")
    });
    let text = exporter.metrics();
    for (cluster, (_, backups, bytes)) in &expected {
        assert_eq!(
            gauge("vcbackup_fleet_backups", cluster),
            Some(*backups as f64),
            "{cluster}"
        );
        assert_eq!(
            gauge("vcbackup_fleet_bytes", cluster),
            Some(*bytes as f64),
            "{cluster}"
        );
    }
    let stale = gauge("vcbackup_fleet_last_success_timestamp_seconds", STALE).unwrap();
    assert!((stale - (now - TimeDelta::hours(3)).timestamp() as f64).abs() < 2.0);
    assert_eq!(
        gauge("vcbackup_fleet_last_success_timestamp_seconds", EMPTY),
        Some(0.0)
    );
    assert_eq!(
        gauge("vcbackup_fleet_last_verify_success", FAILED),
        Some(0.0)
    );
    assert_eq!(
        gauge("vcbackup_fleet_last_verify_success", "vc-01"),
        Some(1.0)
    );
    assert_eq!(
        gauge("vcbackup_fleet_last_verify_success", UNVERIFIED),
        None
    );
    common::promtool_check(&text);

    // A new backup of the stale cluster shows at the next refresh.
    let fresh = backup_name(STALE, Utc::now(), 0xffff);
    for key in [fresh.clone(), format!("{fresh}.json")] {
        rt().block_on(
            client
                .put_object()
                .bucket(BUCKET)
                .key(format!("fleet/{STALE}/{key}"))
                .body(b"x".to_vec().into())
                .send(),
        )
        .unwrap();
    }
    exporter.wait_for("the new backup", Duration::from_secs(30), || {
        gauge("vcbackup_fleet_last_success_timestamp_seconds", STALE)
            .filter(|t| *t > Utc::now().timestamp() as f64 - 60.0)
    });
}
