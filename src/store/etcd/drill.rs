//! What a drill checks of an etcd backup: etcd's digest and the snapshot's
//! revision, read as the plaintext streams past (`StreamCheck`), then the
//! bbolt tree walked on the decrypted copy.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use super::bolt::{BoltFile, RevisionScanner};
use super::digest::DigestCheck;
use crate::store::Finding;

/// Reads etcd's digest and the snapshot's revision from the plaintext as it passes.
pub struct StreamCheck {
    digest: DigestCheck,
    scanner: RevisionScanner,
}

/// What the stream showed: the digest's verdict (the database's size) and the revision.
pub struct StreamVerdict {
    digest: Result<u64>,
    revision: Result<i64, String>,
}

impl StreamCheck {
    pub fn new() -> Self {
        StreamCheck {
            digest: DigestCheck::new(),
            scanner: RevisionScanner::new(),
        }
    }

    /// The next plaintext bytes, in order.
    pub fn update(&mut self, data: &[u8]) {
        let scanner = &mut self.scanner;
        self.digest.update(data, |db| scanner.feed(db));
    }

    pub fn finish(self) -> StreamVerdict {
        StreamVerdict {
            digest: self.digest.finish(),
            revision: self.scanner.finish(),
        }
    }
}

fn finding(name: &'static str, verdict: Result<String>) -> Finding {
    Finding {
        name,
        // One line, as every check's detail.
        verdict: verdict.map_err(|err| format!("{err:#}").replace('\n', " ")),
    }
}

/// Step 4: etcd's digest, the bbolt tree, the revision.
pub fn check(path: &Path, recorded: Option<i64>, stream: StreamVerdict) -> Vec<Finding> {
    let StreamVerdict { digest, revision } = stream;
    let mut checks = Vec::new();
    checks.push(finding(
        "etcd-digest",
        digest.map(|size| format!("etcd's SHA-256 of the {size}-byte database matches")),
    ));
    checks.push(finding("bbolt-walk", walk(path)));
    checks.push(match (revision, recorded) {
        (Ok(found), Some(recorded)) if found == recorded => Finding::pass(
            "etcd-revision",
            format!("revision {recorded} as in the manifest"),
        ),
        (Ok(found), Some(recorded)) => Finding::fail(
            "etcd-revision",
            format!("the snapshot is at revision {found}, the manifest records {recorded}"),
        ),
        (Ok(found), None) => Finding::pass(
            "etcd-revision",
            format!("revision {found}; the manifest records none"),
        ),
        (Err(why), _) => Finding::fail("etcd-revision", why),
    });
    checks
}

/// Walks every page of the `key` bucket: each entry must be keyed by a revision.
fn walk(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let bolt = BoltFile::open(file).map_err(|why| anyhow!("{why}"))?;
    let mut entries = 0u64;
    bolt.for_each_in_bucket(b"key", |key, _, _| {
        // `<main rev, 8 bytes BE>_<sub rev, 8 bytes BE>`, `t` appended for a delete.
        if !(key.len() == 17 || (key.len() == 18 && key[17] == b't')) || key[8] != b'_' {
            return Err(format!(
                "an entry of the key bucket is not keyed by a revision: {key:02x?}"
            ));
        }
        entries += 1;
        Ok(())
    })
    .map_err(|why| anyhow!("{why}"))?;
    if entries == 0 {
        bail!("the key bucket is empty");
    }
    Ok(format!("{entries} revisions in the key bucket"))
}
