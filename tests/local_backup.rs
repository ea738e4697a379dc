//! Scenarios for the local-directory slice: consistent SQLite backups while a
//! writer commits, interoperability with the real `age` and `zstd` CLIs, and
//! every bad input with its one-line message.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rusqlite::Connection;

struct Setup {
    dir: tempfile::TempDir,
    db: PathBuf,
    dest: String,
    keys: Keys,
}

fn setup(db_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    small_kine_db(&db, db_bytes);
    let dest = file_url(&dir.path().join("backups"));
    let keys = age_keys(dir.path(), "key.txt");
    Setup {
        dir,
        db,
        dest,
        keys,
    }
}

impl Setup {
    fn backup(&self) -> Command {
        let mut cmd = vcbackup();
        cmd.args([
            "backup",
            "--name",
            "demo",
            "--destination",
            &self.dest,
            "--recipient",
            &self.keys.recipient,
        ]);
        cmd.arg("--source").arg(&self.db);
        cmd
    }

    fn restore(&self, to: &Path) -> Command {
        let mut cmd = vcbackup();
        cmd.args([
            "restore",
            "--name",
            "demo",
            "--destination",
            &self.dest,
            "--identity",
        ]);
        cmd.arg(&self.keys.identity).arg("--to").arg(to);
        cmd
    }

    /// The one value `sql` selects from the source database.
    fn query_source<T: rusqlite::types::FromSql>(&self, sql: &str) -> T {
        kine::query_one(&Connection::open(&self.db).unwrap(), sql, [])
    }

    fn backup_dir(&self) -> PathBuf {
        self.dir.path().join("backups/demo")
    }

    fn stored_object(&self, name: &str) -> PathBuf {
        self.backup_dir().join(name)
    }
}

fn take_backup(setup: &Setup) -> String {
    String::from_utf8(ok(&mut setup.backup()).stdout)
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn backups_under_a_live_writer_hold_exactly_a_prefix_of_its_commits() {
    let s = setup(8 << 20);
    let schema_before: i64 = s.query_source("SELECT count(*) FROM sqlite_schema");
    let writer = start_writer(&s.db);
    wait_for(
        "the writer's first 20 commits",
        Duration::from_secs(60),
        || (writer.acked() >= 20).then_some(()),
    );
    let mut taken = Vec::new();
    for _ in 0..3 {
        let acked_before = writer.acked.load(Ordering::SeqCst);
        let name = take_backup(&s);
        let acked_after = writer.acked.load(Ordering::SeqCst);
        taken.push((name, acked_before, acked_after));
    }
    writer.stop.store(true, Ordering::SeqCst);
    let total = writer
        .handle
        .join()
        .unwrap()
        .expect("the writer must never see an error");

    for (i, (name, before, after)) in taken.iter().enumerate() {
        assert!(after > before, "the writer was stalled during backup {i}");
        let to = s.dir.path().join(format!("restored-{i}.db"));
        ok(s.restore(&to).arg(name).args(["--bump-revision", "0"]));
        let prefix = committed_prefix(&to);
        assert!(
            prefix >= *before,
            "backup {i} lost acknowledged commit {before} (has up to {prefix})"
        );
        assert!(
            prefix <= *after,
            "backup {i} holds commits from after it finished"
        );
    }
    assert!(total > taken.last().unwrap().2);

    // Nothing was written into the source: same tables, still WAL.
    let conn = Connection::open(&s.db).unwrap();
    let schema_after: i64 = kine::query_one(&conn, "SELECT count(*) FROM sqlite_schema", []);
    assert_eq!(schema_before, schema_after);
    let mode: String = kine::query_one(&conn, "PRAGMA journal_mode", []);
    assert_eq!(mode, "wal");
}

#[test]
fn a_backup_does_not_modify_the_source_file() {
    let s = setup(1 << 20);
    let before = sha256(&s.db);
    let mtime = std::fs::metadata(&s.db).unwrap().modified().unwrap();
    take_backup(&s);
    assert_eq!(sha256(&s.db), before);
    assert_eq!(std::fs::metadata(&s.db).unwrap().modified().unwrap(), mtime);
}

#[test]
fn the_age_and_zstd_clis_read_what_we_write_byte_for_byte() {
    let s = setup(2 << 20);
    let name = take_backup(&s);
    let restored = s.dir.path().join("restored.db");
    ok(s.restore(&restored)
        .args(["latest", "--bump-revision", "0"]));

    let plain = s.dir.path().join("cli.db");
    let mut age = Command::new(tool("age"))
        .arg("-d")
        .arg("-i")
        .arg(&s.keys.identity)
        .arg(s.stored_object(&name))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let zstd = Command::new(tool("zstd"))
        .args(["-d", "-q", "-o"])
        .arg(&plain)
        .stdin(age.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(zstd.success() && age.wait().unwrap().success());
    assert_eq!(
        sha256(&plain),
        sha256(&restored),
        "CLI output differs from restore --bump-revision 0"
    );

    // And the manifest's plaintext SHA-256 is what the CLIs produced.
    let listed = list_json(&s.dest, "demo");
    assert_eq!(listed[0]["sha256"].as_str().unwrap(), sha256(&plain));
    assert_eq!(listed[0]["name"].as_str().unwrap(), name);

    // The restored file is a working kine database in WAL mode.
    let conn = Connection::open(&plain).unwrap();
    let mode: String = kine::query_one(&conn, "PRAGMA journal_mode", []);
    assert_eq!(mode, "wal");
}

#[test]
fn we_decrypt_what_the_age_and_zstd_clis_write() {
    let s = setup(1 << 20);
    let sealed = s.dir.path().join("by-cli.zst.age");
    let mut zstd = Command::new(tool("zstd"))
        .args(["-3", "-q", "-c"])
        .arg(&s.db)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let status = Command::new(tool("age"))
        .args(["-r", &s.keys.recipient, "-o"])
        .arg(&sealed)
        .stdin(zstd.stdout.take().unwrap())
        .status()
        .unwrap();
    assert!(status.success() && zstd.wait().unwrap().success());
    let out = s.dir.path().join("out.db");
    ok(vcbackup()
        .arg("decrypt")
        .arg(&sealed)
        .arg("--identity")
        .arg(&s.keys.identity)
        .arg("-o")
        .arg(&out));
    assert_eq!(sha256(&out), sha256(&s.db));

    // Standard input to standard output too.
    let piped = ok(vcbackup()
        .args(["decrypt", "-", "-o", "-", "--identity"])
        .arg(&s.keys.identity)
        .stdin(std::fs::File::open(&sealed).unwrap()));
    assert_eq!(piped.stdout, std::fs::read(&s.db).unwrap());
}

#[test]
fn ssh_recipients_and_identities_work() {
    let s = setup(1 << 20);
    let key = s.dir.path().join("id_ed25519");
    let status = Command::new(tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let name = String::from_utf8(
        ok(vcbackup()
            .args([
                "backup",
                "--name",
                "demo",
                "--destination",
                &s.dest,
                "--recipient",
                public.trim(),
            ])
            .arg("--source")
            .arg(&s.db))
        .stdout,
    )
    .unwrap();
    let out = s.dir.path().join("out.db");
    ok(&mut decrypt(&s.stored_object(name.trim()), &key, &out));
    assert_eq!(sha256(&out), sha256(&s.db));
    // The age CLI agrees.
    let age = Command::new(tool("age"))
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(s.stored_object(name.trim()))
        .output()
        .unwrap();
    assert!(age.status.success());
}

#[test]
fn restore_bumps_the_kine_revision_and_replaces_stale_wal_files() {
    let s = setup(1 << 20);
    let revision: i64 = s.query_source("SELECT max(id) FROM kine");
    take_backup(&s);
    let listed = list_json(&s.dest, "demo");
    assert_eq!(listed[0]["revision"].as_i64(), Some(revision));

    let to = s.dir.path().join("target.db");
    std::fs::write(&to, b"old").unwrap();
    std::fs::write(s.dir.path().join("target.db-wal"), b"stale wal").unwrap();
    std::fs::write(s.dir.path().join("target.db-shm"), b"stale shm").unwrap();
    ok(s.restore(&to).arg("--force"));
    assert!(!s.dir.path().join("target.db-wal").exists());
    assert!(!s.dir.path().join("target.db-shm").exists());
    let conn = Connection::open(&to).unwrap();
    let max: i64 = kine::query_one(&conn, "SELECT max(id) FROM kine", []);
    assert_eq!(max, revision + 1000);
    // The next revision kine writes continues above the bump.
    conn.execute("INSERT INTO kine (name, created, deleted, create_revision, prev_revision, lease, value, old_value) VALUES ('/registry/x', 1, 0, 0, 0, 0, x'', x'')", []).unwrap();
    assert_eq!(conn.last_insert_rowid(), revision + 1001);
}

#[test]
fn list_is_newest_first_and_at_picks_the_newest_not_newer() {
    let s = setup(256 << 10);
    // Names and `created` carry milliseconds: two backups one after the other differ.
    let first = take_backup(&s);
    let second = take_backup(&s);
    let listed = list_json(&s.dest, "demo");
    let names: Vec<&str> = listed.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert_eq!(names, [second.as_str(), first.as_str()]);
    for item in &listed {
        for field in ["created", "kind", "size", "stored_size", "sha256"] {
            assert!(!item[field].is_null(), "missing {field}");
        }
        chrono::DateTime::parse_from_rfc3339(item["created"].as_str().unwrap()).unwrap();
        assert_eq!(item["kind"], "sqlite");
    }
    let table = String::from_utf8(
        ok(vcbackup().args(["list", "--name", "demo", "--destination", &s.dest])).stdout,
    )
    .unwrap();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("STORED"),
        "{table}"
    );
    assert!(
        lines[1].starts_with(&second) && lines[2].starts_with(&first),
        "{table}"
    );

    let at = listed[1]["created"].as_str().unwrap();
    let to = s.dir.path().join("at.db");
    let out = ok(s.restore(&to).args(["--at", at]));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&first));

    let err = error_line(&fails(
        s.restore(&s.dir.path().join("x.db"))
            .args(["--at", "2000-01-01T00:00:00Z"]),
    ));
    assert!(
        err.contains("no backup taken at or before 2000-01-01"),
        "{err}"
    );
}

#[test]
fn restore_never_overwrites_without_force_and_if_missing_keeps_the_target() {
    let s = setup(256 << 10);
    take_backup(&s);
    let to = s.dir.path().join("existing.db");
    std::fs::write(&to, b"precious").unwrap();
    let err = error_line(&fails(&mut s.restore(&to)));
    assert!(
        err.contains("existing.db") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&to).unwrap(), b"precious");
    ok(s.restore(&to).arg("--if-missing"));
    assert_eq!(std::fs::read(&to).unwrap(), b"precious");
    let fresh = s.dir.path().join("fresh.db");
    ok(s.restore(&fresh).arg("--if-missing"));
    assert!(fresh.exists());
}

#[test]
fn bad_sources_and_recipients_are_named_and_store_nothing() {
    let s = setup(256 << 10);
    let text = s.dir.path().join("notes.txt");
    std::fs::write(&text, "this is not a database, just notes\n").unwrap();
    let missing = s.dir.path().join("missing/state.db");
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--source".into(), missing.display().to_string()],
            format!("open source {}", missing.display()),
        ),
        (
            vec!["--source".into(), text.display().to_string()],
            "not an SQLite database".into(),
        ),
        (
            vec!["--source".into(), s.dir.path().display().to_string()],
            "is a directory".into(),
        ),
        (
            vec!["--recipient".into(), "age1notakey".into()],
            "invalid recipient \"age1notakey\"".into(),
        ),
        (
            vec![
                "--recipients-file".into(),
                "/nonexistent/recipients.txt".into(),
            ],
            "read recipients file /nonexistent/recipients.txt".into(),
        ),
        (
            vec!["--destination".into(), "s4://bucket".into()],
            "invalid destination \"s4://bucket\"".into(),
        ),
        (
            vec!["--compression-level".into(), "42".into()],
            "invalid compression level 42".into(),
        ),
        (
            vec!["--name".into(), "Bad/Name".into()],
            "invalid name \"Bad/Name\"".into(),
        ),
    ];
    for (args, expected) in cases {
        let mut cmd = vcbackup();
        cmd.arg("backup");
        for (flag, value) in [
            ("--name", "demo".to_string()),
            ("--destination", s.dest.clone()),
            ("--recipient", s.keys.recipient.clone()),
            ("--source", s.db.display().to_string()),
        ] {
            if !args.iter().any(|a| a == flag) {
                cmd.args([flag, &value]);
            }
        }
        let err = error_line(&fails(cmd.args(&args)));
        assert!(
            err.contains(&expected),
            "{args:?}: expected {expected:?} in {err:?}"
        );
    }
    // Without any recipient the agent refuses, unless encryption is declined by name.
    let mut no_recipient = vcbackup();
    no_recipient
        .args(["backup", "--name", "demo", "--destination", &s.dest])
        .arg("--source")
        .arg(&s.db);
    let err = error_line(&fails(&mut no_recipient));
    assert!(
        err.contains("no recipient") && err.contains("--no-encryption"),
        "{err}"
    );
    assert!(
        files(&s.backup_dir()).is_empty(),
        "a failed backup left {:?}",
        files(&s.backup_dir())
    );

    let name = String::from_utf8(ok(no_recipient.arg("--no-encryption")).stdout).unwrap();
    assert!(name.trim().ends_with("-sqlite.zst"), "{name}");
    let restored = s.dir.path().join("plain.db");
    ok(vcbackup()
        .args([
            "restore",
            "--name",
            "demo",
            "--destination",
            &s.dest,
            "--bump-revision",
            "0",
            "--to",
        ])
        .arg(&restored));
    assert_eq!(sha256(&restored), sha256(&s.db));
}

#[test]
fn a_private_key_given_as_recipient_is_refused_without_echoing_it() {
    let s = setup(256 << 10);
    let secret = std::fs::read_to_string(&s.keys.identity).unwrap();
    let out = vcbackup()
        .args(["backup", "--name", "demo", "--destination", &s.dest])
        .arg("--source")
        .arg(&s.db)
        .env("VCBACKUP_RECIPIENTS", secret.trim())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("private key"), "{stderr}");
    assert!(
        !stderr.contains(&secret.trim()[20..]),
        "the secret was echoed: {stderr}"
    );
}

#[test]
fn wrong_identities_unknown_names_and_damaged_backups_replace_nothing() {
    let s = setup(1 << 20);
    let name = take_backup(&s);
    let to = s.dir.path().join("target.db");
    std::fs::write(&to, b"precious").unwrap();

    let other = age_keys(s.dir.path(), "other.txt");
    let mut wrong = vcbackup();
    wrong
        .args([
            "restore",
            "--force",
            "--name",
            "demo",
            "--destination",
            &s.dest,
            "--identity",
        ])
        .arg(&other.identity)
        .arg("--to")
        .arg(&to);
    let err = error_line(&fails(&mut wrong));
    assert!(
        err.contains("does not match any recipient") && err.contains("other.txt"),
        "{err}"
    );

    let err = error_line(&fails(
        s.restore(&to)
            .args(["--force", "demo-20000101T000000.000Z-sqlite.zst.age"]),
    ));
    assert!(
        err.contains("no backup named \"demo-20000101T000000.000Z-sqlite.zst.age\""),
        "{err}"
    );

    let not_identity = s.dir.path().join("garbage.txt");
    std::fs::write(&not_identity, "AGE-SECRET-KEY-1NOPE\n").unwrap();
    let err = error_line(&fails(&mut decrypt(
        &s.stored_object(&name),
        &not_identity,
        &to,
    )));
    assert!(
        err.contains("garbage.txt") && err.contains("line 1") && !err.contains("NOPE"),
        "{err}"
    );

    // Truncated, then tampered: decoding fails and the target keeps its content.
    let object = s.stored_object(&name);
    let original = std::fs::read(&object).unwrap();
    std::fs::write(&object, &original[..original.len() - 4096]).unwrap();
    let err = error_line(&fails(s.restore(&to).arg("--force")));
    assert!(
        err.contains(&name) && err.contains("truncated") && err.contains("its manifest"),
        "{err}"
    );
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x40;
    std::fs::write(&object, &tampered).unwrap();
    let err = error_line(&fails(s.restore(&to).arg("--force")));
    assert!(err.contains(&name), "{err}");
    assert_eq!(std::fs::read(&to).unwrap(), b"precious");

    // decrypt of a damaged download writes nothing.
    let out = s.dir.path().join("decrypted.db");
    let err = error_line(&fails(&mut decrypt(&object, &s.keys.identity, &out)));
    assert!(err.contains(&*object.display().to_string()), "{err}");
    assert!(!out.exists());
    assert_eq!(
        files(s.dir.path())
            .iter()
            .filter(|f| f.contains(".vcbackup-"))
            .count(),
        0
    );
}

#[test]
fn a_manifest_that_disagrees_with_the_data_fails_verification() {
    let s = setup(256 << 10);
    let name = take_backup(&s);
    let manifest_path = s.backup_dir().join(format!("{name}.json"));
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    manifest["sha256"] = serde_json::Value::String("0".repeat(64));
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let to = s.dir.path().join("t.db");
    let err = error_line(&fails(&mut s.restore(&to)));
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(!to.exists());
    // decrypt checks the manifest beside a downloaded file too.
    let err = error_line(&fails(&mut decrypt(
        &s.stored_object(&name),
        &s.keys.identity,
        &to,
    )));
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(!to.exists());
}

/// A full disk: the destination is a 512 KiB tmpfs.
#[test]
fn a_full_destination_fails_cleanly() {
    let s = setup(8 << 20);
    let mount = s.dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "this test mounts a small tmpfs and needs root"
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.clone());
    let mut cmd = unencrypted("backup", &file_url(&mount));
    cmd.args(["--compression-level", "1", "--source"])
        .arg(&s.db);
    let err = error_line(&fails(&mut cmd));
    assert!(
        err.contains("No space left on device") && err.contains(&*mount.display().to_string()),
        "{err}"
    );
    assert!(
        files(&mount.join("demo")).is_empty(),
        "left {:?}",
        files(&mount.join("demo"))
    );
}

#[test]
fn a_relative_file_destination_is_refused_and_nothing_is_written_at_the_root() {
    let s = setup(64 << 10);
    let dir = format!("vcbackup-relative-{}", std::process::id());
    for spelling in [
        format!("file:{dir}"),
        format!("file:/{dir}"),
        format!("file://{dir}"),
    ] {
        let mut cmd = vcbackup();
        cmd.args(["backup", "--name", "demo", "--no-encryption"])
            .args(["--destination", &spelling])
            .arg("--source")
            .arg(&s.db);
        let err = error_line(&fails(&mut cmd));
        assert!(
            err.contains(&format!("invalid destination {spelling:?}")) && err.contains("file:///"),
            "{err}"
        );
        let at_root = Path::new("/").join(&dir);
        let leaked = at_root.exists();
        let _ = std::fs::remove_dir_all(&at_root);
        assert!(!leaked, "{spelling} wrote to {}", at_root.display());
    }
}

/// The binary under `umask`, as a pod's runtime may set it.
fn with_umask(umask: &str, cmd: &Command) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("umask {umask}; exec \"$@\""))
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => shell.env(key, value),
            None => shell.env_remove(key),
        };
    }
    shell
}

#[test]
fn every_object_and_manifest_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(64 << 10);
    for umask in ["000", "022"] {
        let mut plain = s.backup();
        plain.args(["--no-encryption"]);
        let plain: Vec<String> = plain
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .filter(|a| a != "--recipient" && a != &s.keys.recipient)
            .collect();
        let mut cmd = vcbackup();
        cmd.args(&plain);
        ok(&mut with_umask(umask, &cmd));
        ok(&mut with_umask(umask, &s.backup()));
    }
    let files = files(&s.backup_dir());
    assert_eq!(files.len(), 8, "{files:?}");
    for name in files {
        let mode = std::fs::metadata(s.backup_dir().join(&name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}: {:o}", mode & 0o777);
    }
    let dir_mode = std::fs::metadata(s.backup_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        dir_mode & 0o077,
        0,
        "backup directory is {:o}",
        dir_mode & 0o777
    );
}

#[test]
fn partial_files_of_killed_backups_are_swept_once_old_and_live_ones_kept() {
    let s = setup(48 << 20);
    // A backup killed mid-write (SIGKILL, as the OOM killer sends) leaves its partial file.
    let mut child = s
        .backup()
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = wait_for("a partial file", Duration::from_secs(30), || {
        files(&s.backup_dir())
            .into_iter()
            .find(|n| n.starts_with(".partial-"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(files(&s.backup_dir()).contains(&partial));

    // A partial file still being written (fresh) is never touched; an old one goes.
    let live = s.backup_dir().join(".partial-demo-live.zst.age.1.0");
    std::fs::write(&live, b"being written").unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86400);
    std::fs::File::options()
        .write(true)
        .open(s.backup_dir().join(&partial))
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let name = take_backup(&s);
    let left = files(&s.backup_dir());
    assert!(!left.contains(&partial), "{left:?}");
    assert!(
        left.contains(&".partial-demo-live.zst.age.1.0".to_string()),
        "{left:?}"
    );
    assert!(left.contains(&name), "{left:?}");

    // prune sweeps with its own limit; the backup itself is kept. The live
    // partial file is made older than that limit.
    std::fs::File::options()
        .write(true)
        .open(&live)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3))
        .unwrap();
    let pruned = String::from_utf8(
        ok(vcbackup().args([
            "prune",
            "--name",
            "demo",
            "--destination",
            &s.dest,
            "--abort-uploads-after",
            "1s",
        ]))
        .stdout,
    )
    .unwrap();
    assert!(pruned.contains("aborted 1 unfinished upload"), "{pruned}");
    let left = files(&s.backup_dir());
    assert!(!left.iter().any(|n| n.starts_with(".partial-")), "{left:?}");
    assert!(left.contains(&name), "{left:?}");
}

#[test]
fn a_damaged_identity_file_is_called_that_naming_the_line_not_the_key() {
    let s = setup(256 << 10);
    let name = take_backup(&s);
    let key = std::fs::read_to_string(&s.keys.identity).unwrap();
    let key = key.trim();
    // One character changed in the middle of the key, as a bad copy and paste does.
    let mut damaged: Vec<char> = key.chars().collect();
    let middle = damaged.len() / 2;
    damaged[middle] = if damaged[middle] == 'Q' { 'P' } else { 'Q' };
    let damaged: String = damaged.into_iter().collect();
    let identity = s.dir.path().join("damaged.txt");
    std::fs::write(
        &identity,
        format!(
            "# created: today\n# public key: {}\n{damaged}\n",
            s.keys.recipient
        ),
    )
    .unwrap();
    let err = error_line(&fails(&mut decrypt(
        &s.stored_object(&name),
        &identity,
        &s.dir.path().join("out.db"),
    )));
    assert!(
        err.contains("damaged.txt")
            && err.contains("not a valid identity")
            && err.contains("line 3"),
        "{err}"
    );
    assert!(!err.contains("plugin"), "{err}");
    assert!(!err.contains(&damaged[20..]), "the key was echoed: {err}");
}

#[cfg(unix)]
#[test]
fn an_identity_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let s = setup(256 << 10);
    take_backup(&s);
    let shown = s.keys.identity.display().to_string();
    for (mode, warned) in [(0o644, true), (0o640, true), (0o600, false), (0o400, false)] {
        std::fs::set_permissions(&s.keys.identity, std::fs::Permissions::from_mode(mode)).unwrap();
        let to = s.dir.path().join(format!("restored-{mode:o}.db"));
        let out = ok(&mut s.restore(&to));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warning: Vec<&str> = stderr.lines().filter(|l| l.contains("chmod 600")).collect();
        if warned {
            assert_eq!(warning.len(), 1, "mode {mode:o}: {stderr}");
            assert!(warning[0].contains(&shown), "{stderr}");
        } else {
            assert!(warning.is_empty(), "mode {mode:o}: {stderr}");
        }
    }
}

#[cfg(unix)]
#[test]
fn restore_and_decrypt_onto_a_dangling_symlink_fail_first_naming_force() {
    let s = setup(256 << 10);
    let name = take_backup(&s);
    let to = s.dir.path().join("link.db");
    std::os::unix::fs::symlink(s.dir.path().join("gone/state.db"), &to).unwrap();
    let err = error_line(&fails(&mut s.restore(&to)));
    assert!(
        err.contains("link.db") && err.contains("symlink") && err.contains("--force"),
        "{err}"
    );
    // --if-missing does not keep a link to nothing: there is no database to keep.
    let err = error_line(&fails(s.restore(&to).arg("--if-missing")));
    assert!(err.contains("--force"), "{err}");
    let err = error_line(&fails(&mut decrypt(
        &s.stored_object(&name),
        &s.keys.identity,
        &to,
    )));
    assert!(err.contains("link.db") && err.contains("--force"), "{err}");
    assert!(to.symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(
        files(s.dir.path())
            .iter()
            .filter(|f| f.contains(".vcbackup-"))
            .count(),
        0
    );
    // --force replaces the link itself, not a file at its end.
    ok(s.restore(&to).args(["--force", "--bump-revision", "0"]));
    assert!(to.symlink_metadata().unwrap().file_type().is_file());
    assert_eq!(sha256(&to), sha256(&s.db));
}

/// Appends to, then swaps, stored objects: the stored SHA-256 in the manifest
/// catches both, by name, and nothing is replaced.
#[test]
fn restore_and_decrypt_check_the_stored_digest() {
    for encrypted in [false, true] {
        let s = setup(256 << 10);
        let backup = |s: &Setup| {
            let mut cmd = s.backup();
            if !encrypted {
                cmd = unencrypted("backup", &s.dest);
                cmd.arg("--source").arg(&s.db);
            }
            String::from_utf8(ok(&mut cmd).stdout)
                .unwrap()
                .trim()
                .to_string()
        };
        let first = backup(&s);
        Connection::open(&s.db)
            .unwrap()
            .execute("DELETE FROM kine WHERE id % 2 = 0", [])
            .unwrap();
        let second = backup(&s);
        let (first_object, second_object) = (s.stored_object(&first), s.stored_object(&second));
        let original = std::fs::read(&first_object).unwrap();
        let to = s.dir.path().join("target.db");
        std::fs::write(&to, b"precious").unwrap();
        let restore = |name: &str| {
            let mut cmd = s.restore(&to);
            cmd.args(["--force", name]);
            error_line(&fails(&mut cmd))
        };
        let decrypt_fails = |object: &Path| {
            error_line(&fails(&mut decrypt(
                object,
                &s.keys.identity,
                &s.dir.path().join("decrypted.db"),
            )))
        };
        let mismatch = |err: &str, what: &str| {
            assert!(
                err.contains(what) && err.contains("stored object does not match its manifest"),
                "encrypted={encrypted}: {err}"
            );
        };

        // Bytes appended after a complete object: the decoder stops before them.
        let mut appended = original.clone();
        appended.extend_from_slice(b"appended after the end");
        std::fs::write(&first_object, &appended).unwrap();
        mismatch(&restore(&first), &first);
        mismatch(
            &decrypt_fails(&first_object),
            &first_object.display().to_string(),
        );

        // Another backup of the same cluster under this one's name.
        std::fs::copy(&second_object, &first_object).unwrap();
        mismatch(&restore(&first), &first);
        mismatch(
            &decrypt_fails(&first_object),
            &first_object.display().to_string(),
        );

        assert_eq!(std::fs::read(&to).unwrap(), b"precious");
        assert!(!s.dir.path().join("decrypted.db").exists());

        // Without a manifest beside it, decrypt has nothing to check the bytes against.
        let alone = s.dir.path().join("alone.zst");
        std::fs::write(&alone, &original).unwrap();
        ok(&mut decrypt(
            &alone,
            &s.keys.identity,
            &s.dir.path().join("alone.db"),
        ));
        std::fs::write(&first_object, &original).unwrap();
        ok(s.restore(&to).args(["--force", &first]));
    }
}

/// A corrupt source fails the backup, and the files SQLite made beside it
/// (a read-only connection still creates -wal and -shm) are gone again; so
/// after a successful backup of a database nobody has open.
#[test]
fn a_backup_leaves_no_new_file_beside_the_source() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = file_url(&tmp.path().join("backups"));
    let source_dir = tmp.path().join("data");
    std::fs::create_dir(&source_dir).unwrap();
    let db = source_dir.join("state.db");
    small_kine_db(&db, 256 << 10);
    assert_eq!(files(&source_dir), ["state.db"]);
    let backup = || {
        let mut cmd = unencrypted("backup", &dest);
        cmd.arg("--source").arg(&db);
        cmd
    };
    ok(&mut backup());
    assert_eq!(files(&source_dir), ["state.db"]);

    // Garbage after the 100-byte header: still WAL mode, but page 1 is unreadable.
    let mut data = std::fs::read(&db).unwrap();
    for (i, byte) in data.iter_mut().enumerate().skip(100) {
        *byte = (i * 7 + 13) as u8;
    }
    std::fs::write(&db, &data).unwrap();
    let err = error_line(&fails(&mut backup()));
    assert!(err.contains(&*db.display().to_string()), "{err}");
    assert_eq!(files(&source_dir), ["state.db"]);
}
