//! The built binary, run as a user or an operator would: [`vcbackup`] with the
//! test process's environment minus any `VCBACKUP_` setting and `VCLUSTER_NAME`
//! (the default `--name`), or a [`Scene`]
//! with nothing from the machine at all (no AWS settings).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BINARY: &str = env!("CARGO_BIN_EXE_vcbackup");

pub fn vcbackup() -> Command {
    let mut cmd = Command::new(BINARY);
    // Only what a test passes explicitly configures the binary.
    for (key, _) in std::env::vars() {
        if key.starts_with("VCBACKUP_") || key == "VCLUSTER_NAME" {
            cmd.env_remove(key);
        }
    }
    cmd.env("VCBACKUP_LOG", "warn");
    cmd
}

/// `vcbackup COMMAND --name demo --no-encryption --destination DESTINATION`,
/// for the rest to be added.
pub fn unencrypted(command: &str, destination: &str) -> Command {
    let mut cmd = vcbackup();
    cmd.args([
        command,
        "--name",
        "demo",
        "--no-encryption",
        "--destination",
        destination,
    ]);
    cmd
}

/// `vcbackup decrypt INPUT -i IDENTITY -o OUT`.
pub fn decrypt(input: &Path, identity: &Path, out: &Path) -> Command {
    let mut cmd = vcbackup();
    cmd.arg("decrypt")
        .arg(input)
        .arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(out);
    cmd
}

/// Runs and returns the output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()))
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

/// Runs, insists on success, and returns standard output.
pub fn ok_stdout(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&ok(cmd).stdout).into_owned()
}

/// Runs, insists on failure with exit status 1, and returns standard error.
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

pub fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
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

/// The backup names `list -o json` shows.
pub fn listed(json: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// The files in `dir` (a virtual cluster's folder of a directory destination,
/// say), sorted; none if it does not exist.
pub fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The verify records in a folder, as `(backup, mode, result)`.
pub fn verify_records(dir: &Path) -> Vec<(String, String, String)> {
    files(dir)
        .into_iter()
        .filter_map(|name| {
            let (backup, rest) = name.strip_suffix(".json")?.rsplit_once(".verify-")?;
            let mut parts = rest.splitn(3, '-');
            let _time = parts.next()?;
            Some((
                backup.to_string(),
                parts.next()?.to_string(),
                parts.next()?.to_string(),
            ))
        })
        .collect()
}

/// A place for one test's files, and the environment the binary runs in: no
/// AWS settings from the machine, nothing but what the test gives.
pub struct Scene {
    pub dir: tempfile::TempDir,
    pub env: Vec<(String, String)>,
}

impl Scene {
    pub fn new() -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().display().to_string();
        let env = vec![
            ("HOME".into(), home.clone()),
            ("AWS_CONFIG_FILE".into(), "/dev/null".into()),
            ("AWS_SHARED_CREDENTIALS_FILE".into(), "/dev/null".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ("VCBACKUP_LOG".into(), "info".into()),
        ];
        Scene { dir, env }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
    }

    pub fn static_keys(&mut self, access_key: &str, secret: &str) {
        self.set("AWS_ACCESS_KEY_ID", access_key);
        self.set("AWS_SECRET_ACCESS_KEY", secret);
    }

    /// The binary with `args`, in this scene's environment only.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// Runs and insists on success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "vcbackup {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and insists on failure (any status); returns standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "vcbackup {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}
