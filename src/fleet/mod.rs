//! `vcbackup fleet`: every virtual cluster under a destination, from
//! listings alone. One delimiter LIST finds the clusters' folders, one LIST
//! per cluster finds its objects, and object names say the rest: a backup's
//! name holds its start time, a record's name its time and result
//! (`records`). No object is read, so the cost does not grow with the
//! number of backups, and a cluster whose sidecar is gone shows up all the same.

pub mod exporter;

use std::collections::HashSet;

use anyhow::Result;
use bytesize::ByteSize;
use chrono::{DateTime, TimeDelta, Utc};
use comfy_table::{Table, presets};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use serde_json::{Value, json};

use crate::increment::IncrementRef;
use crate::listing::age;
use crate::manifest::rfc3339;
use crate::object::{Object, manifest_key};
use crate::records::{self, Kind, Mode};
use crate::storage::{Destination, ObjectInfo};

/// Clusters listed at once.
const LISTS_AT_ONCE: usize = 8;

/// How a virtual cluster's backups stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// No backup, or the newest (or its last unchanged check) older than --max-age.
    Stale,
    /// No full drill within --max-verify-age.
    Unverified,
    /// The last drill failed.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Stale => "stale",
            Status::Unverified => "unverified",
            Status::Failed => "failed",
        }
    }
}

/// The newest backup of a cluster, as its listing shows it.
#[derive(Debug, Clone)]
pub struct Newest {
    pub name: String,
    pub started: DateTime<Utc>,
    pub stored_size: u64,
}

/// The last drill of any of a cluster's backups.
#[derive(Debug, Clone)]
pub struct Drill {
    pub backup: String,
    pub time: DateTime<Utc>,
    pub mode: Mode,
    pub ok: bool,
}

/// One virtual cluster's line.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub backups: usize,
    /// Every object's size: what the cluster costs in storage.
    pub bytes: u64,
    pub newest: Option<Newest>,
    /// Since when the cluster's backups are known current: the newest backup's
    /// start, the last check that found the store unchanged since it (`run
    /// --skip-unchanged`), or the newest increment after a backup (`run
    /// --incremental-interval`), whichever is latest.
    pub current_since: Option<DateTime<Utc>>,
    /// When the newest complete increment was read from the store.
    pub last_increment: Option<DateTime<Utc>>,
    pub last_verify: Option<Drill>,
    pub last_full_verify: Option<DateTime<Utc>>,
    pub status: Status,
    /// Why the status is not `ok`.
    pub reason: String,
}

/// What `--max-age` and `--max-verify-age` set.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_age: TimeDelta,
    pub max_verify_age: TimeDelta,
}

/// Every cluster, and the requests the listing took.
pub struct Survey {
    pub clusters: Vec<Cluster>,
    pub delimiter_lists: usize,
    pub lists: usize,
}

/// Lists the destination: one delimiter LIST, then one LIST per cluster.
pub async fn survey(destination: &Destination, limits: Limits) -> Result<Survey> {
    let all = destination.open_all().await?;
    let lists = all.len();
    let now = Utc::now();
    let clusters = stream::iter(all)
        .map(|(name, storage)| async move {
            let objects = storage.list().await?;
            anyhow::Ok(summarize(name, &objects, now, limits))
        })
        .buffered(LISTS_AT_ONCE)
        .try_collect()
        .await?;
    Ok(Survey {
        clusters,
        delimiter_lists: 1,
        lists,
    })
}

/// One cluster's line from its listing alone.
pub fn summarize(
    name: String,
    objects: &[ObjectInfo],
    now: DateTime<Utc>,
    limits: Limits,
) -> Cluster {
    let keys: HashSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    // A backup counts once both it and its manifest are listed, as for `list`.
    let mut backups: Vec<Newest> = objects
        .iter()
        .filter(|o| keys.contains(manifest_key(&o.key).as_str()))
        .filter_map(|o| match Object::parse(&o.key)? {
            Object::Backup { name, started, .. } => Some(Newest {
                name,
                started,
                stored_size: o.size,
            }),
            _ => None,
        })
        .collect();
    backups.sort_by(|a, b| b.started.cmp(&a.started).then_with(|| b.name.cmp(&a.name)));
    let listed: HashSet<&str> = backups.iter().map(|b| b.name.as_str()).collect();
    let records = records::records(objects.iter().map(|o| o.key.as_str()));
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| listed.contains(r.backup.as_str()))
        .collect();
    let newest = backups.first().cloned();
    // Complete increments (manifest listed) of a listed backup: a restore applies them.
    let last_increment = objects
        .iter()
        .filter_map(|o| IncrementRef::parse(&o.key))
        .filter(|i| listed.contains(i.base.as_str()))
        .filter(|i| keys.contains(manifest_key(&i.name).as_str()))
        .map(|i| i.captured)
        .max();
    let current_since = newest.as_ref().map(|n| {
        records
            .iter()
            .filter(|r| r.kind == Kind::Unchanged && r.backup == n.name)
            .map(|r| r.time)
            .chain(last_increment)
            .fold(n.started, DateTime::max)
    });
    // A key-less pass never clears a full drill's failure.
    let last_verify = records::verdict(&records, None).and_then(|r| match r.kind {
        Kind::Verify { mode, ok } => Some(Drill {
            backup: r.backup.clone(),
            time: r.time,
            mode,
            ok,
        }),
        Kind::Unchanged => None,
    });
    let last_full_verify = records
        .iter()
        .rev()
        .find(|r| {
            matches!(
                r.kind,
                Kind::Verify {
                    mode: Mode::Full,
                    ..
                }
            )
        })
        .map(|r| r.time);
    let (status, reason) = match (&last_verify, current_since) {
        (Some(drill), _) if !drill.ok => (
            Status::Failed,
            format!(
                "the last drill ({}) of {} failed",
                drill.mode.as_str(),
                drill.backup
            ),
        ),
        (_, None) => (Status::Stale, "no backups".to_string()),
        (_, Some(since)) if now - since > limits.max_age => (
            Status::Stale,
            format!("newest backup {} old", age(now - since)),
        ),
        _ if last_full_verify.is_none_or(|t| now - t > limits.max_verify_age) => (
            Status::Unverified,
            "no full restore drill recently (verify --identity)".to_string(),
        ),
        _ => (Status::Ok, String::new()),
    };
    Cluster {
        name,
        backups: backups.len(),
        bytes: objects.iter().map(|o| o.size).sum(),
        newest,
        current_since,
        last_increment,
        last_verify,
        last_full_verify,
        status,
        reason,
    }
}

pub fn json(clusters: &[Cluster], now: DateTime<Utc>) -> Value {
    let seconds = |t: DateTime<Utc>| (now - t).num_seconds().max(0);
    Value::Array(
        clusters
            .iter()
            .map(|c| {
                json!({
                    "vcluster": c.name,
                    "status": c.status.as_str(),
                    "reason": c.reason,
                    "backups": c.backups,
                    "bytes": c.bytes,
                    "newest": c.newest.as_ref().map(|n| json!({
                        "name": n.name,
                        "created": rfc3339(n.started),
                        "age_seconds": seconds(n.started),
                        "stored_size": n.stored_size,
                    })),
                    "current_since": c.current_since.map(rfc3339),
                    "last_increment": c.last_increment.map(rfc3339),
                    "last_verify": c.last_verify.as_ref().map(|d| json!({
                        "backup": d.backup,
                        "time": rfc3339(d.time),
                        "age_seconds": seconds(d.time),
                        "mode": d.mode,
                        "result": if d.ok { "ok" } else { "failed" },
                    })),
                    "last_full_verify": c.last_full_verify.map(rfc3339),
                })
            })
            .collect(),
    )
}

pub fn table(clusters: &[Cluster], now: DateTime<Utc>) -> String {
    let mut table = Table::new();
    table.load_style(presets::NOTHING).set_header([
        "VCLUSTER", "STATUS", "AGE", "SIZE", "BACKUPS", "VERIFIED", "NEWEST",
    ]);
    for c in clusters {
        let verified = match &c.last_verify {
            Some(d) => format!(
                "{} {} ({})",
                if d.ok { "ok" } else { "FAILED" },
                age(now - d.time),
                d.mode.as_str()
            ),
            None => "-".into(),
        };
        table.add_row([
            c.name.clone(),
            c.status.as_str().to_string(),
            c.current_since.map_or("-".into(), |t| age(now - t)),
            c.newest.as_ref().map_or("-".into(), |n| {
                ByteSize(n.stored_size).display().iec().to_string()
            }),
            c.backups.to_string(),
            verified,
            c.newest.as_ref().map_or("-".into(), |n| n.name.clone()),
        ]);
    }
    table
        .lines()
        .map(|line| format!("{}\n", line.trim()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::SourceKind;
    use crate::object::backup_name;
    use crate::object::verify_key;

    fn object(key: String, size: u64) -> ObjectInfo {
        ObjectInfo {
            key,
            size,
            modified: None,
        }
    }

    /// A backup `hours` old and its manifest.
    fn backup(now: DateTime<Utc>, hours: i64) -> (String, Vec<ObjectInfo>) {
        let name = backup_name(
            "demo",
            now - TimeDelta::hours(hours),
            1,
            SourceKind::Sqlite,
            true,
        );
        let objects = vec![
            object(name.clone(), 100),
            object(format!("{name}.json"), 10),
        ];
        (name, objects)
    }

    #[test]
    fn statuses_come_from_names_alone() {
        let now = Utc::now();
        let limits = Limits {
            max_age: TimeDelta::hours(2),
            max_verify_age: TimeDelta::hours(48),
        };
        let (fresh, mut objects) = backup(now, 1);
        let (_, old) = backup(now, 30);
        objects.extend(old);
        let c = summarize("demo".into(), &objects, now, limits);
        assert_eq!((c.status, c.backups, c.bytes), (Status::Unverified, 2, 220));
        assert_eq!(c.newest.map(|n| n.name), Some(fresh.clone()));

        let drill = verify_key(&fresh, now - TimeDelta::minutes(5), Mode::Full, true);
        objects.push(object(drill, 500));
        assert_eq!(
            summarize("demo".into(), &objects, now, limits).status,
            Status::Ok
        );
        let failed = verify_key(&fresh, now - TimeDelta::minutes(1), Mode::Keyless, false);
        objects.push(object(failed, 500));
        let c = summarize("demo".into(), &objects, now, limits);
        assert_eq!(c.status, Status::Failed, "{}", c.reason);

        let (stale, objects) = backup(now, 3);
        assert_eq!(
            summarize("x".into(), &objects, now, limits).status,
            Status::Stale
        );
        // Checked unchanged an hour ago: current, though the backup is 3 hours old.
        let mut objects = objects;
        let mark = format!(
            "{stale}.unchanged-{}.json",
            (now - TimeDelta::hours(1)).format(records::STAMP)
        );
        objects.push(object(mark, 0));
        assert_ne!(
            summarize("x".into(), &objects, now, limits).status,
            Status::Stale
        );

        // An increment read 10 minutes ago, after a 3-hour-old backup: current as of then.
        let mut continuous = backup(now, 3).1;
        let increment =
            crate::increment::increment_name(&stale, now - TimeDelta::minutes(10), 11, 12, 7);
        continuous.push(object(increment.clone(), 5));
        let c = summarize("c".into(), &continuous, now, limits);
        assert_eq!(c.status, Status::Stale, "no manifest yet: not an increment");
        continuous.push(object(format!("{increment}.json"), 1));
        let c = summarize("c".into(), &continuous, now, limits);
        assert_ne!(c.status, Status::Stale, "{}", c.reason);
        assert_eq!(
            c.last_increment,
            Some(chrono::SubsecRound::trunc_subsecs(
                now - TimeDelta::minutes(10),
                3
            ))
        );

        // A manifest without its object, or a record of a deleted backup: no backup.
        let leftovers = vec![object(format!("{stale}.json"), 10)];
        let c = summarize("gone".into(), &leftovers, now, limits);
        assert_eq!((c.status, c.backups), (Status::Stale, 0));
    }
}
