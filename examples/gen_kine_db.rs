//! Makes a kine-shaped SQLite database for demos and benchmarks.
//!
//! Usage: cargo run --release --example gen_kine_db -- PATH SIZE_MIB [SEED]

#[path = "../tests/common/kine.rs"]
mod kine;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, size_mib) = match args.as_slice() {
        [path, size, ..] => (
            std::path::PathBuf::from(path),
            size.parse::<u64>().context("SIZE_MIB")?,
        ),
        _ => bail!("usage: gen_kine_db PATH SIZE_MIB [SEED]"),
    };
    let seed = args
        .get(2)
        .map(|s| s.parse())
        .transpose()
        .context("SEED")?
        .unwrap_or(1);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let started = std::time::Instant::now();
    let mut conn = kine::open(&path)?;
    conn.execute_batch("PRAGMA synchronous=OFF")?;
    let rows = kine::fill(&mut conn, &path, size_mib << 20, seed)?;
    println!(
        "{}: {} MiB, {rows} revisions, {:.1} s",
        path.display(),
        std::fs::metadata(&path)?.len() >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
