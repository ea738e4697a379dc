//! etcd on loopback (Debian's etcd-server and etcd-client): one member, with
//! or without TLS and client certificates laid out as in a vCluster pod (made
//! with the openssl CLI), a member restored from a snapshot, or a cluster.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{SETUP, free_port, ok, ok_stdout, run, tool};

/// Certificates as a vCluster pod has them, generated with the openssl CLI.
pub struct Pki {
    /// `<data-dir>` holding `pki/etcd/ca.crt`, `pki/apiserver-etcd-client.{crt,key}`.
    pub data_dir: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    ok(Command::new(tool("openssl")).current_dir(dir).args(args));
}

/// A CA `NAME.crt`/`NAME.key` in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

/// A certificate `NAME.crt`/`NAME.key` signed by CA `ca`, with extensions `ext`.
pub fn make_cert(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ],
    );
}

pub const SERVER_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
pub const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";

impl Pki {
    pub fn new(root: &Path) -> Pki {
        let work = root.join("certs");
        std::fs::create_dir_all(&work).unwrap();
        make_ca(&work, "ca");
        make_cert(&work, "ca", "server", "etcd", SERVER_EXT);
        make_cert(
            &work,
            "ca",
            "client",
            "kube-apiserver-etcd-client",
            CLIENT_EXT,
        );
        let data_dir = root.join("data");
        let pki = data_dir.join("pki");
        std::fs::create_dir_all(pki.join("etcd")).unwrap();
        std::fs::copy(work.join("ca.crt"), pki.join("etcd/ca.crt")).unwrap();
        std::fs::copy(
            work.join("client.crt"),
            pki.join("apiserver-etcd-client.crt"),
        )
        .unwrap();
        std::fs::copy(
            work.join("client.key"),
            pki.join("apiserver-etcd-client.key"),
        )
        .unwrap();
        Pki {
            data_dir,
            server_cert: work.join("server.crt"),
            server_key: work.join("server.key"),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("pki/etcd/ca.crt")
    }

    pub fn cert(&self) -> PathBuf {
        self.data_dir.join("pki/apiserver-etcd-client.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.data_dir.join("pki/apiserver-etcd-client.key")
    }
}

/// One etcd member on loopback, killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    _log: PathBuf,
}

impl Etcd {
    /// Starts a fresh member in `data_dir`, or one restored there with name `name` and `peer`.
    pub fn start(data_dir: &Path, name: &str, peer: Option<String>, pki: Option<&Pki>) -> Etcd {
        let client_port = free_port();
        let peer_url = peer.unwrap_or_else(|| format!("http://127.0.0.1:{}", free_port()));
        let scheme = if pki.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let log = data_dir.with_extension("log");
        let mut cmd = Command::new(tool("etcd"));
        cmd.args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let tls = pki.map(|pki| {
            cmd.arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key)
                .arg("--trusted-ca-file")
                .arg(pki.ca())
                .arg("--client-cert-auth");
            (pki.ca(), pki.cert(), pki.key())
        });
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start etcd: {e}; {SETUP}"));
        let etcd = Etcd {
            child,
            endpoint,
            tls,
            _log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", client_port)).is_ok()
                && run(etcd.etcdctl().args(["endpoint", "health"]))
                    .status
                    .success()
            {
                return etcd;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new(tool("etcdctl"));
        cmd.env("ETCDCTL_API", "3").args([
            "--endpoints",
            &self.endpoint,
            "--command-timeout",
            "20s",
        ]);
        if let Some((ca, cert, key)) = &self.tls {
            cmd.arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key);
        }
        cmd
    }

    pub fn put(&self, key: &str, value: &str) {
        ok(self.etcdctl().args(["put", key, value]));
    }

    /// Keys under `prefix` with their mod revision, and the store's revision.
    pub fn keys(&self, prefix: &str) -> (Vec<(String, String, i64)>, i64) {
        let json = ok_stdout(
            self.etcdctl()
                .args(["get", "--prefix", prefix, "-w", "json"]),
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let decode = |v: &serde_json::Value| {
            let text = v.as_str().unwrap();
            String::from_utf8(base64_decode(text)).unwrap()
        };
        let kvs = value["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| {
                        (
                            decode(&kv["key"]),
                            decode(&kv["value"]),
                            kv["mod_revision"].as_i64().unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        (kvs, value["header"]["revision"].as_i64().unwrap())
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `etcdctl snapshot restore` of `snapshot`, then etcd started on the result.
pub fn restore_and_start(snapshot: &Path, dir: &Path, name: &str) -> Etcd {
    let data_dir = dir.join(format!("{name}-restored"));
    let peer = format!("http://127.0.0.1:{}", free_port());
    ok(Command::new(tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(snapshot)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--name", name, "--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("{name}={peer}")]));
    Etcd::start(&data_dir, name, Some(peer), None)
}

/// A cluster of `n` members on loopback, as HA embedded etcd runs one member
/// per control-plane replica; each member's endpoint stands for "its" pod.
pub fn start_cluster(dir: &Path, n: usize) -> Vec<Etcd> {
    let members: Vec<(String, u16, u16)> = (0..n)
        .map(|i| (format!("m{i}"), free_port(), free_port()))
        .collect();
    let initial_cluster = members
        .iter()
        .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let cluster: Vec<Etcd> = members
        .iter()
        .map(|(name, client, peer)| {
            let endpoint = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = dir.join(format!("{name}.log"));
            let child = Command::new(tool("etcd"))
                .args(["--name", name, "--data-dir"])
                .arg(dir.join(name))
                .args(["--listen-client-urls", &endpoint])
                .args(["--advertise-client-urls", &endpoint])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-cluster-state", "new"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("start etcd: {e}; {SETUP}"));
            Etcd {
                child,
                endpoint,
                tls: None,
                _log: log,
            }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for member in &cluster {
        while !run(member.etcdctl().args(["endpoint", "health"]))
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "the etcd cluster did not form");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    cluster
}

/// `(member ID, leader ID)` of one member, in hex as the manifest records them.
pub fn member_and_leader(etcd: &Etcd) -> (String, String) {
    let json = ok_stdout(etcd.etcdctl().args(["endpoint", "status", "-w", "json"]));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    let status = &value[0]["Status"];
    let hex = |v: &serde_json::Value| format!("{:x}", v.as_u64().unwrap());
    (hex(&status["header"]["member_id"]), hex(&status["leader"]))
}
