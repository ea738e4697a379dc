//! Small records kept beside a backup, named so that a listing alone says
//! what they hold: `fleet` and `list` read them without a GET.
//!
//! - a drill record: one restore drill (`vcbackup verify`,
//!   `run --verify-after-upload`);
//! - an unchanged record: the store was checked at its time and had not
//!   changed since the backup (`run --skip-unchanged`).
//!
//! Their names are made and read in `object`.
//!
//! Storage never overwrites an object, so every record gets its own key (its
//! time, to the millisecond); the writer deletes the older records it
//! replaces after the new one is stored, so one always exists. Retention
//! deletes a backup's records with it.

use chrono::{DateTime, Utc};

pub use crate::object::{Kind, Mode, Record, STAMP};

/// The records among `keys`, oldest first.
pub fn records<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<Record> {
    let mut found: Vec<Record> = keys.into_iter().filter_map(Record::parse).collect();
    found.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.key.cmp(&b.key)));
    found
}

/// The drill that speaks for `backup` (for every backup with `None`) among
/// `records` (oldest first). A key-less drill proves less than a full one, so
/// its pass never clears a full drill's failure; a full pass clears both.
/// Otherwise the newest drill speaks.
pub fn verdict<'a>(records: &'a [Record], backup: Option<&str>) -> Option<&'a Record> {
    let newest = |wanted: Mode| {
        records.iter().rev().find(|r| {
            backup.is_none_or(|b| r.backup == b)
                && matches!(r.kind, Kind::Verify { mode, .. } if mode == wanted)
        })
    };
    let (full, keyless) = (newest(Mode::Full), newest(Mode::Keyless));
    let failed = |r: &Record| r.verify_ok() == Some(false);
    match (full, keyless) {
        (Some(full), _) if failed(full) => Some(full),
        (Some(full), Some(keyless)) if keyless.time > full.time => Some(keyless),
        (Some(full), _) => Some(full),
        (None, keyless) => keyless,
    }
}

/// What a drill record's body must say, as `verify::Report` writes it: the
/// fields that tie it to its key.
#[derive(serde::Deserialize)]
struct Body {
    format_version: u32,
    backup: String,
    time: DateTime<Utc>,
    mode: Mode,
    result: String,
    checks: Vec<BodyCheck>,
}

#[derive(serde::Deserialize)]
struct BodyCheck {
    #[allow(dead_code)]
    name: String,
    result: String,
}

/// Whether `body` is a drill record of `record`'s backup saying what its key
/// says (mode, result, time, every check's result): a key alone is easy to
/// forge by whoever may write beside the backup.
pub fn check_body(record: &Record, body: &[u8]) -> Result<(), String> {
    let Kind::Verify { mode, ok } = record.kind else {
        return Ok(());
    };
    let body: Body =
        serde_json::from_slice(body).map_err(|e| format!("not a drill record: {e}"))?;
    let word = if ok { "ok" } else { "failed" };
    let all_ok = body.checks.iter().all(|c| c.result == "ok");
    if body.format_version == 0
        || body.backup != record.backup
        || body.mode != mode
        || body.time != record.time
        || body.result != word
        || body.checks.is_empty()
        || all_ok != ok
    {
        return Err(format!(
            "its body does not say what its name does (backup {}, {} drill {word} at {})",
            record.backup,
            mode.as_str(),
            record.time.format(STAMP)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::verify_key;
    use chrono::TimeZone;

    #[test]
    fn keys_round_trip_and_other_objects_are_no_records() {
        let time = Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap();
        let backup = "demo-20261102T030405.000Z-0000abcd-sqlite.zst.age";
        let key = verify_key(backup, time, Mode::Full, false);
        assert_eq!(
            key,
            "demo-20261102T030405.000Z-0000abcd-sqlite.zst.age.verify-20261102T030405.000Z-full-failed.json"
        );
        let record = Record::parse(&key).unwrap();
        assert_eq!(record.backup, backup);
        assert_eq!(record.time, time);
        assert_eq!(
            record.kind,
            Kind::Verify {
                mode: Mode::Full,
                ok: false
            }
        );
        let marker =
            Record::parse(&format!("{backup}.unchanged-20261102T030405.000Z.json")).unwrap();
        assert_eq!(
            (marker.backup.as_str(), marker.kind),
            (backup, Kind::Unchanged)
        );
        for other in [
            backup.to_string(),
            format!("{backup}.json"),
            format!("{backup}.verify-x-full-ok.json"),
            format!("{backup}.verify-20261102T030405.000Z-half-ok.json"),
            "demo-20261102T030405.000Z-0000abcd-sqlite.config.yaml.zst.age".to_string(),
        ] {
            assert_eq!(Record::parse(&other), None, "{other}");
        }
    }
}
