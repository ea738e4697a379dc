//! The blocking half of a drill: the object is read once, as a stream,
//! through every check that needs its bytes, by the same decoding as a
//! restore (`plaintext`). Only the checks that need random access (SQLite's
//! integrity check, the bbolt walk) read the plaintext from a scratch file,
//! in a private directory removed when the drill ends. What a
//! store's own checks are is the store's (`store::kine::drill`, `store::etcd::drill`).

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::Check;
use crate::manifest::{Manifest, SourceKind};
use crate::pipeline::{CheckStored, Identities, check_sealed_format};
use crate::plaintext::{Decode, Place, Recorded};
use crate::store::Finding;
use crate::store::etcd::drill::StreamCheck;
use anyhow::{Context, Result, anyhow};

const BUFFER: usize = 256 * 1024;

/// Step 1 and the object checks, without a key: the stored bytes against the
/// manifest, and the object's format.
pub(super) fn keyless(reader: impl Read, manifest: &Manifest, checks: &mut Vec<Check>) {
    let what = manifest.name.as_str();
    let mut input = BufReader::with_capacity(
        BUFFER,
        CheckStored::new(reader, manifest.sealed.stored_fingerprint(), what),
    );
    let format = match input.fill_buf() {
        Ok(head) => check_sealed_format(head, manifest.sealed.is_encrypted()),
        Err(err) => Err(anyhow!("read the object's first bytes: {err}")),
    };
    // The verdict on the stored bytes comes from `finish`, whatever the drain said.
    let _ = io::copy(&mut input, &mut io::sink());
    checks.push(Check::from(
        "stored",
        stored_verdict(input.into_inner().finish(), manifest),
    ));
    checks.push(Check::from(
        "format",
        format.map(|found| format!("the object is {found}")),
    ));
}

fn stored_verdict(result: Result<()>, manifest: &Manifest) -> Result<String> {
    match result {
        Ok(()) => Ok(format!(
            "{} bytes, SHA-256 {} as in the manifest",
            manifest.sealed.stored_size, manifest.sealed.stored_sha256
        )),
        // The report names the backup already.
        Err(err) => {
            let message = format!("{err:#}");
            let prefix = format!("verify {}: ", manifest.name);
            Err(anyhow!(
                "{}",
                message.strip_prefix(&prefix).unwrap_or(&message)
            ))
        }
    }
}

/// Steps 1 to 4: the object decrypted and decompressed in one pass into a
/// private scratch directory (`plaintext`, each verdict on its own), then
/// the database checked there.
pub(super) fn full(
    reader: impl Read + Send,
    manifest: &Manifest,
    identities: Option<&Identities>,
    scratch: &Path,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix(".vcbackup-verify-")
        .tempdir_in(scratch)
        .with_context(|| {
            format!(
                "create a scratch directory in {} (--scratch-dir)",
                scratch.display()
            )
        })?;
    let recorded = Recorded::from(manifest);
    let decode = Decode {
        what: &manifest.name,
        recorded: Some(&recorded),
        identities,
        progress: false,
    };
    // An etcd snapshot's own digest and revision, seen as the plaintext passes.
    let mut etcd = (manifest.kind == SourceKind::Etcd).then(StreamCheck::new);
    let verdicts = decode.every_verdict(
        reader,
        Place::Scratch(dir.path().to_path_buf()),
        &mut |data| {
            if let Some(stream) = etcd.as_mut() {
                stream.update(data);
            }
        },
    );
    let stored = Check::from("stored", stored_verdict(verdicts.stored, manifest));
    let stored_ok = stored.ok;
    checks.push(stored);
    let plaintext = match verdicts.decoded {
        Ok(plaintext) => {
            checks.push(Check::pass(
                "decrypt",
                "age authenticated every chunk, zstd's checksum matched",
            ));
            plaintext
        }
        // Decoding damaged bytes fails as a consequence; `stored` says why.
        Err(_) if !stored_ok => {
            checks.push(Check::fail(
                "decrypt",
                "not decoded: the stored object is damaged (check stored)",
            ));
            return Ok(());
        }
        Err(err) => {
            checks.push(Check::fail("decrypt", format!("{err:#}")));
            return Ok(());
        }
    };
    let found = &plaintext.fingerprint;
    checks.push(
        if found.size == manifest.sealed.size && found.sha256 == manifest.sealed.sha256 {
            Check::pass(
                "plaintext",
                format!(
                    "{} bytes, SHA-256 {} as in the manifest",
                    found.size, found.sha256
                ),
            )
        } else {
            Check::fail(
                "plaintext",
                format!(
                    "{} bytes, SHA-256 {}; the manifest records {} bytes, SHA-256 {}",
                    found.size, found.sha256, manifest.sealed.size, manifest.sealed.sha256
                ),
            )
        },
    );
    let file = plaintext.into_file()?;
    match (manifest.kind, etcd) {
        (SourceKind::Sqlite, _) => checks.extend(
            crate::store::kine::drill::check(file.path(), manifest.revision)
                .into_iter()
                .map(Into::into),
        ),
        (SourceKind::Etcd, Some(stream)) => checks.extend(
            crate::store::etcd::drill::check(file.path(), manifest.revision, stream.finish())
                .into_iter()
                .map(Into::into),
        ),
        (SourceKind::Etcd, None) => {}
    }
    drop(file);
    // Removes the scratch file and whatever SQLite made beside it.
    dir.close()
        .with_context(|| format!("remove the scratch directory in {}", scratch.display()))
}

impl From<Finding> for Check {
    fn from(finding: Finding) -> Self {
        match finding.verdict {
            Ok(detail) => Check::pass(finding.name, detail),
            Err(detail) => Check::fail(finding.name, detail),
        }
    }
}
