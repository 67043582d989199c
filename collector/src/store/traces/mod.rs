//! The span store.
//!
//! Spans land in an in-memory head (queryable at once) as soon as the WAL has
//! them. A flush moves the whole head to disk: traces sorted by id, packed into
//! zstd blocks appended to segment files together with the flush's search
//! tables; then a run file maps each trace id to its blocks (see `runs`), and
//! one sled batch commits the run, adds a key per block and search table,
//! names and dependency counts, and records the WAL sequence number the flush
//! covers. That batch is the commit point: after it the WAL up to that number
//! can go; before it a crash replays the WAL, and on open the uncommitted
//! block bytes are cut off and the run file deleted.
//!
//! A trace whose spans arrived across several flushes simply has several block
//! references; reads merge them with the head.
//!
//! Retention deletes whole segment files (see `blocks`), by the age of their
//! newest span and by total size — segments and the sled index counted —,
//! never the one being appended to nor the newest committed one; a block
//! reference into a deleted segment reads as no spans. Segments roll over at
//! an eighth of the size limit, so the store stays within the limit plus
//! those two segments.

mod blocks;
mod buffer;
mod deps;
mod index;
mod runs;
mod search;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backup::BackupDir;
use crate::config::Retention;
use crate::frame;
use crate::model::{Span, SpanKind, TraceId};
use crate::store::{self, Result, StoreError};
use crate::telemetry::{DropReason, SelfMetrics};

pub use search::Candidates;

use blocks::{BlockRead, BlockRef, Segments};
pub(crate) use buffer::{SpanBuffer, settle_trace};
pub(crate) use deps::DependencyTracker;
pub use deps::Edge;
use runs::{RunKey, RunMerger, TraceRuns};

/// Uncompressed bytes of span tables per block (as `estimated_size` counts
/// them): large enough to compress well, small enough that reading one trace
/// decompresses little. At 512 KiB a block stores 7 % fewer bytes than at
/// 128 KiB (79 -> 74 bytes per span in `strand-bench traces`), and a trace by
/// id takes 0.3 ms longer at p99 (0.85 -> 1.16 ms) to decompress its block.
/// Also what one damaged block costs: at 512 KiB, about a hundred typical
/// traces.
const BLOCK_TARGET_BYTES: usize = 512 << 10;
/// Memory for sled's cache while a snapshot copies the index into a new
/// database: the copy only writes, so a small cache keeps its memory small.
const SNAPSHOT_INDEX_CACHE_BYTES: u64 = 8 << 20;
/// Bytes resident per byte of sled's nominal cache capacity, as measured:
/// sled counts a cached page at its size in the log, and holds it as a
/// deserialized tree node several times larger. After 10M spans of
/// `strand-bench traces`, a nominal 16 MiB kept 120 MB more resident than
/// 2 MiB, and trace by id was no faster for it (p99 1.55 vs 1.51 ms).
const SLED_RESIDENT_PER_CACHE_BYTE: u64 = 8;

/// Calls from one service to another, summed over a time range;
/// `error_count` counts the failed ones (see [`Edge::failed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
    pub error_count: u64,
}

/// How long [`open_index`] waits for the index's file lock: a store this
/// process closed just before may still be finishing sled's writes on its
/// threads. Past it, another process holds the index.
const INDEX_LOCK_WAIT: Duration = if cfg!(test) {
    Duration::from_secs(3)
} else {
    Duration::from_secs(10)
};

/// The sled index as [`open_index`] found it.
enum IndexOpen {
    /// With the committed length of every segment, and whether it is of a
    /// version whose `T` keys [`convert_trace_keys`] turns into a run.
    Opened(sled::Db, HashMap<u32, u64>, bool),
    /// Unusable, and why; the database is closed again.
    Damaged(String),
}

/// sled's nominal cache capacity for `memory_bytes` of memory; at least
/// 64 KiB, a few dozen pages.
fn sled_cache_capacity(memory_bytes: u64) -> u64 {
    (memory_bytes / SLED_RESIDENT_PER_CACHE_BYTE).max(64 << 10)
}

/// Opens the sled index in `dir` and reads the committed length of every
/// segment; refuses an index of another format version. An index sled
/// cannot open, or one that comes up empty next to segment files (sled
/// recovers a damaged log by dropping everything from the damage on), is
/// `Damaged`. An index whose lock another process holds is an error, never
/// damage: moving it aside would take a running daemon's data. sled's cache
/// holds about `cache_bytes` of memory.
fn open_index(dir: &Path, cache_bytes: u64) -> Result<IndexOpen> {
    let path = dir.join("index");
    let config = sled::Config::new()
        .path(&path)
        .cache_capacity(sled_cache_capacity(cache_bytes))
        .flush_every_ms(None);
    let db = match open_sled_waiting(&config, INDEX_LOCK_WAIT) {
        Ok(db) => db,
        Err(error) if is_locked(&error) => {
            return Err(StoreError::InUse(format!(
                "the trace index {} ({error})",
                path.display()
            )));
        }
        Err(error) => {
            return Ok(IndexOpen::Damaged(format!(
                "the trace index cannot be opened: {error}"
            )));
        }
    };
    let read = (|| -> Result<Option<(HashMap<u32, u64>, bool)>> {
        let mut whole_ids = false;
        let mut trace_keys = false;
        match db.get(index::META_FORMAT)? {
            None if holds_segments(&dir.join("blocks")) => return Ok(None),
            None => {
                db.insert(index::META_FORMAT, &index::FORMAT_VERSION.to_be_bytes())?;
            }
            Some(v) if v.as_ref() == index::FORMAT_VERSION.to_be_bytes() => {}
            Some(v) if v.as_ref() == index::TRACE_KEYS_FORMAT_VERSION.to_be_bytes() => {
                trace_keys = true;
            }
            Some(v) if v.as_ref() == index::WHOLE_ID_FORMAT_VERSION.to_be_bytes() => {
                whole_ids = true;
                trace_keys = true;
            }
            Some(found) => {
                return Err(StoreError::Incompatible {
                    store: "trace",
                    found: found
                        .as_ref()
                        .try_into()
                        .map(u32::from_be_bytes)
                        .unwrap_or(0),
                    supported: index::FORMAT_VERSION,
                });
            }
        }
        let mut committed = HashMap::new();
        for entry in db.scan_prefix(index::META_SEGMENT_PREFIX) {
            let (key, value) = entry?;
            committed.insert(segment_of_key(&key)?, index::decode_u64(&value)?);
        }
        if whole_ids {
            upgrade_trace_keys(&db, &committed)?;
        }
        Ok(Some((committed, trace_keys)))
    })();
    match read {
        Ok(Some((committed, trace_keys))) => Ok(IndexOpen::Opened(db, committed, trace_keys)),
        Ok(None) => Ok(IndexOpen::Damaged(
            "the trace index is empty but segment files hold span blocks".into(),
        )),
        Err(StoreError::Index(error)) => Ok(IndexOpen::Damaged(format!(
            "the trace index cannot be read: {error}"
        ))),
        Err(error) => Err(error),
    }
}

/// Opens a sled database, retrying for up to `wait` while its file lock is
/// held: sled releases the lock of a database this process dropped only
/// once its background writes have finished.
fn open_sled_waiting(config: &sled::Config, wait: Duration) -> sled::Result<sled::Db> {
    let waited_until = Instant::now() + wait;
    loop {
        match config.open() {
            Err(error) if is_locked(&error) && Instant::now() < waited_until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

/// Whether sled refused to open a database because its file lock is held
/// (sled 0.34 says so only in the message).
fn is_locked(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// Whether `dir` holds a segment file with data.
fn holds_segments(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| {
            e.path().extension().is_some_and(|ext| ext == "blocks")
                && e.metadata().is_ok_and(|m| m.len() > 0)
        })
    })
}

/// A trace as read back.
#[derive(Debug, Default)]
pub struct TraceRead {
    pub spans: Vec<Span>,
    /// Some of its spans are in a damaged block and missing from `spans`.
    pub damaged: bool,
}

/// What a flush covered.
#[derive(Debug)]
pub struct Flushed {
    /// The WAL sequence number through which spans are now in blocks.
    pub through_seq: u64,
    /// Service-to-service calls the flushed spans completed, each reported
    /// once: the source of the service graph metrics.
    pub edges: Vec<Edge>,
}

/// State only the (single) flusher touches.
struct FlushState {
    next_block: u64,
    dependencies: DependencyTracker,
}

/// See the module docs.
pub struct TraceStore {
    /// Stops the merges first when the store is dropped: they use the index.
    merger: RunMerger,
    db: sled::Db,
    segments: Segments,
    runs: Arc<TraceRuns>,
    buffer: SpanBuffer,
    flush_state: Mutex<FlushState>,
    metrics: SelfMetrics,
}

impl TraceStore {
    /// Opens (or creates) the store in `dir`. An index sled cannot open
    /// (damaged files) is moved to `<data dir>/quarantine/` together with the
    /// segment files it maps — they are unreadable without it, and would
    /// otherwise be deleted as unknown — and the store starts empty; what
    /// the WAL still holds is replayed into it. A new segment file starts
    /// whenever the current one holds `segment_bytes` (see
    /// [`Retention::file_bytes`]).
    pub fn open(
        dir: &Path,
        index_cache_bytes: u64,
        segment_bytes: u64,
        metrics: SelfMetrics,
    ) -> Result<TraceStore> {
        std::fs::create_dir_all(dir)?;
        let data_dir = dir.parent().unwrap_or(dir);
        let (db, committed, trace_keys) = match open_index(dir, index_cache_bytes)? {
            IndexOpen::Opened(db, committed, trace_keys) => (db, committed, trace_keys),
            IndexOpen::Damaged(damage) => {
                for part in ["index", "blocks", "runs"] {
                    let path = dir.join(part);
                    if path.exists() {
                        let moved = store::quarantine(data_dir, &path)?;
                        metrics.corrupt_data(
                            "traces",
                            data_dir,
                            &path,
                            0,
                            &damage,
                            &format!("moved to {}; started empty", moved.display()),
                        );
                    }
                }
                match open_index(dir, index_cache_bytes)? {
                    IndexOpen::Opened(db, committed, trace_keys) => (db, committed, trace_keys),
                    IndexOpen::Damaged(damage) => return Err(StoreError::Corrupt(damage)),
                }
            }
        };
        let segments = Segments::open(
            &dir.join("blocks"),
            data_dir,
            &committed,
            segment_bytes,
            metrics.clone(),
        )?;
        let next_block = match db.get(index::META_NEXT_BLOCK)? {
            Some(v) => index::decode_u64(&v)?,
            None => 0,
        };
        let (runs, damaged) = TraceRuns::open(&dir.join("runs"), data_dir, &db, metrics.clone())?;
        for run in damaged {
            runs.rebuild(&db, run, |block| {
                let Some(block_ref) = db.get(index::block_ref_key(block))? else {
                    return Ok(Vec::new());
                };
                let read =
                    segments.read(BlockRef::from_bytes(&block_ref)?, blocks::decode_trace_ids)?;
                Ok(match read {
                    BlockRead::Read(ids) => ids,
                    // Reported; its traces are lost with it.
                    BlockRead::Damaged | BlockRead::Gone => Vec::new(),
                })
            })?;
        }
        let runs = Arc::new(runs);
        if trace_keys {
            drop_uncommitted_trace_keys(&db, next_block)?;
            convert_trace_keys(&db, &runs)?;
        }
        // Left by a conversion that crashed after its commit.
        remove_trace_keys(&db)?;

        let buffer = SpanBuffer::new(metrics.clone());
        for entry in db.scan_prefix([index::OPERATIONS]) {
            let (key, _) = entry?;
            if let Some((service, kind, operation)) = index::parse_operation_key(&key) {
                buffer.note_names(std::iter::once((
                    service.as_str(),
                    operation.as_str(),
                    kind,
                )));
            }
        }

        let store = TraceStore {
            merger: RunMerger::start(runs.clone(), db.clone())?,
            db,
            segments,
            runs,
            buffer,
            flush_state: Mutex::new(FlushState {
                next_block,
                dependencies: DependencyTracker::default(),
            }),
            metrics,
        };
        store.update_size_metric();
        Ok(store)
    }

    /// Settles the segment bytes the open set aside (see
    /// `blocks::Segments::open`), once the WAL is open. When the WAL still
    /// holds every record after this store's checkpoint (its oldest record,
    /// `wal_oldest_seq`, is at most one past it), they were a flush that
    /// crashed before its commit, which the replay redoes: deleted. When it
    /// does not, the index lost commits that covered them — it is damaged —
    /// and they stay in quarantine, reported.
    pub fn settle_set_aside(&self, wal_oldest_seq: Option<u64>) -> Result<()> {
        let checkpoint = self.durable_through()?;
        let replayable = wal_oldest_seq.is_some_and(|oldest| oldest <= checkpoint + 1);
        self.segments.settle_set_aside(replayable, checkpoint)
    }

    /// Records that every span of WAL records up to `seq` is in blocks —
    /// called after a flush that took every span applied through `seq`.
    /// The records after the last flushed span may hold only logs and
    /// samples; the WAL is trimmed past them once the other stores have
    /// them, and the checkpoint must say so, or a later start would see
    /// records missing after it and take set-aside span bytes for a lost
    /// commit.
    pub fn checkpoint_through(&self, seq: u64) -> Result<()> {
        let _flush = self.flush_state.lock().expect("not poisoned");
        if seq > self.durable_through()? {
            self.db.insert(index::META_CHECKPOINT, &seq.to_be_bytes())?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// The WAL sequence number up to which everything is in blocks.
    pub fn durable_through(&self) -> Result<u64> {
        match self.db.get(index::META_CHECKPOINT)? {
            Some(v) => index::decode_u64(&v),
            None => Ok(0),
        }
    }

    /// Adds durable spans to the head. Called in WAL sequence order.
    pub fn apply(&self, seq: u64, spans: Vec<Span>) {
        self.buffer.apply(seq, spans);
    }

    /// Spans held in memory (head and any flush in progress): what ingest
    /// checks to keep memory bounded.
    pub fn buffered_spans(&self) -> usize {
        self.buffer.buffered_spans()
    }

    /// Moves the head to span blocks and commits their index. Returns what
    /// the flush covered, or `None` when there was nothing to flush.
    pub fn flush(&self) -> Result<Option<Flushed>> {
        let mut state = self.flush_state.lock().expect("not poisoned");
        let started = Instant::now();
        let Some(snapshot) = self.buffer.begin_flush() else {
            state.dependencies.forget_if_quiet(started);
            return Ok(None);
        };
        let max_seq = snapshot.max_seq;
        // Marks the moment a crash test kills the daemon in (`STRAND_LOG=strand=debug`).
        tracing::debug!(traces = snapshot.traces.len(), "SpanFlushStarted");

        let result = self.write_snapshot(&mut state, &snapshot, max_seq);
        self.buffer.end_flush(snapshot, result.is_ok());
        match &result {
            Ok(_) => {
                self.metrics
                    .store_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.merger.wake();
                self.update_size_metric();
            }
            Err(error) => {
                self.metrics.store_flush_errors.inc();
                tracing::error!(%error, "SpanStoreFlushError");
            }
        }
        result.map(|edges| {
            Some(Flushed {
                through_seq: max_seq,
                edges,
            })
        })
    }

    /// Writes the snapshot and commits its index; returns the dependency
    /// edges it completed.
    fn write_snapshot(
        &self,
        state: &mut FlushState,
        snapshot: &buffer::Flushing,
        max_seq: u64,
    ) -> Result<Vec<Edge>> {
        let mut trace_ids: Vec<&TraceId> = snapshot.traces.keys().collect();
        trace_ids.sort();

        // Cut the sorted traces into blocks of about BLOCK_TARGET_BYTES.
        let mut encoded_blocks = Vec::new();
        let mut block_traces: Vec<Vec<&TraceId>> = Vec::new();
        let mut current: Vec<(&TraceId, &[Span])> = Vec::new();
        let mut current_bytes = 0;
        for trace_id in &trace_ids {
            let spans = snapshot.traces[*trace_id].as_slice();
            current_bytes += spans.iter().map(estimated_size).sum::<usize>();
            current.push((trace_id, spans));
            if current_bytes >= BLOCK_TARGET_BYTES {
                encoded_blocks.push(blocks::encode_block(&current)?);
                block_traces.push(current.drain(..).map(|(id, _)| id).collect());
                current_bytes = 0;
            }
        }
        if !current.is_empty() {
            encoded_blocks.push(blocks::encode_block(&current)?);
            block_traces.push(current.drain(..).map(|(id, _)| id).collect());
        }
        let tables = search::build_tables(
            trace_ids
                .iter()
                .map(|id| (*id, snapshot.traces[*id].as_slice())),
        )?;
        let block_count = encoded_blocks.len();
        encoded_blocks.extend(tables.iter().map(|t| t.bytes.clone()));
        let (refs, segment, segment_len) = self.segments.append(&encoded_blocks)?;

        let mut batch = sled::Batch::default();
        let mut entries = Vec::with_capacity(trace_ids.len());
        for (block_ref, ids) in refs.iter().zip(&block_traces) {
            let block = index::block_number(state.next_block)?;
            state.next_block += 1;
            entries.extend(ids.iter().map(|id| (RunKey::IdHash.of(id), block)));
            batch.insert(&index::block_ref_key(block), &block_ref.to_bytes());
        }
        entries.sort_unstable();
        let run = self.runs.write(0, RunKey::IdHash, entries)?;
        if let Some(run) = &run {
            let (key, value) = TraceRuns::commit_key(run);
            batch.insert(&key, &value);
        }

        for (table_ref, table) in refs[block_count..].iter().zip(tables) {
            let table_seq = state.next_block;
            state.next_block += 1;
            let value = search::TableRef {
                table: *table_ref,
                min_start_nanos: table.min_start_nanos,
                services: table.services,
            };
            batch.insert(
                &index::search_table_key(table.max_start_nanos, table_seq),
                value.encode(),
            );
        }

        let names: foldhash::HashSet<_> = snapshot
            .traces
            .values()
            .flatten()
            .map(|span| (span.service(), span.kind, span.name.as_str()))
            .collect();
        for (service, kind, operation) in names {
            batch.insert(index::operation_key(service, kind, operation), &[]);
        }

        let edges = state
            .dependencies
            .observe(snapshot.traces.values().flatten());
        let mut counts: foldhash::HashMap<Vec<u8>, (u64, u64)> = Default::default();
        for edge in &edges {
            let hour = edge.child_start_nanos - edge.child_start_nanos % index::HOUR_NANOS;
            let key = index::dependency_key(hour, &edge.parent, &edge.child);
            let count = counts.entry(key).or_default();
            count.0 += 1;
            count.1 += u64::from(edge.failed);
        }
        for (key, (calls, errors)) in counts {
            let (old_calls, old_errors) = self
                .db
                .get(&key)?
                .map_or((0, 0), |v| index::decode_counts(&v));
            batch.insert(
                key,
                &index::encode_counts(old_calls + calls, old_errors + errors),
            );
        }

        let newest_key = index::segment_newest_key(segment);
        let newest_span = snapshot
            .traces
            .values()
            .flatten()
            .map(|span| span.start_unix_nano.max(span.end_unix_nano))
            .max()
            .unwrap_or(0);
        let newest = match self.db.get(&newest_key)? {
            Some(v) => index::decode_u64(&v)?.max(newest_span),
            None => newest_span,
        };
        batch.insert(newest_key, &newest.to_be_bytes());
        batch.insert(index::META_CHECKPOINT, &max_seq.to_be_bytes());
        batch.insert(index::META_NEXT_BLOCK, &state.next_block.to_be_bytes());
        batch.insert(index::segment_key(segment), &segment_len.to_be_bytes());
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        if let Some(run) = run {
            self.runs.install(run);
        }
        Ok(edges)
    }

    /// Every span of a trace, from blocks and memory, in start order; empty when
    /// the trace is unknown. Spans in a damaged block are left out and the
    /// answer says so.
    pub fn trace(&self, trace_id: &TraceId) -> Result<TraceRead> {
        let mut spans = Vec::new();
        self.buffer.read_trace(trace_id, &mut spans);
        let (blocks, mut damaged) = self.runs.blocks_of(trace_id)?;
        for block in blocks {
            // Retention dropped the block's segment; a merge leaves the
            // entry out later.
            let Some(block_ref) = self.db.get(index::block_ref_key(block))? else {
                continue;
            };
            let block = BlockRef::from_bytes(&block_ref)?;
            match self
                .segments
                .read(block, |bytes| blocks::decode_trace(bytes, trace_id))?
            {
                BlockRead::Read(read) => spans.extend(read),
                BlockRead::Damaged => damaged = true,
                // Retention dropped the segment since.
                BlockRead::Gone => {}
            }
        }
        settle_trace(&mut spans);
        Ok(TraceRead { spans, damaged })
    }

    /// Ids of in-memory traces with a span that satisfies `matches`.
    pub fn buffered_traces_matching(&self, matches: &dyn Fn(&Span) -> bool) -> Vec<TraceId> {
        self.buffer.traces_matching(matches)
    }

    /// Search-index entries of `service` (of every service with `None`, so
    /// a search needs no service) whose spans start in `[start, end]`
    /// (nanoseconds), newest first. Covers flushed data only; see
    /// [`TraceStore::buffered_traces_matching`] for the rest.
    pub fn search_candidates(
        &self,
        service: Option<&str>,
        start_nanos: u64,
        end_nanos: u64,
    ) -> Candidates<'_> {
        Candidates::new(&self.db, &self.segments, service, start_nanos, end_nanos)
    }

    /// Services that sent spans, sorted.
    pub fn services(&self) -> Vec<String> {
        self.buffer.services()
    }

    /// Operations (span names) of a service with their span kinds, sorted.
    pub fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        self.buffer.operations(service)
    }

    /// Service-to-service calls whose child span started in
    /// `[start, end]` (hour granularity), flushed data only.
    pub fn dependencies(&self, start_nanos: u64, end_nanos: u64) -> Result<Vec<DependencyLink>> {
        let first_hour = start_nanos - start_nanos % index::HOUR_NANOS;
        let low = index::dependency_key(first_hour, "", "");
        let high = index::dependency_key(end_nanos.saturating_add(1), "", "");
        let mut links: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for entry in self.db.range(low..high) {
            let (key, value) = entry?;
            let Some((_, parent, child)) = index::parse_dependency_key(&key) else {
                continue;
            };
            let (calls, errors) = index::decode_counts(&value);
            let link = links.entry((parent, child)).or_default();
            link.0 += calls;
            link.1 += errors;
        }
        Ok(links
            .into_iter()
            .map(
                |((parent, child), (call_count, error_count))| DependencyLink {
                    parent,
                    child,
                    call_count,
                    error_count,
                },
            )
            .collect())
    }

    /// Deletes the segments past the retention limits, oldest first (see
    /// [`Retention`]; the size counts the sled index and the runs too), and
    /// the runs whose blocks all went. The segment being appended to, and
    /// the newest committed one, always stay. Returns how many segments
    /// went. Cheap when nothing goes (one scan of the per-segment keys), so
    /// it runs after every flush.
    ///
    /// One sled batch removes everything that refers to the dropped segments
    /// except run entries; only once it is durable are the files deleted. A
    /// crash in between leaves files the index does not know, which `open`
    /// deletes; run entries left behind read as nothing until merged away.
    pub fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize> {
        // Flushes read and rewrite dependency counts and segment keys.
        let _flush = self.flush_state.lock().expect("not poisoned");
        let cutoff = now_nanos
            .saturating_sub(u64::try_from(retention.max_age.as_nanos()).unwrap_or(u64::MAX));
        let mut committed = BTreeMap::new();
        for entry in self.db.scan_prefix(index::META_SEGMENT_PREFIX) {
            let (key, value) = entry?;
            committed.insert(segment_of_key(&key)?, index::decode_u64(&value)?);
        }
        // The newest committed segment stays too: segment ids are then never
        // reused, even if the current one is lost in a crash.
        let kept = [
            committed.keys().next_back().copied(),
            self.segments.current(),
        ];
        let mut total: u64 =
            committed.values().sum::<u64>() + self.db.size_on_disk()? + self.runs.disk_bytes();
        let mut doomed = Vec::new();
        let mut dropped = Vec::new();
        for (&segment, &len) in &committed {
            if kept.contains(&Some(segment)) {
                continue;
            }
            let newest = match self.db.get(index::segment_newest_key(segment))? {
                Some(v) => index::decode_u64(&v)?,
                None => self.segments.modified_nanos(segment).unwrap_or(0),
            };
            let reason = if newest < cutoff {
                DropReason::Age
            } else if retention.max_bytes > 0 && total > retention.max_bytes {
                DropReason::Size
            } else {
                continue;
            };
            doomed.push(segment);
            dropped.push((reason, len));
            total -= len;
        }
        if !doomed.is_empty() {
            self.drop_segments(&doomed, cutoff)?;
            for (reason, len) in dropped {
                self.metrics.retention_dropped("traces", reason, len);
            }
            self.merger.wake();
            self.update_size_metric();
        }
        Ok(doomed.len())
    }

    /// Removes the index entries of segments, then their files.
    fn drop_segments(&self, doomed: &[u32], cutoff_nanos: u64) -> Result<()> {
        let mut batch = sled::Batch::default();
        for &segment in doomed {
            batch.remove(index::segment_key(segment));
            batch.remove(index::segment_newest_key(segment));
        }
        for entry in self.db.scan_prefix([index::BLOCK_REFS]) {
            let (key, value) = entry?;
            if doomed.contains(&BlockRef::from_bytes(&value)?.segment) {
                batch.remove(key);
            }
        }
        for entry in self.db.scan_prefix([index::SEARCH_TABLES]) {
            let (key, value) = entry?;
            if doomed.contains(&search::TableRef::decode(&value)?.table.segment) {
                batch.remove(key);
            }
        }
        // Hours that end before the cutoff.
        let first_kept_hour = cutoff_nanos - cutoff_nanos % index::HOUR_NANOS;
        let low = vec![index::DEPENDENCIES];
        let high = index::dependency_key(first_kept_hour, "", "");
        for entry in self.db.range(low..high) {
            batch.remove(entry?.0);
        }
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        self.segments.remove(doomed)?;
        for segment in doomed {
            tracing::info!(segment, "SpanSegmentDropped");
        }
        Ok(())
    }

    /// Writes the store as a restart after its last commit would find it
    /// into `relative` under `backup`, while spans keep arriving: the head
    /// is left to the WAL the snapshot also holds. Flushes, checkpoints
    /// and retention wait meanwhile (the head keeps taking spans). The
    /// index is copied key by key into a new sled database — sled 0.34
    /// has no online backup, and its files change behind its own threads —,
    /// its runs are linked, and the segments the index maps are linked when
    /// sealed and copied up to their committed length otherwise.
    pub fn snapshot(&self, backup: &mut BackupDir, relative: &Path) -> Result<()> {
        let _flush = self.flush_state.lock().expect("not poisoned");
        let _merging = self.runs.hold_merges();
        let index_dir = backup.create_dir(&relative.join("index"))?;
        let copy = sled::Config::new()
            .path(index_dir)
            .cache_capacity(sled_cache_capacity(SNAPSHOT_INDEX_CACHE_BYTES))
            .flush_every_ms(None)
            .open()?;
        let mut committed = BTreeMap::new();
        for entry in self.db.iter() {
            let (key, value) = entry?;
            if key.starts_with(index::META_SEGMENT_PREFIX) {
                committed.insert(segment_of_key(&key)?, index::decode_u64(&value)?);
            }
            // One key at a time: sled holds a batch in memory.
            copy.insert(key, value)?;
        }
        copy.flush()?;
        drop(copy);
        backup.count_written(&relative.join("index"))?;
        self.runs.snapshot(backup, &relative.join("runs"))?;
        self.segments
            .snapshot(&committed, backup, &relative.join("blocks"))?;
        Ok(())
    }

    /// Bytes on disk: span blocks and index.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.disk_bytes() + self.db.size_on_disk().unwrap_or(0) + self.runs.disk_bytes()
    }

    fn update_size_metric(&self) {
        self.metrics
            .store_size_bytes
            .with_label_values(&["traces"])
            .set(self.disk_bytes() as i64);
    }
}

impl store::SpanStore for TraceStore {
    fn durable_through(&self) -> Result<u64> {
        TraceStore::durable_through(self)
    }

    fn settle_set_aside(&self, wal_oldest_seq: Option<u64>) -> Result<()> {
        TraceStore::settle_set_aside(self, wal_oldest_seq)
    }

    fn apply(&self, seq: u64, spans: Vec<Span>) {
        TraceStore::apply(self, seq, spans)
    }

    fn buffered_spans(&self) -> usize {
        TraceStore::buffered_spans(self)
    }

    fn head_spans(&self) -> usize {
        self.buffer.head_spans()
    }

    fn flush(&self) -> Result<Option<Flushed>> {
        TraceStore::flush(self)
    }

    fn checkpoint_through(&self, seq: u64) -> Result<()> {
        TraceStore::checkpoint_through(self, seq)
    }

    fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize> {
        TraceStore::enforce_retention(self, retention, now_nanos)
    }

    fn snapshot(&self, backup: &mut BackupDir, relative: &Path) -> Result<()> {
        TraceStore::snapshot(self, backup, relative)
    }

    fn trace(&self, trace_id: &TraceId) -> Result<TraceRead> {
        TraceStore::trace(self, trace_id)
    }

    fn buffered_traces_matching(&self, matches: &dyn Fn(&Span) -> bool) -> Vec<TraceId> {
        TraceStore::buffered_traces_matching(self, matches)
    }

    fn search_candidates<'a>(
        &'a self,
        filter: &store::SpanFilter<'_>,
    ) -> Box<dyn store::TraceCandidates + 'a> {
        Box::new(IndexedCandidates {
            candidates: TraceStore::search_candidates(
                self,
                filter.service,
                filter.start_nanos,
                filter.end_nanos,
            ),
            operation: filter.operation.map(str::to_string),
            min_duration_nanos: filter.min_duration_nanos,
            max_duration_nanos: filter.max_duration_nanos,
            error_tag: if filter.wants_error() {
                vec![("error".into(), "true".into())]
            } else {
                Vec::new()
            },
        })
    }

    fn services(&self) -> Vec<String> {
        TraceStore::services(self)
    }

    fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        TraceStore::operations(self, service)
    }

    fn dependencies(&self, start_nanos: u64, end_nanos: u64) -> Result<Vec<DependencyLink>> {
        TraceStore::dependencies(self, start_nanos, end_nanos)
    }
}

/// The search index's candidates (service and time range come from its
/// keys) narrowed by what each entry knows of operations, durations and
/// errors.
struct IndexedCandidates<'a> {
    candidates: Candidates<'a>,
    operation: Option<String>,
    min_duration_nanos: Option<u64>,
    max_duration_nanos: Option<u64>,
    /// `error=true` when the search wants failed spans, else nothing: the
    /// one tag an index entry can rule out.
    error_tag: Vec<(String, String)>,
}

impl Iterator for IndexedCandidates<'_> {
    type Item = Result<TraceId>;

    fn next(&mut self) -> Option<Result<TraceId>> {
        let filter = store::SpanFilter {
            operation: self.operation.as_deref(),
            min_duration_nanos: self.min_duration_nanos,
            max_duration_nanos: self.max_duration_nanos,
            tags: &self.error_tag,
            ..store::SpanFilter::default()
        };
        self.candidates.find_map(|candidate| match candidate {
            Ok(candidate) => candidate
                .entry
                .may_match(&filter)
                .then_some(Ok(candidate.trace_id)),
            Err(error) => Some(Err(error)),
        })
    }
}

impl store::TraceCandidates for IndexedCandidates<'_> {
    fn damaged(&self) -> bool {
        self.candidates.damaged()
    }
}

/// Deletes the version-3 trace keys of a flush that crashed before its
/// commit: they point at block bytes that were cut off, and their block
/// numbers are about to be used again. A full scan, but only after such a
/// crash. Those numbers' `R` keys go too: a commit writes them, but the
/// rewrite of a version-2 index gives every block it finds one.
fn drop_uncommitted_trace_keys(db: &sled::Db, committed_next_block: u64) -> Result<()> {
    let reserved = match db.get(index::META_RESERVED_BLOCKS)? {
        Some(v) => index::decode_u64(&v)?,
        None => return Ok(()),
    };
    if reserved <= committed_next_block {
        return Ok(());
    }
    let mut dropped = 0u64;
    for entry in db.scan_prefix([index::TRACE_BLOCKS]) {
        let (key, _) = entry?;
        let block = u64::from(index::trace_key_block(&key)?);
        if (committed_next_block..reserved).contains(&block) {
            db.remove(key)?;
            dropped += 1;
        }
    }
    for block in committed_next_block..reserved {
        db.remove(index::block_ref_key(index::block_number(block)?))?;
    }
    db.insert(
        index::META_RESERVED_BLOCKS,
        &committed_next_block.to_be_bytes(),
    )?;
    db.flush()?;
    tracing::warn!(dropped, "SpanIndexUncommittedKeysDropped");
    Ok(())
}

/// Rewrites a version-2 index's `T` keys in version 3's layout, with an
/// `R` key per block (see `index`), and marks the index as version 3.
/// Keys into segments no longer `committed` (dropped, not yet swept) go.
/// A crash midway leaves version 2 with some keys rewritten, and the next
/// open goes on from there.
fn upgrade_trace_keys(db: &sled::Db, committed: &HashMap<u32, u64>) -> Result<()> {
    let mut located = HashSet::new();
    let mut rewritten = 0u64;
    for entry in db.scan_prefix([index::TRACE_BLOCKS]) {
        let (key, block_ref) = entry?;
        let Some((trace_id, seq)) = index::parse_v2_trace_key(&key) else {
            continue;
        };
        if committed.contains_key(&BlockRef::from_bytes(&block_ref)?.segment) {
            let block = index::block_number(seq)?;
            if located.insert(block) {
                db.insert(index::block_ref_key(block), block_ref)?;
            }
            // Before the old key goes: sled recovers a prefix of its writes.
            db.insert(index::trace_block_key(&trace_id, block), &[])?;
            rewritten += 1;
        }
        db.remove(key)?;
    }
    db.insert(
        index::META_FORMAT,
        &index::TRACE_KEYS_FORMAT_VERSION.to_be_bytes(),
    )?;
    db.flush()?;
    tracing::info!(rewritten, blocks = located.len(), "SpanIndexUpgraded");
    Ok(())
}

/// Writes a version-3 index's `T` keys of blocks still there into one run
/// (they come in its order) and commits it with this version's mark; the
/// keys go after the commit ([`remove_trace_keys`]). A crash before the
/// commit leaves version 3 and an uncommitted run file, which the next
/// open deletes before it goes on from the start.
fn convert_trace_keys(db: &sled::Db, runs: &TraceRuns) -> Result<()> {
    let live = runs::live_blocks(db, 0..=u32::MAX)?;
    let mut error = None;
    let entries = db
        .scan_prefix([index::TRACE_BLOCKS])
        .map_while(|entry| {
            match entry
                .map_err(StoreError::from)
                .and_then(|(key, _)| index::parse_trace_key(&key))
            {
                Ok(entry) => Some(entry),
                Err(failed) => {
                    error = Some(failed);
                    None
                }
            }
        })
        .filter(|(_, block)| live.contains(block));
    let run = runs.write(runs::UNMERGED_LEVEL, RunKey::IdPrefix, entries)?;
    if let Some(error) = error {
        return Err(error);
    }
    let mut batch = sled::Batch::default();
    if let Some(run) = &run {
        let (key, value) = TraceRuns::commit_key(run);
        batch.insert(&key, &value);
    }
    batch.insert(index::META_FORMAT, &index::FORMAT_VERSION.to_be_bytes());
    batch.remove(index::META_RESERVED_BLOCKS);
    batch.remove(index::META_TRACE_SWEEP);
    db.apply_batch(batch)?;
    db.flush()?;
    if let Some(run) = run {
        runs.install(run);
    }
    remove_trace_keys(db)
}

/// Removes every `T` key: they are in a run.
fn remove_trace_keys(db: &sled::Db) -> Result<()> {
    let mut removed = 0u64;
    for entry in db.scan_prefix([index::TRACE_BLOCKS]) {
        db.remove(entry?.0)?;
        removed += 1;
    }
    if removed > 0 {
        db.flush()?;
        tracing::info!(removed, "SpanIndexTraceKeysConverted");
    }
    Ok(())
}

/// The segment id of an `Msegment/` key.
fn segment_of_key(key: &[u8]) -> Result<u32> {
    key.get(index::META_SEGMENT_PREFIX.len()..)
        .filter(|id| id.len() == 4)
        .and_then(|id| frame::read_u32_be(id, 0))
        .ok_or_else(|| StoreError::Corrupt("segment key".into()))
}

/// Rough uncompressed size of a span, to cut blocks; exactness does not matter.
fn estimated_size(span: &Span) -> usize {
    let attributes: usize = span.attributes.iter().map(|kv| kv.key.len() + 16).sum();
    96 + span.name.len() + attributes + span.events.len() * 64 + span.links.len() * 40
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;
    use std::sync::Arc;

    const TEST_CACHE_BYTES: u64 = 1 << 20;

    /// The index database in `dir`, opened as a test inspects it: waiting
    /// out the lock of a store or database the test just dropped.
    pub(super) fn open_index_db(dir: &Path) -> sled::Db {
        let config = sled::Config::new().path(dir.join("index"));
        open_sled_waiting(&config, Duration::from_secs(30)).unwrap()
    }

    /// A store in `dir` with a small index cache and full-size segments.
    fn open_store(dir: &Path) -> TraceStore {
        TraceStore::open(
            dir,
            TEST_CACHE_BYTES,
            Retention::MAX_FILE_BYTES,
            SelfMetrics::new(),
        )
        .unwrap()
    }

    fn span(trace: u8, id: u8, parent: Option<u8>, service: &str) -> Span {
        let mut span = sample_span(trace, id, service);
        span.parent_span_id = parent.map(|p| [p; 8]);
        span
    }

    #[test]
    fn spans_are_queryable_before_and_after_flush_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.apply(
            1,
            vec![span(1, 1, None, "gateway"), span(2, 1, None, "order")],
        );
        assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 1);

        assert_eq!(store.flush().unwrap().map(|f| f.through_seq), Some(1));
        assert!(store.flush().unwrap().is_none());
        // Later records held no spans: the checkpoint moves past them, never back.
        store.checkpoint_through(5).unwrap();
        store.checkpoint_through(3).unwrap();
        assert_eq!(store.durable_through().unwrap(), 5);
        // The rest of trace 1 arrives in a later batch.
        store.apply(2, vec![span(1, 2, Some(1), "order")]);
        let trace = store.trace(&[1; 16]).unwrap().spans;
        assert_eq!(trace.len(), 2);
        store.flush().unwrap();
        drop(store);

        let store = open_store(dir.path());
        assert_eq!(store.durable_through().unwrap(), 2);
        let trace = store.trace(&[1; 16]).unwrap().spans;
        assert_eq!(trace.len(), 2);
        assert_eq!(trace[1].parent_span_id, Some([1; 8]));
        assert!(store.trace(&[9; 16]).unwrap().spans.is_empty());
        assert_eq!(store.services(), vec!["gateway", "order"]);
        assert_eq!(store.operations("order").len(), 2);
    }

    #[test]
    fn a_trace_stays_whole_while_flushes_move_it_to_blocks() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open_store(dir.path()));
        let applied = Arc::new(AtomicUsize::new(0));
        let flusher = {
            let (store, applied) = (store.clone(), applied.clone());
            std::thread::spawn(move || {
                for id in 1..=250u8 {
                    store.apply(u64::from(id), vec![span(7, id, None, "gateway")]);
                    applied.store(usize::from(id), Ordering::Release);
                    store.flush().unwrap();
                }
            })
        };
        // Every span applied before a look must be found by it, in whichever
        // of head, flush or blocks it is at that moment.
        while !flusher.is_finished() {
            let before = applied.load(Ordering::Acquire);
            let found = store.trace(&[7; 16]).unwrap().spans.len();
            assert!(found >= before, "{found} spans found, {before} applied");
        }
        flusher.join().unwrap();
        assert_eq!(store.trace(&[7; 16]).unwrap().spans.len(), 250);
    }

    #[test]
    fn dependencies_are_counted_across_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.apply(1, vec![span(1, 1, None, "gateway")]);
        store.flush().unwrap();
        store.apply(
            2,
            vec![span(1, 2, Some(1), "order"), span(1, 3, Some(2), "payment")],
        );
        // The flush reports the calls it completed, for the service graph.
        let flushed = store.flush().unwrap().expect("spans to flush");
        assert_eq!(flushed.edges.len(), 2);
        let links = store.dependencies(0, u64::MAX).unwrap();
        let pairs: Vec<_> = links
            .iter()
            .map(|l| {
                (
                    l.parent.as_str(),
                    l.child.as_str(),
                    l.call_count,
                    l.error_count,
                )
            })
            .collect();
        // sample_span marks every span as an error.
        assert_eq!(
            pairs,
            vec![("gateway", "order", 1, 1), ("order", "payment", 1, 1)]
        );
    }

    #[test]
    fn search_candidates_come_newest_first_within_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut spans = Vec::new();
        for trace in 1..=5u8 {
            let mut s = span(trace, 1, None, "order");
            s.start_unix_nano = u64::from(trace) * 1000;
            s.end_unix_nano = s.start_unix_nano + 10;
            spans.push(s);
        }
        spans.push(span(6, 1, None, "orders"));
        store.apply(1, spans);
        store.flush().unwrap();
        let found: Vec<_> = store
            .search_candidates(Some("order"), 2000, 4000)
            .map(|c| c.unwrap().trace_id[0])
            .collect();
        assert_eq!(found, vec![4, 3, 2]);
    }

    #[test]
    fn search_candidates_merge_flushes_in_start_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let at = |trace: u8, start: u64| {
            let mut s = span(trace, 1, None, "order");
            s.start_unix_nano = start;
            s.end_unix_nano = start + 10;
            s
        };
        store.apply(1, vec![at(1, 1000), at(5, 5000)]);
        store.flush().unwrap();
        // A late batch: older than the newest trace already flushed.
        store.apply(2, vec![at(3, 3000), at(4, 4000)]);
        store.flush().unwrap();
        store.apply(3, vec![at(9, 9000)]);
        store.flush().unwrap();
        let found: Vec<_> = store
            .search_candidates(Some("order"), 0, 8000)
            .map(|c| c.unwrap().trace_id[0])
            .collect();
        assert_eq!(found, vec![5, 4, 3, 1]);
        assert!(
            store
                .search_candidates(Some("payment"), 0, 8000)
                .next()
                .is_none()
        );
    }

    #[test]
    fn the_run_of_an_uncommitted_flush_is_deleted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        store.apply(1, vec![span(1, 1, None, "order")]);
        store.flush().unwrap();
        let next_block =
            index::decode_u64(&store.db.get(index::META_NEXT_BLOCK).unwrap().unwrap()).unwrap();
        // What a flush that crashed after writing its run leaves.
        let key = RunKey::IdHash.of(&[2; 16]);
        let entries = [(key, next_block as u32)];
        drop(store.runs.write(0, RunKey::IdHash, entries).unwrap());
        drop(store);
        assert_eq!(
            std::fs::read_dir(dir.path().join("runs")).unwrap().count(),
            2
        );

        let store = open_store(dir.path());
        assert_eq!(
            std::fs::read_dir(dir.path().join("runs")).unwrap().count(),
            1
        );
        assert!(store.trace(&[2; 16]).unwrap().spans.is_empty());
        assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 1);
        // The next flush uses the block numbers again, and finds its own.
        store.apply(2, vec![span(2, 1, None, "order")]);
        store.flush().unwrap();
        assert_eq!(store.trace(&[2; 16]).unwrap().spans.len(), 1);
    }

    const HOUR: u64 = index::HOUR_NANOS;
    /// An hour boundary, like real span times.
    const BASE: u64 = 472_222 * HOUR;

    /// Two spans of a trace, `gateway` calling `order`, starting at `start`.
    fn call_at(trace: u8, start: u64) -> Vec<Span> {
        let mut spans = vec![
            span(trace, 1, None, "gateway"),
            span(trace, 2, Some(1), "order"),
        ];
        for s in &mut spans {
            s.start_unix_nano = start;
            s.end_unix_nano = start + 1_000;
        }
        spans
    }

    /// Flushes `spans` as one flush into a segment of their own.
    fn flush_segment(store: &TraceStore, seq: u64, spans: Vec<Span>) {
        store.segments.rotate();
        store.apply(seq, spans);
        store.flush().unwrap().expect("spans to flush");
    }

    #[test]
    fn an_index_another_store_holds_is_waited_for_then_refused_never_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let first = open_store(dir.path());
        flush_segment(&first, 1, call_at(1, BASE));
        let open_second = || {
            TraceStore::open(
                dir.path(),
                TEST_CACHE_BYTES,
                Retention::MAX_FILE_BYTES,
                SelfMetrics::new(),
            )
        };
        match open_second() {
            Err(error @ StoreError::InUse(_)) => {
                assert!(error.to_string().contains("another strand"), "{error}")
            }
            Err(error) => panic!("{error}"),
            Ok(_) => panic!("a second store opened the index of an open one"),
        }
        assert_eq!(first.trace(&[1; 16]).unwrap().spans.len(), 2);
        // A store closed while another opens (a reopen in one process) is
        // waited for.
        let closing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(first);
        });
        let second = open_second().unwrap();
        closing.join().unwrap();
        // Nothing was moved aside.
        assert_eq!(second.trace(&[1; 16]).unwrap().spans.len(), 2);
    }

    #[test]
    fn a_snapshot_holds_the_committed_flushes_and_links_the_sealed_segment() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(&dir.path().join("traces"));
        flush_segment(&store, 1, vec![span(1, 1, None, "sealed")]);
        flush_segment(&store, 2, vec![span(2, 1, None, "current")]);
        // Only in the head: the WAL copy brings it, not the store's.
        store.apply(3, vec![span(3, 1, None, "head")]);

        let snapshot = dir.path().join("snapshot");
        std::fs::create_dir(&snapshot).unwrap();
        let mut backup = BackupDir::new(snapshot.clone());
        store.snapshot(&mut backup, Path::new("traces")).unwrap();
        // The sealed segment and both runs linked; the current segment and
        // sled's files copied.
        assert_eq!(backup.linked_files, 3);
        assert!(backup.copied_files > 1);
        let inode = |root: &Path, id: u32| {
            let path = root.join(format!("traces/blocks/{id:08}.blocks"));
            std::fs::metadata(path).unwrap().ino()
        };
        assert_eq!(inode(&snapshot, 0), inode(dir.path(), 0));
        assert_ne!(inode(&snapshot, 1), inode(dir.path(), 1));
        // The copy stays as it was when the store moves on.
        store.flush().unwrap();

        let copy = open_store(&snapshot.join("traces"));
        assert_eq!(copy.durable_through().unwrap(), 2);
        assert_eq!(found(&copy, "sealed"), [1]);
        assert_eq!(found(&copy, "current"), [2]);
        assert!(found(&copy, "head").is_empty());
        assert_eq!(copy.trace(&[2; 16]).unwrap().spans.len(), 1);
    }

    fn retention(max_age_hours: u64, max_bytes: u64) -> Retention {
        Retention {
            max_age: std::time::Duration::from_secs(max_age_hours * 3600),
            max_bytes,
        }
    }

    fn segment_files(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<_> = std::fs::read_dir(dir.join("blocks"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                (name, e.metadata().unwrap().len())
            })
            .collect();
        files.sort();
        files
    }

    fn found(store: &TraceStore, service: &str) -> Vec<u8> {
        store
            .search_candidates(Some(service), 0, u64::MAX)
            .map(|c| c.unwrap().trace_id[0])
            .collect()
    }

    /// Entries of all runs, those of dropped blocks among them, once the
    /// merges and removals the store asked for are done.
    fn run_entries(store: &TraceStore) -> u64 {
        store.runs.merge(&store.db).unwrap();
        store.runs.levels().iter().map(|(_, entries)| entries).sum()
    }

    /// What an old hour's data looks like after it was dropped, and a new
    /// hour's before and after a reopen.
    fn assert_only_new_hour_left(store: &TraceStore) {
        assert!(store.trace(&[1; 16]).unwrap().spans.is_empty());
        assert_eq!(store.trace(&[2; 16]).unwrap().spans.len(), 2);
        assert_eq!(found(store, "order"), vec![2]);
        assert!(store.dependencies(0, BASE + HOUR - 1).unwrap().is_empty());
        let links = store.dependencies(0, u64::MAX).unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0].call_count, 1);
        assert_eq!(run_entries(store), 1, "the old trace's run went");
        assert_eq!(store.durable_through().unwrap(), 2);
    }

    #[test]
    fn retention_by_age_drops_the_old_hours_segment() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        flush_segment(&store, 1, call_at(1, BASE + 10));
        flush_segment(&store, 2, call_at(2, BASE + 3 * HOUR + 10));
        assert_eq!(found(&store, "order"), vec![2, 1]);
        assert_eq!(store.dependencies(0, BASE + HOUR - 1).unwrap().len(), 1);
        assert_eq!(segment_files(dir.path()).len(), 2);

        // Nothing is old enough yet.
        let now = BASE + 3 * HOUR + HOUR / 2;
        assert_eq!(store.enforce_retention(retention(4, 0), now).unwrap(), 0);
        assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 2);

        assert_eq!(store.enforce_retention(retention(2, 0), now).unwrap(), 1);
        assert_only_new_hour_left(&store);
        assert_eq!(segment_files(dir.path()).len(), 1);
        // The names stay.
        assert_eq!(store.services(), vec!["gateway", "order"]);

        // The store goes on: new flushes land in a segment of their own.
        flush_segment(&store, 3, call_at(3, BASE + 3 * HOUR + 20));
        assert_eq!(store.trace(&[3; 16]).unwrap().spans.len(), 2);
        drop(store);

        let store = open_store(dir.path());
        assert!(store.trace(&[1; 16]).unwrap().spans.is_empty());
        assert_eq!(store.trace(&[2; 16]).unwrap().spans.len(), 2);
        assert_eq!(store.trace(&[3; 16]).unwrap().spans.len(), 2);
        assert_eq!(found(&store, "order"), vec![3, 2]);
        assert_eq!(store.durable_through().unwrap(), 3);
    }

    #[test]
    fn retention_by_bytes_drops_the_oldest_first_never_the_current_segment() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        for trace in 1..=3u8 {
            flush_segment(
                &store,
                u64::from(trace),
                call_at(trace, BASE + u64::from(trace)),
            );
        }
        let files = segment_files(dir.path());
        assert_eq!(files.len(), 3);
        let now = BASE + HOUR;
        // Room for the two newer segments and the index.
        let index_bytes = store.db.size_on_disk().unwrap() + store.runs.disk_bytes();
        let cap = files[1].1 + files[2].1 + index_bytes;
        assert_eq!(store.enforce_retention(retention(24, cap), now).unwrap(), 1);
        assert!(store.trace(&[1; 16]).unwrap().spans.is_empty());
        assert_eq!(store.trace(&[2; 16]).unwrap().spans.len(), 2);
        assert_eq!(segment_files(dir.path()), files[1..]);

        // However small the cap or old the spans, the current segment stays.
        let later = BASE + 100 * HOUR;
        assert_eq!(store.enforce_retention(retention(24, 1), later).unwrap(), 1);
        assert_eq!(segment_files(dir.path()), files[2..]);
        assert_eq!(store.enforce_retention(retention(1, 1), later).unwrap(), 0);
        assert!(store.trace(&[2; 16]).unwrap().spans.is_empty());
        assert_eq!(store.trace(&[3; 16]).unwrap().spans.len(), 2);
        assert_eq!(found(&store, "order"), vec![3]);
        assert_eq!(run_entries(&store), 1);

        // After a reopen nothing is being appended to: the newest committed
        // segment stays all the same.
        drop(store);
        let store = open_store(dir.path());
        assert_eq!(store.enforce_retention(retention(1, 1), later).unwrap(), 0);
        assert_eq!(store.trace(&[3; 16]).unwrap().spans.len(), 2);
    }

    #[test]
    fn reopen_is_consistent_after_a_crash_between_the_drop_and_the_file_removal() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        flush_segment(&store, 1, call_at(1, BASE + 10));
        flush_segment(&store, 2, call_at(2, BASE + 3 * HOUR + 10));
        let old = segment_files(dir.path())[0].0.clone();
        let old_path = dir.path().join("blocks").join(&old);
        let saved = std::fs::read(&old_path).unwrap();
        let old_run = std::fs::read_dir(dir.path().join("runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .min()
            .unwrap();
        let saved_run = std::fs::read(&old_run).unwrap();

        let now = BASE + 3 * HOUR + HOUR / 2;
        assert_eq!(store.enforce_retention(retention(2, 0), now).unwrap(), 1);
        assert_eq!(run_entries(&store), 1);
        assert!(!old_run.exists());
        drop(store);
        // The index batches were durable, the file removals were not.
        std::fs::write(&old_path, &saved).unwrap();
        std::fs::write(&old_run, &saved_run).unwrap();

        let store = open_store(dir.path());
        assert!(
            !old_path.exists() && !old_run.exists(),
            "open deletes what the index does not know"
        );
        assert!(store.trace(&[1; 16]).unwrap().spans.is_empty());
        assert_eq!(store.enforce_retention(retention(2, 0), now).unwrap(), 0);
        assert_only_new_hour_left(&store);
        // A new segment never reuses a dropped one's id.
        flush_segment(&store, 3, call_at(3, BASE + 3 * HOUR + 20));
        assert!(store.trace(&[1; 16]).unwrap().spans.is_empty());
        assert_eq!(store.trace(&[3; 16]).unwrap().spans.len(), 2);
    }

    /// Replaces the runs of a store's index by trace keys of `version`
    /// (2 or 3), as that version wrote them, and marks it as that version.
    /// Its trace ids are their first byte repeated.
    fn as_trace_keys(dir: &Path, traces: &[u8], version: u32) -> sled::Db {
        let store = open_store(dir);
        let located: Vec<(u8, u32)> = traces
            .iter()
            .flat_map(|&t| {
                let (blocks, _) = store.runs.blocks_of(&[t; 16]).unwrap();
                blocks.into_iter().map(move |b| (t, b))
            })
            .collect();
        drop(store);
        let db = open_index_db(dir);
        for entry in db.scan_prefix([index::TRACE_RUNS]) {
            db.remove(entry.unwrap().0).unwrap();
        }
        for (trace, block) in located {
            if version == 2 {
                // The whole id, the block number as u64 and the block's
                // location, and no `R` key.
                let key = index::v2_trace_key(&[trace; 16], u64::from(block));
                let location = db.remove(index::block_ref_key(block)).unwrap().unwrap();
                db.insert(key, location).unwrap();
            } else {
                db.insert(index::trace_block_key(&[trace; 16], block), &[])
                    .unwrap();
            }
        }
        db.insert(index::META_FORMAT, &version.to_be_bytes())
            .unwrap();
        db
    }

    /// Opens an index `as_trace_keys` made, and checks that it became
    /// one run of its live entries, and that retention drops that run.
    fn assert_converted(dir: &Path) {
        let store = open_store(dir);
        assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 2);
        assert_eq!(store.trace(&[2; 16]).unwrap().spans.len(), 2);
        assert!(store.trace(&[9; 16]).unwrap().spans.is_empty());
        assert_eq!(
            store.db.get(index::META_FORMAT).unwrap().unwrap().as_ref(),
            index::FORMAT_VERSION.to_be_bytes()
        );
        assert_eq!(store.db.scan_prefix([index::TRACE_BLOCKS]).count(), 0);
        assert!(store.db.get(index::META_RESERVED_BLOCKS).unwrap().is_none());
        assert_eq!(store.runs.levels(), [(runs::UNMERGED_LEVEL, 2)]);
        assert_eq!(store.db.scan_prefix([index::BLOCK_REFS]).count(), 2);
        // Retention finds the converted blocks' locations, and drops the
        // run with them.
        let now = BASE + 3 * HOUR;
        flush_segment(&store, 3, call_at(3, now));
        assert_eq!(store.enforce_retention(retention(1, 0), now).unwrap(), 2);
        assert!(store.trace(&[1; 16]).unwrap().spans.is_empty());
        assert_eq!(run_entries(&store), 1);
        assert_eq!(store.runs.levels(), [(0, 1)]);
        assert_eq!(store.trace(&[3; 16]).unwrap().spans.len(), 2);
    }

    #[test]
    fn a_version_2_index_is_rewritten_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        flush_segment(&store, 1, call_at(1, BASE + 10));
        flush_segment(&store, 2, call_at(2, BASE + 20));
        drop(store);
        let db = as_trace_keys(dir.path(), &[1, 2], 2);
        // And a key into a segment retention dropped, not swept yet.
        let stale = index::v2_trace_key(&[9; 16], 50);
        let dropped = BlockRef {
            segment: 99,
            offset: 0,
            len: 8,
        };
        db.insert(stale, &dropped.to_bytes()).unwrap();
        db.flush().unwrap();
        drop(db);
        assert_converted(dir.path());
    }

    #[test]
    fn a_version_3_index_becomes_one_run_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        flush_segment(&store, 1, call_at(1, BASE + 10));
        flush_segment(&store, 2, call_at(2, BASE + 20));
        let next_block =
            index::decode_u64(&store.db.get(index::META_NEXT_BLOCK).unwrap().unwrap()).unwrap();
        drop(store);
        let db = as_trace_keys(dir.path(), &[1, 2], 3);
        // A key into a segment retention dropped, not swept yet ...
        db.insert(index::trace_block_key(&[9; 16], 50), &[])
            .unwrap();
        // ... and one of a flush that crashed before its commit, with the
        // `R` key a version-2 rewrite gave its block.
        db.insert(index::META_RESERVED_BLOCKS, &(next_block + 1).to_be_bytes())
            .unwrap();
        let uncommitted = u32::try_from(next_block).unwrap();
        db.insert(index::trace_block_key(&[9; 16], uncommitted), &[])
            .unwrap();
        db.insert(index::block_ref_key(uncommitted), &[0u8; 16])
            .unwrap();
        db.flush().unwrap();
        drop(db);
        assert_converted(dir.path());
    }

    #[test]
    fn a_conversion_that_crashed_after_its_commit_is_finished_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        flush_segment(&store, 1, call_at(1, BASE + 10));
        drop(store);
        // The run is committed and this version marked; keys are left.
        let db = open_index_db(dir.path());
        db.insert(index::trace_block_key(&[1; 16], 0), &[]).unwrap();
        db.flush().unwrap();
        drop(db);
        let store = open_store(dir.path());
        assert_eq!(store.db.scan_prefix([index::TRACE_BLOCKS]).count(), 0);
        assert_eq!(store.trace(&[1; 16]).unwrap().spans.len(), 2);
    }

    #[test]
    fn segments_without_a_newest_span_age_by_their_file_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        flush_segment(&store, 1, call_at(1, BASE + 10));
        flush_segment(&store, 2, call_at(2, BASE + 3 * HOUR + 10));
        // As written before segments recorded their newest span.
        store.db.remove(index::segment_newest_key(0)).unwrap();
        let old = dir
            .path()
            .join("blocks")
            .join(&segment_files(dir.path())[0].0);
        let written = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(BASE);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(written)
            .unwrap();
        let now = BASE + 3 * HOUR + HOUR / 2;
        assert_eq!(store.enforce_retention(retention(4, 0), now).unwrap(), 0);
        assert_eq!(store.enforce_retention(retention(2, 0), now).unwrap(), 1);
        assert!(!old.exists());
        assert_only_new_hour_left(&store);
    }

    #[test]
    fn many_traces_span_several_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut spans = Vec::new();
        for trace in 0..=255u8 {
            for id in 1..=40u8 {
                let mut s = span(trace, id, None, "svc");
                s.span_id = [trace, id, 1, 1, 1, 1, 1, 1];
                spans.push(s);
            }
        }
        store.apply(1, spans);
        store.flush().unwrap();
        assert_eq!(store.runs.levels(), [(0, 256)], "one run, an entry a trace");
        let mut distinct = HashSet::new();
        for trace in 0..=255u8 {
            let (blocks, _) = store.runs.blocks_of(&[trace; 16]).unwrap();
            assert_eq!(blocks.len(), 1, "each trace is in exactly one block");
            distinct.insert(blocks[0]);
        }
        assert!(distinct.len() > 1, "traces were cut into several blocks");
        for trace in [0u8, 77, 255] {
            assert_eq!(store.trace(&[trace; 16]).unwrap().spans.len(), 40);
        }
    }
}
