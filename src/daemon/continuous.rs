//! `run --incremental-interval`: between scheduled full backups, every
//! interval the agent looks at the store and ships what changed since the
//! revision it shipped last, as an increment of the chain of the newest full
//! backup it took. An interval without changes ships nothing. When the chain
//! cannot continue (compaction passed the revision shipped last, the store
//! went back, the etcd watch was lost), the agent takes a full backup at once
//! and starts a new chain on it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};

use crate::increment::feed::{Feed, Poll};
use crate::increment::ship::{self, ChainHead, Look};
use crate::lock::lock;
use crate::manifest::Manifest;
use crate::pipeline::Sealing;
use crate::state::State;
use crate::storage::Storage;
use crate::store::SourceConfig;

/// What a look at the store asks of the scheduler.
pub(super) enum Next {
    /// Nothing more this interval: shipped, nothing new, or a failure counted.
    Wait,
    /// The chain cannot continue: a full backup now starts a new one.
    FullBackup,
}

/// What a look needs of the agent: where changes come from and go to.
pub(super) struct Agent<'a> {
    pub source: &'a SourceConfig,
    pub sealing: &'a Arc<Sealing>,
    pub storage: &'a dyn Storage,
    pub vcluster: &'a str,
    pub state: &'a State,
}

/// Continuous backups: the chain this agent extends, and how often it looks.
pub(super) struct Continuous {
    pub(super) interval: Duration,
    chain: Mutex<Option<Chain>>,
    /// The newest base could not start a chain (no revision, no change feed).
    unavailable: AtomicBool,
}

struct Chain {
    head: ChainHead,
    feed: Arc<Mutex<Box<dyn Feed>>>,
}

impl Continuous {
    pub(super) fn new(interval: Duration) -> Self {
        Continuous {
            interval,
            chain: Mutex::new(None),
            unavailable: AtomicBool::new(false),
        }
    }

    /// A newer base is stored: the chain being extended ends.
    pub(super) fn end_chain(&self) {
        lock(&self.chain).take();
    }

    /// After a full backup: its changes from now on are this agent's to ship.
    /// When none can follow it, the agent says so and waits for the next
    /// scheduled backup rather than forcing full backups every interval.
    pub(super) async fn start_chain(&self, base: &Manifest, agent: &Agent<'_>) {
        let started = self.follow(base, agent).await;
        self.unavailable.store(!started, Ordering::Relaxed);
    }

    async fn follow(&self, base: &Manifest, agent: &Agent<'_>) -> bool {
        let Some(head) = ChainHead::on(base) else {
            tracing::warn!(backup = %base.name, "the backup records no revision: no increments can follow it until the next scheduled backup");
            return false;
        };
        let spec = agent.source.clone();
        let revision = head.shipped;
        let feed = tokio::task::spawn_blocking(move || spec.open()?.changes_after(revision)).await;
        let feed = match feed {
            Ok(Ok(Some(feed))) => feed,
            Ok(Ok(None)) => {
                tracing::warn!(backup = %base.name, "this store cannot tell its changes: no increments follow the backup");
                return false;
            }
            Ok(Err(err)) => {
                tracing::error!(backup = %base.name, "start following changes after the backup (tried again after the next scheduled backup): {err:#}");
                return false;
            }
            Err(err) => {
                tracing::error!("start following changes: {err}");
                return false;
            }
        };
        tracing::info!(base = %base.name, revision, "increments follow this backup");
        agent.state.metrics.continuous.record_in_sync(base.started);
        *lock(&self.chain) = Some(Chain {
            head,
            feed: Arc::new(Mutex::new(feed)),
        });
        true
    }

    /// Wakes the agent before the interval ends (etcd events piling up).
    pub(super) fn flush_signal(&self) -> Option<Arc<tokio::sync::Notify>> {
        lock(&self.chain)
            .as_ref()
            .and_then(|chain| lock(&chain.feed).flush_signal())
    }

    /// One look at the store: ships an increment, or nothing, or asks for a
    /// full backup when the chain cannot continue. `last` (at shutdown) only ships.
    pub(super) async fn look(&self, last: bool, agent: &Agent<'_>) -> Next {
        let taken = lock(&self.chain).take();
        let Some(mut chain) = taken else {
            // The last base could not start a chain: the next scheduled backup tries again.
            if last || self.unavailable.load(Ordering::Relaxed) {
                return Next::Wait;
            }
            // A standby agent (--ha) checks again whether it leads now, quietly.
            if agent.state.status().standby.is_none() {
                tracing::info!("no chain of increments to continue: taking a full backup");
                agent
                    .state
                    .metrics
                    .continuous
                    .record_forced_full("no_chain", Utc::now());
            }
            return Next::FullBackup;
        };
        // The read starts after this time, so the increment holds every change up to it.
        let captured = Utc::now().trunc_subsecs(3);
        let polled = match ship::look(&chain.feed, chain.head.shipped).await {
            Ok(Look::Standby(why)) => {
                tracing::info!(
                    "standing by: {why}; the chain of increments of {} ends",
                    chain.head.base
                );
                agent.state.standby(Some(why));
                return Next::Wait;
            }
            Ok(Look::Polled(poll)) => Ok(poll),
            Err(err) => Err(err),
        };
        let metrics = &agent.state.metrics.continuous;
        match polled {
            Err(err) => {
                metrics.record_failed();
                tracing::error!(base = %chain.head.base, "read the store's changes: {err:#}");
            }
            Ok(Poll::Nothing) => metrics.record_in_sync(captured),
            Ok(Poll::Behind { received, head }) => tracing::info!(
                received,
                head,
                "the etcd watch is behind the store; shipping once it has caught up"
            ),
            Ok(Poll::NeedFull(reason)) => {
                metrics.record_forced_full(reason.label(), Utc::now());
                if last {
                    tracing::warn!("{reason}; the next start takes a full backup");
                } else {
                    tracing::warn!("{reason}: taking a full backup now");
                }
                // The chain ends either way: a new base starts the next one.
                return if last { Next::Wait } else { Next::FullBackup };
            }
            Ok(Poll::Changes {
                first,
                last: last_revision,
                compact,
            }) => {
                let shipped = ship::ship(
                    Arc::clone(&chain.feed),
                    &chain.head,
                    captured,
                    (first, last_revision, compact),
                    agent.sealing,
                    agent.storage,
                    agent.vcluster,
                )
                .await;
                match shipped {
                    Ok(manifest) => {
                        chain.head.shipped = manifest.last_revision;
                        metrics.record_shipped(manifest.captured, manifest.sealed.stored_size);
                        tracing::info!(
                            increment = %manifest.name,
                            first_revision = manifest.first_revision,
                            last_revision = manifest.last_revision,
                            changes = manifest.count,
                            stored_size = manifest.sealed.stored_size,
                            "increment shipped"
                        );
                    }
                    Err(err) => {
                        metrics.record_failed();
                        tracing::error!(
                            stage = err.stage.as_str(),
                            base = %chain.head.base,
                            "increment failed (retried next interval): {:#}",
                            err.error
                        );
                    }
                }
            }
        }
        let mut slot = lock(&self.chain);
        // A full backup in between started a newer chain: that one wins.
        if slot.is_none() {
            *slot = Some(chain);
        }
        Next::Wait
    }
}

/// When the next look is due after one at `from`; past the end of time (an
/// interval the command line would refuse), never before the last instant.
pub(super) fn next_look(from: DateTime<Utc>, interval: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(interval)
        .ok()
        .and_then(|interval| from.checked_add_signed(interval))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_look_too_far_away_is_the_last_instant_not_a_panic() {
        let now = Utc::now();
        assert_eq!(
            next_look(now, Duration::from_secs(30)),
            now + chrono::TimeDelta::seconds(30)
        );
        // 300000y: past chrono's last year, 262143.
        let far = Duration::from_secs(300_000 * 31_557_600);
        assert_eq!(next_look(now, far), DateTime::<Utc>::MAX_UTC);
        assert_eq!(next_look(now, Duration::MAX), DateTime::<Utc>::MAX_UTC);
    }
}
