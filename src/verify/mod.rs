//! Restore drills: `vcbackup verify` and `run --verify-after-upload`.
//!
//! A drill reads a backup back and checks it as a restore would, without
//! restoring: the stored bytes against the manifest; with the key, the
//! plaintext, the database and the saved vCluster config too. Each drill
//! leaves a record beside the backup (`records`), named with its time, mode
//! and result, so `list` and `fleet` show it from a listing.

pub mod chain;
mod checks;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use tokio_util::io::SyncIoBridge;

use crate::manifest::Manifest;
use crate::pipeline::{Hashing, Identities};
use crate::records::{self, Mode, Record};
use crate::storage::{self, ObjectNotFound, Storage};

pub const RECORD_FORMAT_VERSION: u32 = 1;

/// One check of a drill, by a fixed name (`stored`, `plaintext`, `kine-revision`, …).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    #[serde(serialize_with = "result_word", rename = "result")]
    pub ok: bool,
    pub detail: String,
}

fn result_word<S: serde::Serializer>(ok: &bool, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if *ok { "ok" } else { "failed" })
}

impl Check {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Check {
            name,
            ok: false,
            detail: detail.into(),
        }
    }

    fn from(name: &'static str, result: Result<String>) -> Self {
        match result {
            Ok(detail) => Check::pass(name, detail),
            Err(err) => Check::fail(name, format!("{err:#}").replace('\n', " ")),
        }
    }
}

/// What one drill found: the record stored beside the backup.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub format_version: u32,
    pub backup: String,
    pub vcluster: String,
    pub time: DateTime<Utc>,
    pub mode: Mode,
    #[serde(serialize_with = "result_word", rename = "result")]
    pub ok: bool,
    pub checks: Vec<Check>,
    pub duration_seconds: f64,
    pub agent_version: String,
}

impl Report {
    /// Adds a check made after the drill itself (the chain of increments).
    pub fn add(&mut self, check: Check) {
        self.ok &= check.ok;
        self.checks.push(check);
    }

    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| !c.ok)
    }

    /// One line for people: the backup, the result, the first failed check.
    pub fn summary(&self) -> String {
        match self.first_failure() {
            None => format!(
                "ok      {}  {} checks ({}) in {:.1}s",
                self.backup,
                self.checks.len(),
                self.mode.as_str(),
                self.duration_seconds
            ),
            Some(check) => format!(
                "FAILED  {}  check {} failed: {}",
                self.backup, check.name, check.detail
            ),
        }
    }
}

/// Runs one drill over `manifest`'s backup in `storage`. `Mode::Full` needs
/// `identities` for an encrypted backup; `scratch` holds the plaintext while
/// the database is checked. A failed check is a result, not an error: errors
/// are for drills that could not run (storage unreachable, no scratch room).
pub async fn drill(
    storage: &dyn Storage,
    manifest: &Manifest,
    mode: Mode,
    identities: Option<Arc<Identities>>,
    scratch: &Path,
) -> Result<Report> {
    let time = Utc::now().trunc_subsecs(3);
    let clock = Instant::now();
    let mut checks = Vec::new();
    match storage.get(&manifest.name).await {
        Ok(reader) => {
            let owned = manifest.clone();
            let scratch = scratch.to_path_buf();
            let keys = identities.clone();
            checks = tokio::task::spawn_blocking(move || -> Result<Vec<Check>> {
                let reader = SyncIoBridge::new(reader);
                let mut checks = Vec::new();
                match mode {
                    Mode::Keyless => checks::keyless(reader, &owned, &mut checks),
                    Mode::Full => {
                        checks::full(reader, &owned, keys.as_deref(), &scratch, &mut checks)?
                    }
                }
                Ok(checks)
            })
            .await
            .context("the drill panicked")??;
        }
        Err(err) if err.is::<ObjectNotFound>() => {
            checks.push(Check::fail(
                "stored",
                format!("the object is missing from {}", storage.location()),
            ));
        }
        Err(err) => return Err(err),
    }
    if let Some(saved) = &manifest.config {
        checks.extend(config(storage, manifest, saved, mode, identities.as_deref()).await?);
    }
    let ok = checks.iter().all(|c| c.ok);
    Ok(Report {
        format_version: RECORD_FORMAT_VERSION,
        backup: manifest.name.clone(),
        vcluster: manifest.vcluster.clone(),
        time,
        mode,
        ok,
        checks,
        duration_seconds: clock.elapsed().as_secs_f64(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// Step 5: the saved vCluster config, stored bytes first, then (with the key) its YAML.
async fn config(
    storage: &dyn Storage,
    manifest: &Manifest,
    saved: &crate::manifest::SavedConfig,
    mode: Mode,
    identities: Option<&Identities>,
) -> Result<Vec<Check>> {
    let sealed =
        match storage::get_bytes(storage, &saved.name, crate::vconfig::CONFIG_MAX_BYTES).await {
            Ok(sealed) => sealed,
            Err(err) if err.is::<ObjectNotFound>() => {
                return Ok(vec![Check::fail(
                    "config-stored",
                    format!("{} is missing", saved.name),
                )]);
            }
            Err(err) => return Err(err),
        };
    let mut hashing = Hashing::new(std::io::sink());
    std::io::Write::write_all(&mut hashing, &sealed).context("hash the saved config")?;
    let (stored, _) = hashing.finish();
    let mut checks = vec![if stored.size == saved.stored_size
        && stored.sha256 == saved.stored_sha256
    {
        Check::pass(
            "config-stored",
            format!("{}: {} bytes as in the manifest", saved.name, stored.size),
        )
    } else {
        Check::fail(
            "config-stored",
            format!(
                "{}: {} bytes, SHA-256 {}; the manifest records {} bytes, SHA-256 {}",
                saved.name, stored.size, stored.sha256, saved.stored_size, saved.stored_sha256
            ),
        )
    }];
    if mode == Mode::Full {
        let opened = crate::vconfig::open_config(&sealed, manifest, identities, &saved.name);
        checks.push(Check::from(
            "config",
            opened
                .map(|yaml| format!("{} bytes of values, SHA-256 as in the manifest", yaml.len())),
        ));
    }
    Ok(checks)
}

/// Stores `report` beside its backup under a key of its own, then deletes
/// the older records of the same backup and mode among `previous`: storage
/// never overwrites, and a new record first means one always exists.
pub async fn store(storage: &dyn Storage, report: &Report, previous: &[Record]) -> Result<String> {
    let key = crate::object::verify_key(&report.backup, report.time, report.mode, report.ok);
    let mut json = serde_json::to_vec_pretty(report).context("encode the verify record")?;
    json.push(b'\n');
    storage::put_bytes(storage, &key, json)
        .await
        .with_context(|| format!("store verify record {key} in {}", storage.location()))?;
    for old in previous.iter().filter(|r| {
        r.backup == report.backup
            && r.key != key
            && matches!(r.kind, records::Kind::Verify { mode, .. } if mode == report.mode)
    }) {
        if let Err(err) = storage.delete(&old.key).await {
            tracing::warn!(record = %old.key, "delete an older verify record: {err:#}");
        }
    }
    Ok(key)
}
