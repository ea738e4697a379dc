//! An etcd snapshot as key/value pairs. etcd keeps every version of every key
//! in its bbolt `key` bucket under `<main rev>_<sub rev>` (a `t` suffix marks
//! a delete), each value an `mvccpb.KeyValue`. The bucket is in revision
//! order, not key order, so one pass over it builds a sorted index of each
//! key's newest version (key → where its value lies in the snapshot) in a
//! scratch SQLite file; pages of pairs are then read back from it in key
//! order. Memory stays at SQLite's page cache and one page of pairs.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use rusqlite::{Connection, params};

use super::bolt::{BoltFile, ValueAt};
use crate::store::pairs::{Pages, Pair, page_full};

/// SQLite's page cache for the index, in KiB (negative: a size, not pages).
const INDEX_CACHE_KIB: i64 = 16 * 1024;

pub struct EtcdPages {
    bolt: BoltFile,
    index: Connection,
    path: String,
    /// Removes the index when the view is dropped.
    _scratch: tempfile::TempDir,
}

impl EtcdPages {
    pub fn open(path: &Path, scratch: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("open {shown}"))?;
        let bolt = BoltFile::open(file).map_err(|why| anyhow!("read {shown}: {why}"))?;
        let dir = tempfile::Builder::new()
            .prefix(".vcbackup-index-")
            .tempdir_in(scratch)
            .with_context(|| format!("create a working directory in {}", scratch.display()))?;
        let index = build_index(&bolt, &dir.path().join("keys.db"), &shown)?;
        Ok(EtcdPages {
            bolt,
            index,
            path: shown,
            _scratch: dir,
        })
    }
}

/// One pass over the `key` bucket: a later revision of a key replaces the
/// earlier one, a delete removes it.
fn build_index(bolt: &BoltFile, path: &Path, shown: &str) -> Result<Connection> {
    let mut index = Connection::open(path)
        .with_context(|| format!("create working index {}", path.display()))?;
    // A throwaway file: no journal, no syncs.
    index
        .execute_batch(&format!(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -{INDEX_CACHE_KIB};
             CREATE TABLE kv (key BLOB PRIMARY KEY, offset INTEGER NOT NULL, len INTEGER NOT NULL) WITHOUT ROWID;"
        ))
        .with_context(|| format!("create working index {}", path.display()))?;
    let tx = index.transaction()?;
    {
        let mut put =
            tx.prepare("INSERT OR REPLACE INTO kv (key, offset, len) VALUES (?1, ?2, ?3)")?;
        let mut delete = tx.prepare("DELETE FROM kv WHERE key = ?1")?;
        let mut failed: Option<anyhow::Error> = None;
        let walked = bolt.for_each_in_bucket(b"key", |revision, value, at| {
            let stored = (|| -> Result<()> {
                let kv = KeyValue::parse(value).ok_or_else(|| {
                    anyhow!(
                        "the entry at revision {} is not an etcd key-value",
                        describe_revision(revision)
                    )
                })?;
                if revision.len() == 18 && revision[17] == b't' {
                    delete.execute(params![kv.key])?;
                } else {
                    let value_at = at.offset + kv.value.start as u64;
                    put.execute(params![kv.key, value_at as i64, kv.value.len() as i64])?;
                }
                Ok(())
            })();
            stored.map_err(|err| {
                let why = format!("{err:#}");
                failed = Some(err);
                why
            })
        });
        if let Err(why) = walked {
            return Err(failed.unwrap_or_else(|| anyhow!("{why}")))
                .with_context(|| format!("read the keys of {shown}"));
        }
    }
    tx.commit()
        .with_context(|| format!("write working index {}", path.display()))?;
    Ok(index)
}

impl EtcdPages {
    fn page(&self, after: Option<&[u8]>) -> Result<Vec<Pair>> {
        // Two statements, not `?1 IS NULL OR …`: each page must seek in the index.
        let mut statement;
        let mut rows = match after {
            None => {
                statement = self
                    .index
                    .prepare_cached("SELECT key, offset, len FROM kv ORDER BY key")?;
                statement.query([])?
            }
            Some(after) => {
                statement = self.index.prepare_cached(
                    "SELECT key, offset, len FROM kv WHERE key > ?1 ORDER BY key",
                )?;
                statement.query(params![after])?
            }
        };
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let key: Vec<u8> = row.get(0)?;
            let offset: i64 = row.get(1)?;
            let len: i64 = row.get(2)?;
            let (Ok(offset), Ok(len)) = (u64::try_from(offset), usize::try_from(len)) else {
                bail!("the working index holds a bad position");
            };
            let value = self
                .bolt
                .read_at(ValueAt { offset, len })
                .map_err(|why| anyhow!("{why}"))?;
            bytes += value.len();
            page.push(Pair { key, value });
            if page_full(page.len(), bytes) {
                break;
            }
        }
        Ok(page)
    }
}

impl Pages for EtcdPages {
    fn next_page(&mut self, after: Option<&[u8]>) -> Result<Vec<Pair>> {
        self.page(after)
            .with_context(|| format!("read keys from {}", self.path))
    }
}

fn describe_revision(key: &[u8]) -> String {
    match key.get(..8) {
        Some(main) if key.len() >= 17 => {
            u64::from_be_bytes(main.try_into().unwrap_or_default()).to_string()
        }
        _ => format!("key {}", hex::encode(key)),
    }
}

/// The two fields of an `mvccpb.KeyValue` an export needs: `key` (1) and
/// `value` (5). The others (revisions, version, lease) are varints, skipped.
struct KeyValue<'a> {
    key: &'a [u8],
    /// Where the value lies in the encoded message.
    value: std::ops::Range<usize>,
}

impl<'a> KeyValue<'a> {
    fn parse(data: &'a [u8]) -> Option<Self> {
        let mut at = 0;
        let mut key = None;
        let mut value = 0..0;
        while at < data.len() {
            let tag = varint(data, &mut at)?;
            match tag & 7 {
                0 => {
                    varint(data, &mut at)?;
                }
                1 => at = at.checked_add(8)?,
                2 => {
                    let len = usize::try_from(varint(data, &mut at)?).ok()?;
                    let end = at.checked_add(len).filter(|&end| end <= data.len())?;
                    match tag >> 3 {
                        1 => key = Some(&data[at..end]),
                        5 => value = at..end,
                        _ => {}
                    }
                    at = end;
                }
                5 => at = at.checked_add(4)?,
                _ => return None,
            }
        }
        if at != data.len() {
            return None;
        }
        Some(KeyValue { key: key?, value })
    }
}

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *data.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(fields: &[(u64, &[u8])], varints: &[(u64, u64)]) -> Vec<u8> {
        fn push_varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        let mut out = Vec::new();
        for (field, value) in varints {
            push_varint(&mut out, field << 3);
            push_varint(&mut out, *value);
        }
        for (field, bytes) in fields {
            push_varint(&mut out, (field << 3) | 2);
            push_varint(&mut out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn reads_key_and_value_of_an_etcd_key_value() {
        let data = encode(
            &[(1, b"/registry/pods/a"), (5, &[0, 1, 2, 255])],
            &[(2, 300), (3, 1 << 40), (4, 1), (6, 0)],
        );
        let kv = KeyValue::parse(&data).unwrap();
        assert_eq!(kv.key, b"/registry/pods/a");
        assert_eq!(&data[kv.value], &[0, 1, 2, 255]);
        // A delete's entry carries only the key.
        let tombstone = encode(&[(1, b"/k")], &[]);
        let kv = KeyValue::parse(&tombstone).unwrap();
        assert_eq!((kv.key, kv.value), (&b"/k"[..], 0..0));
        assert!(KeyValue::parse(&data[..data.len() - 1]).is_none());
        assert!(KeyValue::parse(&encode(&[(5, b"v")], &[])).is_none());
    }
}
