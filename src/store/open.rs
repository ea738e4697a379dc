//! Which store a `--source` names, and opening it: the one place that
//! constructs a store (`SourceConfig::open` for a live one, `key_values` for
//! a decrypted backup, `identify` for a downloaded file without its manifest).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::Source;
use super::detect::{Detected, detect};
use super::etcd::pairs::EtcdPages;
use super::etcd::{EtcdOptions, EtcdSource};
use super::kine::SqliteSource;
use super::kine::pairs::KinePages;
use super::pairs::{KeyValues, Pages};
use crate::manifest::SourceKind;

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

/// Opens the decrypted, decompressed backup at `path`, of `kind` (as its
/// manifest records), as key/value pairs. `scratch` is a private directory
/// for working files (an etcd snapshot needs a sorted index of its keys).
/// `path` must be a private copy: for kine an index on `name` is added if the
/// database lacks one.
pub fn key_values(path: &Path, kind: SourceKind, scratch: &Path) -> Result<KeyValues> {
    let pages: Box<dyn Pages> = match kind {
        SourceKind::Sqlite => Box::new(KinePages::open(path)?),
        SourceKind::Etcd => Box::new(EtcdPages::open(path, scratch)?),
    };
    Ok(KeyValues::new(pages))
}

/// Which store a decrypted backup came from, by its first bytes: only for a
/// downloaded file that came without its manifest.
pub fn identify(path: &Path) -> Result<SourceKind> {
    let mut head = [0u8; 24];
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let n = read_up_to(&mut file, &mut head).with_context(|| format!("read {}", path.display()))?;
    if head[..n].starts_with(super::kine::SQLITE_HEADER) {
        return Ok(SourceKind::Sqlite);
    }
    if super::etcd::is_bolt(&head[..n]) {
        return Ok(SourceKind::Etcd);
    }
    bail!(
        "{}: neither kine's SQLite database nor an etcd snapshot",
        path.display()
    )
}

fn read_up_to(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(read) => n += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(n)
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
