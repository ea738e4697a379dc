//! `--source auto`: which backing store this vCluster pod has, judged from
//! what lies in its data directory. Deployed etcd leaves no trace there
//! (its data is in another pod), so it is always named explicitly.

use std::path::{Path, PathBuf};

use super::etcd::default_cert_paths;

/// The endpoint of embedded etcd, inside the control-plane pod.
pub const EMBEDDED_ETCD_ENDPOINT: &str = "https://127.0.0.1:2379";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detected {
    Sqlite(PathBuf),
    /// The endpoint of the embedded etcd.
    Etcd(String),
}

/// What was found and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub found: Detected,
    pub reason: String,
}

/// Looks, in order, for kine's SQLite database in the v0.20+ layout, in the
/// k3s layout, then for embedded etcd. Fails with every place looked at.
pub fn detect(data_dir: &Path) -> Result<Detection, String> {
    let mut looked = Vec::new();
    for (relative, layout) in [
        (
            "state.db",
            "kine's SQLite database (vCluster v0.20+ layout)",
        ),
        (
            "server/db/state.db",
            "kine's SQLite database (k3s distro layout)",
        ),
    ] {
        let path = data_dir.join(relative);
        if path.is_file() {
            return Ok(Detection {
                reason: format!("found {}: {layout}", path.display()),
                found: Detected::Sqlite(path),
            });
        }
        looked.push(format!("{} (no such file)", path.display()));
    }

    let etcd_dir = data_dir.join("etcd");
    let certs = default_cert_paths(data_dir);
    let present: Vec<&PathBuf> = certs.iter().filter(|c| c.is_file()).collect();
    if etcd_dir.is_dir() {
        // The syncer may not have copied the certificates in yet: opening waits for them.
        let certs_note = if present.len() == certs.len() {
            "with the etcd client certificates".to_string()
        } else {
            format!(
                "client certificates not all there yet ({} of {})",
                present.len(),
                certs.len()
            )
        };
        return Ok(Detection {
            reason: format!(
                "found {} ({certs_note}): embedded etcd at {EMBEDDED_ETCD_ENDPOINT}",
                etcd_dir.display()
            ),
            found: Detected::Etcd(EMBEDDED_ETCD_ENDPOINT.to_string()),
        });
    }
    looked.push(format!(
        "{} (no such directory; embedded etcd keeps its data there)",
        etcd_dir.display()
    ));
    Err(format!(
        "no backing store found under {}: looked for {}. Is --data-dir (VCBACKUP_DATA_DIR) the control plane's data volume? For deployed etcd, pass --source https://<release>-etcd:2379",
        data_dir.display(),
        looked.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, relative: &str) {
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn finds_each_layout() {
        let v20 = tempfile::tempdir().unwrap();
        touch(v20.path(), "state.db");
        let found = detect(v20.path()).unwrap();
        assert_eq!(found.found, Detected::Sqlite(v20.path().join("state.db")));
        assert!(found.reason.contains("v0.20+"), "{}", found.reason);

        let k3s = tempfile::tempdir().unwrap();
        touch(k3s.path(), "server/db/state.db");
        let found = detect(k3s.path()).unwrap();
        assert_eq!(
            found.found,
            Detected::Sqlite(k3s.path().join("server/db/state.db"))
        );
        assert!(found.reason.contains("k3s"), "{}", found.reason);

        let etcd = tempfile::tempdir().unwrap();
        touch(etcd.path(), "etcd/member/snap/db");
        touch(etcd.path(), "pki/etcd/ca.crt");
        touch(etcd.path(), "pki/apiserver-etcd-client.crt");
        touch(etcd.path(), "pki/apiserver-etcd-client.key");
        let found = detect(etcd.path()).unwrap();
        assert_eq!(found.found, Detected::Etcd(EMBEDDED_ETCD_ENDPOINT.into()));
        assert!(found.reason.contains("with the etcd client certificates"));
    }

    #[test]
    fn embedded_etcd_is_found_before_its_certificates_arrive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etcd")).unwrap();
        let found = detect(dir.path()).unwrap();
        assert_eq!(found.found, Detected::Etcd(EMBEDDED_ETCD_ENDPOINT.into()));
        assert!(found.reason.contains("0 of 3"), "{}", found.reason);
    }

    #[test]
    fn nothing_found_lists_every_place_looked() {
        let dir = tempfile::tempdir().unwrap();
        // A directory named state.db is not a database.
        std::fs::create_dir(dir.path().join("state.db")).unwrap();
        let err = detect(dir.path()).unwrap_err();
        for place in ["state.db", "server/db/state.db", "etcd"] {
            let path = dir.path().join(place).display().to_string();
            assert!(err.contains(&path), "{place} missing from: {err}");
        }
        assert!(err.contains("--source https://"), "{err}");
    }
}
