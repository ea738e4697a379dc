//! Keeping a backup out of the control plane's way. kine commits every write
//! with an fsync (synchronous=FULL), so what it feels of a backup is CPU taken
//! when it wakes and disk queues full of our data when it syncs. Measured with
//! `scripts/bench` (a kine-like writer during back-to-back backups):
//!
//! - the backup's threads run in the idle CPU and I/O classes (`--priority
//!   background`): they use what the control plane leaves and step aside the
//!   moment it wakes, so on an idle node a backup is as fast as before;
//! - files are written out a window at a time ([`WriteBack`]), as RocksDB's
//!   `bytes_per_sync` does, so no large flush piles up for kine's fsyncs to
//!   wait behind, and the backup's pages leave the page cache once on disk.
//!
//! Both apply per thread (Linux's scheduling and I/O classes are per thread
//! and inherited by the threads a thread starts, such as zstd's workers), so
//! the work runs on threads of its own that end with it: an unprivileged
//! thread cannot return from the idle class.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

/// `--priority`: how a backup competes with the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Priority {
    /// Idle CPU and I/O classes: only what the control plane leaves.
    Background,
    /// As any other process: faster on a busy node, felt by the control plane.
    Normal,
}

/// Process-wide, set once from the command line: every backup of the process
/// follows the operator's one choice, and storage backends need not carry it.
static NORMAL: AtomicBool = AtomicBool::new(false);

pub fn set(priority: Priority) {
    NORMAL.store(priority == Priority::Normal, Ordering::Relaxed);
}

/// Runs `work` on a new thread, at the configured priority, inside the current
/// async runtime (for sources that `block_on`). The receiver gets its result;
/// an error from it means the work panicked.
pub fn spawn<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<oneshot::Receiver<T>> {
    let (tx, rx) = oneshot::channel();
    let runtime = tokio::runtime::Handle::try_current().ok();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _entered = runtime.as_ref().map(|r| r.enter());
            if !NORMAL.load(Ordering::Relaxed) {
                os::lower_this_thread();
            }
            let _ = tx.send(work());
        })
        .with_context(|| format!("start thread {name}"))?;
    Ok(rx)
}

/// Writes a file out while it grows: each full window's write-back is started
/// at once and waited for one window later, so at most two windows are dirty
/// or in flight, and (with `drop_cache`) their pages leave the page cache.
pub struct WriteBack {
    written: u64,
    /// `[synced, started)` is being written out; `[started, written)` is dirty.
    started: u64,
    synced: u64,
    window: u64,
    drop_cache: bool,
    /// Off where the filesystem has no write-back to steer (pipes, some FUSE).
    enabled: bool,
}

impl WriteBack {
    /// For a backup beside a running control plane: windows small enough that
    /// kine's fsync, queued behind one, waits little, and pages nobody will
    /// read back dropped. On ext4 (without a journal here) one kine commit is
    /// four I/Os in a row (the WAL page, its metadata, the inode, a cache
    /// flush), each queued behind the window in flight: its p99 was lower with
    /// 1 MiB than with 4 or 16 MiB, and 256 KiB (under a millisecond at the
    /// disk's rate) still writes out several times faster than zstd fills it.
    pub fn beside_the_control_plane() -> Self {
        Self::new(256 << 10, true)
    }

    /// For a restore, while the control plane is stopped: larger windows, and
    /// the pages stay, since the database is read right after.
    pub fn restoring() -> Self {
        Self::new(8 << 20, false)
    }

    fn new(window: u64, drop_cache: bool) -> Self {
        WriteBack {
            written: 0,
            started: 0,
            synced: 0,
            window,
            drop_cache,
            enabled: cfg!(all(target_os = "linux", target_env = "gnu")),
        }
    }

    /// Appends `data` to `file` a window at a time, so no more than one
    /// window is ever dirty or in flight, however large `data` is.
    pub fn write_all(&mut self, mut file: &std::fs::File, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let step = usize::try_from(self.window).unwrap_or(usize::MAX).max(1);
        for piece in data.chunks(step) {
            file.write_all(piece)?;
            self.wrote(file, piece.len())?;
        }
        Ok(())
    }

    /// Call after writing `n` more bytes to the end of `file`.
    pub fn wrote(&mut self, file: &std::fs::File, n: usize) -> std::io::Result<()> {
        self.written += n as u64;
        if !self.enabled || self.written - self.started < self.window {
            return Ok(());
        }
        self.wait(file)?;
        let (start, len) = (self.started, self.written - self.started);
        self.steer(os::start_write_back(file, start, len))?;
        self.started = self.written;
        Ok(())
    }

    /// Call after the file's final `sync_all`: drops the pages not yet dropped.
    pub fn synced(&mut self, file: &std::fs::File) {
        if self.enabled && self.drop_cache {
            os::drop_cache(file, self.synced, self.written - self.synced);
        }
        self.synced = self.written;
    }

    /// Waits for the window in flight and drops its pages.
    fn wait(&mut self, file: &std::fs::File) -> std::io::Result<()> {
        if self.started > self.synced {
            let (start, len) = (self.synced, self.started - self.synced);
            self.steer(os::wait_write_back(file, start, len))?;
            if self.enabled && self.drop_cache {
                os::drop_cache(file, start, len);
            }
            self.synced = self.started;
        }
        Ok(())
    }

    /// A filesystem that does not take the hint leaves it all to the final
    /// sync; any other error is the file's (and was consumed: a later fsync
    /// on this descriptor would not report it again).
    fn steer(&mut self, result: std::io::Result<()>) -> std::io::Result<()> {
        match result {
            Err(err) if os::is_unsupported(&err) => {
                tracing::debug!("incremental write-back off for this file: {err}");
                self.enabled = false;
                Ok(())
            }
            Err(err) => Err(err),
            Ok(()) => Ok(()),
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod os {
    use std::os::fd::AsRawFd;

    /// Idle CPU class (runs only when a core would otherwise idle, and yields
    /// to any woken task at once) and idle I/O class (served when the disk has
    /// nothing else; mq-deadline's aging still guarantees progress). Best
    /// effort: where a seccomp profile refuses either, the backup still runs.
    pub fn lower_this_thread() {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: plain syscalls on the calling thread (id 0) with valid arguments.
        let cpu = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
        if cpu != 0 {
            tracing::debug!(
                "could not move the backup to the idle CPU class: {}",
                std::io::Error::last_os_error()
            );
        }
        const IOPRIO_WHO_PROCESS: libc::c_long = 1;
        const IOPRIO_CLASS_IDLE: libc::c_long = 3;
        const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
        // SAFETY: as above; ioprio_set has no libc wrapper.
        let io = unsafe {
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            )
        };
        if io != 0 {
            tracing::debug!(
                "could not move the backup to the idle I/O class: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    pub fn start_write_back(file: &std::fs::File, start: u64, len: u64) -> std::io::Result<()> {
        sync_file_range(file, start, len, libc::SYNC_FILE_RANGE_WRITE)
    }

    pub fn wait_write_back(file: &std::fs::File, start: u64, len: u64) -> std::io::Result<()> {
        sync_file_range(
            file,
            start,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    }

    fn sync_file_range(
        file: &std::fs::File,
        start: u64,
        len: u64,
        flags: libc::c_uint,
    ) -> std::io::Result<()> {
        let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: the descriptor is open for the borrow; the range is checked by the kernel.
        match unsafe { libc::sync_file_range(file.as_raw_fd(), start, len, flags) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    pub fn is_unsupported(err: &std::io::Error) -> bool {
        matches!(
            err.raw_os_error(),
            Some(libc::EINVAL | libc::ESPIPE | libc::ENOSYS | libc::EOPNOTSUPP)
        )
    }

    /// Clean pages only: dirty ones stay, so nothing is lost, only not dropped.
    pub fn drop_cache(file: &std::fs::File, start: u64, len: u64) {
        let (Ok(start), Ok(len)) = (i64::try_from(start), i64::try_from(len)) else {
            return;
        };
        // SAFETY: as above; fadvise is only advice.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), start, len, libc::POSIX_FADV_DONTNEED);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod os {
    pub fn lower_this_thread() {}

    pub fn start_write_back(_: &std::fs::File, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }

    pub fn wait_write_back(_: &std::fs::File, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }

    pub fn drop_cache(_: &std::fs::File, _: u64, _: u64) {}

    pub fn is_unsupported(_: &std::io::Error) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn writes_a_file_window_by_window_without_changing_it() {
        let mut file = tempfile::tempfile().unwrap();
        let mut write_back = WriteBack::beside_the_control_plane();
        // Not a multiple of the window: the last piece of each chunk is short.
        let chunk: Vec<u8> = (0..=255u8).cycle().take((1 << 20) + 12345).collect();
        for _ in 0..11 {
            write_back.write_all(&file, &chunk).unwrap();
        }
        file.sync_all().unwrap();
        write_back.synced(&file);
        let mut back = Vec::new();
        use std::io::Seek;
        file.rewind().unwrap();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 11 * chunk.len());
        assert!(back.chunks(chunk.len()).all(|c| c == chunk));
    }

    #[tokio::test]
    async fn runs_work_on_its_own_thread_with_the_runtime_at_hand() {
        let rx = spawn("test", || tokio::runtime::Handle::try_current().is_ok()).unwrap();
        assert!(rx.await.unwrap());
        let rx = spawn("test", || -> u32 { panic!("boom") }).unwrap();
        assert!(rx.await.is_err());
    }
}
