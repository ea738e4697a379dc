//! age encryption to public recipients. The pod only ever holds public keys;
//! identities (private keys) are read by `decrypt` and `restore`, off the pod.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};

/// The public keys a backup is encrypted to.
pub struct Recipients {
    keys: Vec<Box<dyn age::Recipient + Send + Sync>>,
    /// As given, for the manifest.
    texts: Vec<String>,
}

impl Recipients {
    /// Parses recipients given as flags, an env var (comma or newline separated)
    /// and recipients files (one per line, `#` comments).
    pub fn parse(values: &[String], files: &[std::path::PathBuf]) -> Result<Self> {
        let mut keys: Vec<Box<dyn age::Recipient + Send + Sync>> = Vec::new();
        let mut texts = Vec::new();
        let mut add = |text: &str, origin: &str| -> Result<()> {
            let key =
                parse_recipient(text).with_context(|| format!("invalid recipient {origin}"))?;
            keys.push(key);
            texts.push(text.to_string());
            Ok(())
        };
        for value in values {
            for text in value
                .split([',', '\n'])
                .map(str::trim)
                .filter(|t| !t.is_empty())
            {
                add(text, &describe(text))?;
            }
        }
        for file in files {
            let content = std::fs::read_to_string(file)
                .with_context(|| format!("read recipients file {}", file.display()))?;
            for (n, line) in content.lines().enumerate() {
                let text = line.trim();
                if text.is_empty() || text.starts_with('#') {
                    continue;
                }
                add(
                    text,
                    &format!("{} in {}:{}", describe(text), file.display(), n + 1),
                )?;
            }
        }
        Ok(Recipients { keys, texts })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// Starts an age stream over `out`; `finish()` it, or the stream is truncated.
    pub fn encrypt<W: Write>(&self, out: W) -> Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(
            self.keys.iter().map(|k| k.as_ref() as &dyn age::Recipient),
        )
        .map_err(|err| anyhow!("set up encryption: {err}"))?;
        encryptor.wrap_output(out).context("start encryption")
    }
}

/// Shows a recipient in a message without ever echoing something secret.
fn describe(text: &str) -> String {
    if looks_secret(text) {
        "(a private key, not shown)".to_string()
    } else if text.chars().count() > 24 {
        format!(
            "{:?}",
            format!("{}…", text.chars().take(20).collect::<String>())
        )
    } else {
        format!("{text:?}")
    }
}

fn looks_secret(text: &str) -> bool {
    text.starts_with("AGE-SECRET-KEY-") || text.contains("PRIVATE KEY")
}

fn parse_recipient(text: &str) -> Result<Box<dyn age::Recipient + Send + Sync>> {
    if looks_secret(text) {
        bail!("this is a private key; give its public key instead (age-keygen -y KEYFILE)");
    }
    if text.starts_with("age1") {
        return age::x25519::Recipient::from_str(text)
            .map(|r| Box::new(r) as _)
            .map_err(|err| {
                anyhow!("{err}; expected an age X25519 public key (age1…, from age-keygen)")
            });
    }
    if text.starts_with("ssh-") {
        return age::ssh::Recipient::from_str(text)
            .map(|r| Box::new(r) as _)
            .map_err(|err| {
                use age::ssh::ParseRecipientKeyError as Why;
                let why = match err {
                    Why::Invalid(why) => why.to_string(),
                    Why::RsaModulusTooLarge => "the RSA key is larger than age supports".into(),
                    Why::RsaModulusTooSmall => "the RSA key is weaker than 2048 bits".into(),
                    Why::Unsupported(kind) => format!("{kind} keys are not supported"),
                    Why::Ignore => "not a key age can encrypt to".into(),
                };
                anyhow!("{why}; expected an ssh-ed25519 or ssh-rsa public key")
            });
    }
    bail!("expected an age X25519 public key (age1…) or an ssh-ed25519/ssh-rsa public key")
}

/// Private keys that can open backups, read from an age identity file or an
/// OpenSSH private key. Messages name the file, never its content.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    path: String,
}

impl Identities {
    pub fn load(path: &Path) -> Result<Self> {
        let shown = path.display().to_string();
        let data = std::fs::read(path).with_context(|| format!("read identity {shown}"))?;
        warn_if_others_can_read(path, &shown);
        let keys = if data.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----")
            || data.starts_with(b"-----BEGIN RSA PRIVATE KEY-----")
        {
            vec![load_ssh_identity(&data, &shown)?]
        } else {
            load_age_identities(&data, &shown)?
        };
        if keys.is_empty() {
            bail!("read identity {shown}: no keys in the file");
        }
        Ok(Identities { keys, path: shown })
    }

    /// Opens an age stream. `what` names the backup in messages.
    pub fn decrypt<R: BufRead>(&self, input: R, what: &str) -> Result<impl Read + use<R>> {
        let input = age::armor::ArmoredReader::new(input);
        let decryptor = age::Decryptor::new(input)
            .map_err(|err| anyhow!("read {what}: not a valid age file: {err}"))?;
        decryptor
            .decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
            .map_err(|err| match err {
                age::DecryptError::NoMatchingKeys => anyhow!(
                    "decrypt {what}: identity {} does not match any recipient of this backup",
                    self.path
                ),
                other => anyhow!("decrypt {what}: {other}"),
            })
    }
}

fn load_ssh_identity(data: &[u8], shown: &str) -> Result<Box<dyn age::Identity + Send + Sync>> {
    let identity = age::ssh::Identity::from_buffer(data, Some(shown.to_string()))
        .with_context(|| format!("read identity {shown}: not a valid OpenSSH private key"))?;
    match identity {
        age::ssh::Identity::Unencrypted(_) => Ok(Box::new(identity)),
        age::ssh::Identity::Encrypted(_) => bail!(
            "read identity {shown}: the SSH key is passphrase-protected; decrypt with `age -d -i {shown}` instead, or use an unprotected copy"
        ),
        age::ssh::Identity::Unsupported(_) => {
            bail!("read identity {shown}: unsupported SSH key type; use ssh-ed25519 or ssh-rsa")
        }
    }
}

/// Like ssh, says when a private key is open to other users; a warning, not
/// an error, since restores often run from a copied or mounted file.
#[cfg(unix)]
fn warn_if_others_can_read(path: &Path, shown: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "identity {shown} is accessible by other users (mode {mode:04o}): it holds a private key; run chmod 600 {shown}"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_others_can_read(_: &Path, _: &str) {}

/// An age identity file: `AGE-SECRET-KEY-1…` lines and `#` comments.
fn load_age_identities(
    data: &[u8],
    shown: &str,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>> {
    let text = std::str::from_utf8(data).map_err(|err| {
        let line = data[..err.valid_up_to()].split(|&b| b == b'\n').count();
        anyhow!("read identity {shown}: not a valid identity file: line {line} is not text; expected an age identity file (AGE-SECRET-KEY-1…) or an OpenSSH private key")
    })?;
    let mut keys: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Never echo the line: it may be a secret key with a typo.
        let key = age::x25519::Identity::from_str(line).map_err(|_| {
            if line.starts_with("AGE-PLUGIN-") {
                anyhow!(
                    "read identity {shown}: line {} is an age plugin identity, which vcbackup does not support; give an age X25519 identity (AGE-SECRET-KEY-1…)",
                    n + 1
                )
            } else {
                anyhow!(
                    "read identity {shown}: not a valid identity file: line {} is not an age secret key (AGE-SECRET-KEY-1…, from age-keygen); is the file damaged?",
                    n + 1
                )
            }
        })?;
        keys.push(Box::new(key));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_recipients_with_their_text() {
        let err = Recipients::parse(&["age1nope".into()], &[]).err().unwrap();
        assert!(format!("{err:#}").contains("\"age1nope\""), "{err:#}");
        let err = Recipients::parse(&["hello".into()], &[]).err().unwrap();
        assert!(format!("{err:#}").contains("expected an age"), "{err:#}");
    }

    #[test]
    fn never_echoes_a_secret_key_given_as_recipient() {
        let secret = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let text = secret.to_string().expose_secret().to_string();
        let err = format!(
            "{:#}",
            Recipients::parse(std::slice::from_ref(&text), &[])
                .err()
                .unwrap()
        );
        assert!(!err.contains(&text[16..]), "{err}");
        assert!(err.contains("private key"), "{err}");
    }

    #[test]
    fn splits_commas_and_newlines() {
        let a = age::x25519::Identity::generate().to_public().to_string();
        let b = age::x25519::Identity::generate().to_public().to_string();
        let r = Recipients::parse(&[format!("{a},\n {b}\n")], &[]).unwrap();
        assert_eq!(r.texts(), [a, b]);
    }
}
