//! `vcbackup prune`: retention now, its plan on standard output, then the sweep.

use anyhow::Result;

use crate::retention::{self, RetentionPolicy};
use crate::schedule::Age;
use crate::storage::Storage;

pub struct PruneConfig {
    pub storage: Box<dyn Storage>,
    pub policy: RetentionPolicy,
    /// `--abort-uploads-after`.
    pub stale_upload_age: Age,
    pub dry_run: bool,
}

pub async fn run(config: PruneConfig) -> Result<()> {
    let storage = config.storage.as_ref();
    let now = chrono::Utc::now();
    let plan = retention::prune(storage, &config.policy, now, config.dry_run).await?;
    let verb = if config.dry_run {
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
    if !config.dry_run {
        let age = &config.stale_upload_age;
        let aborted = storage.abort_stale_uploads(now - age.delta).await?;
        if aborted > 0 {
            println!("aborted {aborted} unfinished upload(s) older than {age}");
        }
    }
    Ok(())
}
