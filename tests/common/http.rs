//! Loopback ports, plain HTTP GETs of the daemon's endpoints, polling, and
//! Prometheus samples.

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

/// Polls `check` every 100 ms until it returns Some, or panics after `timeout`
/// naming `what`.
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    check: impl FnMut() -> Option<T>,
) -> T {
    wait_for_or(what, timeout, |_| None, check)
}

/// [`wait_for`], with `why` to explain a failure: asked after every miss with
/// `false`, a `Some` ends the wait at once (what was to answer is gone); asked
/// with `true` on timeout, what it says is added to the panic (a log, say).
#[track_caller]
pub fn wait_for_or<T>(
    what: &str,
    timeout: std::time::Duration,
    mut why: impl FnMut(bool) -> Option<String>,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        if let Some(reason) = why(false) {
            panic!("gave up waiting for {what}: {reason}");
        }
        if start.elapsed() >= timeout {
            let reason = why(true).map(|r| format!("; {r}")).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}{reason}");
        }
        // The poll interval, not a wait: `check` decides when the wait is over.
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
