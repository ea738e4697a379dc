//! etcd's snapshot digest: etcd streams its bbolt file and then the SHA-256
//! of everything before, which `etcdutl snapshot restore` checks.

use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const DIGEST_LEN: usize = 32;

/// Checks etcd's trailing SHA-256, which `etcdutl snapshot restore` insists on.
/// No revision bump: etcd restores at the snapshot's own revision.
pub fn check_restored_snapshot(path: &Path, what: &str) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open restored {what}"))?;
    verify_snapshot_digest(std::io::BufReader::new(file))
        .with_context(|| format!("check restored {what}"))?;
    Ok(())
}

/// Verifies etcd's trailing SHA-256 while the snapshot streams, holding back
/// only the last 32 bytes seen (which are the digest once the stream ends).
pub struct DigestCheck {
    hasher: Sha256,
    tail: Vec<u8>,
    size: u64,
}

impl Default for DigestCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl DigestCheck {
    pub fn new() -> Self {
        DigestCheck {
            hasher: Sha256::new(),
            tail: Vec::with_capacity(2 * DIGEST_LEN),
            size: 0,
        }
    }

    /// Takes the next bytes of the stream; `database` gets the bytes known not
    /// to be the digest, in order.
    pub fn update(&mut self, data: &[u8], mut database: impl FnMut(&[u8])) {
        if data.len() >= DIGEST_LEN {
            let (body, tail) = data.split_at(data.len() - DIGEST_LEN);
            let held = std::mem::take(&mut self.tail);
            for part in [held.as_slice(), body] {
                self.hasher.update(part);
                database(part);
                self.size += part.len() as u64;
            }
            self.tail = held;
            self.tail.clear();
            self.tail.extend_from_slice(tail);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > DIGEST_LEN {
                let excess = self.tail.len() - DIGEST_LEN;
                self.hasher.update(&self.tail[..excess]);
                database(&self.tail[..excess]);
                self.size += excess as u64;
                self.tail.drain(..excess);
            }
        }
    }

    /// Checks the digest; returns the size of the database before it.
    pub fn finish(self) -> Result<u64> {
        if self.tail.len() < DIGEST_LEN {
            bail!(
                "the snapshot stream ended after {} bytes, before etcd's SHA-256",
                self.size + self.tail.len() as u64
            );
        }
        let actual = self.hasher.finalize();
        if actual.as_slice() != self.tail.as_slice() {
            bail!(
                "the snapshot's SHA-256 ({}) does not match the digest etcd sent ({}): the snapshot is corrupt; nothing is kept",
                hex::encode(actual),
                hex::encode(&self.tail)
            );
        }
        Ok(self.size)
    }
}

/// Checks etcd's trailing SHA-256 of a whole snapshot file.
pub fn verify_snapshot_digest(mut input: impl std::io::Read) -> Result<u64> {
    let mut check = DigestCheck::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("read the snapshot"),
        };
        check.update(&buf[..n], |_| {});
    }
    check.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_of(db: &[u8]) -> Vec<u8> {
        let mut file = db.to_vec();
        file.extend_from_slice(&Sha256::digest(db));
        file
    }

    fn check_in_pieces(file: &[u8], piece: usize) -> (Result<u64>, Vec<u8>) {
        let mut check = DigestCheck::new();
        let mut seen = Vec::new();
        for chunk in file.chunks(piece) {
            check.update(chunk, |db| seen.extend_from_slice(db));
        }
        (check.finish(), seen)
    }

    #[test]
    fn a_good_digest_passes_whatever_the_message_sizes() {
        let db: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let file = snapshot_of(&db);
        for piece in [1, 5, 31, 32, 33, 64, 4096, 32 * 1024, file.len()] {
            let (result, seen) = check_in_pieces(&file, piece);
            assert_eq!(result.unwrap(), db.len() as u64, "piece {piece}");
            assert_eq!(seen, db, "piece {piece}");
        }
    }

    #[test]
    fn a_tampered_snapshot_fails() {
        let db = vec![7u8; 70_000];
        let mut file = snapshot_of(&db);
        file[1234] ^= 1;
        let err = check_in_pieces(&file, 32 * 1024).0.unwrap_err().to_string();
        assert!(err.contains("does not match the digest etcd sent"), "{err}");

        let mut file = snapshot_of(&db);
        let last = file.len() - 1;
        file[last] ^= 1;
        assert!(verify_snapshot_digest(file.as_slice()).is_err());
    }

    #[test]
    fn a_stream_without_digest_fails() {
        let err = check_in_pieces(&[1u8; 20], 7).0.unwrap_err().to_string();
        assert!(err.contains("before etcd's SHA-256"), "{err}");
        // 32 bytes of something that is not the SHA-256 of nothing.
        assert!(verify_snapshot_digest(&[0u8; 32][..]).is_err());
        assert_eq!(verify_snapshot_digest(&snapshot_of(b"")[..]).unwrap(), 0);
    }
}
