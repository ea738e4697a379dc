//! `vcbackup list`: the backups, their increments and drills, newest first.

use anyhow::Result;

use crate::catalog;
use crate::listing::{self, OutputFormat};
use crate::storage::Storage;

pub struct ListConfig {
    pub storage: Box<dyn Storage>,
    pub output: OutputFormat,
}

pub async fn run(config: ListConfig) -> Result<()> {
    let storage = config.storage.as_ref();
    let catalog = catalog::read(storage).await?;
    let records = catalog::checked_records(storage, catalog.records).await?;
    let (backups, records, increments) = (&catalog.backups, &records, &catalog.increments);
    match config.output {
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
