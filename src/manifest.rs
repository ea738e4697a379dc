//! The manifest: the contract between backup and restore. It lies beside
//! each backup as `<backup>.json` and is written only after the backup itself,
//! so a backup with a manifest is always complete.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::pipeline::Fingerprint;

pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST_SUFFIX: &str = ".json";
/// A manifest is a few hundred bytes; anything far larger is not one of ours.
pub const MANIFEST_MAX_BYTES: u64 = 1 << 20;

/// What kind of backing store a backup came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// kine's SQLite database, copied page by page.
    Sqlite,
    /// An etcd snapshot, with etcd's trailing SHA-256.
    Etcd,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Etcd => "etcd",
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Facts about an etcd snapshot, recorded for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdFacts {
    pub cluster_id: String,
    pub member_id: String,
    pub server_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: String,
    pub level: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub algorithm: String,
    /// The public keys the backup is encrypted to: they tell an operator which identity opens it.
    pub recipients: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// The backup's object name.
    pub name: String,
    pub vcluster: String,
    pub kind: SourceKind,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Plaintext (the database or snapshot file) size and SHA-256.
    pub size: u64,
    pub sha256: String,
    /// What storage holds: compressed and, usually, encrypted.
    pub stored_size: u64,
    pub stored_sha256: String,
    pub compression: Compression,
    pub encryption: Option<Encryption>,
    /// The store's revision at the snapshot: the largest `kine.id`, or etcd's header revision.
    pub revision: Option<i64>,
    /// The newest change a user cares about, read just before the snapshot
    /// (`run --skip-unchanged` compares it); absent in older backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_revision: Option<SemanticRevision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdFacts>,
    /// The vCluster config saved beside the backup; absent in backups taken
    /// without one (and in those of versions before it was saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<SavedConfig>,
    /// The virtual cluster's PKI saved beside the backup; absent in backups
    /// taken without one (and in those of versions before it was saved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<SavedPki>,
    pub agent_version: String,
}

/// The newest change outside Leases, Events, `compact_rev_key*` and `gap-*`
/// (see `store::semantic`): equal values mean the store did not change for users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemanticRevision {
    /// The newest revision of a key outside the ignored prefixes.
    pub revision: i64,
    /// Keys (etcd) or rows (kine) outside them: a delete lowers it.
    pub keys: u64,
}

impl Compression {
    /// How `sealing` compresses, as a manifest records it.
    pub fn of(sealing: &crate::pipeline::Sealing) -> Self {
        Compression {
            algorithm: "zstd".into(),
            level: sealing.compression.level,
        }
    }
}

impl Encryption {
    /// Whom `sealing` encrypts to, as a manifest records it; `None` when it does not.
    pub fn of(sealing: &crate::pipeline::Sealing) -> Option<Self> {
        sealing.recipients.as_ref().map(|r| Encryption {
            algorithm: "age".into(),
            recipients: r.texts().to_vec(),
        })
    }
}

/// The vCluster config (the merged Helm values) stored beside a backup,
/// compressed and encrypted like it: it can hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedConfig {
    /// The object's name, beside the backup.
    pub name: String,
    /// The YAML's size and SHA-256.
    pub size: u64,
    pub sha256: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    #[serde(default)]
    pub release: Release,
}

/// The Helm release the config belongs to: what `vcluster create --restore`
/// reads from an archive's release entry. Empty when the agent did not know.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Release {
    pub name: String,
    pub namespace: String,
    pub chart_name: String,
    pub chart_version: String,
}

/// The files under the PKI directory (CAs, service-account keys,
/// kubeconfigs) as one tar beside a backup, sealed like it: it holds private keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPki {
    /// The object's name, beside the backup.
    pub name: String,
    /// The tar's size and SHA-256.
    pub size: u64,
    pub sha256: String,
    pub stored_size: u64,
    pub stored_sha256: String,
    /// How many files the tar holds.
    pub files: u64,
    /// The earliest end of validity among the CA certificates, and among the
    /// others (certificates are public; the metric and alerts read these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_expires: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_expires: Option<DateTime<Utc>>,
}

/// The name of the config object beside backup `backup_name`:
/// `demo-…-sqlite.zst.age` → `demo-…-sqlite.config.yaml.zst.age`.
pub fn config_name(backup_name: &str) -> String {
    beside(backup_name, ".config.yaml")
}

/// The name of the PKI object beside backup `backup_name`:
/// `demo-…-sqlite.zst.age` → `demo-…-sqlite.pki.tar.zst.age`.
pub fn pki_name(backup_name: &str) -> String {
    beside(backup_name, PKI_MARK)
}

const PKI_MARK: &str = ".pki.tar";

/// The backup a PKI object's name belongs to (see [`pki_name`]).
pub fn backup_of_pki(name: &str) -> Option<String> {
    let (stem, sealed) = split_sealed(name);
    let backup = format!("{}{sealed}", stem.strip_suffix(PKI_MARK)?);
    parse_backup_name(&backup).map(|_| backup)
}

fn split_sealed(name: &str) -> (&str, &'static str) {
    match name.strip_suffix(".zst.age") {
        Some(stem) => (stem, ".zst.age"),
        None => (name.strip_suffix(".zst").unwrap_or(name), ".zst"),
    }
}

fn beside(backup_name: &str, what: &str) -> String {
    let (stem, sealed) = split_sealed(backup_name);
    format!("{stem}{what}{sealed}")
}

impl Manifest {
    /// What storage holds, as recorded: compared while the object streams back.
    pub fn stored_fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.stored_size,
            sha256: self.stored_sha256.clone(),
        }
    }

    /// The plaintext (the database or snapshot file), as recorded.
    pub fn plaintext_fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }

    pub fn manifest_key(&self) -> String {
        manifest_key(&self.name)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut json = serde_json::to_vec_pretty(self).context("encode manifest")?;
        json.push(b'\n');
        Ok(json)
    }

    pub fn from_json(data: &[u8], key: &str) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_slice(data).with_context(|| format!("read manifest {key}"))?;
        if manifest.format_version > FORMAT_VERSION {
            bail!(
                "read manifest {key}: format version {} is newer than this vcbackup understands ({FORMAT_VERSION}); upgrade vcbackup",
                manifest.format_version
            );
        }
        Ok(manifest)
    }
}

pub fn manifest_key(backup_name: &str) -> String {
    format!("{backup_name}{MANIFEST_SUFFIX}")
}

/// The object name of a backup: `<vcluster>-<UTC time>-<writer>-<kind>.zst[.age]`.
/// Fixed-width UTC timestamps make names sort by time. `writer` is random per
/// backup: two agents under one name (HA replicas) starting in the same
/// millisecond still pick different names, even on a server without
/// conditional writes.
pub fn backup_name(
    vcluster: &str,
    started: DateTime<Utc>,
    writer: u32,
    kind: SourceKind,
    encrypted: bool,
) -> String {
    let stamp = started.format(crate::records::STAMP);
    let suffix = if encrypted { ".zst.age" } else { ".zst" };
    format!("{vcluster}-{stamp}-{writer:08x}-{kind}{suffix}")
}

/// The start time and kind a backup's object name carries (see [`backup_name`]);
/// `None` for any other object.
pub fn parse_backup_name(name: &str) -> Option<(DateTime<Utc>, SourceKind)> {
    let stem = name
        .strip_suffix(".zst.age")
        .or_else(|| name.strip_suffix(".zst"))?;
    // The virtual cluster's name may hold `-`: read from the right.
    let (rest, kind) = stem.rsplit_once('-')?;
    let kind = match kind {
        "sqlite" => SourceKind::Sqlite,
        "etcd" => SourceKind::Etcd,
        _ => return None,
    };
    let (rest, writer) = rest.rsplit_once('-')?;
    if writer.len() != 8 || !writer.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (_, stamp) = rest.rsplit_once('-')?;
    Some((crate::records::parse_stamp(stamp)?, kind))
}

pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_sort_by_time_and_say_what_they_are() {
        let early = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let late = Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap();
        let a = backup_name("demo", early, 0xffff_ffff, SourceKind::Sqlite, true);
        let b = backup_name("demo", late, 0, SourceKind::Etcd, false);
        assert_eq!(a, "demo-20260102T030405.000Z-ffffffff-sqlite.zst.age");
        assert_eq!(b, "demo-20261102T030405.000Z-00000000-etcd.zst");
        assert!(a < b);
        assert_eq!(parse_backup_name(&a), Some((early, SourceKind::Sqlite)));
        assert_eq!(parse_backup_name(&b), Some((late, SourceKind::Etcd)));
        assert_eq!(parse_backup_name(&config_name(&a)), None);
        assert_eq!(parse_backup_name(&format!("{a}.json")), None);
        let twin = backup_name("demo", early, 1, SourceKind::Sqlite, true);
        assert_ne!(a, twin, "two writers in one millisecond");
        assert_eq!(
            config_name(&a),
            "demo-20260102T030405.000Z-ffffffff-sqlite.config.yaml.zst.age"
        );
        assert_eq!(
            config_name(&b),
            "demo-20261102T030405.000Z-00000000-etcd.config.yaml.zst"
        );
        assert_eq!(
            pki_name(&a),
            "demo-20260102T030405.000Z-ffffffff-sqlite.pki.tar.zst.age"
        );
        assert_eq!(parse_backup_name(&pki_name(&a)), None);
        assert_eq!(backup_of_pki(&pki_name(&a)).as_deref(), Some(a.as_str()));
        assert_eq!(backup_of_pki(&pki_name(&b)).as_deref(), Some(b.as_str()));
        assert_eq!(backup_of_pki(&a), None);
        assert_eq!(backup_of_pki(&config_name(&a)), None);
    }

    #[test]
    fn manifests_without_a_config_still_read() {
        let old = r#"{"format_version":1,"name":"n","vcluster":"demo","kind":"sqlite",
            "started":"2026-01-02T03:04:05Z","finished":"2026-01-02T03:04:06Z","size":1,
            "sha256":"a","stored_size":1,"stored_sha256":"b",
            "compression":{"algorithm":"zstd","level":3},"encryption":null,"revision":5,
            "agent_version":"0.1.0"}"#;
        let manifest = Manifest::from_json(old.as_bytes(), "old").unwrap();
        assert_eq!(manifest.config, None);
        assert_eq!(manifest.pki, None);
        let json = String::from_utf8(manifest.to_json().unwrap()).unwrap();
        assert!(!json.contains("config"), "{json}");
        assert!(!json.contains("pki"), "{json}");
    }
}
