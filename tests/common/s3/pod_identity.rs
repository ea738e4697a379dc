//! An emulated EKS Pod Identity agent.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};

use super::{AccessKeys, BoxError, serve};
use crate::common::random_text;

/// An emulated EKS Pod Identity agent: serves short-lived credentials to a
/// caller presenting the token from `token_file`, and registers each issued
/// key with the S3 server's `AccessKeys`.
pub struct PodIdentityAgent {
    pub addr: SocketAddr,
    pub token_file: PathBuf,
    pub fetches: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
}

impl PodIdentityAgent {
    pub fn start(keys: Arc<AccessKeys>, lifetime: Duration, dir: &Path) -> PodIdentityAgent {
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
