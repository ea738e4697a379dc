//! `vcbackup export`: backups of kine's SQLite database and of a real etcd,
//! taken while a writer runs, exported as vCluster's snapshot archive and read
//! back by independent readers (Python's tarfile and gzip, and GNU tar):
//! entry order, exact names, value bytes and the release entry; the key sets
//! match the source at the backup's revision (SQL on the kine database,
//! `etcdctl get --rev` on etcd). Also the vCluster config saved with every
//! backup (`list`, `restore --config-out`), the errors an operator meets, and
//! `--to s3://…` against moto.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use rusqlite::Connection;

use common::etcd::Etcd;
use common::kine;
use common::s3::Moto;
use common::*;

/// One archive entry as an independent reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: Vec<u8>,
    value: Vec<u8>,
    mode: u32,
    regular: bool,
}

/// Reads `archive` with Python's gzip and tarfile: names as raw bytes.
const PY_READER: &str = r#"
import base64, gzip, json, sys, tarfile
data = gzip.decompress(open(sys.argv[1], "rb").read())
import io
out = []
with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
    for m in tar:
        body = tar.extractfile(m).read() if m.isreg() else b""
        out.append({
            "name": base64.b64encode(m.name.encode("utf-8", "surrogateescape")).decode(),
            "value": base64.b64encode(body).decode(),
            "mode": m.mode,
            "regular": m.isreg(),
        })
print(json.dumps(out))
"#;

fn b64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}

fn read_archive(archive: &Path) -> Vec<Entry> {
    let out = ok(Command::new(tool("python3"))
        .args(["-c", PY_READER])
        .arg(archive));
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let entries: Vec<Entry> = entries
        .iter()
        .map(|e| Entry {
            name: b64(e["name"].as_str().unwrap()),
            value: b64(e["value"].as_str().unwrap()),
            mode: e["mode"].as_u64().unwrap() as u32,
            regular: e["regular"].as_bool().unwrap(),
        })
        .collect();
    // GNU tar lists the same names, leading `/` kept with -P.
    let listed = ok(Command::new(tool("tar"))
        .args(["-t", "-z", "-P", "-f"])
        .arg(archive));
    let names: Vec<&[u8]> = listed
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let expected: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, expected, "GNU tar lists other names");
    entries
}

/// The release entry's JSON, checked to come first; `None` if there is none.
fn release(entries: &[Entry]) -> Option<serde_json::Value> {
    let release = entries
        .iter()
        .position(|e| e.name == b"/vcluster/snapshot/release")?;
    assert_eq!(release, 0, "the release entry must come first");
    Some(serde_json::from_slice(&entries[0].value).unwrap())
}

/// The keys after the release entry, checked: regular files, mode 0666, in key order.
fn keys(entries: &[Entry]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let start = usize::from(release(entries).is_some());
    let keys: Vec<(Vec<u8>, Vec<u8>)> = entries[start..]
        .iter()
        .map(|e| {
            assert!(e.regular, "{:?} is not a regular file", e.name);
            assert_eq!(e.mode, 0o666, "{:?}", String::from_utf8_lossy(&e.name));
            (e.name.clone(), e.value.clone())
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0].0 < w[1].0),
        "keys are not in strictly increasing order"
    );
    keys
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The only backup under `dest/demo` (its file) and its manifest.
fn only_backup(dest: &Path) -> (PathBuf, serde_json::Value) {
    let dir = dest.join("demo");
    let manifests: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifests[0]).unwrap()).unwrap();
    (dir.join(manifest["name"].as_str().unwrap()), manifest)
}

/// `backup` of `source` into `dest` as `demo`, for `recipient`, with the
/// vCluster config `config`.
fn backup(source: impl AsRef<OsStr>, dest: &Path, recipient: &str, config: &Path) -> Command {
    let mut cmd = vcbackup();
    cmd.args(["backup", "--name", "demo", "--source"])
        .arg(source)
        .arg("--destination")
        .arg(file_url(dest))
        .args(["--recipient", recipient, "--vcluster-config"])
        .arg(config);
    cmd
}

/// `export` of the downloaded backup file `input`, decrypted with `identity`.
fn export_input(input: &Path, identity: &Path) -> Command {
    let mut cmd = vcbackup();
    cmd.arg("export")
        .arg("--input")
        .arg(input)
        .arg("-i")
        .arg(identity);
    cmd
}

/// `restore latest` of `demo` from `dest` to `to`, its config to `config_out`.
fn restore_config_out(dest: &Path, identity: &Path, to: &Path, config_out: &Path) -> Command {
    let mut cmd = vcbackup();
    cmd.args(["restore", "latest", "--name", "demo", "--destination"])
        .arg(file_url(dest))
        .arg("-i")
        .arg(identity)
        .arg("--to")
        .arg(to)
        .arg("--config-out")
        .arg(config_out);
    cmd
}

// ------------------------------------------------------------------- kine

/// A kine database in SQLite's default (rollback journal) mode, with `rows`
/// creates of `(name, value)`.
fn kine_db(path: &Path, rows: impl Iterator<Item = (String, Vec<u8>)>) {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(kine::SCHEMA).unwrap();
    for (name, value) in rows {
        kine::put(&conn, &name, false, value);
    }
}

/// Keys and values of the kine database at revision `rev`, by kine's rules,
/// leaving out vCluster's own `/vcluster/snapshot/` keys as the archive does.
fn kine_at(path: &Path, rev: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name, value FROM kine WHERE id IN
               (SELECT max(id) FROM kine WHERE id <= ?1 GROUP BY name)
             AND deleted = 0 AND name NOT GLOB 'gap-*' AND name NOT GLOB 'compact_rev_key*'
             AND name NOT GLOB '/vcluster/snapshot/*'
             ORDER BY CAST(name AS BLOB)",
        )
        .unwrap();
    stmt.query_map([rev], |r| {
        Ok((r.get::<_, String>(0)?.into_bytes(), r.get::<_, Vec<u8>>(1)?))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

const CONFIG_YAML: &str = "controlPlane:\n  distro:\n    k8s:\n      enabled: true\n  statefulSet:\n    env:\n      - name: SECRET_TOKEN\n        value: hunter2-not-for-logs\n";

/// A test's fresh directory: where its kine database and backups go, an age
/// key (from the real age-keygen), and [`CONFIG_YAML`] written to `config`.
struct Setup {
    tmp: tempfile::TempDir,
    db: PathBuf,
    dest: PathBuf,
    identity: PathBuf,
    recipient: String,
    config: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let Keys {
        identity,
        recipient,
    } = age_keygen(tmp.path(), "key.txt");
    let config = tmp.path().join("config.yaml");
    std::fs::write(&config, CONFIG_YAML).unwrap();
    Setup {
        db: tmp.path().join("state.db"),
        dest: tmp.path().join("backups"),
        identity,
        recipient,
        config,
        tmp,
    }
}

#[test]
fn sqlite_backup_taken_under_writes_exports_the_store_at_its_revision() {
    let s = setup();

    let conn = kine::open(&s.db).unwrap();
    let long = format!("/registry/configmaps/default/{}", "long-name-".repeat(20));
    let pod = |i: usize| format!("/registry/pods/ns-{}/p{i:04}", i % 7);
    for i in 0..2000 {
        let value: Vec<u8> = (0..200).map(|b| ((b + i) % 256) as u8).collect();
        kine::put(&conn, &pod(i), false, value);
    }
    for i in (0..2000).step_by(3) {
        kine::put(&conn, &pod(i), false, b"updated");
    }
    for i in (0..2000).step_by(5) {
        kine::put(&conn, &pod(i), true, b"");
    }
    kine::put(&conn, &long, false, b"long key value");
    kine::put(&conn, "compact_rev_key", false, b"");
    kine::put(
        &conn,
        "/vcluster/snapshot/release",
        false,
        b"{\"stale\":true}",
    );
    conn.execute(
        "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, lease)
         SELECT max(id) + 5, 'gap-' || (max(id) + 5), 0, 1, 0, 0, 0 FROM kine",
        [],
    )
    .unwrap();
    drop(conn);

    // A writer keeps creating, updating and deleting keys while the backup runs.
    let writer = {
        let conn = Connection::open(&s.db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        Repeating::start(Duration::ZERO, move |n| {
            let key = format!("/registry/leases/kube-system/l{}", n % 50);
            kine::put(&conn, &key, n % 11 == 10, format!("renew {n}").as_bytes());
        })
    };
    // Writes before, during and after the backup.
    writer.wait_steps(20);
    let out = ok(backup(&s.db, &s.dest, &s.recipient, &s.config).args([
        "--chart-version",
        "0.30.5",
        "--namespace",
        "team-a",
    ]));
    writer.wait_steps(writer.steps() + 20);
    let writes = writer.stop();
    assert!(writes > 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("hunter2"), "the config leaked: {stderr}");

    let (backup, manifest) = only_backup(&s.dest);
    let revision = manifest["revision"].as_i64().unwrap();
    let expected = kine_at(&s.db, revision);
    let max_id: i64 = Connection::open(&s.db)
        .unwrap()
        .query_row("SELECT max(id) FROM kine", [], |r| r.get(0))
        .unwrap();
    assert!(
        max_id > revision,
        "the writer wrote nothing after the backup"
    );
    assert!(expected.iter().any(|(k, _)| k == long.as_bytes()));

    // The config: saved beside the backup, sealed, listed.
    let saved = &manifest["config"];
    let config_object = s.dest.join("demo").join(saved["name"].as_str().unwrap());
    let sealed = std::fs::read(&config_object).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/"));
    assert!(!String::from_utf8_lossy(&sealed).contains("hunter2"));
    assert_eq!(saved["release"]["chart_version"], "0.30.5");
    let listed = list_json(&file_url(&s.dest), "demo");
    assert_eq!(listed[0]["config"], true);

    // Export from the destination.
    let archive = s.tmp.path().join("out").join("demo.tar.gz");
    std::fs::create_dir(archive.parent().unwrap()).unwrap();
    ok(vcbackup()
        .args(["export", "latest", "--name", "demo", "--destination"])
        .arg(file_url(&s.dest))
        .arg("--identity")
        .arg(&s.identity)
        .arg("-o")
        .arg(&archive));
    assert_eq!(mode(&archive), 0o600);
    let leftovers: Vec<_> = std::fs::read_dir(archive.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["demo.tar.gz"], "scratch files left behind");
    let entries = read_archive(&archive);
    let release = release(&entries).expect("a release entry");
    assert_eq!(release["releaseName"], "demo");
    assert_eq!(release["releaseNamespace"], "team-a");
    assert_eq!(release["chartName"], "vcluster");
    assert_eq!(release["chartVersion"], "0.30.5");
    assert_eq!(
        b64(release["values"].as_str().unwrap()),
        CONFIG_YAML.as_bytes()
    );
    assert_eq!(keys(&entries), expected);

    // The same through standard output, from the downloaded file.
    let piped = ok(export_input(&backup, &s.identity).args(["-o", "-"]));
    let piped_path = s.tmp.path().join("piped.tar.gz");
    std::fs::write(&piped_path, &piped.stdout).unwrap();
    assert_eq!(read_archive(&piped_path), entries);

    // restore --config-out writes the YAML back, owner-only.
    let restored_config = s.tmp.path().join("values.yaml");
    ok(&mut restore_config_out(
        &s.dest,
        &s.identity,
        &s.tmp.path().join("restored.db"),
        &restored_config,
    ));
    assert_eq!(
        std::fs::read_to_string(&restored_config).unwrap(),
        CONFIG_YAML
    );
    assert_eq!(mode(&restored_config), 0o600);
}

#[test]
fn export_errors_name_the_input_and_leave_nothing_behind() {
    let s = setup();
    let stranger = age_keygen(s.tmp.path(), "other.txt").identity;
    kine_db(
        &s.db,
        (0..300).map(|i| (format!("/registry/secrets/default/s{i}"), vec![7u8; 3000])),
    );
    // No config file: the backup goes on, with one warning.
    let out = ok(&mut backup(
        &s.db,
        &s.dest,
        &s.recipient,
        &s.tmp.path().join("missing.yaml"),
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("no vCluster config").count(), 1, "{stderr}");
    let (backup, manifest) = only_backup(&s.dest);
    assert!(manifest.get("config").is_none());
    let shown = backup.display().to_string();
    let work = s.tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let archive = work.join("x.tar.gz");
    let export = |input: &Path, key: &Path| {
        let mut cmd = export_input(input, key);
        cmd.arg("-o").arg(&archive);
        cmd
    };

    let err = error_line(&fails(&mut export(&backup, &stranger)));
    assert!(
        err.contains(&shown) && err.contains("does not match"),
        "{err}"
    );

    // A flipped byte in a copy with no manifest beside it: age's authentication catches it.
    let corrupt = work.join("copy.zst.age");
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&corrupt, &bytes).unwrap();
    let err = error_line(&fails(&mut export(&corrupt, &s.identity)));
    assert!(err.contains(&corrupt.display().to_string()), "{err}");
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["copy.zst.age"], "a failed export left files");

    // Without a saved config: no release entry, and a warning.
    let out = ok(&mut export(&backup, &s.identity));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no release entry"));
    let entries = read_archive(&archive);
    assert!(release(&entries).is_none());
    assert_eq!(keys(&entries), kine_at(&s.db, i64::MAX));

    // An existing output is never replaced without --force.
    std::fs::write(&archive, b"keep me").unwrap();
    let err = error_line(&fails(&mut export(&backup, &s.identity)));
    assert!(
        err.contains(&archive.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&archive).unwrap(), b"keep me");
    ok(export(&backup, &s.identity).arg("--force"));
    assert_eq!(read_archive(&archive), entries);

    // --config-out of a backup without one fails before anything is restored.
    let target = s.tmp.path().join("restored.db");
    let err = error_line(&fails(&mut restore_config_out(
        &s.dest,
        &s.identity,
        &target,
        &s.tmp.path().join("values.yaml"),
    )));
    assert!(err.contains("no saved vCluster config"), "{err}");
    assert!(!target.exists());
}

// ------------------------------------------------------------------- etcd

/// `etcdctl put`, the value on standard input (an argument is limited in size).
fn etcd_put(etcd: &Etcd, key: &[u8], value: &[u8]) {
    use std::io::Write;
    let mut child = etcd
        .etcdctl()
        .arg("put")
        .arg(OsStr::from_bytes(key))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value).unwrap();
    assert!(child.wait().unwrap().success(), "etcdctl put failed");
}

/// Every key with its value at revision `rev`, in key order.
fn etcd_all_at(etcd: &Etcd, rev: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
    let out = ok(etcd.etcdctl().args([
        "get",
        "--prefix",
        "",
        "--rev",
        &rev.to_string(),
        "-w",
        "json",
    ]));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut kvs: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for kv in json["kvs"].as_array().cloned().unwrap_or_default() {
        let value = kv["value"].as_str().map(b64).unwrap_or_default();
        kvs.insert(b64(kv["key"].as_str().unwrap()), value);
    }
    kvs.into_iter()
        .filter(|(k, _)| !k.starts_with(b"/vcluster/snapshot/"))
        .collect()
}

#[test]
fn etcd_backup_taken_under_writes_exports_what_etcdctl_reads_at_its_revision() {
    let s = setup();
    let etcd = Etcd::start_with(&s.tmp.path().join("etcd"), "e0", None);

    // Puts, overwrites and deletes, then a compaction: the snapshot holds
    // several versions of some keys, tombstones and compacted history.
    let pod = |i: usize| format!("/registry/pods/default/p{i:02}");
    for i in 0..40 {
        etcd_put(&etcd, pod(i).as_bytes(), format!("pod {i}").as_bytes());
    }
    for i in (0..40).step_by(3) {
        etcd_put(&etcd, pod(i).as_bytes(), b"updated");
    }
    for i in (0..40).step_by(4) {
        ok(etcd.etcdctl().args(["del", &pod(i)]));
    }
    let long = format!("/registry/configmaps/kube-system/{}", "x".repeat(150));
    etcd_put(&etcd, long.as_bytes(), b"long");
    let binary: Vec<u8> = (1..=255u8).collect();
    etcd_put(&etcd, b"/registry/secrets/default/binary", &binary);
    // A big value spills onto bbolt overflow pages.
    etcd_put(
        &etcd,
        b"/registry/configmaps/default/big",
        "b".repeat(200_000).as_bytes(),
    );
    etcd_put(&etcd, b"/vcluster/snapshot/release", b"{\"stale\":true}");
    let status = ok(etcd.etcdctl().args(["endpoint", "status", "-w", "json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rev = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    ok(etcd.etcdctl().args(["compact", &(rev - 5).to_string()]));

    let ctl_endpoint = etcd.endpoint.clone();
    let writer = Repeating::start(Duration::ZERO, move |n| {
        let mut cmd = Command::new(tool("etcdctl"));
        cmd.args(["--endpoints", &ctl_endpoint]);
        if n % 5 == 4 {
            cmd.args(["del", &format!("/registry/leases/l{}", n % 7)]);
        } else {
            cmd.args([
                "put",
                &format!("/registry/leases/l{}", n % 7),
                &format!("renew {n}"),
            ]);
        }
        ok(&mut cmd);
    });
    // Writes before, during and after the backup.
    writer.wait_steps(5);
    ok(&mut backup(
        &etcd.endpoint,
        &s.dest,
        &s.recipient,
        &s.config,
    ));
    writer.wait_steps(writer.steps() + 5);
    assert!(writer.stop() > 0);

    let (backup, manifest) = only_backup(&s.dest);
    let revision = manifest["revision"].as_i64().unwrap();
    let expected = etcd_all_at(&etcd, revision);
    assert!(
        expected
            .iter()
            .any(|(k, v)| k == b"/registry/secrets/default/binary" && v == &binary)
    );
    assert!(expected.iter().any(|(k, _)| k == long.as_bytes()));
    assert!(
        !expected
            .iter()
            .any(|(k, _)| k == b"/registry/pods/default/p00")
    );

    // From the downloaded file, its manifest and config beside it.
    let archive = s.tmp.path().join("etcd.tar.gz");
    ok(export_input(&backup, &s.identity).arg("-o").arg(&archive));
    let entries = read_archive(&archive);
    let release = release(&entries).expect("a release entry");
    assert_eq!(
        b64(release["values"].as_str().unwrap()),
        CONFIG_YAML.as_bytes()
    );
    assert_eq!(release["releaseName"], "demo");
    let got = keys(&entries);
    assert_eq!(got.len(), expected.len());
    assert_eq!(got, expected);
}

// --------------------------------------------------------------------- S3

#[test]
fn export_to_s3_writes_a_plain_tar_gz_object_with_server_side_encryption() {
    let s = setup();
    let moto = Moto::start();
    moto.aws(&["s3api", "create-bucket", "--bucket", "snapshots"]);
    kine_db(
        &s.db,
        (0..500).map(|i| {
            (
                format!("/registry/configmaps/default/c{i:03}"),
                format!("v{i}").into_bytes(),
            )
        }),
    );
    ok(&mut backup(&s.db, &s.dest, &s.recipient, &s.config));
    let to = format!(
        "s3://snapshots/vcluster/demo/x.tar.gz?endpoint={}&force-path-style=true&region=us-east-1&server-side-encryption=AES256",
        moto.endpoint()
    );
    let export = |to: &str| {
        let mut cmd = vcbackup();
        cmd.args(["export", "latest", "--name", "demo", "--destination"])
            .arg(file_url(&s.dest))
            .arg("-i")
            .arg(&s.identity)
            .args(["--to", to])
            .env("AWS_ACCESS_KEY_ID", &moto.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &moto.secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        cmd
    };
    ok(&mut export(&to));
    let head = moto.aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "snapshots",
        "--key",
        "vcluster/demo/x.tar.gz",
    ]);
    let head: serde_json::Value = serde_json::from_slice(&head.stdout).unwrap();
    assert_eq!(head["ServerSideEncryption"], "AES256");
    let fetched = s.tmp.path().join("fetched.tar.gz");
    moto.aws(&[
        "s3api",
        "get-object",
        "--bucket",
        "snapshots",
        "--key",
        "vcluster/demo/x.tar.gz",
        fetched.to_str().unwrap(),
    ]);
    let entries = read_archive(&fetched);
    assert!(release(&entries).is_some());
    assert_eq!(keys(&entries), kine_at(&s.db, i64::MAX));

    // The object exists: replaced only with --force.
    let err = error_line(&fails(&mut export(&to)));
    assert!(err.contains("x.tar.gz") && err.contains("--force"), "{err}");
    ok(export(&to).arg("--force"));
    // Not a .tar.gz name: `vcluster snapshot list` would not show it.
    let err = error_line(&fails(&mut export("s3://snapshots/vcluster/demo/x.tgz")));
    assert!(err.contains(".tar.gz"), "{err}");
}
