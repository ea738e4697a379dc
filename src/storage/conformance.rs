//! The contract every [`Storage`] backend keeps, written once. A backend's
//! tests run it with [`storage_conformance!`] and a [`Backend`]: a fresh
//! storage, plus a look behind it at what a reader never sees (partial files,
//! unfinished multipart uploads), so "nothing left" is checked where it lives.

use std::io::Write;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::io::AsyncReadExt;

use super::{Body, IncompleteBody, ObjectExists, ObjectNotFound, Storage, body_channel};

const MIB: usize = 1 << 20;
/// Sizes that take every path: S3 backends under test cut 5 MiB parts, so
/// the small object goes up in one PUT and the large one in three parts.
const SIZES: [usize; 2] = [1000, 11 * MIB];

/// A backend under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// What `location()` starts with (`file://`, `s3://`): shows which backend ran.
    const SCHEME: &'static str;

    fn storage(&self) -> &dyn Storage;

    /// The names of the files that hold unfinished writes (partial files, a
    /// server's upload files): what a failed or cancelled put must not leave.
    async fn leftovers(&self) -> Vec<String>;

    /// Leaves an unfinished write of `key` as a killed agent would, started
    /// `age` ago; returns a name that its [`leftovers`](Self::leftovers) contain.
    async fn leave_unfinished(&self, key: &str, age: Duration) -> String;
}

/// Runs each check below as a test of its own, on a fresh backend from the
/// async fn `$backend`.
macro_rules! storage_conformance {
    ($backend:path) => {
        $crate::storage::conformance::storage_conformance!(@each $backend;
            stores_reads_lists_and_deletes,
            a_missing_key_is_object_not_found,
            refuses_names_outside_its_place,
            never_overwrites,
            an_object_appears_only_when_whole,
            an_incomplete_body_leaves_nothing,
            a_cancelled_put_leaves_nothing,
            sweeps_only_stale_unfinished_writes,
            deleting_what_is_gone_succeeds
        );
    };
    (@each $backend:path; $($check:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            $crate::storage::conformance::$check(&$backend().await).await;
        }
    )*};
}
pub(crate) use storage_conformance;

/// The storage of `backend`, once its location shows it is the expected kind.
fn storage_of<B: Backend>(backend: &B) -> &dyn Storage {
    let storage = backend.storage();
    let location = storage.location();
    assert!(
        location.starts_with(B::SCHEME),
        "{location} is not {}",
        B::SCHEME
    );
    storage
}

/// `len` bytes, different for each `seed`.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

/// A body as the pipeline hands it over, in 1 MiB chunks.
fn body_of(data: Vec<u8>) -> Body {
    let (mut writer, body) = body_channel(MIB, 4);
    tokio::task::spawn_blocking(move || {
        writer.write_all(&data)?;
        writer.finish()
    });
    body
}

async fn read(storage: &dyn Storage, key: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    storage.get(key).await?.read_to_end(&mut data).await?;
    Ok(data)
}

async fn assert_not_found(storage: &dyn Storage, key: &str) {
    let err = read(storage, key).await.unwrap_err();
    assert!(err.is::<ObjectNotFound>(), "{key}: {err:#}");
    let message = err.to_string();
    assert!(
        message.contains(key) && message.contains(&storage.location()),
        "{message}"
    );
}

/// Every listed key with its size, sorted.
pub async fn listed(storage: &dyn Storage) -> Vec<(String, u64)> {
    let mut listed: Vec<_> = storage
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    listed.sort();
    listed
}

/// Waits (bounded) until the backend holds no unfinished write: some cleanup
/// (a cancelled put's abort, a server dropping a cut-off request) runs after
/// the put returns.
async fn assert_no_leftovers_soon<B: Backend>(backend: &B, after: &str) {
    let mut left = Vec::new();
    for _ in 0..100 {
        left = backend.leftovers().await;
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{after}: {left:?} still there after 5 s");
}

pub async fn stores_reads_lists_and_deletes<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    assert!(listed(storage).await.is_empty());
    for (n, len) in SIZES.into_iter().enumerate() {
        storage
            .put(&format!("o{n}"), body_of(data(len, 1)))
            .await
            .unwrap();
        assert_eq!(read(storage, &format!("o{n}")).await.unwrap(), data(len, 1));
    }
    let modified = storage.list().await.unwrap()[0].modified.unwrap();
    assert!(
        (Utc::now() - modified).num_minutes().abs() < 5,
        "{modified}"
    );
    let sizes = SIZES.map(|s| s as u64);
    assert_eq!(
        listed(storage).await,
        [("o0".to_string(), sizes[0]), ("o1".to_string(), sizes[1])]
    );
    storage.delete("o0").await.unwrap();
    // Deleting what is gone is not an error: retention may race another agent.
    storage.delete("o0").await.unwrap();
    assert_not_found(storage, "o0").await;
    assert_eq!(listed(storage).await, [("o1".to_string(), sizes[1])]);
    assert!(backend.leftovers().await.is_empty());
}

pub async fn a_missing_key_is_object_not_found<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    assert_not_found(storage, "missing").await;
    storage.delete("missing").await.unwrap();
}

pub async fn refuses_names_outside_its_place<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    for bad in ["", "a/b", "../x", ".partial-x", ".hidden"] {
        let put = storage.put(bad, Body::from_bytes(b"x".to_vec())).await;
        let get = storage.get(bad).await.err();
        let delete = storage.delete(bad).await;
        for err in [put.unwrap_err(), get.unwrap(), delete.unwrap_err()] {
            assert!(
                format!("{err:#}").contains("invalid object name"),
                "{bad:?}: {err:#}"
            );
        }
    }
    assert!(listed(storage).await.is_empty());
}

pub async fn never_overwrites<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    for len in SIZES {
        let key = format!("{len}.zst.age");
        storage.put(&key, body_of(data(len, 1))).await.unwrap();
        let err = storage.put(&key, body_of(data(len, 2))).await.unwrap_err();
        assert!(err.is::<ObjectExists>(), "{key}: {err:#}");
        assert!(format!("{err:#}").contains("not overwritten"), "{err:#}");
        assert_eq!(read(storage, &key).await.unwrap(), data(len, 1), "{key}");
    }
    // The refused writes left nothing unfinished either.
    assert!(backend.leftovers().await.is_empty());
}

pub async fn an_object_appears_only_when_whole<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    for len in SIZES {
        let key = format!("{len}.zst.age");
        let whole = data(len, 3);
        let (mut writer, body) = body_channel(MIB, 4);
        let (half_written, half_sent) = tokio::sync::oneshot::channel();
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        let producer = tokio::task::spawn_blocking({
            let whole = whole.clone();
            move || {
                writer.write_all(&whole[..len / 2])?;
                let _ = half_written.send(());
                let _ = wait.recv();
                writer.write_all(&whole[len / 2..])?;
                writer.finish()
            }
        });
        let midway = async {
            half_sent.await.unwrap();
            let keys = listed(storage).await;
            assert!(
                !keys.iter().any(|(k, _)| *k == key),
                "{key} listed half-written"
            );
            assert_not_found(storage, &key).await;
            go_on.send(()).unwrap();
        };
        let (put, ()) = tokio::join!(storage.put(&key, body), midway);
        put.unwrap();
        producer.await.unwrap().unwrap();
        assert_eq!(read(storage, &key).await.unwrap(), whole);
    }
    assert_eq!(listed(storage).await.len(), SIZES.len());
}

pub async fn an_incomplete_body_leaves_nothing<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    for len in SIZES {
        let key = format!("{len}.zst.age");
        let (mut writer, body) = body_channel(MIB, 4);
        // All but the end, then the producer fails: no finish().
        let producer = tokio::task::spawn_blocking(move || writer.write_all(&data(len, 4)));
        let err = storage.put(&key, body).await.unwrap_err();
        producer.await.unwrap().unwrap();
        assert!(IncompleteBody::is_cause_of(&err), "{key}: {err:#}");
        assert_not_found(storage, &key).await;
    }
    assert!(listed(storage).await.is_empty());
    // A part upload cut off midway may take the server a moment to drop.
    assert_no_leftovers_soon(backend, "failed puts").await;
}

pub async fn a_cancelled_put_leaves_nothing<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    let (mut writer, body) = body_channel(MIB, 4);
    let (written, midway) = tokio::sync::oneshot::channel();
    let (go_on, wait) = std::sync::mpsc::channel::<()>();
    // The large body but its end, then the producer stalls. With 4 chunks in
    // the channel, the put has taken in more than a 5 MiB part by then: on S3
    // the multipart upload is under way.
    let producer = tokio::task::spawn_blocking(move || {
        writer.write_all(&data(SIZES[1], 5))?;
        let _ = written.send(());
        let _ = wait.recv();
        writer.finish()
    });
    let mut put = Box::pin(storage.put("cancelled", body));
    tokio::select! {
        done = &mut put => panic!("the put ended without its body: {done:?}"),
        sent = midway => sent.unwrap(),
    }
    assert!(!backend.leftovers().await.is_empty(), "no write under way");
    // The put goes midway, as at a shutdown.
    drop(put);
    drop(go_on);
    assert!(producer.await.unwrap().is_err(), "storage kept reading");
    assert_no_leftovers_soon(backend, "a cancelled put").await;
    assert!(listed(storage).await.is_empty());
}

pub async fn sweeps_only_stale_unfinished_writes<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    storage.put("kept", body_of(data(100, 6))).await.unwrap();
    let stale = backend
        .leave_unfinished("stale", Duration::from_secs(7200))
        .await;
    let fresh = backend.leave_unfinished("fresh", Duration::ZERO).await;
    let names = |leftovers: &[String], name: &str| leftovers.iter().any(|l| l.contains(name));
    let left = backend.leftovers().await;
    assert!(names(&left, &stale) && names(&left, &fresh), "{left:?}");
    assert_eq!(listed(storage).await, [("kept".to_string(), 100)]);

    let cutoff = Utc::now() - chrono::Duration::hours(1);
    assert_eq!(storage.abort_stale_uploads(cutoff).await.unwrap(), 1);
    let left = backend.leftovers().await;
    assert!(!names(&left, &stale) && names(&left, &fresh), "{left:?}");

    let later = Utc::now() + chrono::Duration::minutes(1);
    assert_eq!(storage.abort_stale_uploads(later).await.unwrap(), 1);
    assert_eq!(backend.leftovers().await, Vec::<String>::new());
    assert_eq!(listed(storage).await, [("kept".to_string(), 100)]);
}

/// Agents sharing a destination run retention on the same backups: whichever
/// deletes an object second finds it gone, and that is a deletion too.
pub async fn deleting_what_is_gone_succeeds<B: Backend>(backend: &B) {
    let storage = storage_of(backend);
    storage.put("gone", body_of(data(100, 7))).await.unwrap();
    storage.put("kept", body_of(data(100, 8))).await.unwrap();
    let at_once = futures_util::future::join_all((0..4).map(|_| storage.delete("gone"))).await;
    for deleted in at_once {
        deleted.unwrap();
    }
    storage.delete("gone").await.unwrap();
    storage.delete("never-stored").await.unwrap();
    assert_not_found(storage, "gone").await;
    assert_eq!(listed(storage).await, [("kept".to_string(), 100)]);
}
