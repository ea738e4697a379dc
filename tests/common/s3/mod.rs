//! S3 servers for the tests, each in its own file: s3s-fs in process with
//! SigV4 checked ([`s3s_server`]), a fault-injecting reverse proxy
//! ([`fault_proxy`]), an emulated EKS Pod Identity agent ([`pod_identity`]),
//! moto with IAM authentication in a venv ([`moto`]), and a proxy that records
//! requests and can damage what S3 returns ([`recording_proxy`]). Here: what they
//! share (the runtime, the credentials a server accepts) and an SDK client.
//!
//! Servers run on one shared background runtime so tests stay plain `#[test]`
//! functions that run the built binary.

pub mod fault_proxy;
pub mod moto;
pub mod pod_identity;
pub mod recording_proxy;
pub mod s3s_server;

// Re-exported for the tests; a test binary that uses none of them is fine.
#[allow(unused_imports)]
pub use {
    fault_proxy::{FaultProxy, Faults},
    moto::{Moto, aws_cli, venv},
    pod_identity::PodIdentityAgent,
    recording_proxy::{Proxy, Seen},
    s3s_server::S3sFs,
};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "backups";

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Serves `handler` on a fresh loopback port, on [`rt`].
pub(crate) fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, BoxError>> + Send + 'static,
{
    serve_service(service_fn(handler))
}

/// Serves `service` over HTTP/1 on a fresh loopback port, on [`rt`].
pub(crate) fn serve_service<S, B>(service: S) -> SocketAddr
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
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
    addr
}

// ---------------------------------------------------------------- credentials

/// The credentials an S3 server accepts, and which ones it saw.
#[derive(Default)]
pub struct AccessKeys {
    inner: Mutex<KeysInner>,
}

#[derive(Default)]
struct KeysInner {
    secrets: HashMap<String, (String, Option<SystemTime>)>,
    /// AccessKeys issued to one role, by that role's name.
    principals: HashMap<String, String>,
    used: Vec<String>,
    rejected: Vec<String>,
}

/// How long after its expiry a key is still accepted: a request signed just
/// before expiry arrives a little later (through a slow proxy, say).
const EXPIRY_GRACE: Duration = Duration::from_secs(4);

impl AccessKeys {
    pub fn with(access_key: &str, secret: &str) -> Arc<AccessKeys> {
        let keys = Arc::new(AccessKeys::default());
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

struct KeysAuth(Arc<AccessKeys>);

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
