//! A reverse proxy in front of an S3 server that records every request and
//! can damage object bodies on their way back (the drill and fleet tests).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{BoxError, serve};

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
        let shared = Arc::clone(&seen);
        let addr = serve(move |req| forward(req, upstream, Arc::clone(&shared)));
        Proxy { addr, seen }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

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
