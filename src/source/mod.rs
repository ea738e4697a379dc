//! Where backups come from: a backing store that yields one consistent
//! snapshot as a stream of plaintext bytes, plus the facts a manifest records.

mod sqlite;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::manifest::{EtcdFacts, SourceKind};

pub use sqlite::SqliteSource;

/// What a snapshot tells the manifest beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFacts {
    pub revision: Option<i64>,
    pub etcd: Option<EtcdFacts>,
}

/// A backing store that can write one consistent snapshot of itself.
pub trait Source: Send {
    fn kind(&self) -> SourceKind;

    /// The store, for messages: a path or an endpoint.
    fn describe(&self) -> String;

    /// Writes one consistent snapshot to `out`. Runs on a blocking thread;
    /// must never write to or block the live store.
    fn snapshot(&mut self, out: &mut dyn Write) -> Result<SnapshotFacts>;
}

/// A parsed `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    Sqlite(PathBuf),
}

impl SourceSpec {
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() {
            anyhow::bail!("invalid source \"\": give the path of kine's state.db");
        }
        Ok(SourceSpec::Sqlite(PathBuf::from(text)))
    }

    /// Checks the store is there and readable, before any backup starts.
    pub fn open(&self) -> Result<Box<dyn Source>> {
        match self {
            SourceSpec::Sqlite(path) => Ok(Box::new(SqliteSource::open(path)?)),
        }
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Sqlite(path) => write!(f, "{}", path.display()),
        }
    }
}
