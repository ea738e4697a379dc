//! A kine-like writer for the benchmark: one small row per transaction at a
//! fixed rate, in WAL mode with `synchronous=FULL` and `BEGIN IMMEDIATE`, as
//! vCluster opens kine's SQLite database. Prints the commit latencies, in
//! milliseconds: `p50 p99 max commits`.
//!
//! Usage: cargo run --release --example kine_writer -- DB SECONDS [INTERVAL_MS]
//! With `KINE_WRITER_TRACE=FILE`, also writes every commit's start and latency
//! (ms) there, to line slow commits up with what else ran.

#[path = "../tests/common/kine.rs"]
mod kine;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::SeedableRng;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, seconds) = match args.as_slice() {
        [path, seconds, ..] => (
            std::path::PathBuf::from(path),
            seconds.parse::<f64>().context("SECONDS")?,
        ),
        _ => bail!("usage: kine_writer DB SECONDS [INTERVAL_MS]"),
    };
    let interval = Duration::from_millis(
        args.get(2)
            .map(|s| s.parse())
            .transpose()
            .context("INTERVAL_MS")?
            .unwrap_or(20),
    );
    let conn = kine::open(&path)?;
    // SQLite's default, stated because it is the point: every commit syncs the WAL.
    conn.execute_batch("PRAGMA synchronous=FULL")?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id().into());
    let mut latencies = Vec::new();
    let mut trace = Vec::new();
    let started = Instant::now();
    let mut next = started;
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        next += interval;
        n += 1;
        let key = format!("/registry/leases/kube-system/bench-writer-{}", n % 64);
        let value = kine::object(&mut rng, &key, n as i64);
        let begin = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.execute(
            "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
             VALUES (?1, 0, 0, 0, (SELECT coalesce(max(id), 0) FROM kine), 60, ?2, x'')",
            rusqlite::params![key, value],
        )?;
        conn.execute_batch("COMMIT")?;
        latencies.push(begin.elapsed());
        trace.push((begin - started, begin.elapsed()));
        // A fixed rate, as a control plane's lease renewals: a slow commit is not made up for.
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
    if let Ok(path) = std::env::var("KINE_WRITER_TRACE") {
        let lines: String = trace
            .iter()
            .map(|(at, took)| {
                format!(
                    "{:.1} {:.3}\n",
                    at.as_secs_f64() * 1000.0,
                    took.as_secs_f64() * 1000.0
                )
            })
            .collect();
        std::fs::write(&path, lines).with_context(|| format!("write {path}"))?;
    }
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    if latencies.is_empty() {
        bail!("no commit in {seconds} s");
    }
    println!(
        "{:.2} {:.2} {:.2} {}",
        at(0.50),
        at(0.99),
        at(1.0),
        latencies.len()
    );
    Ok(())
}
