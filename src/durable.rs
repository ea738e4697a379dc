//! Making a new name durable. A file written, synced and then renamed or
//! linked into place can still vanish in a crash until its directory entry is
//! synced too; every place that publishes a file ends with [`sync_parent`].

use std::path::Path;

use anyhow::{Context, Result};

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
