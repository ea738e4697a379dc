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

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET; returns the status code and body, or None if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `check` every 100 ms until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The value of one sample in a Prometheus text exposition, e.g. `vcbackup_backups_total{result="success"}`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|value| value.trim().parse().ok())
}
