//! The backing stores: where backups come from and what their plaintext is.
//!
//! A store yields one consistent snapshot as a stream of plaintext bytes, plus
//! the facts a manifest records; continuous backups read its change feed; a
//! backup reads back as key/value pairs. This file holds the traits and the
//! store-agnostic types only; each store lives in its own folder (`kine`,
//! `etcd`), the only place that knows it, and `open` picks one.

pub mod detect;
pub mod etcd;
pub mod kine;
pub mod open;
pub mod pairs;
pub mod semantic;

use std::io::Write;

use anyhow::Result;

use crate::increment::feed::Feed;
use crate::manifest::{EtcdFacts, SemanticRevision, SourceKind};

pub use open::{HaMode, SourceConfig, SourceSpec};
pub use pairs::Pair;

/// What a snapshot tells the manifest beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFacts {
    pub revision: Option<i64>,
    pub etcd: Option<EtcdFacts>,
}

/// One named check of a drill, as a store judges its decrypted backup:
/// `Ok` passes, and either way the text says what was found.
#[derive(Debug, Clone)]
pub struct Finding {
    pub name: &'static str,
    pub verdict: std::result::Result<String, String>,
}

impl Finding {
    pub fn pass(name: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            name,
            verdict: Ok(detail.into()),
        }
    }

    pub fn fail(name: &'static str, detail: impl Into<String>) -> Finding {
        Finding {
            name,
            verdict: Err(detail.into()),
        }
    }
}

/// A backing store that can write one consistent snapshot of itself.
pub trait Source: Send {
    fn kind(&self) -> SourceKind;

    /// The store, for messages: a path or an endpoint.
    fn describe(&self) -> String;

    /// Writes one consistent snapshot to `out`. Runs on a blocking thread;
    /// must never write to or block the live store.
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<SnapshotFacts>;

    /// The newest change a user cares about (see `semantic`), read cheaply
    /// and without the snapshot; `None` where the store cannot tell.
    fn semantic_revision(&mut self) -> Result<Option<SemanticRevision>> {
        Ok(None)
    }

    /// Why another replica's agent takes this slot's backup, or `None` when
    /// this agent should. Runs on a blocking thread.
    fn standby(&mut self) -> Result<Option<String>> {
        Ok(None)
    }

    /// The store's changes after `revision` (a full backup's), for continuous
    /// backups; `None` where the store cannot tell them. Runs on a blocking thread.
    fn changes_after(self: Box<Self>, revision: i64) -> Result<Option<Box<dyn Feed>>> {
        let _ = revision;
        Ok(None)
    }
}
