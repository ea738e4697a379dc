//! Walking one bucket of a bbolt file on disk in key order.

use super::*;

/// A bbolt file on disk, read in place to walk one bucket in key order: the
/// key/value view of an etcd backup (`store::pairs`). Unlike the scanner above,
/// this needs random access, so it reads a file rather than a stream. Memory:
/// one page per tree level (a page with its overflow is at most one value of
/// a few MiB) and one bit per page to refuse a tree that loops.
pub struct BoltFile {
    file: std::fs::File,
    page_size: u64,
    /// Pages the file holds.
    pages: u64,
    root: u64,
}

/// Called with each leaf element's key, value, position and flags.
type ElementVisitor<'a> = dyn FnMut(&[u8], &[u8], ValueAt, u32) -> Result<(), String> + 'a;

/// Where a leaf value lies in the file, for reading it again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueAt {
    pub offset: u64,
    pub len: usize,
}

impl BoltFile {
    /// Opens a bbolt file at its newest valid meta page.
    pub fn open(file: std::fs::File) -> Result<Self, String> {
        let len = file
            .metadata()
            .map_err(|err| format!("read the file's size: {err}"))?
            .len();
        let mut first = vec![0; PAGE_HEADER + META_CHECKSUMMED + 8];
        read_exact_at(&file, &mut first, 0)?;
        // A torn first meta page still leaves the second; its offset is the page
        // size, which the first would have said, so try the usual sizes.
        let sizes = match parse_meta(&first) {
            Some(meta) => vec![meta.page_size],
            None => vec![4096, 8192, 16384, 65536],
        };
        let mut best: Option<Meta> = parse_meta(&first);
        for size in sizes {
            let mut second = vec![0; PAGE_HEADER + META_CHECKSUMMED + 8];
            if read_exact_at(&file, &mut second, size).is_ok()
                && let Some(meta) = parse_meta(&second).filter(|m| m.page_size == size)
                && best.is_none_or(|b| meta.txid > b.txid)
            {
                best = Some(meta);
            }
        }
        let meta = best.ok_or("no valid bbolt meta page: not an etcd snapshot")?;
        if meta.page_size < 512 {
            return Err(format!("page size {} is too small", meta.page_size));
        }
        Ok(BoltFile {
            file,
            page_size: meta.page_size,
            pages: len / meta.page_size,
            root: meta.root,
        })
    }

    /// Calls `visit(key, value, where)` for every entry of the top-level bucket
    /// `name`, in key order; nested buckets are skipped. A missing bucket is an error.
    pub fn for_each_in_bucket(
        &self,
        name: &[u8],
        mut visit: impl FnMut(&[u8], &[u8], ValueAt) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut seen = vec![0u64; usize::try_from(self.pages.div_ceil(64)).unwrap_or(0)];
        let mut bucket = None;
        self.walk(self.root, 0, &mut seen, &mut |key, value, at, flags| {
            if flags & BUCKET_LEAF != 0 && key == name {
                bucket = Some((value.to_vec(), at));
            }
            Ok(())
        })?;
        let (header, at) = bucket.ok_or_else(|| {
            format!(
                "no {:?} bucket: not an etcd snapshot",
                String::from_utf8_lossy(name)
            )
        })?;
        match u64_le(&header, 0).ok_or("a bucket header is cut off")? {
            // A small bucket lives inline in its parent's value, after the header.
            0 => {
                let page = header.get(16..).ok_or("an inline bucket is cut off")?;
                let base = at.offset + 16;
                visit_leaf(page, base, &mut |key, value, at, flags| {
                    if flags & BUCKET_LEAF == 0 {
                        visit(key, value, at)?;
                    }
                    Ok(())
                })
            }
            root => self.walk(root, 0, &mut seen, &mut |key, value, at, flags| {
                if flags & BUCKET_LEAF == 0 {
                    visit(key, value, at)?;
                }
                Ok(())
            }),
        }
    }

    /// Reads `len` bytes at `offset`, such as a value found by the walk.
    pub fn read_at(&self, at: ValueAt) -> Result<Vec<u8>, String> {
        let mut data = vec![0; at.len];
        read_exact_at(&self.file, &mut data, at.offset)?;
        Ok(data)
    }

    /// Depth-first, children in order: the leaves' elements come out in key order.
    fn walk(
        &self,
        pgid: u64,
        depth: usize,
        seen: &mut [u64],
        visit: &mut ElementVisitor<'_>,
    ) -> Result<(), String> {
        if depth > 64 {
            return Err("the tree is deeper than 64 levels".into());
        }
        if pgid < 2 || pgid >= self.pages {
            return Err(format!(
                "page {pgid} is outside the file ({} pages)",
                self.pages
            ));
        }
        let (word, bit) = ((pgid / 64) as usize, pgid % 64);
        if seen[word] & (1 << bit) != 0 {
            return Err(format!("page {pgid} is reached twice: the tree loops"));
        }
        seen[word] |= 1 << bit;
        let page = self.read_page(pgid)?;
        match u16_le(&page, 8).unwrap_or(0) {
            BRANCH_PAGE => {
                for (_, child) in branch_elements(&page) {
                    self.walk(child, depth + 1, seen, visit)?;
                }
                Ok(())
            }
            LEAF_PAGE => visit_leaf(&page, pgid * self.page_size, visit),
            flags => Err(format!(
                "page {pgid} has flags {flags:#x}, expected a branch or leaf page"
            )),
        }
    }

    /// A page with its overflow pages.
    fn read_page(&self, pgid: u64) -> Result<Vec<u8>, String> {
        let offset = pgid * self.page_size;
        let mut header = [0; PAGE_HEADER];
        read_exact_at(&self.file, &mut header, offset)?;
        let overflow = u64::from(u32_le(&header, 12).unwrap_or(0));
        if pgid + overflow >= self.pages {
            return Err(format!(
                "page {pgid} with {overflow} overflow pages runs past the end of the file"
            ));
        }
        let len = usize::try_from((overflow + 1) * self.page_size)
            .map_err(|_| format!("page {pgid} is too large"))?;
        let mut page = vec![0; len];
        read_exact_at(&self.file, &mut page, offset)?;
        Ok(page)
    }
}

/// Visits the elements of a leaf page that starts at file offset `base`.
fn visit_leaf(page: &[u8], base: u64, visit: &mut ElementVisitor<'_>) -> Result<(), String> {
    let n = count(page);
    let mut seen = 0;
    for element in leaf_elements(page) {
        seen += 1;
        let (Some(key), Some(value)) = (element.key, element.value) else {
            return Err(format!(
                "element {} of the leaf at offset {base} lies outside its page",
                element.index
            ));
        };
        let at = ValueAt {
            offset: base + element.value_at as u64,
            len: value.len(),
        };
        visit(key, value, at, element.flags)?;
    }
    if seen != n {
        return Err(format!("the leaf at offset {base} is cut off"));
    }
    Ok(())
}

fn read_exact_at(file: &std::fs::File, buf: &mut [u8], offset: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
        .map_err(|err| format!("read {} bytes at offset {offset}: {err}", buf.len()))
}
