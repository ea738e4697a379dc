//! A local S3 server for benchmarks and demos: s3s-fs on 127.0.0.1, checking
//! SigV4 signatures against the credentials in `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY` (the same variables the agent reads, so no secret
//! is ever a process argument).
//!
//! Usage: cargo run --release --example s3_server -- ROOT_DIR BUCKET
//! Prints `listening on http://127.0.0.1:PORT`, then serves until killed.

use std::io::Write;

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, bucket] = args.as_slice() else {
        bail!("usage: s3_server ROOT_DIR BUCKET");
    };
    let access_key = std::env::var("AWS_ACCESS_KEY_ID").context("AWS_ACCESS_KEY_ID")?;
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").context("AWS_SECRET_ACCESS_KEY")?;
    let root = std::path::Path::new(root);
    std::fs::create_dir_all(root.join(bucket))
        .with_context(|| format!("create bucket directory in {}", root.display()))?;

    let fs = s3s_fs::FileSystem::new(root)
        .map_err(|err| anyhow::anyhow!("open s3s-fs root {}: {err:?}", root.display()))?;
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(access_key, secret));
    let service = builder.build();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        // A transient accept error (out of file descriptors) must not end the server.
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(err) => {
                eprintln!("s3_server: accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}
