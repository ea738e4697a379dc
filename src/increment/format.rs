//! An increment's plaintext: JSON lines, so `age -d | zstd -d | jq` reads it
//! without vcbackup. A header line, one line per change in revision order,
//! then an end line with the count: a file cut short lacks the end line even
//! where the layers around it would not notice.
//!
//! What a change line holds is the store's (`store::kine::KineRow`, one row of
//! kine's table; `store::etcd::EtcdEvent`, one watch event): anything with a
//! revision that serializes. Keys and values are bytes: base64 in JSON.

use std::io::{BufRead, Write};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::manifest::SourceKind;

/// The format's version, in every header.
pub const VERSION: u32 = 1;

/// The first line of an increment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub vcbackup_increment: u32,
    pub kind: SourceKind,
    /// The full backup this increment continues.
    pub base: String,
    /// The revisions it covers, both ends included: `first` is one above the
    /// revision shipped before it (the base's or the previous increment's).
    pub first_revision: i64,
    pub last_revision: i64,
    /// The store's compact revision when the changes were read.
    pub compact_revision: i64,
}

/// A change in an increment (a kine row, an etcd event), at a revision.
pub trait Change: serde::de::DeserializeOwned {
    /// Whether several changes may share a revision (an etcd transaction);
    /// kine's ids are unique.
    const SHARED_REVISIONS: bool;

    fn revision(&self) -> i64;
}

/// The last line: how many changes came before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct End {
    end: u64,
}

/// Writes an increment line by line.
pub struct Writer<'a> {
    out: &'a mut dyn Write,
    count: u64,
}

impl<'a> Writer<'a> {
    pub fn start(out: &'a mut dyn Write, header: &Header) -> Result<Self> {
        let mut writer = Writer { out, count: 0 };
        writer.line(header)?;
        Ok(writer)
    }

    pub fn change(&mut self, change: &impl Serialize) -> Result<()> {
        self.line(change)?;
        self.count += 1;
        Ok(())
    }

    /// Writes the end line; returns the number of changes.
    pub fn finish(mut self) -> Result<u64> {
        let count = self.count;
        self.line(&End { end: count })?;
        Ok(count)
    }

    fn line(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut *self.out, value).context("write the increment")?;
        self.out.write_all(b"\n").context("write the increment")
    }
}

/// Reads an increment back: the header, then each change (in revision order,
/// inside the header's revisions), then checks the end line.
pub struct Reader<R> {
    input: R,
    what: String,
    line: Vec<u8>,
    count: u64,
    previous: Option<i64>,
    pub header: Header,
}

impl<R: BufRead> Reader<R> {
    pub fn open(mut input: R, what: &str) -> Result<Self> {
        let mut line = Vec::new();
        read_line(&mut input, &mut line, what)?;
        let header: Header = serde_json::from_slice(&line)
            .with_context(|| format!("read {what}: not a vcbackup increment (bad header)"))?;
        if header.vcbackup_increment > VERSION {
            bail!(
                "read {what}: increment format {} is newer than this vcbackup understands ({VERSION}); upgrade vcbackup",
                header.vcbackup_increment
            );
        }
        Ok(Reader {
            input,
            what: what.to_string(),
            line,
            count: 0,
            previous: None,
            header,
        })
    }

    /// How many changes were read.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The next change, or `None` after the end line (whose count must match).
    pub fn next<T: Change>(&mut self) -> Result<Option<T>> {
        let what = &self.what;
        if !read_line(&mut self.input, &mut self.line, what)? {
            bail!("read {what}: the increment is truncated (no end line)");
        }
        if let Ok(End { end }) = serde_json::from_slice::<End>(&self.line) {
            if end != self.count {
                bail!(
                    "read {what}: the end line counts {end} changes, {} were read",
                    self.count
                );
            }
            return Ok(None);
        }
        let change: T = serde_json::from_slice(&self.line).with_context(|| {
            format!("read {what}: change {} is not well formed", self.count + 1)
        })?;
        let (first, last) = (self.header.first_revision, self.header.last_revision);
        let revision = change.revision();
        let in_order = match self.previous {
            None => true,
            Some(previous) if T::SHARED_REVISIONS => revision >= previous,
            Some(previous) => revision > previous,
        };
        if !in_order || revision < first || revision > last {
            bail!(
                "read {what}: change at revision {revision} is out of order or outside the increment's revisions {first}..={last}"
            );
        }
        self.previous = Some(revision);
        self.count += 1;
        Ok(Some(change))
    }
}

/// Reads one line without its newline; false at the end of the input.
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>, what: &str) -> Result<bool> {
    line.clear();
    let n = input
        .read_until(b'\n', line)
        .with_context(|| format!("read {what}: the increment is truncated or corrupt"))?;
    if n == 0 {
        return Ok(false);
    }
    if line.last() != Some(&b'\n') {
        bail!("read {what}: the increment is truncated (a line without its end)");
    }
    line.pop();
    Ok(true)
}

/// Bytes as base64 in JSON (`#[serde(with = ...)]`), `null` for none.
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => s.serialize_str(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => STANDARD
                .decode(text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            vcbackup_increment: VERSION,
            kind: SourceKind::Sqlite,
            base: "demo-20261128T090000.000Z-3f9c1a07-sqlite.zst.age".into(),
            first_revision: 11,
            last_revision: 12,
            compact_revision: 3,
        }
    }

    /// A change with unique revisions, as kine's rows have.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Row {
        id: i64,
        #[serde(with = "base64_bytes")]
        value: Option<Vec<u8>>,
    }

    impl Change for Row {
        const SHARED_REVISIONS: bool = false;

        fn revision(&self) -> i64 {
            self.id
        }
    }

    /// A change whose revision several may share, as etcd's events do.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    struct Event {
        revision: i64,
    }

    impl Change for Event {
        const SHARED_REVISIONS: bool = true;

        fn revision(&self) -> i64 {
            self.revision
        }
    }

    fn row(id: i64) -> Row {
        Row {
            id,
            value: Some(vec![0, 159, 146, 150, b'\n']),
        }
    }

    fn written(rows: &[Row]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut writer = Writer::start(&mut out, &header()).unwrap();
        for row in rows {
            writer.change(row).unwrap();
        }
        assert_eq!(writer.finish().unwrap(), rows.len() as u64);
        out
    }

    #[test]
    fn rows_round_trip_with_binary_values() {
        let rows = [row(11), row(12)];
        let data = written(&rows);
        let mut reader = Reader::open(&data[..], "incr").unwrap();
        assert_eq!(reader.header, header());
        assert_eq!(reader.next::<Row>().unwrap(), Some(rows[0].clone()));
        assert_eq!(reader.next::<Row>().unwrap(), Some(rows[1].clone()));
        assert_eq!(reader.next::<Row>().unwrap(), None);
    }

    fn read_all<T: Change>(data: &[u8]) -> Result<u64> {
        let mut reader = Reader::open(data, "incr")?;
        while reader.next::<T>()?.is_some() {}
        Ok(reader.count())
    }

    #[test]
    fn changes_come_in_revision_order_inside_the_header_range() {
        assert_eq!(read_all::<Row>(&written(&[row(11), row(12)])).unwrap(), 2);
        for rows in [
            [row(12), row(11)],
            [row(11), row(11)],
            [row(10), row(11)],
            [row(11), row(13)],
        ] {
            let err = read_all::<Row>(&written(&rows)).unwrap_err();
            assert!(
                format!("{err:#}").contains("out of order or outside"),
                "{err:#}"
            );
        }
        // An etcd transaction: several events at one revision.
        let event = |revision| Event { revision };
        let mut out = Vec::new();
        let mut writer = Writer::start(&mut out, &header()).unwrap();
        for revision in [11, 11, 12] {
            writer.change(&event(revision)).unwrap();
        }
        writer.finish().unwrap();
        assert_eq!(read_all::<Event>(&out).unwrap(), 3);
    }

    #[test]
    fn a_cut_increment_does_not_read() {
        let data = written(&[row(11), row(12)]);
        // Cut at every line end: each prefix lacks the end line.
        for cut in data
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .filter(|i| *i < data.len())
        {
            let mut reader = Reader::open(&data[..cut], "incr").unwrap();
            let error = loop {
                match reader.next::<Row>() {
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("a cut at {cut} read as complete"),
                    Err(err) => break err,
                }
            };
            assert!(format!("{error:#}").contains("truncated"), "{error:#}");
        }
        // Mid-line too.
        let mut reader = Reader::open(&data[..data.len() - 3], "incr").unwrap();
        let mut last = Ok(None);
        for _ in 0..4 {
            last = reader.next::<Row>();
            if last.is_err() {
                break;
            }
        }
        assert!(last.is_err());
    }
}
