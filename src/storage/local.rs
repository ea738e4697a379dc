//! A directory on a local or mounted filesystem: `file:///DIR`.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{
    Body, ObjectExists, ObjectInfo, ObjectNotFound, ObjectReader, Storage, check_key,
    is_object_name,
};

/// Objects being written carry this prefix until they are complete; listing skips them.
const PARTIAL_PREFIX: &str = ".partial-";
/// Backups hold the whole control plane's state, secrets included: owner only,
/// whatever the umask (which can only remove bits, never add them back).
const OBJECT_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

pub struct LocalStorage {
    dir: PathBuf,
}

impl LocalStorage {
    pub fn new(dir: PathBuf) -> Self {
        LocalStorage { dir }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.dir.join(key))
    }

    /// Chunks go to a writer thread of their own, at the backup's priority,
    /// written out as they come (`background::WriteBack`): no large flush
    /// for the control plane's fsyncs to queue behind at the end.
    async fn write_partial(&self, partial: &Path, mut body: Body) -> Result<()> {
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(OBJECT_MODE)
            .open(partial)
            .await
            .with_context(|| format!("create {}", partial.display()))?;
        // A umask such as 0277 would leave 0400; set the mode exactly.
        file.set_permissions(std::fs::Permissions::from_mode(OBJECT_MODE))
            .await
            .with_context(|| format!("set the mode of {}", partial.display()))?;
        let file = file.into_std().await;
        // `None` ends the object; a closed channel means this future was dropped.
        let (tx, rx) = tokio::sync::mpsc::channel::<Option<Bytes>>(2);
        let shown = partial.display().to_string();
        let writer = crate::background::spawn("vcbackup-write", move || write_chunks(file, rx))?;
        while let Some(chunk) = body.next().await? {
            if tx.send(Some(chunk)).await.is_err() {
                break; // The writer failed: its error says why.
            }
        }
        let _ = tx.send(None).await;
        writer
            .await
            .context("the writer thread panicked")?
            .with_context(|| format!("write {shown}"))
    }
}

fn write_chunks(
    file: std::fs::File,
    mut rx: tokio::sync::mpsc::Receiver<Option<Bytes>>,
) -> io::Result<()> {
    let mut write_back = crate::background::WriteBack::beside_the_control_plane();
    loop {
        match rx.blocking_recv() {
            // Window by window: a 1 MiB chunk at once would be 1 MiB for kine's fsync to queue behind.
            Some(Some(chunk)) => write_back.write_all(&file, &chunk)?,
            Some(None) => break,
            None => return Err(io::Error::other("stopped before the end")),
        }
    }
    file.sync_all()?;
    // Nobody reads a backup back soon: its pages would only push the control plane's out.
    write_back.synced(&file);
    Ok(())
}

#[async_trait]
impl Storage for LocalStorage {
    fn location(&self) -> String {
        format!("file://{}/", self.dir.display())
    }

    async fn put(&self, key: &str, body: Body) -> Result<()> {
        let target = self.path(key)?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(&dir)
                .with_context(|| format!("create directory {}", dir.display()))
        })
        .await??;
        // Unique per writer, also across hosts sharing one volume (same pid elsewhere).
        let partial = self.dir.join(format!(
            "{PARTIAL_PREFIX}{key}.{}.{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        // Removes the partial file even when this future is dropped mid-way (shutdown).
        let _cleanup = RemoveOnDrop(&partial);
        let written = self.write_partial(&partial, body).await;
        // A hard link publishes the complete file under its name and, unlike
        // rename, fails rather than replace an existing backup.
        let published = match written {
            Ok(()) => match tokio::fs::hard_link(&partial, &target).await {
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                    Err(anyhow::Error::new(ObjectExists {
                        key: key.to_string(),
                        location: self.location(),
                    }))
                }
                linked => linked.with_context(|| format!("publish {}", target.display())),
            },
            Err(err) => Err(err),
        };
        published?;
        sync_dir(&self.dir).await
    }

    async fn get(&self, key: &str) -> Result<ObjectReader> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Box::pin(file)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                Err(ObjectNotFound::error(self, key))
            }
            Err(err) => Err(err).with_context(|| format!("open {}", path.display())),
        }
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>> {
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            // No backup taken yet.
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err).with_context(|| format!("list {}", self.dir.display())),
        };
        let mut objects = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .with_context(|| format!("list {}", self.dir.display()))?
        {
            // Our own objects only: no unfinished `.partial-*` file.
            let Ok(key) = entry.file_name().into_string() else {
                continue;
            };
            if !is_object_name(&key) {
                continue;
            }
            let meta = match entry.metadata().await {
                Ok(meta) => meta,
                // Deleted since the directory was read (another agent's retention).
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => {
                    return Err(err).with_context(|| format!("stat {}", entry.path().display()));
                }
            };
            if !meta.is_file() {
                continue;
            }
            objects.push(ObjectInfo {
                key,
                size: meta.len(),
                modified: meta.modified().ok().map(Into::into),
            });
        }
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).with_context(|| format!("delete {}", path.display())),
        }
    }

    /// Removes `.partial-*` files last written before `cutoff`: what a killed
    /// agent (SIGKILL, OOM) left. A live writer touches its file with every
    /// chunk, so a partial file as old as the cutoff has no writer left.
    async fn abort_stale_uploads(&self, cutoff: DateTime<Utc>) -> Result<usize> {
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err).with_context(|| format!("list {}", self.dir.display())),
        };
        let mut removed = 0;
        while let Some(entry) = entries
            .next_entry()
            .await
            .with_context(|| format!("list {}", self.dir.display()))?
        {
            let is_partial = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(PARTIAL_PREFIX));
            if !is_partial {
                continue;
            }
            let path = entry.path();
            let modified = match entry.metadata().await.and_then(|m| m.modified()) {
                Ok(modified) => DateTime::<Utc>::from(modified),
                // Published or swept by another agent meanwhile.
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err).with_context(|| format!("stat {}", path.display())),
            };
            if modified >= cutoff {
                continue;
            }
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "removed a partial backup left by a killed agent");
                    removed += 1;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("remove {}", path.display())),
            }
        }
        Ok(removed)
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Makes a rename or link in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::durable::sync_dir(&dir)).await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::conformance::Backend;
    use std::time::{Duration, SystemTime};

    struct Local {
        storage: LocalStorage,
        _root: tempfile::TempDir,
    }

    async fn local() -> Local {
        let root = tempfile::tempdir().unwrap();
        // A directory not made yet, as before the first backup.
        let storage = LocalStorage::new(root.path().join("demo"));
        Local {
            storage,
            _root: root,
        }
    }

    #[async_trait]
    impl Backend for Local {
        const SCHEME: &'static str = "file://";

        fn storage(&self) -> &dyn Storage {
            &self.storage
        }

        /// Every hidden file: objects are never hidden, unfinished writes are.
        async fn leftovers(&self) -> Vec<String> {
            let Ok(entries) = std::fs::read_dir(&self.storage.dir) else {
                return Vec::new();
            };
            let mut names: Vec<_> = entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect();
            names.sort();
            names
        }

        async fn leave_unfinished(&self, key: &str, age: Duration) -> String {
            std::fs::create_dir_all(&self.storage.dir).unwrap();
            let name = format!("{PARTIAL_PREFIX}{key}.1.0000abcd");
            let file = std::fs::File::create(self.storage.dir.join(&name)).unwrap();
            file.set_modified(SystemTime::now() - age).unwrap();
            name
        }
    }

    mod conformance {
        crate::storage::conformance::storage_conformance!(super::local);
    }

    /// A listing reads the directory, then each file's size and time: another
    /// agent's retention deletes some in between, and the listing goes on.
    /// (An S3 listing is one answer per page: nothing to race there.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn listing_while_another_agent_deletes_succeeds() {
        const OBJECTS: usize = 300;
        let backend = local().await;
        let storage = &backend.storage;
        std::fs::create_dir_all(&storage.dir).unwrap();
        let keys: Vec<String> = (0..OBJECTS).map(|n| format!("o{n:03}")).collect();
        for key in &keys {
            std::fs::write(storage.dir.join(key), b"x").unwrap();
        }
        let other = LocalStorage::new(storage.dir.clone());
        let deleting = tokio::spawn({
            let keys = keys.clone();
            async move {
                for key in &keys {
                    other.delete(key).await.unwrap();
                }
            }
        });
        let mut listings = 0;
        loop {
            let seen = storage.list().await.unwrap_or_else(|e| panic!("{e:#}"));
            listings += 1;
            assert!(seen.iter().all(|o| keys.contains(&o.key)), "{seen:?}");
            if seen.is_empty() {
                break;
            }
        }
        deleting.await.unwrap();
        assert!(
            listings > 1,
            "every deletion was over before the first listing"
        );
    }
}
