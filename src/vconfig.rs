//! The vCluster config saved with every backup. A virtual cluster whose host
//! cluster is gone can only be created again with its Helm values: the agent
//! reads the merged values vCluster mounts into the pod and stores them
//! beside each backup, sealed like it (the values can hold secrets), with the
//! release they belong to in the manifest. `export` turns them into the
//! archive's release entry, `restore --config-out` writes them back out.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, anyhow, bail};

use crate::manifest::{Manifest, Release, SavedConfig};
use crate::object::config_name;
use crate::pipeline::{Fingerprint, Hashing, Identities, Sealing, unseal};
use crate::storage::{self, Storage};

/// A saved config is a Helm values file; a Kubernetes secret holds at most 1 MiB.
pub const CONFIG_MAX_BYTES: u64 = 4 << 20;

/// The pod's namespace, as Kubernetes mounts it with the service account token.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Where the config is read from, and the release recorded with it.
pub struct ConfigSource {
    path: PathBuf,
    release: Release,
    /// A missing config is said once per start, not at every backup.
    warned_missing: AtomicBool,
    warned_chart: AtomicBool,
}

impl ConfigSource {
    pub fn new(
        path: PathBuf,
        vcluster: &str,
        namespace: Option<String>,
        chart_version: Option<String>,
    ) -> Self {
        let namespace = namespace
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string(NAMESPACE_FILE)
                    .ok()
                    .map(|n| n.trim().to_string())
            })
            .unwrap_or_default();
        ConfigSource {
            path,
            release: Release {
                name: vcluster.to_string(),
                namespace,
                chart_name: "vcluster".to_string(),
                chart_version: chart_version.unwrap_or_default(),
            },
            warned_missing: AtomicBool::new(false),
            warned_chart: AtomicBool::new(false),
        }
    }

    /// The config now, or `None` (with a warning) when it cannot be read: a
    /// backup without its config is still worth taking.
    pub fn read(&self) -> Option<Vec<u8>> {
        match read_limited(&self.path) {
            Ok(yaml) => {
                if self.release.chart_version.is_empty()
                    && !self.warned_chart.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(
                        "the chart version is unknown: set VCBACKUP_CHART_VERSION (--chart-version) so that `vcluster create --restore` of an export installs the same chart"
                    );
                }
                Some(yaml)
            }
            Err(err) => {
                let missing = err
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
                if !missing {
                    tracing::warn!("backing up without the vCluster config: {err:#}");
                } else if !self.warned_missing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        config = %self.path.display(),
                        "no vCluster config: backups are taken without it, so an export has no release entry; mount the pod volume vcluster-config at /var/lib/vcluster (or set VCBACKUP_VCLUSTER_CONFIG)"
                    );
                }
                None
            }
        }
    }

    /// Seals `yaml` like the backup and stores it beside backup `backup_name`.
    pub async fn store(
        &self,
        yaml: &[u8],
        sealing: &Sealing,
        storage: &dyn Storage,
        backup_name: &str,
    ) -> Result<SavedConfig> {
        let name = config_name(backup_name);
        let sealed = sealing.seal(Vec::new(), |out| {
            out.write_all(yaml).context("seal the vCluster config")
        })?;
        storage::put_bytes(storage, &name, sealed.out)
            .await
            .with_context(|| format!("store {name} in {}", storage.location()))?;
        Ok(SavedConfig {
            name,
            size: sealed.plaintext.size,
            sha256: sealed.plaintext.sha256,
            stored_size: sealed.stored.size,
            stored_sha256: sealed.stored.sha256,
            release: self.release.clone(),
        })
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut yaml = Vec::new();
    file.take(CONFIG_MAX_BYTES + 1)
        .read_to_end(&mut yaml)
        .with_context(|| format!("read {}", path.display()))?;
    if yaml.len() as u64 > CONFIG_MAX_BYTES {
        bail!(
            "read {}: larger than {CONFIG_MAX_BYTES} bytes, not a vCluster config",
            path.display()
        );
    }
    Ok(yaml)
}

/// Writes a config to `path`, owner-only (the values can hold secrets), never
/// replacing a file unless `force`.
pub fn write_config(path: &Path, yaml: &[u8], force: bool) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("replace {}", path.display())),
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            if path.exists() {
                format!(
                    "write {}: the file exists; pass --force to replace it",
                    path.display()
                )
            } else {
                format!("write {}", path.display())
            }
        })?;
    file.write_all(yaml)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))?;
    crate::durable::sync_parent(path)
}

/// The saved config of the backup `selector` picks, decrypted and checked,
/// and a selector pinned to that backup by name: `restore --config-out`
/// fetches it before the restore, so a backup without one fails first.
pub async fn fetch_saved(
    storage: &dyn crate::storage::Storage,
    manifest: &Manifest,
    identities: Option<&Identities>,
    out: &Path,
) -> Result<Vec<u8>> {
    let saved = manifest.config.as_ref().with_context(|| {
        format!(
            "--config-out {}: backup {} has no saved vCluster config (taken without /var/lib/vcluster/config.yaml, or by an older vcbackup)",
            out.display(),
            manifest.name
        )
    })?;
    open_stored(storage, manifest, saved, identities).await
}

/// The saved config `saved` of `manifest`, fetched from storage, decrypted and checked.
pub async fn open_stored(
    storage: &dyn Storage,
    manifest: &Manifest,
    saved: &SavedConfig,
    identities: Option<&Identities>,
) -> Result<Vec<u8>> {
    let sealed = storage::get_bytes(storage, &saved.name, CONFIG_MAX_BYTES).await?;
    open_config(&sealed, manifest, identities, &saved.name)
}

/// Decrypts a saved config and checks it against the manifest.
pub fn open_config(
    sealed: &[u8],
    manifest: &Manifest,
    identities: Option<&Identities>,
    what: &str,
) -> Result<Vec<u8>> {
    let saved = manifest
        .config
        .as_ref()
        .with_context(|| format!("backup {} has no saved vCluster config", manifest.name))?;
    if sealed.len() as u64 > CONFIG_MAX_BYTES {
        bail!("read {what}: larger than {CONFIG_MAX_BYTES} bytes, not a saved config");
    }
    let mut yaml = Hashing::new(Vec::new());
    let mut plaintext = unseal(sealed, identities, what)?;
    std::io::copy(&mut plaintext, &mut yaml)
        .map_err(|err| anyhow!("read {what}: truncated or corrupt ({err})"))?;
    let (fingerprint, yaml) = yaml.finish();
    let recorded = Fingerprint {
        size: saved.size,
        sha256: saved.sha256.clone(),
    };
    fingerprint.check_recorded(&recorded, what, "the config")?;
    Ok(yaml)
}
