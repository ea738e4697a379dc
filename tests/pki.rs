//! The virtual cluster's identity in every backup (issue 21): a PKI made as
//! vCluster makes it (openssl), backed up beside the store, restored byte for
//! byte (`restore --pki-out`), exported as the `<release>-certs` Secret that
//! kubectl accepts and vCluster reads, drilled by `verify` (which names what
//! is broken), exported as a metric, and never shown: no log line, metric,
//! `/status`, record or error holds a byte of a private key.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::pki::{
    KeyKind, assert_no_key_material, ca, discovery_server, expired_leaf, key, key_material,
    kubectl, leaf, make_pki,
};
use common::*;

/// A control plane's data directory (`data/state.db`, `data/pki/`), an age
/// key, and a directory destination `backups/`.
struct Setup {
    tmp: tempfile::TempDir,
    age: Keys,
    dest: String,
}

impl Setup {
    fn new(kind: KeyKind) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("data")).unwrap();
        small_kine_db(&tmp.path().join("data/state.db"), 64 << 10);
        make_pki(&tmp.path().join("data/pki"), kind);
        let age = age_keys(tmp.path(), "key.txt");
        let dest = file_url(&tmp.path().join("backups"));
        Setup { tmp, age, dest }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn pki(&self) -> PathBuf {
        self.path("data/pki")
    }

    fn folder(&self) -> PathBuf {
        self.path("backups/demo")
    }

    /// `vcbackup COMMAND --name demo --destination backups`, logging at info.
    fn command(&self, command: &str) -> Command {
        let mut cmd = vcbackup();
        cmd.current_dir(self.tmp.path())
            .env("VCBACKUP_LOG", "info")
            .args([command, "--name", "demo", "--destination", &self.dest]);
        cmd
    }

    /// The same, with the key.
    fn keyed(&self, command: &str) -> Command {
        let mut cmd = self.command(command);
        cmd.arg("-i").arg(&self.age.identity);
        cmd
    }

    /// One backup of the data directory: its name and the agent's log.
    fn backup(&self, extra: &[&str]) -> (String, String) {
        let out = ok(self
            .command("backup")
            .args(["--data-dir", "data", "--recipient", &self.age.recipient])
            .args(extra));
        let name = String::from_utf8(out.stdout).unwrap().trim().to_string();
        (name, String::from_utf8(out.stderr).unwrap())
    }

    fn manifest(&self, backup: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.folder().join(format!("{backup}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The same files with the same bytes under both directories.
#[track_caller]
fn assert_same_files(original: &Path, copy: &Path) {
    let files = files_under(original);
    assert_eq!(files_under(copy), files, "{}", copy.display());
    for file in &files {
        assert_eq!(
            std::fs::read(original.join(file)).unwrap(),
            std::fs::read(copy.join(file)).unwrap(),
            "{file} differs"
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for file in files_under(from) {
        let target = to.join(&file);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&file), target).unwrap();
    }
}

fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    run(Command::new(tool("openssl")).current_dir(dir).args(args))
}

/// A service-account token as kube-apiserver issues it: a JWT signed RS256
/// with `sa_key` (by openssl).
fn token(sa_key: &Path, work: &Path) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"alg":"RS256","kid":"","typ":"JWT"}"#);
    let claims = b64.encode(
        r#"{"aud":["https://kubernetes.default.svc.cluster.local"],"exp":4102444800,"iss":"https://kubernetes.default.svc.cluster.local","sub":"system:serviceaccount:default:default"}"#,
    );
    let input = format!("{header}.{claims}");
    std::fs::write(work.join("jwt.input"), &input).unwrap();
    let out = openssl(
        work,
        &[
            "dgst",
            "-sha256",
            "-sign",
            sa_key.to_str().unwrap(),
            "-out",
            "jwt.sig",
            "jwt.input",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{input}.{}",
        b64.encode(std::fs::read(work.join("jwt.sig")).unwrap())
    )
}

/// Whether `token`'s RS256 signature verifies with the public key `public` (by openssl).
fn token_verifies(token: &str, public: &Path, work: &Path) -> bool {
    let (input, signature) = token.rsplit_once('.').unwrap();
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .unwrap();
    std::fs::write(work.join("check.input"), input).unwrap();
    std::fs::write(work.join("check.sig"), signature).unwrap();
    let out = openssl(
        work,
        &[
            "dgst",
            "-sha256",
            "-verify",
            public.to_str().unwrap(),
            "-signature",
            "check.sig",
            "check.input",
        ],
    );
    out.status.success()
}

#[test]
fn restore_writes_the_identity_back_byte_for_byte_and_old_tokens_still_verify() {
    let s = Setup::new(KeyKind::Rsa);
    let markers = key_material(&s.pki());
    let (backup, log) = s.backup(&[]);
    assert!(!log.contains("PKI"), "{log}");
    assert_no_key_material("the backup's log", &log, &markers);

    assert_eq!(list_json(&s.dest, "demo")[0]["pki"], true);
    let manifest = s.manifest(&backup);
    let saved = &manifest["pki"];
    let object = backup.replace(".zst.age", ".pki.tar.zst.age");
    assert_eq!(saved["name"], object.as_str());
    assert_eq!(saved["files"], files_under(&s.pki()).len() as u64);
    assert_eq!(saved["sha256"].as_str().unwrap().len(), 64);
    assert!(saved["ca_expires"].is_string() && saved["leaf_expires"].is_string());
    let stored = std::fs::read(s.folder().join(&object)).unwrap();
    assert!(stored.starts_with(b"age-encryption.org/"), "not sealed");
    assert_no_key_material(
        "the stored PKI object",
        &String::from_utf8_lossy(&stored),
        &markers,
    );

    std::fs::create_dir(s.path("restored")).unwrap();
    let out =
        ok(s.keyed("restore")
            .args(["--to", "restored/state.db", "--pki-out", "restored/pki"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrote the PKI of"), "{stderr}");
    assert_no_key_material("restore's output", &stderr, &markers);
    let restored = s.path("restored/pki");
    assert_same_files(&s.pki(), &restored);
    assert_eq!(mode(&restored), 0o700);
    assert_eq!(mode(&restored.join("etcd")), 0o700);
    for file in files_under(&restored) {
        assert_eq!(mode(&restored.join(&file)), 0o600, "{file}");
    }

    // A token issued before the disaster still verifies with the restored key;
    // with the key vCluster would generate without the PKI, it does not.
    let work = s.path("");
    let token = token(&s.pki().join("sa.key"), &work);
    assert!(token_verifies(&token, &restored.join("sa.pub"), &work));
    key(&work, "fresh.key", KeyKind::Rsa, false);
    assert!(
        openssl(
            &work,
            &["rsa", "-in", "fresh.key", "-pubout", "-out", "fresh.pub"]
        )
        .status
        .success()
    );
    assert!(!token_verifies(&token, &work.join("fresh.pub"), &work));

    // `decrypt` opens the PKI object into its tar, checked against the manifest beside it.
    ok(&mut decrypt(
        &s.folder().join(&object),
        &s.age.identity,
        &s.path("pki.tar"),
    ));
    std::fs::create_dir(s.path("untarred")).unwrap();
    ok(Command::new("tar")
        .current_dir(s.tmp.path())
        .args(["-xf", "pki.tar", "-C", "untarred"]));
    assert_same_files(&s.pki(), &s.path("untarred"));
    std::fs::create_dir(s.path("tampered")).unwrap();
    let mut bad = stored.clone();
    let at = bad.len() - 40;
    bad[at] ^= 1;
    std::fs::write(s.path("tampered").join(&object), bad).unwrap();
    std::fs::copy(
        s.folder().join(format!("{backup}.json")),
        s.path("tampered").join(format!("{backup}.json")),
    )
    .unwrap();
    let err = fails(&mut decrypt(
        &s.path("tampered").join(&object),
        &s.age.identity,
        &s.path("tampered.tar"),
    ));
    assert!(
        error_line(&err).contains("does not match its manifest"),
        "{err}"
    );

    // The drill checks the identity too, and says so in its record.
    let out = ok(&mut s.keyed("verify"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("ok "), "{stdout}");
    let record = files(&s.folder())
        .into_iter()
        .find(|f| f.contains(".verify-") && f.ends_with("-full-ok.json"))
        .expect("a full drill record");
    let record = std::fs::read_to_string(s.folder().join(record)).unwrap();
    assert_no_key_material("the drill record", &record, &markers);
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    let checks: Vec<(&str, &str)> = record["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    for name in [
        "pki-stored",
        "pki",
        "pki-certificates",
        "pki-expiry",
        "pki-keys",
        "pki-chain",
        "pki-service-account",
        "pki-kubeconfigs",
    ] {
        assert!(checks.contains(&(name, "ok")), "{name} in {checks:?}");
    }
}

#[test]
fn an_ecdsa_pki_round_trips_and_passes_the_drill() {
    let s = Setup::new(KeyKind::Ec);
    s.backup(&[]);
    let out = ok(&mut s.keyed("verify"));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok "));
    std::fs::create_dir(s.path("restored")).unwrap();
    ok(s.keyed("restore")
        .args(["--to", "restored/state.db", "--pki-out", "restored/pki"]));
    assert_same_files(&s.pki(), &s.path("restored/pki"));
}

#[test]
fn export_writes_the_certs_secret_that_kubectl_accepts_and_vcluster_reads() {
    let s = Setup::new(KeyKind::Rsa);
    std::fs::write(s.path("config.yaml"), "controlPlane: {}\n").unwrap();
    let (backup, _) = s.backup(&[
        "--vcluster-config",
        "config.yaml",
        "--namespace",
        "team-a",
        "--chart-version",
        "0.30.0",
    ]);
    let out = ok(s.keyed("export").arg("latest").args([
        "-o",
        "demo.tar.gz",
        "--certs-secret",
        "demo-certs.yaml",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the Secret team-a/demo-certs"), "{stderr}");
    assert!(s.path("demo.tar.gz").exists());
    let secret = s.path("demo-certs.yaml");
    assert_eq!(mode(&secret), 0o600);

    // kubectl reads it as a Secret: name, namespace, labels, and one key per
    // file, its path with `/` as `-`, decoding to the file's bytes.
    let server = discovery_server();
    let out = kubectl(
        &server,
        s.tmp.path(),
        &[
            "create",
            "--dry-run=client",
            // Client-side schema validation needs the server's OpenAPI
            // document; kubernetes-validate checks the schema below.
            "--validate=false",
            "-o",
            "json",
            "-f",
            secret.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "kubectl refused the Secret: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let object: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(object["kind"], "Secret");
    assert_eq!(object["metadata"]["name"], "demo-certs");
    assert_eq!(object["metadata"]["namespace"], "team-a");
    assert_eq!(object["metadata"]["labels"]["app"], "vcluster");
    assert_eq!(object["metadata"]["labels"]["vcluster-name"], "demo");
    let data = object["data"].as_object().unwrap();
    let files = files_under(&s.pki());
    let mut keys: Vec<String> = files.iter().map(|f| f.replace('/', "-")).collect();
    keys.sort();
    assert_eq!(data.keys().cloned().collect::<Vec<_>>(), keys);
    assert!(data.contains_key("etcd-ca.crt") && data.contains_key("sa.key"));
    for file in &files {
        let value = data[&file.replace('/', "-")].as_str().unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(value)
            .unwrap();
        assert_eq!(
            decoded,
            std::fs::read(s.pki().join(file)).unwrap(),
            "{file}"
        );
    }
    // kubectl's own Secret from the same files holds the same data.
    let mut args = vec![
        "create".to_string(),
        "secret".into(),
        "generic".into(),
        "demo-certs".into(),
        "-n".into(),
        "team-a".into(),
        "--dry-run=client".into(),
        "-o".into(),
        "json".into(),
    ];
    for file in &files {
        args.push(format!(
            "--from-file={}={}",
            file.replace('/', "-"),
            s.pki().join(file).display()
        ));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kubectl(&server, s.tmp.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs["data"], object["data"]);
    let out = run(Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(&secret));
    assert!(
        out.status.success(),
        "kubernetes-validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // From a downloaded backup (object, manifest and PKI object side by side),
    // only the Secret, to standard output: the same manifest.
    std::fs::create_dir(s.path("downloaded")).unwrap();
    let object = backup.replace(".zst.age", ".pki.tar.zst.age");
    for name in [backup.clone(), format!("{backup}.json"), object] {
        std::fs::copy(s.folder().join(&name), s.path("downloaded").join(&name)).unwrap();
    }
    let out = ok(vcbackup()
        .current_dir(s.tmp.path())
        .args(["export", "--input"])
        .arg(s.path("downloaded").join(&backup))
        .arg("-i")
        .arg(&s.age.identity)
        .args(["--certs-secret", "-"]));
    assert_eq!(out.stdout, std::fs::read(&secret).unwrap());
}

/// What a drill of a backup of the PKI `broken` made says: its exit status
/// must be a failure, and its first failed check the one named.
fn drill_of(base: &Path, broken: impl FnOnce(&Path)) -> (String, String, Vec<String>) {
    let s = Setup::new(KeyKind::Rsa);
    std::fs::remove_dir_all(s.pki()).unwrap();
    copy_dir(base, &s.pki());
    broken(&s.pki());
    let markers = key_material(&s.pki());
    let (backup, _) = s.backup(&[]);
    let out = run(&mut s.keyed("verify"));
    assert!(!out.status.success(), "the drill passed a broken PKI");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    for text in [&stdout, &stderr] {
        assert_no_key_material("the drill's output", text, &markers);
    }
    for record in files(&s.folder()).iter().filter(|f| f.contains(".verify-")) {
        let text = std::fs::read_to_string(s.folder().join(record)).unwrap();
        assert_no_key_material("the drill record", &text, &markers);
    }
    assert!(stdout.contains(&backup), "{stdout}");
    (stdout, error_line(&stderr), markers)
}

/// One way to break a PKI, in place.
type Breakage = Box<dyn FnOnce(&Path)>;

#[test]
fn verify_fails_by_name_on_a_broken_identity() {
    let base = tempfile::tempdir().unwrap();
    make_pki(base.path(), KeyKind::Rsa);
    let cases: Vec<(&str, &str, Breakage)> = vec![
        (
            "pki-keys",
            "apiserver.key does not match apiserver.crt",
            Box::new(|pki: &Path| {
                std::fs::copy(
                    pki.join("apiserver-kubelet-client.key"),
                    pki.join("apiserver.key"),
                )
                .unwrap();
            }),
        ),
        (
            "pki-expiry",
            "apiserver-kubelet-client.crt (O=kubeadm:cluster-admins,CN=kube-apiserver-kubelet-client) expired at 2020-02-01T00:00:00Z",
            Box::new(|pki: &Path| {
                expired_leaf(
                    pki,
                    "apiserver-kubelet-client",
                    "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client",
                    "ca",
                );
            }),
        ),
        (
            "pki-chain",
            "front-proxy-client.crt (CN=front-proxy-client) names CN=front-proxy-ca as its issuer but no CA of that name signed it",
            Box::new(|pki: &Path| {
                // Another CA of the very same name, as every vCluster's CA is alike.
                key(pki, "other-ca.key", KeyKind::Rsa, false);
                ca(pki, "other-ca", "front-proxy-ca");
                leaf(
                    pki,
                    "front-proxy-client",
                    "/CN=front-proxy-client",
                    "other-ca",
                    "clientAuth",
                    365,
                );
                std::fs::remove_file(pki.join("other-ca.key")).unwrap();
                std::fs::remove_file(pki.join("other-ca.crt")).unwrap();
            }),
        ),
        (
            "pki-service-account",
            "sa.key and sa.pub are not one key pair",
            Box::new(|pki: &Path| {
                key(pki, "other-sa.key", KeyKind::Rsa, false);
                assert!(
                    openssl(
                        pki,
                        &["rsa", "-in", "other-sa.key", "-pubout", "-out", "sa.pub"]
                    )
                    .status
                    .success()
                );
                std::fs::remove_file(pki.join("other-sa.key")).unwrap();
            }),
        ),
    ];
    for (check, detail, broken) in cases {
        let (stdout, error, _) = drill_of(base.path(), broken);
        let failed = format!("check {check} failed: ");
        assert!(stdout.contains(&failed), "{check}: {stdout}");
        assert!(stdout.contains(detail), "{check}: {stdout}");
        assert!(
            error.contains(&failed) && error.contains(detail),
            "{check}: {error}"
        );
    }
}

#[test]
fn verify_names_a_truncated_pki_object_with_and_without_the_key() {
    let s = Setup::new(KeyKind::Rsa);
    let (backup, _) = s.backup(&[]);
    let object = s
        .folder()
        .join(backup.replace(".zst.age", ".pki.tar.zst.age"));
    let stored = std::fs::read(&object).unwrap();
    std::fs::write(&object, &stored[..stored.len() / 2]).unwrap();
    for keyed in [true, false] {
        let mut cmd = if keyed {
            s.keyed("verify")
        } else {
            s.command("verify")
        };
        let out = run(&mut cmd);
        assert!(!out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("check pki-stored failed: ") && stdout.contains(".pki.tar.zst.age"),
            "keyed={keyed}: {stdout}"
        );
    }
    // With the key, the restore refuses it too, and writes nothing.
    std::fs::create_dir(s.path("restored")).unwrap();
    let err =
        fails(
            s.keyed("restore")
                .args(["--to", "restored/state.db", "--pki-out", "restored/pki"]),
        );
    assert!(error_line(&err).contains(".pki.tar.zst.age"), "{err}");
    assert!(files(&s.path("restored")).is_empty());
}

#[test]
fn restore_refuses_a_non_empty_pki_directory_without_force() {
    let s = Setup::new(KeyKind::Rsa);
    s.backup(&[]);
    std::fs::create_dir_all(s.path("restored/pki")).unwrap();
    std::fs::write(s.path("restored/pki/old.crt"), "old").unwrap();
    let err =
        fails(
            s.keyed("restore")
                .args(["--to", "restored/state.db", "--pki-out", "restored/pki"]),
        );
    assert_eq!(
        error_line(&err),
        "error: --pki-out restored/pki: the directory is not empty; pass --force to replace it and everything in it"
    );
    assert_eq!(files(&s.path("restored")), ["pki"], "nothing else written");
    assert_eq!(files(&s.path("restored/pki")), ["old.crt"]);
    ok(s.keyed("restore").args([
        "--to",
        "restored/state.db",
        "--pki-out",
        "restored/pki",
        "--force",
    ]));
    assert_same_files(&s.pki(), &s.path("restored/pki"));
}

/// The latest value of the CA's, and the earliest of the other certificates',
/// end of validity, as openssl reads them.
fn not_after(pki: &Path, file: &str) -> f64 {
    let out = openssl(pki, &["x509", "-in", file, "-noout", "-enddate"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let date = text.trim().strip_prefix("notAfter=").unwrap();
    let date = date.split_whitespace().collect::<Vec<_>>().join(" ");
    chrono::NaiveDateTime::parse_from_str(&date, "%b %d %H:%M:%S %Y GMT")
        .unwrap()
        .and_utc()
        .timestamp() as f64
}

#[test]
fn the_daemon_exports_the_expiry_and_never_the_keys() {
    let s = Setup::new(KeyKind::Rsa);
    let markers = key_material(&s.pki());
    let mut cmd = s.command("run");
    cmd.args([
        "--data-dir",
        "data",
        "--recipient",
        &s.age.recipient,
        "--schedule",
        "@every 2s",
    ]);
    let log = s.path("agent.log");
    let daemon = Daemon::start_logged(cmd, &log);
    daemon.wait_metric(
        "vcbackup_backups_total{result=\"success\"}",
        2.0,
        Duration::from_secs(60),
    );
    let ca = daemon.sample("vcbackup_pki_expiry_timestamp_seconds{certificates=\"ca\"}");
    let cas = ["ca.crt", "front-proxy-ca.crt", "etcd/ca.crt"];
    let earliest_ca = cas
        .iter()
        .map(|f| not_after(&s.pki(), f))
        .fold(f64::MAX, f64::min);
    assert_eq!(ca, earliest_ca);
    let leaf = daemon.sample("vcbackup_pki_expiry_timestamp_seconds{certificates=\"leaf\"}");
    let leaves = files_under(&s.pki())
        .into_iter()
        .filter(|f| f.ends_with(".crt") && !f.contains("ca.crt"))
        .map(|f| not_after(&s.pki(), &f))
        .fold(f64::MAX, f64::min);
    assert_eq!(leaf, leaves);
    assert!(leaf < ca, "a year's leaf outlives a ten years' CA");
    let metrics = daemon.metrics();
    promtool_check(&metrics);
    assert_no_key_material("/metrics", &metrics, &markers);
    let (_, status) = daemon.get("/status");
    assert_no_key_material("/status", &status, &markers);
    assert_no_key_material("the agent's log", &daemon.log(), &markers);
    assert!(!daemon.log().contains("PKI directory"), "{}", daemon.log());
}

#[test]
fn a_missing_pki_is_one_warning_per_start_and_no_series() {
    let s = Setup::new(KeyKind::Rsa);
    let mut cmd = s.command("run");
    cmd.args([
        "--data-dir",
        "data",
        "--pki-dir",
        "data/no-such-pki",
        "--recipient",
        &s.age.recipient,
        "--schedule",
        "@every 2s",
    ]);
    let daemon = Daemon::start_logged(cmd, &s.path("agent.log"));
    daemon.wait_metric(
        "vcbackup_backups_total{result=\"success\"}",
        3.0,
        Duration::from_secs(60),
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("the PKI directory does not exist").count(),
        1,
        "{log}"
    );
    assert!(
        !daemon
            .metrics()
            .contains("vcbackup_pki_expiry_timestamp_seconds{")
    );
    let newest = &list_json(&s.dest, "demo")[0];
    assert_eq!(newest["pki"], false);
    assert!(s.manifest(newest["name"].as_str().unwrap())["pki"].is_null());
}
