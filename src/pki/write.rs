//! `restore --pki-out DIR`: the PKI's files as vCluster lays them out, owner
//! only (files 0600, directories 0700). They are written into a private
//! directory beside DIR and renamed into place when all are synced, so DIR
//! never holds half a PKI; an existing DIR is replaced only with `--force`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::Pki;

/// Whether `dir` may receive a PKI: absent, an empty directory, or with
/// `force` a directory to replace. Checked before anything is fetched.
pub fn check_target(dir: &Path, force: bool) -> Result<()> {
    let shown = dir.display();
    match std::fs::symlink_metadata(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("--pki-out {shown}")),
        Ok(meta) if meta.is_dir() => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("--pki-out {shown}"))?;
            if !force && entries.next().is_some() {
                bail!(
                    "--pki-out {shown}: the directory is not empty; pass --force to replace it and everything in it"
                );
            }
            Ok(())
        }
        Ok(_) => bail!("--pki-out {shown}: not a directory; give a directory for the PKI's files"),
    }
}

/// Writes `pki` as the directory `dir` (see the module's description).
pub fn write_dir(pki: &Pki, dir: &Path, force: bool) -> Result<()> {
    check_target(dir, force)?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = dir
        .file_name()
        .with_context(|| format!("--pki-out {}: not a directory name", dir.display()))?
        .to_string_lossy()
        .into_owned();
    let staged = tempfile::Builder::new()
        .prefix(&format!(".{name}.vcbackup-"))
        .tempdir_in(parent)
        .with_context(|| format!("create a private directory in {}", parent.display()))?;
    std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {}", staged.path().display()))?;
    let mut dirs = vec![staged.path().to_path_buf()];
    for (path, data) in &pki.files {
        let target = staged.path().join(path);
        if let Some(sub) = target.parent().filter(|p| !dirs.iter().any(|d| d == p)) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(sub)
                .with_context(|| format!("create {}", sub.display()))?;
            dirs.push(sub.to_path_buf());
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .with_context(|| format!("create {}", target.display()))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("write {}", target.display()))?;
    }
    // Deepest first, so each directory's entries are durable before its parent's.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in &dirs {
        crate::durable::sync_dir(d)?;
    }
    install(staged, dir, parent, &name)
}

/// Renames the staged directory to `dir`; what was at `dir` is moved aside
/// first and removed once the new one is in place.
fn install(staged: tempfile::TempDir, dir: &Path, parent: &Path, name: &str) -> Result<()> {
    let shown = dir.display();
    let old = match std::fs::symlink_metadata(dir) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| format!("--pki-out {shown}")),
        Ok(_) => {
            let aside = tempfile::Builder::new()
                .prefix(&format!(".{name}.vcbackup-old-"))
                .tempdir_in(parent)
                .with_context(|| format!("create a directory in {}", parent.display()))?
                .keep();
            // `aside` is an empty directory: renaming a directory onto it replaces it.
            std::fs::rename(dir, &aside).with_context(|| format!("move the old {shown} aside"))?;
            Some(aside)
        }
    };
    if let Err(err) = std::fs::rename(staged.path(), dir) {
        if let Some(aside) = &old {
            let _ = std::fs::rename(aside, dir);
        }
        return Err(err).with_context(|| format!("move the PKI to {shown}"));
    }
    let _ = staged.keep();
    crate::durable::sync_dir(parent)?;
    if let Some(aside) = old {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("remove the old PKI, moved to {}", aside.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_owner_only_and_replaces_only_with_force() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pki");
        let mut pki = Pki::default();
        pki.files
            .insert("ca.crt".into(), Zeroizing::new(b"one".to_vec()));
        pki.files
            .insert("etcd/ca.key".into(), Zeroizing::new(b"two".to_vec()));
        write_dir(&pki, &dir, false).unwrap();
        assert_eq!(std::fs::read(dir.join("etcd/ca.key")).unwrap(), b"two");
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("etcd")), 0o700);
        assert_eq!(mode(&dir.join("ca.crt")), 0o600);
        let err = write_dir(&pki, &dir, false).unwrap_err();
        assert!(format!("{err}").contains("not empty"), "{err}");
        std::fs::write(dir.join("stale.crt"), b"old").unwrap();
        write_dir(&pki, &dir, true).unwrap();
        assert!(!dir.join("stale.crt").exists());
        let left: Vec<_> = std::fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "nothing but the PKI is left beside it");
        std::fs::write(root.path().join("file"), b"x").unwrap();
        assert!(check_target(&root.path().join("file"), true).is_err());
    }
}
