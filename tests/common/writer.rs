//! A kine-shaped writer committing while backups run, the check that a
//! restored database holds exactly a prefix of its commits, each whole, and
//! [`Repeating`], any step repeated on a thread (an idle writer, a stream of puts).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;

use super::{kine, wait_for};

/// A kine-shaped writer: each transaction inserts three rows named after its
/// number, the way one Kubernetes update writes a key and its neighbours.
/// It never waits on a lock (busy timeout 0), so a reader that blocked it
/// would show up as an error.
pub struct Writer {
    pub acked: Arc<AtomicI64>,
    pub stop: Arc<AtomicBool>,
    pub handle: std::thread::JoinHandle<Result<i64, String>>,
}

pub const ROWS_PER_TXN: i64 = 3;

pub fn start_writer(db: &Path) -> Writer {
    start_paced_writer(db, Duration::ZERO)
}

/// As [`start_writer`], pausing `pause` after each commit: a writer that runs
/// for minutes without growing the database by gigabytes.
pub fn start_paced_writer(db: &Path, pause: Duration) -> Writer {
    let acked = Arc::new(AtomicI64::new(-1));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, s, path) = (acked.clone(), stop.clone(), db.to_path_buf());
    let handle = std::thread::spawn(move || -> Result<i64, String> {
        let mut conn = Connection::open(&path).map_err(|e| e.to_string())?;
        conn.busy_timeout(Duration::ZERO)
            .map_err(|e| e.to_string())?;
        let mut rng = rand::rng();
        let mut txn = 0i64;
        while !s.load(Ordering::SeqCst) {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| format!("txn {txn}: begin: {e}"))?;
            for k in 0..ROWS_PER_TXN {
                let key = format!("/registry/txn/{txn:08}/{k}");
                let value = kine::object(&mut rng, &key, txn);
                tx.execute(
                    "INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value)
                     VALUES (?1, 1, 0, 0, 0, 0, ?2, x'')",
                    rusqlite::params![key, value],
                )
                .map_err(|e| format!("txn {txn}: insert: {e}"))?;
            }
            tx.commit().map_err(|e| format!("txn {txn}: commit: {e}"))?;
            a.store(txn, Ordering::SeqCst);
            txn += 1;
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        }
        Ok(txn)
    });
    Writer {
        acked,
        stop,
        handle,
    }
}

/// The writer's transactions present in a restored database: must be 0..=n, each whole.
pub fn committed_prefix(db: &Path) -> i64 {
    let conn = Connection::open(db).unwrap();
    let ok: String = kine::query_one(&conn, "PRAGMA integrity_check", []);
    assert_eq!(ok, "ok");
    let mut stmt = conn
        .prepare(
            "SELECT CAST(substr(name, 15, 8) AS INTEGER) AS txn, count(*) FROM kine
             WHERE name LIKE '/registry/txn/%' GROUP BY txn ORDER BY txn",
        )
        .unwrap();
    let groups: Vec<(i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (i, (txn, rows)) in groups.iter().enumerate() {
        assert_eq!(
            *txn, i as i64,
            "transactions must form a prefix, found a gap before {txn}"
        );
        assert_eq!(
            *rows, ROWS_PER_TXN,
            "transaction {txn} is partial: {rows} rows"
        );
    }
    groups.len() as i64 - 1
}

impl Writer {
    /// The last transaction acknowledged (committed), -1 before the first.
    pub fn acked(&self) -> i64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Stops the writer; returns how many transactions it committed.
    pub fn stop(self) -> i64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .join()
            .unwrap()
            .expect("the writer must never see an error")
    }
}

/// A step repeated on a thread until stopped (or dropped): an idle writer, a
/// stream of puts beside a backup. Counts its steps, so a test waits on what
/// it has written rather than for a while.
pub struct Repeating {
    steps: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Repeating {
    /// Runs `step(0)`, `step(1)`, … with `pace` between steps.
    pub fn start(pace: Duration, mut step: impl FnMut(u64) + Send + 'static) -> Repeating {
        let steps = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (Arc::clone(&steps), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::SeqCst) {
                step(n);
                n += 1;
                count.store(n, Ordering::SeqCst);
                if !pace.is_zero() {
                    // The writer's pace, part of the scenario, not a wait.
                    std::thread::sleep(pace);
                }
            }
        });
        Repeating {
            steps,
            stop,
            thread: Some(thread),
        }
    }

    /// Steps done so far.
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` steps are done; returns how many are.
    #[track_caller]
    pub fn wait_steps(&self, n: u64) -> u64 {
        wait_for(
            &format!("{n} steps of the writer"),
            Duration::from_secs(60),
            || Some(self.steps()).filter(|&done| done >= n),
        )
    }

    /// Stops and joins the thread (a panic in a step fails the test here);
    /// returns the steps done.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(panic) = self.thread.take().unwrap().join() {
            std::panic::resume_unwind(panic);
        }
        self.steps()
    }
}

impl Drop for Repeating {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
