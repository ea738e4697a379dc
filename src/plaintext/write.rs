//! Writing a plaintext out as it is decoded: to a private file (two
//! threads, bounded buffers) or to standard output, hashing it on the way.

use std::io::{self, IsTerminal, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use anyhow::{Context, Result, anyhow, bail};

use super::{Place, Plaintext};
use crate::pipeline::{Fingerprint, Hashing};

/// Writes the plaintext to `place`, hashing it.
pub(super) fn write_out(
    plaintext: impl Read,
    place: Place,
    observe: &mut dyn FnMut(&[u8]),
    what: &str,
) -> Result<Plaintext> {
    let (dir, prefix, durable) = match &place {
        Place::Stdout => {
            let mut out = Hashing::new(io::stdout().lock());
            copy(plaintext, &mut out, observe, what)?;
            out.flush().context("write standard output")?;
            return Ok(Plaintext {
                fingerprint: out.finish().0,
                file: None,
            });
        }
        Place::Scratch(dir) => (dir.as_path(), ".vcbackup-plaintext-".to_string(), false),
        Place::Beside(target) => {
            let file_name = target
                .file_name()
                .with_context(|| format!("restore to {}: not a file path", target.display()))?;
            let dir = match target.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            (
                dir,
                format!(".{}.vcbackup-", file_name.to_string_lossy()),
                true,
            )
        }
    };
    // Owner-only (tempfile's default): the plaintext is the whole store.
    let temp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .with_context(|| format!("create a temporary file in {}", dir.display()))?;
    let fingerprint = decode_into(temp.as_file(), plaintext, observe, what, durable)
        .with_context(|| format!("write {}", temp.path().display()));
    Ok(Plaintext {
        fingerprint: fingerprint?,
        file: Some(temp),
    })
}

/// Two threads overlap the work: this one reads (the stored digest, age,
/// zstd), a writer hashes the plaintext and writes it out as it comes, so a
/// final sync finds little left to do.
fn decode_into(
    file: &std::fs::File,
    plaintext: impl Read,
    observe: &mut dyn FnMut(&[u8]),
    what: &str,
    durable: bool,
) -> Result<Fingerprint> {
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let writer = std::thread::Builder::new()
            .name("vcbackup-restore-write".into())
            .spawn_scoped(scope, move || {
                write_buffers(file, full_rx, empty_tx, durable)
            })
            .context("start the writer thread")?;
        let read = read_buffers(plaintext, &full_tx, &empty_rx, observe, what);
        drop(full_tx);
        let written = writer.join();
        read?;
        Ok(written.map_err(|_| anyhow!("the writer thread panicked"))??)
    })
}

/// Buffers in flight between the two threads of a decoding: memory stays at
/// `BUFFERS + 2` times `BUFFER` whatever the size.
const BUFFER: usize = 1 << 20;
const BUFFERS: usize = 4;

/// Fills buffers from `plaintext` and hands them to the writer, reusing the
/// ones it hands back. Stops early, without error, when the writer has failed.
fn read_buffers(
    mut plaintext: impl Read,
    full: &mpsc::SyncSender<Vec<u8>>,
    empty: &mpsc::Receiver<Vec<u8>>,
    observe: &mut dyn FnMut(&[u8]),
    what: &str,
) -> Result<()> {
    loop {
        let mut buf = empty.try_recv().unwrap_or_else(|_| vec![0u8; BUFFER]);
        buf.resize(BUFFER, 0);
        let mut filled = 0;
        while filled < BUFFER {
            match plaintext.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => bail!("read {what}: the backup is truncated or corrupt ({err})"),
            }
        }
        buf.truncate(filled);
        observe(&buf);
        if filled == 0 || full.send(buf).is_err() {
            return Ok(());
        }
    }
}

/// Hashes and writes what the reader sends, then (when `durable`) syncs;
/// the fingerprint of it all.
fn write_buffers(
    file: &std::fs::File,
    full: mpsc::Receiver<Vec<u8>>,
    empty: mpsc::Sender<Vec<u8>>,
    durable: bool,
) -> io::Result<Fingerprint> {
    // A restored database is read right away (integrity check, then kine): its pages stay.
    let mut write_back = crate::background::WriteBack::restoring();
    let mut out = Hashing::new(file);
    for buf in full {
        out.write_all(&buf)?;
        if durable {
            write_back.wrote(file, buf.len())?;
        }
        let _ = empty.send(buf);
    }
    let (fingerprint, file) = out.finish();
    if durable {
        file.sync_all()?;
        write_back.synced(file);
    }
    Ok(fingerprint)
}

fn copy(
    mut plaintext: impl Read,
    out: &mut impl Write,
    observe: &mut dyn FnMut(&[u8]),
    what: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match plaintext.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => bail!("read {what}: the backup is truncated or corrupt ({err})"),
        };
        observe(&buf[..n]);
        out.write_all(&buf[..n])
            .context("write the restored data")?;
        total += n as u64;
    }
}

pub(super) fn progress_bar(show: bool, size: Option<u64>) -> indicatif::ProgressBar {
    if !show || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match size {
        Some(size) => indicatif::ProgressBar::new(size),
        None => indicatif::ProgressBar::no_length(),
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}
