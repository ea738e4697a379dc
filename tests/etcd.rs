//! The etcd source against a real etcd (Debian's etcd-server) on loopback:
//! backups over plain HTTP and over TLS with client certificates laid out as in
//! a vCluster pod, restored with `etcdctl snapshot restore` and read back from
//! a restarted etcd; consistency under concurrent writes; the errors a user
//! meets. Tools missing make the tests fail: run the setup.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::etcd::*;
use common::*;
use tempfile::TempDir;

/// Takes a backup of `source` into `dest` and returns its manifest.
fn backup(source: &str, dest: &Path, extra: &[&str]) -> serde_json::Value {
    let output = run(vcbackup()
        .args([
            "backup",
            "--source",
            source,
            "--name",
            "demo",
            "--destination",
        ])
        .arg(file_url(dest))
        .args(extra));
    assert!(
        output.status.success(),
        "backup failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let name = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let manifest = std::fs::read(dest.join("demo").join(format!("{name}.json"))).unwrap();
    serde_json::from_slice(&manifest).unwrap()
}

/// `vcbackup restore latest` of `dest`'s newest backup into `to`: the snapshot
/// file, its digest checked.
fn restore_latest(dest: &Path, to: &Path, identity: Option<&Path>) {
    let mut restore = vcbackup();
    restore
        .args(["restore", "latest", "--name", "demo", "--destination"])
        .arg(file_url(dest))
        .arg("--to")
        .arg(to);
    if let Some(identity) = identity {
        restore.arg("-i").arg(identity);
    }
    ok(&mut restore);
}

fn assert_keys(etcd: &Etcd, count: usize) {
    let (kvs, _) = etcd.keys("/registry/");
    let expected: Vec<(String, String)> = (0..count)
        .map(|i| {
            (
                format!("/registry/pods/default/p{i:03}"),
                format!("pod {i}"),
            )
        })
        .collect();
    let mut actual: Vec<(String, String)> = kvs.into_iter().map(|(k, v, _)| (k, v)).collect();
    actual.sort();
    assert_eq!(actual, expected);
}

/// Checks that `manifest` records the store's revision, and stops the member;
/// returns the revision.
fn assert_revision_and_stop(etcd: Etcd, manifest: &serde_json::Value) -> i64 {
    let (_, revision) = etcd.keys("/registry/");
    assert_eq!(manifest["revision"].as_i64(), Some(revision));
    revision
}

fn put_pods(etcd: &Etcd, count: usize) {
    for i in 0..count {
        etcd.put(
            &format!("/registry/pods/default/p{i:03}"),
            &format!("pod {i}"),
        );
    }
}

#[test]
fn plain_http_backup_restores_with_etcdctl() {
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd"));
    put_pods(&etcd, 12);
    let keys = age_keygen(dir.path(), "identity.txt");
    let dest = dir.path().join("backups");
    let manifest = backup(&etcd.endpoint, &dest, &["--recipient", &keys.recipient]);
    assert_eq!(manifest["kind"], "etcd");
    assert_eq!(
        manifest["etcd"]["server_version"].as_str().unwrap(),
        "3.4.23"
    );
    assert!(!manifest["etcd"]["cluster_id"].as_str().unwrap().is_empty());
    let revision = assert_revision_and_stop(etcd, &manifest);

    // vcbackup restore: the snapshot file, digest intact.
    let snapshot = dir.path().join("snapshot.db");
    restore_latest(&dest, &snapshot, Some(&keys.identity));
    // age -d | zstd -d gives the same bytes.
    let name = manifest["name"].as_str().unwrap();
    let stored = dest.join("demo").join(name);
    let piped = dir.path().join("piped.db");
    ok(Command::new("sh").arg("-c").arg(format!(
        "{} -d -i '{}' '{}' | {} -d -q -o '{}'",
        tool("age").display(),
        keys.identity.display(),
        stored.display(),
        tool("zstd").display(),
        piped.display()
    )));
    assert_eq!(
        std::fs::read(&snapshot).unwrap(),
        std::fs::read(&piped).unwrap()
    );
    assert_eq!(
        std::fs::metadata(&snapshot).unwrap().len(),
        manifest["size"].as_u64().unwrap()
    );

    let restored = restore_and_start(&snapshot, dir.path(), "vc");
    assert_keys(&restored, 12);
    assert_eq!(restored.keys("/registry/").1, revision);
}

#[test]
fn a_snapshot_larger_than_a_storage_chunk_streams_through() {
    // The pipeline hands storage 1 MiB chunks, blocking while its channel is
    // full. The store is large enough (about 19 MB) that compressed output
    // reaches storage while the snapshot still streams, not only at the end.
    use rand::RngCore;
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd"));
    let mut rng = rand::rng();
    let mut values = Vec::new();
    for i in 0..160 {
        // Incompressible, and under the 128 KiB limit of one command-line argument.
        let mut raw = vec![0u8; 60_000];
        rng.fill_bytes(&mut raw);
        let value = hex::encode(&raw);
        etcd.put(&format!("/registry/secrets/default/s{i:03}"), &value);
        values.push(value);
    }
    let dest = dir.path().join("backups");
    let manifest = backup(&etcd.endpoint, &dest, &["--no-encryption"]);
    let stored = manifest["stored_size"].as_u64().unwrap();
    assert!(
        stored > 8 << 20,
        "backup of {stored} bytes spans too few chunks"
    );
    assert_revision_and_stop(etcd, &manifest);

    let snapshot = dir.path().join("snapshot.db");
    restore_latest(&dest, &snapshot, None);
    let restored = restore_and_start(&snapshot, dir.path(), "vc");
    let (kvs, _) = restored.keys("/registry/");
    let restored_values: Vec<String> = kvs.into_iter().map(|(_, v, _)| v).collect();
    assert_eq!(restored_values, values);
}

#[test]
fn tls_with_client_certificates_as_in_a_vcluster_pod() {
    let dir = TempDir::new().unwrap();
    let pki = Pki::new(dir.path());
    let etcd = Etcd::start_with(&dir.path().join("etcd"), "vc", Some(&pki));
    put_pods(&etcd, 7);
    let keys = age_keygen(dir.path(), "identity.txt");
    let dest = dir.path().join("backups");
    // No certificate flags: the defaults under --data-dir are the vCluster files.
    let manifest = backup(
        &etcd.endpoint,
        &dest,
        &[
            "--recipient",
            &keys.recipient,
            "--data-dir",
            pki.data_dir.to_str().unwrap(),
        ],
    );
    assert_revision_and_stop(etcd, &manifest);

    // decrypt of the downloaded file, checked against the manifest beside it.
    let stored = dest.join("demo").join(manifest["name"].as_str().unwrap());
    let snapshot = dir.path().join("snapshot.db");
    ok(&mut decrypt(&stored, &keys.identity, &snapshot));
    let restored = restore_and_start(&snapshot, dir.path(), "vc");
    assert_keys(&restored, 7);
}

#[test]
fn consistent_while_a_writer_keeps_writing() {
    let dir = TempDir::new().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd"));
    // A few MiB, so the snapshot takes a while and the writer lands in it.
    let big = "x".repeat(64 * 1024);
    for i in 0..64 {
        etcd.put(&format!("/registry/configmaps/big{i:02}"), &big);
    }
    let endpoint = etcd.endpoint.clone();
    let writer = Repeating::start(Duration::ZERO, move |i| {
        let output = run(Command::new(tool("etcdctl")).env("ETCDCTL_API", "3").args([
            "--endpoints",
            &endpoint,
            "put",
            &format!("/w/{i:06}"),
            "v",
        ]));
        assert!(output.status.success(), "writer failed");
    });
    writer.wait_steps(5);
    let dest = dir.path().join("backups");
    let manifest = backup(&etcd.endpoint, &dest, &["--no-encryption"]);
    let at_backup = writer.steps();
    writer.wait_steps(at_backup + 5);
    writer.stop();

    let revision = manifest["revision"].as_i64().expect("revision in manifest");
    let listed = ok_stdout(
        vcbackup()
            .args([
                "list",
                "--output",
                "json",
                "--name",
                "demo",
                "--destination",
            ])
            .arg(file_url(&dest)),
    );
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["revision"].as_i64(), Some(revision));

    let (all, _) = etcd.keys("/w/");
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|(_, _, rev)| *rev <= revision)
        .map(|(k, _, _)| k.clone())
        .collect();
    assert!(
        !expected.is_empty() && expected.len() < all.len(),
        "the writer wrote before and after the snapshot"
    );
    drop(etcd);

    let snapshot = dir.path().join("snapshot.db");
    ok(vcbackup()
        .args(["restore", "--name", "demo", "--destination"])
        .arg(file_url(&dest))
        .arg("--to")
        .arg(&snapshot));
    let restored = restore_and_start(&snapshot, dir.path(), "vc");
    let (kvs, restored_revision) = restored.keys("/w/");
    let actual: BTreeSet<String> = kvs.into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(restored_revision, revision);
    assert_eq!(actual, expected);
}

fn backup_fails(args: &[&str]) -> String {
    let dest = TempDir::new().unwrap();
    let output = run(unencrypted("backup", &file_url(dest.path())).args(args));
    assert!(!output.status.success(), "backup should fail: {args:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let entries = std::fs::read_dir(dest.path().join("demo"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 0, "a failed backup leaves nothing behind");
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or(&stderr)
        .to_string()
}

#[test]
fn wrong_certificates_and_unreachable_endpoints_say_so() {
    let dir = TempDir::new().unwrap();
    let pki = Pki::new(dir.path());
    let etcd = Etcd::start_with(&dir.path().join("etcd"), "vc", Some(&pki));
    let data_dir = pki.data_dir.to_str().unwrap();

    // A CA that did not sign etcd's server certificate.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    make_ca(&other, "ca");
    make_cert(&other, "ca", "client", "intruder", CLIENT_EXT);
    let other_ca = other.join("ca.crt");
    let err = backup_fails(&[
        "--source",
        &etcd.endpoint,
        "--data-dir",
        data_dir,
        "--etcd-cacert",
        other_ca.to_str().unwrap(),
    ]);
    assert!(err.contains(&etcd.endpoint), "{err}");
    assert!(
        err.contains("TLS failed") && err.contains("--etcd-cacert"),
        "{err}"
    );
    assert!(!err.contains("PRIVATE KEY"), "{err}");

    // A client certificate etcd does not trust.
    let err = backup_fails(&[
        "--source",
        &etcd.endpoint,
        "--data-dir",
        data_dir,
        "--etcd-cert",
        other.join("client.crt").to_str().unwrap(),
        "--etcd-key",
        other.join("client.key").to_str().unwrap(),
    ]);
    assert!(err.contains(&etcd.endpoint), "{err}");
    assert!(err.contains("rejected the client certificate"), "{err}");

    // Auth on: the certificate's CN names a user without the root role.
    ok(etcd.etcdctl().args(["user", "add", "root:root-password"]));
    ok(etcd.etcdctl().args(["user", "grant-role", "root", "root"]));
    ok(etcd
        .etcdctl()
        .args(["user", "add", "kube-apiserver-etcd-client:unused-password"]));
    ok(etcd.etcdctl().args(["auth", "enable"]));
    let err = backup_fails(&["--source", &etcd.endpoint, "--data-dir", data_dir]);
    assert!(err.contains(&etcd.endpoint), "{err}");
    assert!(
        err.contains("permission denied") && err.contains("root role"),
        "{err}"
    );

    // Nothing listens there.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let err = backup_fails(&["--source", &nowhere]);
    assert!(err.contains(&nowhere), "{err}");
    assert!(
        err.contains("refused") && err.contains("reachable"),
        "{err}"
    );
}

#[test]
fn auto_detection_reports_what_it_chose_and_where_it_looked() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let data_arg = data.to_str().unwrap();

    let err = backup_fails(&["--data-dir", data_arg]);
    for place in ["state.db", "server/db/state.db", "etcd"] {
        assert!(
            err.contains(&data.join(place).display().to_string()),
            "{place}: {err}"
        );
    }

    // Embedded etcd whose certificates never arrive: it waits, then names them.
    std::fs::create_dir(data.join("etcd")).unwrap();
    let output = run(unencrypted("backup", &file_url(&dir.path().join("b")))
        .args(["--wait-for-certs", "1s", "--data-dir", data_arg])
        // What was detected and what it waits for are logged at info.
        .env("VCBACKUP_LOG", "info"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("embedded etcd at https://127.0.0.1:2379"),
        "{stderr}"
    );
    assert!(
        stderr.contains("waiting for the etcd client certificates"),
        "{stderr}"
    );
    assert!(stderr.contains("apiserver-etcd-client.key"), "{stderr}");

    // The k3s layout wins over embedded etcd and is opened as SQLite.
    std::fs::create_dir_all(data.join("server/db")).unwrap();
    std::fs::write(data.join("server/db/state.db"), b"not a database").unwrap();
    let output = run(unencrypted("backup", &file_url(&dir.path().join("b")))
        .args(["--data-dir", data_arg])
        .env("VCBACKUP_LOG", "info"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("k3s distro layout"), "{stderr}");
    assert!(
        stderr.contains("server/db/state.db: not an SQLite database"),
        "{stderr}"
    );
}

/// One agent per replica, each beside its own member, all under one name, as
/// helm-values/embedded-etcd.yaml deploys them.
fn start_agents(cluster: &[Etcd], dest: &Path, args: &[&str]) -> Vec<Daemon> {
    cluster
        .iter()
        .map(|member| {
            let mut cmd = unencrypted("run", &file_url(dest));
            cmd.args(["--source", &member.endpoint]).args(args);
            Daemon::start(cmd)
        })
        .collect()
}

#[test]
fn with_ha_embedded_etcd_only_the_leaders_agent_backs_up() {
    let dir = TempDir::new().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    put_pods(&cluster[0], 5);
    let dest = dir.path().join("backups");
    let agents = start_agents(&cluster, &dest, &["--schedule", "@every 1s"]);
    // Every agent has decided, and the leader's agent has backed up a few slots.
    agents[0].wait_for("three backups", Duration::from_secs(60), || {
        let decided = agents.iter().all(|agent| {
            let s = agent.status();
            !s["standby"].is_null() || !s["last_success"].is_null()
        });
        // Complete backups: their manifests (an upload in flight leaves a partial file).
        let backups = std::fs::read_dir(dest.join("demo"))
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
                })
                .count()
            })
            .unwrap_or(0);
        (decided && backups >= 3).then_some(())
    });
    let statuses: Vec<serde_json::Value> = agents.iter().map(Daemon::status).collect();
    let metrics: Vec<String> = agents.iter().map(|agent| agent.get("/metrics").1).collect();
    drop(agents);

    let ids: Vec<(String, String)> = cluster.iter().map(member_and_leader).collect();
    let leader = &ids[0].1;
    let leader_index = ids.iter().position(|(member, _)| member == leader).unwrap();
    for (i, status) in statuses.iter().enumerate() {
        let standby = metric(&metrics[i], "vcbackup_standby").unwrap();
        if i == leader_index {
            assert!(status["standby"].is_null(), "leader's agent: {status}");
            assert_eq!(standby, 0.0);
        } else {
            let why = status["standby"].as_str().unwrap_or_default();
            assert!(why.contains("follower") && why.contains(leader), "{status}");
            assert_eq!(standby, 1.0);
            // Standing by is not a failure, and freshness follows the leader's backups.
            assert!(status["last_failure"].is_null(), "{status}");
            assert!(metric(&metrics[i], "vcbackup_last_success_timestamp_seconds").unwrap() > 0.0);
        }
    }
    // Every stored backup is a snapshot of the leader's member, one per slot.
    let manifests: Vec<serde_json::Value> = std::fs::read_dir(dest.join("demo"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    assert!(manifests.len() >= 3, "{manifests:?}");
    for manifest in &manifests {
        assert_eq!(
            manifest["etcd"]["member_id"].as_str(),
            Some(leader.as_str())
        );
    }
}

#[test]
fn with_ha_embedded_etcd_only_the_leaders_agent_ships_increments() {
    let dir = TempDir::new().unwrap();
    let cluster = start_cluster(dir.path(), 3);
    put_pods(&cluster[0], 3);
    let dest = dir.path().join("backups");
    let agents = start_agents(
        &cluster,
        &dest,
        &["--schedule", "@daily", "--incremental-interval", "1s"],
    );
    let objects = || files(&dest.join("demo"));
    let increments = || {
        objects()
            .iter()
            .filter(|n| n.contains(".incr-") && n.ends_with(".json"))
            .count()
    };
    // The chain's base first: a change before it would be in the base, not an increment.
    agents[0].wait_for("the base backup", Duration::from_secs(60), || {
        objects()
            .iter()
            .any(|n| n.ends_with("-etcd.zst.json") && !n.contains(".incr-"))
            .then_some(())
    });
    // A change at a time, each shipped before the next is made.
    for round in 0..4 {
        cluster[0].put(&format!("/registry/configmaps/default/c{round}"), "v");
        agents[0].wait_for(
            &format!("increment {} to be stored", round + 1),
            Duration::from_secs(60),
            || (increments() > round).then_some(()),
        );
    }
    let metrics: Vec<String> = agents.iter().map(|agent| agent.get("/metrics").1).collect();
    drop(agents);
    let leader = &member_and_leader(&cluster[0]).1;
    let leader_index = cluster
        .iter()
        .position(|m| &member_and_leader(m).0 == leader)
        .unwrap();
    let names = objects();
    let bases: Vec<&String> = names.iter().filter(|n| n.ends_with("-etcd.zst")).collect();
    assert_eq!(
        bases.len(),
        1,
        "only the leader's agent starts a chain: {names:?}"
    );
    let stem = bases[0].strip_suffix(".zst").unwrap();
    assert!(
        names
            .iter()
            .filter(|n| n.contains(".incr-"))
            .all(|n| n.starts_with(stem)),
        "{names:?}"
    );
    for (i, text) in metrics.iter().enumerate() {
        let shipped = metric(text, "vcbackup_increments_total{result=\"shipped\"}").unwrap();
        let no_chain = metric(
            text,
            "vcbackup_full_backups_forced_total{reason=\"no_chain\"}",
        )
        .unwrap();
        if i == leader_index {
            assert!(shipped >= 1.0, "the leader's agent shipped nothing");
        } else {
            // Standing by is quiet: no increments, no full backup counted as forced.
            assert_eq!((shipped, no_chain), (0.0, 0.0), "follower {i}");
        }
    }
}
