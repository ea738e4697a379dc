//! Which backups to delete under vCluster's `retention.period` (days) and
//! `retention.maxSnapshots`.
//!
//! The caller passes only successful, complete backups; a failed or partial
//! one must never count towards the limit, or it could push out a good one.
//! The newest backup is always kept, whatever the settings, so a cluster whose
//! backups stopped a month ago still has something to restore from.

use std::collections::{HashMap, HashSet};
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};

/// How long and how many backups to keep (vCluster's `retention.period` and
/// `retention.maxSnapshots`). 0 on either axis means no limit on that axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    pub max_age_days: u32,
    pub max_count: u32,
}

/// Anything retention can order by age: manifests, and plain times in tests.
pub trait Dated {
    fn created(&self) -> DateTime<Utc>;
}

impl<T: Dated + ?Sized> Dated for &T {
    fn created(&self) -> DateTime<Utc> {
        (**self).created()
    }
}

/// Why retention deletes a backup, as `prune` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    OlderThan { days: u32 },
    BeyondCount { max: u32 },
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::OlderThan { days: 1 } => f.write_str("older than 1 day"),
            DeleteReason::OlderThan { days } => write!(f, "older than {days} days"),
            DeleteReason::BeyondCount { max } => write!(f, "beyond the newest {max}"),
        }
    }
}

/// What to keep and what to delete; both lists are ordered newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan<T> {
    pub keep: Vec<T>,
    pub delete: Vec<(T, DeleteReason)>,
}

/// Decides, without touching storage, which backups `policy` keeps at `now`;
/// the newest backup is always kept.
pub fn plan<T: Dated + Clone>(
    backups: &[T],
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> RetentionPlan<T> {
    let mut newest_first: Vec<&T> = backups.iter().collect();
    // Stable sort: backups with equal timestamps keep their input order.
    newest_first.sort_by_key(|b| std::cmp::Reverse(b.created()));

    // No cutoff if the period reaches past the earliest representable time:
    // nothing can be older than that.
    let cutoff = match policy.max_age_days {
        0 => None,
        days => TimeDelta::try_days(i64::from(days)).and_then(|age| now.checked_sub_signed(age)),
    };

    let mut keep = Vec::new();
    let mut delete = Vec::new();
    for (rank, backup) in newest_first.into_iter().enumerate() {
        let reason = if rank == 0 {
            None
        } else if cutoff.is_some_and(|c| backup.created() < c) {
            // Age first: it holds regardless of what other backups exist.
            Some(DeleteReason::OlderThan {
                days: policy.max_age_days,
            })
        } else if policy.max_count > 0 && rank >= policy.max_count as usize {
            Some(DeleteReason::BeyondCount {
                max: policy.max_count,
            })
        } else {
            None
        };
        match reason {
            None => keep.push(backup.clone()),
            Some(reason) => delete.push((backup.clone(), reason)),
        }
    }
    RetentionPlan { keep, delete }
}

impl Dated for crate::manifest::Manifest {
    fn created(&self) -> DateTime<Utc> {
        self.started
    }
}

/// A backup with the chain of increments that follows it: retention keeps or
/// deletes them together, and a chain counts as old as its newest increment
/// (a point in time inside the period needs the base it starts from).
#[derive(Clone)]
struct WithChain<'a> {
    backup: &'a crate::manifest::Manifest,
    newest: DateTime<Utc>,
}

impl Dated for WithChain<'_> {
    fn created(&self) -> DateTime<Utc> {
        self.newest
    }
}

/// Plans retention over the backups in `storage` and, unless `dry_run`,
/// deletes what the plan says, each backup with its increments. Only this
/// virtual cluster's own backups are considered: the catalog lists nothing else.
pub async fn prune(
    storage: &dyn crate::storage::Storage,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    dry_run: bool,
) -> anyhow::Result<RetentionPlan<crate::manifest::Manifest>> {
    let catalog = crate::catalog::read(storage).await?;
    // The newest complete increment of each base, for the age of its chain.
    let mut newest: HashMap<&str, DateTime<Utc>> = HashMap::new();
    for increment in &catalog.increments {
        let at = newest
            .entry(increment.base.as_str())
            .or_insert(increment.captured);
        *at = (*at).max(increment.captured);
    }
    let chains: Vec<WithChain> = catalog
        .backups
        .iter()
        .map(|backup| WithChain {
            backup,
            newest: newest
                .get(backup.name.as_str())
                .map_or(backup.started, |at| (*at).max(backup.started)),
        })
        .collect();
    let planned = plan(&chains, policy, now);
    let plan = RetentionPlan {
        keep: planned.keep.iter().map(|c| c.backup.clone()).collect(),
        delete: planned
            .delete
            .iter()
            .map(|(c, reason)| (c.backup.clone(), *reason))
            .collect(),
    };
    if !dry_run {
        let present: HashSet<&str> = catalog.objects.iter().map(|o| o.key.as_str()).collect();
        // Every increment object, with or without its manifest, by base.
        let mut increments: HashMap<String, Vec<String>> = HashMap::new();
        for object in &catalog.objects {
            if let Some(increment) = crate::increment::IncrementRef::parse(&object.key) {
                increments
                    .entry(increment.base)
                    .or_default()
                    .push(increment.name);
            }
        }
        for (backup, reason) in &plan.delete {
            // Manifest first: once it is gone the backup is no longer listed, so
            // an interrupted deletion never shows a backup whose data is gone.
            storage.delete(&backup.manifest_key()).await?;
            storage.delete(&backup.name).await?;
            if let Some(config) = &backup.config {
                storage.delete(&config.name).await?;
            }
            for record in catalog.records.iter().filter(|r| r.backup == backup.name) {
                storage.delete(&record.key).await?;
            }
            let chain = increments.remove(&backup.name).unwrap_or_default();
            delete_increments(storage, &chain, &present).await?;
            tracing::info!(backup = %backup.name, increments = chain.len(), %reason, "retention deleted backup");
        }
        delete_orphaned_records(storage, &catalog, &present).await?;
        // Increments whose base is gone (a deletion cut off) are never applied.
        for (base, orphans) in &increments {
            if !present.contains(base.as_str()) {
                delete_increments(storage, orphans, &present).await?;
                tracing::info!(base = %base, orphans = orphans.len(), "retention deleted increments whose base is gone");
            }
        }
    }
    Ok(plan)
}

/// Deletes increments, each manifest (when listed) before its object.
async fn delete_increments(
    storage: &dyn crate::storage::Storage,
    names: &[String],
    present: &HashSet<&str>,
) -> anyhow::Result<()> {
    for name in names {
        let manifest = crate::object::manifest_key(name);
        if present.contains(manifest.as_str()) {
            storage.delete(&manifest).await?;
        }
        storage.delete(name).await?;
    }
    Ok(())
}

/// Records whose backup is gone: left by a deletion that was cut off, or
/// written by a drill while another agent's retention deleted the backup.
async fn delete_orphaned_records(
    storage: &dyn crate::storage::Storage,
    catalog: &crate::catalog::Catalog,
    present: &HashSet<&str>,
) -> anyhow::Result<()> {
    for record in &catalog.records {
        if !present.contains(record.backup.as_str()) {
            storage.delete(&record.key).await?;
            tracing::info!(record = %record.key, "retention deleted a record of a backup that is gone");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Backup {
        id: usize,
        created: DateTime<Utc>,
    }

    impl Dated for Backup {
        fn created(&self) -> DateTime<Utc> {
            self.created
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-06-30T12:00:00Z")
            .unwrap_or_else(|e| panic!("{e}"))
            .to_utc()
    }

    /// Backups `age_hours` old, with ids in input order.
    fn backups(age_hours: &[i64]) -> Vec<Backup> {
        age_hours
            .iter()
            .enumerate()
            .map(|(id, h)| Backup {
                id,
                created: now() - TimeDelta::hours(*h),
            })
            .collect()
    }

    fn ids(plan: &RetentionPlan<Backup>) -> (Vec<usize>, Vec<(usize, String)>) {
        (
            plan.keep.iter().map(|b| b.id).collect(),
            plan.delete
                .iter()
                .map(|(b, r)| (b.id, r.to_string()))
                .collect(),
        )
    }

    #[test]
    fn reasons_display() {
        assert_eq!(
            DeleteReason::OlderThan { days: 30 }.to_string(),
            "older than 30 days"
        );
        assert_eq!(
            DeleteReason::OlderThan { days: 1 }.to_string(),
            "older than 1 day"
        );
        assert_eq!(
            DeleteReason::BeyondCount { max: 14 }.to_string(),
            "beyond the newest 14"
        );
    }

    #[test]
    fn plan_table() {
        let d = 24;
        type Case = (
            &'static str,
            Vec<i64>,
            u32,
            u32,
            Vec<usize>,
            Vec<(usize, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            ("empty input", vec![], 30, 14, vec![], vec![]),
            (
                "no limits",
                vec![1, 100 * d, 1000 * d],
                0,
                0,
                vec![0, 1, 2],
                vec![],
            ),
            (
                "age only, input unordered",
                vec![40 * d, 1, 29 * d, 31 * d],
                30,
                0,
                vec![1, 2],
                vec![(3, "older than 30 days"), (0, "older than 30 days")],
            ),
            (
                "exactly at the cutoff is not older",
                vec![0, 30 * d],
                30,
                0,
                vec![0, 1],
                vec![],
            ),
            (
                "count only",
                vec![3, 1, 4, 2],
                0,
                2,
                vec![1, 3],
                vec![(0, "beyond the newest 2"), (2, "beyond the newest 2")],
            ),
            (
                "both limits, age reported first",
                vec![1, 2, 3, 40 * d],
                30,
                2,
                vec![0, 1],
                vec![(2, "beyond the newest 2"), (3, "older than 30 days")],
            ),
            (
                "everything old: the newest survives",
                vec![50 * d, 40 * d, 60 * d],
                30,
                0,
                vec![1],
                vec![(0, "older than 30 days"), (2, "older than 30 days")],
            ),
            (
                "a single old backup survives",
                vec![400 * d],
                1,
                1,
                vec![0],
                vec![],
            ),
            (
                "equal timestamps keep input order",
                vec![5, 5, 5],
                0,
                1,
                vec![0],
                vec![(1, "beyond the newest 1"), (2, "beyond the newest 1")],
            ),
            (
                "future-dated backup counts as newest",
                vec![-2, 1, 2],
                0,
                2,
                vec![0, 1],
                vec![(2, "beyond the newest 2")],
            ),
        ];
        for (name, ages, days, count, want_keep, want_delete) in cases {
            let policy = RetentionPolicy {
                max_age_days: days,
                max_count: count,
            };
            let got = ids(&plan(&backups(&ages), &policy, now()));
            let want_delete: Vec<(usize, String)> = want_delete
                .into_iter()
                .map(|(id, r)| (id, r.to_owned()))
                .collect();
            assert_eq!(got, (want_keep, want_delete), "{name}");
        }
    }

    #[test]
    fn works_on_references() {
        let all = backups(&[1, 2, 3]);
        let refs: Vec<&Backup> = all.iter().collect();
        let policy = RetentionPolicy {
            max_age_days: 0,
            max_count: 1,
        };
        let p = plan(&refs, &policy, now());
        assert_eq!(p.keep, vec![&all[0]]);
        assert_eq!(p.delete.len(), 2);
    }

    fn arb_case() -> impl Strategy<Value = (Vec<Backup>, RetentionPolicy)> {
        (
            // Ages in hours, up to ~60 days; small range so ties happen.
            prop::collection::vec(-48i64..1440, 0..30),
            0u32..40,
            0u32..10,
        )
            .prop_map(|(ages, max_age_days, max_count)| {
                (
                    backups(&ages),
                    RetentionPolicy {
                        max_age_days,
                        max_count,
                    },
                )
            })
    }

    proptest! {
        #[test]
        fn never_deletes_the_newest((input, policy) in arb_case()) {
            let p = plan(&input, &policy, now());
            // Among equal timestamps the first in input order is the newest.
            let newest = input.iter().min_by_key(|b| (std::cmp::Reverse(b.created), b.id));
            prop_assert_eq!(p.keep.first(), newest);
        }

        #[test]
        fn partitions_the_input((input, policy) in arb_case()) {
            let p = plan(&input, &policy, now());
            let mut seen: Vec<usize> = p.keep.iter().map(|b| b.id)
                .chain(p.delete.iter().map(|(b, _)| b.id))
                .collect();
            seen.sort_unstable();
            let all: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(seen, all);
        }

        #[test]
        fn respects_max_count((input, policy) in arb_case()) {
            let p = plan(&input, &policy, now());
            if policy.max_count > 0 {
                prop_assert!(p.keep.len() <= policy.max_count as usize);
            }
            if !input.is_empty() {
                prop_assert!(!p.keep.is_empty());
            }
        }

        #[test]
        fn keeps_young_backups_within_the_newest_n((input, policy) in arb_case()) {
            let p = plan(&input, &policy, now());
            let cutoff = now() - TimeDelta::days(i64::from(policy.max_age_days));
            for (b, reason) in &p.delete {
                let young = policy.max_age_days == 0 || b.created >= cutoff;
                // Rank among all backups, ties broken by input order.
                let rank = input.iter().filter(|o| {
                    o.created > b.created || (o.created == b.created && o.id < b.id)
                }).count();
                let within_n = policy.max_count == 0 || rank < policy.max_count as usize;
                prop_assert!(!(young && within_n), "{:?} deleted ({}) though young and within the newest", b, reason);
            }
        }

        #[test]
        fn no_limits_delete_nothing(ages in prop::collection::vec(-48i64..100_000, 0..30)) {
            let input = backups(&ages);
            let p = plan(&input, &RetentionPolicy::default(), now());
            prop_assert!(p.delete.is_empty());
            prop_assert_eq!(p.keep.len(), input.len());
        }

        #[test]
        fn output_is_newest_first((input, policy) in arb_case()) {
            let p = plan(&input, &policy, now());
            prop_assert!(p.keep.windows(2).all(|w| w[0].created >= w[1].created));
            prop_assert!(p.delete.windows(2).all(|w| w[0].0.created >= w[1].0.created));
        }
    }
}
