//! Applying etcd's increments: the events of a chain fold into the final
//! value (or deletion) of each key they touched, which `Overlay` lays over the
//! base snapshot's key/value view. Memory grows with the keys changed since
//! the base, not with the store.

use std::collections::BTreeMap;
use std::io::BufRead;

use anyhow::{Result, bail};

use super::event::{EtcdEvent, EventKind};
use crate::increment::format::Reader;
use crate::store::Pair;

/// The final state of every key a chain's events touched: `Some(value)` for
/// a put, `None` for a delete.
#[derive(Default)]
pub struct Changes {
    keys: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    applied: i64,
}

impl Changes {
    pub fn new(revision: i64) -> Self {
        Changes {
            keys: BTreeMap::new(),
            applied: revision,
        }
    }

    /// Folds one increment's events in, skipping revisions already applied.
    pub fn apply(&mut self, plaintext: &mut dyn BufRead, what: &str) -> Result<()> {
        let mut reader = Reader::open(plaintext, what)?;
        let header = reader.header.clone();
        if header.first_revision > self.applied + 1 {
            bail!(
                "apply {what}: it starts at revision {}, but the chain reached only {}: a missing increment",
                header.first_revision,
                self.applied
            );
        }
        while let Some(event) = reader.next::<EtcdEvent>()? {
            if event.revision <= self.applied {
                continue;
            }
            let Some(key) = event.key else {
                bail!(
                    "apply {what}: an event at revision {} has no key",
                    event.revision
                );
            };
            self.keys.insert(
                key,
                match event.kind {
                    EventKind::Put => Some(event.value.unwrap_or_default()),
                    EventKind::Delete => None,
                },
            );
        }
        self.applied = self.applied.max(header.last_revision);
        Ok(())
    }

    /// The base's pairs with the changes laid over them, still in key order.
    pub fn overlay<I: Iterator<Item = Result<Pair>>>(self, base: I) -> Overlay<I> {
        Overlay {
            base: base.peekable(),
            changes: self.keys.into_iter().peekable(),
        }
    }
}

/// A merge of two key-ordered streams: the base's pairs and the changed keys.
pub struct Overlay<I: Iterator<Item = Result<Pair>>> {
    base: std::iter::Peekable<I>,
    changes: std::iter::Peekable<std::collections::btree_map::IntoIter<Vec<u8>, Option<Vec<u8>>>>,
}

impl<I: Iterator<Item = Result<Pair>>> Iterator for Overlay<I> {
    type Item = Result<Pair>;

    fn next(&mut self) -> Option<Result<Pair>> {
        loop {
            let order = match (self.base.peek(), self.changes.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.base.next(),
                (Some(Ok(pair)), Some((key, _))) => pair.key.as_slice().cmp(key.as_slice()),
                (Some(Ok(_)), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => return self.base.next(),
                std::cmp::Ordering::Equal => {
                    self.base.next();
                }
                std::cmp::Ordering::Greater => {}
            }
            if let Some((key, value)) = self.changes.next()
                && let Some(value) = value
            {
                return Some(Ok(Pair { key, value }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(key: &str, value: &str) -> Result<Pair> {
        Ok(Pair {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        })
    }

    #[test]
    fn changes_lay_over_the_base_in_key_order() {
        let mut changes = Changes::new(0);
        changes.keys.insert(b"/a".to_vec(), Some(b"A2".to_vec()));
        changes.keys.insert(b"/b".to_vec(), None);
        changes.keys.insert(b"/c".to_vec(), Some(b"C".to_vec()));
        changes.keys.insert(b"/e".to_vec(), None);
        let base = vec![pair("/a", "A1"), pair("/b", "B"), pair("/d", "D")];
        let merged: Vec<(String, String)> = changes
            .overlay(base.into_iter())
            .map(|p| {
                let p = p.unwrap();
                (
                    String::from_utf8(p.key).unwrap(),
                    String::from_utf8(p.value).unwrap(),
                )
            })
            .collect();
        let expected = [("/a", "A2"), ("/c", "C"), ("/d", "D")];
        assert_eq!(
            merged,
            expected.map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }
}
