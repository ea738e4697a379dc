//! The semantic revision: the newest change to anything a user cares about.
//!
//! An idle control plane still writes: leader-election Leases, Events, the
//! apiserver's `compact_rev_key`, kine's `gap-*` rows. The semantic revision
//! looks past those prefixes and is two numbers:
//!
//! - `revision`: the newest revision of a key outside them;
//! - `keys`: how many keys (etcd) or rows (kine) lie outside them.
//!
//! The count is what catches a delete. In etcd a deleted key simply vanishes
//! from range reads, so the newest remaining revision need not move. In kine a
//! delete is a new row, but compaction removes it together with the key's
//! older rows once it is old enough, and then the newest row is the one from
//! before. Either way the count drops. A create or an update always brings a
//! revision above every earlier one. So if neither number moved, nothing
//! outside the ignored prefixes changed; compaction of superseded rows can
//! move the kine count without a change, which only costs one extra backup.

use crate::store::kine::BOOKKEEPING_PREFIXES;

/// Written by an idle control plane on its own; never restored meaningfully
/// either. kine's bookkeeping names are ignored in etcd too, where the
/// apiserver writes `compact_rev_key` itself.
pub const IGNORED_PREFIXES: [&[u8]; 4] = [
    b"/registry/events/",
    b"/registry/leases/",
    BOOKKEEPING_PREFIXES[0],
    BOOKKEEPING_PREFIXES[1],
];

pub fn ignored(name: &[u8]) -> bool {
    IGNORED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The key ranges outside the ignored prefixes, `[start, end)`; `None`: to the last key.
pub fn ranges() -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut prefixes: Vec<&[u8]> = IGNORED_PREFIXES.to_vec();
    prefixes.sort();
    let mut ranges = Vec::new();
    // etcd refuses an empty key: the smallest key is "\0".
    let mut start = vec![0u8];
    for prefix in prefixes {
        ranges.push((start, Some(prefix.to_vec())));
        start = prefix_end(prefix);
    }
    ranges.push((start, None));
    ranges
}

/// The first key after every key with `prefix`, as etcd's `WithPrefix` computes it.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_but_the_ignored_prefixes() {
        let ranges = ranges();
        let inside = |key: &[u8]| {
            ranges
                .iter()
                .any(|(s, e)| key >= s.as_slice() && e.as_ref().is_none_or(|e| key < e.as_slice()))
        };
        for key in [
            &b"/registry/configmaps/default/x"[..],
            b"/registry/events",
            b"/registry/events0",
            b"/registry/leasesx/a",
            b"/registry/leases",
            b"compact_rev_kez",
            b"gap",
            b"gap.1",
            b"zzz",
            b"\x01",
        ] {
            assert!(
                inside(key) && !ignored(key),
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
        for key in [
            &b"/registry/events/default/e1"[..],
            b"/registry/leases/kube-system/kube-scheduler",
            b"compact_rev_key",
            b"compact_rev_key_apiserver",
            b"gap-17",
        ] {
            assert!(
                !inside(key) && ignored(key),
                "{:?}",
                String::from_utf8_lossy(key)
            );
        }
    }
}
