//! The store's files (the layout is in the documentation of `store::metrics`):
//! the series log and the chunk files, appended to in frames, and the head
//! snapshot, replaced whole; how each is written and read back on open.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::backup::BackupDir;
use crate::frame;
use crate::model::{Label, MetricMetadata};
use crate::store::{Result, StoreError};
use crate::telemetry::{DropReason, SelfMetrics};

/// Most bytes of a chunk file, and its size without a size limit.
pub(super) const MAX_CHUNK_FILE_BYTES: u64 = 64 << 20;
const SERIES_LOG: &str = "series.log";
const CHUNK_DIR: &str = "chunks";
pub(super) const SNAPSHOT: &str = "head.snap";
const SNAPSHOT_VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct SeriesEntry {
    id: u32,
    labels: Vec<Label>,
}

/// [`SeriesEntry`] as written, its labels borrowed as (name, value) pairs.
#[derive(Serialize)]
struct SeriesEntryRef<L> {
    id: u32,
    labels: L,
}

/// (name, value) pairs, serialized as a sequence of [`Label`]s is (a
/// struct's fields and a tuple's items encode alike).
struct LabelPairs<L>(L);

impl<'a, L: ExactSizeIterator<Item = (&'a str, &'a str)> + Clone> Serialize for LabelPairs<L> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.clone())
    }
}

/// New series encoded for [`SeriesLog::append`]. A flush encodes them while
/// it holds the head's read lock, from the index's symbols: one buffer of
/// about the labels' bytes, where a copy of each series' labels took about
/// four times that in small allocations (40 MB for 100k new series).
#[derive(Default)]
pub(super) struct SeriesEntries {
    ids: Vec<u32>,
    frames: Vec<u8>,
    payload: Vec<u8>,
}

impl SeriesEntries {
    /// Adds series `id` with its labels in name order.
    pub(super) fn push<'a>(
        &mut self,
        id: u32,
        labels: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<()> {
        let entry = SeriesEntryRef {
            id,
            labels: LabelPairs(labels),
        };
        self.payload.clear();
        self.payload = crate::codec::append_postcard(std::mem::take(&mut self.payload), &entry);
        frame::append(&mut self.frames, &self.payload)?;
        self.ids.push(id);
        Ok(())
    }

    /// The series added, in order.
    pub(super) fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Whether there is nothing to append.
    pub(super) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// `series.log`: one entry per series, appended when a flush first sees it.
pub(super) struct SeriesLog {
    file: File,
}

impl SeriesLog {
    /// Opens (or creates) the log in `dir`, calling `each` with every series
    /// in it, oldest first, and cuts a torn tail.
    pub(super) fn open(
        dir: &Path,
        metrics: &SelfMetrics,
        mut each: impl FnMut(u32, Vec<Label>),
    ) -> Result<SeriesLog> {
        let path = dir.join(SERIES_LOG);
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let valid = read_frames(
            &path,
            data_dir(dir),
            metrics,
            |payload| postcard::from_bytes::<SeriesEntry>(payload).is_ok(),
            |_, payload| {
                if let Ok(entry) = postcard::from_bytes::<SeriesEntry>(payload) {
                    each(entry.id, entry.labels);
                }
            },
        )?;
        file.set_len(valid)?;
        Ok(SeriesLog { file })
    }

    /// Appends series and makes them durable.
    pub(super) fn append(&mut self, series: &SeriesEntries) -> Result<()> {
        self.file.write_all(&series.frames)?;
        self.file.sync_data()?;
        Ok(())
    }
}

/// What a chunk file entry holds, after its length and CRC.
#[derive(Serialize, Deserialize)]
struct ChunkEntry<'a> {
    series: u32,
    min_t: i64,
    max_t: i64,
    #[serde(borrow)]
    bytes: &'a [u8],
}

/// Where a sealed chunk lives on disk.
#[derive(Clone, Copy, Debug)]
pub(super) struct ChunkRef {
    pub(super) file: u32,
    /// Of the entry's payload, past its frame header.
    offset: u64,
    len: u32,
    pub(super) min_t: i64,
    pub(super) max_t: i64,
}

impl ChunkRef {
    /// The chunk's bytes, from the file [`ChunkFiles::reader`] gave; its
    /// frame is checked again, as the file may have been damaged since open.
    pub(super) fn read(&self, file: &File) -> Result<Vec<u8>> {
        let corrupt = |e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!(
                "chunk at {} of chunk file {}: {e}",
                self.offset, self.file
            ))
        };
        let start = self.offset.saturating_sub(frame::HEADER_LEN as u64);
        let mut bytes = vec![0u8; frame::HEADER_LEN + self.len as usize];
        file.read_exact_at(&mut bytes, start)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => corrupt(&"cut short"),
                _ => e.into(),
            })?;
        let (payload, _) = frame::decode(&bytes).map_err(|e| corrupt(&e))?;
        let entry: ChunkEntry = postcard::from_bytes(payload).map_err(|e| corrupt(&e))?;
        Ok(entry.bytes.to_vec())
    }

    /// Where the chunk's payload starts in its file.
    pub(super) fn offset(&self) -> u64 {
        self.offset
    }
}

/// A sealed chunk a flush writes: its series, time range and bytes.
pub(super) struct ChunkToWrite {
    pub(super) series: u32,
    pub(super) min_t: i64,
    pub(super) max_t: i64,
    pub(super) bytes: Bytes,
}

/// `chunks/<n>.chk`: sealed chunks, appended by flushes.
pub(super) struct ChunkFiles {
    dir: PathBuf,
    /// Per file number: its bytes and its newest sample time.
    files: BTreeMap<u32, (u64, i64)>,
    writer: Option<(u32, File)>,
    readers: HashMap<u32, Arc<File>>,
    /// A new file starts once the current one is this large: the
    /// granularity of retention.
    file_bytes: u64,
}

impl ChunkFiles {
    /// Opens (or creates) the chunk directory in `dir`, calling `each` with
    /// every chunk's series id and where it is, oldest first; cuts a torn
    /// tail of the newest file. Files are closed at `file_bytes`, at most
    /// [`MAX_CHUNK_FILE_BYTES`].
    pub(super) fn open(
        dir: &Path,
        file_bytes: u64,
        metrics: &SelfMetrics,
        mut each: impl FnMut(u32, ChunkRef),
    ) -> Result<ChunkFiles> {
        let chunk_dir = dir.join(CHUNK_DIR);
        fs::create_dir_all(&chunk_dir)?;
        let mut files = ChunkFiles {
            dir: chunk_dir,
            files: BTreeMap::new(),
            writer: None,
            readers: HashMap::new(),
            file_bytes: file_bytes.min(MAX_CHUNK_FILE_BYTES),
        };
        let mut numbers: Vec<u32> = fs::read_dir(&files.dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".chk")?.parse().ok())
            .collect();
        numbers.sort_unstable();
        for (position, &number) in numbers.iter().enumerate() {
            let path = files.path(number);
            let mut max_file_t = i64::MIN;
            let valid = read_frames(
                &path,
                data_dir(dir),
                metrics,
                |payload| postcard::from_bytes::<ChunkEntry>(payload).is_ok(),
                |offset, payload| {
                    let Ok(entry) = postcard::from_bytes::<ChunkEntry>(payload) else {
                        return;
                    };
                    max_file_t = max_file_t.max(entry.max_t);
                    each(
                        entry.series,
                        ChunkRef {
                            file: number,
                            offset,
                            len: payload.len() as u32,
                            min_t: entry.min_t,
                            max_t: entry.max_t,
                        },
                    );
                },
            )?;
            if position + 1 == numbers.len() {
                OpenOptions::new().write(true).open(&path)?.set_len(valid)?;
            }
            files.files.insert(number, (valid, max_file_t));
        }
        Ok(files)
    }

    pub(super) fn path(&self, number: u32) -> PathBuf {
        self.dir.join(format!("{number:010}.chk"))
    }

    /// An open handle on a chunk file, to read chunks from without holding
    /// whatever guards `self`.
    pub(super) fn reader(&mut self, number: u32) -> Result<Arc<File>> {
        if let Some(file) = self.readers.get(&number) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(self.path(number))?);
        self.readers.insert(number, file.clone());
        Ok(file)
    }

    /// Appends sealed chunks and makes them durable; returns where each went.
    pub(super) fn write(&mut self, chunks: &[ChunkToWrite]) -> Result<Vec<ChunkRef>> {
        let mut refs = Vec::with_capacity(chunks.len());
        let mut buffer = Vec::new();
        for chunk in chunks {
            let number = self.writable_file()?;
            let (size, newest) = self.files.get(&number).copied().unwrap_or((0, i64::MIN));
            let payload = postcard::to_stdvec(&ChunkEntry {
                series: chunk.series,
                min_t: chunk.min_t,
                max_t: chunk.max_t,
                bytes: &chunk.bytes,
            })
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            buffer.clear();
            frame::append(&mut buffer, &payload)?;
            let (_, file) = self.writer.as_mut().expect("opened above");
            file.write_all(&buffer)?;
            refs.push(ChunkRef {
                file: number,
                offset: size + frame::HEADER_LEN as u64,
                len: payload.len() as u32,
                min_t: chunk.min_t,
                max_t: chunk.max_t,
            });
            self.files.insert(
                number,
                (size + buffer.len() as u64, newest.max(chunk.max_t)),
            );
        }
        if !chunks.is_empty()
            && let Some((_, file)) = self.writer.as_ref()
        {
            file.sync_data()?;
        }
        Ok(refs)
    }

    /// The number of the file to append to, starting a new one when the
    /// current one is full.
    fn writable_file(&mut self) -> Result<u32> {
        let current = self
            .files
            .last_key_value()
            .map(|(&n, &(size, _))| (n, size));
        let number = match current {
            Some((number, size)) if size < self.file_bytes => number,
            Some((number, _)) => number + 1,
            None => 0,
        };
        if self.writer.as_ref().map(|(n, _)| *n) != Some(number) {
            if let Some((_, old)) = self.writer.take() {
                old.sync_data()?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(number))?;
            File::open(&self.dir)?.sync_all()?;
            self.files.entry(number).or_insert((0, i64::MIN));
            self.writer = Some((number, file));
        }
        Ok(number)
    }

    /// Files whose newest sample is older than `cutoff_ms`, and then the
    /// oldest while the total exceeds `max_bytes` (0: no limit); never the
    /// one being written. Each with why it goes and its size.
    pub(super) fn expired(&self, cutoff_ms: i64, max_bytes: u64) -> Vec<(u32, DropReason, u64)> {
        let writing = self.writer.as_ref().map(|(n, _)| *n);
        let mut total = self.bytes();
        let mut expired = Vec::new();
        for (&number, &(size, newest)) in &self.files {
            if Some(number) == writing {
                continue;
            }
            let reason = if newest < cutoff_ms {
                DropReason::Age
            } else if max_bytes > 0 && total > max_bytes {
                DropReason::Size
            } else {
                continue;
            };
            total -= size;
            expired.push((number, reason, size));
        }
        expired
    }

    /// Deletes files; chunk references into them must be gone already.
    pub(super) fn remove(&mut self, numbers: &[u32]) -> Result<()> {
        for number in numbers {
            self.readers.remove(number);
            self.files.remove(number);
            fs::remove_file(self.path(*number))?;
            tracing::info!(file = number, "MetricChunkFileDropped");
        }
        Ok(())
    }

    /// Bytes of all chunk files.
    pub(super) fn bytes(&self) -> u64 {
        self.files.values().map(|(size, _)| size).sum()
    }
}

/// Writes the store in `dir` into `relative` under `backup` as its last
/// flush left it; the caller holds off flushes and retention. The series
/// log and the newest chunk file are copied — appended to, and cut on open
/// — up to what was flushed; the older chunk files (never written again)
/// and the head snapshot (replaced whole by a rename) are linked.
pub(super) fn snapshot(
    dir: &Path,
    chunks: &ChunkFiles,
    backup: &mut BackupDir,
    relative: &Path,
) -> Result<()> {
    backup.create_dir(&relative.join(CHUNK_DIR))?;
    for name in [crate::store::FORMAT_FILE, SERIES_LOG] {
        match backup.copy(&dir.join(name), &relative.join(name)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
            _ => {}
        }
    }
    match backup.link(&dir.join(SNAPSHOT), &relative.join(SNAPSHOT)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    let newest = chunks.files.keys().next_back().copied();
    for (&number, &(size, _)) in &chunks.files {
        let path = chunks.path(number);
        let name = relative
            .join(CHUNK_DIR)
            .join(path.file_name().unwrap_or(path.as_os_str()));
        if Some(number) == newest {
            backup.copy_prefix(&mut File::open(&path)?, size, &name)?;
        } else {
            backup.link(&path, &name)?;
        }
    }
    Ok(())
}

/// `head.snap`: the open chunk of every series and the metadata, as of a WAL
/// sequence number.
#[derive(Serialize, Deserialize)]
pub(super) struct Snapshot {
    pub(super) through_seq: u64,
    pub(super) open: Vec<(u32, Vec<u8>)>,
    pub(super) metadata: Vec<MetricMetadata>,
}

impl Snapshot {
    /// The snapshot in `dir`, if a flush has written one.
    pub(super) fn read(dir: &Path) -> Result<Option<Snapshot>> {
        let bytes = match fs::read(dir.join(SNAPSHOT)) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        match bytes.split_first() {
            Some((&SNAPSHOT_VERSION, body)) => postcard::from_bytes(body)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("head snapshot: {e}"))),
            Some((version, _)) => Err(StoreError::Corrupt(format!(
                "head snapshot has unknown version {version}"
            ))),
            None => Err(StoreError::Corrupt("head snapshot is empty".into())),
        }
    }

    /// Replaces the snapshot in `dir` atomically (write, sync, rename).
    pub(super) fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("head.snap.tmp");
        {
            // Streamed: a second copy of every open chunk in memory would
            // be the largest allocation of a flush.
            let mut file = std::io::BufWriter::new(File::create(&tmp)?);
            file.write_all(&[SNAPSHOT_VERSION])?;
            // Plain data always serializes: what fails is the write.
            postcard::to_io(self, &mut file).map_err(std::io::Error::other)?;
            let file = file.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
        }
        fs::rename(&tmp, dir.join(SNAPSHOT))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    }
}

/// Bytes of the series log and the snapshot in `dir` (chunk files are
/// counted by [`ChunkFiles::bytes`]).
pub(super) fn log_and_snapshot_bytes(dir: &Path) -> u64 {
    let file_len = |name: &str| fs::metadata(dir.join(name)).map_or(0, |m| m.len());
    file_len(SERIES_LOG) + file_len(SNAPSHOT)
}

/// The data directory a store directory is in, which reports name files
/// relative to.
fn data_dir(store_dir: &Path) -> &Path {
    store_dir.parent().unwrap_or(store_dir)
}

/// Calls `each` with every intact entry of a file (one `plausible` accepts)
/// and its payload's offset, skipping damaged entries in the middle (see
/// [`frame::scan`]); returns the length to keep: short of the file's only
/// when a damaged tail has no intact entry after it. Damage is reported.
fn read_frames(
    path: &Path,
    data_dir: &Path,
    metrics: &SelfMetrics,
    plausible: impl Fn(&[u8]) -> bool,
    mut each: impl FnMut(u64, &[u8]),
) -> Result<u64> {
    let bytes = fs::read(path)?;
    let scan = frame::scan(&bytes, plausible);
    for skipped in &scan.skipped {
        metrics.corrupt_data(
            "metrics",
            data_dir,
            path,
            skipped.start as u64,
            &format!("{} damaged bytes", skipped.len()),
            "skipped the damaged entries, read the rest",
        );
    }
    if let Some(tail) = scan.torn_tail {
        metrics.corrupt_data(
            "metrics",
            data_dir,
            path,
            tail as u64,
            &format!("the last {} bytes are torn or damaged", bytes.len() - tail),
            "dropped the tail",
        );
    }
    for payload in scan.frames {
        each(payload.start as u64, &bytes[payload]);
    }
    Ok(scan.torn_tail.unwrap_or(bytes.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::metrics::MetricStore;
    use crate::store::metrics::tests::{ingest, limits, matcher, open_store, series};
    use crate::store::sample_store::SampleStore;
    use std::time::Duration;

    #[test]
    fn series_entries_read_back_as_labels() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = SelfMetrics::new();
        let series = [
            (
                3,
                vec![Label::new("__name__", "up"), Label::new("job", "a")],
            ),
            (7, vec![Label::new("__name__", "é"), Label::new("x", "")]),
        ];
        let mut entries = SeriesEntries::default();
        for (id, labels) in &series {
            entries
                .push(*id, labels.iter().map(|l| (&*l.name, &*l.value)))
                .unwrap();
        }
        assert_eq!(entries.ids(), [3, 7]);
        SeriesLog::open(dir.path(), &metrics, |_, _| {})
            .unwrap()
            .append(&entries)
            .unwrap();
        let mut read = Vec::new();
        SeriesLog::open(dir.path(), &metrics, |id, labels| read.push((id, labels))).unwrap();
        assert_eq!(read, series);
    }

    #[test]
    fn chunk_files_roll_over_at_their_size() {
        let dir = tempfile::tempdir().unwrap();
        // Every flush fills its file.
        let store = MetricStore::open(dir.path(), limits(), 1, SelfMetrics::new()).unwrap();
        for flush in 0..3 {
            let samples: Vec<(i64, f64)> = (0..240)
                .map(|i| (flush * 1_000_000 + i * 1000, 1.0))
                .collect();
            ingest(&store, vec![series("x", "a", &samples)]);
            store.flush(flush as u64 + 1).unwrap();
        }
        let sizes: Vec<u64> = store
            .files
            .lock()
            .unwrap()
            .files
            .values()
            .map(|f| f.0)
            .collect();
        // One sealed chunk (about 64 bytes here) per file.
        assert!(
            sizes.len() >= 3 && sizes.iter().all(|&size| size < 128),
            "{sizes:?}"
        );
        // A size limit drops the oldest files, never the one being written.
        let dropped = store
            .enforce_retention(
                crate::config::Retention {
                    max_age: Duration::from_secs(1 << 30),
                    max_bytes: 1,
                },
                3_000_000,
            )
            .unwrap();
        assert_eq!(dropped, sizes.len() - 1);
        assert_eq!(store.files.lock().unwrap().files.len(), 1);
    }

    #[test]
    fn retention_drops_old_chunk_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let old: Vec<(i64, f64)> = (0..240).map(|i| (i * 1000, 1.0)).collect();
        ingest(&store, vec![series("x", "a", &old)]);
        store.flush(1).unwrap();
        // Force the next flush into a new file, as a full file would.
        store
            .files
            .lock()
            .unwrap()
            .files
            .values_mut()
            .for_each(|f| f.0 = MAX_CHUNK_FILE_BYTES);
        let new: Vec<(i64, f64)> = (0..240).map(|i| (1_000_000 + i * 1000, 2.0)).collect();
        ingest(&store, vec![series("x", "a", &new)]);
        store.flush(2).unwrap();
        let dropped = store
            .enforce_retention(
                crate::config::Retention {
                    max_age: Duration::from_secs(500),
                    max_bytes: 0,
                },
                1_000_000 + 240_000,
            )
            .unwrap();
        assert_eq!(dropped, 1);
        // The first file held the first sealed chunk; the second, written
        // later, holds the rest.
        let got = store
            .select(&[matcher("job", "a")], 0, i64::MAX, usize::MAX)
            .unwrap()
            .series;
        assert_eq!(got[0].samples.first().unwrap().timestamp_ms, 120_000);
        assert_eq!(got[0].samples.len(), 360);
    }
}
