//! What a drill checks of a kine backup, on its decrypted copy: SQLite's
//! integrity check, kine's table, its revision against the manifest's, and
//! that it holds Kubernetes objects.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{has_kine_table, kine_revision};
use crate::store::Finding;

/// Step 3 of a drill: SQLite's integrity check and kine's shape.
pub fn check(path: &Path, recorded: Option<i64>) -> Vec<Finding> {
    let mut checks = Vec::new();
    let conn = match Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(conn) => conn,
        Err(err) => {
            checks.push(Finding::fail(
                "sqlite-integrity",
                format!("open the database: {err}"),
            ));
            return checks;
        }
    };
    let integrity = conn.prepare("PRAGMA integrity_check").and_then(|mut stmt| {
        stmt.query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()
    });
    checks.push(match integrity {
        Ok(rows) if rows == ["ok"] => {
            Finding::pass("sqlite-integrity", "PRAGMA integrity_check: ok")
        }
        Ok(rows) => Finding::fail("sqlite-integrity", rows.join("; ")),
        Err(err) => Finding::fail("sqlite-integrity", err.to_string()),
    });
    match has_kine_table(&conn) {
        Ok(true) => checks.push(Finding::pass("kine-table", "table kine present")),
        Ok(false) => {
            checks.push(Finding::fail(
                "kine-table",
                "no table kine: not kine's database",
            ));
            return checks;
        }
        Err(err) => {
            checks.push(Finding::fail("kine-table", err.to_string()));
            return checks;
        }
    }
    // As a backup records it: rows compacted away at the top still count.
    let revision = kine_revision(&conn);
    checks.push(match (revision, recorded) {
        (Ok(found), Some(recorded)) if found == recorded => Finding::pass(
            "kine-revision",
            format!("revision {recorded} as in the manifest"),
        ),
        (Ok(found), Some(recorded)) => Finding::fail(
            "kine-revision",
            format!(
                "the revision (the higher of max(id) and sqlite_sequence) is {found}, the manifest records {recorded}"
            ),
        ),
        (Ok(found), None) => Finding::pass(
            "kine-revision",
            format!("revision {found}; the manifest records none"),
        ),
        (Err(err), _) => Finding::fail("kine-revision", err.to_string()),
    });
    // An index range on kine's name index, not a scan.
    let registry: rusqlite::Result<i64> = conn.query_row(
        "SELECT count(*) FROM (SELECT 1 FROM kine WHERE name >= '/registry/' AND name < '/registry0' LIMIT 1)",
        [],
        |row| row.get(0),
    );
    checks.push(match registry {
        Ok(1) => Finding::pass("kine-registry-keys", "at least one /registry/ key"),
        Ok(_) => Finding::fail(
            "kine-registry-keys",
            "no /registry/ key: the store holds no Kubernetes object",
        ),
        Err(err) => Finding::fail("kine-registry-keys", err.to_string()),
    });
    checks
}
