//! `vcbackup decrypt`: one downloaded backup file to its plaintext, offline.

use anyhow::Result;

use crate::pipeline::Identities;
use crate::restore::{self, DecryptOptions};

pub struct DecryptConfig {
    pub identities: Option<Identities>,
    pub options: DecryptOptions,
}

pub async fn run(config: DecryptConfig) -> Result<()> {
    let DecryptConfig {
        identities,
        options,
    } = config;
    tokio::task::spawn_blocking(move || restore::decrypt(identities, &options)).await?
}
