//! What a user sees for each mistake: the exact standard error, standard
//! output and exit status, pinned by the scenario files in `tests/cmd/`
//! (trycmd). A changed message shows as a diff; after a deliberate change,
//! `TRYCMD=overwrite cargo test --test cli_errors` rewrites the files.
//!
//! Every scenario runs in one working directory made here, so the paths in
//! its arguments and messages are short relative names: `state.db` (a kine
//! database), `notes.txt` (not a database), `key.txt` and `other.txt` (age
//! identities, fixed so the messages are), `garbage.txt` (not an identity),
//! `empty/` (a data directory with nothing in it), and `backups/` holding one
//! backup of `state.db` under the name `demo`, taken without a PKI.
//!
//! A `file:` destination must be absolute, so `VCBACKUP_DESTINATION` points at
//! `backups/`, and in the expected output `[CWD]` stands for the working
//! directory, `[BACKUP]` for that backup's name and `[STARTED]` for its time.
//! `VCBACKUP_LOG=warn` leaves out the info lines (with their timestamps)
//! before an error. Scenarios set `env.inherit = false`: nothing else from the
//! environment of whoever runs the tests reaches the binary.

mod common;

use std::path::Path;

use common::*;

/// The identity in `key.txt` (made for these tests; it protects nothing).
/// The backup in `backups/` is encrypted to it.
const KEY: &str = "AGE-SECRET-KEY-1ZH5JFK634MPYU3L77WK5AL8CSLADC2ZWP6S9GEFJ6UD5KGH8VZAQPF9E8A";
const RECIPIENT: &str = "age1qqty2z0ar8fvnhym4y907qq36m6q7hra95rrfehryc9sryvrtftq4u6g0s";
/// The identity in `other.txt`, which opens nothing.
const OTHER_KEY: &str =
    "AGE-SECRET-KEY-1SU5RJEQWQJT865DXCZPWXG66UD3UPALWNRSL7HH3DWM4T0FRFXKQYN55KZ";

#[test]
fn every_user_error_prints_exactly_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    small_kine_db(&cwd.join("state.db"), 64 << 10);
    std::fs::write(
        cwd.join("notes.txt"),
        "this is not a database, just notes\n",
    )
    .unwrap();
    std::fs::write(cwd.join("key.txt"), format!("{KEY}\n")).unwrap();
    std::fs::write(cwd.join("other.txt"), format!("{OTHER_KEY}\n")).unwrap();
    std::fs::write(cwd.join("garbage.txt"), "AGE-SECRET-KEY-1NOPE\n").unwrap();
    // Owner-only, as identities should be: no permission warning in the pinned output.
    for key in ["key.txt", "other.txt", "garbage.txt"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(cwd.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    std::fs::create_dir(cwd.join("empty")).unwrap();
    let backups = file_url(&cwd.join("backups"));
    let backup = ok_stdout(vcbackup().current_dir(cwd).args([
        "backup",
        "--name",
        "demo",
        "--source",
        "state.db",
        // Taken without a PKI, whatever the machine has at /data/pki.
        "--pki-dir",
        "no-pki",
        "--recipient",
        RECIPIENT,
        "--destination",
        &backups,
    ]));
    let manifest = &list_json(&backups, "demo")[0];
    let started = manifest["created"].as_str().unwrap().to_string();
    let before = files_under(cwd);

    // The scenarios' relative paths are relative to this; the test binary has
    // no other test that could mind.
    std::env::set_current_dir(cwd).unwrap();
    trycmd::TestCases::new()
        .register_bin("vcbackup", Path::new(BINARY))
        .env("VCBACKUP_DESTINATION", backups)
        .env("VCBACKUP_LOG", "warn")
        .extend_vars([
            ("[BACKUP]", backup.trim().to_string()),
            ("[STARTED]", started),
        ])
        .unwrap()
        // A scenario that does not fail as it should might start a daemon.
        .timeout(std::time::Duration::from_secs(60))
        .case(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cmd/*.toml"))
        .run();

    assert_eq!(
        files_under(cwd),
        before,
        "a failed command left something behind"
    );
}
