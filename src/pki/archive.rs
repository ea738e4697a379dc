//! The PKI as one tar: what `decrypt` of the PKI object gives back, so an
//! operator can also unpack it with `tar -x`. Entries are in path order, each
//! directory before its files, owner-only (files 0600, directories 0700),
//! owned by root, dated 0: the same files make the same bytes.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Component;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use super::{PKI_MAX_BYTES, PKI_MAX_FILES, Pki};

pub(super) fn write(pki: &Pki, out: &mut dyn Write) -> Result<()> {
    let mut tar = tar::Builder::new(out);
    let mut dirs = BTreeSet::new();
    for (path, data) in &pki.files {
        for (at, _) in path.match_indices('/') {
            let dir = &path[..at];
            if dirs.insert(dir) {
                let mut header = header(tar::EntryType::Directory, 0o700, 0);
                tar.append_data(&mut header, format!("{dir}/"), std::io::empty())
                    .with_context(|| format!("write the PKI's directory {dir}"))?;
            }
        }
        let mut header = header(tar::EntryType::Regular, 0o600, data.len() as u64);
        tar.append_data(&mut header, path, data.as_slice())
            .with_context(|| format!("write the PKI's file {path}"))?;
    }
    tar.into_inner().context("finish the PKI's tar")?;
    Ok(())
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

/// The files of a PKI tar. Only plain relative paths, regular files and
/// directories are accepted: what is written back out can never land
/// outside the directory given.
pub(super) fn read(tar: &[u8]) -> Result<Pki> {
    let mut pki = Pki::default();
    let mut archive = tar::Archive::new(tar);
    let mut total = 0u64;
    for entry in archive.entries().context("not a tar")? {
        let mut entry = entry.context("not a tar (damaged entry)")?;
        let path = entry.path().context("an entry's name")?.into_owned();
        let text = path
            .to_str()
            .with_context(|| format!("entry {} is not UTF-8", path.display()))?
            .trim_end_matches('/')
            .to_string();
        let plain =
            !text.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            bail!("entry {text:?} is not a plain relative path");
        }
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular => {}
            other => bail!("entry {text} is a {other:?}, not a file or a directory"),
        }
        if pki.files.len() >= PKI_MAX_FILES {
            bail!("more than {PKI_MAX_FILES} files, not a PKI");
        }
        let mut data = Zeroizing::new(Vec::new());
        (&mut entry)
            .take(PKI_MAX_BYTES + 1)
            .read_to_end(&mut data)
            .with_context(|| format!("entry {text}: truncated"))?;
        total += data.len() as u64;
        if total > PKI_MAX_BYTES {
            bail!("more than {PKI_MAX_BYTES} bytes, not a PKI");
        }
        if pki.files.insert(text.clone(), data).is_some() {
            bail!("entry {text} comes twice");
        }
    }
    if pki.files.is_empty() {
        bail!("the tar holds no files");
    }
    Ok(pki)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(files: &[(&str, &[u8])]) -> Pki {
        Pki::of(files)
    }

    #[test]
    fn round_trips_owner_only_and_the_same_bytes_each_time() {
        let long = format!("{}/x.crt", "d".repeat(120));
        let original = pki(&[
            ("ca.crt", b"one"),
            ("etcd/ca.key", b"two"),
            ("etcd/peer.crt", b""),
            (long.as_str(), b"three"),
        ]);
        let mut a = Vec::new();
        write(&original, &mut a).unwrap();
        let mut b = Vec::new();
        write(&original, &mut b).unwrap();
        assert_eq!(a, b);
        let back = read(&a).unwrap();
        assert_eq!(format!("{back:?}"), format!("{original:?}"));
        for (path, data) in &original.files {
            assert_eq!(back.get(path), Some(data.as_slice()), "{path}");
        }
        let mut modes = Vec::new();
        for entry in tar::Archive::new(&a[..]).entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            modes.push((
                entry.path().unwrap().display().to_string(),
                header.mode().unwrap(),
            ));
        }
        assert!(modes.contains(&("etcd/".to_string(), 0o700)), "{modes:?}");
        assert!(modes.contains(&("ca.crt".to_string(), 0o600)), "{modes:?}");
    }

    #[test]
    fn paths_out_of_the_directory_and_links_are_refused() {
        for (name, kind) in [
            ("../evil", tar::EntryType::Regular),
            ("/etc/passwd", tar::EntryType::Regular),
            ("a/../../b", tar::EntryType::Regular),
            ("link", tar::EntryType::Symlink),
        ] {
            let mut bytes = Vec::new();
            {
                let mut tar = tar::Builder::new(&mut bytes);
                let mut h = header(kind, 0o600, 1);
                // set_path refuses `..`: the bytes go into the header by hand.
                h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                tar.append(&h, &b"x"[..]).unwrap();
                tar.finish().unwrap();
            }
            let err = read(&bytes).unwrap_err();
            assert!(format!("{err:#}").contains("entry"), "{name}: {err:#}");
        }
        assert!(read(b"not a tar at all").is_err());
        let mut empty = Vec::new();
        tar::Builder::new(&mut empty).finish().unwrap();
        assert!(format!("{:#}", read(&empty).unwrap_err()).contains("no files"));
    }
}
