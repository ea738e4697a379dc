//! One module per command, each a `run` over its already-resolved
//! configuration: the command line has parsed and checked every value and
//! opened the storage, so a command only does its work and prints its output.

pub mod fleet;
pub mod verify;
