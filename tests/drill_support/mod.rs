//! What the drill, fleet and skip-unchanged tests share besides `common` and
//! `support`: a plain-HTTP etcd member, the sidecar as a process, a proxy that
//! damages what S3 returns or counts requests, and reading records from a
//! directory destination.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::common::{free_port, http_get, metric, ok, run, tool, wait_for};

/// Files in a virtual cluster's folder of a directory destination, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The verify records in a folder, as `(backup, mode, result)`.
pub fn verify_records(dir: &Path) -> Vec<(String, String, String)> {
    files(dir)
        .into_iter()
        .filter_map(|name| {
            let (backup, rest) = name.strip_suffix(".json")?.rsplit_once(".verify-")?;
            let mut parts = rest.splitn(3, '-');
            let _time = parts.next()?;
            Some((
                backup.to_string(),
                parts.next()?.to_string(),
                parts.next()?.to_string(),
            ))
        })
        .collect()
}

// ---------------------------------------------------------------- etcd

/// One plain-HTTP etcd member (Debian's etcd-server) on loopback, killed on drop.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
    data_dir: PathBuf,
    peer: String,
}

impl Etcd {
    pub fn start(data_dir: &Path) -> Etcd {
        let endpoint = format!("http://127.0.0.1:{}", free_port());
        let peer = format!("http://127.0.0.1:{}", free_port());
        Etcd::start_at(data_dir, endpoint, peer)
    }

    /// Kills the member and starts it again on the same data and ports: every
    /// client connection breaks, nothing stored is lost.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let restarted = Etcd::start_at(&self.data_dir, self.endpoint.clone(), self.peer.clone());
        *self = restarted;
    }

    fn start_at(data_dir: &Path, endpoint: String, peer: String) -> Etcd {
        let log = data_dir.with_extension("log");
        let child = Command::new(tool("etcd"))
            .args(["--name", "vc", "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("vc={peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start etcd (scripts/setup installs etcd-server)");
        let etcd = Etcd {
            child,
            endpoint,
            log,
            data_dir: data_dir.to_path_buf(),
            peer,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !run(etcd.etcdctl().args(["endpoint", "health"]))
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

    pub fn etcdctl(&self) -> Command {
        let mut cmd = Command::new(tool("etcdctl"));
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint]);
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
        let json = crate::common::ok_stdout(self.etcdctl().args(["get", "x", "-w", "json"]));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["header"]["revision"].as_i64().unwrap()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the sidecar

/// `vcbackup run` as a process, killed on drop.
pub struct Daemon {
    child: Child,
    pub port: u16,
    log: Option<PathBuf>,
}

impl Daemon {
    /// Starts `cmd` (a `vcbackup run …` without --listen) and waits until it serves.
    pub fn start(cmd: Command) -> Daemon {
        Daemon::start_with_log(cmd, None)
    }

    /// As `start`, with the log (at info) written to `log`.
    pub fn start_logged(mut cmd: Command, log: &Path) -> Daemon {
        cmd.env("VCBACKUP_LOG", "info");
        Daemon::start_with_log(cmd, Some(log))
    }

    fn start_with_log(mut cmd: Command, log: Option<&Path>) -> Daemon {
        let port = free_port();
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::null(),
        };
        let child = cmd
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child,
            port,
            log: log.map(Path::to_path_buf),
        };
        wait_for("the daemon to listen", Duration::from_secs(30), || {
            http_get(port, "/readyz")
        });
        daemon
    }

    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric(&self.metrics(), sample)
    }

    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        ok(Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]));
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.wait();
    }

    /// SIGTERM, and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }

    /// Waits until `sample` reaches at least `at_least`.
    pub fn wait_metric(&self, sample: &str, at_least: f64, timeout: Duration) -> f64 {
        wait_for(&format!("{sample} >= {at_least}"), timeout, || {
            self.metric(sample).filter(|v| *v >= at_least)
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- proxy

/// What the proxy saw and what it does.
#[derive(Default)]
pub struct Seen {
    /// Requests by method and kind: `LIST`, `LIST/` (with a delimiter), `GET`, `PUT`, `DELETE`, ….
    pub requests: Mutex<Vec<String>>,
    /// Flip one byte of every GET body of an object whose key ends like this.
    pub corrupt_suffix: Mutex<Option<String>>,
    pub corrupted: AtomicUsize,
    pub stop: AtomicBool,
}

impl Seen {
    pub fn count(&self, kind: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| *r == kind)
            .count()
    }

    pub fn reset(&self) {
        self.requests.lock().unwrap().clear();
    }
}

/// A reverse proxy in front of an S3 server that records every request and
/// can damage object bodies on their way back. It forwards bytes as they are,
/// so SigV4 signatures stay valid.
pub struct Proxy {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl Proxy {
    pub fn start(upstream: SocketAddr) -> Proxy {
        let seen = Arc::new(Seen::default());
        let listener = crate::common::s3::rt()
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::clone(&seen);
        crate::common::s3::rt().spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        forward(req, upstream, Arc::clone(&seen))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Proxy { addr, seen }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn kind(req: &Request<Incoming>) -> String {
    let query = req.uri().query().unwrap_or_default();
    let path = req.uri().path();
    // Path style: `/bucket` or `/bucket/` for the bucket, `/bucket/key` for an object.
    let is_object = path
        .trim_start_matches('/')
        .split_once('/')
        .is_some_and(|(_, key)| !key.is_empty());
    match (req.method().as_str(), is_object) {
        ("GET", false) if query.contains("delimiter=") => "LIST/".into(),
        ("GET", false) if query.contains("uploads") => "LIST-UPLOADS".into(),
        ("GET", false) => "LIST".into(),
        (method, _) => method.to_string(),
    }
}

async fn forward(
    req: Request<Incoming>,
    upstream: SocketAddr,
    seen: Arc<Seen>,
) -> Result<hyper::Response<Full<Bytes>>, BoxError> {
    let kind = kind(&req);
    seen.requests.lock().unwrap().push(kind.clone());
    let corrupt = kind == "GET"
        && seen
            .corrupt_suffix
            .lock()
            .unwrap()
            .as_deref()
            .is_some_and(|s| req.uri().path().ends_with(s));
    let (parts, body) = req.into_parts();
    let data = body.collect().await?.to_bytes();
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(data)))
        .await?;
    let (mut parts, body) = response.into_parts();
    let mut data = body.collect().await?.to_bytes().to_vec();
    if corrupt && data.len() > 100 {
        let middle = data.len() / 2;
        data[middle] ^= 0x40;
        seen.corrupted.fetch_add(1, Ordering::SeqCst);
        // The server's checksums describe the undamaged body; a client that
        // checks them would catch the damage before vcbackup does.
        let checksums: Vec<_> = parts
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("x-amz-checksum"))
            .cloned()
            .collect();
        for name in checksums {
            parts.headers.remove(name);
        }
        parts.headers.remove(hyper::header::ETAG);
    }
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    Ok(hyper::Response::from_parts(
        parts,
        Full::new(Bytes::from(data)),
    ))
}
