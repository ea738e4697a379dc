//! The blocking half of a drill: the object is read once, as a stream,
//! through every check that needs its bytes. Only the checks that need random
//! access (SQLite's integrity check, the bbolt walk) read the plaintext from
//! a scratch file, in a private directory removed when the drill ends. What a
//! store's own checks are is the store's (`store::kine::drill`, `store::etcd::drill`).

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use super::Check;
use crate::manifest::{Manifest, SourceKind};
use crate::pipeline::{CheckStored, Fingerprint, Hashing, Identities, check_sealed_format, unseal};
use crate::store::Finding;
use crate::store::etcd::drill::{StreamCheck, StreamVerdict};
use anyhow::{Context, Result, anyhow, bail};

const BUFFER: usize = 256 * 1024;

/// Step 1 and the object checks, without a key: the stored bytes against the
/// manifest, and the object's format.
pub(super) fn keyless(reader: impl Read, manifest: &Manifest, checks: &mut Vec<Check>) {
    let what = manifest.name.as_str();
    let mut input = BufReader::with_capacity(
        BUFFER,
        CheckStored::new(reader, manifest.stored_fingerprint(), what),
    );
    let format = match input.fill_buf() {
        Ok(head) => check_sealed_format(head, manifest.encryption.is_some()),
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
            manifest.stored_size, manifest.stored_sha256
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

/// What the plaintext stream showed on its way to the scratch file.
struct Decoded {
    fingerprint: Fingerprint,
    /// What an etcd snapshot showed as it passed (its digest, its revision).
    etcd: Option<StreamVerdict>,
}

/// Steps 1 to 4: the object decrypted and decompressed in one pass, then the
/// database checked in `scratch`.
pub(super) fn full(
    reader: impl Read + Send,
    manifest: &Manifest,
    identities: Option<&Identities>,
    scratch: &Path,
    checks: &mut Vec<Check>,
) -> Result<()> {
    let what = manifest.name.as_str();
    let dir = tempfile::Builder::new()
        .prefix(".vcbackup-verify-")
        .tempdir_in(scratch)
        .with_context(|| {
            format!(
                "create a scratch directory in {} (--scratch-dir)",
                scratch.display()
            )
        })?;
    let path = dir.path().join("plaintext");
    let mut input = CheckStored::new(reader, manifest.stored_fingerprint(), what);
    let decoded = decode(&mut input, manifest, identities, &path);
    let stored = Check::from("stored", stored_verdict(input.finish(), manifest));
    let stored_ok = stored.ok;
    checks.push(stored);
    let decoded = match decoded {
        Ok(decoded) => {
            checks.push(Check::pass(
                "decrypt",
                "age authenticated every chunk, zstd's checksum matched",
            ));
            decoded
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
    let plaintext = &decoded.fingerprint;
    checks.push(
        if plaintext.size == manifest.size && plaintext.sha256 == manifest.sha256 {
            Check::pass(
                "plaintext",
                format!(
                    "{} bytes, SHA-256 {} as in the manifest",
                    plaintext.size, plaintext.sha256
                ),
            )
        } else {
            Check::fail(
                "plaintext",
                format!(
                    "{} bytes, SHA-256 {}; the manifest records {} bytes, SHA-256 {}",
                    plaintext.size, plaintext.sha256, manifest.size, manifest.sha256
                ),
            )
        },
    );
    match (manifest.kind, decoded.etcd) {
        (SourceKind::Sqlite, _) => checks.extend(
            crate::store::kine::drill::check(&path, manifest.revision)
                .into_iter()
                .map(Into::into),
        ),
        (SourceKind::Etcd, Some(stream)) => checks.extend(
            crate::store::etcd::drill::check(&path, manifest.revision, stream)
                .into_iter()
                .map(Into::into),
        ),
        (SourceKind::Etcd, None) => {}
    }
    // Removes the scratch file and whatever SQLite made beside it.
    dir.close()
        .with_context(|| format!("remove the scratch directory in {}", scratch.display()))
}

fn decode(
    input: &mut CheckStored<impl Read + Send>,
    manifest: &Manifest,
    identities: Option<&Identities>,
    path: &Path,
) -> Result<Decoded> {
    use std::os::unix::fs::OpenOptionsExt;
    let what = manifest.name.as_str();
    let mut plaintext = unseal(input, identities, what)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create scratch file {}", path.display()))?;
    let mut out = Hashing::new(BufWriter::with_capacity(BUFFER, file));
    let mut etcd = (manifest.kind == SourceKind::Etcd).then(StreamCheck::new);
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match plaintext.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => bail!("read {what}: truncated or corrupt ({err})"),
        };
        out.write_all(&buf[..n])
            .with_context(|| format!("write scratch file {}", path.display()))?;
        if let Some(stream) = etcd.as_mut() {
            stream.update(&buf[..n]);
        }
    }
    let (fingerprint, writer) = out.finish();
    writer
        .into_inner()
        .map_err(|err| err.into_error())
        .with_context(|| format!("write scratch file {}", path.display()))?;
    Ok(Decoded {
        fingerprint,
        etcd: etcd.map(StreamCheck::finish),
    })
}

impl From<Finding> for Check {
    fn from(finding: Finding) -> Self {
        match finding.verdict {
            Ok(detail) => Check::pass(finding.name, detail),
            Err(detail) => Check::fail(finding.name, detail),
        }
    }
}
