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
mod pipeline;
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

use anyhow::{Context, Result};
use clap::Parser;

use crate::cli::{Cli, Command, LogFormat};
use crate::listing::OutputFormat;

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
        Command::Run(args) => {
            background::set(args.backup.priority);
            daemon::run(args.resolve()?).await
        }
        Command::Backup(args) => {
            background::set(args.backup.priority);
            backup_now(args).await
        }
        Command::List(args) => list(args).await,
        Command::Prune(args) => prune(args).await,
        Command::Decrypt(args) => decrypt(args).await,
        Command::Restore(args) => restore(args).await,
        Command::Export(args) => export(args).await,
        Command::Verify(args) => command::verify::run(args.resolve().await?).await,
        Command::Fleet(args) => command::fleet::run(args.resolve()?).await,
    }
}

/// `backup`: one backup, its name on standard output, then the sweep of what
/// killed agents left.
async fn backup_now(args: cli::BackupNowArgs) -> Result<()> {
    let source = args.backup.source()?;
    let sealing = args.backup.sealing.resolve()?;
    let (target, storage) = args.backup.storage.open().await?;
    let vcluster_config = args.backup.vcluster_config.source(&target.vcluster);
    let source = tokio::task::spawn_blocking(move || source.open()).await??;
    let manifest = backup::take_backup(
        source,
        sealing,
        storage.as_ref(),
        &target.vcluster,
        &vcluster_config,
    )
    .await?;
    println!("{}", manifest.name);
    // The backup is stored; a failed clean-up of others' leftovers only warns.
    let cutoff = chrono::Utc::now() - args.sweep.abort_uploads_after.delta;
    if let Err(err) = storage.abort_stale_uploads(cutoff).await {
        tracing::warn!("sweeping unfinished uploads: {err:#}");
    }
    Ok(())
}

async fn list(args: cli::ListArgs) -> Result<()> {
    let (_, storage) = args.storage.open().await?;
    let catalog = catalog::read(storage.as_ref()).await?;
    let records = catalog::checked_records(storage.as_ref(), catalog.records).await?;
    let (backups, records, increments) = (&catalog.backups, &records, &catalog.increments);
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&listing::json(backups, records, increments))?
        ),
        OutputFormat::Table => print!(
            "{}",
            listing::table(backups, records, increments, chrono::Utc::now())
        ),
    }
    Ok(())
}

/// `prune`: retention now, its plan on standard output, then the sweep.
async fn prune(args: cli::PruneArgs) -> Result<()> {
    let policy = args.retention.policy();
    let (_, storage) = args.storage.open().await?;
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
        let age = &args.retention.sweep.abort_uploads_after;
        let aborted = storage.abort_stale_uploads(now - age.delta).await?;
        if aborted > 0 {
            println!("aborted {aborted} unfinished upload(s) older than {age}");
        }
    }
    Ok(())
}

async fn decrypt(args: cli::DecryptArgs) -> Result<()> {
    let identities = args.identity.load()?;
    let dash = |p: Option<std::path::PathBuf>| p.filter(|p| p.as_os_str() != "-");
    let options = restore::DecryptOptions {
        input: dash(args.input),
        output: dash(args.output),
        force: args.force,
    };
    tokio::task::spawn_blocking(move || restore::decrypt(identities, &options)).await?
}

async fn restore(args: cli::RestoreArgs) -> Result<()> {
    let selector = args.selector()?;
    let identities = args.identity.load()?;
    let options = restore::RestoreOptions {
        to: args.to,
        force: args.force,
        if_missing: args.if_missing,
        bump_revision: args.bump_revision,
        integrity_check: args.integrity_check,
        base_only: args.base_only,
    };
    if !restore::may_write(&options)? {
        eprintln!(
            "{} exists; nothing restored (--if-missing)",
            options.to.display()
        );
        return Ok(());
    }
    if let Some(path) = &args.config_out
        && path.exists()
        && !args.force
    {
        anyhow::bail!(
            "write {}: the file exists; pass --force to replace it",
            path.display()
        );
    }
    let (_, storage) = args.storage.open().await?;
    let catalog = catalog::read(storage.as_ref()).await?;
    let chain = catalog::select_chain(&catalog, &selector, &storage.location(), args.up_to_gap)?;
    let config = match &args.config_out {
        Some(path) => Some(
            vconfig::fetch_saved(storage.as_ref(), &chain.base, identities.as_ref(), path).await?,
        ),
        None => None,
    };
    let chain = restore::restore(storage.as_ref(), chain, identities, &options).await?;
    eprintln!("restored {} to {}", chain.describe(), options.to.display());
    if let Some(gap) = chain.gap() {
        eprintln!(
            "warning: {gap}; restored up to revision {} (--up-to-gap)",
            chain.revision().unwrap_or(0)
        );
    }
    if let (Some(path), Some(yaml)) = (&args.config_out, config) {
        vconfig::write_config(path, &yaml, args.force)?;
        eprintln!(
            "wrote the vCluster config of {} to {}",
            chain.base.name,
            path.display()
        );
    }
    Ok(())
}

/// `export`: vCluster's snapshot archive from one backup, to a file or S3.
async fn export(args: cli::ExportArgs) -> Result<()> {
    let output = args.output()?;
    let identities = args.identity.load()?;
    let input = match args.stored()? {
        Some((storage, selector)) => export::Input::Stored {
            storage: storage.open().await?.1,
            selector,
            up_to_gap: args.up_to_gap,
        },
        None => export::Input::File(args.input.clone().context("no --input")?),
    };
    let shown = output.to_string();
    let options = export::ExportOptions {
        output,
        force: args.force,
    };
    let exported = export::export(input, identities, options).await?;
    let release = if exported.release {
        "with its release entry"
    } else {
        "without a release entry"
    };
    eprintln!(
        "exported {} keys of {} to {shown} {release}; the archive is not encrypted",
        exported.keys, exported.backup
    );
    Ok(())
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
