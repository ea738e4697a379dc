//! The external tools the tests need, age keys, and small helpers over files.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What installs the tools; a test that misses one says to run it.
pub const SETUP: &str = "run scripts/setup (it installs etcd-server, etcd-client, age, zstd, openssl, python3 and moto)";

/// A tool the tests need; missing means the setup did not run.
pub fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("`{name}` is missing: {SETUP}"))
}

/// An age identity file and its recipient.
pub struct Keys {
    pub identity: PathBuf,
    pub recipient: String,
}

/// A fresh age key pair made in process, the identity written to `dir/name`.
pub fn age_keys(dir: &Path, name: &str) -> Keys {
    use age::secrecy::ExposeSecret;
    let identity = age::x25519::Identity::generate();
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", identity.to_string().expose_secret())).unwrap();
    // Owner-only, as an operator keeps it: other modes get a warning (tested on its own).
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    Keys {
        identity: path,
        recipient: identity.to_public().to_string(),
    }
}

/// A fresh age key pair made by the `age-keygen` CLI, so the identity file has
/// its comment lines, written to `dir/name`.
pub fn age_keygen(dir: &Path, name: &str) -> Keys {
    let identity = dir.join(name);
    let output = crate::common::run(Command::new(tool("age-keygen")).arg("-o").arg(&identity));
    assert!(output.status.success(), "age-keygen failed");
    let text = std::fs::read_to_string(&identity).unwrap();
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    Keys {
        identity,
        recipient,
    }
}

/// Every file under `dir`, directories walked, as sorted paths relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, base, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `len` random lowercase letters and digits, for names no other test uses.
pub fn random_text(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// `promtool check metrics` finds nothing to say about `text`.
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && problems.trim().is_empty(),
        "promtool check metrics: {problems}"
    );
}
