//! The backups a storage holds, read from their manifests. Listing, choosing
//! a backup to restore and retention all start here, for every backend.

use std::collections::HashMap;

use anyhow::{Result, bail};
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use crate::increment::{Chain, IncrementRef};
use crate::manifest::{MANIFEST_MAX_BYTES, Manifest, rfc3339};
use crate::object::{MANIFEST_SUFFIX, Object};
use crate::records::{self, Record};
use crate::storage::{self, ObjectInfo, ObjectNotFound, Storage};

/// Manifests fetched at once when listing: thousands of backups list in seconds.
const MANIFEST_FETCHES: usize = 16;

/// What one listing of a virtual cluster's storage shows.
pub struct Catalog {
    /// Every complete backup, newest first.
    pub backups: Vec<Manifest>,
    /// The records beside backups (drills, unchanged marks), oldest first.
    pub records: Vec<Record>,
    /// Every increment whose manifest is stored (complete), read from names alone.
    pub increments: Vec<IncrementRef>,
    pub objects: Vec<ObjectInfo>,
}

/// Every complete backup (object and manifest both present), newest first.
pub async fn list_backups(storage: &dyn Storage) -> Result<Vec<Manifest>> {
    Ok(read(storage).await?.backups)
}

/// The backups, their records and every object, from one listing.
pub async fn read(storage: &dyn Storage) -> Result<Catalog> {
    let objects = storage.list().await?;
    let sizes: HashMap<&str, u64> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let manifest_keys: Vec<&str> = objects
        .iter()
        .map(|o| o.key.as_str())
        .filter(|key| {
            matches!(Object::parse(key), Some(Object::BackupManifest { backup }) if sizes.contains_key(backup.as_str()))
        })
        .collect();
    let fetched: Vec<Option<Manifest>> = stream::iter(manifest_keys)
        .map(|key| async move {
            match storage::get_bytes(storage, key, MANIFEST_MAX_BYTES).await {
                Ok(data) => match Manifest::from_json(&data, key) {
                    Ok(manifest) => Ok(Some(manifest)),
                    // A foreign or damaged manifest must not hide every other backup.
                    Err(err) => {
                        tracing::warn!("skipping {key}: {err:#}");
                        Ok(None)
                    }
                },
                // Deleted between listing and reading (retention running elsewhere).
                Err(err) if err.is::<ObjectNotFound>() => Ok(None),
                Err(err) => Err(err),
            }
        })
        .buffer_unordered(MANIFEST_FETCHES)
        .try_collect()
        .await?;
    let mut backups: Vec<Manifest> = fetched.into_iter().flatten().collect();
    for m in &backups {
        // Still listed: restore's verification says what is wrong with it.
        if sizes.get(m.name.as_str()) != Some(&m.sealed.stored_size) {
            tracing::warn!(backup = %m.name, "stored size differs from the manifest: the backup is damaged");
        }
    }
    backups.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.name.cmp(&a.name)));
    let records = records::records(objects.iter().map(|o| o.key.as_str()));
    // An increment counts once its manifest is stored: written after it.
    let mut increments: Vec<IncrementRef> = objects
        .iter()
        .filter_map(|o| IncrementRef::parse(&o.key))
        .filter(|i| sizes.contains_key(crate::object::manifest_key(&i.name).as_str()))
        .collect();
    increments.sort_by(|a, b| (a.captured, &a.name).cmp(&(b.captured, &b.name)));
    Ok(Catalog {
        backups,
        records,
        increments,
        objects,
    })
}

/// A drill record is a few KiB; anything far larger is not one.
const RECORD_MAX_BYTES: u64 = 1 << 20;

/// `records` without the drill records whose body does not back their name,
/// each read with one GET and each one left out named in a warning: `list`
/// shows only drills that were really run (see `records::check_body`).
pub async fn checked_records(storage: &dyn Storage, records: Vec<Record>) -> Result<Vec<Record>> {
    let kept: Vec<Option<Record>> = stream::iter(records)
        .map(|record| async move {
            if record.verify_ok().is_none() {
                return Ok(Some(record));
            }
            match storage::get_bytes(storage, &record.key, RECORD_MAX_BYTES).await {
                Ok(body) => match records::check_body(&record, &body) {
                    Ok(()) => Ok(Some(record)),
                    Err(why) => {
                        tracing::warn!("ignoring drill record {}: {why}", record.key);
                        Ok(None)
                    }
                },
                // Replaced by a newer drill since the listing.
                Err(err) if err.is::<ObjectNotFound>() => Ok(None),
                Err(err) => Err(err.context(format!("read drill record {}", record.key))),
            }
        })
        .buffered(MANIFEST_FETCHES)
        .try_collect()
        .await?;
    Ok(kept.into_iter().flatten().collect())
}

/// Which backup an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Named(String),
    /// The newest backup taken at or before this time.
    At(DateTime<Utc>),
}

impl Selector {
    pub fn new(name: Option<&str>, at: Option<DateTime<Utc>>) -> Result<Self> {
        match (name, at) {
            (Some(name), Some(_)) if name != "latest" => {
                bail!("give either a backup name or --at, not both")
            }
            (_, Some(at)) => Ok(Selector::At(at)),
            (None | Some("latest"), None) => Ok(Selector::Latest),
            (Some(name), None) => Ok(Selector::Named(
                name.strip_suffix(MANIFEST_SUFFIX)
                    .unwrap_or(name)
                    .to_string(),
            )),
        }
    }
}

/// Picks one backup from `backups` (newest first).
pub fn select<'a>(
    backups: &'a [Manifest],
    selector: &Selector,
    location: &str,
) -> Result<&'a Manifest> {
    let found = match selector {
        Selector::Latest => backups.first(),
        Selector::Named(name) => backups.iter().find(|m| &m.name == name),
        Selector::At(at) => backups.iter().find(|m| m.started <= *at),
    };
    match (found, selector) {
        (Some(manifest), _) => Ok(manifest),
        (None, Selector::Latest) => bail!("no backups in {location}"),
        (None, Selector::Named(name)) => {
            bail!("no backup named {name:?} in {location}; `vcbackup list` shows the backups there")
        }
        (None, Selector::At(_)) if backups.is_empty() => bail!("no backups in {location}"),
        (None, Selector::At(at)) => bail!(
            "no backup taken at or before {} in {location}; the oldest is from {}",
            rfc3339(*at),
            backups
                .last()
                .map(|m| rfc3339(m.started))
                .unwrap_or_default()
        ),
    }
}

/// What a restore or an export asks for, with increments: a base and the
/// increments to apply. `latest` and `--at` follow the chain of the base they
/// pick; a named backup is that backup alone; a named increment is its chain
/// up to it. A chain with a gap is refused unless `up_to_gap` accepts the
/// state up to the gap.
pub fn select_chain(
    catalog: &Catalog,
    selector: &Selector,
    location: &str,
    up_to_gap: bool,
) -> Result<Chain> {
    if let Selector::Named(name) = selector
        && let Some(increment) = catalog.increments.iter().find(|i| &i.name == name)
    {
        let base = catalog
            .backups
            .iter()
            .find(|m| m.name == increment.base)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "increment {name} in {location} continues {}, which is gone",
                    increment.base
                )
            })?;
        let chain = Chain::assemble(base, &catalog.increments, Some(increment.captured));
        if chain.increments.last().map(|i| &i.name) != Some(name) {
            let missing = chain.gap().unwrap_or_else(|| "it is not reached".into());
            bail!("restore up to {name}: {missing}");
        }
        return Ok(chain);
    }
    let base = select(&catalog.backups, selector, location)?;
    let chain = match selector {
        Selector::Latest => Chain::assemble(base, &catalog.increments, None),
        Selector::At(at) => Chain::assemble(base, &catalog.increments, Some(*at)),
        Selector::Named(_) => Chain::assemble(base, &[], None),
    };
    chain.refuse_gap(up_to_gap)?;
    Ok(chain)
}
