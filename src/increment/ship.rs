//! Shipping one increment: the changes a poll found, sealed like a backup
//! and stored beside their base, then the manifest. Nothing is shipped for
//! an interval without changes.

use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::feed::{Feed, Poll};
use super::format::{Header, VERSION};
use super::{FORMAT_VERSION, IncrementManifest, increment_name};
use crate::backup::{BackupError, seal_and_store, store_manifest};
use crate::lock::lock;
use crate::manifest::{Manifest, SealedObject};
use crate::pipeline::Sealing;
use crate::storage::Storage;

/// The chain being extended: its base and the revision shipped last.
pub struct ChainHead {
    pub base: String,
    pub kind: crate::manifest::SourceKind,
    pub shipped: i64,
}

impl ChainHead {
    /// A new chain on a full backup; `None` when the backup records no
    /// revision to continue from (a SQLite database without kine's table).
    pub fn on(base: &Manifest) -> Option<ChainHead> {
        Some(ChainHead {
            base: base.name.clone(),
            kind: base.kind,
            shipped: base.revision?,
        })
    }
}

/// Seals and stores the changes `poll` found (`Poll::Changes`), then the manifest.
/// `captured` is a time before the read began: the increment holds every
/// change up to it.
pub async fn ship(
    feed: Arc<Mutex<Box<dyn Feed>>>,
    head: &ChainHead,
    captured: DateTime<Utc>,
    (first, last, compact): (i64, i64, i64),
    sealing: &Arc<Sealing>,
    storage: &dyn Storage,
    vcluster: &str,
) -> Result<IncrementManifest, BackupError> {
    let name = increment_name(&head.base, captured, first, last, rand::random());
    let header = Header {
        vcbackup_increment: VERSION,
        kind: head.kind,
        base: head.base.clone(),
        first_revision: first,
        last_revision: last,
        compact_revision: compact,
    };
    let writer = Arc::clone(&feed);
    let stored = seal_and_store(storage, sealing, &name, "vcbackup-increment", move |out| {
        let mut feed = lock(&writer);
        feed.write(&header, out)
    })
    .await;
    let stored = match stored {
        Ok(stored) => stored,
        Err(err) => {
            // The read transaction ends, and etcd's events wait for the next look.
            lock(&feed).release();
            return Err(err);
        }
    };
    let manifest = IncrementManifest {
        format_version: FORMAT_VERSION,
        name: name.clone(),
        base: head.base.clone(),
        vcluster: vcluster.to_string(),
        kind: head.kind,
        captured,
        finished: Utc::now(),
        first_revision: first,
        last_revision: last,
        compact_revision: compact,
        count: stored.facts,
        sealed: SealedObject::of(sealing, &stored.plaintext, &stored.stored),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // Without its manifest the increment is never applied: it goes too, and
    // its changes wait for the next look.
    let key = manifest.manifest_key();
    let stored = store_manifest(storage, &key, manifest.to_json(), &[&name]).await;
    let mut feed = lock(&feed);
    match stored {
        Ok(()) => feed.shipped(),
        Err(err) => {
            feed.release();
            return Err(err);
        }
    }
    Ok(manifest)
}

/// What one look at the store found.
pub enum Look {
    /// Another replica's agent backs up now (`--ha`), for this reason.
    Standby(String),
    Polled(Poll),
}

/// Asks whether this agent still backs up, then looks at the store after
/// `shipped`, on a blocking thread.
pub async fn look(feed: &Arc<Mutex<Box<dyn Feed>>>, shipped: i64) -> anyhow::Result<Look> {
    let feed = Arc::clone(feed);
    tokio::task::spawn_blocking(move || {
        let mut feed = lock(&feed);
        if let Some(why) = feed.standby()? {
            return Ok(Look::Standby(why));
        }
        feed.poll(shipped).map(Look::Polled)
    })
    .await
    .context("reading the store's changes panicked")?
}
