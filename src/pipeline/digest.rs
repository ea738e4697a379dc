//! The plaintext's SHA-256, off the critical path: the manifest records it,
//! but it is not what protects the backup (the stored object's SHA-256, age's
//! authentication and zstd's content checksum are), so it should not slow it.

use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};

use super::Fingerprint;

/// Plaintext goes to zstd in blocks this large (SQLite hands us 4 KiB pages:
/// one zstd call per page cost more than the copy), and to the hasher too.
const BLOCK: usize = 256 << 10;
/// Blocks queued for the hasher: with the one it hashes and the one filling,
/// 1.5 MiB, enough to ride out its pauses.
const QUEUED: usize = 4;

/// Passes what is written to `inner` in blocks, and hashes the same blocks
/// on a thread of its own (which inherits the caller's CPU and I/O classes).
pub struct HashBehind<W: Write> {
    inner: W,
    block: Vec<u8>,
    size: u64,
    full: Option<mpsc::SyncSender<Vec<u8>>>,
    hashed: mpsc::Receiver<Vec<u8>>,
    hasher: Option<JoinHandle<Sha256>>,
}

impl<W: Write> HashBehind<W> {
    pub fn new(inner: W) -> Result<Self> {
        let (full, blocks) = mpsc::sync_channel::<Vec<u8>>(QUEUED);
        let (recycle, hashed) = mpsc::channel();
        let hasher = std::thread::Builder::new()
            .name("vcbackup-hash".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                for block in blocks {
                    sha.update(&block);
                    // Handed back for reuse: no allocation per block.
                    let _ = recycle.send(block);
                }
                sha
            })
            .context("start the hashing thread")?;
        Ok(HashBehind {
            inner,
            block: Vec::with_capacity(BLOCK),
            size: 0,
            full: Some(full),
            hashed,
            hasher: Some(hasher),
        })
    }

    /// Writes the last block and waits for the digest of it all.
    pub fn finish(mut self) -> Result<(Fingerprint, W)> {
        self.pass_block()?;
        drop(self.full.take());
        let sha = self
            .hasher
            .take()
            .context("hash the plaintext")?
            .join()
            .map_err(|_| anyhow!("hash the plaintext: the hashing thread panicked"))?;
        let fingerprint = Fingerprint {
            size: self.size,
            sha256: hex::encode(sha.finalize()),
        };
        Ok((fingerprint, self.inner))
    }

    fn pass_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        self.inner.write_all(&self.block)?;
        let next = self
            .hashed
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BLOCK));
        let block = std::mem::replace(&mut self.block, next);
        let sent = self.full.as_ref().map(|full| full.send(block));
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the hashing thread stopped"));
        }
        self.block.clear();
        Ok(())
    }
}

impl<W: Write> Write for HashBehind<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK - self.block.len());
        self.block.extend_from_slice(&data[..n]);
        self.size += n as u64;
        if self.block.len() == BLOCK {
            self.pass_block()?;
        }
        Ok(n)
    }

    /// Blocks go out when full; `finish` writes the last one.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_everything_through_and_hashes_it() {
        let data: Vec<u8> = (0..3 * BLOCK + 12345).map(|i| (i % 251) as u8).collect();
        let mut out = HashBehind::new(Vec::new()).unwrap();
        for piece in data.chunks(4096 + 7) {
            out.write_all(piece).unwrap();
        }
        let (fingerprint, passed) = out.finish().unwrap();
        assert_eq!(passed, data);
        assert_eq!(fingerprint.size, data.len() as u64);
        assert_eq!(fingerprint.sha256, hex::encode(Sha256::digest(&data)));
    }

    #[test]
    fn empty_input_has_the_empty_digest() {
        let (fingerprint, passed) = HashBehind::new(Vec::new()).unwrap().finish().unwrap();
        assert!(passed.is_empty());
        assert_eq!(fingerprint.sha256, hex::encode(Sha256::digest(b"")));
    }
}
