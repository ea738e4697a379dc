//! What the scenario tests share, one file per fixture:
//!
//! - [`binary`]: the built binary, run as a user or an operator would, and
//!   what it leaves in a directory destination;
//! - [`daemon`]: the sidecar (`vcbackup run`) as a process, its log kept;
//! - [`tools`]: the external tools the tests need, age keys, digests;
//! - [`kine`]: kine-shaped SQLite databases (also the benchmark's generator);
//! - [`writer`]: a kine-shaped writer, the prefix check of a restore, and a
//!   step repeated on a thread;
//! - [`http`]: free ports, plain HTTP GETs, the one `wait_for`, Prometheus samples;
//! - [`pki`]: a vCluster PKI made by openssl, broken one way at a time, and
//!   the API discovery kubectl needs to read a manifest;
//! - [`etcd`]: etcd members and clusters on loopback, with certificates,
//!   restarted or restored from a snapshot;
//! - [`s3`]: S3 servers: s3s-fs, a fault-injecting proxy, an EKS Pod Identity
//!   agent, moto with IAM authentication, a request-recording proxy, and an
//!   SDK client.
//!
//! Each test binary uses only part of this, hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod binary;
pub mod daemon;
pub mod etcd;
pub mod http;
pub mod kine;
pub mod pki;
pub mod s3;
pub mod tools;
pub mod writer;

// Re-exported for the tests; a test binary that uses none of them is fine.
#[allow(unused_imports)]
pub use {
    binary::*,
    daemon::Daemon,
    etcd::Etcd,
    http::*,
    kine::{incompressible_kine_db, kine_digest, small_kine_db},
    tools::*,
    writer::{ROWS_PER_TXN, Repeating, Writer, committed_prefix, start_paced_writer, start_writer},
};
