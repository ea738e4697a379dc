//! etcd snapshots are bbolt files. Two readers share this module's page
//! parsing: [`RevisionScanner`] reads the store revision from a snapshot as it
//! streams past (backup), and [`BoltFile`] walks one bucket of a snapshot on
//! disk in key order (the key/value view, `export`).

mod file;
mod scanner;

pub use file::{BoltFile, ValueAt};
pub use scanner::RevisionScanner;

const META_MAGIC: u32 = 0xED0C_DAED;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
/// Offset of the checksum in the meta struct; bbolt hashes the bytes before it.
const META_CHECKSUMMED: usize = 56;

const KEY_BUCKET: &[u8] = b"key";
const META_BUCKET: &[u8] = b"meta";
const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
const PROBES: [&[u8]; 3] = [KEY_BUCKET, META_BUCKET, FINISHED_COMPACT];

#[derive(Debug, Clone, Copy)]
struct Meta {
    root: u64,
    txid: u64,
    page_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Bucket {
    Root(u64),
    Inline(Box<Leaf>),
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Leaf {
    /// Main revision of the last key, when it is shaped like an etcd revision.
    last_rev: Option<u64>,
    /// `finishedCompactRev`, when this page holds it.
    compacted: Option<u64>,
    key_bucket: Option<Bucket>,
    meta_bucket: Option<Bucket>,
}

#[derive(Debug, Clone)]
enum Node {
    /// The last child, and the child to follow for each of `PROBES`.
    Branch {
        last: u64,
        probes: [u64; 3],
    },
    Leaf(Leaf),
}

/// Whether a file's first bytes are a bbolt file's: its first page is a meta
/// page, the magic after the 16-byte page header.
pub fn is_bolt(head: &[u8]) -> bool {
    head.len() >= PAGE_HEADER + 4 && head[PAGE_HEADER..PAGE_HEADER + 4] == META_MAGIC.to_le_bytes()
}

fn u16_le(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_le(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

fn u64_le(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?))
}

fn u64_be(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.get(..8)?.try_into().ok()?))
}

fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn parse_meta(page: &[u8]) -> Option<Meta> {
    let meta = page.get(PAGE_HEADER..PAGE_HEADER + META_CHECKSUMMED + 8)?;
    if u32_le(meta, 0)? != META_MAGIC
        || fnv1a64(&meta[..META_CHECKSUMMED]) != u64_le(meta, META_CHECKSUMMED)?
    {
        return None;
    }
    Some(Meta {
        page_size: u64::from(u32_le(meta, 8)?),
        root: u64_le(meta, 16)?,
        txid: u64_le(meta, 48)?,
    })
}

/// The main revision of an etcd `key` bucket key: 8 bytes BE, `_`, 8 bytes BE, optional `t`.
fn revision_of(key: &[u8]) -> Option<u64> {
    if (key.len() == 17 || key.len() == 18) && key[8] == b'_' {
        u64_be(key)
    } else {
        None
    }
}

fn count(page: &[u8]) -> usize {
    usize::from(u16_le(page, 10).unwrap_or(0))
}

/// The elements of a branch page: each child's first key (when it lies
/// inside the page) and page id. Stops at the first element cut off.
fn branch_elements(page: &[u8]) -> impl Iterator<Item = (Option<&[u8]>, u64)> {
    (0..count(page)).map_while(move |i| {
        let at = PAGE_HEADER + i * ELEMENT;
        let (pos, ksize, child) = (
            u32_le(page, at)?,
            u32_le(page, at + 4)?,
            u64_le(page, at + 8)?,
        );
        let start = at + pos as usize;
        Some((page.get(start..start + ksize as usize), child))
    })
}

/// One element of a leaf page.
struct LeafElement<'a> {
    index: usize,
    flags: u32,
    /// `None` when it would lie outside the page (a corrupt or cut-off page).
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    /// Where the value starts, from the start of the page.
    value_at: usize,
}

/// The elements of a leaf page. Stops at the first element header cut off.
fn leaf_elements(page: &[u8]) -> impl Iterator<Item = LeafElement<'_>> {
    (0..count(page)).map_while(move |index| {
        let at = PAGE_HEADER + index * ELEMENT;
        let (flags, pos, ksize, vsize) = (
            u32_le(page, at)?,
            u32_le(page, at + 4)?,
            u32_le(page, at + 8)?,
            u32_le(page, at + 12)?,
        );
        let key_at = at + pos as usize;
        let value_at = key_at + ksize as usize;
        Some(LeafElement {
            index,
            flags,
            key: page.get(key_at..value_at),
            value: page.get(value_at..value_at + vsize as usize),
            value_at,
        })
    })
}

fn parse_branch(page: &[u8]) -> Option<Node> {
    let mut probes = [None; 3];
    let mut first = None;
    let mut last = None;
    for (key, child) in branch_elements(page) {
        first.get_or_insert(child);
        last = Some(child);
        let Some(key) = key else {
            continue;
        };
        // bbolt follows the last element whose key is not above the one sought.
        for (probe, sought) in probes.iter_mut().zip(PROBES) {
            if key <= sought {
                *probe = Some(child);
            }
        }
    }
    let first = first?;
    Some(Node::Branch {
        last: last?,
        probes: probes.map(|p| p.unwrap_or(first)),
    })
}

/// Summarises a leaf page (or an inline bucket's page). Buckets are looked for
/// only at the top: etcd never nests them.
fn parse_leaf(page: &[u8], top: bool) -> Leaf {
    let mut leaf = Leaf::default();
    let n = count(page);
    for element in leaf_elements(page) {
        let Some(key) = element.key else {
            continue;
        };
        let value = element.value;
        if element.flags & BUCKET_LEAF != 0 {
            if top && (key == KEY_BUCKET || key == META_BUCKET) {
                let bucket = value.and_then(parse_bucket);
                if key == KEY_BUCKET {
                    leaf.key_bucket = bucket;
                } else {
                    leaf.meta_bucket = bucket;
                }
            }
            continue;
        }
        if key == FINISHED_COMPACT {
            leaf.compacted = value.and_then(u64_be);
        }
        if element.index + 1 == n {
            leaf.last_rev = revision_of(key);
        }
    }
    leaf
}

fn parse_bucket(value: &[u8]) -> Option<Bucket> {
    match u64_le(value, 0)? {
        0 => Some(Bucket::Inline(Box::new(parse_leaf(
            value.get(16..)?,
            false,
        )))),
        root => Some(Bucket::Root(root)),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::scanner::{NO_REV, PAYLOAD, Page, Pages};
    use super::*;

    #[test]
    fn revision_keys_are_read_as_etcd_writes_them() {
        let mut key = 42u64.to_be_bytes().to_vec();
        key.push(b'_');
        key.extend(7u64.to_be_bytes());
        assert_eq!(revision_of(&key), Some(42));
        key.push(b't');
        assert_eq!(revision_of(&key), Some(42));
        assert_eq!(revision_of(b"/registry/pods"), None);
    }

    #[test]
    fn garbage_is_not_a_snapshot() {
        let mut scanner = RevisionScanner::new();
        scanner.feed(&[0x5a; 10_000]);
        assert!(scanner.finish().is_err());
        assert!(RevisionScanner::new().finish().is_err());
    }

    #[test]
    fn fnv_matches_the_reference() {
        // FNV-1a 64 of "a", from the reference test vectors.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    const PAGE: usize = 4096;

    fn page(pgid: u64, flags: u16, count: usize) -> Vec<u8> {
        let mut page = vec![0; PAGE];
        page[..8].copy_from_slice(&pgid.to_le_bytes());
        page[8..10].copy_from_slice(&flags.to_le_bytes());
        page[10..12].copy_from_slice(&(count as u16).to_le_bytes());
        page
    }

    fn meta(pgid: u64, root: u64, txid: u64) -> Vec<u8> {
        let mut page = page(pgid, META_PAGE, 0);
        let meta = &mut page[PAGE_HEADER..];
        meta[..4].copy_from_slice(&META_MAGIC.to_le_bytes());
        meta[4..8].copy_from_slice(&2u32.to_le_bytes());
        meta[8..12].copy_from_slice(&(PAGE as u32).to_le_bytes());
        meta[16..24].copy_from_slice(&root.to_le_bytes());
        meta[48..56].copy_from_slice(&txid.to_le_bytes());
        let checksum = fnv1a64(&meta[..META_CHECKSUMMED]);
        meta[56..64].copy_from_slice(&checksum.to_le_bytes());
        page
    }

    /// A leaf page body (elements then data) for `(flags, key, value)` items.
    fn leaf_body(items: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut body = vec![0; PAGE_HEADER + items.len() * ELEMENT];
        body[8..10].copy_from_slice(&LEAF_PAGE.to_le_bytes());
        body[10..12].copy_from_slice(&(items.len() as u16).to_le_bytes());
        for (i, (flags, key, value)) in items.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = (body.len() - at) as u32;
            body[at..at + 4].copy_from_slice(&flags.to_le_bytes());
            body[at + 4..at + 8].copy_from_slice(&pos.to_le_bytes());
            body[at + 8..at + 12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            body[at + 12..at + 16].copy_from_slice(&(value.len() as u32).to_le_bytes());
            body.extend_from_slice(key);
            body.extend_from_slice(value);
        }
        body
    }

    fn leaf(pgid: u64, items: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut page = page(pgid, LEAF_PAGE, items.len());
        let body = leaf_body(items);
        page[PAGE_HEADER..body.len()].copy_from_slice(&body[PAGE_HEADER..]);
        page
    }

    fn branch(pgid: u64, children: &[(&[u8], u64)]) -> Vec<u8> {
        let mut page = page(pgid, BRANCH_PAGE, children.len());
        let mut data = PAGE_HEADER + children.len() * ELEMENT;
        for (i, (key, child)) in children.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            page[at..at + 4].copy_from_slice(&((data - at) as u32).to_le_bytes());
            page[at + 4..at + 8].copy_from_slice(&(key.len() as u32).to_le_bytes());
            page[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
            page[data..data + key.len()].copy_from_slice(key);
            data += key.len();
        }
        page
    }

    fn rev_key(rev: u64) -> Vec<u8> {
        let mut key = rev.to_be_bytes().to_vec();
        key.push(b'_');
        key.extend(0u64.to_be_bytes());
        key
    }

    /// A bucket value: its header, then the inline page when `root` is 0.
    fn bucket(root: u64, inline: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut value = root.to_le_bytes().to_vec();
        value.extend(0u64.to_le_bytes());
        if root == 0 {
            value.extend(leaf_body(inline));
        }
        value
    }

    /// Meta pages 0 and 1, the root leaf at 2 (a free page with a stale
    /// header at 3), the `key` bucket's branch at 5 over leaves 4 and 6, and
    /// an inline `meta` bucket holding `compacted`.
    fn snapshot(rev: u64, compacted: u64) -> Vec<u8> {
        let low = rev_key(1);
        let high = rev_key(rev);
        let meta_bucket = bucket(
            0,
            &[
                (0, FINISHED_COMPACT, &compacted.to_be_bytes()),
                (0, b"z", b""),
            ],
        );
        let mut stale = leaf(3, &[]);
        stale[12..16].copy_from_slice(&1000u32.to_le_bytes());
        [
            meta(0, 2, 7),
            meta(1, 9, 6),
            leaf(
                2,
                &[
                    (BUCKET_LEAF, KEY_BUCKET, &bucket(5, &[])),
                    (BUCKET_LEAF, META_BUCKET, &meta_bucket),
                ],
            ),
            stale,
            leaf(4, &[(0, &low, b"v")]),
            branch(5, &[(&low, 4), (&high, 6)]),
            leaf(6, &[(0, &high, b"v")]),
        ]
        .concat()
    }

    fn revision(snapshot: &[u8]) -> Result<i64, String> {
        let mut scanner = RevisionScanner::new();
        for chunk in snapshot.chunks(1000) {
            scanner.feed(chunk);
        }
        scanner.finish()
    }

    #[test]
    fn revisions_near_the_compact_limits_survive() {
        for rev in [2, (1 << 62) - 2, (1 << 62) - 1, 1 << 62, i64::MAX as u64] {
            assert_eq!(revision(&snapshot(rev, 0)), Ok(rev as i64), "{rev}");
        }
        assert_eq!(revision(&snapshot(2, 9)), Ok(9));
        assert_eq!(
            revision(&snapshot(u64::MAX, 0)),
            Err(format!("revision {} out of range", u64::MAX))
        );
    }

    #[test]
    fn pages_read_back_as_summarised() {
        let branch = |last, probes| Node::Branch { last, probes };
        let leaf = |last_rev, compacted| {
            Node::Leaf(Leaf {
                last_rev,
                compacted,
                ..Leaf::default()
            })
        };
        let nodes = [
            None,
            Some(branch(0, [0; 3])),
            Some(branch(PAYLOAD, [PAYLOAD; 3])),
            Some(branch(PAYLOAD + 1, [PAYLOAD + 1; 3])),
            Some(branch(u64::MAX, [u64::MAX; 3])),
            Some(branch(3, [1, 2, 3])),
            Some(leaf(None, None)),
            Some(leaf(Some(0), None)),
            Some(leaf(Some(NO_REV - 1), None)),
            Some(leaf(Some(NO_REV), None)),
            Some(leaf(Some(u64::MAX), None)),
            Some(leaf(Some(5), Some(4))),
            Some(Node::Leaf(Leaf {
                key_bucket: Some(Bucket::Root(9)),
                ..Leaf::default()
            })),
        ];
        let mut pages = Pages::default();
        for node in &nodes {
            pages.push(node.clone());
        }
        // Only the entries a word cannot hold take map room.
        assert_eq!(pages.rich.len(), 7);
        for (pgid, node) in nodes.iter().enumerate() {
            let expected = node.as_ref().map(|node| match node {
                Node::Branch { last, probes } => Page::Branch {
                    last: *last,
                    probes: *probes,
                },
                Node::Leaf(leaf) => Page::Leaf(Cow::Borrowed(leaf)),
            });
            assert_eq!(pages.get(pgid as u64), expected, "{pgid}");
        }
        assert!(pages.get(nodes.len() as u64).is_none());
        assert!(pages.get(u64::MAX).is_none());
    }

    fn bolt_file(bytes: &[u8]) -> BoltFile {
        use std::io::Write;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        BoltFile::open(file).unwrap()
    }

    #[test]
    fn walks_a_bucket_in_key_order_with_each_value_where_it_lies() {
        let bolt = bolt_file(&snapshot(9, 4));
        let mut keys = Vec::new();
        bolt.for_each_in_bucket(KEY_BUCKET, |key, value, at| {
            assert_eq!(bolt.read_at(at).unwrap(), value);
            keys.push(key.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(keys, [rev_key(1), rev_key(9)]);
        // An inline bucket, inside its parent's value.
        let mut items = Vec::new();
        bolt.for_each_in_bucket(META_BUCKET, |key, value, at| {
            assert_eq!(bolt.read_at(at).unwrap(), value);
            items.push((key.to_vec(), value.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            items,
            [
                (FINISHED_COMPACT.to_vec(), 4u64.to_be_bytes().to_vec()),
                (b"z".to_vec(), Vec::new())
            ]
        );
        let err = bolt.for_each_in_bucket(b"lease", |_, _, _| Ok(()));
        assert!(err.unwrap_err().contains("no \"lease\" bucket"));
    }

    #[test]
    fn a_tree_that_loops_or_points_outside_the_file_is_refused() {
        let mut looped = snapshot(9, 0);
        looped[5 * PAGE..6 * PAGE].copy_from_slice(&branch(5, &[(&rev_key(1), 5)]));
        let err = bolt_file(&looped).for_each_in_bucket(KEY_BUCKET, |_, _, _| Ok(()));
        assert!(err.unwrap_err().contains("reached twice"));
        let mut outside = snapshot(9, 0);
        outside[5 * PAGE..6 * PAGE].copy_from_slice(&branch(5, &[(&rev_key(1), 4000)]));
        let err = bolt_file(&outside).for_each_in_bucket(KEY_BUCKET, |_, _, _| Ok(()));
        assert!(err.unwrap_err().contains("outside the file"));
        let file = tempfile::tempfile().unwrap();
        assert!(BoltFile::open(file).is_err());
    }
}
