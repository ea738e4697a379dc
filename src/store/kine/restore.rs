//! kine's rules for a restored SQLite database: its revision (`max(id)` or
//! `sqlite_sequence`, whichever is higher), the bump past the highest revision
//! any client saw, and the compact revision raised to match, as
//! `vcluster restore` does (see the README's restore section).

use std::path::Path;

use anyhow::{Context, Result, bail};
use rusqlite::Connection;

use super::{has_kine_table, is_sqlite, kine_revision, raise_compact_revision};

/// The revision of the kine database about to be replaced: the higher of
/// `max(id)` and `sqlite_sequence` (rows compacted away still count), read
/// with its WAL. `None` when nothing kine-shaped is replaced.
pub fn live_revision(target: &Path, force: bool) -> Result<Option<i64>> {
    if !force || !is_sqlite(target) {
        return Ok(None);
    }
    let shown = target.display();
    let conn = Connection::open_with_flags(target, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("open the database to replace, {shown}"))?;
    let has_kine =
        has_kine_table(&conn).with_context(|| format!("read the revision of {shown}"))?;
    // A database without kine's table holds no revision any client saw.
    if !has_kine {
        return Ok(None);
    }
    let max_id = kine_revision(&conn).with_context(|| format!("read the revision of {shown}"))?;
    Ok((max_id > 0).then_some(max_id))
}

/// `--integrity-check`: how thoroughly a restored database is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IntegrityCheck {
    /// `PRAGMA quick_check`: every page is used once, b-trees are well formed,
    /// records decode and NOT NULL holds. About a second per GiB.
    Quick,
    /// `PRAGMA integrity_check`: also every index entry against its row and
    /// UNIQUE constraints. About five times longer.
    Full,
}

/// Checks the restored database and moves kine's revision forward, like
/// `vcluster restore`: the restored store ends `bump` above both the backup's
/// revision and the live store's it replaces (the highest any client saw), and
/// the compact revision is raised to there, so every watch from before gets
/// "compacted" and relists instead of silently missing the rollback.
pub fn prepare_restored(
    path: &Path,
    check: IntegrityCheck,
    bump: u64,
    live: Option<i64>,
    what: &str,
) -> Result<()> {
    let conn = Connection::open(path).with_context(|| format!("open restored {what}"))?;
    // Its bytes are the backup's, checked by SHA-256: this finds a source that was already damaged.
    let pragma = match check {
        IntegrityCheck::Quick => "PRAGMA quick_check",
        IntegrityCheck::Full => "PRAGMA integrity_check",
    };
    let problems: Vec<String> = conn
        .prepare(pragma)
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .with_context(|| format!("check restored {what}"))?;
    if problems != ["ok"] {
        bail!(
            "check restored {what}: SQLite integrity check failed: {}; nothing was replaced",
            problems.join("; ")
        );
    }
    if bump > 0 {
        let bump = i64::try_from(bump).context("--bump-revision is too large")?;
        let bumped = (|| -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            let backup = kine_revision(&tx)?;
            let revision = backup.max(live.unwrap_or(0)).saturating_add(bump);
            // kine keeps its compact revision in the one compact_rev_key row's
            // prev_revision. Without that row (kine writes it at start), the row
            // itself fills the new revision; otherwise a deleted "gap" row does,
            // as kine does for a missing revision.
            let raised = raise_compact_revision(&tx, revision)?;
            let (name, deleted) = if !raised {
                ("compact_rev_key".to_string(), 0)
            } else {
                (format!("gap-{revision}"), 1)
            };
            tx.execute(
                "INSERT INTO kine (id, name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                 VALUES (?1, ?2, ?3, ?4, 0, ?5, 0, NULL, NULL)",
                rusqlite::params![revision, name, 1 - deleted, deleted, if raised { 0 } else { revision }],
            )?;
            tx.commit()
        })();
        bumped.with_context(|| format!("bump the kine revision of restored {what}"))?;
    }
    // Fold the WAL back into the file: only the database file is moved into place.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .with_context(|| format!("checkpoint restored {what}"))?;
    conn.close()
        .map_err(|(_, err)| err)
        .with_context(|| format!("close restored {what}"))?;
    Ok(())
}
