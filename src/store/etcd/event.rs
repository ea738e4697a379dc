//! One etcd watch event as an increment carries it: a put or a delete, with
//! its revisions; keys and values base64 in JSON.

use serde::{Deserialize, Serialize};

use crate::increment::format::{Change, base64_bytes};

/// One etcd watch event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdEvent {
    /// The revision of the change (the key's mod revision).
    pub revision: i64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    #[serde(with = "base64_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(
        with = "base64_bytes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub create_revision: i64,
    #[serde(default)]
    pub version: i64,
    #[serde(default)]
    pub lease: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

impl Change for EtcdEvent {
    const SHARED_REVISIONS: bool = true;

    fn revision(&self) -> i64 {
        self.revision
    }
}
