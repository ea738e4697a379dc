//! A database shaped like the one kine keeps for a vCluster: kine's schema and
//! indexes, `/registry/...` keys, values like Kubernetes objects (repeated
//! field names, random UIDs and hashes) that compress 3–6× with zstd -3, and
//! WAL mode. Deterministic for a seed. Shared by the tests and the benchmark
//! (`examples/gen_kine_db.rs`), which uses only the generator.
//!
//! The tests' helpers are at the end: a small database, an incompressible one
//! (its backup about as large, for multipart uploads), and a digest of the rows.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kine (
  id INTEGER PRIMARY KEY AUTOINCREMENT, name INTEGER, created INTEGER, deleted INTEGER,
  create_revision INTEGER, prev_revision INTEGER, lease INTEGER, value BLOB, old_value BLOB);
CREATE INDEX IF NOT EXISTS kine_name_index ON kine (name);
CREATE INDEX IF NOT EXISTS kine_name_id_index ON kine (name,id);
CREATE INDEX IF NOT EXISTS kine_id_deleted_index ON kine (id,deleted);
CREATE INDEX IF NOT EXISTS kine_prev_revision_index ON kine (prev_revision);
CREATE UNIQUE INDEX IF NOT EXISTS kine_name_prev_revision_uindex ON kine (name, prev_revision);
";

const RESOURCES: [&str; 10] = [
    "pods",
    "configmaps",
    "secrets",
    "services/specs",
    "events",
    "leases",
    "deployments",
    "replicasets",
    "endpointslices",
    "serviceaccounts",
];
const WORDS: [&str; 30] = [
    "app",
    "kubernetes",
    "io",
    "name",
    "instance",
    "managed-by",
    "helm",
    "component",
    "controller",
    "revision",
    "hash",
    "image",
    "registry",
    "nginx",
    "redis",
    "postgres",
    "worker",
    "api",
    "frontend",
    "backend",
    "metrics",
    "prometheus",
    "scrape",
    "port",
    "containerPort",
    "protocol",
    "TCP",
    "spec",
    "status",
    "phase",
];

/// Opens (creating if needed) a kine database in WAL mode, as kine leaves it.
pub fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

/// A Kubernetes-object-like value for `key` at revision `rev`.
pub fn object(rng: &mut impl Rng, key: &str, rev: i64) -> Vec<u8> {
    let word = |rng: &mut dyn rand::RngCore| WORDS[rng.random_range(0..WORDS.len())];
    let uid = format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        rng.random::<u32>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u16>(),
        rng.random::<u64>() & 0xffff_ffff_ffff
    );
    let mut labels = String::new();
    for _ in 0..rng.random_range(2..=6) {
        labels += &format!(
            "\n    {}/{}: {}-{}",
            word(rng),
            word(rng),
            word(rng),
            rng.random_range(0..100)
        );
    }
    let mut managed = String::new();
    for _ in 0..rng.random_range(1..=4) {
        managed += &format!(
            "\n  - manager: {}\n    operation: Update\n    apiVersion: v1\n    time: 2026-11-{:02}T{:02}:{:02}:{:02}Z\n    fieldsType: FieldsV1\n    fieldsV1: {{f:metadata: {{f:labels: {{.: {{}}, f:{}: {{}}}}}}, f:spec: {{f:{}: {{}}}}}}",
            word(rng),
            rng.random_range(1..=28),
            rng.random_range(0..24),
            rng.random_range(0..60),
            rng.random_range(0..60),
            word(rng),
            word(rng)
        );
    }
    let mut data = String::new();
    for _ in 0..rng.random_range(1..=20) {
        let mut bytes = vec![0u8; rng.random_range(8..=64)];
        rng.fill(&mut bytes[..]);
        data += &format!("\n  {}: {}", word(rng), hex(&bytes));
    }
    format!(
        "k8s\0\n\x0fapiVersion: v1\nkind: Object\nmetadata:\n  name: {key}\n  uid: {uid}\n  resourceVersion: \"{rev}\"\n  labels:{labels}\n  managedFields:{managed}\nspec:{data}\nstatus:\n  phase: Running\n  observedGeneration: {rev}\n"
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The size of one incompressible value: a row then fills most of a page.
pub const RANDOM_VALUE_BYTES: usize = 4000;

/// What the rows' values are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values {
    /// Like Kubernetes objects ([`object`]): they compress 3–6× with zstd -3.
    Objects,
    /// [`RANDOM_VALUE_BYTES`] random bytes each: the backup is as large as
    /// the values.
    Incompressible,
}

/// Fills `conn` until the database file is at least `target_bytes`, in
/// kine-shaped transactions (creates and updates of /registry keys).
pub fn fill(
    conn: &mut Connection,
    path: &std::path::Path,
    target_bytes: u64,
    seed: u64,
) -> rusqlite::Result<i64> {
    fill_with(conn, path, target_bytes, seed, Values::Objects)
}

/// [`fill`] with `values`. With incompressible values the target is the
/// values' total instead, reached in transactions of 16 rows (64,000 bytes), so
/// the backup is about `target_bytes` whatever kine's indexes take.
pub fn fill_with(
    conn: &mut Connection,
    path: &std::path::Path,
    target_bytes: u64,
    seed: u64,
    values: Values,
) -> rusqlite::Result<i64> {
    let rows_per_transaction = match values {
        Values::Objects => 2000,
        Values::Incompressible => 16,
    };
    let mut value_bytes: u64 = 0;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut keys: Vec<(String, i64)> = Vec::new();
    let mut rev: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM kine", [], |r| r.get(0))?;
    loop {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                 VALUES (?1, ?2, 0, ?3, ?4, 0, ?5, x'')",
            )?;
            for _ in 0..rows_per_transaction {
                rev += 1;
                let (key, created, create_rev, prev) = if !keys.is_empty() && rng.random_bool(0.6) {
                    let i = rng.random_range(0..keys.len());
                    let (key, create_rev) = keys[i].clone();
                    (key, 0, create_rev, rev - 1)
                } else {
                    let key = format!(
                        "/registry/{}/ns-{}/{}-{:x}",
                        RESOURCES[rng.random_range(0..RESOURCES.len())],
                        rng.random_range(0..=40),
                        WORDS[rng.random_range(0..WORDS.len())],
                        rng.random::<u64>() & 0xff_ffff_ffff
                    );
                    keys.push((key.clone(), rev));
                    (key, 1, rev, 0)
                };
                let value = match values {
                    Values::Objects => object(&mut rng, &key, rev),
                    Values::Incompressible => {
                        let mut value = vec![0u8; RANDOM_VALUE_BYTES];
                        rng.fill(&mut value[..]);
                        value
                    }
                };
                value_bytes += value.len() as u64;
                insert.execute(params![key, created, create_rev, prev, value])?;
            }
        }
        tx.commit()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let reached = match values {
            Values::Objects => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            Values::Incompressible => value_bytes,
        };
        if reached >= target_bytes {
            return Ok(rev);
        }
    }
}

// ---------------------------------------------------------------- for the tests

/// A kine database in WAL mode of at least `bytes`, compressible as a real
/// one; returns its revision.
pub fn small_kine_db(path: &std::path::Path, bytes: u64) -> i64 {
    let mut conn = open(path).unwrap();
    fill(&mut conn, path, bytes, 7).unwrap()
}

/// A kine database in WAL mode whose incompressible values add up to
/// `bytes`, rounded up to a multiple of 64,000: its backup is about that large.
pub fn incompressible_kine_db(path: &std::path::Path, bytes: usize) {
    let mut conn = open(path).unwrap();
    fill_with(&mut conn, path, bytes as u64, 7, Values::Incompressible).unwrap();
}

/// One kine write of `name`, as kine appends it: a create when the key has no
/// row yet, else a row whose prev_revision is the key's latest; `deleted` for
/// a delete.
pub fn put(conn: &Connection, name: &str, deleted: bool, value: impl rusqlite::ToSql) {
    let prev: i64 = query_one(
        conn,
        "SELECT coalesce(max(id), 0) FROM kine WHERE name = ?1",
        [name],
    );
    conn.execute(
        "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
         VALUES (?1, ?2, ?3, 0, ?4, 0, ?5, NULL)",
        params![name, prev == 0, deleted, prev, value],
    )
    .unwrap();
}

/// The one value `sql` selects (a count, a revision, a pragma's answer).
pub fn query_one<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> T {
    conn.query_row(sql, params, |r| r.get(0)).unwrap()
}

/// A digest of a kine database's rows, to compare a restore with its source.
pub fn kine_digest(path: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let conn = Connection::open(path).unwrap();
    let mut statement = conn
        .prepare("SELECT id, name, value FROM kine ORDER BY id")
        .unwrap();
    let mut rows = statement.query([]).unwrap();
    let mut hash = Sha256::new();
    let mut count = 0;
    while let Some(row) = rows.next().unwrap() {
        hash.update(row.get::<_, i64>(0).unwrap().to_le_bytes());
        hash.update(row.get::<_, String>(1).unwrap());
        hash.update(row.get::<_, Vec<u8>>(2).unwrap());
        count += 1;
    }
    format!("{count} rows {}", hex::encode(hash.finalize()))
}
