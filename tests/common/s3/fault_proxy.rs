//! A reverse proxy in front of an S3 server that fails, cuts or delays
//! UploadPart requests on demand, and counts what it saw.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{BoxError, serve};

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
        // The fault injected (a slow network), part of the scenario, not a wait.
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
