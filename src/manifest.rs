//! The manifest: the contract between backup and restore. It lies beside
//! each backup as `<backup>.json` and is written only after the backup itself,
//! so a backup with a manifest is always complete.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::pipeline::Fingerprint;

pub use crate::object::SourceKind;

pub const FORMAT_VERSION: u32 = 1;
/// A manifest is a few hundred bytes; anything far larger is not one of ours.
pub const MANIFEST_MAX_BYTES: u64 = 1 << 20;

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
    /// The plaintext is the database or snapshot file.
    #[serde(flatten)]
    pub sealed: SealedObject,
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
    pub agent_version: String,
}

/// What both manifests record of the object they describe (a backup, an
/// increment), flattened into each so the JSON stays as it always was: both
/// ends' size and SHA-256, and how it was sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedObject {
    /// The plaintext's size and SHA-256.
    pub size: u64,
    pub sha256: String,
    /// What storage holds: compressed and, usually, encrypted.
    pub stored_size: u64,
    pub stored_sha256: String,
    pub compression: Compression,
    pub encryption: Option<Encryption>,
}

impl SealedObject {
    /// What sealing produced, as a manifest records it.
    pub fn of(
        sealing: &crate::pipeline::Sealing,
        plaintext: &Fingerprint,
        stored: &Fingerprint,
    ) -> Self {
        SealedObject {
            size: plaintext.size,
            sha256: plaintext.sha256.clone(),
            stored_size: stored.size,
            stored_sha256: stored.sha256.clone(),
            compression: Compression::of(sealing),
            encryption: Encryption::of(sealing),
        }
    }

    /// What storage holds, as recorded: compared while the object streams back.
    pub fn stored_fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.stored_size,
            sha256: self.stored_sha256.clone(),
        }
    }

    /// The plaintext, as recorded.
    pub fn plaintext_fingerprint(&self) -> Fingerprint {
        Fingerprint {
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }

    pub fn is_encrypted(&self) -> bool {
        self.encryption.is_some()
    }
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

impl Manifest {
    pub fn manifest_key(&self) -> String {
        crate::object::manifest_key(&self.name)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        to_json(self, "manifest")
    }

    pub fn from_json(data: &[u8], key: &str) -> Result<Self> {
        from_json(data, key, "manifest", FORMAT_VERSION, |m: &Manifest| {
            m.format_version
        })
    }
}

/// A manifest's JSON, as both kinds are written: pretty, one final newline.
pub fn to_json(manifest: &impl Serialize, what: &str) -> Result<Vec<u8>> {
    let mut json = serde_json::to_vec_pretty(manifest).with_context(|| format!("encode {what}"))?;
    json.push(b'\n');
    Ok(json)
}

/// Reads a manifest of either kind, refusing a format newer than `understood`.
pub fn from_json<T: serde::de::DeserializeOwned>(
    data: &[u8],
    key: &str,
    what: &str,
    understood: u32,
    version: impl Fn(&T) -> u32,
) -> Result<T> {
    let manifest: T = serde_json::from_slice(data).with_context(|| format!("read {what} {key}"))?;
    if version(&manifest) > understood {
        bail!(
            "read {what} {key}: format version {} is newer than this vcbackup understands ({understood}); upgrade vcbackup",
            version(&manifest)
        );
    }
    Ok(manifest)
}

pub fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_without_a_config_still_read() {
        let old = r#"{"format_version":1,"name":"n","vcluster":"demo","kind":"sqlite",
            "started":"2026-01-02T03:04:05Z","finished":"2026-01-02T03:04:06Z","size":1,
            "sha256":"a","stored_size":1,"stored_sha256":"b",
            "compression":{"algorithm":"zstd","level":3},"encryption":null,"revision":5,
            "agent_version":"0.1.0"}"#;
        let manifest = Manifest::from_json(old.as_bytes(), "old").unwrap();
        assert_eq!(manifest.config, None);
        let json = String::from_utf8(manifest.to_json().unwrap()).unwrap();
        assert!(!json.contains("config"), "{json}");
    }

    /// The flattened `SealedObject` keeps every field where it always was.
    #[test]
    fn a_manifest_writes_its_fields_in_the_order_it_always_did() {
        let json = r#"{
  "format_version": 1,
  "name": "demo-20260102T030405.000Z-0000abcd-sqlite.zst.age",
  "vcluster": "demo",
  "kind": "sqlite",
  "started": "2026-01-02T03:04:05Z",
  "finished": "2026-01-02T03:04:06Z",
  "size": 4096,
  "sha256": "aa",
  "stored_size": 512,
  "stored_sha256": "bb",
  "compression": {
    "algorithm": "zstd",
    "level": 3
  },
  "encryption": {
    "algorithm": "age",
    "recipients": [
      "age1x"
    ]
  },
  "revision": 5,
  "agent_version": "0.1.0"
}
"#;
        let manifest = Manifest::from_json(json.as_bytes(), "golden").unwrap();
        assert_eq!(manifest.sealed.stored_fingerprint().size, 512);
        assert!(manifest.sealed.is_encrypted());
        assert_eq!(
            String::from_utf8(manifest.to_json().unwrap()).unwrap(),
            json
        );
    }
}
