//! A database shaped like the one kine keeps for a vCluster: kine's schema and
//! indexes, `/registry/...` keys, values like Kubernetes objects (repeated
//! field names, random UIDs and hashes) that compress 3–6× with zstd -3, and
//! WAL mode. Deterministic for a seed. Shared by the tests and the benchmark.

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

/// Fills `conn` until the database file is at least `target_bytes`, in
/// kine-shaped transactions (creates and updates of /registry keys).
pub fn fill(
    conn: &mut Connection,
    path: &std::path::Path,
    target_bytes: u64,
    seed: u64,
) -> rusqlite::Result<i64> {
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
            for _ in 0..2000 {
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
                let value = object(&mut rng, &key, rev);
                insert.execute(params![key, created, create_rev, prev, value])?;
            }
        }
        tx.commit()?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        if std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) >= target_bytes {
            return Ok(rev);
        }
    }
}
