//! `vcbackup export`: backups of kine's SQLite database and of a real etcd,
//! taken while a writer runs, exported as vCluster's snapshot archive and read
//! back by independent readers (Python's tarfile and gzip, and GNU tar):
//! entry order, exact names, value bytes and the release entry; the key sets
//! match the source at the backup's revision (SQL on the kine database,
//! `etcdctl get --rev` on etcd). Also the vCluster config saved with every
//! backup (`list`, `restore --config-out`), the errors an operator meets, and
//! `--to s3://…` against moto. The helpers live here, self-contained.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use rusqlite::{Connection, params};

const SETUP: &str = "run scripts/setup (it installs etcd, age, python3, tar)";

fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{name}` is missing: {SETUP}"))
}

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

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs, insists on exit 1 with exactly one `error:` line, and returns it.
fn error_line(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line in: {stderr}");
    errors[0].to_string()
}

/// An age identity file and its recipient, from the real age-keygen.
fn age_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let identity = dir.join(name);
    ok(Command::new(tool("age-keygen")).arg("-o").arg(&identity));
    let text = std::fs::read_to_string(&identity).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    (identity, recipient)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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

// ------------------------------------------------------------------- kine

const KINE_SCHEMA: &str = "
CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER, created INTEGER,
  deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB,
  old_value BLOB);
CREATE INDEX kine_name_index ON kine (name);
CREATE INDEX kine_name_id_index ON kine (name,id);
CREATE UNIQUE INDEX kine_name_prev_revision_uindex ON kine (name, prev_revision);
";

fn kine_put(conn: &Connection, name: &str, deleted: bool, value: &[u8]) {
    let prev: i64 = conn
        .query_row(
            "SELECT coalesce(max(id), 0) FROM kine WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap();
    conn.execute(
        "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
         VALUES (?1, ?2, ?3, 0, ?4, 0, ?5, NULL)",
        params![name, prev == 0, deleted, prev, value],
    )
    .unwrap();
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

#[test]
fn sqlite_backup_taken_under_writes_exports_the_store_at_its_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("state.db");
    let dest = tmp.path().join("backups");
    let (identity, recipient) = age_key(tmp.path(), "key.txt");
    let config = tmp.path().join("config.yaml");
    std::fs::write(&config, CONFIG_YAML).unwrap();

    let conn = Connection::open(&db).unwrap();
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(KINE_SCHEMA).unwrap();
    let long = format!("/registry/configmaps/default/{}", "long-name-".repeat(20));
    for i in 0..2000 {
        let value: Vec<u8> = (0..200).map(|b| ((b + i) % 256) as u8).collect();
        kine_put(
            &conn,
            &format!("/registry/pods/ns-{}/p{i:04}", i % 7),
            false,
            &value,
        );
    }
    for i in (0..2000).step_by(3) {
        kine_put(
            &conn,
            &format!("/registry/pods/ns-{}/p{i:04}", i % 7),
            false,
            b"updated",
        );
    }
    for i in (0..2000).step_by(5) {
        kine_put(
            &conn,
            &format!("/registry/pods/ns-{}/p{i:04}", i % 7),
            true,
            b"",
        );
    }
    kine_put(&conn, &long, false, b"long key value");
    kine_put(&conn, "compact_rev_key", false, b"");
    kine_put(
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
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let conn = Connection::open(&db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/registry/leases/kube-system/l{}", n % 50);
                kine_put(&conn, &key, n % 11 == 10, format!("renew {n}").as_bytes());
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = ok(vcbackup()
        .args(["backup", "--name", "demo", "--source"])
        .arg(&db)
        .arg("--destination")
        .arg(format!("file://{}", dest.display()))
        .args(["--recipient", &recipient, "--vcluster-config"])
        .arg(&config)
        .args(["--chart-version", "0.30.5", "--namespace", "team-a"]));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("hunter2"), "the config leaked: {stderr}");

    let (backup, manifest) = only_backup(&dest);
    let revision = manifest["revision"].as_i64().unwrap();
    let expected = kine_at(&db, revision);
    let max_id: i64 = Connection::open(&db)
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
    let config_object = dest.join("demo").join(saved["name"].as_str().unwrap());
    let sealed = std::fs::read(&config_object).unwrap();
    assert!(sealed.starts_with(b"age-encryption.org/"));
    assert!(!String::from_utf8_lossy(&sealed).contains("hunter2"));
    assert_eq!(saved["release"]["chart_version"], "0.30.5");
    let listed = ok(vcbackup()
        .args(["list", "-o", "json", "--name", "demo", "--destination"])
        .arg(format!("file://{}", dest.display())));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["config"], true);

    // Export from the destination.
    let archive = tmp.path().join("out").join("demo.tar.gz");
    std::fs::create_dir(archive.parent().unwrap()).unwrap();
    ok(vcbackup()
        .args(["export", "latest", "--name", "demo", "--destination"])
        .arg(format!("file://{}", dest.display()))
        .arg("--identity")
        .arg(&identity)
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
    let piped = ok(vcbackup()
        .arg("export")
        .arg("--input")
        .arg(&backup)
        .arg("-i")
        .arg(&identity)
        .args(["-o", "-"]));
    let piped_path = tmp.path().join("piped.tar.gz");
    std::fs::write(&piped_path, &piped.stdout).unwrap();
    assert_eq!(read_archive(&piped_path), entries);

    // restore --config-out writes the YAML back, owner-only.
    let restored_config = tmp.path().join("values.yaml");
    ok(vcbackup()
        .args(["restore", "latest", "--name", "demo", "--destination"])
        .arg(format!("file://{}", dest.display()))
        .arg("-i")
        .arg(&identity)
        .arg("--to")
        .arg(tmp.path().join("restored.db"))
        .arg("--config-out")
        .arg(&restored_config));
    assert_eq!(
        std::fs::read_to_string(&restored_config).unwrap(),
        CONFIG_YAML
    );
    assert_eq!(mode(&restored_config), 0o600);
}

#[test]
fn export_errors_name_the_input_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("state.db");
    let dest = tmp.path().join("backups");
    let (identity, recipient) = age_key(tmp.path(), "key.txt");
    let (stranger, _) = age_key(tmp.path(), "other.txt");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(KINE_SCHEMA).unwrap();
    for i in 0..300 {
        kine_put(
            &conn,
            &format!("/registry/secrets/default/s{i}"),
            false,
            &[7u8; 3000],
        );
    }
    drop(conn);
    // No config file: the backup goes on, with one warning.
    let out = ok(vcbackup()
        .args(["backup", "--name", "demo", "--source"])
        .arg(&db)
        .arg("--destination")
        .arg(format!("file://{}", dest.display()))
        .args(["--recipient", &recipient, "--vcluster-config"])
        .arg(tmp.path().join("missing.yaml")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("no vCluster config").count(), 1, "{stderr}");
    let (backup, manifest) = only_backup(&dest);
    assert!(manifest.get("config").is_none());
    let shown = backup.display().to_string();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let archive = work.join("x.tar.gz");
    let export = |input: &Path, key: &Path| {
        let mut cmd = vcbackup();
        cmd.arg("export")
            .arg("--input")
            .arg(input)
            .arg("-i")
            .arg(key)
            .arg("-o")
            .arg(&archive);
        cmd
    };

    let err = error_line(&mut export(&backup, &stranger));
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
    let err = error_line(&mut export(&corrupt, &identity));
    assert!(err.contains(&corrupt.display().to_string()), "{err}");
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["copy.zst.age"], "a failed export left files");

    // Without a saved config: no release entry, and a warning.
    let out = ok(&mut export(&backup, &identity));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no release entry"));
    let entries = read_archive(&archive);
    assert!(release(&entries).is_none());
    assert_eq!(keys(&entries), kine_at(&db, i64::MAX));

    // An existing output is never replaced without --force.
    std::fs::write(&archive, b"keep me").unwrap();
    let err = error_line(&mut export(&backup, &identity));
    assert!(
        err.contains(&archive.display().to_string()) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&archive).unwrap(), b"keep me");
    ok(export(&backup, &identity).arg("--force"));
    assert_eq!(read_archive(&archive), entries);

    // --config-out of a backup without one fails before anything is restored.
    let target = tmp.path().join("restored.db");
    let err = error_line(
        vcbackup()
            .args(["restore", "latest", "--name", "demo", "--destination"])
            .arg(format!("file://{}", dest.display()))
            .arg("-i")
            .arg(&identity)
            .arg("--to")
            .arg(&target)
            .arg("--config-out")
            .arg(tmp.path().join("values.yaml")),
    );
    assert!(err.contains("no saved vCluster config"), "{err}");
    assert!(!target.exists());
}

// ------------------------------------------------------------------- etcd

struct Etcd {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let (client, peer) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let log = dir.join("etcd.log");
        let child = Command::new(tool("etcd"))
            .args(["--name", "e0", "--data-dir"])
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("e0={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start etcd: {e}; {SETUP}"));
        let etcd = Etcd {
            child,
            endpoint,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run(etcd.ctl().args(["endpoint", "health"]))
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(&etcd.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    fn ctl(&self) -> Command {
        let mut cmd = Command::new(tool("etcdctl"));
        cmd.env("ETCDCTL_API", "3").args([
            "--endpoints",
            &self.endpoint,
            "--command-timeout",
            "20s",
        ]);
        cmd
    }

    /// `etcdctl put`, the value on standard input (an argument is limited in size).
    fn put(&self, key: &[u8], value: &[u8]) {
        use std::io::Write;
        let mut child = self
            .ctl()
            .arg("put")
            .arg(std::ffi::OsStr::from_bytes(key))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value).unwrap();
        assert!(child.wait().unwrap().success(), "etcdctl put failed");
    }

    /// Every key with its value at revision `rev`, in key order.
    fn all_at(&self, rev: i64) -> Vec<(Vec<u8>, Vec<u8>)> {
        let out = ok(self.ctl().args([
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
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn etcd_backup_taken_under_writes_exports_what_etcdctl_reads_at_its_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(tmp.path());
    let dest = tmp.path().join("backups");
    let (identity, recipient) = age_key(tmp.path(), "key.txt");
    let config = tmp.path().join("config.yaml");
    std::fs::write(&config, CONFIG_YAML).unwrap();

    // Puts, overwrites and deletes, then a compaction: the snapshot holds
    // several versions of some keys, tombstones and compacted history.
    for i in 0..40 {
        etcd.put(
            format!("/registry/pods/default/p{i:02}").as_bytes(),
            format!("pod {i}").as_bytes(),
        );
    }
    for i in (0..40).step_by(3) {
        etcd.put(
            format!("/registry/pods/default/p{i:02}").as_bytes(),
            b"updated",
        );
    }
    for i in (0..40).step_by(4) {
        ok(etcd
            .ctl()
            .args(["del", &format!("/registry/pods/default/p{i:02}")]));
    }
    let long = format!("/registry/configmaps/kube-system/{}", "x".repeat(150));
    etcd.put(long.as_bytes(), b"long");
    let binary: Vec<u8> = (1..=255u8).collect();
    etcd.put(b"/registry/secrets/default/binary", &binary);
    // A big value spills onto bbolt overflow pages.
    etcd.put(
        b"/registry/configmaps/default/big",
        "b".repeat(200_000).as_bytes(),
    );
    etcd.put(b"/vcluster/snapshot/release", b"{\"stale\":true}");
    let status = ok(etcd.ctl().args(["endpoint", "status", "-w", "json"]));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rev = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
    ok(etcd.ctl().args(["compact", &(rev - 5).to_string()]));

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (ctl_endpoint, stop) = (etcd.endpoint.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
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
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    ok(vcbackup()
        .args([
            "backup",
            "--name",
            "demo",
            "--source",
            &etcd.endpoint,
            "--destination",
        ])
        .arg(format!("file://{}", dest.display()))
        .args(["--recipient", &recipient, "--vcluster-config"])
        .arg(&config));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);

    let (backup, manifest) = only_backup(&dest);
    let revision = manifest["revision"].as_i64().unwrap();
    let expected = etcd.all_at(revision);
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
    let archive = tmp.path().join("etcd.tar.gz");
    ok(vcbackup()
        .arg("export")
        .arg("--input")
        .arg(&backup)
        .arg("-i")
        .arg(&identity)
        .arg("-o")
        .arg(&archive));
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

struct Moto {
    child: Child,
    endpoint: String,
    home: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        let venv = std::env::var_os("VCBACKUP_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/vcbackup/venv")
            });
        let server = venv.join("bin/moto_server");
        assert!(server.exists(), "{} is missing: {SETUP}", server.display());
        let port = free_port();
        let child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            home: tempfile::tempdir().unwrap(),
        };
        moto.aws(&["s3api", "create-bucket", "--bucket", "snapshots"]);
        moto
    }

    fn aws(&self, args: &[&str]) -> Output {
        let venv = PathBuf::from(std::env::var_os("VCBACKUP_VENV").unwrap_or_else(|| {
            format!(
                "{}/.cache/vcbackup/venv",
                std::env::var("HOME").unwrap_or_else(|_| "/root".into())
            )
            .into()
        }));
        ok(Command::new(venv.join("bin/aws"))
            .args(args)
            .args(["--endpoint-url", &self.endpoint, "--output", "json"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home.path())
            .env("AWS_ACCESS_KEY_ID", "AKIDEXPORTTEST")
            .env("AWS_SECRET_ACCESS_KEY", "export-test-secret")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn export_to_s3_writes_a_plain_tar_gz_object_with_server_side_encryption() {
    let tmp = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let db = tmp.path().join("state.db");
    let dest = tmp.path().join("backups");
    let (identity, recipient) = age_key(tmp.path(), "key.txt");
    let config = tmp.path().join("config.yaml");
    std::fs::write(&config, CONFIG_YAML).unwrap();
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch(KINE_SCHEMA).unwrap();
    for i in 0..500 {
        kine_put(
            &conn,
            &format!("/registry/configmaps/default/c{i:03}"),
            false,
            format!("v{i}").as_bytes(),
        );
    }
    drop(conn);
    ok(vcbackup()
        .args(["backup", "--name", "demo", "--source"])
        .arg(&db)
        .arg("--destination")
        .arg(format!("file://{}", dest.display()))
        .args(["--recipient", &recipient, "--vcluster-config"])
        .arg(&config));
    let to = format!(
        "s3://snapshots/vcluster/demo/x.tar.gz?endpoint={}&force-path-style=true&region=us-east-1&server-side-encryption=AES256",
        moto.endpoint
    );
    let export = |to: &str| {
        let mut cmd = vcbackup();
        cmd.args(["export", "latest", "--name", "demo", "--destination"])
            .arg(format!("file://{}", dest.display()))
            .arg("-i")
            .arg(&identity)
            .args(["--to", to])
            .env("AWS_ACCESS_KEY_ID", "AKIDEXPORTTEST")
            .env("AWS_SECRET_ACCESS_KEY", "export-test-secret")
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
    let fetched = tmp.path().join("fetched.tar.gz");
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
    assert_eq!(keys(&entries), kine_at(&db, i64::MAX));

    // The object exists: replaced only with --force.
    let err = error_line(&mut export(&to));
    assert!(err.contains("x.tar.gz") && err.contains("--force"), "{err}");
    ok(export(&to).arg("--force"));
    // Not a .tar.gz name: `vcluster snapshot list` would not show it.
    let err = error_line(&mut export("s3://snapshots/vcluster/demo/x.tgz"));
    assert!(err.contains(".tar.gz"), "{err}");
}
