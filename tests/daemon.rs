//! The sidecar daemon as a process: schedule, retention, metrics and health
//! endpoints, failures that must not make the pod NotReady, and shutdown.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// `vcbackup run` backing up `source` into `destination`, logging at info.
fn start(source: &Path, destination: &str, extra: &[&str]) -> Daemon {
    let mut cmd = unencrypted("run", destination);
    cmd.arg("--source")
        .arg(source)
        .args(extra)
        .env("VCBACKUP_LOG", "info");
    Daemon::start(cmd)
}

/// SIGTERM: the exit status, how long the agent took to exit, and its log.
fn sigterm(daemon: &mut Daemon) -> (std::process::ExitStatus, Duration, String) {
    let started = Instant::now();
    let status = daemon.terminate();
    (status, started.elapsed(), daemon.log())
}

/// Waits until the scheduler has decided at start (`/status` shows `next_run`)
/// and insists it decided to wait for the schedule's next slot: a catch-up
/// runs at once (no jitter), so its `next_run` is not in the future, and the
/// slot after a catch-up is set only once the catch-up has counted its backup.
fn assert_waits_for_its_slot(daemon: &Daemon) {
    let next_run = daemon.wait_for("the first next_run", Duration::from_secs(20), || {
        daemon.status()["next_run"].as_str().map(str::to_string)
    });
    let at = chrono::DateTime::parse_from_rfc3339(&next_run).unwrap();
    assert!(
        at > chrono::Utc::now() + chrono::TimeDelta::seconds(1),
        "next_run {next_run} is now: a catch-up"
    );
}

/// Backup objects and manifests in a virtual cluster's folder, and anything else there.
fn stored(dir: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut objects = Vec::new();
    let mut manifests = Vec::new();
    let mut other = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".zst") {
            objects.push(name);
        } else if name.ends_with(".zst.json") {
            manifests.push(name);
        } else {
            other.push(name);
        }
    }
    objects.sort();
    manifests.sort();
    (objects, manifests, other)
}

fn database(dir: &Path, bytes: u64) -> PathBuf {
    let db = dir.join("state.db");
    small_kine_db(&db, bytes);
    db
}

/// A test's fresh directory: a kine database, and the destination `backups/`.
struct Setup {
    tmp: tempfile::TempDir,
    db: PathBuf,
    dest: String,
}

/// A [`Setup`] whose database is at least `bytes`.
fn setup(bytes: u64) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let db = database(tmp.path(), bytes);
    let dest = file_url(&tmp.path().join("backups"));
    Setup { tmp, db, dest }
}

impl Setup {
    /// The daemon backing up this database into this destination.
    fn daemon(&self, extra: &[&str]) -> Daemon {
        start(&self.db, &self.dest, extra)
    }

    /// The virtual cluster's folder in the destination.
    fn folder(&self) -> PathBuf {
        self.tmp.path().join("backups/demo")
    }

    /// [`stored`] of the folder.
    fn stored(&self) -> (Vec<String>, Vec<String>, Vec<String>) {
        stored(&self.folder())
    }
}

#[test]
fn backs_up_on_schedule_keeps_the_count_and_reports_clean_metrics() {
    let s = setup(256 << 10);
    let mut daemon = s.daemon(&["--schedule", "@every 2s", "--max-snapshots", "2"]);
    assert_eq!(daemon.get("/readyz").0, 200);
    assert_eq!(daemon.get("/livez").0, 200);
    assert_eq!(daemon.get("/nope").0, 404);

    daemon.wait_for("four successful backups", Duration::from_secs(60), || {
        (daemon.sample("vcbackup_backups_total{result=\"success\"}") >= 4.0).then_some(())
    });
    let (_, text) = daemon.get("/metrics");
    promtool_check(&text);
    for sample in [
        "vcbackup_last_success_timestamp_seconds",
        "vcbackup_last_attempt_timestamp_seconds",
        "vcbackup_next_run_timestamp_seconds",
        "vcbackup_backup_duration_seconds_count",
        "vcbackup_last_backup_size_bytes{stage=\"source\"}",
        "vcbackup_last_backup_size_bytes{stage=\"stored\"}",
        "vcbackup_retention_deleted_total",
    ] {
        assert!(
            metric(&text, sample).unwrap_or(0.0) > 0.0,
            "{sample} did not move:\n{text}"
        );
    }
    assert_eq!(
        metric(&text, "vcbackup_backups_total{result=\"failure\"}"),
        Some(0.0)
    );
    assert_eq!(metric(&text, "vcbackup_snapshots_stored"), Some(2.0));
    assert_eq!(
        metric(&text, "vcbackup_schedule_interval_seconds"),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, "vcbackup_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    assert!(
        text.contains("process_resident_memory_bytes"),
        "no process metrics"
    );

    let (status, body) = daemon.get("/status");
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["last_success"]["backup"]
            .as_str()
            .unwrap()
            .starts_with("demo-")
    );
    assert!(json["next_run"].is_string());
    assert_eq!(json["recent_backups"].as_array().unwrap().len(), 2);

    let (status, elapsed, _) = sigterm(&mut daemon);
    assert!(status.success(), "exit status {status}");
    assert!(elapsed < Duration::from_secs(10));
    // Retention kept the newest two, objects and manifests together.
    let (objects, manifests, other) = s.stored();
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert_eq!(
        manifests,
        objects
            .iter()
            .map(|o| format!("{o}.json"))
            .collect::<Vec<_>>()
    );
    assert!(other.is_empty(), "{other:?}");
}

#[test]
fn a_failing_destination_counts_failures_but_stays_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let db = database(tmp.path(), 256 << 10);
    // A regular file where the destination directory should be.
    let blocked = tmp.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let daemon = start(&db, &file_url(&blocked), &["--schedule", "@every 1s"]);
    daemon.wait_for("two storage failures", Duration::from_secs(30), || {
        (daemon.sample("vcbackup_backup_failures_total{stage=\"storage\"}") >= 2.0).then_some(())
    });
    assert_eq!(daemon.get("/readyz").0, 200);
    assert_eq!(daemon.get("/livez").0, 200);
    assert!(daemon.sample("vcbackup_backups_total{result=\"failure\"}") >= 2.0);
    assert_eq!(
        daemon.sample("vcbackup_backups_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(
        daemon.sample("vcbackup_last_success_timestamp_seconds"),
        0.0
    );
    let json: serde_json::Value = serde_json::from_str(&daemon.get("/status").1).unwrap();
    assert_eq!(json["last_failure"]["stage"], "storage");
    assert!(
        json["last_failure"]["message"]
            .as_str()
            .unwrap()
            .contains("not-a-dir"),
        "{json}"
    );

    // The last few failures, newest first and bounded, show a flapping destination.
    daemon.wait_for("eleven storage failures", Duration::from_secs(60), || {
        (daemon.sample("vcbackup_backup_failures_total{stage=\"storage\"}") >= 11.0).then_some(())
    });
    let json: serde_json::Value = serde_json::from_str(&daemon.get("/status").1).unwrap();
    let recent = json["recent_failures"].as_array().expect("recent_failures");
    assert_eq!(recent.len(), 10, "{json}");
    assert_eq!(recent[0], json["last_failure"], "{json}");
    let times: Vec<_> = recent
        .iter()
        .map(|f| chrono::DateTime::parse_from_rfc3339(f["time"].as_str().unwrap()).unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {times:?}"
    );
    assert!(recent.iter().all(|f| f["stage"] == "storage"), "{json}");
}

#[test]
fn sigterm_mid_backup_aborts_cleanly_within_the_timeout() {
    // Big enough, at a slow level, that the backup outlasts the shutdown timeout.
    let s = setup(48 << 20);
    let mut daemon = s.daemon(&[
        "--schedule",
        "@daily",
        "--compression-level",
        "19",
        "--compression-threads",
        "1",
        "--shutdown-timeout",
        "1s",
    ]);
    // Catch-up starts a backup at once (storage is empty).
    daemon.wait_for("a backup in progress", Duration::from_secs(20), || {
        (daemon.sample("vcbackup_backup_in_progress") == 1.0).then_some(())
    });
    // Mid-write: the backup's partial file is in the destination.
    daemon.wait_for("the backup's partial file", Duration::from_secs(20), || {
        s.stored()
            .2
            .iter()
            .any(|name| name.starts_with(".partial-"))
            .then_some(())
    });
    let (status, elapsed, stderr) = sigterm(&mut daemon);
    assert!(status.success(), "exit status {status}: {stderr}");
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?} to stop");
    assert!(stderr.contains("backup aborted"), "{stderr}");
    let (objects, manifests, other) = s.stored();
    assert!(
        objects.is_empty() && manifests.is_empty() && other.is_empty(),
        "left {objects:?} {manifests:?} {other:?}"
    );
}

#[test]
fn backup_on_shutdown_takes_a_final_backup_and_exits_cleanly() {
    let s = setup(256 << 10);
    // No catch-up and a far schedule: the only backup is the final one.
    let mut daemon = s.daemon(&[
        "--schedule",
        "@weekly",
        "--no-catch-up",
        "--backup-on-shutdown",
    ]);
    assert_waits_for_its_slot(&daemon);
    assert_eq!(
        daemon.sample("vcbackup_backups_total{result=\"success\"}"),
        0.0
    );
    let (status, elapsed, stderr) = sigterm(&mut daemon);
    assert!(status.success(), "{stderr}");
    assert!(elapsed < Duration::from_secs(9));
    let (objects, manifests, _) = s.stored();
    assert_eq!((objects.len(), manifests.len()), (1, 1), "{stderr}");
}

#[test]
fn catches_up_at_start_only_when_the_newest_backup_is_stale() {
    let s = setup(256 << 10);

    let mut no_catch_up = s.daemon(&["--schedule", "@daily", "--no-catch-up"]);
    assert_waits_for_its_slot(&no_catch_up);
    assert_eq!(
        no_catch_up.sample("vcbackup_backups_total{result=\"success\"}"),
        0.0
    );
    sigterm(&mut no_catch_up);
    assert!(s.stored().0.is_empty());

    let mut catch_up = s.daemon(&["--schedule", "@daily"]);
    wait_for("the catch-up backup", Duration::from_secs(30), || {
        (catch_up.sample("vcbackup_backups_total{result=\"success\"}") == 1.0).then_some(())
    });
    sigterm(&mut catch_up);

    // The newest backup is fresh now: a restart takes none.
    let mut fresh = s.daemon(&["--schedule", "@daily"]);
    assert_waits_for_its_slot(&fresh);
    assert_eq!(
        fresh.sample("vcbackup_backups_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(fresh.sample("vcbackup_snapshots_stored"), 1.0);
    sigterm(&mut fresh);
    assert_eq!(s.stored().0.len(), 1);
}

#[test]
fn bad_configuration_is_refused_before_starting() {
    let s = setup(64 << 10);
    // Parsed by clap at the edge: its usage error (exit 2) names the option and the value.
    let refused = |args: &[&str], expected: &str| {
        let out = run(unencrypted("run", &s.dest)
            .arg("--source")
            .arg(&s.db)
            .args(args));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let err = error_line(&stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    };
    // What clap says of a bad value: the option's value name, and its parser's words.
    let usage = |option: &str| match option {
        "--schedule" => ("SCHEDULE", "invalid schedule"),
        "--timezone" => ("TIMEZONE", "unknown time zone"),
        "--jitter" | "--shutdown-timeout" | "--abort-uploads-after" => {
            ("DURATION", "invalid duration")
        }
        _ => unreachable!("{option}"),
    };
    for (option, value) in [
        ("--schedule", "0 */12 * *"),
        ("--schedule", "@fortnightly"),
        ("--timezone", "Mars/Olympus"),
        ("--jitter", "soon"),
        ("--shutdown-timeout", "8"),
        ("--abort-uploads-after", "a day"),
    ] {
        let (value_name, problem) = usage(option);
        refused(
            &[option, value],
            &format!("for '{option} <{value_name}>': {problem} \"{value}\""),
        );
    }
    refused(
        &["--listen", "not-an-address"],
        "invalid value 'not-an-address' for '--listen <IP:PORT>'",
    );
    // An address that parses but cannot be bound fails at start, naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let err = error_line(&fails(
        unencrypted("run", &s.dest)
            .args(["--listen", &address])
            .arg("--source")
            .arg(&s.db),
    ));
    assert!(
        err.contains(&format!("listen on {address} (--listen)")),
        "{err}"
    );
}

#[test]
fn prune_prints_its_plan_and_dry_run_deletes_nothing() {
    let s = setup(64 << 10);
    let mut names = Vec::new();
    for _ in 0..3 {
        let out = ok(unencrypted("backup", &s.dest).arg("--source").arg(&s.db));
        names.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
    }
    let prune = |extra: &[&str]| {
        let out = ok(vcbackup()
            .args([
                "prune",
                "--name",
                "demo",
                "--destination",
                &s.dest,
                "--max-snapshots",
                "1",
            ])
            .args(extra));
        String::from_utf8(out.stdout).unwrap()
    };
    let plan = prune(&["--dry-run"]);
    assert!(
        plan.contains(&format!("would delete {} (beyond the newest 1)", names[0])),
        "{plan}"
    );
    assert!(plan.contains(&format!("keep {}", names[2])), "{plan}");
    assert_eq!(s.stored().0.len(), 3);
    let done = prune(&[]);
    assert!(done.contains(&format!("deleted {}", names[1])), "{done}");
    let (objects, manifests, _) = s.stored();
    assert_eq!(objects, [names[2].clone()]);
    assert_eq!(manifests.len(), 1);
    // A foreign file in the folder is never touched.
    std::fs::write(s.folder().join("notes.txt"), b"mine").unwrap();
    prune(&[]);
    assert!(s.folder().join("notes.txt").exists());
}
