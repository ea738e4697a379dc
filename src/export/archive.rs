//! The archive itself: gzip around tar, the release entry first, then every
//! key in key order, named by the key exactly, its body the raw value, as
//! vCluster's `pkg/snapshot` writes and reads it.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::manifest::Manifest;
use crate::store::Pair;

/// gzip level: 6 (gzip's default) is about twice as slow as 1 on Kubernetes
/// objects for a few percent smaller archives.
const GZIP_LEVEL: u32 = 1;

/// The entry `vcluster create --restore` reads its values and chart version from.
pub const RELEASE_ENTRY: &[u8] = b"/vcluster/snapshot/release";
/// vCluster's own bookkeeping keys: never exported as keys.
const SNAPSHOT_PREFIX: &[u8] = b"/vcluster/snapshot/";

/// The release entry's JSON, as vCluster's Go struct encodes it: `values` is
/// bytes in Go, so base64 in JSON.
pub fn release_json(manifest: &Manifest, yaml: &[u8]) -> Result<Vec<u8>> {
    let release = manifest
        .config
        .as_ref()
        .map(|c| c.release.clone())
        .unwrap_or_default();
    let name = if release.name.is_empty() {
        manifest.vcluster.clone()
    } else {
        release.name
    };
    let chart_name = if release.chart_name.is_empty() {
        "vcluster".to_string()
    } else {
        release.chart_name
    };
    if release.chart_version.is_empty() {
        tracing::warn!(backup = %manifest.name, "the backup does not record the chart version: `vcluster create --restore` uses its default chart");
    }
    let json = serde_json::json!({
        "releaseName": name,
        "releaseNamespace": release.namespace,
        "chartName": chart_name,
        "chartVersion": release.chart_version,
        "values": base64::engine::general_purpose::STANDARD.encode(yaml),
    });
    serde_json::to_vec(&json).context("encode the release entry")
}

/// gzip(tar): the release entry, then every pair but vCluster's own
/// `/vcluster/snapshot/` keys. Returns the number of keys written.
pub fn write_archive(
    out: impl Write,
    release: Option<&[u8]>,
    pairs: impl Iterator<Item = Result<Pair>>,
    mtime: u64,
) -> Result<u64> {
    let gzip = flate2::write::GzEncoder::new(out, flate2::Compression::new(GZIP_LEVEL));
    let mut tar = tar::Builder::new(gzip);
    if let Some(release) = release {
        append(&mut tar, RELEASE_ENTRY, release, mtime)?;
    }
    let mut keys = 0;
    for pair in pairs {
        let pair = pair?;
        // A store restored by vCluster up to v0.36 holds the release entry as a
        // key; it must not come twice, or after the keys.
        if pair.key.starts_with(SNAPSHOT_PREFIX) {
            continue;
        }
        append(&mut tar, &pair.key, &pair.value, mtime)?;
        keys += 1;
    }
    let gzip = tar.into_inner().context("finish the archive")?;
    let mut out = gzip.finish().context("finish the archive")?;
    out.flush().context("write the archive")?;
    Ok(keys)
}

/// One regular file, mode 0666, named by `name` exactly. The tar crate's
/// `set_path` refuses absolute names, so the name goes into the header bytes;
/// a name over 100 bytes gets a GNU long-name entry first, as GNU tar writes it.
fn append<W: Write>(tar: &mut tar::Builder<W>, name: &[u8], data: &[u8], mtime: u64) -> Result<()> {
    if name.is_empty() || name.contains(&0) {
        bail!(
            "key {:?} cannot be a tar entry name (empty or holding a NUL byte)",
            String::from_utf8_lossy(name)
        );
    }
    const NAME_FIELD: usize = 100;
    let shown = || String::from_utf8_lossy(name).into_owned();
    if name.len() > NAME_FIELD {
        let mut long = header(b"././@LongLink", name.len() as u64 + 1, 0, 0o644)?;
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_cksum();
        tar.append(&long, name.chain(&[0u8][..]))
            .with_context(|| format!("write key {}", shown()))?;
    }
    let mut entry = header(
        &name[..name.len().min(NAME_FIELD)],
        data.len() as u64,
        mtime,
        0o666,
    )?;
    entry.set_entry_type(tar::EntryType::Regular);
    entry.set_cksum();
    tar.append(&entry, data)
        .with_context(|| format!("write key {}", shown()))
}

fn header(name: &[u8], size: u64, mtime: u64, mode: u32) -> Result<tar::Header> {
    let mut header = tar::Header::new_gnu();
    let gnu = header
        .as_gnu_mut()
        .context("a new GNU tar header is not in GNU format")?;
    gnu.name[..name.len()].copy_from_slice(name);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_exactly_long_ones_too() {
        let long = format!("/registry/{}", "x".repeat(300));
        let pairs = vec![
            Ok(Pair {
                key: b"/registry/a".to_vec(),
                value: b"one".to_vec(),
            }),
            Ok(Pair {
                key: b"/vcluster/snapshot/release".to_vec(),
                value: b"stale".to_vec(),
            }),
            Ok(Pair {
                key: long.clone().into_bytes(),
                value: vec![0, 1, 2],
            }),
        ];
        let mut archive = Vec::new();
        let keys = write_archive(&mut archive, Some(b"{}"), pairs.into_iter(), 7).unwrap();
        assert_eq!(keys, 2);
        let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        let entries: Vec<(Vec<u8>, Vec<u8>, u32)> = reader
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path_bytes().into_owned();
                let mode = e.header().mode().unwrap();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                (name, body, mode)
            })
            .collect();
        assert_eq!(
            entries,
            [
                (RELEASE_ENTRY.to_vec(), b"{}".to_vec(), 0o666),
                (b"/registry/a".to_vec(), b"one".to_vec(), 0o666),
                (long.into_bytes(), vec![0, 1, 2], 0o666),
            ]
        );
    }

    #[test]
    fn a_key_with_a_nul_byte_is_refused() {
        let pairs = vec![Ok(Pair {
            key: b"/a\0b".to_vec(),
            value: Vec::new(),
        })];
        let err = write_archive(Vec::new(), None, pairs.into_iter(), 0).unwrap_err();
        assert!(format!("{err:#}").contains("NUL"), "{err:#}");
    }
}
