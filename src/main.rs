//! vcbackup: consistent, encrypted backups of a vCluster control plane.
//!
//! The outline: parse and check the command line, set up logging, then run
//! one command. A backup's path through the code: `source` (a consistent
//! snapshot) → `pipeline` (zstd, age) → `storage` (local, S3), orchestrated by
//! `backup`; `catalog` reads backups back for `list`, `restore` and retention.

mod backup;
mod catalog;
mod cli;
mod daemon;
mod error_chain;
mod http;
mod manifest;
mod metrics;
mod pipeline;
mod restore;
mod retention;
mod schedule;
mod source;
mod storage;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command, LogFormat, OutputFormat};

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

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Run(args) => daemon::run(args.resolve()?).await,
        Command::Backup(args) => {
            let source = args.backup.source()?;
            let sealing = args.backup.sealing.resolve()?;
            let stale_upload_age = args.sweep.stale_upload_age()?;
            let target = args.backup.storage.resolve()?;
            let storage = target.destination.open(&target.vcluster).await?;
            let source = tokio::task::spawn_blocking(move || source.open()).await??;
            let manifest =
                backup::take_backup(source, sealing, storage.as_ref(), &target.vcluster).await?;
            println!("{}", manifest.name);
            // The backup is stored; a failed clean-up of others' leftovers only warns.
            let cutoff = chrono::Utc::now() - stale_upload_age;
            if let Err(err) = storage.abort_stale_uploads(cutoff).await {
                tracing::warn!("sweeping unfinished uploads: {err:#}");
            }
            Ok(())
        }
        Command::List(args) => {
            let target = args.storage.resolve()?;
            let storage = target.destination.open(&target.vcluster).await?;
            let backups = catalog::list_backups(storage.as_ref()).await?;
            match args.output {
                OutputFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&listing::json(&backups))?
                ),
                OutputFormat::Table => print!("{}", listing::table(&backups, chrono::Utc::now())),
            }
            Ok(())
        }
        Command::Prune(args) => {
            let policy = args.retention.policy();
            let stale_upload_age = args.retention.sweep.stale_upload_age()?;
            let target = args.storage.resolve()?;
            let storage = target.destination.open(&target.vcluster).await?;
            let now = chrono::Utc::now();
            let plan = retention::prune(storage.as_ref(), &policy, now, args.dry_run).await?;
            let verb = if args.dry_run {
                "would delete"
            } else {
                "deleted"
            };
            for (backup, reason) in &plan.delete {
                println!("{verb} {} ({reason})", backup.name);
            }
            for backup in &plan.keep {
                println!("keep {}", backup.name);
            }
            if !args.dry_run {
                let aborted = storage.abort_stale_uploads(now - stale_upload_age).await?;
                if aborted > 0 {
                    println!(
                        "aborted {aborted} unfinished upload(s) older than {}",
                        args.retention.sweep.abort_uploads_after
                    );
                }
            }
            Ok(())
        }
        Command::Decrypt(args) => {
            let identities = args.identity.load()?;
            let dash = |p: Option<std::path::PathBuf>| p.filter(|p| p.as_os_str() != "-");
            let options = restore::DecryptOptions {
                input: dash(args.input),
                output: dash(args.output),
                force: args.force,
            };
            tokio::task::spawn_blocking(move || restore::decrypt(identities, &options)).await?
        }
        Command::Restore(args) => {
            let selector = args.selector()?;
            let identities = args.identity.load()?;
            let target = args.storage.resolve()?;
            let storage = target.destination.open(&target.vcluster).await?;
            let options = restore::RestoreOptions {
                to: args.to,
                force: args.force,
                if_missing: args.if_missing,
                bump_revision: args.bump_revision,
            };
            match restore::restore(storage.as_ref(), &selector, identities, &options).await? {
                restore::Restored::Done(manifest) => {
                    eprintln!("restored {} to {}", manifest.name, options.to.display())
                }
                restore::Restored::Kept => {
                    eprintln!(
                        "{} exists; nothing restored (--if-missing)",
                        options.to.display()
                    )
                }
            }
            Ok(())
        }
    }
}

mod listing {
    //! `list` output: a table for people, JSON for scripts.

    use chrono::{DateTime, Utc};
    use serde_json::{Value, json};

    use crate::manifest::{Manifest, rfc3339};

    pub fn json(backups: &[Manifest]) -> Value {
        Value::Array(
            backups
                .iter()
                .map(|m| {
                    json!({
                        "name": m.name,
                        "created": rfc3339(m.started),
                        "kind": m.kind,
                        "size": m.size,
                        "stored_size": m.stored_size,
                        "sha256": m.sha256,
                        "encrypted": m.encryption.is_some(),
                        "revision": m.revision,
                        "vcluster": m.vcluster,
                    })
                })
                .collect(),
        )
    }

    pub fn table(backups: &[Manifest], now: DateTime<Utc>) -> String {
        let mut rows = vec![["NAME", "TIME", "AGE", "KIND", "SIZE", "STORED"].map(String::from)];
        for m in backups {
            rows.push([
                m.name.clone(),
                m.started.format("%Y-%m-%d %H:%M:%SZ").to_string(),
                age(now - m.started),
                m.kind.to_string(),
                bytes(m.size),
                bytes(m.stored_size),
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    fn age(age: chrono::TimeDelta) -> String {
        let s = age.num_seconds().max(0);
        match s {
            0..60 => format!("{s}s"),
            60..3600 => format!("{}m", s / 60),
            3600..86400 => format!("{}h", s / 3600),
            _ => format!("{}d", s / 86400),
        }
    }

    fn bytes(n: u64) -> String {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut value = n as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            format!("{n} B")
        } else {
            format!("{value:.1} {}", UNITS[unit])
        }
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
