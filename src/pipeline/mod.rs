//! The path of a backup's bytes: source → zstd → age → storage on the way in,
//! storage → age → zstd → file on the way out. Both ways are streaming layers
//! over `Write`/`Read`, so memory stays flat whatever the database's size.

mod compress;
mod digest;
mod encrypt;

use std::io::{self, BufRead, BufReader, Read, Write};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

pub use compress::Compression;
use digest::HashBehind;
pub use encrypt::{Identities, Recipients};

/// Size and SHA-256 of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub size: u64,
    pub sha256: String,
}

impl Fingerprint {
    /// Checks decoded bytes against the manifest's record of them: `what`
    /// names the object, `noun` its plaintext (the restored data, the
    /// increment, the config).
    pub fn check_recorded(&self, recorded: &Fingerprint, what: &str, noun: &str) -> Result<()> {
        if self.size != recorded.size || !self.sha256.eq_ignore_ascii_case(&recorded.sha256) {
            bail!(
                "verify {what}: {noun} ({} bytes, SHA-256 {}) does not match its manifest ({} bytes, SHA-256 {})",
                self.size,
                self.sha256,
                recorded.size,
                recorded.sha256
            );
        }
        Ok(())
    }
}

/// Counts and hashes what passes through, in either direction.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    size: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    pub fn finish(self) -> (Fingerprint, T) {
        let fingerprint = Fingerprint {
            size: self.size,
            sha256: hex::encode(self.hasher.finalize()),
        };
        (fingerprint, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// Checks stored bytes against the manifest while they stream into the
/// decoder: a damaged, truncated or swapped object fails by name, and never
/// more than the recorded size is read. `finish` reads to the end and gives
/// the verdict, which explains a decoding error better than the decoder can.
pub struct CheckStored<R> {
    inner: Hashing<R>,
    expected: Fingerprint,
    what: String,
    /// The mismatch, once seen: reported by `finish` whatever the decoder made of it.
    mismatch: Option<String>,
    at_end: bool,
}

impl<R: Read> CheckStored<R> {
    pub fn new(inner: R, expected: Fingerprint, what: &str) -> Self {
        CheckStored {
            inner: Hashing::new(inner),
            expected,
            what: what.to_string(),
            mismatch: None,
            at_end: false,
        }
    }

    /// Reads what the decoder left (trailing bytes count too) and compares.
    pub fn finish(mut self) -> Result<()> {
        let drained = io::copy(&mut self, &mut io::sink());
        if let Some(mismatch) = self.mismatch {
            bail!("{mismatch}");
        }
        drained.with_context(|| format!("read {}", self.what))?;
        Ok(())
    }

    fn mismatch(&mut self, actual: &str) -> io::Error {
        let message = format!(
            "verify {}: the stored object does not match its manifest ({actual}; the manifest records {} bytes, SHA-256 {}): it is truncated, damaged or was replaced",
            self.what, self.expected.size, self.expected.sha256
        );
        self.mismatch = Some(message.clone());
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl<R: Read> Read for CheckStored<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at_end || buf.is_empty() {
            return Ok(0);
        }
        if let Some(mismatch) = &self.mismatch {
            return Err(io::Error::new(io::ErrorKind::InvalidData, mismatch.clone()));
        }
        // One byte past the recorded size is enough to know it is wrong.
        let room = self.expected.size.saturating_sub(self.inner.size) + 1;
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if self.inner.size > self.expected.size {
            return Err(self.mismatch(&format!("more than {} bytes", self.expected.size)));
        }
        if n == 0 {
            let sha256 = hex::encode(self.inner.hasher.clone().finalize());
            let size = self.inner.size;
            if size != self.expected.size || !sha256.eq_ignore_ascii_case(&self.expected.sha256) {
                return Err(self.mismatch(&format!("{size} bytes, SHA-256 {sha256}")));
            }
            self.at_end = true;
        }
        Ok(n)
    }
}

/// How a backup is sealed: always compressed, encrypted unless opted out by name.
pub struct Sealing {
    pub compression: Compression,
    pub recipients: Option<Recipients>,
}

/// What sealing produced, besides the stored bytes.
pub struct Sealed<T, W> {
    pub facts: T,
    pub plaintext: Fingerprint,
    pub stored: Fingerprint,
    pub out: W,
}

impl Sealing {
    /// Runs `write_plaintext` with a writer whose bytes are compressed,
    /// encrypted and written to `out`, hashing both ends (the plaintext on a
    /// thread of its own).
    pub fn seal<T, W: Write>(
        &self,
        out: W,
        write_plaintext: impl FnOnce(&mut dyn Write) -> Result<T>,
    ) -> Result<Sealed<T, W>> {
        let stored = Hashing::new(out);
        let encrypted = match &self.recipients {
            Some(recipients) => Encrypted::Age(recipients.encrypt(stored)?),
            None => Encrypted::Plain(stored),
        };
        let mut plaintext = HashBehind::new(self.compression.compress(encrypted)?)?;
        let facts = write_plaintext(&mut plaintext)?;
        let (plaintext, compressed) = plaintext.finish()?;
        let encrypted = compressed.finish().context("finish compression")?;
        let (stored, out) = encrypted.finish().context("finish encryption")?.finish();
        Ok(Sealed {
            facts,
            plaintext,
            stored,
            out,
        })
    }
}

/// The optional encryption layer, so both cases have one type.
enum Encrypted<W: Write> {
    Age(age::stream::StreamWriter<W>),
    Plain(W),
}

impl<W: Write> Encrypted<W> {
    /// Writes age's final chunk: without it the stream reads as truncated.
    fn finish(self) -> io::Result<W> {
        match self {
            Encrypted::Age(stream) => stream.finish(),
            Encrypted::Plain(out) => Ok(out),
        }
    }
}

impl<W: Write> Write for Encrypted<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Encrypted::Age(stream) => stream.write(data),
            Encrypted::Plain(out) => out.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encrypted::Age(stream) => stream.flush(),
            Encrypted::Plain(out) => out.flush(),
        }
    }
}

const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const AGE_MAGIC: &[u8] = b"age-encryption.org/";
const AGE_ARMOR_MAGIC: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";

/// Turns a stored backup back into plaintext. `what` names it in messages.
/// Errors while reading the result mean the backup is truncated or corrupt.
pub fn unseal<'a, R: Read + Send + 'a>(
    input: R,
    identities: Option<&Identities>,
    what: &str,
) -> Result<Box<dyn Read + Send + 'a>> {
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let head = input.fill_buf().with_context(|| format!("read {what}"))?;
    if head.starts_with(ZSTD_MAGIC) {
        return Ok(Box::new(compress::decompress(input)?));
    }
    if head.starts_with(AGE_MAGIC) || head.starts_with(AGE_ARMOR_MAGIC) {
        let Some(identities) = identities else {
            bail!(
                "read {what}: the backup is encrypted; give the private key with --identity FILE"
            );
        };
        let plaintext = identities.decrypt(input, what)?;
        return Ok(Box::new(compress::decompress(BufReader::new(plaintext))?));
    }
    if head.is_empty() {
        bail!("read {what}: empty file, not a backup");
    }
    bail!("read {what}: not a vcbackup backup (neither age-encrypted nor zstd-compressed)")
}

/// Checks without any key that `head`, the first bytes of a stored backup, is
/// what the manifest says it is: an age file whose header parses (to public
/// keys, not a passphrase), or a zstd frame. Returns what it found.
pub fn check_sealed_format(head: &[u8], encrypted: bool) -> Result<&'static str> {
    if encrypted {
        if !(head.starts_with(AGE_MAGIC) || head.starts_with(AGE_ARMOR_MAGIC)) {
            bail!(
                "the manifest says age-encrypted, but the object does not start with an age header"
            );
        }
        let decryptor = age::Decryptor::new(age::armor::ArmoredReader::new(head))
            .map_err(|err| anyhow::anyhow!("the age header does not parse: {err}"))?;
        if decryptor.is_scrypt() {
            bail!("the object is encrypted to a passphrase, not to the recipients in the manifest");
        }
        return Ok("an age header to public keys");
    }
    if !head.starts_with(ZSTD_MAGIC) {
        bail!("the manifest says zstd-compressed, but the object does not start with a zstd frame");
    }
    Ok("a zstd frame")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealing(encrypt: bool) -> (Sealing, Option<Identities>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let identity = age::x25519::Identity::generate();
        let path = dir.path().join("key.txt");
        use age::secrecy::ExposeSecret;
        std::fs::write(&path, identity.to_string().expose_secret()).unwrap();
        let recipients = Recipients::parse(&[identity.to_public().to_string()], &[]).unwrap();
        let sealing = Sealing {
            compression: Compression::new(3, 2).unwrap(),
            recipients: encrypt.then_some(recipients),
        };
        (sealing, Some(Identities::load(&path).unwrap()), dir)
    }

    fn plaintext() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn round_trips_with_and_without_encryption() {
        for encrypt in [true, false] {
            let (sealing, identities, _dir) = sealing(encrypt);
            let data = plaintext();
            let sealed = sealing
                .seal(Vec::new(), |w| Ok(w.write_all(&data)?))
                .unwrap();
            assert_eq!(sealed.plaintext.size, data.len() as u64);
            assert_eq!(sealed.stored.size, sealed.out.len() as u64);
            assert!(sealed.out.len() < data.len() / 2, "not compressed");
            assert_eq!(sealed.out.starts_with(AGE_MAGIC), encrypt);
            let mut back = Vec::new();
            unseal(&sealed.out[..], identities.as_ref(), "test")
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn truncation_and_tampering_fail_to_read() {
        for encrypt in [true, false] {
            let (sealing, identities, _dir) = sealing(encrypt);
            let sealed = sealing
                .seal(Vec::new(), |w| Ok(w.write_all(&plaintext())?))
                .unwrap();
            let truncated = &sealed.out[..sealed.out.len() - 100];
            let mut tampered = sealed.out.clone();
            let middle = tampered.len() / 2;
            tampered[middle] ^= 1;
            for bad in [truncated.to_vec(), tampered] {
                let result = unseal(&bad[..], identities.as_ref(), "test")
                    .and_then(|mut r| Ok(io::copy(&mut r, &mut io::sink())?));
                assert!(
                    result.is_err(),
                    "encrypt={encrypt}: corrupt input was accepted"
                );
            }
        }
    }
}
