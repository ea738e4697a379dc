//! etcd: the only module that knows etcd's client, its snapshots and bbolt.
//!
//! - `client`: the channel, TLS from the pod's certificates, errors explained;
//! - `source`: a member snapshotted through the Maintenance API (`EtcdSource`);
//! - `digest`: etcd's trailing SHA-256 of a snapshot;
//! - `bolt`: the bbolt reader (the revision as a snapshot streams, a bucket on disk);
//! - `pairs`: a backup as key/value pairs;
//! - `event`, `feed` and `overlay`: increments, watch events shipped and laid
//!   back over a snapshot's pairs;
//! - `drill`: what a drill checks of an etcd backup.

pub mod bolt;
pub mod client;
pub mod digest;
pub mod drill;
pub mod event;
pub mod feed;
pub mod overlay;
pub mod pairs;
pub mod source;

pub use bolt::is_bolt;
pub use client::{EtcdOptions, EtcdTls, default_cert_paths};
pub use digest::{check_restored_snapshot, verify_snapshot_digest};
pub use event::EtcdEvent;
pub use overlay::Changes;
pub use source::EtcdSource;
