//! What the scenario tests share: the binary, test databases, keys, tools.
#![allow(dead_code)]

pub mod kine;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn vcbackup() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vcbackup"));
    // Only what a test passes explicitly configures the binary.
    for (key, _) in std::env::vars() {
        if key.starts_with("VCBACKUP_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("VCBACKUP_LOG", "warn");
    cmd
}

/// Runs and returns the output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run vcbackup")
}

/// Runs and insists on success.
pub fn ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// Runs, insists on failure, and returns standard error.
pub fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{cmd:?} should have failed; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// The error line of a failed run: exactly one line starting `error: `.
pub fn error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "expected one error line in: {stderr}");
    errors[0].to_string()
}

/// A tool the tests need; missing means the setup did not run.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: run `scripts/test`, which installs the test tools")
    })
}

pub struct Keys {
    pub identity: PathBuf,
    pub recipient: String,
}

/// A fresh age key pair, the identity written to `dir/name`.
pub fn age_keys(dir: &Path, name: &str) -> Keys {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    Keys {
        identity: path,
        recipient: identity.to_public().to_string(),
    }
}

/// A small kine database in WAL mode with `rows` revisions.
pub fn small_kine_db(path: &Path, bytes: u64) -> i64 {
    let mut conn = kine::open(path).unwrap();
    kine::fill(&mut conn, path, bytes, 7).unwrap()
}

pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `vcbackup list --output json`.
pub fn list_json(destination: &str, name: &str) -> Vec<serde_json::Value> {
    let out = ok(vcbackup().args([
        "list",
        "--output",
        "json",
        "--destination",
        destination,
        "--name",
        name,
    ]));
    serde_json::from_slice(&out.stdout).expect("list prints JSON")
}
