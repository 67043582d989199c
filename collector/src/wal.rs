//! The write-ahead log: what makes an acknowledgement mean "durable".
//!
//! Every accepted request becomes one record. A single writer thread takes all
//! records queued since its last fsync, writes them, fsyncs once and only then
//! applies them (in sequence order) to the in-memory head and acknowledges them:
//! concurrent writers share one fsync (group commit).
//!
//! On disk the log is a directory of segment files `<first seq>.wal2`, named
//! after the first sequence number they hold. A record is one
//! [`frame`](crate::frame) whose payload is `[seq u64 LE][kind u8][payload]`.
//! Replay skips damaged frames in the middle of a segment, resynchronising on
//! the next intact record (see [`frame::scan`]), and cuts only a damaged tail
//! no intact record follows (a torn write after a crash); either is reported
//! as `CorruptData`. Segments whose every
//! record has been flushed to the stores are deleted by [`Wal::truncate_through`].
//!
//! Format history: version 1 segments (`.wal`) had the length cover only the
//! payload. [`Wal::open`] rewrites any it finds as frames (their intact
//! records; the checksum covered the same bytes) before replay, so an
//! upgrade loses nothing acknowledged.
//!
//! Memory is bounded by a byte budget for queued records: when it is used up,
//! [`Wal::append`] fails at once with [`WalError::Overloaded`] so ingest can
//! answer 429 / RESOURCE_EXHAUSTED instead of buffering without limit.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::frame;
use crate::telemetry::{LogThrottle, SelfMetrics};

/// Segment files of this format end in this; the `2` is the format version.
const SEGMENT_SUFFIX: &str = ".wal2";
/// Segment files of format version 1, which [`Wal::open`] refuses.
const OLD_SEGMENT_SUFFIX: &str = ".wal";
/// Sequence number and kind, at the start of each record's frame payload.
const RECORD_PREFIX_LEN: usize = 8 + 1;
/// Upper bound of bytes written per group commit, so one fsync never waits on
/// an unbounded backlog.
const MAX_GROUP_BYTES: usize = 32 << 20;
/// At most one `WalWriteError` line per this long.
const WRITE_ERROR_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What is stored in a record's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A span table as written by `codec::encode_spans`.
    Spans = 1,
    /// Log records as written by `codec::encode_logs`.
    Logs = 2,
    /// Metric samples as written by `codec::encode_samples`.
    Samples = 3,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Spans),
            2 => Some(RecordKind::Logs),
            3 => Some(RecordKind::Samples),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("ingest queue is full, retry later")]
    Overloaded,
    #[error("write-ahead log is shut down")]
    Closed,
    #[error("write-ahead log i/o failed: {0}")]
    Io(#[from] io::Error),
}

/// Called on the writer thread once a record is durable, in sequence order.
pub type OnDurable = Box<dyn FnOnce(u64) + Send>;

enum Command {
    Append {
        kind: RecordKind,
        payload: Vec<u8>,
        on_durable: OnDurable,
        ack: oneshot::Sender<Result<u64, WalError>>,
        _permit: OwnedSemaphorePermit,
    },
    TruncateThrough(u64),
    Cut(oneshot::Sender<io::Result<Vec<SegmentCut>>>),
    Shutdown(oneshot::Sender<()>),
}

/// One segment of the log as [`Wal::cut`] found it: the durable records
/// are the first `len` bytes of `file`.
pub struct SegmentCut {
    /// The segment's file name, `<first seq>.wal2`.
    pub name: std::ffi::OsString,
    pub path: PathBuf,
    /// Open, so its bytes stay readable if truncation deletes it.
    pub file: File,
    pub len: u64,
    /// Never appended to again (only deleted once the stores have it).
    pub sealed: bool,
}

/// Handle to the log; cheap to clone, all clones feed the one writer thread.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Command>,
    /// Every durable record up to this sequence number has had its
    /// `on_durable` run (or was replayed): what stores may checkpoint to when
    /// they hold nothing newer.
    applied_through: Arc<AtomicU64>,
    queue_budget: Arc<Semaphore>,
    metrics: SelfMetrics,
    /// The first sequence number of the oldest segment found at open.
    oldest_seq: Option<u64>,
}

/// A record read back during replay.
pub struct ReplayedRecord {
    pub seq: u64,
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

struct Segment {
    first_seq: u64,
    last_seq: Option<u64>,
    path: PathBuf,
    bytes: u64,
}

impl Wal {
    /// Reads every intact record in `dir` in sequence order, calling `apply` for
    /// those after `after_seq`; then starts the writer thread, which appends
    /// after the last record found and after `used_through`, the highest
    /// sequence number any store has recorded (so numbers are never reused
    /// even when every segment was trimmed). Old segments stay until truncated;
    /// a new one starts once the active one holds `segment_bytes`, so
    /// trimming frees the log in steps of that size.
    pub fn open(
        dir: &Path,
        after_seq: u64,
        used_through: u64,
        queue_budget_bytes: usize,
        segment_bytes: u64,
        metrics: SelfMetrics,
        mut apply: impl FnMut(ReplayedRecord),
    ) -> Result<Wal, WalError> {
        fs::create_dir_all(dir)?;
        let mut segments = list_segments(dir)?;
        let mut next_seq = after_seq.max(used_through) + 1;
        let data_dir = dir.parent().unwrap_or(dir);
        for segment in &mut segments {
            let (records_end, last) = read_segment(&segment.path, data_dir, &metrics, |record| {
                if record.seq > after_seq {
                    apply(record);
                }
            })?;
            if records_end < segment.bytes {
                OpenOptions::new()
                    .write(true)
                    .open(&segment.path)?
                    .set_len(records_end)?;
                segment.bytes = records_end;
            }
            segment.last_seq = last;
            if let Some(last) = last {
                next_seq = next_seq.max(last + 1);
            }
        }
        metrics
            .wal_size_bytes
            .set(segments.iter().map(|s| s.bytes as i64).sum());

        let oldest_seq = segments.first().map(|s| s.first_seq);
        let (tx, rx) = mpsc::channel();
        let applied_through = Arc::new(AtomicU64::new(next_seq - 1));
        let writer = Writer {
            dir: dir.to_path_buf(),
            closed: segments,
            active: None,
            segment_bytes,
            next_seq,
            applied_through: applied_through.clone(),
            metrics: metrics.clone(),
            write_errors: LogThrottle::new(WRITE_ERROR_LOG_INTERVAL),
        };
        thread::Builder::new()
            .name("strand-wal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Wal {
            tx,
            applied_through,
            queue_budget: Arc::new(Semaphore::new(
                queue_budget_bytes.min(Semaphore::MAX_PERMITS),
            )),
            metrics,
            oldest_seq,
        })
    }

    /// The oldest sequence number the log held when opened (`None`: it was
    /// empty): a store whose checkpoint is older than this cannot get what
    /// it lacks from the replay.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.oldest_seq
    }

    /// Queues a record and waits until it is fsynced and `on_durable` has run.
    /// Fails at once with `Overloaded` when the queue's byte budget is used up.
    pub async fn append(
        &self,
        kind: RecordKind,
        payload: Vec<u8>,
        on_durable: OnDurable,
    ) -> Result<u64, WalError> {
        self.enqueue(kind, payload, on_durable)?.await
    }

    /// Queues a record at once (records are written in the order they are
    /// queued) and returns what to await for its durability; for callers
    /// that must order the append with their own state under a lock.
    pub fn enqueue(
        &self,
        kind: RecordKind,
        payload: Vec<u8>,
        on_durable: OnDurable,
    ) -> Result<impl Future<Output = Result<u64, WalError>> + use<>, WalError> {
        let cost = u32::try_from(payload.len().max(1)).map_err(|_| WalError::Overloaded)?;
        let permit = self
            .queue_budget
            .clone()
            .try_acquire_many_owned(cost)
            .map_err(|_| WalError::Overloaded)?;
        self.metrics.ingest_queue_bytes.add(i64::from(cost));
        let (ack, done) = oneshot::channel();
        let sent = self.tx.send(Command::Append {
            kind,
            payload,
            on_durable,
            ack,
            _permit: permit,
        });
        let queue_bytes = self.metrics.ingest_queue_bytes.clone();
        Ok(async move {
            let result = match sent {
                Ok(()) => done.await.unwrap_or(Err(WalError::Closed)),
                Err(_) => Err(WalError::Closed),
            };
            queue_bytes.sub(i64::from(cost));
            result
        })
    }

    /// See the field of the same name.
    pub fn applied_through(&self) -> u64 {
        self.applied_through.load(Ordering::Acquire)
    }

    /// The log's segments between two group commits, each with the length
    /// of its durable records: every record acknowledged before the call is
    /// in them, none that a failing group takes back out is. What a
    /// snapshot of the data directory copies.
    pub async fn cut(&self) -> Result<Vec<SegmentCut>, WalError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Cut(tx))
            .map_err(|_| WalError::Closed)?;
        Ok(rx.await.map_err(|_| WalError::Closed)??)
    }

    /// Deletes segments whose records are all at or below `seq` (they are safe
    /// in the stores). Asynchronous: done by the writer between group commits.
    pub fn truncate_through(&self, seq: u64) {
        let _ = self.tx.send(Command::TruncateThrough(seq));
    }

    /// Finishes queued appends and stops the writer thread.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
}

/// The segments in `dir`, oldest first; fails if any is of an older format.
/// Rewrites a version 1 segment (`[len u32][crc32 u32][seq u64][kind u8]
/// [payload]`, the length covering the payload only, the checksum `seq`,
/// `kind` and payload) as frames of the same bytes, keeping its intact
/// records: written and fsynced under a temporary name, renamed, and only
/// then is the old file deleted, so a crash during the upgrade loses
/// nothing. Returns the new segment's path.
fn upgrade_segment(dir: &Path, old: &Path, first_seq: u64) -> Result<PathBuf, WalError> {
    const OLD_HEADER_LEN: usize = 4 + 4 + 8 + 1;
    let bytes = fs::read(old)?;
    let mut frames = Vec::with_capacity(bytes.len());
    let mut offset = 0;
    while let (Some(len), Some(crc)) = (
        frame::read_u32_le(&bytes, offset),
        frame::read_u32_le(&bytes, offset + 4),
    ) {
        let record = offset + 8..offset + OLD_HEADER_LEN + len as usize;
        let Some(record_bytes) = bytes.get(record.clone()) else {
            break;
        };
        if crc32fast::hash(record_bytes) != crc {
            break;
        }
        frame::append(&mut frames, record_bytes)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        offset = record.end;
    }
    if offset < bytes.len() {
        tracing::warn!(path = %old.display(), cut = bytes.len() - offset, "WalTornTailCut");
    }
    let new = segment_path(dir, first_seq);
    let temp = new.with_extension("upgrading");
    let mut file = File::create(&temp)?;
    file.write_all(&frames)?;
    file.sync_all()?;
    fs::rename(&temp, &new)?;
    File::open(dir)?.sync_all()?;
    fs::remove_file(old)?;
    tracing::info!(path = %new.display(), "WalSegmentUpgraded");
    Ok(new)
}

fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let first_seq_of = |suffix: &str| {
            name.to_str()
                .and_then(|n| n.strip_suffix(suffix))
                .and_then(|n| n.parse::<u64>().ok())
        };
        let (first_seq, path) = match (
            first_seq_of(SEGMENT_SUFFIX),
            first_seq_of(OLD_SEGMENT_SUFFIX),
        ) {
            (Some(first_seq), _) => (first_seq, entry.path()),
            (None, Some(first_seq)) => (first_seq, upgrade_segment(dir, &entry.path(), first_seq)?),
            (None, None) => continue,
        };
        let bytes = fs::metadata(&path)?.len();
        segments.push(Segment {
            first_seq,
            last_seq: None,
            path,
            bytes,
        });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// Reads every intact record of a segment, skipping (and reporting) damaged
/// frames in the middle; returns the length to keep — short of the file's
/// only when its tail is torn or damaged with no intact record after it —
/// and the last sequence number read.
fn read_segment(
    path: &Path,
    data_dir: &Path,
    metrics: &SelfMetrics,
    mut each: impl FnMut(ReplayedRecord),
) -> io::Result<(u64, Option<u64>)> {
    let bytes = fs::read(path)?;
    let scan = frame::scan(&bytes, |payload| parse_record(payload).is_some());
    let report = |offset: usize, damage: &str, action: &str| {
        metrics.corrupt_data("wal", data_dir, path, offset as u64, damage, action);
    };
    for skipped in &scan.skipped {
        report(
            skipped.start,
            &format!("{} damaged bytes", skipped.len()),
            "skipped the damaged records, replayed the rest",
        );
    }
    if let Some(tail) = scan.torn_tail {
        report(
            tail,
            &format!("the last {} bytes are torn or damaged", bytes.len() - tail),
            "cut the tail",
        );
    }
    let mut last = None;
    for payload in &scan.frames {
        if let Some(record) = parse_record(&bytes[payload.clone()]) {
            last = Some(record.seq);
            each(record);
        }
    }
    Ok((scan.torn_tail.unwrap_or(bytes.len()) as u64, last))
}

/// The start of a record's frame payload: what [`parse_record`] reads back.
fn record_prefix(seq: u64, kind: RecordKind) -> [u8; RECORD_PREFIX_LEN] {
    let mut prefix = [0u8; RECORD_PREFIX_LEN];
    prefix[..8].copy_from_slice(&seq.to_le_bytes());
    prefix[8] = kind as u8;
    prefix
}

fn parse_record(frame_payload: &[u8]) -> Option<ReplayedRecord> {
    Some(ReplayedRecord {
        seq: frame::read_u64_le(frame_payload, 0)?,
        kind: RecordKind::from_byte(*frame_payload.get(8)?)?,
        payload: frame_payload[RECORD_PREFIX_LEN..].to_vec(),
    })
}

struct ActiveSegment {
    segment: Segment,
    out: BufWriter<File>,
}

struct Writer {
    applied_through: Arc<AtomicU64>,
    dir: PathBuf,
    closed: Vec<Segment>,
    active: Option<ActiveSegment>,
    /// A new segment starts once the active one is this large.
    segment_bytes: u64,
    next_seq: u64,
    metrics: SelfMetrics,
    /// A full disk fails every group: one log line per interval.
    write_errors: LogThrottle,
}

/// The log's state before a group was written.
struct GroupStart {
    /// The group's first sequence number: segments from it on are the group's.
    first_seq: u64,
    /// The active segment then: first sequence number, length, last record.
    active: Option<(u64, u64, Option<u64>)>,
}

struct Pending {
    seq: u64,
    on_durable: OnDurable,
    ack: oneshot::Sender<Result<u64, WalError>>,
    _permit: OwnedSemaphorePermit,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            let mut group_bytes = 0;
            while group_bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(command) => {
                        if let Command::Append { payload, .. } = &command {
                            group_bytes += payload.len();
                        }
                        group.push(command);
                    }
                    Err(_) => break,
                }
            }

            // Where the group starts: a failed group is cut off again.
            let group_start = GroupStart {
                first_seq: self.next_seq,
                active: self
                    .active
                    .as_ref()
                    .map(|a| (a.segment.first_seq, a.segment.bytes, a.segment.last_seq)),
            };
            let mut pending = Vec::new();
            let mut shutdown = None;
            let mut cuts = Vec::new();
            let mut write_result = Ok(());
            for command in group {
                match command {
                    Command::Append {
                        kind,
                        payload,
                        on_durable,
                        ack,
                        _permit,
                    } => {
                        let seq = self.next_seq;
                        if write_result.is_ok() {
                            write_result = self.write(seq, kind, &payload);
                        }
                        self.next_seq += 1;
                        pending.push(Pending {
                            seq,
                            on_durable,
                            ack,
                            _permit,
                        });
                    }
                    // Safe in the middle of a group: a segment whose last record is
                    // at or below `seq` holds no record of this group.
                    Command::TruncateThrough(seq) => self.truncate_through(seq),
                    // Answered once the group is durable or taken back out.
                    Command::Cut(reply) => cuts.push(reply),
                    Command::Shutdown(done) => shutdown = Some(done),
                }
            }
            if !pending.is_empty() && write_result.is_ok() {
                write_result = self.sync();
            }
            match write_result {
                Ok(()) => {
                    for p in pending {
                        (p.on_durable)(p.seq);
                        self.applied_through.store(p.seq, Ordering::Release);
                        let _ = p.ack.send(Ok(p.seq));
                    }
                }
                Err(error) => {
                    self.metrics.wal_write_errors.inc();
                    if let Some(suppressed) = self.write_errors.allow() {
                        tracing::error!(
                            %error,
                            suppressed,
                            "WalWriteError: failing this group and starting a new segment \
                             (suppressed: like errors since the last line)"
                        );
                    }
                    self.undo_group(&group_start);
                    for p in pending {
                        let _ = p.ack.send(Err(WalError::Io(io::Error::new(
                            error.kind(),
                            error.to_string(),
                        ))));
                    }
                }
            }
            for reply in cuts {
                let _ = reply.send(self.cut());
            }
            if let Some(done) = shutdown {
                let _ = done.send(());
                return;
            }
        }
    }

    fn write(&mut self, seq: u64, kind: RecordKind, payload: &[u8]) -> io::Result<()> {
        let prefix = record_prefix(seq, kind);
        let header = frame::header(&[&prefix, payload])
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.segment.bytes >= self.segment_bytes)
        {
            self.close_active();
        }
        let active = match &mut self.active {
            Some(active) => active,
            None => {
                let path = segment_path(&self.dir, seq);
                let file = OpenOptions::new().create(true).append(true).open(&path)?;
                // Make the new file's directory entry durable too.
                File::open(&self.dir)?.sync_all()?;
                self.active.insert(ActiveSegment {
                    segment: Segment {
                        first_seq: seq,
                        last_seq: None,
                        path,
                        bytes: 0,
                    },
                    out: BufWriter::with_capacity(1 << 20, file),
                })
            }
        };
        active.out.write_all(&header)?;
        active.out.write_all(&prefix)?;
        active.out.write_all(payload)?;
        let written = (frame::HEADER_LEN + RECORD_PREFIX_LEN + payload.len()) as u64;
        active.segment.bytes += written;
        active.segment.last_seq = Some(seq);
        self.metrics.wal_written_bytes.inc_by(written);
        self.metrics.wal_size_bytes.add(written as i64);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let Some(active) = &mut self.active else {
            return Ok(());
        };
        let started = Instant::now();
        active.out.flush()?;
        active.out.get_ref().sync_data()?;
        self.metrics
            .wal_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Takes a failed group's records back out of the log, so that what
    /// was refused is never replayed: its buffered bytes are dropped,
    /// segments it opened are deleted and the segment it began in is cut
    /// back to where it began. That segment is then closed: after a failed
    /// write or fsync, its file is never appended to again.
    fn undo_group(&mut self, start: &GroupStart) {
        if let Some(active) = self.active.take() {
            // Buffered bytes are dropped here, never written.
            let (file, _unwritten) = active.out.into_parts();
            drop(file);
            self.closed.push(active.segment);
        }
        let mut kept = Vec::with_capacity(self.closed.len());
        for mut segment in std::mem::take(&mut self.closed) {
            // Ok(true): keep the segment; Ok(false): it was the group's.
            let undone = if segment.first_seq >= start.first_seq {
                fs::remove_file(&segment.path).map(|()| {
                    self.metrics.wal_size_bytes.sub(segment.bytes as i64);
                    false
                })
            } else {
                match start.active {
                    Some((first_seq, bytes, last_seq))
                        if first_seq == segment.first_seq && segment.bytes > bytes =>
                    {
                        OpenOptions::new()
                            .write(true)
                            .open(&segment.path)
                            .and_then(|file| file.set_len(bytes))
                            .map(|()| {
                                self.metrics
                                    .wal_size_bytes
                                    .sub((segment.bytes - bytes) as i64);
                                segment.bytes = bytes;
                                segment.last_seq = last_seq;
                                true
                            })
                    }
                    _ => Ok(true),
                }
            };
            match undone {
                Ok(true) => kept.push(segment),
                Ok(false) => {}
                Err(error) => {
                    // Left as it is: replay may bring back records that were refused.
                    tracing::error!(segment = %segment.path.display(), %error, "WalUndoError");
                    kept.push(segment);
                }
            }
        }
        self.closed = kept;
    }

    /// Every segment with its length, between groups: all written bytes
    /// are flushed and synced, or were taken back out.
    fn cut(&self) -> io::Result<Vec<SegmentCut>> {
        let sealed = self.closed.iter().map(|segment| (segment, true));
        let active = self.active.iter().map(|a| (&a.segment, false));
        sealed
            .chain(active)
            .map(|(segment, sealed)| {
                Ok(SegmentCut {
                    name: segment
                        .path
                        .file_name()
                        .unwrap_or(segment.path.as_os_str())
                        .to_owned(),
                    path: segment.path.clone(),
                    file: File::open(&segment.path)?,
                    len: segment.bytes,
                    sealed,
                })
            })
            .collect()
    }

    fn close_active(&mut self) {
        if let Some(mut active) = self.active.take() {
            let _ = active.out.flush();
            self.closed.push(active.segment);
        }
    }

    fn truncate_through(&mut self, seq: u64) {
        if self
            .active
            .as_ref()
            .is_some_and(|a| a.segment.last_seq.is_some_and(|last| last <= seq))
        {
            self.close_active();
        }
        let (done, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.closed)
            .into_iter()
            .partition(|s| s.last_seq.is_none_or(|last| last <= seq));
        self.closed = keep;
        for segment in done {
            match fs::remove_file(&segment.path) {
                Ok(()) => self.metrics.wal_size_bytes.sub(segment.bytes as i64),
                Err(error) => {
                    tracing::warn!(segment = %segment.path.display(), %error, "WalSegmentDeleteError")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn open(dir: &Path, after: u64) -> (Wal, Vec<(u64, Vec<u8>)>) {
        let mut seen = Vec::new();
        let wal = Wal::open(dir, after, 0, 1 << 20, 64 << 20, SelfMetrics::new(), |r| {
            seen.push((r.seq, r.payload))
        })
        .unwrap();
        (wal, seen)
    }

    async fn append(wal: &Wal, payload: &[u8]) -> u64 {
        wal.append(RecordKind::Spans, payload.to_vec(), Box::new(|_| {}))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn replays_records_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, seen) = open(dir.path(), 0);
        assert!(seen.is_empty());
        assert_eq!(append(&wal, b"one").await, 1);
        assert_eq!(append(&wal, b"two").await, 2);
        wal.shutdown().await;

        let (wal, seen) = open(dir.path(), 1);
        assert_eq!(seen, vec![(2, b"two".to_vec())]);
        // Appends continue the sequence.
        assert_eq!(append(&wal, b"three").await, 3);
    }

    #[tokio::test]
    async fn applies_in_order_before_acknowledging() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 0);
        let applied = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..50u8 {
            let wal = wal.clone();
            let applied = applied.clone();
            tasks.push(tokio::spawn(async move {
                let probe = applied.clone();
                let seq = wal
                    .append(
                        RecordKind::Spans,
                        vec![i],
                        Box::new(move |seq| applied.lock().unwrap().push(seq)),
                    )
                    .await
                    .unwrap();
                assert!(probe.lock().unwrap().contains(&seq));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let applied = applied.lock().unwrap().clone();
        let mut sorted = applied.clone();
        sorted.sort();
        assert_eq!(applied, sorted);
        assert_eq!(applied.len(), 50);
    }

    #[tokio::test]
    async fn torn_tail_is_skipped_and_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 0);
        append(&wal, b"kept").await;
        append(&wal, b"torn").await;
        wal.shutdown().await;
        let segment = list_segments(dir.path()).unwrap().remove(0);
        let len = fs::metadata(&segment.path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&segment.path)
            .unwrap()
            .set_len(len - 2)
            .unwrap();

        let (wal, seen) = open(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"kept".to_vec())]);
        assert_eq!(
            fs::metadata(&segment.path).unwrap().len(),
            (frame::HEADER_LEN + RECORD_PREFIX_LEN + 4) as u64
        );
        // The torn record's sequence number is reused: it was never acknowledged.
        assert_eq!(append(&wal, b"next").await, 2);
    }

    #[tokio::test]
    async fn a_corrupt_record_in_the_middle_costs_only_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 0);
        append(&wal, b"good").await;
        append(&wal, b"flipped").await;
        append(&wal, b"after").await;
        wal.shutdown().await;
        let segment = list_segments(dir.path()).unwrap().remove(0);
        let mut bytes = fs::read(&segment.path).unwrap();
        let len = bytes.len();
        // The last byte of the second record's payload.
        let second_end = len - (frame::HEADER_LEN + RECORD_PREFIX_LEN + b"after".len());
        bytes[second_end - 1] ^= 0xff;
        fs::write(&segment.path, &bytes).unwrap();
        let (wal, seen) = open(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"good".to_vec()), (3, b"after".to_vec())]);
        wal.shutdown().await;
        // Nothing was cut: the intact record after the damage stays.
        assert_eq!(fs::metadata(&segment.path).unwrap().len(), len as u64);
    }

    #[tokio::test]
    async fn segments_of_the_older_format_are_upgraded_with_their_records() {
        let dir = tempfile::tempdir().unwrap();
        let old_record = |seq: u64, payload: &[u8]| {
            let mut body = seq.to_le_bytes().to_vec();
            body.push(RecordKind::Spans as u8);
            body.extend_from_slice(payload);
            let mut record = (payload.len() as u32).to_le_bytes().to_vec();
            record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            record.extend_from_slice(&body);
            record
        };
        let mut old = old_record(1, b"first");
        old.extend(old_record(2, b"second"));
        old.extend(&old_record(3, b"torn")[..10]);
        fs::write(dir.path().join("00000000000000000001.wal"), old).unwrap();
        let (wal, seen) = open(dir.path(), 0);
        assert_eq!(seen, vec![(1, b"first".to_vec()), (2, b"second".to_vec())]);
        assert!(!dir.path().join("00000000000000000001.wal").exists());
        // New records follow the upgraded ones.
        assert_eq!(append(&wal, b"third").await, 3);
        wal.shutdown().await;
        let (_, seen) = open(dir.path(), 0);
        assert_eq!(seen.len(), 3);
    }

    #[tokio::test]
    async fn truncation_deletes_flushed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 0);
        append(&wal, b"a").await;
        append(&wal, b"b").await;
        wal.truncate_through(2);
        // The next append starts a fresh segment after the truncation.
        assert_eq!(append(&wal, b"c").await, 3);
        let segments = list_segments(dir.path()).unwrap();
        assert_eq!(segments.len(), 1);
        assert_eq!(segments[0].first_seq, 3);
        wal.shutdown().await;
        let (_, seen) = open(dir.path(), 0);
        assert_eq!(seen, vec![(3, b"c".to_vec())]);
    }

    #[tokio::test]
    async fn a_cut_holds_exactly_the_records_acknowledged_before_it() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), 0);
        append(&wal, b"a").await;
        append(&wal, b"b").await;
        wal.shutdown().await;
        // Segments found at open are never appended to again.
        let (wal, _) = open(dir.path(), 0);
        append(&wal, b"c").await;
        let cut = wal.cut().await.unwrap();
        append(&wal, b"after the cut").await;
        assert_eq!(
            cut.iter()
                .map(|s| (s.sealed, s.name.clone()))
                .collect::<Vec<_>>(),
            [
                (true, format!("{:020}{SEGMENT_SUFFIX}", 1).into()),
                (false, format!("{:020}{SEGMENT_SUFFIX}", 3).into()),
            ]
        );
        assert!(fs::metadata(&cut[1].path).unwrap().len() > cut[1].len);

        let copy = tempfile::tempdir().unwrap();
        for mut segment in cut {
            let mut bytes = Vec::new();
            (&mut segment.file)
                .take(segment.len)
                .read_to_end(&mut bytes)
                .unwrap();
            fs::write(copy.path().join(&segment.name), bytes).unwrap();
        }
        let (_, seen) = open(copy.path(), 0);
        let payloads: Vec<&[u8]> = seen.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [b"a".as_slice(), b"b", b"c"]);
    }

    #[tokio::test]
    async fn overload_is_reported_not_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 0, 0, 8, 64 << 20, SelfMetrics::new(), |_| {}).unwrap();
        let err = wal
            .append(RecordKind::Spans, vec![0; 9], Box::new(|_| {}))
            .await
            .unwrap_err();
        assert!(matches!(err, WalError::Overloaded));
    }
}
