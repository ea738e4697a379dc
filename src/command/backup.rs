//! `vcbackup backup`: one backup, its name on standard output, then the sweep
//! of what killed agents left.

use anyhow::Result;

use crate::backup::Companions;
use crate::pipeline::Sealing;
use crate::schedule::Age;
use crate::storage::Storage;
use crate::store::SourceConfig;

pub struct BackupConfig {
    pub source: SourceConfig,
    pub sealing: std::sync::Arc<Sealing>,
    pub storage: Box<dyn Storage>,
    pub vcluster: String,
    pub companions: Companions,
    /// `--abort-uploads-after`.
    pub stale_upload_age: Age,
}

pub async fn run(config: BackupConfig) -> Result<()> {
    let BackupConfig {
        source,
        sealing,
        storage,
        vcluster,
        companions,
        stale_upload_age,
    } = config;
    let source = tokio::task::spawn_blocking(move || source.open()).await??;
    let manifest =
        crate::backup::take_backup(source, sealing, storage.as_ref(), &vcluster, &companions)
            .await?;
    println!("{}", manifest.name);
    // The backup is stored; a failed clean-up of others' leftovers only warns.
    let cutoff = chrono::Utc::now() - stale_upload_age.delta;
    if let Err(err) = storage.abort_stale_uploads(cutoff).await {
        tracing::warn!("sweeping unfinished uploads: {err:#}");
    }
    Ok(())
}
