//! A backup as key/value pairs: every live key of the store at the backup's
//! revision with its newest value, in key order. `export` writes them as
//! vCluster's archive; later features (incremental backups, "skip unchanged")
//! are meant to read backups through this view too.
//!
//! Both stores need random access, so the view reads a decrypted backup from a
//! file (the caller's private scratch copy). It streams: pairs come in pages
//! bounded by count and bytes, so memory stays flat whatever the store's size.

use anyhow::Result;

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
pub trait Pages: Send {
    /// The next pairs after `after` (from the first key when `None`), in key
    /// order; empty once there are none.
    fn next_page(&mut self, after: Option<&[u8]>) -> Result<Vec<Pair>>;
}

/// The pairs of one backup, in key order. Yields an error (then stops) if the
/// backup turns out to be damaged part-way.
pub struct KeyValues {
    pages: Box<dyn Pages>,
    page: std::vec::IntoIter<Pair>,
    last: Option<Vec<u8>>,
    done: bool,
}

impl KeyValues {
    /// The pairs `pages` yields (see `open::key_values`).
    pub fn new(pages: Box<dyn Pages>) -> Self {
        KeyValues {
            pages,
            page: Vec::new().into_iter(),
            last: None,
            done: false,
        }
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

/// Whether a page is full: by count, or by the value bytes it holds.
pub fn page_full(pairs: usize, bytes: usize) -> bool {
    pairs >= PAGE_PAIRS || bytes >= PAGE_BYTES
}
