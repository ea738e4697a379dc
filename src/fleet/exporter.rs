//! `fleet --listen`: a central exporter. It lists the destination every
//! `--refresh` and serves per-cluster gauges on `/metrics`, so an alert fires
//! for a virtual cluster whose own sidecar is gone and exports nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Limits, survey};
use crate::metrics::fleet::FleetMetrics;
use crate::shutdown::Shutdown;
use crate::storage::Destination;

pub async fn serve(
    destination: Destination,
    limits: Limits,
    listen: SocketAddr,
    refresh: Duration,
) -> Result<()> {
    let listener = crate::http::bind(listen).await?;
    let metrics = Arc::new(FleetMetrics::new()?);
    let shutdown = Shutdown::listen()?;
    let server = tokio::spawn(http(listener, Arc::clone(&metrics), shutdown.token.clone()));
    tracing::info!(%destination, %listen, refresh = %humantime::format_duration(refresh), "fleet exporter started");
    loop {
        match survey(&destination, limits).await {
            Ok(survey) => {
                metrics.record_survey(&survey.clusters, Utc::now());
                tracing::info!(clusters = survey.clusters.len(), "listed the fleet");
            }
            // The last good survey stays served; its timestamp tells alerts it is old.
            Err(err) => {
                metrics.record_refresh_failure();
                tracing::warn!("list the fleet: {err:#}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(refresh) => {}
            () = shutdown.token.cancelled() => break,
        }
    }
    let _ = server.await;
    Ok(())
}

async fn http(listener: TcpListener, metrics: Arc<FleetMetrics>, shutdown: CancellationToken) {
    crate::http::serve_with(listener, shutdown, move |req| {
        respond(&metrics, req.method(), req.uri().path())
    })
    .await
}

fn respond(metrics: &FleetMetrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
    }
    match path {
        "/metrics" => match metrics.render() {
            Ok((content_type, body)) => {
                let mut response = text(StatusCode::OK, String::new());
                *response.body_mut() = Full::new(Bytes::from(body));
                if let Ok(value) = hyper::header::HeaderValue::from_str(&content_type) {
                    response.headers_mut().insert("content-type", value);
                }
                response
            }
            Err(err) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("encode metrics: {err}\n"),
            ),
        },
        "/livez" | "/readyz" => text(StatusCode::OK, "ok\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n".into()),
    }
}
