//! `list` output: a table for people, JSON for scripts.

use bytesize::ByteSize;
use chrono::{DateTime, Utc};
use comfy_table::{Table, presets};
use serde_json::{Value, json};

use crate::increment::{Chain, IncrementRef};
use crate::manifest::{Manifest, rfc3339};
use crate::records::{self, Kind, Record};

/// How `list` and `fleet` print: a table for people, JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// The drill that speaks for a backup (`records::verdict`), as `list -o json` shows it.
fn last_verify(records: &[Record], backup: &str) -> Value {
    match records::verdict(records, Some(backup)) {
        Some(Record {
            time,
            kind: Kind::Verify { mode, ok },
            key,
            ..
        }) => json!({
            "time": rfc3339(*time),
            "mode": mode,
            "result": if *ok { "ok" } else { "failed" },
            "record": key,
        }),
        _ => Value::Null,
    }
}

/// The increments that apply to a backup (`--incremental-interval`), as JSON.
fn chain_json(backup: &Manifest, increments: &[IncrementRef]) -> Value {
    let chain = Chain::assemble(backup, increments, None);
    match chain.increments.last() {
        None => Value::Null,
        Some(newest) => json!({
            "count": chain.increments.len(),
            "revision": newest.last_revision,
            "until": rfc3339(newest.captured),
            "gap": chain.gap(),
        }),
    }
}

/// `records` oldest first, as the catalog gives them.
pub fn json(backups: &[Manifest], records: &[Record], increments: &[IncrementRef]) -> Value {
    Value::Array(
        backups
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "created": rfc3339(m.started),
                    "kind": m.kind,
                    "size": m.sealed.size,
                    "stored_size": m.sealed.stored_size,
                    "sha256": m.sealed.sha256,
                    "encrypted": m.sealed.is_encrypted(),
                    "revision": m.revision,
                    "vcluster": m.vcluster,
                    "config": m.config.is_some(),
                    "verify": last_verify(records, &m.name),
                    "increments": chain_json(m, increments),
                })
            })
            .collect(),
    )
}

/// Newest first, as `backups` comes; ages relative to `now`.
pub fn table(
    backups: &[Manifest],
    records: &[Record],
    increments: &[IncrementRef],
    now: DateTime<Utc>,
) -> String {
    let mut table = Table::new();
    // Plain columns, no borders: the output is read by people and by `awk`.
    table.load_style(presets::NOTHING).set_header([
        "NAME",
        "TIME",
        "AGE",
        "KIND",
        "SIZE",
        "STORED",
        "VERIFIED",
        "INCREMENTS",
    ]);
    for m in backups {
        table.add_row([
            m.name.clone(),
            m.started.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            age(now - m.started),
            m.kind.to_string(),
            ByteSize(m.sealed.size).display().iec().to_string(),
            ByteSize(m.sealed.stored_size).display().iec().to_string(),
            verified(records, &m.name, now),
            chain_cell(m, increments, now),
        ]);
    }
    let mut out: String = table
        .lines()
        .map(|line| format!("{}\n", line.trim()))
        .collect();
    if backups.is_empty() {
        out.clear();
    }
    out
}

/// The drill that speaks for a backup in a word and its age: `ok 3h (full)`,
/// `FAILED 5m (keyless)`, `-`.
fn verified(records: &[Record], backup: &str, now: DateTime<Utc>) -> String {
    match records::verdict(records, Some(backup)) {
        Some(Record {
            time,
            kind: Kind::Verify { mode, ok },
            ..
        }) => format!(
            "{} {} ({})",
            if *ok { "ok" } else { "FAILED" },
            age(now - *time),
            mode.as_str()
        ),
        _ => "-".to_string(),
    }
}

/// The increments after a backup: `12 to 30s ago`, `-` for none.
fn chain_cell(backup: &Manifest, increments: &[IncrementRef], now: DateTime<Utc>) -> String {
    let chain = Chain::assemble(backup, increments, None);
    match chain.increments.last() {
        None => "-".to_string(),
        Some(newest) => format!(
            "{} to {} ago{}",
            chain.increments.len(),
            age(now - newest.captured),
            if chain.gap().is_some() { " (GAP)" } else { "" }
        ),
    }
}

/// The age in its largest whole unit, as kubectl prints it.
pub fn age(age: chrono::TimeDelta) -> String {
    let s = age.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_as_people_expect() {
        assert_eq!(ByteSize(1536).display().iec().to_string(), "1.5 KiB");
        assert_eq!(age(chrono::TimeDelta::seconds(7300)), "2h");
        assert_eq!(age(chrono::TimeDelta::seconds(-5)), "0s");
    }
}
