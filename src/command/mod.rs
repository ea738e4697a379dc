//! One module per command, each a `run` over its already-resolved
//! configuration: the command line has parsed and checked every value and
//! opened the storage, so a command only does its work and prints its output.
//! (`run`, the sidecar, is `daemon::run` over a `DaemonConfig`.)

pub mod backup;
pub mod decrypt;
pub mod export;
pub mod fleet;
pub mod list;
pub mod prune;
pub mod restore;
pub mod verify;
