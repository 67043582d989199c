//! Snapshots of the data directory (`POST /api/admin/snapshot`): a copy a
//! daemon serves with `strand serve --data-dir <snapshot>`, written while
//! ingest goes on, under `<data dir>/snapshots/<UTC time>-<random>` as
//! Prometheus names its TSDB snapshots.
//!
//! Consistency: the snapshot is a state a restart could have produced. The
//! WAL is taken first, between two group commits ([`Wal::cut`]): sealed
//! segments linked, the active one copied up to its last durable record, so
//! everything acknowledged before the request is in it. Then each store
//! writes its part as of its own last flush or commit, holding off its
//! flushes meanwhile ([`BackupDir`] links what is never written again and
//! copies the rest). A store's part is never older than the WAL's start:
//! the WAL is only trimmed through what every store had made durable, and
//! stores only move forward. Replay on the snapshot's first start then
//! brings each store up to the WAL's end, as after a crash, skipping what
//! it already has.
//!
//! The snapshot is written under a hidden temporary name and renamed once
//! complete and synced: a failed one (a full disk) leaves nothing behind,
//! and a crash leaves a temporary directory the next snapshot removes.
//! `<data dir>/snapshots` is no store's directory, so no store, retention
//! or damage check of the daemon looks into it.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::backup::BackupDir;
use crate::store::{StoreError, Stores};
use crate::telemetry::SelfMetrics;
use crate::wal::{SegmentCut, Wal, WalError};

/// Where snapshots go, under the data directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The suffix of a snapshot still being written.
const TEMPORARY_SUFFIX: &str = ".tmp";

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("writing the snapshot failed: {0}")]
    Io(#[from] io::Error),
    #[error("copying a store failed: {0}")]
    Store(#[from] StoreError),
    #[error("reading the write-ahead log failed: {0}")]
    Wal(#[from] WalError),
    #[error("the snapshot task failed: {0}")]
    Task(String),
}

impl SnapshotError {
    /// Whether the disk (or a quota) is full: 507 rather than 500.
    pub fn is_storage_full(&self) -> bool {
        let io = match self {
            SnapshotError::Io(error)
            | SnapshotError::Store(StoreError::Io(error))
            | SnapshotError::Store(StoreError::Index(sled::Error::Io(error)))
            | SnapshotError::Wal(WalError::Io(error)) => error,
            _ => return false,
        };
        matches!(
            io.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
    }
}

/// A snapshot written.
#[derive(Debug)]
pub struct Written {
    /// `<UTC time>-<16 hex digits>`, the directory's name.
    pub name: String,
    pub path: PathBuf,
}

/// Writes snapshots of one data directory; one at a time.
pub struct Snapshotter {
    data_dir: PathBuf,
    wal: Wal,
    stores: Stores,
    metrics: SelfMetrics,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Snapshotter {
    /// Snapshots of the stores of `data_dir`, whose WAL is `wal`.
    pub fn new(data_dir: PathBuf, wal: Wal, stores: Stores, metrics: SelfMetrics) -> Snapshotter {
        Snapshotter {
            data_dir,
            wal,
            stores,
            metrics,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Writes a snapshot and returns its name and path; see the module
    /// docs. Counted and timed on `/metrics`, reported as `SnapshotWritten`
    /// or `SnapshotError`. Runs to the end as its own task even when the
    /// caller stops waiting (a client that hung up), so a second snapshot
    /// never starts beside it.
    pub async fn take(self: &Arc<Self>) -> Result<Written, SnapshotError> {
        let this = self.clone();
        tokio::spawn(async move { this.take_alone().await })
            .await
            .map_err(|error| SnapshotError::Task(error.to_string()))?
    }

    async fn take_alone(self: &Arc<Self>) -> Result<Written, SnapshotError> {
        let _one = self.one_at_a_time.lock().await;
        let started = Instant::now();
        let name = snapshot_name(SystemTime::now(), rand::random());
        let result = self.write(&name).await;
        self.metrics
            .snapshot_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(backup) => {
                tracing::info!(
                    name,
                    files = backup.linked_files + backup.copied_files,
                    bytes = backup.linked_bytes + backup.copied_bytes,
                    linked_files = backup.linked_files,
                    linked_bytes = backup.linked_bytes,
                    copied_files = backup.copied_files,
                    copied_bytes = backup.copied_bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    "SnapshotWritten"
                );
                "success"
            }
            Err(error) => {
                tracing::error!(name, %error, "SnapshotError: nothing was left behind");
                "failure"
            }
        };
        self.metrics.snapshots.with_label_values(&[outcome]).inc();
        result?;
        Ok(Written {
            path: self.data_dir.join(SNAPSHOTS_DIR).join(&name),
            name,
        })
    }

    /// Writes the snapshot under a temporary name and renames it to `name`;
    /// removes the temporary directory when that fails.
    async fn write(self: &Arc<Self>, name: &str) -> Result<BackupDir, SnapshotError> {
        let snapshots = self.data_dir.join(SNAPSHOTS_DIR);
        let temporary = snapshots.join(format!(".{name}{TEMPORARY_SUFFIX}"));
        let segments = self.wal.cut().await?;
        let this = self.clone();
        let final_path = snapshots.join(name);
        tokio::task::spawn_blocking(move || {
            remove_unfinished(&snapshots)?;
            let written = this
                .write_blocking(&temporary, segments)
                .and_then(|backup| {
                    fs::rename(&temporary, &final_path)?;
                    fs::File::open(&snapshots)?.sync_all()?;
                    Ok(backup)
                });
            if written.is_err()
                && let Err(error) = fs::remove_dir_all(&temporary)
                && error.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %temporary.display(), %error, "SnapshotCleanupError");
            }
            written
        })
        .await
        .map_err(|error| SnapshotError::Task(error.to_string()))?
    }

    /// The WAL segments `segments`, then every store, into `temporary`.
    fn write_blocking(
        &self,
        temporary: &Path,
        segments: Vec<SegmentCut>,
    ) -> Result<BackupDir, SnapshotError> {
        fs::create_dir_all(temporary)?;
        let mut backup = BackupDir::new(temporary.to_path_buf());
        let wal = Path::new("wal");
        backup.create_dir(wal)?;
        for mut segment in segments {
            let target = wal.join(&segment.name);
            if segment.sealed {
                match backup.link(&segment.path, &target) {
                    // Trimmed since the cut: its bytes are still open.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        backup.copy_prefix(&mut segment.file, segment.len, &target)?
                    }
                    linked => linked?,
                }
            } else {
                backup.copy_prefix(&mut segment.file, segment.len, &target)?;
            }
        }
        let Stores {
            traces,
            logs,
            metrics,
            dashboards,
            node_id: _,
        } = &self.stores;
        traces.snapshot(&mut backup, Path::new("traces"))?;
        logs.snapshot(&mut backup, Path::new("logs"))?;
        metrics.snapshot(&mut backup, Path::new("metrics"))?;
        dashboards.snapshot(&mut backup, Path::new("dashboards"))?;
        backup.sync_dirs()?;
        Ok(backup)
    }
}

/// Removes snapshots a crash or a failed cleanup left half written.
fn remove_unfinished(snapshots: &Path) -> io::Result<()> {
    fs::create_dir_all(snapshots)?;
    for entry in fs::read_dir(snapshots)? {
        let entry = entry?;
        let name = entry.file_name();
        if is_unfinished(&name) {
            tracing::info!(path = %entry.path().display(), "SnapshotUnfinishedRemoved");
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

fn is_unfinished(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|name| name.starts_with('.') && name.ends_with(TEMPORARY_SUFFIX))
}

/// `<UTC time>-<random>`, as Prometheus names snapshots
/// (`20171210T211224Z-2be650b6d019eb54`): sorted by time, unique.
fn snapshot_name(at: SystemTime, random: u64) -> String {
    let since_epoch = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let time = chrono::DateTime::from_timestamp(since_epoch.as_secs() as i64, 0)
        .unwrap_or_default()
        .format("%Y%m%dT%H%M%SZ");
    format!("{time}-{random:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_time_like_prometheus() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_512_940_344);
        assert_eq!(
            snapshot_name(at, 0x2be6_50b6_d019_eb54),
            "20171210T211224Z-2be650b6d019eb54"
        );
        assert_eq!(snapshot_name(at, 1), "20171210T211224Z-0000000000000001");
    }

    #[test]
    fn only_hidden_temporary_directories_are_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let snapshots = dir.path().join(SNAPSHOTS_DIR);
        fs::create_dir_all(snapshots.join(".20171210T211224Z-0000000000000001.tmp/wal")).unwrap();
        fs::create_dir_all(snapshots.join("20171210T211224Z-0000000000000002")).unwrap();
        remove_unfinished(&snapshots).unwrap();
        let left: Vec<_> = fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["20171210T211224Z-0000000000000002"]);
    }
}
