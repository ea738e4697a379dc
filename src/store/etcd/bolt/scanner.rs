//! The store revision of an etcd snapshot, read from the snapshot itself as
//! it streams past.
//!
//! etcd's Snapshot RPC carries no revision, and asking `Status` before and
//! after only brackets it while writes continue. The snapshot is a bbolt file:
//! the revision is the largest key of its `key` bucket (keys are
//! `<main rev BE>_<sub rev BE>[t]`), or the finished compaction revision in
//! the `meta` bucket if that is larger, exactly as etcd computes it when it
//! opens a restored store.
//!
//! A bbolt tree points anywhere in the file, so every page-aligned block is
//! summarised (last key or child, and the few entries we look for) while it
//! passes, and the tree is walked from the meta page at the end. Every block is
//! treated as a possible page: free pages may hold stale headers whose
//! `overflow` would otherwise hide live pages. Memory: a window of at most
//! `WINDOW` bytes plus 8 bytes per page (2 MiB per GiB of etcd's 4 KiB
//! pages) and a handful of larger entries.

use std::borrow::Cow;
use std::collections::HashMap;

use super::*;

/// The most of one page looked at. etcd values are at most a few MiB, so the
/// keys of even a page holding two of them lie within it.
const WINDOW: usize = 8 << 20;
/// Bytes before the oldest page still needed are dropped in steps this large.
const DRAIN_STEP: usize = 1 << 20;

/// A page as the walk sees it.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Page<'a> {
    Branch { last: u64, probes: [u64; 3] },
    Leaf(Cow<'a, Leaf>),
}

/// Slot tags, in the top two bits. Page ids are below the file's length over
/// its page size (at least 512), so under 2^55, and etcd revisions are
/// counters far below 2^62: real payloads fit the low 62 bits. A value that
/// does not (only in a corrupt file) makes its page `RICH`, so it is kept
/// whole rather than misread.
const TAG: u64 = 0b11 << 62;
/// Not a tree page: meta, freelist, overflow, or unreadable.
const EMPTY: u64 = 0;
/// Payload: the last child, which every probe follows too.
const BRANCH: u64 = 0b01 << 62;
/// Payload: `last_rev`, or `NO_REV`; the leaf holds nothing else we look for.
const LEAF: u64 = 0b10 << 62;
/// Described in full in `Pages::rich`.
const RICH: u64 = 0b11 << 62;
pub(super) const PAYLOAD: u64 = !TAG;
pub(super) const NO_REV: u64 = PAYLOAD;

/// Page summaries, indexed by page id. Every block gets a one-word slot, as
/// almost all pages need one number; the few that need more (the root leaf,
/// the `meta` bucket's leaf, a branch whose probes leave its last child) are
/// kept whole in a map.
#[derive(Debug, Default)]
pub(super) struct Pages {
    slots: Vec<u64>,
    pub(super) rich: HashMap<u64, Node>,
}

impl Pages {
    /// Summarises the next block, whose page id is the number seen so far.
    pub(super) fn push(&mut self, node: Option<Node>) {
        let slot = match &node {
            None => EMPTY,
            Some(Node::Branch { last, probes })
                if *last <= PAYLOAD && probes.iter().all(|probe| probe == last) =>
            {
                BRANCH | last
            }
            Some(Node::Leaf(Leaf {
                last_rev,
                compacted: None,
                key_bucket: None,
                meta_bucket: None,
            })) => match *last_rev {
                None => LEAF | NO_REV,
                Some(rev) if rev < NO_REV => LEAF | rev,
                Some(_) => RICH,
            },
            Some(_) => RICH,
        };
        if let Some(node) = node.filter(|_| slot == RICH) {
            self.rich.insert(self.slots.len() as u64, node);
        }
        self.slots.push(slot);
    }

    pub(super) fn get(&self, pgid: u64) -> Option<Page<'_>> {
        let slot = *self.slots.get(usize::try_from(pgid).ok()?)?;
        let payload = slot & PAYLOAD;
        match slot & TAG {
            BRANCH => Some(Page::Branch {
                last: payload,
                probes: [payload; 3],
            }),
            LEAF => Some(Page::Leaf(Cow::Owned(Leaf {
                last_rev: (payload != NO_REV).then_some(payload),
                ..Leaf::default()
            }))),
            RICH => match self.rich.get(&pgid)? {
                Node::Branch { last, probes } => Some(Page::Branch {
                    last: *last,
                    probes: *probes,
                }),
                Node::Leaf(leaf) => Some(Page::Leaf(Cow::Borrowed(leaf))),
            },
            _ => None,
        }
    }
}

/// Fed the snapshot's bytes in order (without etcd's trailing digest).
pub struct RevisionScanner {
    window: Vec<u8>,
    /// Absolute offset of `window[0]`.
    window_start: u64,
    received: u64,
    /// Absolute offset of the next block to summarise.
    next: u64,
    page_size: u64,
    metas: Vec<Meta>,
    pages: Pages,
    broken: Option<String>,
}

impl Default for RevisionScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl RevisionScanner {
    pub fn new() -> Self {
        RevisionScanner {
            window: Vec::new(),
            window_start: 0,
            received: 0,
            next: 0,
            page_size: 0,
            metas: Vec::new(),
            pages: Pages::default(),
            broken: None,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        if self.broken.is_some() {
            return;
        }
        self.window.extend_from_slice(data);
        self.received += data.len() as u64;
        self.scan(false);
    }

    /// The revision a store restored from this snapshot starts at.
    pub fn finish(mut self) -> Result<i64, String> {
        if self.broken.is_none() {
            self.scan(true);
        }
        if let Some(problem) = self.broken {
            return Err(problem);
        }
        self.resolve()
    }

    fn scan(&mut self, at_end: bool) {
        if self.page_size == 0 {
            let need = (PAGE_HEADER + META_CHECKSUMMED + 8) as u64;
            if self.received < need {
                if at_end {
                    self.broken = Some(format!("only {} bytes", self.received));
                }
                return;
            }
            match parse_meta(&self.window) {
                Some(meta) if meta.page_size >= 512 => self.page_size = meta.page_size,
                _ => {
                    self.broken = Some("the first page is not a valid bbolt meta page".into());
                    self.window = Vec::new();
                    return;
                }
            }
        }
        while self.received >= self.next + PAGE_HEADER as u64 {
            let at = (self.next - self.window_start) as usize;
            let header = &self.window[at..at + PAGE_HEADER];
            let flags = u16_le(header, 8).unwrap_or(0);
            let overflow = u32_le(header, 12).unwrap_or(0) as u64;
            let need = match flags {
                BRANCH_PAGE | LEAF_PAGE => ((overflow + 1) * self.page_size).min(WINDOW as u64),
                META_PAGE => self.page_size,
                _ => PAGE_HEADER as u64,
            };
            let available = self.received - self.next;
            if available < need && !at_end {
                break;
            }
            let end = at + need.min(available) as usize;
            let page = &self.window[at..end];
            let node = match flags {
                BRANCH_PAGE => parse_branch(page),
                LEAF_PAGE => Some(Node::Leaf(parse_leaf(page, true))),
                META_PAGE => {
                    self.metas.extend(parse_meta(page));
                    None
                }
                _ => None,
            };
            // One slot per block, so the slot index is the page id.
            self.pages.push(node);
            self.next += self.page_size;
        }
        let dead = (self.next.min(self.received) - self.window_start) as usize;
        if dead >= DRAIN_STEP {
            self.window.drain(..dead);
            self.window_start += dead as u64;
        }
    }

    fn resolve(&self) -> Result<i64, String> {
        let meta = self
            .metas
            .iter()
            .filter(|m| m.page_size == self.page_size)
            .max_by_key(|m| m.txid)
            .ok_or("no valid meta page")?;
        let root = self.descend(meta.root, Some(0))?;
        let keys = root.key_bucket.as_ref().ok_or("no key bucket")?;
        let last_rev = match keys {
            Bucket::Inline(leaf) => leaf.last_rev,
            Bucket::Root(pgid) => self.descend(*pgid, None)?.last_rev,
        };
        let compacted = match &root.meta_bucket {
            None => None,
            Some(Bucket::Inline(leaf)) => leaf.compacted,
            Some(Bucket::Root(pgid)) => self.descend(*pgid, Some(2))?.compacted,
        };
        // An empty store is at revision 1, as etcd starts it.
        let revision = last_rev.unwrap_or(1).max(compacted.unwrap_or(0));
        i64::try_from(revision).map_err(|_| format!("revision {revision} out of range"))
    }

    /// Walks from `pgid` to a leaf: towards probe `probe`, or rightmost.
    fn descend(&self, mut pgid: u64, probe: Option<usize>) -> Result<Cow<'_, Leaf>, String> {
        for _ in 0..64 {
            match self.pages.get(pgid) {
                Some(Page::Leaf(leaf)) => return Ok(leaf),
                Some(Page::Branch { last, probes }) => {
                    pgid = probe.map_or(last, |p| probes[p]);
                }
                None => return Err(format!("page {pgid} is missing or unreadable")),
            }
        }
        Err("the tree is deeper than 64 levels".into())
    }
}
