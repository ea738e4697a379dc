//! Where backups come from: a backing store that yields one consistent
//! snapshot as a stream of plaintext bytes, plus the facts a manifest records.

mod bolt;
mod detect;
mod etcd;
pub mod kine;
pub mod semantic;
mod sqlite;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;

use crate::increment::feed::Feed;
use crate::manifest::{EtcdFacts, SemanticRevision, SourceKind};

pub use bolt::{BoltFile, RevisionScanner, ValueAt};
pub use detect::{Detected, detect};
pub use etcd::{
    DigestCheck, EtcdOptions, EtcdSource, EtcdTls, check_restored_snapshot, verify_snapshot_digest,
};
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

/// `--ha`: which agents back up when the control plane runs several replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HaMode {
    /// `leader` for the pod's own embedded etcd member (a loopback endpoint),
    /// `every-replica` for any other source.
    Auto,
    /// Back up only while the etcd member this agent reaches is the leader.
    Leader,
    /// Every agent backs up (names never collide, so each replica's backups are kept).
    EveryReplica,
}

/// A parsed `--source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// Find the store under the data directory.
    Auto,
    Sqlite(PathBuf),
    /// An etcd endpoint, `https://HOST:PORT` or `http://HOST:PORT`.
    Etcd(String),
}

impl SourceSpec {
    pub fn parse(text: &str) -> Result<Self> {
        if text.is_empty() {
            anyhow::bail!(
                "invalid source \"\": give `auto`, the path of kine's state.db, or an etcd endpoint https://HOST:PORT"
            );
        }
        if text == "auto" {
            return Ok(SourceSpec::Auto);
        }
        if text.starts_with("https://") || text.starts_with("http://") {
            let url = url::Url::parse(text)
                .map_err(|err| anyhow::anyhow!("invalid etcd endpoint {text:?}: {err}"))?;
            if url.host_str().is_none() || (url.path() != "/" && !url.path().is_empty()) {
                anyhow::bail!("invalid etcd endpoint {text:?}: expected https://HOST:PORT");
            }
            return Ok(SourceSpec::Etcd(text.trim_end_matches('/').to_string()));
        }
        if text.contains("://") {
            anyhow::bail!(
                "invalid source {text:?}: expected `auto`, a file path, or an etcd endpoint https://HOST:PORT or http://HOST:PORT"
            );
        }
        Ok(SourceSpec::Sqlite(PathBuf::from(text)))
    }
}

/// A `--source` with what opening it needs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub spec: SourceSpec,
    /// The control plane's data volume: where `auto` looks and the etcd certificates are.
    pub data_dir: PathBuf,
    pub etcd: EtcdOptions,
    pub ha: HaMode,
}

impl SourceConfig {
    /// Checks the store is there and readable, before any backup starts.
    /// Runs on a blocking thread: it may wait for certificates and connect.
    pub fn open(&self) -> Result<Box<dyn Source>> {
        let spec = match &self.spec {
            SourceSpec::Auto => {
                let detection = detect(&self.data_dir).map_err(anyhow::Error::msg)?;
                tracing::info!(reason = %detection.reason, "source detected (--source auto)");
                match detection.found {
                    Detected::Sqlite(path) => SourceSpec::Sqlite(path),
                    Detected::Etcd(endpoint) => SourceSpec::Etcd(endpoint),
                }
            }
            spec => spec.clone(),
        };
        match &spec {
            SourceSpec::Sqlite(path) => {
                if self.ha == HaMode::Leader {
                    anyhow::bail!(
                        "--ha leader needs an etcd source, but the source is kine's SQLite database {}; use --ha auto",
                        path.display()
                    );
                }
                Ok(Box::new(SqliteSource::open(path)?))
            }
            SourceSpec::Etcd(endpoint) => {
                // Each replica's agent reaches its own embedded member over loopback,
                // so exactly one of them talks to the leader.
                let leader_only = match self.ha {
                    HaMode::Leader => true,
                    HaMode::EveryReplica => false,
                    HaMode::Auto => is_loopback(endpoint),
                };
                Ok(Box::new(EtcdSource::open(
                    endpoint,
                    &self.etcd,
                    leader_only,
                )?))
            }
            SourceSpec::Auto => anyhow::bail!("source detection returned no source"),
        }
    }
}

/// Whether an etcd endpoint is this pod's own member: 127.0.0.0/8, ::1 or localhost.
fn is_loopback(endpoint: &str) -> bool {
    match url::Url::parse(endpoint)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

impl std::fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceSpec::Auto => f.write_str("auto"),
            SourceSpec::Sqlite(path) => write!(f, "{}", path.display()),
            SourceSpec::Etcd(endpoint) => f.write_str(endpoint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind_of_source() {
        assert_eq!(SourceSpec::parse("auto").unwrap(), SourceSpec::Auto);
        assert_eq!(
            SourceSpec::parse("/data/state.db").unwrap(),
            SourceSpec::Sqlite("/data/state.db".into())
        );
        assert_eq!(
            SourceSpec::parse("https://127.0.0.1:2379/").unwrap(),
            SourceSpec::Etcd("https://127.0.0.1:2379".into())
        );
        assert_eq!(
            SourceSpec::parse("http://demo-etcd:2379").unwrap(),
            SourceSpec::Etcd("http://demo-etcd:2379".into())
        );
        assert!(SourceSpec::parse("").is_err());
        assert!(SourceSpec::parse("unix:///data/kine.sock").is_err());
        assert!(SourceSpec::parse("https://host:2379/v3").is_err());
    }

    #[test]
    fn only_the_pods_own_member_counts_as_embedded() {
        assert!(is_loopback("https://127.0.0.1:2379"));
        assert!(is_loopback("https://localhost:2379"));
        assert!(is_loopback("http://[::1]:2379"));
        assert!(!is_loopback("https://demo-etcd:2379"));
        assert!(!is_loopback("https://10.0.0.7:2379"));
    }
}
