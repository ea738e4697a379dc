//! etcd's increments: a watch on every key, from the revision after the base
//! snapshot's own (read from the snapshot itself, so the first increment
//! neither overlaps the snapshot nor leaves a hole: etcd-backup-restore #1044).
//! Events collect in memory until the next interval, or until `FLUSH_BYTES`
//! wakes the agent early. A compaction past the last revision received or a
//! watch that cannot be resumed ends the chain: the agent takes a full snapshot
//! (etcd-backup-restore #599: a watch from a compacted revision stalls).
//! Revisions must follow each other without a hole, or the chain ends too.

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::Notify;

use super::event::{EtcdEvent, EventKind};
use crate::increment::feed::{Feed, FullReason, Poll};
use crate::increment::format::{Header, Writer};
use crate::lock::lock;

/// Buffered event bytes that wake the agent before the interval ends.
pub const FLUSH_BYTES: usize = 8 << 20;
/// Beyond this many buffered bytes the watch gives up (the agent was not
/// shipping): a full snapshot is cheaper than unbounded memory.
const MAX_BYTES: usize = 256 << 20;

/// How long a broken watch is retried (from the revision after the last one
/// received) before the chain is given up.
const RECOVER_FOR: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Default)]
struct Pending {
    events: Vec<EtcdEvent>,
    bytes: usize,
    lost: Option<FullReason>,
    /// The newest revision received.
    received: i64,
}

impl Pending {
    fn lose(&mut self, reason: FullReason) {
        self.lost.get_or_insert(reason);
    }
}

/// The watch, running on the runtime, and what it collected.
pub struct EtcdFeed {
    pending: Arc<Mutex<Pending>>,
    flush: Arc<Notify>,
    /// The events the last poll took, for `write`.
    taken: Vec<EtcdEvent>,
    task: tokio::task::JoinHandle<()>,
    /// Says whether another replica's agent backs up now (`--ha`).
    source: Box<dyn crate::store::Source>,
    /// For the store's head revision at each look.
    client: Client,
    runtime: tokio::runtime::Handle,
}

impl Drop for EtcdFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdFeed {
    /// Starts watching every key from `revision + 1` (the base's revision).
    pub fn start(
        client: Client,
        runtime: &tokio::runtime::Handle,
        revision: i64,
        source: Box<dyn crate::store::Source>,
    ) -> Self {
        let pending = Arc::new(Mutex::new(Pending {
            received: revision,
            ..Pending::default()
        }));
        let flush = Arc::new(Notify::new());
        let task = runtime.spawn(watch(
            client.clone(),
            Arc::clone(&pending),
            Arc::clone(&flush),
        ));
        EtcdFeed {
            pending,
            flush,
            taken: Vec::new(),
            task,
            source,
            client,
            runtime: runtime.clone(),
        }
    }
}

/// Watches from the revision after the last received, again after a break,
/// until the chain is lost (compaction, a hole, too much waiting, or no
/// recovery within `RECOVER_FOR`).
async fn watch(mut client: Client, pending: Arc<Mutex<Pending>>, flush: Arc<Notify>) {
    let mut broken_since: Option<tokio::time::Instant> = None;
    loop {
        let from = lock(&pending).received + 1;
        let why = follow(&mut client, from, &pending, &flush, &mut broken_since).await;
        let Some(why) = why else { return };
        let since = *broken_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() > RECOVER_FOR {
            let mut pending = lock(&pending);
            pending.lose(FullReason::WatchLost(format!(
                "{why}; not recovered within {}s",
                RECOVER_FOR.as_secs()
            )));
            return;
        }
        tracing::warn!("{why}; watching again from revision {from}");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// One watch stream from `from`. Returns why it broke when it may be
/// retried, `None` once the chain is lost (recorded in `pending`).
async fn follow(
    client: &mut Client,
    from: i64,
    pending: &Mutex<Pending>,
    flush: &Notify,
    broken_since: &mut Option<tokio::time::Instant>,
) -> Option<String> {
    let options = WatchOptions::new()
        .with_all_keys()
        .with_start_revision(from);
    let mut stream = match client.watch(vec![0u8], Some(options)).await {
        Ok(stream) => stream,
        Err(err) => return Some(format!("start the watch from revision {from}: {err}")),
    };
    loop {
        let response = match stream.message().await {
            Ok(Some(response)) => response,
            Ok(None) => return Some("the server ended the watch".into()),
            Err(err) => return Some(format!("the watch broke: {err}")),
        };
        *broken_since = None;
        let mut pending = lock(pending);
        if response.compact_revision() > 0 {
            let shipped = pending.received;
            pending.lose(FullReason::Compacted {
                compact: response.compact_revision(),
                shipped,
            });
            return None;
        }
        if response.canceled() {
            let why = format!(
                "the server cancelled the watch: {}",
                response.cancel_reason()
            );
            pending.lose(FullReason::WatchLost(why));
            return None;
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let revision = kv.mod_revision();
            // One revision may carry several events (a transaction); the next must follow.
            if revision != pending.received && revision != pending.received + 1 {
                let why = format!(
                    "the watch jumped from revision {} to {revision}",
                    pending.received
                );
                pending.lose(FullReason::WatchLost(why));
                return None;
            }
            pending.received = revision;
            let put = event.event_type() == EventType::Put;
            pending.bytes += kv.key().len() + kv.value().len() + 64;
            pending.events.push(EtcdEvent {
                revision,
                kind: if put {
                    EventKind::Put
                } else {
                    EventKind::Delete
                },
                key: Some(kv.key().to_vec()),
                value: put.then(|| kv.value().to_vec()),
                create_revision: kv.create_revision(),
                version: kv.version(),
                lease: kv.lease(),
            });
        }
        if pending.bytes > MAX_BYTES {
            let why = format!(
                "more than {} MiB of changes waited to ship",
                MAX_BYTES >> 20
            );
            pending.lose(FullReason::WatchLost(why));
            return None;
        }
        if pending.bytes >= FLUSH_BYTES {
            flush.notify_one();
        }
    }
}

impl EtcdFeed {
    /// The store's revision now: the header of a count-only range read.
    fn head_revision(&mut self) -> Result<i64> {
        let options = etcd_client::GetOptions::new().with_count_only();
        let response = self.runtime.block_on(tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.client.get(vec![0u8], Some(options)),
        ));
        let response = response
            .map_err(|_| anyhow::anyhow!("etcd did not answer within 10s"))?
            .map_err(|err| anyhow::anyhow!("{err}"))?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }
}

impl Feed for EtcdFeed {
    /// Ships only once the watch has delivered every revision the store had
    /// when the look began, so an increment read "at" a time holds exactly the
    /// changes made before it, never a lagging watch's part of them.
    fn poll(&mut self, shipped: i64) -> Result<Poll> {
        let head = self.head_revision();
        let mut pending = lock(&self.pending);
        if let Some(reason) = &pending.lost {
            return Ok(Poll::NeedFull(reason.clone()));
        }
        match head {
            Ok(head) if pending.received >= head => {}
            Ok(head) => {
                return Ok(Poll::Behind {
                    received: pending.received,
                    head,
                });
            }
            Err(err) => return Err(err.context("read the etcd revision")),
        }
        // Everything up to `shipped` went out before (a failed upload puts events back).
        self.taken = std::mem::take(&mut pending.events);
        pending.bytes = 0;
        let Some(first) = self.taken.first().map(|e| e.revision) else {
            return Ok(Poll::Nothing);
        };
        let last = self.taken.last().map_or(first, |e| e.revision);
        if first != shipped + 1 {
            // The check of etcd-backup-restore #1044: the first change must be the next revision.
            let why = format!(
                "the first change waiting is at revision {first}, but revision {shipped} was shipped last"
            );
            pending.lose(FullReason::WatchLost(why.clone()));
            return Ok(Poll::NeedFull(FullReason::WatchLost(why)));
        }
        Ok(Poll::Changes {
            first,
            last,
            compact: 0,
        })
    }

    fn write(&mut self, header: &Header, out: &mut dyn Write) -> Result<u64> {
        let mut writer = Writer::start(out, header)?;
        for event in &self.taken {
            writer.change(event)?;
        }
        writer.finish()
    }

    /// The changes were not shipped: they go back in front of newer ones.
    fn release(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let mut pending = lock(&self.pending);
        let newer = std::mem::take(&mut pending.events);
        pending.events = std::mem::take(&mut self.taken);
        pending.events.extend(newer);
        pending.bytes = pending
            .events
            .iter()
            .map(|e| e.key.as_ref().map_or(0, Vec::len) + e.value.as_ref().map_or(0, Vec::len) + 64)
            .sum();
    }

    fn shipped(&mut self) {
        self.taken = Vec::new();
    }

    fn flush_signal(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.flush))
    }

    fn standby(&mut self) -> Result<Option<String>> {
        self.source.standby()
    }
}
