//! The sidecar as a process: `vcbackup run` (or `fleet`, anything that serves
//! `--listen`), its standard error captured to a file, killed on drop. Every
//! wait on it ([`Daemon::wait_for`]) fails with the agent's log, and at once
//! if the agent has exited.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::common::{free_port, http_get, metric, ok, wait_for_or};

pub struct Daemon {
    child: Mutex<Child>,
    pub port: u16,
    log: PathBuf,
    /// Holds the log when the test gave no place for it.
    _log_dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts `cmd` (a `vcbackup run …` without --listen) with the log level
    /// it has, and waits until it serves.
    pub fn start(cmd: Command) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        Daemon::start_with_log(cmd, log, Some(dir))
    }

    /// As `start`, with the log at info, written to `log`.
    pub fn start_logged(mut cmd: Command, log: &Path) -> Daemon {
        cmd.env("VCBACKUP_LOG", "info");
        Daemon::start_with_log(cmd, log.to_path_buf(), None)
    }

    fn start_with_log(mut cmd: Command, log: PathBuf, dir: Option<tempfile::TempDir>) -> Daemon {
        let port = free_port();
        let child = cmd
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let daemon = Daemon {
            child: Mutex::new(child),
            port,
            log,
            _log_dir: dir,
        };
        daemon.wait_for("the daemon to listen", Duration::from_secs(30), || {
            http_get(port, "/readyz")
        });
        daemon
    }

    /// [`crate::common::wait_for`] on this agent: fails at once if it has
    /// exited, and with its log on timeout.
    #[track_caller]
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> Option<T>,
    ) -> T {
        wait_for_or(
            what,
            timeout,
            |timed_out| {
                let exited = self.child.lock().unwrap().try_wait().ok().flatten();
                match exited {
                    Some(status) => Some(format!(
                        "the agent exited ({status}); its log:\n{}",
                        self.log()
                    )),
                    None if timed_out => Some(format!("the agent's log:\n{}", self.log())),
                    None => None,
                }
            },
            check,
        )
    }

    /// GET `path`; panics if nothing answers.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path).unwrap_or_else(|| panic!("GET {path}: no answer"))
    }

    /// `/status` as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (_, body) = self.get("/status");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"))
    }

    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric(&self.metrics(), sample)
    }

    /// The value of `sample`; panics if the agent does not expose it.
    pub fn sample(&self, sample: &str) -> f64 {
        let text = self.metrics();
        metric(&text, sample).unwrap_or_else(|| panic!("no sample {sample} in:\n{text}"))
    }

    /// Waits until `sample` reaches at least `at_least`.
    #[track_caller]
    pub fn wait_metric(&self, sample: &str, at_least: f64, timeout: Duration) -> f64 {
        self.wait_for(&format!("{sample} >= {at_least}"), timeout, || {
            self.metric(sample).filter(|v| *v >= at_least)
        })
    }

    /// What the agent wrote to standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.lock().unwrap().id();
        ok(Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]));
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(&mut self) {
        self.signal("KILL");
        let _ = self.child.get_mut().unwrap().wait();
    }

    /// SIGTERM, and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.child.get_mut().unwrap().wait().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}
