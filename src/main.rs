//! vcbackup: consistent, encrypted backups of a vCluster control plane.
//!
//! The outline: parse and check the command line, set up logging, then run
//! one command. A backup's path through the code: `store` (a consistent
//! snapshot of kine's SQLite or etcd, each in its own folder) → `pipeline`
//! (zstd, age) → `storage` (local, S3), orchestrated by `backup`; `catalog`
//! reads backups back for `list`, `restore` and retention; `increment` ships
//! and applies continuous backups without knowing either store.

mod background;
mod backup;
mod catalog;
mod cli;
mod command;
mod daemon;
mod durable;
mod error_chain;
mod export;
mod fleet;
mod footprint;
mod http;
mod increment;
mod listing;
mod lock;
mod manifest;
mod metrics;
mod object;
mod pipeline;
mod plaintext;
mod records;
mod restore;
mod retention;
mod schedule;
mod shutdown;
mod state;
mod storage;
mod store;
mod vconfig;
mod verify;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};

fn main() -> ExitCode {
    return_freed_buffers_to_the_os();
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return report(anyhow::Error::from(err).context("start the async runtime")),
    };
    let result = runtime.block_on(run(cli.command));
    // A blocking copy cut off by shutdown must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(err),
    }
}

/// Each command's arguments resolved into its configuration, then its one
/// function. `run` and `backup` set their priority first, for every thread
/// they start.
async fn run(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => {
            background::set(args.backup.priority);
            daemon::run(args.resolve()?).await
        }
        Command::Backup(args) => {
            background::set(args.backup.priority);
            command::backup::run(args.resolve().await?).await
        }
        Command::List(args) => command::list::run(args.resolve().await?).await,
        Command::Prune(args) => command::prune::run(args.resolve().await?).await,
        Command::Decrypt(args) => command::decrypt::run(args.resolve()?).await,
        Command::Restore(args) => command::restore::run(args.resolve().await?).await,
        Command::Export(args) => command::export::run(args.resolve().await?).await,
        Command::Verify(args) => command::verify::run(args.resolve().await?).await,
        Command::Fleet(args) => command::fleet::run(args.resolve()?).await,
    }
}

fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// A backup allocates multi-MiB buffers (S3 parts, zstd jobs) over and over.
/// glibc raises its mmap threshold after the first such buffer is freed, and
/// from then on keeps freed ones in its heaps: peak memory grew by about three
/// parts. A fixed threshold maps each large buffer and unmaps it when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_buffers_to_the_os() {
    // An operator's own threshold (GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…) wins.
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc.mmap_threshold")) {
        return;
    }
    // SAFETY: mallopt only tunes the allocator; no other thread exists yet. It
    // fails only for an unknown parameter, and then the allocator is unchanged.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_buffers_to_the_os() {}

/// One line: what failed and why, with the input named.
fn report(err: anyhow::Error) -> ExitCode {
    let message = format!("{err:#}").replace('\n', " ");
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
