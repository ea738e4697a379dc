//! etcd on loopback (Debian's etcd-server and etcd-client): one member, with
//! or without TLS and client certificates laid out as in a vCluster pod (made
//! with the openssl CLI), a member restored from a snapshot, or a cluster.

use std::ffi::OsString;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{SETUP, free_port, ok, ok_stdout, run, tool, wait_for_or};

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

/// One etcd member on loopback, killed on drop: fresh, with TLS, restored
/// from a snapshot, or one of a cluster; [`Etcd::restart`] starts it again as
/// it was.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// The member's whole command line, to start it again the same way.
    args: Vec<OsString>,
    log: PathBuf,
}

impl Etcd {
    /// A fresh plain-HTTP member named `vc` in `data_dir`.
    pub fn start(data_dir: &Path) -> Etcd {
        Etcd::start_with(data_dir, "vc", None)
    }

    /// A fresh member named `name` in `data_dir`, serving TLS with client
    /// certificates when `pki` is given.
    pub fn start_with(data_dir: &Path, name: &str, pki: Option<&Pki>) -> Etcd {
        let peer = format!("http://127.0.0.1:{}", free_port());
        Etcd::start_member(data_dir, name, &peer, pki)
    }

    /// A single-member cluster `name` (fresh, or restored into `data_dir` with `peer`).
    fn start_member(data_dir: &Path, name: &str, peer: &str, pki: Option<&Pki>) -> Etcd {
        let scheme = if pki.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{}", free_port());
        let mut args = member_args(name, data_dir, &endpoint, peer, &format!("{name}={peer}"));
        let tls = pki.map(|pki| {
            let flags = [
                ("--cert-file", pki.server_cert.clone()),
                ("--key-file", pki.server_key.clone()),
                ("--trusted-ca-file", pki.ca()),
            ];
            for (flag, path) in flags {
                args.push(flag.into());
                args.push(path.into());
            }
            args.push("--client-cert-auth".into());
            (pki.ca(), pki.cert(), pki.key())
        });
        let etcd = Etcd::spawn(endpoint, tls, args, data_dir.with_extension("log"));
        etcd.wait_healthy(Duration::from_secs(30));
        etcd
    }

    fn spawn(
        endpoint: String,
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
        args: Vec<OsString>,
        log: PathBuf,
    ) -> Etcd {
        let child = Command::new(tool("etcd"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start etcd: {e}; {SETUP}"));
        Etcd {
            child,
            endpoint,
            tls,
            args,
            log,
        }
    }

    /// Waits until the member answers `etcdctl endpoint health`; on timeout
    /// panics with its log.
    fn wait_healthy(&self, timeout: Duration) {
        let port = self
            .endpoint
            .rsplit(':')
            .next()
            .unwrap()
            .parse::<u16>()
            .unwrap();
        wait_for_or(
            &format!("etcd at {} to be healthy", self.endpoint),
            timeout,
            |timed_out| timed_out.then(|| format!("its log:\n{}", self.log())),
            || {
                (TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && run(self.etcdctl().args(["endpoint", "health"]))
                        .status
                        .success())
                .then_some(())
            },
        );
    }

    /// Kills the member and starts it again on the same data and ports: every
    /// client connection breaks, nothing stored is lost.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let restarted = Etcd::spawn(
            self.endpoint.clone(),
            self.tls.clone(),
            self.args.clone(),
            self.log.clone(),
        );
        *self = restarted;
        self.wait_healthy(Duration::from_secs(30));
    }

    /// What the member wrote to standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
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

    pub fn delete(&self, key: &str) {
        ok(self.etcdctl().args(["del", key]));
    }

    /// The store's revision now.
    pub fn revision(&self) -> i64 {
        let json = ok_stdout(self.etcdctl().args(["get", "x", "-w", "json"]));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["header"]["revision"].as_i64().unwrap()
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

/// etcd's flags for member `name` in `data_dir`, serving `endpoint`, in `initial_cluster`.
fn member_args(
    name: &str,
    data_dir: &Path,
    endpoint: &str,
    peer: &str,
    initial_cluster: &str,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["--name", name, "--data-dir"]
        .iter()
        .map(OsString::from)
        .collect();
    args.push(data_dir.into());
    for (flag, value) in [
        ("--listen-client-urls", endpoint),
        ("--advertise-client-urls", endpoint),
        ("--listen-peer-urls", peer),
        ("--initial-advertise-peer-urls", peer),
        ("--initial-cluster", initial_cluster),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    args
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
    Etcd::start_member(&data_dir, name, &peer, None)
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
            let peer = format!("http://127.0.0.1:{peer}");
            let mut args = member_args(name, &dir.join(name), &endpoint, &peer, &initial_cluster);
            args.extend(["--initial-cluster-state".into(), "new".into()]);
            Etcd::spawn(endpoint, None, args, dir.join(format!("{name}.log")))
        })
        .collect();
    // Each member is healthy only once a quorum has formed: all are started first.
    for member in &cluster {
        member.wait_healthy(Duration::from_secs(60));
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
