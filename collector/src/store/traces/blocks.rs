//! Span blocks: zstd-compressed groups of whole traces, appended to segment
//! files that are never rewritten (search tables, see `search`, share them).
//! A segment is closed once it holds its target size (see
//! [`Retention::file_bytes`](crate::config::Retention::file_bytes): an eighth
//! of the size limit) or its first block is `SEGMENT_MAX_AGE` old, and each
//! open of the store starts a new one, so retention can delete whole files at
//! hourly granularity and at an eighth of the size limit. One flush's blocks
//! go to one segment, so a segment is at most its target plus one flush.
//!
//! A block decompresses to a directory `[count u32]` + `count x [trace id
//! (16), offset u32, len u32]` followed by one span table (see `codec`) per
//! trace, so reading one trace decompresses its block but decodes only its own
//! table. On disk a block is one [`frame`](crate::frame) holding a zstd frame.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::backup::BackupDir;
use crate::codec;
use crate::frame;
use crate::memory::{self, Scratch};
use crate::model::{Span, TraceId};
use crate::store::{self, Result, StoreError};
use crate::telemetry::SelfMetrics;

const DIRECTORY_ENTRY_LEN: usize = 16 + 4 + 4;
/// ... or once its first block is this old: retention deletes whole segments,
/// so this is its granularity on installs that never fill one.
const SEGMENT_MAX_AGE: Duration = Duration::from_secs(3600);
/// zstd's fastest level: against level 3, span ingest ran 6-10 % faster
/// (compression was a tenth of the daemon's CPU under load) for 2 bytes a
/// span more (58.9 instead of 56.9; `strand-bench traces --clients 16`).
const ZSTD_LEVEL: i32 = 1;
/// Room for the span tables of a block as the store cuts them (its 512 KiB
/// target counts estimated sizes; written tables run about a fifth over),
/// so they are written without regrowing.
const RAW_BLOCK_CAPACITY: usize = 768 << 10;
/// Blocks larger than this cannot have been written by this code.
const MAX_BLOCK_LEN: u32 = 256 << 20;

/// Where a block lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BlockRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

impl BlockRef {
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&self.segment.to_be_bytes());
        out[4..12].copy_from_slice(&self.offset.to_be_bytes());
        out[12..16].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<BlockRef> {
        let parse = || {
            Some(BlockRef {
                segment: frame::read_u32_be(bytes, 0)?,
                offset: frame::read_u64_be(bytes, 4)?,
                len: frame::read_u32_be(bytes, 12)?,
            })
        };
        parse()
            .filter(|_| bytes.len() == 16)
            .ok_or_else(|| StoreError::Corrupt("block reference has the wrong length".into()))
    }
}

/// Encodes whole traces into one compressed block (header included). Spans
/// with equal resources or scopes should share one `Arc` of each (the head
/// makes them, see `codec::Shared`): they are written once per trace then.
pub fn encode_block(traces: &[(&TraceId, &[Span])]) -> Result<Vec<u8>> {
    // The directory's size is known: its room first, the tables written
    // after it in place, then the directory filled in.
    let tables_start = 4 + traces.len() * DIRECTORY_ENTRY_LEN;
    let mut raw = Vec::with_capacity(tables_start + RAW_BLOCK_CAPACITY);
    raw.extend_from_slice(&(traces.len() as u32).to_le_bytes());
    raw.resize(tables_start, 0);
    for (n, (trace_id, spans)) in traces.iter().enumerate() {
        let start = raw.len();
        codec::encode_shared_spans_into(&mut raw, spans.iter());
        let (offset, len) = (start - tables_start, raw.len() - start);
        let entry = &mut raw[4 + n * DIRECTORY_ENTRY_LEN..4 + (n + 1) * DIRECTORY_ENTRY_LEN];
        entry[..16].copy_from_slice(trace_id.as_slice());
        entry[16..20].copy_from_slice(&(offset as u32).to_le_bytes());
        entry[20..24].copy_from_slice(&(len as u32).to_le_bytes());
    }
    seal(&raw)
}

thread_local! {
    /// zstd's contexts, one per thread and kept: making one allocates and
    /// clears about a megabyte, which cost more than compressing a block.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static STREAM: RefCell<Option<zstd::zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
}

/// Compresses and checksums bytes for a segment file.
pub fn seal(raw: &[u8]) -> Result<Vec<u8>> {
    // Compressing an in-memory buffer only fails on invalid parameters.
    let compressed = COMPRESSOR
        .with_borrow_mut(|compressor| {
            if compressor.is_none() {
                *compressor = Some(zstd::bulk::Compressor::new(ZSTD_LEVEL)?);
            }
            compressor
                .as_mut()
                .map_or(Ok(Vec::new()), |c| c.compress(raw))
        })
        .unwrap_or_default();
    let mut block = Vec::with_capacity(frame::HEADER_LEN + compressed.len());
    frame::append(&mut block, &compressed)?;
    Ok(block)
}

/// The zstd frame inside what [`seal`] made, checked, and the size it
/// decompresses to if the frame says (`seal` writes it; a size over the
/// frame limit is damage).
fn sealed_frame(block: &[u8]) -> Result<(&[u8], Option<usize>)> {
    let (compressed, len) = frame::decode(block).map_err(|e| corrupt_sealed(&e.to_string()))?;
    if len != block.len() {
        return Err(corrupt_sealed("longer than its frame"));
    }
    match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(size)) if size <= frame::MAX_PAYLOAD_LEN as u64 => {
            Ok((compressed, Some(size as usize)))
        }
        Ok(None) => Ok((compressed, None)),
        _ => Err(corrupt_sealed("bad zstd frame")),
    }
}

/// Decompresses a zstd frame that does not say its size, streamed.
fn decompress_unsized(compressed: &[u8]) -> Result<Vec<u8>> {
    zstd::stream::decode_all(compressed).map_err(|_| corrupt_sealed("bad zstd frame"))
}

fn corrupt_sealed(what: &str) -> StoreError {
    StoreError::Corrupt(format!("segment block: {what}"))
}

/// Checks and decompresses what [`seal`] made.
pub fn unseal(block: &[u8]) -> Result<Vec<u8>> {
    let (compressed, size) = sealed_frame(block)?;
    // Of the known size: in one go, into a buffer of that size. Without
    // one: streamed.
    let Some(size) = size else {
        return decompress_unsized(compressed);
    };
    DECOMPRESSOR
        .with_borrow_mut(|decompressor| {
            if decompressor.is_none() {
                *decompressor = Some(zstd::bulk::Decompressor::new()?);
            }
            match decompressor.as_mut() {
                Some(d) => d.decompress(compressed, size),
                None => Ok(Vec::new()),
            }
        })
        .ok()
        .filter(|raw| raw.len() == size)
        .ok_or_else(|| corrupt_sealed("bad zstd frame"))
}

/// What [`seal`] made, decompressed only as far as asked: a reader of one
/// trace needs the directory and its own table, on average half the block.
struct PartialBlock<'a> {
    /// The decompression under way; `None` once the block is whole.
    stream: Option<(
        &'a mut zstd::zstd_safe::DCtx<'static>,
        zstd::zstd_safe::InBuffer<'a>,
    )>,
    /// The block's size; what is past `filled` is not the block's yet.
    raw: &'a mut [u8],
    filled: usize,
}

impl PartialBlock<'_> {
    /// The first `len` bytes of the block.
    fn prefix(&mut self, len: usize) -> Result<&[u8]> {
        let damaged = || corrupt_sealed("bad zstd frame");
        if len > self.raw.len() {
            return Err(corrupt_block("past the block's end"));
        }
        while self.filled < len {
            let Some((stream, input)) = &mut self.stream else {
                return Err(damaged());
            };
            let read = input.pos();
            let mut output =
                zstd::zstd_safe::OutBuffer::around_pos(&mut self.raw[..len], self.filled);
            let left = stream
                .decompress_stream(&mut output, input)
                .map_err(|_| damaged())?;
            let stalled = output.pos() == self.filled && input.pos() == read;
            self.filled = output.pos();
            // The frame ended, or nothing moved: it is shorter than its size.
            if self.filled < len && (left == 0 || stalled) {
                return Err(damaged());
            }
        }
        Ok(&self.raw[..len])
    }
}

/// Runs `read` on a [`PartialBlock`] of `block`, decompressed in this
/// thread's scratch buffer as `read` asks. A frame that does not say its
/// size (`seal` always writes it) is decompressed whole first.
fn with_partial_block<T>(
    block: &[u8],
    read: impl FnOnce(&mut PartialBlock<'_>) -> Result<T>,
) -> Result<T> {
    let (compressed, size) = sealed_frame(block)?;
    let Some(size) = size else {
        let mut raw = decompress_unsized(compressed)?;
        let filled = raw.len();
        return read(&mut PartialBlock {
            stream: None,
            raw: &mut raw,
            filled,
        });
    };
    STREAM.with_borrow_mut(|stream| {
        let stream = stream.get_or_insert_with(zstd::zstd_safe::DCtx::create);
        stream
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .map_err(|_| corrupt_sealed("zstd context"))?;
        memory::with_scratch(Scratch::Inflate, size, |raw| {
            read(&mut PartialBlock {
                stream: Some((stream, zstd::zstd_safe::InBuffer::around(compressed))),
                raw,
                filled: 0,
            })
        })
    })
}

fn corrupt_block(what: &str) -> StoreError {
    StoreError::Corrupt(format!("span block: {what}"))
}

/// A decompressed block's directory (an entry per trace, in id order) and
/// the span tables after it.
fn directory(raw: &[u8]) -> Result<(&[u8], &[u8])> {
    let directory_end = Some(directory_end(raw)?)
        .filter(|&end| end <= raw.len())
        .ok_or_else(|| corrupt_block("directory out of range"))?;
    Ok((&raw[4..directory_end], &raw[directory_end..]))
}

/// Where the directory of a block that starts with `raw` ends: its count
/// (the first 4 bytes) of entries after them.
fn directory_end(raw: &[u8]) -> Result<usize> {
    let count =
        frame::read_u32_le(raw, 0).ok_or_else(|| corrupt_block("missing directory"))? as usize;
    count
        .checked_mul(DIRECTORY_ENTRY_LEN)
        .and_then(|n| n.checked_add(4))
        .ok_or_else(|| corrupt_block("directory out of range"))
}

/// The ids of the traces in a block read from disk: what a damaged run of
/// the trace-id index is rebuilt from.
pub fn decode_trace_ids(block: &[u8]) -> Result<Vec<TraceId>> {
    let raw = unseal(block)?;
    let (entries, _) = directory(&raw)?;
    Ok(entries
        .chunks_exact(DIRECTORY_ENTRY_LEN)
        .map(|entry| entry[..16].try_into().expect("16 bytes"))
        .collect())
}

/// Decodes the spans of one trace from a block read from disk,
/// decompressing the block only as far as the trace's table ends.
pub fn decode_trace(block: &[u8], trace_id: &TraceId) -> Result<Vec<Span>> {
    with_partial_block(block, |partial| {
        let directory_end = directory_end(partial.prefix(4)?)?;
        let directory = partial.prefix(directory_end)?;
        let Some((offset, len)) = find_table(&directory[4..], trace_id) else {
            return Ok(Vec::new());
        };
        let end = offset
            .checked_add(len)
            .and_then(|n| n.checked_add(directory_end))
            .ok_or_else(|| corrupt_block("table out of range"))?;
        let table = &partial.prefix(end)?[directory_end + offset..];
        Ok(codec::decode_spans(table, Some(trace_id))?)
    })
}

/// Where a trace's table is after the directory (`entries`, in id order):
/// offset and length.
fn find_table(entries: &[u8], trace_id: &TraceId) -> Option<(usize, usize)> {
    let (mut low, mut high) = (0, entries.len() / DIRECTORY_ENTRY_LEN);
    while low < high {
        let mid = (low + high) / 2;
        let entry = &entries[mid * DIRECTORY_ENTRY_LEN..(mid + 1) * DIRECTORY_ENTRY_LEN];
        match entry[0..16].cmp(trace_id.as_slice()) {
            std::cmp::Ordering::Less => low = mid + 1,
            std::cmp::Ordering::Greater => high = mid,
            std::cmp::Ordering::Equal => {
                let offset = frame::read_u32_le(entry, 16)? as usize;
                let len = frame::read_u32_le(entry, 20)? as usize;
                return Some((offset, len));
            }
        }
    }
    None
}

/// A block as [`Segments::read`] found it.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockRead<T> {
    /// Retention dropped its segment.
    Gone,
    /// Cut short or failing its checksum or decoding: already reported.
    Damaged,
    Read(T),
}

/// The append-only segment files of one store.
pub struct Segments {
    dir: PathBuf,
    /// What damage reports name files relative to.
    data_dir: PathBuf,
    metrics: SelfMetrics,
    /// Damaged blocks already reported, so a block read by every query is
    /// reported once per run.
    reported: Mutex<HashSet<BlockRef>>,
    /// Where the open put segment bytes the index does not know.
    set_aside: Vec<PathBuf>,
    /// Segments the index knows, and the one being appended to. A block
    /// reference into any other segment (one retention dropped) reads as
    /// nothing.
    live: RwLock<BTreeSet<u32>>,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    writer: Mutex<Writer>,
    /// A new segment starts once the current one is this large.
    target_bytes: u64,
}

struct Writer {
    /// Ids only grow, so a stale block reference never points into a newer
    /// segment that reused its id.
    next_id: u32,
    current: Option<OpenSegment>,
}

/// The segment being appended to.
struct OpenSegment {
    id: u32,
    file: File,
    len: u64,
    /// When its first block was written.
    opened: SystemTime,
}

impl OpenSegment {
    fn is_closed(&self, target_bytes: u64) -> bool {
        self.len >= target_bytes
            || self
                .opened
                .elapsed()
                .is_ok_and(|age| age >= SEGMENT_MAX_AGE)
    }
}

impl Segments {
    /// Opens the segment directory, cutting every segment back to the length
    /// the index knows (`committed`): bytes after it were written by a flush
    /// that crashed before committing, and are replayed from the WAL instead.
    /// Files the index does not know at all (an uncommitted new segment, or
    /// one retention dropped before a crash) are taken out too. Neither is
    /// deleted here: both are set aside in quarantine (see
    /// [`Segments::set_aside`]), since an index that lost commits to damage
    /// looks the same, and only the WAL can tell. Appends go to a new
    /// segment, and a new one starts whenever the current one holds
    /// `target_bytes`.
    ///
    /// A segment shorter than committed was cut by something else: it is
    /// reported, and its blocks past the end read as damaged.
    pub fn open(
        dir: &Path,
        data_dir: &Path,
        committed: &HashMap<u32, u64>,
        target_bytes: u64,
        metrics: SelfMetrics,
    ) -> Result<Segments> {
        fs::create_dir_all(dir)?;
        let mut newest = committed.keys().max().copied();
        let mut set_aside = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Some(id) = segment_id(&entry.path()) else {
                continue;
            };
            let file_len = entry.metadata()?.len();
            match committed.get(&id) {
                Some(&len) if file_len > len => {
                    tracing::warn!(segment = id, len, "SpanSegmentUncommittedTailTruncated");
                    let mut name = entry.file_name();
                    name.push(format!(".from-{len}"));
                    let target = store::quarantine_path(data_dir, &dir.join(name))?;
                    let mut tail = vec![0u8; (file_len - len) as usize];
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(entry.path())?;
                    file.read_exact_at(&mut tail, len)?;
                    let mut aside = File::create(&target)?;
                    aside.write_all(&tail)?;
                    aside.sync_all()?;
                    file.set_len(len)?;
                    set_aside.push(target);
                }
                Some(&len) if file_len < len => metrics.corrupt_data(
                    "traces",
                    data_dir,
                    &entry.path(),
                    file_len,
                    &format!("{} committed bytes are missing", len - file_len),
                    "blocks past the end read as damaged",
                ),
                Some(_) => {}
                None => {
                    set_aside.push(store::quarantine(data_dir, &entry.path())?);
                    newest = newest.max(Some(id));
                }
            }
        }
        Ok(Segments {
            dir: dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            metrics,
            reported: Mutex::new(HashSet::new()),
            set_aside,
            live: RwLock::new(committed.keys().copied().collect()),
            readers: RwLock::new(HashMap::new()),
            writer: Mutex::new(Writer {
                next_id: newest.map_or(0, |id| id + 1),
                current: None,
            }),
            target_bytes,
        })
    }

    /// Appends blocks to the current segment and fsyncs it; returns the refs,
    /// and the segment and its new length (to be committed to the index).
    pub fn append(&self, blocks: &[Vec<u8>]) -> Result<(Vec<BlockRef>, u32, u64)> {
        let mut writer = self.writer.lock().expect("not poisoned");
        if writer
            .current
            .as_ref()
            .is_some_and(|current| current.is_closed(self.target_bytes))
        {
            writer.current = None;
        }
        if writer.current.is_none() {
            let id = writer.next_id;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(id))?;
            let len = file.metadata()?.len();
            File::open(&self.dir)?.sync_all()?;
            writer.next_id = id + 1;
            self.live.write().expect("not poisoned").insert(id);
            writer.current = Some(OpenSegment {
                id,
                file,
                len,
                opened: SystemTime::now(),
            });
        }
        let current = writer.current.as_mut().expect("opened above");
        let mut refs = Vec::with_capacity(blocks.len());
        let mut buffer = Vec::with_capacity(blocks.iter().map(Vec::len).sum());
        for block in blocks {
            refs.push(BlockRef {
                segment: current.id,
                offset: current.len + buffer.len() as u64,
                len: block.len() as u32,
            });
            buffer.extend_from_slice(block);
        }
        current.file.write_all(&buffer)?;
        current.file.sync_data()?;
        current.len += buffer.len() as u64;
        Ok((refs, current.id, current.len))
    }

    /// Deletes the segment bytes the open set aside when the WAL replays
    /// them (`replayable`); otherwise keeps them in quarantine and reports
    /// them: the index (at `checkpoint`) lost the commits that mapped them.
    pub fn settle_set_aside(&self, replayable: bool, checkpoint: u64) -> Result<()> {
        for path in &self.set_aside {
            if replayable {
                fs::remove_file(path)?;
            } else {
                self.metrics.corrupt_data(
                    "traces",
                    &self.data_dir,
                    path,
                    0,
                    &format!(
                        "span blocks the trace index does not map and the WAL no longer holds (the index's checkpoint is {checkpoint}): the index lost commits"
                    ),
                    "kept in quarantine; their traces are missing",
                );
            }
        }
        Ok(())
    }

    /// The segment being appended to, which retention must keep.
    pub fn current(&self) -> Option<u32> {
        let writer = self.writer.lock().expect("not poisoned");
        writer.current.as_ref().map(|s| s.id)
    }

    /// Closes the current segment: the next append starts a new one, as if
    /// the current one were an hour old.
    #[cfg(test)]
    pub fn rotate(&self) {
        self.writer.lock().expect("not poisoned").current = None;
    }

    /// Whether block references into `segment` can be read.
    fn is_live(&self, segment: u32) -> bool {
        self.live.read().expect("not poisoned").contains(&segment)
    }

    /// When a segment file was last written, in Unix nanoseconds: the age
    /// of segments committed before the index recorded their newest span.
    pub fn modified_nanos(&self, segment: u32) -> Option<u64> {
        let modified = fs::metadata(self.path(segment)).ok()?.modified().ok()?;
        let since_epoch = modified.duration_since(SystemTime::UNIX_EPOCH).ok()?;
        u64::try_from(since_epoch.as_nanos()).ok()
    }

    /// Deletes segments the index no longer refers to. Reads of them find
    /// nothing from now on (a read already under way finishes on the open
    /// file). Never pass the current segment.
    pub fn remove(&self, segments: &[u32]) -> Result<()> {
        {
            let mut live = self.live.write().expect("not poisoned");
            for id in segments {
                live.remove(id);
            }
        }
        {
            let mut readers = self.readers.write().expect("not poisoned");
            for id in segments {
                readers.remove(id);
            }
        }
        for id in segments {
            match fs::remove_file(self.path(*id)) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Writes the segments the index maps (`committed`: id -> committed
    /// length) into `relative` under `backup`: hard links for those never
    /// appended to again and no longer than committed, copies of the
    /// committed bytes of the rest (the current segment; one with bytes of
    /// a failed flush after them, which an open would cut). A mapped file
    /// that is gone is damage the daemon reports on reads, and is left
    /// out. The caller holds off flushes and retention.
    pub fn snapshot(
        &self,
        committed: &BTreeMap<u32, u64>,
        backup: &mut BackupDir,
        relative: &Path,
    ) -> Result<()> {
        let current = self.current();
        backup.create_dir(relative)?;
        for (&id, &len) in committed {
            let path = self.path(id);
            let name = relative.join(path.file_name().unwrap_or(path.as_os_str()));
            let file_len = match fs::metadata(&path) {
                Ok(metadata) => metadata.len(),
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error.into()),
            };
            if Some(id) != current && file_len <= len {
                backup.link(&path, &name)?;
            } else {
                backup.copy_prefix(&mut File::open(&path)?, len.min(file_len), &name)?;
            }
        }
        Ok(())
    }

    /// Reads one block and decodes it with `decode`. A block cut short or
    /// that `decode` finds damaged (a bad checksum, zstd frame or table)
    /// costs only itself: it is reported and read as `Damaged`.
    pub fn read<T>(
        &self,
        block: BlockRef,
        decode: impl FnOnce(&[u8]) -> Result<T>,
    ) -> Result<BlockRead<T>> {
        if block.len > MAX_BLOCK_LEN {
            return Ok(self.damaged(block, "block reference too long"));
        }
        let Some(file) = self.reader(block.segment)? else {
            return Ok(BlockRead::Gone);
        };
        memory::with_scratch(Scratch::Read, block.len as usize, |bytes| {
            match file.read_exact_at(bytes, block.offset) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(self.damaged(block, "cut short"));
                }
                Err(error) => return Err(error.into()),
            }
            self.decoded(block, decode(bytes))
        })
    }

    /// A read block's decoding as a [`BlockRead`]: damage is reported.
    fn decoded<T>(&self, block: BlockRef, decoded: Result<T>) -> Result<BlockRead<T>> {
        match decoded {
            Ok(decoded) => Ok(BlockRead::Read(decoded)),
            Err(error @ (StoreError::Corrupt(_) | StoreError::Codec(_) | StoreError::Frame(_))) => {
                Ok(self.damaged(block, &error.to_string()))
            }
            Err(error) => Err(error),
        }
    }

    /// Reports a damaged block, once per run.
    fn damaged<T>(&self, block: BlockRef, damage: &str) -> BlockRead<T> {
        if self.reported.lock().expect("not poisoned").insert(block) {
            self.metrics.corrupt_data(
                "traces",
                &self.data_dir,
                &self.path(block.segment),
                block.offset,
                damage,
                "skipped the block: its traces are missing from answers",
            );
        }
        BlockRead::Damaged
    }

    /// Bytes of all segment files.
    pub fn disk_bytes(&self) -> u64 {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    fn reader(&self, segment: u32) -> Result<Option<Arc<File>>> {
        if let Some(file) = self.readers.read().expect("not poisoned").get(&segment) {
            return Ok(Some(file.clone()));
        }
        if !self.is_live(segment) {
            return Ok(None);
        }
        let file = match File::open(self.path(segment)) {
            Ok(file) => Arc::new(file),
            // Dropped between the check above and the open.
            Err(error) if error.kind() == io::ErrorKind::NotFound && !self.is_live(segment) => {
                return Ok(None);
            }
            Err(error) => return Err(error.into()),
        };
        let mut readers = self.readers.write().expect("not poisoned");
        // `remove` forgets the segment before its reader: never cache one it
        // already forgot.
        if self.is_live(segment) {
            readers.insert(segment, file.clone());
        }
        Ok(Some(file))
    }

    fn path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08}.blocks"))
    }
}

fn segment_id(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_suffix(".blocks")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;
    use crate::config::Retention;

    fn open_segments(dir: &Path, committed: &HashMap<u32, u64>) -> Segments {
        Segments::open(
            &dir.join("blocks"),
            dir,
            committed,
            Retention::MAX_FILE_BYTES,
            SelfMetrics::new(),
        )
        .unwrap()
    }

    /// A block's bytes as checked by its frame.
    fn read(segments: &Segments, block: BlockRef) -> BlockRead<Vec<u8>> {
        segments
            .read(block, |bytes| {
                frame::decode(bytes)?;
                Ok(bytes.to_vec())
            })
            .unwrap()
    }

    #[test]
    fn finds_each_trace_in_a_block() {
        let a = vec![sample_span(1, 1, "a"), sample_span(1, 2, "a")];
        let b = vec![sample_span(5, 1, "b")];
        let block = encode_block(&[(&[1; 16], &a), (&[5; 16], &b)]).unwrap();
        assert_eq!(decode_trace(&block, &[1; 16]).unwrap(), a);
        assert_eq!(decode_trace(&block, &[5; 16]).unwrap(), b);
        assert!(decode_trace(&block, &[3; 16]).unwrap().is_empty());
    }

    #[test]
    fn reads_a_trace_anywhere_in_a_block_of_many_zstd_blocks() {
        let ids: Vec<TraceId> = (0..3000u32)
            .map(|i| {
                let mut id = [0; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        let spans: Vec<Vec<Span>> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut span = sample_span(0, (i % 200) as u8 + 1, "many");
                span.trace_id = *id;
                vec![span]
            })
            .collect();
        let traces: Vec<(&TraceId, &[Span])> = ids
            .iter()
            .zip(&spans)
            .map(|(id, s)| (id, s.as_slice()))
            .collect();
        let block = encode_block(&traces).unwrap();
        assert!(
            unseal(&block).unwrap().len() > 3 * (128 << 10),
            "several zstd blocks"
        );
        for i in [0, 1, 1500, 2998, 2999] {
            assert_eq!(
                decode_trace(&block, &ids[i]).unwrap(),
                spans[i],
                "trace {i}"
            );
        }
        assert!(decode_trace(&block, &[0xff; 16]).unwrap().is_empty());

        // A zstd stream cut short in an intact frame: the traces past the
        // cut are damage, found when reached.
        let (compressed, _) = frame::decode(&block).unwrap();
        let mut cut = Vec::new();
        frame::append(&mut cut, &compressed[..compressed.len() / 2]).unwrap();
        assert!(matches!(
            decode_trace(&cut, &ids[2999]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn detects_corruption() {
        let mut block = encode_block(&[(&[1; 16], &[sample_span(1, 1, "a")])]).unwrap();
        let last = block.len() - 1;
        block[last] ^= 1;
        assert!(matches!(
            decode_trace(&block, &[1; 16]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(decode_trace(&[1, 2], &[1; 16]).is_err());
    }

    #[test]
    fn a_directory_or_table_past_the_block_end_is_corrupt() {
        let corrupt = |raw: &[u8]| {
            let block = seal(raw).unwrap();
            matches!(decode_trace(&block, &[1; 16]), Err(StoreError::Corrupt(_)))
        };
        // A count no directory follows: an error, not four billion entries.
        assert!(corrupt(&u32::MAX.to_le_bytes()));
        let mut raw = 1u32.to_le_bytes().to_vec();
        raw.extend_from_slice(&[1; 16]);
        raw.extend_from_slice(&1000u32.to_le_bytes());
        raw.extend_from_slice(&10u32.to_le_bytes());
        assert!(corrupt(&raw));
        raw.extend_from_slice(&[0; 1005]);
        assert!(corrupt(&raw));
    }

    #[test]
    fn unseals_frames_with_and_without_a_content_size() {
        let raw: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        assert_eq!(unseal(&seal(&raw).unwrap()).unwrap(), raw);
        // A streamed zstd frame does not state its size.
        let streamed = zstd::stream::encode_all(raw.as_slice(), ZSTD_LEVEL).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
            None
        );
        let mut block = Vec::new();
        frame::append(&mut block, &streamed).unwrap();
        assert_eq!(unseal(&block).unwrap(), raw);
    }

    proptest::proptest! {
        /// Any bytes in an intact frame (a checksum cannot catch what was
        /// written damaged) are an error or a block, never a panic.
        #[test]
        fn unsealing_damaged_zstd_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            cut in 0usize..64,
        ) {
            let mut compressed = zstd::bulk::compress(&bytes, ZSTD_LEVEL).unwrap();
            // Damage the frame header's content size and the body.
            for (at, byte) in bytes.iter().take(cut).enumerate() {
                let at = at % compressed.len();
                compressed[at] ^= byte;
            }
            let mut block = Vec::new();
            frame::append(&mut block, &compressed).unwrap();
            let _ = unseal(&block);
            let _ = decode_trace(&block, &[1; 16]);
        }
    }

    #[test]
    fn appends_and_reads_back_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let segments = open_segments(dir.path(), &HashMap::new());
        let block = encode_block(&[(&[1; 16], &[sample_span(1, 1, "a")])]).unwrap();
        let (refs, segment, len) = segments.append(&[block.clone(), block.clone()]).unwrap();
        assert_eq!(refs[1].offset, block.len() as u64);
        assert_eq!(len, 2 * block.len() as u64);
        assert_eq!(read(&segments, refs[1]), BlockRead::Read(block.clone()));

        // Only the first block was committed: the second is cut on reopen.
        let committed = HashMap::from([(segment, block.len() as u64)]);
        let segments = open_segments(dir.path(), &committed);
        assert_eq!(segments.disk_bytes(), block.len() as u64);
        assert_eq!(read(&segments, refs[1]), BlockRead::Damaged);
        assert_eq!(read(&segments, refs[0]), BlockRead::Read(block.clone()));
        // Appends after a reopen go to a new segment.
        let (_, next, _) = segments.append(std::slice::from_ref(&block)).unwrap();
        assert_eq!(next, segment + 1);
    }

    #[test]
    fn a_damaged_block_costs_only_itself_and_is_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = SelfMetrics::new();
        let segments = Segments::open(
            &dir.path().join("blocks"),
            dir.path(),
            &HashMap::new(),
            Retention::MAX_FILE_BYTES,
            metrics.clone(),
        )
        .unwrap();
        let a = encode_block(&[(&[1; 16], &[sample_span(1, 1, "a")])]).unwrap();
        let b = encode_block(&[(&[2; 16], &[sample_span(2, 1, "b")])]).unwrap();
        let (refs, segment, _) = segments.append(&[a, b]).unwrap();
        let path = segments.path(segment);
        let mut bytes = fs::read(&path).unwrap();
        bytes[refs[0].offset as usize + 12] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let decode = |id: TraceId| move |bytes: &[u8]| decode_trace(bytes, &id);
        for _ in 0..2 {
            assert_eq!(
                segments.read(refs[0], decode([1; 16])).unwrap(),
                BlockRead::Damaged
            );
        }
        assert!(matches!(
            segments.read(refs[1], decode([2; 16])).unwrap(),
            BlockRead::Read(spans) if spans.len() == 1
        ));
        let file = format!("blocks/{segment:08}.blocks");
        let counted = format!("strand_corrupt_data_total{{file=\"{file}\",store=\"traces\"}} 1");
        assert!(metrics.render().contains(&counted), "{}", metrics.render());
    }

    #[test]
    fn rotates_hourly_and_dropped_segments_read_as_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let segments = open_segments(dir.path(), &HashMap::new());
        let block = encode_block(&[(&[1; 16], &[sample_span(1, 1, "a")])]).unwrap();
        let blocks = std::slice::from_ref(&block);
        let (first, _, _) = segments.append(blocks).unwrap();
        let (same, _, _) = segments.append(blocks).unwrap();
        assert_eq!(same[0].segment, first[0].segment);
        {
            let mut writer = segments.writer.lock().unwrap();
            let current = writer.current.as_mut().unwrap();
            current.opened -= SEGMENT_MAX_AGE;
        }
        let (next, _, _) = segments.append(blocks).unwrap();
        assert_eq!(next[0].segment, first[0].segment + 1);
        assert_eq!(segments.current(), Some(next[0].segment));

        assert_eq!(read(&segments, first[0]), BlockRead::Read(block.clone()));
        segments.remove(&[first[0].segment]).unwrap();
        assert!(!segments.is_live(first[0].segment));
        assert_eq!(read(&segments, first[0]), BlockRead::Gone);
        assert_eq!(read(&segments, next[0]), BlockRead::Read(block));
        let left: Vec<_> = fs::read_dir(dir.path().join("blocks")).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn rotates_at_the_target_size() {
        let dir = tempfile::tempdir().unwrap();
        let block = encode_block(&[(&[1; 16], &[sample_span(1, 1, "a")])]).unwrap();
        let target = 3 * block.len() as u64;
        let segments = Segments::open(
            &dir.path().join("blocks"),
            dir.path(),
            &HashMap::new(),
            target,
            SelfMetrics::new(),
        )
        .unwrap();
        let blocks = std::slice::from_ref(&block);
        let mut segment_of_append = Vec::new();
        for _ in 0..7 {
            let (_, segment, len) = segments.append(blocks).unwrap();
            assert!(len <= target, "a segment grows to its target, no further");
            segment_of_append.push(segment);
        }
        assert_eq!(segment_of_append, [0, 0, 0, 1, 1, 1, 2]);
        // One append goes to one segment, however large: the target is
        // exceeded by at most one flush.
        let (_, segment, len) = segments.append(&vec![block.clone(); 5]).unwrap();
        assert_eq!((segment, len), (2, 6 * block.len() as u64));
        let (_, segment, _) = segments.append(blocks).unwrap();
        assert_eq!(segment, 3);
    }
}
