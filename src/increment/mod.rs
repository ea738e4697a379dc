//! Continuous backups: between full backups the agent ships **increments**,
//! the changes since the revision shipped last, so a restore loses at most one
//! interval. A full backup (the *base*) and the increments after it form a
//! *chain*; a restore applies the base, then the increments in revision order.
//!
//! - An increment is sealed like a backup (zstd, age) and stored beside its
//!   base as `<base stem>.incr-<first>-<last>-<writer>.zst[.age]`, with a
//!   manifest `<increment>.json` written after it: an increment without its
//!   manifest (a crash mid-upload) is never applied.
//! - Its manifest records the base, the revision range, the compact revision
//!   when read, the count of changes and the digests of both ends.
//! - Retention deletes a chain with its base (`retention`), never a base that
//!   a kept increment needs.
//!
//! `feed` says where changes come from (kine rows by id, etcd watch events),
//! `ship` seals and stores one increment, `format` is the plaintext.

pub mod apply;
pub mod feed;
pub mod format;
pub mod ship;

use anyhow::Result;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::{self, Manifest, SealedObject, SourceKind};
pub use crate::object::{IncrementRef, increment_name};

pub const FORMAT_VERSION: u32 = 1;

/// The contract between shipping an increment and applying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementManifest {
    pub format_version: u32,
    /// The increment's object name.
    pub name: String,
    /// The full backup it continues.
    pub base: String,
    pub vcluster: String,
    pub kind: SourceKind,
    /// When the changes were read: the store's state at this time is the base
    /// plus every increment of the chain up to this one.
    pub captured: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// The revisions it covers, both ends included.
    pub first_revision: i64,
    pub last_revision: i64,
    /// The store's compact revision when the changes were read.
    pub compact_revision: i64,
    /// kine rows or etcd events.
    pub count: u64,
    /// The plaintext is the JSON lines of its changes.
    #[serde(flatten)]
    pub sealed: SealedObject,
    pub agent_version: String,
}

impl IncrementManifest {
    pub fn manifest_key(&self) -> String {
        crate::object::manifest_key(&self.name)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        manifest::to_json(self, "increment manifest")
    }

    pub fn from_json(data: &[u8], key: &str) -> Result<Self> {
        manifest::from_json(
            data,
            key,
            "increment manifest",
            FORMAT_VERSION,
            |m: &Self| m.format_version,
        )
    }
}

/// A base and the increments that apply to it, in order.
#[derive(Debug, Clone)]
pub struct Chain {
    pub base: Manifest,
    pub increments: Vec<IncrementRef>,
    /// Increments stored for this base but not applied: after a gap in the
    /// revisions (one went missing), or past the point in time asked for.
    pub left_out: Vec<(IncrementRef, LeftOut)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftOut {
    /// Captured after the point in time asked for.
    AfterTime,
    /// Revisions are missing before it: applying it would skip changes.
    AfterGap { missing_from: i64 },
}

impl Chain {
    /// The increments of `base` among `all` (only those with a manifest),
    /// applied in revision order up to `until` (inclusive; `None`: all). Two
    /// agents may have shipped the same revisions (a leader change); overlaps
    /// are fine, as applying skips revisions already applied. A gap stops the
    /// chain there.
    pub fn assemble(base: &Manifest, all: &[IncrementRef], until: Option<DateTime<Utc>>) -> Chain {
        let mut mine: Vec<&IncrementRef> = all.iter().filter(|i| i.base == base.name).collect();
        mine.sort_by(|a, b| {
            (a.first_revision, a.last_revision, &a.name).cmp(&(
                b.first_revision,
                b.last_revision,
                &b.name,
            ))
        });
        let mut applied = base.revision.unwrap_or(0);
        // When the state reached so far was read: revisions missing after it
        // may have been read before `until`.
        let mut reached_at = base.started;
        let mut increments = Vec::new();
        let mut left_out = Vec::new();
        let mut gap: Option<i64> = None;
        // Past the first increment read after `until`, every later one is too.
        let mut past_time = false;
        for increment in mine {
            let after_time = until.is_some_and(|t| increment.captured > t);
            // A missing range counts unless it was surely read after `until`:
            // a time between the last increment applied and this one is unknown.
            if gap.is_none()
                && !past_time
                && increment.first_revision > applied + 1
                && until.is_none_or(|t| !after_time || t > reached_at)
            {
                gap = Some(applied + 1);
            }
            if after_time && gap.is_none() {
                past_time = true;
                left_out.push((increment.clone(), LeftOut::AfterTime));
                continue;
            }
            if let Some(missing_from) = gap {
                left_out.push((increment.clone(), LeftOut::AfterGap { missing_from }));
                continue;
            }
            if increment.last_revision <= applied {
                continue; // Covered by what came before (two writers shipped it).
            }
            applied = increment.last_revision;
            reached_at = increment.captured;
            increments.push(increment.clone());
        }
        Chain {
            base: base.clone(),
            increments,
            left_out,
        }
    }

    /// The revision a restore of this chain reaches.
    pub fn revision(&self) -> Option<i64> {
        self.increments
            .last()
            .map(|i| i.last_revision)
            .or(self.base.revision)
    }

    /// The time the restored state is from.
    pub fn captured(&self) -> DateTime<Utc> {
        self.increments
            .last()
            .map_or(self.base.started, |i| i.captured)
    }

    /// What is missing when increments were left out for a gap: a restore of
    /// this chain would hold less than was asked for.
    pub fn gap(&self) -> Option<String> {
        self.left_out.iter().find_map(|(i, why)| match why {
            LeftOut::AfterGap { missing_from } => Some(format!(
                "the chain of {} has a gap: revisions from {missing_from} are missing before {}",
                self.base.name, i.name,
            )),
            LeftOut::AfterTime => None,
        })
    }

    /// Refuses a chain with a gap unless `up_to_gap` accepts the state up to
    /// it: a restore that silently holds less hides lost data.
    pub fn refuse_gap(&self, up_to_gap: bool) -> anyhow::Result<()> {
        match self.gap() {
            Some(gap) if !up_to_gap => anyhow::bail!(
                "{gap}; pass --up-to-gap for the state up to revision {} (read at {}), or --at a time before the gap, or an increment's name",
                self.revision().unwrap_or(0),
                crate::manifest::rfc3339(self.captured())
            ),
            _ => Ok(()),
        }
    }

    /// What a restore of this chain is, for messages.
    pub fn describe(&self) -> String {
        match self.increments.len() {
            0 => self.base.name.clone(),
            n => format!(
                "{} + {n} increment{} (revision {}, {})",
                self.base.name,
                if n == 1 { "" } else { "s" },
                self.revision().unwrap_or(0),
                crate::manifest::rfc3339(self.captured())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "demo-20261128T090000.000Z-3f9c1a07-sqlite.zst.age";

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn names_carry_the_base_the_time_and_the_range() {
        let name = increment_name(BASE, at("2026-11-28T09:01:30.25Z"), 101, 250, 0xab);
        assert_eq!(
            name,
            "demo-20261128T090000.000Z-3f9c1a07-sqlite.incr-20261128T090130.250Z-101-250-000000ab.zst.age"
        );
        let parsed = IncrementRef::parse(&name).unwrap();
        assert_eq!(parsed.base, BASE);
        assert_eq!(parsed.captured, at("2026-11-28T09:01:30.25Z"));
        assert_eq!((parsed.first_revision, parsed.last_revision), (101, 250));
        // Not a backup, a config or a record.
        assert!(matches!(
            crate::object::Object::parse(&name),
            Some(crate::object::Object::Increment(_))
        ));
        assert_eq!(crate::records::Record::parse(&name), None);
        assert!(matches!(
            crate::object::Object::parse(&format!("{name}.json")),
            Some(crate::object::Object::IncrementManifest(_))
        ));
        assert_eq!(IncrementRef::parse(BASE), None);
        let plain = increment_name(
            "demo-20261128T090000.000Z-3f9c1a07-etcd.zst",
            at("2026-11-28T09:01:30Z"),
            5,
            5,
            1,
        );
        assert!(
            plain.ends_with("-etcd.incr-20261128T090130.000Z-5-5-00000001.zst"),
            "{plain}"
        );
        assert!(IncrementRef::parse(&plain).is_some());
    }

    fn base(revision: i64) -> Manifest {
        let json = format!(
            r#"{{"format_version":1,"name":"{BASE}","vcluster":"demo","kind":"sqlite",
            "started":"2026-11-28T09:00:00Z","finished":"2026-11-28T09:00:01Z","size":1,
            "sha256":"a","stored_size":1,"stored_sha256":"b",
            "compression":{{"algorithm":"zstd","level":3}},"encryption":null,"revision":{revision},
            "agent_version":"0.1.0"}}"#
        );
        Manifest::from_json(json.as_bytes(), "base").unwrap()
    }

    fn increment(first: i64, last: i64, minute: u32) -> IncrementRef {
        let captured = at(&format!("2026-11-28T09:{minute:02}:00Z"));
        IncrementRef::parse(&increment_name(BASE, captured, first, last, minute)).unwrap()
    }

    fn ranges(chain: &Chain) -> Vec<(i64, i64)> {
        chain
            .increments
            .iter()
            .map(|i| (i.first_revision, i.last_revision))
            .collect()
    }

    #[test]
    fn a_chain_applies_in_order_up_to_a_time() {
        let all = [
            increment(21, 30, 3),
            increment(11, 20, 2),
            increment(31, 35, 4),
        ];
        let chain = Chain::assemble(&base(10), &all, None);
        assert_eq!(ranges(&chain), [(11, 20), (21, 30), (31, 35)]);
        assert_eq!(chain.revision(), Some(35));
        let chain = Chain::assemble(&base(10), &all, Some(at("2026-11-28T09:03:30Z")));
        assert_eq!(ranges(&chain), [(11, 20), (21, 30)]);
        assert_eq!(chain.captured(), at("2026-11-28T09:03:00Z"));
        assert_eq!(chain.left_out.len(), 1);
        assert_eq!(chain.gap(), None);
        // Before the first increment: the base alone.
        let chain = Chain::assemble(&base(10), &all, Some(at("2026-11-28T09:01:00Z")));
        assert_eq!(ranges(&chain), []);
        assert_eq!(chain.revision(), Some(10));
    }

    #[test]
    fn overlaps_are_skipped_and_a_gap_stops_the_chain() {
        let all = [
            increment(11, 20, 2),
            increment(11, 20, 3), // a second writer shipped the same range
            increment(15, 25, 4),
            increment(30, 40, 5), // 26..=29 missing
            increment(41, 50, 6),
        ];
        let chain = Chain::assemble(&base(10), &all, None);
        assert_eq!(ranges(&chain), [(11, 20), (15, 25)]);
        assert_eq!(chain.revision(), Some(25));
        let gap = chain.gap().unwrap();
        assert!(gap.contains("revisions from 26 are missing"), "{gap}");
        assert_eq!(chain.left_out.len(), 2);
        let refused = chain.refuse_gap(false).unwrap_err().to_string();
        assert!(refused.contains("--up-to-gap"), "{refused}");
        assert!(refused.contains("up to revision 25"), "{refused}");
        chain.refuse_gap(true).unwrap();
    }

    #[test]
    fn a_gap_counts_for_a_time_unless_it_was_surely_read_after_it() {
        // 21..=30, read at 09:03, is gone.
        let all = [increment(11, 20, 2), increment(31, 40, 4)];
        // At 09:02:30 the missing increment may already have been read.
        let chain = Chain::assemble(&base(10), &all, Some(at("2026-11-28T09:02:30Z")));
        assert!(chain.gap().is_some());
        assert!(chain.refuse_gap(false).is_err());
        // At the last increment's own time, nothing read later is missing.
        let chain = Chain::assemble(&base(10), &all, Some(at("2026-11-28T09:02:00Z")));
        assert_eq!((ranges(&chain), chain.gap()), (vec![(11, 20)], None));
        // A hole after the first increment read past the time is no gap of it.
        let later = [
            increment(11, 20, 2),
            increment(21, 30, 3),
            increment(35, 40, 5),
        ];
        let chain = Chain::assemble(&base(10), &later, Some(at("2026-11-28T09:02:30Z")));
        assert_eq!((ranges(&chain), chain.gap()), (vec![(11, 20)], None));
    }

    /// The flattened `SealedObject` keeps every field where it always was.
    #[test]
    fn an_increment_manifest_writes_its_fields_in_the_order_it_always_did() {
        let json = r#"{
  "format_version": 1,
  "name": "n",
  "base": "b",
  "vcluster": "demo",
  "kind": "etcd",
  "captured": "2026-01-02T03:04:05Z",
  "finished": "2026-01-02T03:04:06Z",
  "first_revision": 10,
  "last_revision": 12,
  "compact_revision": 3,
  "count": 2,
  "size": 100,
  "sha256": "aa",
  "stored_size": 80,
  "stored_sha256": "bb",
  "compression": {
    "algorithm": "zstd",
    "level": 3
  },
  "encryption": null,
  "agent_version": "0.1.0"
}
"#;
        let manifest = IncrementManifest::from_json(json.as_bytes(), "golden").unwrap();
        assert_eq!(manifest.sealed.plaintext_fingerprint().size, 100);
        assert_eq!(
            String::from_utf8(manifest.to_json().unwrap()).unwrap(),
            json
        );
    }
}
