//! `run --verify-after-upload`: each uploaded backup read back once, with
//! the checks that need no key (the pod holds none), counted in the metrics
//! and recorded beside the backup as a key-less drill.

use anyhow::Result;

use crate::manifest::Manifest;
use crate::metrics::VerifyResult;
use crate::records::Mode;
use crate::state::State;
use crate::storage::Storage;

/// Reads the uploaded backup back once, with the checks that need no key
/// (the pod holds none), and records the drill beside it.
pub(super) async fn read_back(
    storage: &dyn Storage,
    state: &State,
    manifest: &Manifest,
) -> Result<()> {
    let report = crate::verify::drill(
        storage,
        manifest,
        Mode::Keyless,
        None,
        &std::env::temp_dir(),
    )
    .await
    .map_err(|err| err.context(format!("read back {}", manifest.name)))?;
    let result = if report.ok {
        VerifyResult::Ok
    } else {
        VerifyResult::Failed
    };
    state.metrics.record_verify(result, report.duration_seconds);
    tracing::info!(
        backup = %manifest.name,
        result = if report.ok { "ok" } else { "failed" },
        duration_seconds = format!("{:.2}", report.duration_seconds),
        "read back the uploaded backup"
    );
    // The record is for people and `fleet`; the verdict stands without it.
    if let Err(err) = crate::verify::store(storage, &report, &[]).await {
        tracing::warn!("{err:#}");
    }
    match report.first_failure() {
        None => Ok(()),
        Some(check) => anyhow::bail!(
            "verify {}: check {} failed: {}",
            manifest.name,
            check.name,
            check.detail
        ),
    }
}
