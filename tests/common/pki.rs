//! A virtual cluster's PKI made the way vCluster makes it (kubeadm's layout,
//! made here by the `openssl` CLI): the cluster CA (also as `server-ca` and
//! `client-ca`), the front-proxy CA, the etcd CA, their leaves, the
//! service-account key pair and an admin kubeconfig; certificates re-issued
//! to break it one way at a time; and the API discovery `kubectl create
//! --dry-run=client` needs before it reads a manifest.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{SETUP, run, tool};

/// Which keys: RSA 2048 (what vCluster makes) or ECDSA P-256 (kubeadm's
/// `encryptionAlgorithm: ECDSA-P256`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    Ec,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = run(Command::new(tool("openssl")).current_dir(dir).args(args));
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({SETUP}): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new private key at `dir/path`: PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`) as kubeadm writes them, or PKCS#8 when `pkcs8`.
pub fn key(dir: &Path, path: &str, keys: KeyKind, pkcs8: bool) {
    match (keys, pkcs8) {
        (KeyKind::Rsa, false) => openssl(dir, &["genrsa", "-traditional", "-out", path, "2048"]),
        (KeyKind::Rsa, true) => openssl(dir, &["genrsa", "-out", path, "2048"]),
        (KeyKind::Ec, false) => openssl(
            dir,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                path,
            ],
        ),
        (KeyKind::Ec, true) => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                path,
            ],
        ),
    }
}

/// A self-signed CA `name.crt` for `name.key`, valid ten years.
pub fn ca(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "3650",
            "-sha256",
            "-out",
            &format!("{name}.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
        ],
    );
}

/// A leaf `name.crt` for `name.key`, signed by the CA `issuer` (`issuer.crt`,
/// `issuer.key`), valid `days` (a year, as kubeadm's leaves).
pub fn leaf(dir: &Path, name: &str, subject: &str, issuer: &str, usage: &str, days: u32) {
    let ext = dir.join(format!("{}.ext", name.replace('/', "_")));
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        ),
    )
    .unwrap();
    let csr = format!("{}.csr", name.replace('/', "_"));
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            &csr,
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{issuer}.crt"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-set_serial",
            &format!("{}", rand_serial()),
            "-days",
            &days.to_string(),
            "-sha256",
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            &format!("{name}.crt"),
        ],
    );
    std::fs::remove_file(dir.join(csr)).unwrap();
    std::fs::remove_file(ext).unwrap();
}

fn rand_serial() -> u64 {
    rand::random::<u64>() >> 1
}

/// The leaf `name.crt` re-issued by `issuer` with a validity that ended in
/// 2020 (`openssl x509` cannot date a certificate in the past; `openssl ca` can).
pub fn expired_leaf(dir: &Path, name: &str, subject: &str, issuer: &str) {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    std::fs::write(w.join("index.txt"), "").unwrap();
    std::fs::write(w.join("serial"), "1000\n").unwrap();
    std::fs::write(
        w.join("ca.cnf"),
        format!(
            "[ca]\ndefault_ca = x\n[x]\ndatabase = {0}/index.txt\nnew_certs_dir = {0}\nserial = {0}/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\norganizationName = optional\n[leaf]\nbasicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature,keyEncipherment\nextendedKeyUsage = clientAuth\n",
            w.display()
        ),
    )
    .unwrap();
    let csr = w.join("leaf.csr");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    openssl(
        dir,
        &[
            "ca",
            "-batch",
            "-notext",
            "-config",
            w.join("ca.cnf").to_str().unwrap(),
            "-cert",
            &format!("{issuer}.crt"),
            "-keyfile",
            &format!("{issuer}.key"),
            "-in",
            csr.to_str().unwrap(),
            "-startdate",
            "20200101000000Z",
            "-enddate",
            "20200201000000Z",
            "-extensions",
            "leaf",
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// Makes a vCluster PKI under `dir` (created): every file vCluster keeps in
/// the `<release>-certs` Secret but the controller-manager's and the
/// scheduler's kubeconfigs, which are made like `admin.conf`.
pub fn make_pki(dir: &Path, keys: KeyKind) {
    std::fs::create_dir_all(dir.join("etcd")).unwrap();
    for (name, pkcs8) in [
        ("ca", false),
        ("front-proxy-ca", false),
        ("etcd/ca", false),
        ("apiserver", false),
        ("apiserver-kubelet-client", false),
        ("apiserver-etcd-client", true),
        ("front-proxy-client", false),
        ("etcd/server", false),
        ("etcd/peer", false),
        ("etcd/healthcheck-client", false),
        ("admin", false),
    ] {
        key(dir, &format!("{name}.key"), keys, pkcs8);
    }
    ca(dir, "ca", "kubernetes");
    ca(dir, "front-proxy-ca", "front-proxy-ca");
    ca(dir, "etcd/ca", "etcd-ca");
    leaf(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        "ca",
        "serverAuth",
        365,
    );
    leaf(
        dir,
        "apiserver-kubelet-client",
        "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client",
        "ca",
        "clientAuth",
        365,
    );
    leaf(
        dir,
        "front-proxy-client",
        "/CN=front-proxy-client",
        "front-proxy-ca",
        "clientAuth",
        365,
    );
    leaf(
        dir,
        "apiserver-etcd-client",
        "/CN=kube-apiserver-etcd-client",
        "etcd/ca",
        "clientAuth",
        365,
    );
    leaf(
        dir,
        "etcd/server",
        "/CN=demo",
        "etcd/ca",
        "serverAuth,clientAuth",
        365,
    );
    leaf(
        dir,
        "etcd/peer",
        "/CN=demo",
        "etcd/ca",
        "serverAuth,clientAuth",
        365,
    );
    leaf(
        dir,
        "etcd/healthcheck-client",
        "/CN=kube-etcd-healthcheck-client",
        "etcd/ca",
        "clientAuth",
        365,
    );
    leaf(
        dir,
        "admin",
        "/O=system:masters/CN=kubernetes-admin",
        "ca",
        "clientAuth",
        365,
    );
    // vCluster copies the cluster CA to server-ca and client-ca (`splitCACert`).
    for copy in ["server-ca", "client-ca"] {
        for ext in ["crt", "key"] {
            std::fs::copy(
                dir.join(format!("ca.{ext}")),
                dir.join(format!("{copy}.{ext}")),
            )
            .unwrap();
        }
    }
    // The service-account key pair: always RSA, as kubeadm makes it.
    key(dir, "sa.key", KeyKind::Rsa, false);
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    let admin = kubeconfig(dir, "admin", "kubernetes-admin");
    std::fs::write(dir.join("admin.conf"), admin).unwrap();
    std::fs::remove_file(dir.join("admin.crt")).unwrap();
    std::fs::remove_file(dir.join("admin.key")).unwrap();
    std::fs::remove_file(dir.join("ca.srl")).ok();
}

/// A kubeconfig as kubeadm writes it, with `name.crt`/`name.key` embedded.
fn kubeconfig(dir: &Path, name: &str, user: &str) -> String {
    use base64::Engine;
    let b64 = |file: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(file)).unwrap())
    };
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\nkind: Config\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64("ca.crt"),
        b64(&format!("{name}.crt")),
        b64(&format!("{name}.key")),
    )
}

/// What must never appear in a log, a metric, `/status` or an error: every
/// base64 line of every private key of the PKI under `dir` (kubeconfigs'
/// embedded keys included, as the base64 kubeconfigs hold).
pub fn key_material(dir: &Path) -> Vec<String> {
    let mut markers = Vec::new();
    for file in crate::common::files_under(dir) {
        let text = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        if file.ends_with(".key") {
            markers.extend(
                text.lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 40)
                    .map(str::to_string),
            );
        }
        if file.ends_with(".conf") {
            markers.extend(text.lines().filter_map(|l| {
                l.trim()
                    .strip_prefix("client-key-data: ")
                    .map(|v| v[..64].to_string())
            }));
        }
    }
    assert!(
        markers.len() > 10,
        "too few key lines found under {}",
        dir.display()
    );
    markers
}

/// Panics if `text` (named `what`) holds any of `markers`.
#[track_caller]
pub fn assert_no_key_material(what: &str, text: &str, markers: &[String]) {
    for marker in markers {
        assert!(
            !text.contains(marker.as_str()),
            "{what} holds private key material ({marker})"
        );
    }
}

/// Just enough of a Kubernetes API server for kubectl to map `kind: Secret`
/// to a resource (core/v1 discovery, nothing else), on loopback, answering
/// until the test process ends. Returns its URL.
pub fn discovery_server() -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            let (status, body) = match path {
                "/api" => (
                    "200 OK",
                    r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#,
                ),
                "/apis" => (
                    "200 OK",
                    r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#,
                ),
                "/api/v1" => (
                    "200 OK",
                    r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"secrets","singularName":"secret","namespaced":true,"kind":"Secret","verbs":["create","delete","get","list","patch","update","watch"]}]}"#,
                ),
                _ => (
                    "404 Not Found",
                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
                ),
            };
            let mut stream = &stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

/// `kubectl ARGS` against the discovery server `server`, its caches in `home`.
pub fn kubectl(server: &str, home: &Path, args: &[&str]) -> std::process::Output {
    let cache: PathBuf = home.join("kube-cache");
    run(Command::new(tool("kubectl"))
        .env("HOME", home)
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .arg("--server")
        .arg(server)
        .arg("--cache-dir")
        .arg(&cache)
        .args(args))
}
