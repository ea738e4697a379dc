//! Object names: what every object vcbackup stores is called, and what a
//! name says. A listing alone must tell backups, manifests, saved configs,
//! increments and drill records apart (retention, `list` and `fleet` decide
//! from it without a GET), so every name is made and read here and nowhere
//! else:
//!
//! - `<vcluster>-<time>-<writer>-<kind>.zst[.age]`: a backup;
//! - `<object>.json`: the manifest of a backup or an increment, written after it;
//! - `<backup stem>.config.yaml.zst[.age]`: the vCluster config saved with a backup;
//! - `<backup stem>.incr-<captured>-<first>-<last>-<writer>.zst[.age]`: an increment;
//! - `<backup>.verify-<time>-<mode>-<result>.json`: one restore drill;
//! - `<backup>.unchanged-<time>.json`: the store was unchanged since `<backup>` at `<time>`.
//!
//! Fixed-width UTC times make names sort by time; `writer` is random per
//! object, so two agents under one name (HA replicas) never pick the same one.

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

/// The time format of every name: fixed width, sorts as text.
pub const STAMP: &str = "%Y%m%dT%H%M%S%.3fZ";
pub const MANIFEST_SUFFIX: &str = ".json";
const INCREMENT: &str = ".incr-";
const VERIFY: &str = ".verify-";
const UNCHANGED: &str = ".unchanged-";
const CONFIG: &str = ".config.yaml";

/// What kind of backing store a backup came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// kine's SQLite database, copied page by page.
    Sqlite,
    /// An etcd snapshot, with etcd's trailing SHA-256.
    Etcd,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Sqlite => "sqlite",
            SourceKind::Etcd => "etcd",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "sqlite" => Some(SourceKind::Sqlite),
            "etcd" => Some(SourceKind::Etcd),
            _ => None,
        }
    }
}

impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object, as its name describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Backup {
        name: String,
        started: DateTime<Utc>,
        kind: SourceKind,
    },
    /// A backup's manifest.
    BackupManifest {
        backup: String,
    },
    /// The vCluster config saved beside a backup.
    Config {
        backup: String,
    },
    Increment(IncrementRef),
    /// An increment's manifest.
    IncrementManifest(IncrementRef),
    Record(Record),
}

impl Object {
    /// What `key` names; `None` for an object that is not vcbackup's.
    pub fn parse(key: &str) -> Option<Object> {
        if let Some(record) = Record::parse(key) {
            return Some(Object::Record(record));
        }
        if let Some(name) = key.strip_suffix(MANIFEST_SUFFIX) {
            return match Object::parse(name)? {
                Object::Backup { name, .. } => Some(Object::BackupManifest { backup: name }),
                Object::Increment(increment) => Some(Object::IncrementManifest(increment)),
                _ => None,
            };
        }
        if let Some(increment) = IncrementRef::parse(key) {
            return Some(Object::Increment(increment));
        }
        let (stem, sealed) = split_sealed(key);
        if let Some(backup) = stem.strip_suffix(CONFIG) {
            let backup = format!("{backup}{sealed}");
            parse_backup_name(&backup)?;
            return Some(Object::Config { backup });
        }
        let (started, kind) = parse_backup_name(key)?;
        Some(Object::Backup {
            name: key.to_string(),
            started,
            kind,
        })
    }
}

/// The key of the manifest of the backup or increment `name`.
pub fn manifest_key(name: &str) -> String {
    format!("{name}{MANIFEST_SUFFIX}")
}

/// The object name of a backup: `<vcluster>-<UTC time>-<writer>-<kind>.zst[.age]`.
pub fn backup_name(
    vcluster: &str,
    started: DateTime<Utc>,
    writer: u32,
    kind: SourceKind,
    encrypted: bool,
) -> String {
    let stamp = started.format(STAMP);
    let suffix = if encrypted { ".zst.age" } else { ".zst" };
    format!("{vcluster}-{stamp}-{writer:08x}-{kind}{suffix}")
}

/// The start time and kind a backup's object name carries (see [`backup_name`]);
/// `None` for any other object.
fn parse_backup_name(name: &str) -> Option<(DateTime<Utc>, SourceKind)> {
    let (stem, sealed) = split_sealed(name);
    if sealed.is_empty() {
        return None;
    }
    // The virtual cluster's name may hold `-`: read from the right.
    let (rest, kind) = stem.rsplit_once('-')?;
    let kind = SourceKind::parse(kind)?;
    let (rest, writer) = rest.rsplit_once('-')?;
    if !is_writer(writer) {
        return None;
    }
    let (_, stamp) = rest.rsplit_once('-')?;
    Some((parse_stamp(stamp)?, kind))
}

/// The name of the config object beside backup `backup_name`:
/// `demo-…-sqlite.zst.age` → `demo-…-sqlite.config.yaml.zst.age`.
pub fn config_name(backup_name: &str) -> String {
    let (stem, sealed) = match split_sealed(backup_name) {
        (stem, "") => (stem, ".zst"),
        found => found,
    };
    format!("{stem}{CONFIG}{sealed}")
}

/// An increment as its object name describes it: enough to assemble chains,
/// apply retention and show freshness from a listing alone, without a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncrementRef {
    pub name: String,
    pub base: String,
    pub captured: DateTime<Utc>,
    pub first_revision: i64,
    pub last_revision: i64,
}

impl IncrementRef {
    /// Reads an increment's object name; `None` for any other object (its
    /// manifest included).
    pub fn parse(name: &str) -> Option<IncrementRef> {
        let (stem, sealed) = split_sealed(name);
        if sealed.is_empty() {
            return None;
        }
        let (base_stem, rest) = stem.rsplit_once(INCREMENT)?;
        // `<captured>-<first>-<last>-<writer>`: the time holds no `-`.
        let mut parts = rest.splitn(4, '-');
        let captured = parse_stamp(parts.next()?)?;
        let first_revision = parts.next()?.parse().ok()?;
        let last_revision = parts.next()?.parse().ok()?;
        if !is_writer(parts.next()?) {
            return None;
        }
        let base = format!("{base_stem}{sealed}");
        parse_backup_name(&base)?;
        Some(IncrementRef {
            name: name.to_string(),
            base,
            captured,
            first_revision,
            last_revision,
        })
    }
}

/// The object name of an increment of `base` covering `first..=last`, read at `captured`:
/// `<base stem>.incr-<captured>-<first>-<last>-<writer>.zst[.age]`.
pub fn increment_name(
    base: &str,
    captured: DateTime<Utc>,
    first: i64,
    last: i64,
    writer: u32,
) -> String {
    let (stem, sealed) = split_sealed(base);
    let stamp = captured.format(STAMP);
    format!("{stem}{INCREMENT}{stamp}-{first}-{last}-{writer:08x}{sealed}")
}

/// How much of a backup a drill could check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decrypted and decompressed, the database itself checked.
    Full,
    /// Without the private key: the stored bytes and the object's format only.
    Keyless,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Keyless => "keyless",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "full" => Some(Mode::Full),
            "keyless" => Some(Mode::Keyless),
            _ => None,
        }
    }
}

/// What a record says, read from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Verify { mode: Mode, ok: bool },
    Unchanged,
}

/// One record beside a backup (see `records`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub backup: String,
    pub time: DateTime<Utc>,
    pub kind: Kind,
}

impl Record {
    /// Reads a record from its key; `None` for any other object.
    pub fn parse(key: &str) -> Option<Record> {
        let stem = key.strip_suffix(MANIFEST_SUFFIX)?;
        if let Some((backup, rest)) = stem.rsplit_once(VERIFY) {
            // `<time>-<mode>-<result>`: the time holds no `-`.
            let mut parts = rest.splitn(3, '-');
            let time = parse_stamp(parts.next()?)?;
            let mode = Mode::parse(parts.next()?)?;
            let ok = match parts.next()? {
                "ok" => true,
                "failed" => false,
                _ => return None,
            };
            return Some(Record {
                key: key.to_string(),
                backup: backup.to_string(),
                time,
                kind: Kind::Verify { mode, ok },
            });
        }
        let (backup, time) = stem.rsplit_once(UNCHANGED)?;
        Some(Record {
            key: key.to_string(),
            backup: backup.to_string(),
            time: parse_stamp(time)?,
            kind: Kind::Unchanged,
        })
    }

    pub fn verify_ok(&self) -> Option<bool> {
        match self.kind {
            Kind::Verify { ok, .. } => Some(ok),
            Kind::Unchanged => None,
        }
    }
}

/// The key of a drill's record of `backup`.
pub fn verify_key(backup: &str, time: DateTime<Utc>, mode: Mode, ok: bool) -> String {
    let result = if ok { "ok" } else { "failed" };
    format!(
        "{backup}{VERIFY}{}-{}-{result}{MANIFEST_SUFFIX}",
        time.format(STAMP),
        mode.as_str()
    )
}

/// The key of the record that the store was unchanged since `backup` at `time`.
pub fn unchanged_key(backup: &str, time: DateTime<Utc>) -> String {
    format!("{backup}{UNCHANGED}{}{MANIFEST_SUFFIX}", time.format(STAMP))
}

pub fn parse_stamp(text: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(text, STAMP)
        .ok()
        .map(|t| t.and_utc())
}

fn is_writer(text: &str) -> bool {
    text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A name's stem and its sealing suffix (`.zst.age`, `.zst`, or none).
fn split_sealed(name: &str) -> (&str, &str) {
    for sealed in [".zst.age", ".zst"] {
        if let Some(stem) = name.strip_suffix(sealed) {
            return (stem, sealed);
        }
    }
    (name, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const BACKUP: &str = "demo-20261102T030405.000Z-0000abcd-sqlite.zst.age";

    #[test]
    fn every_name_parses_back_to_what_made_it() {
        let time = Utc.with_ymd_and_hms(2026, 11, 2, 3, 4, 5).unwrap();
        let backup = backup_name("demo", time, 0xabcd, SourceKind::Sqlite, true);
        assert_eq!(backup, BACKUP);
        assert_eq!(
            Object::parse(&backup),
            Some(Object::Backup {
                name: backup.clone(),
                started: time,
                kind: SourceKind::Sqlite
            })
        );
        assert_eq!(
            Object::parse(&manifest_key(&backup)),
            Some(Object::BackupManifest {
                backup: backup.clone()
            })
        );
        assert_eq!(
            Object::parse(&config_name(&backup)),
            Some(Object::Config {
                backup: backup.clone()
            })
        );
        let increment = increment_name(&backup, time, 5, 9, 1);
        let Some(Object::Increment(parsed)) = Object::parse(&increment) else {
            panic!("{increment}");
        };
        assert_eq!((parsed.base.as_str(), parsed.first_revision), (BACKUP, 5));
        assert!(matches!(
            Object::parse(&manifest_key(&increment)),
            Some(Object::IncrementManifest(_))
        ));
        let drill = verify_key(&backup, time, Mode::Keyless, true);
        assert!(matches!(Object::parse(&drill), Some(Object::Record(r)) if r.backup == backup));
        let unchanged = unchanged_key(&backup, time);
        assert!(matches!(
            Object::parse(&unchanged),
            Some(Object::Record(Record {
                kind: Kind::Unchanged,
                ..
            }))
        ));
        for other in [
            "demo.zst",
            "notes.txt",
            "demo-20261102T030405.000Z-0000abcd-sqlite",
            "demo-20261102T030405.000Z-0000abcd-mysql.zst",
            "demo-20261102T030405.000Z-xyz-sqlite.zst",
            "x.config.yaml.zst",
            "demo.zst.json",
            "x.json.json",
        ] {
            assert_eq!(Object::parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_config_name_keeps_the_sealing_of_its_backup() {
        assert_eq!(
            config_name("demo-20261102T030405.000Z-00000000-etcd.zst"),
            "demo-20261102T030405.000Z-00000000-etcd.config.yaml.zst"
        );
    }
}
