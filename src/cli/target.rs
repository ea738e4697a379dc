//! Where backups of one virtual cluster live: `--destination` and `--name`.

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::storage::{Destination, Storage};

/// Where backups live.
#[derive(Debug, Args)]
pub struct StorageArgs {
    /// Where backups go: `file:///DIR` or `s3://BUCKET/PREFIX`. Backups of one virtual cluster live
    /// under `<destination>/<name>/`. S3 options go in the query, e.g.
    /// `s3://b/p?region=eu-west-1&server-side-encryption=aws:kms&kms-key-id=alias/k`: `region`,
    /// `endpoint` and `force-path-style=true` (MinIO, Ceph), `server-side-encryption` (AES256 or
    /// aws:kms), `kms-key-id`, `profile`, `checksum=when-required` (servers that reject newer
    /// checksum headers), `part-size` (8MiB) and `concurrency` (2 parts at once). Credentials come
    /// from the AWS default chain (environment, profile, IRSA, EKS Pod Identity, instance metadata);
    /// the standard AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL_S3 and AWS_MAX_ATTEMPTS also apply.
    #[arg(long, env = "VCBACKUP_DESTINATION", value_name = "URL")]
    pub destination: String,

    /// The virtual cluster's name, used in object names and as the folder under the destination.
    /// [default: $VCLUSTER_NAME, else this pod's name without its StatefulSet ordinal, e.g. `demo`
    /// in pod `demo-0`]
    #[arg(long, env = "VCBACKUP_NAME")]
    pub name: Option<String>,
}

/// Where backups of one virtual cluster live, checked.
pub struct Target {
    pub destination: Destination,
    pub vcluster: String,
}

impl StorageArgs {
    /// Checks the destination and name, then opens that virtual cluster's storage.
    pub async fn open(&self) -> Result<(Target, Box<dyn Storage>)> {
        let target = self.resolve()?;
        let storage = target.destination.open(&target.vcluster).await?;
        Ok((target, storage))
    }

    pub fn resolve(&self) -> Result<Target> {
        let destination = Destination::parse(&self.destination)?;
        let vcluster = match &self.name {
            Some(name) => name.clone(),
            None => default_vcluster_name()?,
        };
        check_vcluster_name(&vcluster)?;
        Ok(Target {
            destination,
            vcluster,
        })
    }
}

/// `VCLUSTER_NAME` (the release name, which the helm-values files set), else the
/// hostname: in a vCluster pod the StatefulSet pod `<release>-<ordinal>`.
fn default_vcluster_name() -> Result<String> {
    if let Some(name) = std::env::var("VCLUSTER_NAME")
        .ok()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
    {
        return Ok(name);
    }
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .context("no --name given and the hostname is unknown: set --name or VCBACKUP_NAME to the virtual cluster's name")?;
    Ok(match hostname.rsplit_once('-') {
        Some((release, ordinal))
            if !release.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()) =>
        {
            release.to_string()
        }
        _ => hostname,
    })
}

fn check_vcluster_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if !valid {
        bail!(
            "invalid name {name:?}: expected the virtual cluster's name (lowercase letters, digits, '-' and '.')"
        );
    }
    Ok(())
}
