//! The host Secret `<release>-certs` as vCluster reads it at start
//! (`pkg/certs`): one data key per file of the PKI, its path with `/` turned
//! into `-` (`etcd/ca.crt` → `etcd-ca.crt`), labelled `app=vcluster` and
//! `vcluster-name=<release>`. Applied on a new host before `vcluster create
//! --restore`, it makes vCluster download this identity instead of
//! generating a new one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};
use base64::Engine;
use zeroize::Zeroizing;

use super::Pki;

/// What the API server accepts in one Secret's data.
const SECRET_MAX_BYTES: u64 = 1 << 20;

/// The Secret's manifest as YAML (every scalar quoted, so no value is read as
/// anything but a string). `backup` is named in a comment at the top.
pub fn secret_yaml(
    pki: &Pki,
    release: &str,
    namespace: Option<&str>,
    backup: &str,
) -> Result<Zeroizing<String>> {
    dns_label(release, "the release name")?;
    if let Some(namespace) = namespace {
        dns_label(namespace, "--namespace")?;
    }
    let mut data = BTreeMap::new();
    for (path, bytes) in &pki.files {
        let key = path.replace('/', "-");
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
        if !valid {
            bail!(
                "the PKI's file {path:?} cannot be a Secret key (letters, digits, `-`, `.` and `_` only)"
            );
        }
        if let Some(other) = data.insert(key.clone(), (path, bytes)) {
            bail!(
                "the PKI's files {} and {path} would both be the Secret key {key}",
                other.0
            );
        }
    }
    let size: u64 = pki.files.values().map(|d| d.len() as u64).sum();
    if size > SECRET_MAX_BYTES {
        bail!(
            "the PKI holds {size} bytes, more than one Secret may ({SECRET_MAX_BYTES}); it is not a vCluster PKI"
        );
    }
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut yaml = Zeroizing::new(String::new());
    let out = &mut *yaml;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# The identity (PKI) of virtual cluster {release}, from backup {backup}.\n\
         # Apply it on the host before `vcluster create --restore`. It holds private keys."
    );
    let _ = writeln!(out, "apiVersion: v1\nkind: Secret\nmetadata:");
    let _ = writeln!(out, "  name: {}", quote(&format!("{release}-certs")));
    if let Some(namespace) = namespace {
        let _ = writeln!(out, "  namespace: {}", quote(namespace));
    }
    let _ = writeln!(
        out,
        "  labels:\n    app: \"vcluster\"\n    vcluster-name: {}\ntype: Opaque\ndata:",
        quote(release)
    );
    for (key, (_, bytes)) in data {
        let encoded = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(bytes));
        let _ = writeln!(out, "  {}: \"{}\"", quote(&key), encoded.as_str());
    }
    Ok(yaml)
}

/// A DNS-1123 label, as release names and namespaces are.
fn dns_label(text: &str, what: &str) -> Result<()> {
    let bytes = text.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if !ok {
        bail!(
            "{what} {text:?} is not a Kubernetes name (lowercase letters, digits and `-`, at most 63)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pki(files: &[(&str, &[u8])]) -> Pki {
        Pki::of(files)
    }

    #[test]
    fn keys_are_paths_with_dashes_and_values_base64() {
        let yaml = secret_yaml(
            &pki(&[("ca.crt", b"a"), ("etcd/ca.key", b"\0\xff")]),
            "demo",
            Some("team-a"),
            "demo-x.zst.age",
        )
        .unwrap();
        assert!(yaml.contains("  name: \"demo-certs\"\n  namespace: \"team-a\"\n"));
        assert!(yaml.contains("    app: \"vcluster\"\n    vcluster-name: \"demo\"\n"));
        assert!(
            yaml.contains("  \"ca.crt\": \"YQ==\"\n"),
            "{}",
            yaml.as_str()
        );
        assert!(yaml.contains("  \"etcd-ca.key\": \"AP8=\"\n"));
        let without = secret_yaml(&pki(&[("ca.crt", b"a")]), "demo", None, "b").unwrap();
        assert!(!without.contains("namespace"));
    }

    #[test]
    fn bad_names_and_colliding_keys_are_refused() {
        let one = pki(&[("ca.crt", b"a")]);
        for (release, namespace) in [("Demo", None), ("demo", Some("a_b")), ("", None)] {
            assert!(secret_yaml(&one, release, namespace, "b").is_err());
        }
        let twins = pki(&[("etcd-ca.crt", b"a"), ("etcd/ca.crt", b"b")]);
        let err = secret_yaml(&twins, "demo", None, "b").unwrap_err();
        assert!(format!("{err}").contains("etcd-ca.crt"), "{err}");
        let odd = pki(&[("a b.crt", b"a")]);
        assert!(secret_yaml(&odd, "demo", None, "b").is_err());
    }
}
