//! Real-protocol test fixtures for S3 storage: an in-process s3s-fs server
//! with SigV4 checking, a fault-injecting reverse proxy, an emulated EKS Pod
//! Identity agent, moto in a venv, and a kine-like SQLite database.
//!
//! Servers run on one shared background runtime so tests stay plain `#[test]`
//! functions that run the built binary.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "backups";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The runtime every in-process server runs on.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send + 'static,
{
    let listener = rt().block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt().spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service_fn(handler))
                    .await;
            });
        }
    });
    addr
}

// ---------------------------------------------------------------- credentials

/// The credentials an S3 server accepts, and which ones it saw.
#[derive(Default)]
pub struct Keys {
    inner: Mutex<KeysInner>,
}

#[derive(Default)]
struct KeysInner {
    secrets: HashMap<String, (String, Option<SystemTime>)>,
    /// Keys issued to one role, by that role's name.
    principals: HashMap<String, String>,
    used: Vec<String>,
    rejected: Vec<String>,
}

/// How long after its expiry a key is still accepted: a request signed just
/// before expiry arrives a little later (through a slow proxy, say).
const EXPIRY_GRACE: Duration = Duration::from_secs(4);

impl Keys {
    pub fn with(access_key: &str, secret: &str) -> Arc<Keys> {
        let keys = Arc::new(Keys::default());
        keys.add(access_key, secret, None);
        keys
    }

    pub fn add(&self, access_key: &str, secret: &str, expires: Option<SystemTime>) {
        self.inner
            .lock()
            .unwrap()
            .secrets
            .insert(access_key.into(), (secret.into(), expires));
    }

    /// Marks `access_key` as one of the session keys of `role`.
    pub fn set_principal(&self, access_key: &str, role: &str) {
        self.inner
            .lock()
            .unwrap()
            .principals
            .insert(access_key.into(), role.into());
    }

    fn principal(&self, access_key: &str) -> Option<String> {
        self.inner
            .lock()
            .unwrap()
            .principals
            .get(access_key)
            .cloned()
    }

    /// Distinct access keys of accepted requests, in first-use order.
    pub fn used(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        let mut distinct: Vec<String> = Vec::new();
        for key in &inner.used {
            if !distinct.contains(key) {
                distinct.push(key.clone());
            }
        }
        distinct
    }

    /// Access keys of requests refused as unknown or expired.
    pub fn rejected(&self) -> Vec<String> {
        self.inner.lock().unwrap().rejected.clone()
    }
}

struct KeysAuth(Arc<Keys>);

#[async_trait::async_trait]
impl s3s::auth::S3Auth for KeysAuth {
    async fn get_secret_key(&self, access_key: &str) -> s3s::S3Result<s3s::auth::SecretKey> {
        let mut inner = self.0.inner.lock().unwrap();
        let found = inner.secrets.get(access_key).cloned();
        match found {
            Some((_, Some(expires))) if expires + EXPIRY_GRACE < SystemTime::now() => {
                inner.rejected.push(access_key.into());
                Err(s3s::s3_error!(ExpiredToken))
            }
            Some((secret, _)) => {
                inner.used.push(access_key.into());
                Ok(secret.into())
            }
            None => {
                inner.rejected.push(access_key.into());
                Err(s3s::s3_error!(InvalidAccessKeyId))
            }
        }
    }
}

// ---------------------------------------------------------------- s3s-fs

/// s3s-fs ties a multipart upload to the access key that started it; AWS ties
/// it to the principal. Session keys of one role are rewritten to the role's
/// name, so an upload survives a credential refresh as it does on AWS.
struct AsPrincipal {
    fs: s3s_fs::FileSystem,
    keys: Arc<Keys>,
}

macro_rules! delegate {
    ($($op:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl s3s::S3 for AsPrincipal {
            $(
                async fn $op(
                    &self,
                    mut req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    if let Some(credentials) = req.credentials.as_mut()
                        && let Some(role) = self.keys.principal(&credentials.access_key)
                    {
                        credentials.access_key = role;
                    }
                    self.fs.$op(req).await
                }
            )*
        }
    };
}

delegate! {
    put_object: PutObjectInput => PutObjectOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
}

/// s3s-fs on 127.0.0.1 with SigV4 checked against `keys`, one bucket `BUCKET`.
pub struct S3sFs {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    pub keys: Arc<Keys>,
}

impl S3sFs {
    pub fn start(keys: Arc<Keys>) -> S3sFs {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(AsPrincipal {
            fs,
            keys: Arc::clone(&keys),
        });
        builder.set_auth(KeysAuth(Arc::clone(&keys)));
        let service = builder.build();
        let listener = rt().block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt().spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        S3sFs { addr, root, keys }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What s3s-fs keeps of unfinished multipart uploads: `.upload-*` files in its root.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".upload"))
            .collect()
    }

    /// Every stored object file under the bucket, as paths relative to it.
    pub fn objects(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    out.push(path.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let base = self.root.path().join(BUCKET);
        let mut out = Vec::new();
        walk(&base, &base, &mut out);
        out.sort();
        out
    }
}

// ---------------------------------------------------------------- fault proxy

/// What the proxy does to UploadPart requests (and to every request, for `delay`).
#[derive(Default)]
pub struct Faults {
    /// Statuses to answer the next UploadPart requests with, one each.
    pub statuses: VecDeque<u16>,
    /// How many UploadPart requests to cut off midway through their body.
    pub cuts: usize,
    /// Answer every UploadPart with this status.
    pub always: Option<u16>,
    /// Delay before forwarding any request.
    pub delay: Duration,
    /// Counters.
    pub part_requests: usize,
    /// UploadPart requests with a CRC32 in a header (not an aws-chunked trailer).
    pub part_checksums: usize,
    pub aws_chunked: usize,
    pub injected: usize,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub faults: Arc<Mutex<Faults>>,
}

enum Fault {
    Status(u16),
    Cut,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr, faults: Faults) -> FaultProxy {
        let faults = Arc::new(Mutex::new(faults));
        let shared = Arc::clone(&faults);
        let addr = serve(move |req| proxy(req, upstream, Arc::clone(&shared)));
        FaultProxy { addr, faults }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn proxy(
    req: Request<Incoming>,
    upstream: SocketAddr,
    faults: Arc<Mutex<Faults>>,
) -> Result<Response<Full<Bytes>>, BoxError> {
    let query = req.uri().query().unwrap_or_default().to_string();
    let is_part = req.method() == hyper::Method::PUT
        && query.contains("partNumber=")
        && query.contains("uploadId=");
    let (delay, fault) = {
        let mut f = faults.lock().unwrap();
        let fault = if is_part {
            f.part_requests += 1;
            if req.headers().contains_key("x-amz-checksum-crc32") {
                f.part_checksums += 1;
            }
            if req
                .headers()
                .get("content-encoding")
                .is_some_and(|v| v.as_bytes().starts_with(b"aws-chunked"))
            {
                f.aws_chunked += 1;
            }
            if let Some(status) = f.always {
                Some(Fault::Status(status))
            } else if let Some(status) = f.statuses.pop_front() {
                Some(Fault::Status(status))
            } else if f.cuts > 0 {
                f.cuts -= 1;
                Some(Fault::Cut)
            } else {
                None
            }
        } else {
            None
        };
        if fault.is_some() {
            f.injected += 1;
        }
        (f.delay, fault)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (parts, mut body) = req.into_parts();
    match fault {
        Some(Fault::Cut) => {
            // Take some of the part, then drop the connection without an answer.
            let _ = body.frame().await;
            return Err("connection cut by the fault proxy".into());
        }
        Some(Fault::Status(status)) => {
            let _ = body.collect().await?;
            let code = if status == 503 {
                "SlowDown"
            } else {
                "InternalError"
            };
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>injected by the fault proxy</Message></Error>"
            );
            return Ok(Response::builder()
                .status(status)
                .header("content-type", "application/xml")
                .body(Full::new(Bytes::from(xml)))?);
        }
        None => {}
    }
    let data = body.collect().await?.to_bytes();
    let forwarded = Request::from_parts(parts, Full::new(data));
    let stream = TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = sender.send_request(forwarded).await?;
    let (mut parts, body) = response.into_parts();
    let data = body.collect().await?.to_bytes();
    parts.headers.remove(hyper::header::TRANSFER_ENCODING);
    Ok(Response::from_parts(parts, Full::new(data)))
}

// ---------------------------------------------------------------- Pod Identity

/// An emulated EKS Pod Identity agent: serves short-lived credentials to a
/// caller presenting the token from `token_file`, and registers each issued
/// key with the S3 server's `Keys`.
pub struct PodIdentityAgent {
    pub addr: SocketAddr,
    pub token_file: PathBuf,
    pub fetches: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
}

impl PodIdentityAgent {
    pub fn start(keys: Arc<Keys>, lifetime: Duration, dir: &Path) -> PodIdentityAgent {
        let token_file = dir.join("eks-pod-identity-token");
        // The agent sends the file verbatim; a projected token has no trailing newline.
        let token = format!("eyJ.pod-identity.{}", random_text(24));
        std::fs::write(&token_file, &token).unwrap();
        let fetches = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (f, r) = (fetches.clone(), refused.clone());
        let addr = serve(move |req: Request<Incoming>| {
            let (expected, keys, f, r) = (token.clone(), keys.clone(), f.clone(), r.clone());
            async move {
                let presented = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                if req.uri().path() != "/v1/credentials" || presented != Some(expected.as_str()) {
                    r.fetch_add(1, Ordering::SeqCst);
                    return Ok::<_, BoxError>(
                        Response::builder()
                            .status(StatusCode::UNAUTHORIZED)
                            .body(Full::new(Bytes::from_static(
                                b"{\"message\":\"bad token\"}",
                            )))?,
                    );
                }
                f.fetch_add(1, Ordering::SeqCst);
                let access_key = format!("ASIA{}", random_text(16).to_uppercase());
                let secret = random_text(40);
                let expires = SystemTime::now() + lifetime;
                keys.add(&access_key, &secret, Some(expires));
                keys.set_principal(&access_key, "vcbackup-pod-identity-role");
                let expiration = chrono::DateTime::<chrono::Utc>::from(expires)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let body = serde_json::json!({
                    "AccessKeyId": access_key,
                    "SecretAccessKey": secret,
                    "Token": random_text(64),
                    "AccountId": "123456789012",
                    "Expiration": expiration,
                });
                Ok(Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))?)
            }
        });
        PodIdentityAgent {
            addr,
            token_file,
            fetches,
            refused,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/credentials", self.addr)
    }
}

pub fn random_text(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

// ---------------------------------------------------------------- tools, moto

const MOTO: &str = "moto[server]==5.2.5";
const MOTO_VERSION: &str = "5.2.5";

/// The venv holding moto 5.2.5 and the AWS CLI, created on first use.
pub fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = std::env::var_os("VCBACKUP_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                    .join(".cache/vcbackup/venv")
            });
        let ready = || {
            dir.join("bin/aws").exists()
                && Command::new(dir.join("bin/python"))
                    .args([
                        "-c",
                        &format!(
                            "import moto, sys; sys.exit(moto.__version__ != {MOTO_VERSION:?})"
                        ),
                    ])
                    .status()
                    .is_ok_and(|s| s.success())
        };
        if !ready() {
            let setup = format!(
                "python3 -m venv {0} && {0}/bin/pip install -q '{MOTO}' awscli",
                dir.display()
            );
            let out = Command::new("bash").args(["-c", &setup]).output();
            let ok = out.as_ref().is_ok_and(|o| o.status.success()) && ready();
            assert!(
                ok,
                "could not set up the test venv at {} ({:?}): run `scripts/setup` \
                 (needs python3 with venv and access to PyPI)",
                dir.display(),
                out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            );
        }
        dir
    })
    .clone()
}

pub use crate::common::free_port;

/// moto's server with IAM authentication on: the first six actions create two
/// users, each with a policy and an access key; every request after that is
/// checked against them. `access_key` may do anything with S3 and KMS; `reader`
/// may only list and read, as a role missing s3:PutObject would.
pub struct Moto {
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret: String,
    /// Access key and secret of the read-only user.
    pub reader: (String, String),
    child: Child,
    _home: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Moto {
        let venv = venv();
        let port = free_port();
        let home = tempfile::tempdir().unwrap();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "6")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut moto = Moto {
            addr,
            access_key: String::new(),
            secret: String::new(),
            reader: (String::new(), String::new()),
            child,
            _home: home,
        };
        (moto.access_key, moto.secret) = moto.create_user(
            "vcbackup",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*","kms:*"],"Resource":"*"}]}"#,
        );
        moto.reader = moto.create_user(
            "reader",
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:ListBucket","s3:GetObject","kms:Decrypt"],"Resource":"*"}]}"#,
        );
        moto
    }

    /// Three unauthenticated actions: a user, its inline policy, its access key.
    fn create_user(&self, user: &str, policy: &str) -> (String, String) {
        self.aws_unauthenticated(&["iam", "create-user", "--user-name", user]);
        self.aws_unauthenticated(&[
            "iam",
            "put-user-policy",
            "--user-name",
            user,
            "--policy-name",
            "backups",
            "--policy-document",
            policy,
        ]);
        let created = self.aws_unauthenticated(&["iam", "create-access-key", "--user-name", user]);
        let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
        let key = &created["AccessKey"];
        (
            key["AccessKeyId"].as_str().unwrap().into(),
            key["SecretAccessKey"].as_str().unwrap().into(),
        )
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn aws_unauthenticated(&self, args: &[&str]) -> Output {
        let out = aws_cli(
            &self.endpoint(),
            "AKIDUNAUTHENTICATED",
            "unused",
            args,
            self._home.path(),
        );
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the venv's AWS CLI against `endpoint` with the given credentials.
pub fn aws_cli(
    endpoint: &str,
    access_key: &str,
    secret: &str,
    args: &[&str],
    home: &Path,
) -> Output {
    let config = home.join("aws-config");
    std::fs::write(
        &config,
        format!("[default]\nregion = {REGION}\ns3 =\n  addressing_style = path\n"),
    )
    .unwrap();
    Command::new(venv().join("bin/aws"))
        .args(args)
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("no-credentials"))
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run the AWS CLI")
}

/// An SDK client for checking what a server holds.
pub fn s3_client(endpoint: &str, access_key: &str, secret: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(access_key, secret, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

// ---------------------------------------------------------------- the binary

/// A place for one test's files, and the environment the binary runs in: no
/// AWS settings from the machine, nothing but what the test gives.
pub struct Scene {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Scene {
    pub fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let env = vec![
            ("HOME".into(), home.clone()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("VCBACKUP_LOG".into(), "info".into()),
        ];
        Scene { dir, env }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
    }

    pub fn static_keys(&mut self, access_key: &str, secret: &str) {
        self.set("AWS_ACCESS_KEY_ID", access_key);
        self.set("AWS_SECRET_ACCESS_KEY", secret);
    }

    /// The binary with `args`, in this scene's environment only.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_vcbackup"));
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and insists on success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vcbackup {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and insists on failure; returns standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "vcbackup {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

/// A kine-like SQLite database in WAL mode of about `bytes`, its values
/// incompressible so the backup is about as large.
pub fn kine_db(path: &Path, bytes: usize) {
    use rand::RngCore;
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(
        "CREATE TABLE kine (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, created INTEGER,
            deleted INTEGER, create_revision INTEGER, prev_revision INTEGER, lease INTEGER,
            value BLOB, old_value BLOB);
         CREATE INDEX kine_name_index ON kine (name);",
    )
    .unwrap();
    let tx = conn.transaction().unwrap();
    let mut rng = rand::rng();
    let mut value = vec![0u8; 4000];
    for i in 0..bytes.div_ceil(4096) {
        rng.fill_bytes(&mut value);
        tx.execute(
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
             VALUES (?1, 1, 0, ?2, 0, 0, ?3, NULL)",
            rusqlite::params![format!("/registry/configmaps/default/cm-{i}"), i as i64, value],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A digest of a kine database's rows, to compare a restore with its source.
pub fn kine_digest(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT id, name, value FROM kine ORDER BY id")
        .unwrap();
    let mut rows = statement.query([]).unwrap();
    let mut hash = Sha256::new();
    let mut count = 0;
    while let Some(row) = rows.next().unwrap() {
        hash.update(row.get::<_, i64>(0).unwrap().to_le_bytes());
        hash.update(row.get::<_, String>(1).unwrap());
        hash.update(row.get::<_, Vec<u8>>(2).unwrap());
        count += 1;
    }
    format!("{count} rows {}", hex::encode(hash.finalize()))
}

/// The backup names `list -o json` shows.
pub fn listed(json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}
