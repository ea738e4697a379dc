//! kine's SQLite database: the only module that knows kine's table, its
//! revision and its bookkeeping rows.
//!
//! - `source`: the live database, snapshotted page by page (`SqliteSource`);
//! - `semantic`: the newest change a user cares about;
//! - `pairs`: a backup as key/value pairs;
//! - `row`, `feed` and `apply`: increments, kine rows by id, read and applied;
//! - `restore`: the rules for a restored database (revision bump, integrity check);
//! - `drill`: what a drill checks of a kine backup.
//!
//! This file holds what they share: the schema probe, the revision and the
//! compact revision, and the names of kine's own bookkeeping rows.

pub mod apply;
pub mod drill;
pub mod feed;
pub mod live;
pub mod pairs;
pub mod restore;
pub mod row;
pub mod semantic;
pub mod source;

use std::io::Read;
use std::path::Path;

use rusqlite::Connection;

pub use apply::KineApply;
pub use restore::{IntegrityCheck, live_revision, prepare_restored};
pub use row::KineRow;
pub use source::SqliteSource;

/// The first 16 bytes of every SQLite database file.
pub const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// kine's own rows, not keys: the compact revision's `compact_rev_key` (and the
/// apiserver's `compact_rev_key*` beside it) and the `gap-*` fillers of missing revisions.
pub const BOOKKEEPING_PREFIXES: [&[u8]; 2] = [b"compact_rev_key", b"gap-"];

/// Whether a row name is kine's bookkeeping rather than a key.
pub fn is_bookkeeping(name: &[u8]) -> bool {
    BOOKKEEPING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Whether the file starts like an SQLite database.
pub fn is_sqlite(path: &Path) -> bool {
    let mut header = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok_and(|()| &header == SQLITE_HEADER)
}

/// Whether the database has kine's table: without it, it is some other SQLite database.
pub fn has_kine_table(conn: &Connection) -> rusqlite::Result<bool> {
    let count: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'kine'",
        [],
        |row| row.get(0),
    )?;
    Ok(count > 0)
}

/// The higher of `max(id)` and kine's `sqlite_sequence` entry (rows
/// compacted away still count); 0 for an empty store.
pub fn kine_revision(conn: &Connection) -> rusqlite::Result<i64> {
    let max_id: Option<i64> = conn.query_row("SELECT max(id) FROM kine", [], |row| row.get(0))?;
    let has_sequence: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_sequence'",
        [],
        |row| row.get(0),
    )?;
    let seq: Option<i64> = if has_sequence > 0 {
        conn.query_row(
            "SELECT max(seq) FROM sqlite_sequence WHERE name = 'kine'",
            [],
            |row| row.get(0),
        )?
    } else {
        None
    };
    Ok(max_id.unwrap_or(0).max(seq.unwrap_or(0)))
}

/// The compact revision kine keeps in the one `compact_rev_key` row; 0 before any.
pub fn compact_revision(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce(max(prev_revision), 0) FROM kine WHERE name = 'compact_rev_key'",
        [],
        |row| row.get(0),
    )
}

/// Raises the compact revision (the `compact_rev_key` row's `prev_revision`)
/// to at least `revision`, never lowering it; returns whether the row exists.
pub fn raise_compact_revision(conn: &Connection, revision: i64) -> rusqlite::Result<bool> {
    let rows = conn.execute(
        "UPDATE kine SET prev_revision = max(coalesce(prev_revision, 0), ?1) WHERE name = 'compact_rev_key'",
        [revision],
    )?;
    Ok(rows > 0)
}

/// Raises kine's AUTOINCREMENT counter to at least `revision`, so revisions
/// of rows compacted away are never handed out again.
pub fn raise_sequence(conn: &Connection, revision: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'kine' AND seq < ?1",
        [revision],
    )?;
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'kine', ?1
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'kine')",
        [revision],
    )?;
    Ok(())
}
