//! Making a new name durable. A file written, synced and then renamed or
//! linked into place can still vanish in a crash until its directory entry is
//! synced too; every place that publishes a file ends with [`sync_parent`],
//! and every verified file a command writes is put in place by [`install`].

use std::path::Path;

use anyhow::{Context, Result};
use tempfile::NamedTempFile;

/// Puts the finished temporary file `temp` (written beside `target`) in
/// place as `target`: synced, renamed (without replacing an existing file
/// unless `force`), and its directory synced. `what` names it in errors.
pub fn install(temp: NamedTempFile, target: &Path, force: bool, what: &str) -> Result<()> {
    temp.as_file()
        .sync_all()
        .with_context(|| format!("sync {}", temp.path().display()))?;
    let persisted = if force {
        temp.persist(target).map(drop)
    } else {
        temp.persist_noclobber(target).map(drop)
    };
    persisted
        .map_err(|err| err.error)
        .with_context(|| format!("move {what} to {}", target.display()))?;
    sync_parent(target)
}

/// Syncs the directory `dir`, so the names created or renamed in it persist.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync directory {}", dir.display()))
}

/// Syncs the directory holding `path` (the working directory for a bare name).
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => sync_dir(dir),
        None => sync_dir(Path::new(".")),
    }
}
