//! The agent's HTTP endpoints: `/metrics` for Prometheus, `/livez` and
//! `/readyz` for the kubelet, `/status` for people.
//!
//! Readiness never depends on backups succeeding: the sidecar shares the
//! vCluster pod, and a failing destination must not make the control plane
//! NotReady. Freshness is for metrics and alerts.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::State;

pub async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("listen on {addr} (--listen)"))
}

/// Serves the agent's endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: CancellationToken) {
    serve_with(listener, shutdown, move |req| respond(&state, &req)).await
}

/// Serves `handler` until `shutdown`, one task per connection: the agent's
/// endpoints and the fleet exporter's.
pub async fn serve_with<H>(listener: TcpListener, shutdown: CancellationToken, handler: H)
where
    H: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!("accept an HTTP connection: {err}");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handler(req);
                async move { Ok::<_, Infallible>(response) }
            });
            // Errors here are a client hanging up; nothing to do about them.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => match state.metrics.render() {
            Ok((content_type, body)) => Response::builder()
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encode\n".into())),
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encode metrics: {err}\n"),
            ),
        },
        "/livez" => match state.stalled_for() {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(stalled) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("scheduler loop silent for {}s\n", stalled.as_secs()),
            ),
        },
        "/readyz" => {
            if state.is_ready() {
                text(StatusCode::OK, "ok\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
            }
        }
        "/status" => match serde_json::to_vec_pretty(&state.status()) {
            Ok(body) => Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encode\n".into())),
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encode status: {err}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /livez, /readyz or /status\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
