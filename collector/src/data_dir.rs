//! One daemon per data directory.
//!
//! Two daemons on one directory would both append to the WAL's open
//! segment and both write the stores, each trimming and compacting what the
//! other still reads: acknowledged data would be lost or mangled. The first
//! thing a daemon does with its directory is take an exclusive lock on the
//! file [`LOCK_FILE`] in it, held for as long as it runs. The kernel drops
//! the lock when the process ends, however it ends (even `kill -9`), so a
//! crash never leaves a stale lock behind.
//!
//! The held lock file also tells whether the directory is still there: a
//! directory removed under a running daemon (a clean-up script, a volume
//! unmounted) leaves it writing to files nobody can open again, and every
//! acknowledgement from then on would be a lie. [`DataDirLock::removed`]
//! notices, and the daemon stops.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The lock file's name in the data directory. It holds the process id of
/// the daemon that last took it, to name it in the refusal.
const LOCK_FILE: &str = "LOCK";

/// How long a daemon waits for the lock before it refuses to start: one
/// started while the one before it still finishes its stop (a restart, a
/// test reopening a directory at once) gets the directory once that one is
/// done.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How often a waiting daemon tries the lock again.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// The data directory's lock, held until dropped.
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `dir` (which must exist), waiting up to `wait` while
    /// another daemon holds it; then fails, naming that daemon's process id.
    pub fn acquire(dir: &Path, wait: Duration) -> anyhow::Result<DataDirLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let give_up = Instant::now() + wait;
        let mut waiting = false;
        loop {
            match try_lock(&file) {
                Ok(true) => break,
                Ok(false) if Instant::now() < give_up => {
                    if !waiting {
                        waiting = true;
                        tracing::warn!(
                            data_dir = %dir.display(),
                            holder = holder(&mut file),
                            wait_seconds = wait.as_secs(),
                            "DataDirInUse: waiting for the daemon using it to stop"
                        );
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                }
                Ok(false) => bail!(
                    "data directory {} is in use by another strand (process {}): \
                     each daemon needs a data directory of its own",
                    dir.display(),
                    holder(&mut file)
                ),
                Err(error) => {
                    return Err(error).with_context(|| format!("locking {}", path.display()));
                }
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(DataDirLock { file, path })
    }

    /// Resolves once the lock file this daemon holds is no longer the one
    /// at its path: the data directory was removed, or removed and made
    /// again. Looks every `interval` (a `stat` of two files).
    pub async fn removed(&self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            if !self.is_in_place() {
                return;
            }
        }
    }

    /// Whether the held file and the one at its path are the same. Only a
    /// missing path or another file says no: an error reading either (a
    /// path briefly unreadable) is not taken for a removal.
    fn is_in_place(&self) -> bool {
        let held = match self.file.metadata() {
            Ok(held) => held,
            Err(_) => return true,
        };
        match std::fs::metadata(&self.path) {
            Ok(named) => named.dev() == held.dev() && named.ino() == held.ino(),
            Err(error) => error.kind() != ErrorKind::NotFound,
        }
    }
}

/// Takes `file`'s exclusive lock if it is free: `Ok(false)` while another
/// open file holds it (in this process too: the lock belongs to the open
/// file, not the process).
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock(2) takes no pointers; the descriptor is open for as long
    // as `file` is borrowed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = std::io::Error::last_os_error();
    match error.kind() {
        ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(false),
        _ => Err(error),
    }
}

/// The process id the lock file names, or "unknown".
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
    match read {
        Ok(_) if !text.trim().is_empty() => text.trim().to_owned(),
        _ => "unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_directory_is_refused_with_the_holders_pid_and_taken_once_free() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path(), Duration::ZERO).unwrap();
        let refused = DataDirLock::acquire(dir.path(), Duration::from_millis(100))
            .err()
            .expect("the directory is held");
        let message = format!("{refused:#}");
        assert!(message.contains("in use by another strand"), "{message}");
        assert!(
            message.contains(&format!("process {}", std::process::id())),
            "{message}"
        );
        // A daemon still stopping is waited for.
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        DataDirLock::acquire(dir.path(), Duration::from_secs(10)).unwrap();
        releasing.join().unwrap();
    }

    #[tokio::test]
    async fn a_removed_or_replaced_directory_is_noticed() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        let lock = DataDirLock::acquire(&dir, Duration::ZERO).unwrap();
        assert!(lock.is_in_place());
        let interval = Duration::from_millis(10);
        let still_there = tokio::time::timeout(Duration::from_millis(100), lock.removed(interval));
        assert!(still_there.await.is_err(), "nothing was removed");

        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!lock.is_in_place());
        // Made again, with a lock file of the same name: not the held one.
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join(LOCK_FILE), "1\n").unwrap();
        assert!(!lock.is_in_place());
        tokio::time::timeout(Duration::from_secs(5), lock.removed(interval))
            .await
            .expect("the removal is noticed");
    }
}
