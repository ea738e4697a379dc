//! `list` output: a table for people, JSON for scripts.

use bytesize::ByteSize;
use chrono::{DateTime, Utc};
use comfy_table::{Table, presets};
use serde_json::{Value, json};

use crate::manifest::{Manifest, rfc3339};

pub fn json(backups: &[Manifest]) -> Value {
    Value::Array(
        backups
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "created": rfc3339(m.started),
                    "kind": m.kind,
                    "size": m.size,
                    "stored_size": m.stored_size,
                    "sha256": m.sha256,
                    "encrypted": m.encryption.is_some(),
                    "revision": m.revision,
                    "vcluster": m.vcluster,
                    "config": m.config.is_some(),
                })
            })
            .collect(),
    )
}

/// Newest first, as `backups` comes; ages relative to `now`.
pub fn table(backups: &[Manifest], now: DateTime<Utc>) -> String {
    let mut table = Table::new();
    // Plain columns, no borders: the output is read by people and by `awk`.
    table
        .load_style(presets::NOTHING)
        .set_header(["NAME", "TIME", "AGE", "KIND", "SIZE", "STORED"]);
    for m in backups {
        table.add_row([
            m.name.clone(),
            m.started.format("%Y-%m-%d %H:%M:%SZ").to_string(),
            age(now - m.started),
            m.kind.to_string(),
            ByteSize(m.size).display().iec().to_string(),
            ByteSize(m.stored_size).display().iec().to_string(),
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

/// The age in its largest whole unit, as kubectl prints it.
fn age(age: chrono::TimeDelta) -> String {
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
