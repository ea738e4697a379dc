//! Where backups live. One narrow interface, [`Storage`], that every backend
//! implements; listing, retention and restore planning are functions over it
//! (see `catalog`), so backends never repeat them.

mod body;
#[cfg(test)]
mod conformance;
mod local;
mod s3;

use std::fmt;
use std::pin::Pin;

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::io::AsyncRead;

pub use body::{Body, IncompleteBody, body_channel};
pub use local::LocalStorage;
pub use s3::{S3Options, S3Storage};

/// A stored object being read back.
pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

/// One object under a virtual cluster's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name relative to the virtual cluster's prefix.
    pub key: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

/// The objects of one virtual cluster: `<destination>/<vcluster>/<key>`.
#[async_trait]
pub trait Storage: Send + Sync {
    /// Where objects go, for messages: `file:///backups/demo/`, `s3://bucket/prefix/demo/`.
    fn location(&self) -> String;

    /// Stores `body` under `key`. Readers see the key only once the whole body has
    /// arrived and is durable; a body that ends early leaves nothing behind.
    /// Never replaces an existing object: fails with [`ObjectExists`] instead.
    async fn put(&self, key: &str, body: Body) -> Result<()>;

    /// Reads an object back; fails with [`ObjectNotFound`] if it does not exist.
    async fn get(&self, key: &str) -> Result<ObjectReader>;

    /// Every complete object under the prefix, in no particular order.
    async fn list(&self) -> Result<Vec<ObjectInfo>>;

    /// Removes an object; removing one that is already gone is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Cleans up uploads a killed agent left unfinished (S3 multipart uploads,
    /// `.partial-*` files in a directory) that started before `cutoff`;
    /// returns how many.
    async fn abort_stale_uploads(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let _ = cutoff;
        Ok(0)
    }
}

/// The object asked for does not exist.
#[derive(Debug, thiserror::Error)]
#[error("no object {key} in {location}")]
pub struct ObjectNotFound {
    pub key: String,
    pub location: String,
}

impl ObjectNotFound {
    /// What [`Storage::get`] fails with when `storage` has no object `key`.
    fn error(storage: &dyn Storage, key: &str) -> anyhow::Error {
        ObjectNotFound {
            key: key.to_string(),
            location: storage.location(),
        }
        .into()
    }
}

/// Whether `key` can be one of our object names: one plain name, so that no
/// key reaches outside its directory or prefix, and not hidden, since
/// unfinished writes (`.partial-*` files) are.
fn is_object_name(key: &str) -> bool {
    !key.is_empty() && !key.contains('/') && !key.starts_with('.')
}

/// Refuses a key that [`is_object_name`] rejects.
fn check_key(key: &str) -> Result<()> {
    if !is_object_name(key) {
        bail!("invalid object name {key:?}");
    }
    Ok(())
}

/// Another writer already stored an object under this key; it was left as it is.
/// Writes never replace an object: two agents under one name cannot lose a backup.
#[derive(Debug, thiserror::Error)]
#[error("an object named {key} already exists in {location}; it was not overwritten")]
pub struct ObjectExists {
    pub key: String,
    pub location: String,
}

/// A parsed `--destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Local(std::path::PathBuf),
    S3(S3Options),
}

impl Destination {
    pub fn parse(text: &str) -> Result<Self> {
        // URL normalisation reads `file:relbk` as `/relbk`: a relative path
        // silently moved to the filesystem root. Only the absolute spellings pass.
        if text
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case("file:"))
            && !(text[5..].starts_with("///") || text[5..].starts_with("//localhost/"))
        {
            bail!(
                "invalid destination {text:?}: expected file:///absolute/dir (three slashes, an absolute path)"
            );
        }
        let url = url::Url::parse(text).with_context(|| {
            format!("invalid destination {text:?}: expected file:///DIR or s3://BUCKET/PREFIX")
        })?;
        match url.scheme() {
            "file" => {
                if url
                    .host_str()
                    .is_some_and(|h| !h.is_empty() && h != "localhost")
                {
                    bail!(
                        "invalid destination {text:?}: a file URL has no host; write file:///absolute/dir"
                    );
                }
                if url.query().is_some() {
                    bail!("invalid destination {text:?}: file URLs take no options");
                }
                let path = url.to_file_path().map_err(|()| {
                    anyhow::anyhow!("invalid destination {text:?}: not an absolute directory path")
                })?;
                Ok(Destination::Local(path))
            }
            "s3" => Ok(Destination::S3(S3Options::parse(text, &url)?)),
            other => bail!(
                "invalid destination {text:?}: unsupported scheme {other:?}; use file:///DIR or s3://BUCKET/PREFIX"
            ),
        }
    }

    /// Opens the storage of one virtual cluster under this destination.
    pub async fn open(&self, vcluster: &str) -> Result<Box<dyn Storage>> {
        match self {
            Destination::Local(root) => Ok(Box::new(LocalStorage::new(root.join(vcluster)))),
            Destination::S3(options) => Ok(Box::new(S3Storage::open(options, vcluster).await?)),
        }
    }

    /// Every virtual cluster with a folder under this destination, with its
    /// storage, sorted by name: one delimiter LIST on S3 (the storages share
    /// one client), one directory read for a directory.
    pub async fn open_all(&self) -> Result<Vec<(String, Box<dyn Storage>)>> {
        match self {
            Destination::Local(root) => {
                let mut names = Vec::new();
                let mut entries = tokio::fs::read_dir(root)
                    .await
                    .with_context(|| format!("list {}", root.display()))?;
                while let Some(entry) = entries
                    .next_entry()
                    .await
                    .with_context(|| format!("list {}", root.display()))?
                {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let is_dir = entry.file_type().await.is_ok_and(|t| t.is_dir());
                    if is_dir && !name.starts_with('.') {
                        names.push(name);
                    }
                }
                names.sort();
                Ok(names
                    .into_iter()
                    .map(|name| {
                        let storage: Box<dyn Storage> =
                            Box::new(LocalStorage::new(root.join(&name)));
                        (name, storage)
                    })
                    .collect())
            }
            Destination::S3(options) => Ok(S3Storage::open_all(options)
                .await?
                .into_iter()
                .map(|(name, storage)| (name, Box::new(storage) as Box<dyn Storage>))
                .collect()),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Local(path) => write!(f, "file://{}", path.display()),
            Destination::S3(options) => write!(f, "{options}"),
        }
    }
}

/// Stores a small in-memory object (a manifest).
pub async fn put_bytes(storage: &dyn Storage, key: &str, data: Vec<u8>) -> Result<()> {
    storage.put(key, Body::from_bytes(data)).await
}

/// Reads a small object (a manifest) whole, refusing anything over `limit` bytes.
pub async fn get_bytes(storage: &dyn Storage, key: &str, limit: u64) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let reader = storage.get(key).await?;
    let mut data = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut data)
        .await
        .with_context(|| format!("read {key} from {}", storage.location()))?;
    if data.len() as u64 > limit {
        bail!(
            "read {key} from {}: larger than {limit} bytes",
            storage.location()
        );
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_file_destinations() {
        assert_eq!(
            Destination::parse("file:///var/backups").unwrap(),
            Destination::Local("/var/backups".into())
        );
        for bad in [
            "/var/backups",
            "file://host/x",
            "ftp://x/y",
            "file:///x?a=b",
            "file:relbk",
            "file:/relbk",
            "file://relative/dir",
            "file:relative/dir",
            "FILE:relbk",
        ] {
            let err = Destination::parse(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
