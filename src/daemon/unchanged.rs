//! `run --skip-unchanged`: before a scheduled backup, the store's semantic
//! revision is compared with the newest backup's; when they are equal no
//! backup is taken. The newest backup is still current, so freshness counts
//! from the check: `vcbackup_last_success_timestamp_seconds` moves to it, and
//! a mark `<backup>.unchanged-<time>.json` in storage tells a restarted agent
//! and `fleet` the same. `--max-unchanged-age` forces a real backup.

use std::sync::Mutex;

use anyhow::Result;
use chrono::{DateTime, SubsecRound, TimeDelta, Utc};

use crate::lock::lock;
use crate::manifest::{Manifest, SemanticRevision};
use crate::records::{Kind, Record};
use crate::state::State;
use crate::storage::{self, Storage};
use crate::store::Source;

/// The newest unchanged mark of `backup` among `records` (oldest first).
pub(super) fn last_mark<'a>(records: &'a [Record], backup: &str) -> Option<&'a Record> {
    records
        .iter()
        .rev()
        .find(|r| r.kind == Kind::Unchanged && r.backup == backup)
}

/// `--skip-unchanged`: the newest backup as last seen, and the mark this
/// agent wrote last (replaced by the next).
pub(super) struct SkipUnchanged {
    /// `--max-unchanged-age`: a real backup once the newest is this old.
    max_age: TimeDelta,
    newest: Mutex<Option<Manifest>>,
    last_mark: Mutex<Option<String>>,
}

impl SkipUnchanged {
    pub(super) fn new(max_age: TimeDelta) -> Self {
        SkipUnchanged {
            max_age,
            newest: Mutex::new(None),
            last_mark: Mutex::new(None),
        }
    }

    pub(super) fn remember_newest(&self, newest: Option<&Manifest>) {
        let mut cached = lock(&self.newest);
        let newer = match (&*cached, newest) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => new.started >= old.started,
        };
        if newer {
            *cached = newest.cloned();
        }
    }

    /// At start: the mark found in storage, which this agent's next check replaces.
    pub(super) fn found_mark(&self, key: Option<String>) {
        *lock(&self.last_mark) = key;
    }

    /// The source back when a backup is due, `None` when the store has not
    /// changed since the newest backup (and that was recorded). Any doubt
    /// (no newest backup, no recorded revision, a failed read) means a backup.
    pub(super) async fn unless_unchanged(
        &self,
        mut source: Box<dyn Source>,
        storage: &dyn Storage,
        state: &State,
    ) -> Option<Box<dyn Source>> {
        let newest = lock(&self.newest).clone();
        let Some(newest) = newest else {
            return Some(source);
        };
        let Some(recorded) = newest.semantic_revision else {
            tracing::info!(newest = %newest.name, "the newest backup records no semantic revision; backing up");
            return Some(source);
        };
        let now = Utc::now();
        if now - newest.started >= self.max_age {
            tracing::info!(newest = %newest.name, "the newest backup is older than --max-unchanged-age; backing up");
            return Some(source);
        }
        let read = tokio::task::spawn_blocking(move || {
            let current = source.semantic_revision();
            (source, current)
        })
        .await;
        let (source, current) = match read {
            Ok(read) => read,
            Err(err) => {
                // The source went with the panicked task; the next slot opens it again.
                state.failed(
                    crate::backup::Stage::Source,
                    format!("read the semantic revision: {err}"),
                );
                return None;
            }
        };
        match current {
            Ok(Some(current)) if current == recorded => {
                self.unchanged(&newest, current, storage, state).await;
                None
            }
            Ok(_) => Some(source),
            Err(err) => {
                tracing::warn!("read the semantic revision, backing up instead: {err:#}");
                Some(source)
            }
        }
    }

    /// Records a skipped backup: metrics and /status, then the mark in storage.
    async fn unchanged(
        &self,
        newest: &Manifest,
        semantic: SemanticRevision,
        storage: &dyn Storage,
        state: &State,
    ) {
        let checked = Utc::now().trunc_subsecs(3);
        state.backup_unchanged(&newest.name, checked);
        tracing::info!(
            newest = %newest.name,
            semantic_revision = semantic.revision,
            keys = semantic.keys,
            "store unchanged since the newest backup: no backup taken"
        );
        // The mark only helps a restarted agent and `fleet`; the skip stands without it.
        if let Err(err) = self.mark(newest, semantic, checked, storage).await {
            tracing::warn!("record the unchanged check: {err:#}");
        }
    }

    /// Stores `<newest>.unchanged-<checked>.json`, then deletes the mark it
    /// replaces: storage never overwrites, so each mark has its own key.
    async fn mark(
        &self,
        newest: &Manifest,
        semantic: SemanticRevision,
        checked: DateTime<Utc>,
        storage: &dyn Storage,
    ) -> Result<()> {
        let key = crate::object::unchanged_key(&newest.name, checked);
        let body = serde_json::to_vec_pretty(&serde_json::json!({
            "backup": newest.name,
            "checked": crate::manifest::rfc3339(checked),
            "semantic_revision": semantic,
            "agent_version": env!("CARGO_PKG_VERSION"),
        }))?;
        storage::put_bytes(storage, &key, body).await?;
        let previous = lock(&self.last_mark).replace(key);
        if let Some(previous) = previous {
            storage.delete(&previous).await?;
        }
        Ok(())
    }
}
