//! A backup as key/value pairs: every live key of the store at the backup's
//! revision with its newest value, in key order. `export` writes them as
//! vCluster's archive; later features (incremental backups, "skip unchanged")
//! are meant to read backups through this view too.
//!
//! Both stores need random access, so the view reads a decrypted backup from a
//! file (the caller's private scratch copy). It streams: pairs come in pages
//! bounded by count and bytes, so memory stays flat whatever the store's size.

mod etcd;
mod kine;

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::manifest::SourceKind;

/// Most pairs, and about the most value bytes, one page holds.
const PAGE_PAIRS: usize = 1024;
const PAGE_BYTES: usize = 8 << 20;

/// One key with its value at the backup's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A store read page by page, each page starting after the last key of the one before.
trait Pages: Send {
    /// The next pairs after `after` (from the first key when `None`), in key
    /// order; empty once there are none.
    fn next_page(&mut self, after: Option<&[u8]>) -> Result<Vec<Pair>>;
}

/// The pairs of one backup, in key order. Yields an error (then stops) if the
/// backup turns out to be damaged part-way.
pub struct KeyValues {
    kind: SourceKind,
    pages: Box<dyn Pages>,
    page: std::vec::IntoIter<Pair>,
    last: Option<Vec<u8>>,
    done: bool,
}

impl KeyValues {
    /// Opens the decrypted, decompressed backup at `path`: kine's SQLite
    /// database or an etcd snapshot, told apart by their first bytes. `scratch`
    /// is a private directory for working files (an etcd snapshot needs a
    /// sorted index of its keys). `path` must be a private copy: for kine an
    /// index on `name` is added if the database lacks one.
    pub fn open(path: &Path, scratch: &Path) -> Result<Self> {
        let kind = detect(path)?;
        let pages: Box<dyn Pages> = match kind {
            SourceKind::Sqlite => Box::new(kine::KinePages::open(path)?),
            SourceKind::Etcd => Box::new(etcd::EtcdPages::open(path, scratch)?),
        };
        Ok(KeyValues {
            kind,
            pages,
            page: Vec::new().into_iter(),
            last: None,
            done: false,
        })
    }

    pub fn kind(&self) -> SourceKind {
        self.kind
    }
}

impl Iterator for KeyValues {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(pair) = self.page.next() {
            return Some(Ok(pair));
        }
        if self.done {
            return None;
        }
        match self.pages.next_page(self.last.as_deref()) {
            Ok(page) if page.is_empty() => {
                self.done = true;
                None
            }
            Ok(page) => {
                self.last = page.last().map(|p| p.key.clone());
                self.page = page.into_iter();
                self.page.next().map(Ok)
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

/// Which store a decrypted backup came from, by its first bytes.
pub fn detect(path: &Path) -> Result<SourceKind> {
    let mut head = [0u8; 24];
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let n = read_up_to(&mut file, &mut head).with_context(|| format!("read {}", path.display()))?;
    if head[..n].starts_with(crate::source::kine::SQLITE_HEADER) {
        return Ok(SourceKind::Sqlite);
    }
    // bbolt's first page is a meta page: magic 0xED0CDAED after the 16-byte page header.
    if n >= 20 && head[16..20] == 0xED0C_DAEDu32.to_le_bytes() {
        return Ok(SourceKind::Etcd);
    }
    bail!(
        "{}: neither kine's SQLite database nor an etcd snapshot",
        path.display()
    )
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(read) => n += read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(n)
}

/// Whether a page is full: by count, or by the value bytes it holds.
fn page_full(pairs: usize, bytes: usize) -> bool {
    pairs >= PAGE_PAIRS || bytes >= PAGE_BYTES
}
