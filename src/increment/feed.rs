//! Where increments come from: a store's changes after the revision shipped
//! last. kine reads rows by id inside one read transaction (`kine`); etcd
//! watches from the base's revision + 1 (`etcd`).

use std::fmt;
use std::io::Write;

use anyhow::Result;

use super::format::Header;

/// What a look at the store found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Nothing changed since the revision shipped last: nothing is shipped.
    Nothing,
    /// Changes `first..=last` are ready; `write` writes them.
    Changes { first: i64, last: i64, compact: i64 },
    /// Increments cannot continue this chain: take a full backup.
    NeedFull(FullReason),
    /// The etcd watch has not yet delivered every revision up to the store's
    /// head: nothing ships until it has, and the RPO keeps growing.
    Behind { received: i64, head: i64 },
}

/// Why a chain cannot continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FullReason {
    /// Compaction passed the revision shipped last: changes never shipped may
    /// be gone (a delete could come back on restore).
    Compacted { compact: i64, shipped: i64 },
    /// The store's revision is below the one shipped: it was replaced or restored.
    WentBack { revision: i64, shipped: i64 },
    /// The etcd watch was cancelled or broke past recovery.
    WatchLost(String),
}

impl FullReason {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            FullReason::Compacted { .. } => "compacted",
            FullReason::WentBack { .. } => "went_back",
            FullReason::WatchLost(_) => "watch_lost",
        }
    }
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FullReason::Compacted { compact, shipped } => write!(
                f,
                "the store was compacted at revision {compact}, past revision {shipped} shipped last"
            ),
            FullReason::WentBack { revision, shipped } => write!(
                f,
                "the store's revision {revision} is below revision {shipped} shipped last (was it replaced or restored?)"
            ),
            FullReason::WatchLost(why) => write!(f, "the etcd watch was lost: {why}"),
        }
    }
}

/// A store's changes since a revision. Runs on a blocking thread.
pub trait Feed: Send {
    /// Looks at the store after revision `shipped`. After `Poll::Changes`,
    /// `write` must follow (or `release`).
    fn poll(&mut self, shipped: i64) -> Result<Poll>;

    /// Writes the changes the last poll found, after `header`; returns how many.
    fn write(&mut self, header: &Header, out: &mut dyn Write) -> Result<u64>;

    /// Lets go of what the last poll held (kine's read transaction) when the
    /// changes were not stored after all: they wait for the next look.
    fn release(&mut self) {}

    /// The changes the last poll found are stored.
    fn shipped(&mut self) {}

    /// Why another replica's agent backs up now (`--ha`): this agent's chain
    /// ends there. Runs on a blocking thread.
    fn standby(&mut self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Wakes the agent before the interval ends when many changes wait (etcd).
    fn flush_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}
