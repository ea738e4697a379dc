//! Agents sharing one destination under one name, as the SQLite default runs
//! one per replica (issue 24): each agent's retention deletes the backups the
//! others list and delete too. What one finds already gone counts as
//! deleted, never as a retention failure, in a directory and on S3.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::s3::{BUCKET, Moto, REGION, rt, s3_client};
use common::*;

const AGENTS: usize = 3;
/// Full backups each agent takes in a directory, each followed by its
/// retention, before the check. The agents' `@every 1s` slots coincide, so
/// their retention runs overlap nearly every second while backups stay short;
/// before the fix one failed within the first 15.
const BACKUPS_EACH: f64 = 25.0;
/// On S3 (moto, slower per request): AWS answers a delete of what is gone
/// with 204, so this guards the rest of retention (reading manifests that
/// went meanwhile); the conformance suite covers servers answering NoSuchKey.
const S3_BACKUPS_EACH: f64 = 8.0;
const DEADLINE: Duration = Duration::from_secs(150);
/// Between the writer's commits: changes for every increment, and a database
/// that stays small, so that each backup fits in its second.
const WRITER_PAUSE: Duration = Duration::from_millis(20);

const SUCCESSES: &str = r#"vcbackup_backups_total{result="success"}"#;
const RETENTION_FAILURES: &str = r#"vcbackup_backup_failures_total{stage="retention"}"#;
const DELETED: &str = "vcbackup_retention_deleted_total";

/// A kine database with kine's compact revision row, as kine leaves it at start.
fn kine_db(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("state.db");
    small_kine_db(&db, 256 << 10);
    let conn = kine::open(&db).unwrap();
    kine::put(&conn, "compact_rev_key", false, None::<Vec<u8>>);
    db
}

/// `vcbackup run` as in the issue: a full backup every second, increments
/// between, one backup kept.
fn agent(db: &Path, destination: &str) -> Command {
    let mut cmd = vcbackup();
    cmd.args(["run", "--name", "demo", "--no-encryption"])
        .args(["--destination", destination])
        .arg("--source")
        .arg(db)
        .args(["--schedule", "@every 1s", "--incremental-interval", "1s"])
        .args(["--max-snapshots", "1"]);
    cmd
}

/// Runs [`AGENTS`] agents on `destination` under a writer until each has
/// taken `backups_each` backups, then checks that no retention failed and
/// that retention did delete. `env` is added to each agent's environment.
fn agents_share(dir: &Path, destination: &str, env: &[(&str, &str)], backups_each: f64) {
    let db = kine_db(dir);
    let writer = start_paced_writer(&db, WRITER_PAUSE);
    let agents: Vec<Daemon> = (0..AGENTS)
        .map(|n| {
            let mut cmd = agent(&db, destination);
            cmd.envs(env.iter().copied());
            Daemon::start_logged(cmd, &dir.join(format!("agent-{n}.log")))
        })
        .collect();
    let taken = || -> Vec<f64> {
        agents
            .iter()
            .map(|a| a.metric(SUCCESSES).unwrap_or(0.0))
            .collect()
    };
    wait_for_or(
        &format!("{backups_each} backups by each agent"),
        DEADLINE,
        |timed_out| {
            // The first failure ends the wait: it is what the test looks for.
            for (n, agent) in agents.iter().enumerate() {
                if agent.metric(RETENTION_FAILURES).unwrap_or(0.0) > 0.0 {
                    return Some(format!(
                        "agent {n} counted a retention failure:\n{}",
                        agent.log()
                    ));
                }
            }
            timed_out.then(|| {
                format!(
                    "the agents had taken {:?}; the last agent's log:\n{}",
                    taken(),
                    agents[AGENTS - 1].log()
                )
            })
        },
        || taken().iter().all(|t| *t >= backups_each).then_some(()),
    );
    let mut deleted = 0.0;
    for (n, agent) in agents.iter().enumerate() {
        let log = agent.log();
        assert_eq!(
            agent.metric(RETENTION_FAILURES),
            Some(0.0),
            "agent {n}:\n{log}"
        );
        assert!(!log.contains("retention failed"), "agent {n}:\n{log}");
        deleted += agent.metric(DELETED).unwrap_or(0.0);
    }
    // Retention ran, and on backups the others could see: the test would
    // prove nothing otherwise.
    assert!(deleted >= 1.0, "no agent's retention deleted anything");
    drop(agents);
    assert!(writer.stop() > 0, "the writer committed nothing");
}

#[test]
fn agents_sharing_a_directory_never_fail_each_others_retention() {
    let dir = tempfile::tempdir().unwrap();
    let destination = file_url(&dir.path().join("backups"));
    agents_share(dir.path(), &destination, &[], BACKUPS_EACH);
    // One backup kept, as asked, and still complete.
    let listed = list_json(&destination, "demo");
    assert!(!listed.is_empty(), "retention deleted every backup");
}

#[test]
fn agents_sharing_a_bucket_never_fail_each_others_retention() {
    let moto = Moto::start();
    let client = s3_client(&moto.endpoint(), &moto.access_key, &moto.secret);
    rt().block_on(client.create_bucket().bucket(BUCKET).send())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let destination = format!(
        "s3://{BUCKET}/shared?endpoint={}&force-path-style=true&region={REGION}",
        moto.endpoint()
    );
    let home = dir.path().display().to_string();
    agents_share(
        dir.path(),
        &destination,
        &[
            ("AWS_ACCESS_KEY_ID", &moto.access_key),
            ("AWS_SECRET_ACCESS_KEY", &moto.secret),
            ("AWS_CONFIG_FILE", "/dev/null"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("HOME", &home),
        ],
        S3_BACKUPS_EACH,
    );
}
