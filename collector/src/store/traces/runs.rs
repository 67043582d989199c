//! The trace-id index: which blocks hold a trace.
//!
//! Each flush writes one sorted run of (trace key, block number) entries,
//! the key 8 bytes mixed from the trace id ([`RunKey`]), to a file of its
//! own in `runs/`, and commits it with an `I` key
//! (see `index`) in the flush's sled batch. Runs of a level merge into one
//! run of the next level once [`FANOUT`] of them are there, so a lookup
//! reads a page of a few dozen runs at most, and each entry is rewritten
//! once per level. Merges run on a thread of their own ([`RunMerger`]):
//! the largest take a second, which a flush must not wait for. A merge
//! leaves out entries of blocks retention dropped; a run whose blocks are
//! all older than the oldest block left is deleted whole.
//!
//! Before runs, each entry was a sled key: sled wrote it several times
//! over in its log and held the tree nodes it touched in memory, 15.6 bytes
//! per span at 10M spans of `strand-bench traces`. A run holds 12 bytes per
//! trace (about 1.2 per span at ten spans a trace) and needs no memory
//! beyond a fence (first key and place) per page of [`PAGE_ENTRIES`].
//!
//! A run file is its pages, each a checksummed frame of entries
//! (key u64 BE, block u32 BE) sorted and unique, then a frame of
//! fences (first key u64 BE, offset u64 BE, length u32 BE per page).
//! Its `I` value says where the fences are. Files are written once and
//! fsynced before their key is committed; a file without a key (a flush or
//! merge that crashed before its commit, or a merge's inputs it committed
//! but did not delete yet) is deleted on open. Open reads every page: a
//! damaged run goes to quarantine and is rebuilt from the directories of
//! the blocks in its range, so damage to the index loses nothing the
//! blocks still hold.

use std::collections::{BinaryHeap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use crate::frame;
use crate::model::TraceId;
use crate::store::{self, Result, StoreError};
use crate::telemetry::SelfMetrics;

use super::index;

/// Runs of one level that merge into one of the next.
const FANOUT: usize = 8;
/// Entries per page: 6 KiB, a few 4 KiB pages of the page cache to read
/// and checksum per run and lookup.
const PAGE_ENTRIES: usize = 512;
const ENTRY_LEN: usize = 12;
const FENCE_LEN: usize = 20;
/// The level of a run that never merges: the one an upgrade writes from an
/// older index, as large as everything before it. It goes once retention
/// dropped all of its blocks.
pub const UNMERGED_LEVEL: u8 = u8::MAX;

/// What a run's entries hold of a trace id. Eight bytes tell traces apart
/// in practice, and a block read matches the whole id, so two traces that
/// share them only cost a wasted read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKey {
    /// The id's first 8 bytes: all a version-3 index kept, so the run
    /// converted from one has these. Ids of 64 bits (Jaeger's and Zipkin's
    /// older clients) have 8 zero bytes there, and share one key.
    IdPrefix,
    /// A mix of all 16 bytes: what flushes write.
    IdHash,
}

impl RunKey {
    /// The key of `trace_id` in a run of this kind.
    pub fn of(self, trace_id: &TraceId) -> u64 {
        let high = u64::from_be_bytes(trace_id[..8].try_into().expect("16-byte id"));
        match self {
            RunKey::IdPrefix => high,
            RunKey::IdHash => {
                let low = u64::from_be_bytes(trace_id[8..].try_into().expect("16-byte id"));
                mix(high ^ mix(low))
            }
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            RunKey::IdPrefix => 0,
            RunKey::IdHash => 1,
        }
    }

    fn from_byte(byte: u8) -> Option<RunKey> {
        match byte {
            0 => Some(RunKey::IdPrefix),
            1 => Some(RunKey::IdHash),
            _ => None,
        }
    }
}

/// splitmix64's finalizer: a bijection on u64 whose every output bit
/// depends on every input bit. Part of the format: never change it.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What an `I` key records of its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RunMeta {
    level: u8,
    key: RunKey,
    entries: u64,
    fences_offset: u64,
    fences_len: u32,
    min_block: u32,
    max_block: u32,
}

const META_LEN: usize = 1 + 1 + 8 + 8 + 4 + 4 + 4;

impl RunMeta {
    fn encode(&self) -> [u8; META_LEN] {
        let mut out = [0u8; META_LEN];
        out[0] = self.level;
        out[1] = self.key.to_byte();
        out[2..10].copy_from_slice(&self.entries.to_be_bytes());
        out[10..18].copy_from_slice(&self.fences_offset.to_be_bytes());
        out[18..22].copy_from_slice(&self.fences_len.to_be_bytes());
        out[22..26].copy_from_slice(&self.min_block.to_be_bytes());
        out[26..30].copy_from_slice(&self.max_block.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<RunMeta> {
        let parse = || {
            Some(RunMeta {
                level: *bytes.first()?,
                key: RunKey::from_byte(*bytes.get(1)?)?,
                entries: frame::read_u64_be(bytes, 2)?,
                fences_offset: frame::read_u64_be(bytes, 10)?,
                fences_len: frame::read_u32_be(bytes, 18)?,
                min_block: frame::read_u32_be(bytes, 22)?,
                max_block: frame::read_u32_be(bytes, 26)?,
            })
        };
        parse()
            .filter(|_| bytes.len() == META_LEN)
            .ok_or_else(|| StoreError::Corrupt("trace run key value".into()))
    }
}

/// Where a page is, and the first key in it.
#[derive(Clone, Copy, Debug)]
struct Fence {
    first: u64,
    offset: u64,
    len: u32,
}

/// A committed run, open for reading.
struct Run {
    id: u64,
    meta: RunMeta,
    file: File,
    fences: Vec<Fence>,
    /// A page was found damaged since open: the run is left out of merges,
    /// which would lose the page's entries for good, and the next open
    /// rebuilds it.
    damaged: AtomicBool,
}

/// A committed run that could not be opened whole.
pub struct DamagedRun {
    id: u64,
    meta: RunMeta,
}

/// A run written and fsynced, not yet committed: [`TraceRuns::commit_key`]
/// goes into the batch that commits it, [`TraceRuns::install`] after it.
pub struct NewRun(Run);

/// See the module docs.
pub struct TraceRuns {
    dir: PathBuf,
    data_dir: PathBuf,
    /// The committed runs, oldest first.
    runs: RwLock<Vec<Arc<Run>>>,
    /// Held by a merge from start to commit, and by a snapshot while it
    /// copies the `I` keys and links their files.
    merging: Mutex<()>,
    next_id: AtomicU64,
    metrics: SelfMetrics,
}

impl TraceRuns {
    /// Opens the runs the index commits, checking every page, and deletes
    /// the files it does not commit. A committed run that cannot be read
    /// whole (its file gone, or a page or its fences damaged) is reported,
    /// moved to quarantine if there, and returned, to be rebuilt from its
    /// blocks ([`TraceRuns::rebuild`]); its key stays until then.
    pub fn open(
        dir: &Path,
        data_dir: &Path,
        db: &sled::Db,
        metrics: SelfMetrics,
    ) -> Result<(TraceRuns, Vec<DamagedRun>)> {
        fs::create_dir_all(dir)?;
        let mut committed = Vec::new();
        for entry in db.scan_prefix([index::TRACE_RUNS]) {
            let (key, value) = entry?;
            committed.push((index::run_of_key(&key)?, RunMeta::decode(&value)?));
        }
        let known: HashSet<u64> = committed.iter().map(|(id, _)| *id).collect();
        let mut next_id = committed.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(id) = run_of_path(&path) else {
                continue;
            };
            next_id = next_id.max(id + 1);
            if !known.contains(&id) {
                fs::remove_file(&path)?;
                tracing::debug!(run = id, "SpanIndexUncommittedRunRemoved");
            }
        }
        let runs = TraceRuns {
            dir: dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            runs: RwLock::new(Vec::new()),
            merging: Mutex::new(()),
            next_id: AtomicU64::new(next_id),
            metrics,
        };
        let mut opened = Vec::with_capacity(committed.len());
        let mut damaged = Vec::new();
        for (id, meta) in committed {
            match runs.open_run(id, meta) {
                Ok(run) => opened.push(Arc::new(run)),
                Err(damage) => {
                    let path = runs.path(id);
                    let action = if path.exists() {
                        let moved = store::quarantine(data_dir, &path)?;
                        format!("moved to {}; rebuilt from its blocks", moved.display())
                    } else {
                        "rebuilt from its blocks".to_string()
                    };
                    runs.metrics.corrupt_data(
                        "traces",
                        data_dir,
                        &path,
                        0,
                        &damage.to_string(),
                        &action,
                    );
                    damaged.push(DamagedRun { id, meta });
                }
            }
        }
        *runs.runs.write().expect("not poisoned") = opened;
        Ok((runs, damaged))
    }

    /// Opens a run and reads every page once, so that damage is found (and
    /// the run rebuilt) at open rather than by lookups.
    fn open_run(&self, id: u64, meta: RunMeta) -> Result<Run> {
        let file = File::open(self.path(id))?;
        let mut bytes = vec![0u8; meta.fences_len as usize];
        file.read_exact_at(&mut bytes, meta.fences_offset)?;
        let fences = decode_fences(&bytes)?;
        let mut entries = 0;
        for fence in &fences {
            bytes.resize(fence.len as usize, 0);
            file.read_exact_at(&mut bytes, fence.offset)?;
            entries += decode_frame(&bytes, "page", ENTRY_LEN)?.len() / ENTRY_LEN;
        }
        if entries as u64 != meta.entries {
            return Err(StoreError::Corrupt(format!(
                "trace run: {entries} entries, {} committed",
                meta.entries
            )));
        }
        Ok(Run {
            id,
            meta,
            file,
            fences,
            damaged: AtomicBool::new(false),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}.run"))
    }

    /// Writes a run of `level` from `entries` (trace key of kind `key`,
    /// block), which come sorted by key and then block (repeats are left
    /// out), and fsyncs it. `None` when there are no entries.
    pub fn write(
        &self,
        level: u8,
        key: RunKey,
        entries: impl IntoIterator<Item = (u64, u32)>,
    ) -> Result<Option<NewRun>> {
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            return Ok(None);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let path = self.path(id);
        let mut out = BufWriter::new(File::create_new(&path)?);
        let mut meta = RunMeta {
            level,
            key,
            entries: 0,
            fences_offset: 0,
            fences_len: 0,
            min_block: u32::MAX,
            max_block: 0,
        };
        let mut fences = Vec::new();
        let mut page = Vec::with_capacity(PAGE_ENTRIES * ENTRY_LEN);
        let mut framed = Vec::with_capacity(frame::HEADER_LEN + PAGE_ENTRIES * ENTRY_LEN);
        let mut first = 0;
        let mut last = None;
        for (key, block) in entries {
            if last.is_some_and(|last| last >= (key, block)) {
                if last == Some((key, block)) {
                    continue;
                }
                return Err(StoreError::Corrupt("trace run entries out of order".into()));
            }
            last = Some((key, block));
            if page.is_empty() {
                first = key;
            }
            page.extend_from_slice(&key.to_be_bytes());
            page.extend_from_slice(&block.to_be_bytes());
            meta.entries += 1;
            meta.min_block = meta.min_block.min(block);
            meta.max_block = meta.max_block.max(block);
            if page.len() == PAGE_ENTRIES * ENTRY_LEN {
                fences.push(write_page(&mut out, &mut meta, first, &page, &mut framed)?);
                page.clear();
            }
        }
        if !page.is_empty() {
            fences.push(write_page(&mut out, &mut meta, first, &page, &mut framed)?);
        }
        let mut raw = Vec::with_capacity(fences.len() * FENCE_LEN);
        for fence in &fences {
            raw.extend_from_slice(&fence.first.to_be_bytes());
            raw.extend_from_slice(&fence.offset.to_be_bytes());
            raw.extend_from_slice(&fence.len.to_be_bytes());
        }
        framed.clear();
        frame::append(&mut framed, &raw)?;
        out.write_all(&framed)?;
        meta.fences_len = u32::try_from(framed.len())
            .map_err(|_| StoreError::Corrupt("trace run too large".into()))?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(Some(NewRun(Run {
            id,
            meta,
            file,
            fences,
            damaged: AtomicBool::new(false),
        })))
    }

    /// Writes the run of the traces in `damaged`'s blocks that are still
    /// there, which `trace_ids` reads, in its place, and commits it.
    pub fn rebuild(
        &self,
        db: &sled::Db,
        damaged: DamagedRun,
        mut trace_ids: impl FnMut(u32) -> Result<Vec<TraceId>>,
    ) -> Result<()> {
        let blocks = live_blocks(db, damaged.meta.min_block..=damaged.meta.max_block)?;
        let mut entries = Vec::new();
        for &block in &blocks {
            entries.extend(
                trace_ids(block)?
                    .iter()
                    .map(|id| (RunKey::IdHash.of(id), block)),
            );
        }
        entries.sort_unstable();
        let count = entries.len();
        let run = self.write(damaged.meta.level, RunKey::IdHash, entries)?;
        commit_in_place_of(db, [damaged.id], run.as_ref())?;
        if let Some(run) = run {
            self.install(run);
        }
        tracing::info!(
            run = damaged.id,
            blocks = blocks.len(),
            entries = count,
            "SpanIndexRunRebuilt"
        );
        Ok(())
    }

    /// The `I` key and value that commit `run`.
    pub fn commit_key(run: &NewRun) -> ([u8; 9], [u8; META_LEN]) {
        (index::run_key(run.0.id), run.0.meta.encode())
    }

    /// Makes a committed run visible to lookups.
    pub fn install(&self, run: NewRun) {
        self.runs
            .write()
            .expect("not poisoned")
            .push(Arc::new(run.0));
    }

    /// The blocks that may hold spans of `trace_id`, and whether a damaged
    /// page of a run kept some from being found.
    pub fn blocks_of(&self, trace_id: &TraceId) -> Result<(Vec<u32>, bool)> {
        let runs = self.runs.read().expect("not poisoned").clone();
        let mut blocks = Vec::new();
        let mut damaged = false;
        for run in runs {
            let key = run.meta.key.of(trace_id);
            // Pages before the first whose first key is at least this
            // one's may end with it; later ones may start with it.
            let after = run.fences.partition_point(|f| f.first < key);
            let pages = after.saturating_sub(1)..run.fences.len();
            for fence in &run.fences[pages] {
                if fence.first > key {
                    break;
                }
                match self.read_page(&run, fence) {
                    Ok(entries) => blocks.extend(
                        entries
                            .iter()
                            .filter(|(k, _)| *k == key)
                            .map(|(_, block)| *block),
                    ),
                    Err(StoreError::Corrupt(_)) => damaged = true,
                    Err(error) => return Err(error),
                }
            }
        }
        // Runs rebuilt from blocks may cover blocks another run has too.
        blocks.sort_unstable();
        blocks.dedup();
        Ok((blocks, damaged))
    }

    /// Reads a page's entries; damage is reported and returned as
    /// `Corrupt`.
    fn read_page(&self, run: &Run, fence: &Fence) -> Result<Vec<(u64, u32)>> {
        let mut bytes = vec![0u8; fence.len as usize];
        let decoded = match run.file.read_exact_at(&mut bytes, fence.offset) {
            Ok(()) => decode_page(&bytes),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(StoreError::Corrupt("cut short".into()))
            }
            Err(error) => return Err(error.into()),
        };
        if let Err(damage) = &decoded {
            run.damaged.store(true, Ordering::Relaxed);
            self.metrics.corrupt_data(
                "traces",
                &self.data_dir,
                &self.path(run.id),
                fence.offset,
                &damage.to_string(),
                "skipped the page: its traces are not found by id until a restart rebuilds the run",
            );
        }
        decoded
    }

    /// Merges the runs of the lowest level that holds [`FANOUT`] of them
    /// into one of the next level, leaving out entries of blocks without an
    /// `R` key, until no level holds that many; then deletes the runs whose
    /// blocks are all older than the oldest `R` key. Each merge commits in
    /// one sled batch before the files it replaced go.
    pub fn merge(&self, db: &sled::Db) -> Result<()> {
        let _merging = self.hold_merges();
        while let Some(inputs) = self.due_merge() {
            // Read after the inputs were chosen: a run is installed only
            // once its blocks' `R` keys are committed.
            let first = inputs.iter().map(|run| run.meta.min_block).min();
            let last = inputs.iter().map(|run| run.meta.max_block).max();
            let live = live_blocks(db, first.unwrap_or(0)..=last.unwrap_or(0))?;
            let (level, key) = (inputs[0].meta.level + 1, inputs[0].meta.key);
            let mut merged = MergedEntries::new(self, &inputs)?;
            let live_entries = merged.by_ref().filter(|(_, b)| live.contains(b));
            let output = self.write(level, key, live_entries)?;
            if let Some(error) = merged.error.take() {
                // Its entries would be a subset of the inputs': it stays uncommitted.
                if let Some(output) = output {
                    fs::remove_file(self.path(output.0.id))?;
                }
                return Err(error);
            }
            let entries = output.as_ref().map_or(0, |run| run.0.meta.entries);
            self.replace(db, &inputs, output)?;
            tracing::debug!(level, inputs = inputs.len(), entries, "SpanIndexRunsMerged");
        }
        // The runs first, the oldest `R` key after, for the same reason.
        let runs = self.runs.read().expect("not poisoned").clone();
        let oldest_live = match db.scan_prefix([index::BLOCK_REFS]).next() {
            Some(entry) => index::block_of_ref_key(&entry?.0)?,
            None => u32::MAX,
        };
        let dead: Vec<Arc<Run>> = runs
            .into_iter()
            .filter(|run| run.meta.max_block < oldest_live)
            .collect();
        if !dead.is_empty() {
            self.replace(db, &dead, None)?;
            tracing::debug!(runs = dead.len(), "SpanIndexDeadRunsRemoved");
        }
        Ok(())
    }

    /// The oldest [`FANOUT`] runs of the lowest level that has as many
    /// with keys of one kind.
    fn due_merge(&self) -> Option<Vec<Arc<Run>>> {
        let runs = self.runs.read().expect("not poisoned");
        let mut levels: Vec<(u8, u8)> = runs
            .iter()
            .map(|run| (run.meta.level, run.meta.key.to_byte()))
            .collect();
        levels.sort_unstable();
        levels.dedup();
        levels
            .into_iter()
            .filter(|&(level, _)| level != UNMERGED_LEVEL)
            .find_map(|(level, key)| {
                let of_level: Vec<_> = runs
                    .iter()
                    .filter(|run| run.meta.level == level && run.meta.key.to_byte() == key)
                    .filter(|run| !run.damaged.load(Ordering::Relaxed))
                    .take(FANOUT)
                    .cloned()
                    .collect();
                (of_level.len() == FANOUT).then_some(of_level)
            })
    }

    /// Commits `output` in place of `inputs`, then deletes their files.
    fn replace(&self, db: &sled::Db, inputs: &[Arc<Run>], output: Option<NewRun>) -> Result<()> {
        commit_in_place_of(db, inputs.iter().map(|run| run.id), output.as_ref())?;
        {
            let mut runs = self.runs.write().expect("not poisoned");
            runs.retain(|run| !inputs.iter().any(|input| input.id == run.id));
            if let Some(output) = output {
                // Runs stay in age order: the output replaces its oldest input.
                let at = runs
                    .iter()
                    .position(|run| run.id > inputs[0].id)
                    .unwrap_or(runs.len());
                runs.insert(at, Arc::new(output.0));
            }
        }
        for run in inputs {
            match fs::remove_file(self.path(run.id)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(error.into());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Keeps merges from starting or committing while the guard lives.
    pub fn hold_merges(&self) -> MutexGuard<'_, ()> {
        self.merging.lock().expect("not poisoned")
    }

    /// Links the committed runs' files into `relative` under `backup`. The
    /// caller holds off flushes and retention, and merges since before it
    /// copied the `I` keys ([`TraceRuns::hold_merges`]).
    pub fn snapshot(&self, backup: &mut crate::backup::BackupDir, relative: &Path) -> Result<()> {
        backup.create_dir(relative)?;
        for run in self.runs.read().expect("not poisoned").iter() {
            let path = self.path(run.id);
            let name = relative.join(path.file_name().unwrap_or(path.as_os_str()));
            backup.link(&path, &name)?;
        }
        Ok(())
    }

    /// Bytes of all run files.
    pub fn disk_bytes(&self) -> u64 {
        self.runs
            .read()
            .expect("not poisoned")
            .iter()
            .map(|run| run.meta.fences_offset + u64::from(run.meta.fences_len))
            .sum()
    }

    /// Committed runs and their entries, oldest first, for tests.
    #[cfg(test)]
    pub fn levels(&self) -> Vec<(u8, u64)> {
        self.runs
            .read()
            .expect("not poisoned")
            .iter()
            .map(|run| (run.meta.level, run.meta.entries))
            .collect()
    }
}

/// Commits `run` (if any) and forgets the runs `replaced`, in one durable
/// sled batch.
fn commit_in_place_of(
    db: &sled::Db,
    replaced: impl IntoIterator<Item = u64>,
    run: Option<&NewRun>,
) -> Result<()> {
    let mut batch = sled::Batch::default();
    for id in replaced {
        batch.remove(&index::run_key(id));
    }
    if let Some(run) = run {
        let (key, value) = TraceRuns::commit_key(run);
        batch.insert(&key, &value);
    }
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

/// The thread that merges runs, woken after each flush and retention run.
pub struct RunMerger {
    signal: Arc<(Mutex<MergerSignal>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct MergerSignal {
    due: bool,
    stop: bool,
}

impl RunMerger {
    /// Starts the thread; it merges until dropped.
    pub fn start(runs: Arc<TraceRuns>, db: sled::Db) -> std::io::Result<RunMerger> {
        let signal = Arc::new((Mutex::new(MergerSignal::default()), Condvar::new()));
        let shared = signal.clone();
        let thread = std::thread::Builder::new()
            .name("strand-run-merge".into())
            .spawn(move || {
                while wait_until_due(&shared) {
                    if let Err(error) = runs.merge(&db) {
                        tracing::error!(%error, "SpanIndexMergeError");
                    }
                    crate::memory::release_if_asked();
                }
            })?;
        Ok(RunMerger {
            signal,
            thread: Some(thread),
        })
    }

    /// Asks for a merge (and a look for dead runs) soon.
    pub fn wake(&self) {
        let (state, changed) = &*self.signal;
        state.lock().expect("not poisoned").due = true;
        changed.notify_one();
    }
}

/// Waits until a merge is due (true) or the merger stops (false), joining
/// memory release rounds after each `RELEASE_CHECK_INTERVAL` of waiting.
fn wait_until_due(signal: &(Mutex<MergerSignal>, Condvar)) -> bool {
    let (state, changed) = signal;
    let mut state = state.lock().expect("not poisoned");
    while !state.due && !state.stop {
        let (next, waited) = changed
            .wait_timeout(state, crate::memory::RELEASE_CHECK_INTERVAL)
            .expect("not poisoned");
        state = next;
        if waited.timed_out() {
            crate::memory::release_if_asked();
        }
    }
    state.due = false;
    !state.stop
}

impl Drop for RunMerger {
    /// Stops the thread after the merge in progress, if any.
    fn drop(&mut self) {
        let (state, changed) = &*self.signal;
        state.lock().expect("not poisoned").stop = true;
        changed.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_page(
    out: &mut impl Write,
    meta: &mut RunMeta,
    first: u64,
    page: &[u8],
    framed: &mut Vec<u8>,
) -> Result<Fence> {
    framed.clear();
    frame::append(framed, page)?;
    out.write_all(framed)?;
    let fence = Fence {
        first,
        offset: meta.fences_offset,
        len: framed.len() as u32,
    };
    meta.fences_offset += framed.len() as u64;
    Ok(fence)
}

fn decode_page(bytes: &[u8]) -> Result<Vec<(u64, u32)>> {
    Ok(decode_frame(bytes, "page", ENTRY_LEN)?
        .chunks_exact(ENTRY_LEN)
        .map(|entry| {
            let key = u64::from_be_bytes(entry[..8].try_into().expect("8 bytes"));
            let block = u32::from_be_bytes(entry[8..].try_into().expect("4 bytes"));
            (key, block)
        })
        .collect())
}

fn decode_fences(bytes: &[u8]) -> Result<Vec<Fence>> {
    Ok(decode_frame(bytes, "fences", FENCE_LEN)?
        .chunks_exact(FENCE_LEN)
        .map(|fence| Fence {
            first: u64::from_be_bytes(fence[..8].try_into().expect("8 bytes")),
            offset: u64::from_be_bytes(fence[8..16].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(fence[16..].try_into().expect("4 bytes")),
        })
        .collect())
}

/// The payload of a frame that is all of `bytes` and holds whole items of
/// `item_len` bytes; `what` names it in the damage.
fn decode_frame<'a>(bytes: &'a [u8], what: &str, item_len: usize) -> Result<&'a [u8]> {
    let corrupt = |damage: &str| StoreError::Corrupt(format!("trace run {what}: {damage}"));
    let (raw, len) = frame::decode(bytes).map_err(|e| corrupt(&e.to_string()))?;
    if len != bytes.len() || raw.len() % item_len != 0 {
        return Err(corrupt("wrong length"));
    }
    Ok(raw)
}

/// The block numbers in `blocks` with an `R` key: those whose segment is
/// still there.
pub fn live_blocks(db: &sled::Db, blocks: std::ops::RangeInclusive<u32>) -> Result<HashSet<u32>> {
    let (first, last) = blocks.into_inner();
    db.range(index::block_ref_key(first)..=index::block_ref_key(last))
        .map(|entry| index::block_of_ref_key(&entry?.0))
        .collect()
}

/// The run id of a file name `<id as 16 hex digits>.run`.
fn run_of_path(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?.strip_suffix(".run")?;
    (name.len() == 16)
        .then(|| u64::from_str_radix(name, 16).ok())
        .flatten()
}

/// The entries of several runs in order, one page of each in memory at a
/// time. A damaged page is reported and skipped.
struct MergedEntries<'a> {
    runs: &'a TraceRuns,
    cursors: Vec<Cursor>,
    /// The next entry of each cursor, smallest on top.
    heap: BinaryHeap<std::cmp::Reverse<((u64, u32), usize)>>,
    /// What ended the entries early, if anything did.
    error: Option<StoreError>,
}

struct Cursor {
    run: Arc<Run>,
    page: usize,
    entries: std::vec::IntoIter<(u64, u32)>,
}

impl<'a> MergedEntries<'a> {
    fn new(runs: &'a TraceRuns, inputs: &[Arc<Run>]) -> Result<MergedEntries<'a>> {
        let mut merged = MergedEntries {
            runs,
            cursors: Vec::with_capacity(inputs.len()),
            heap: BinaryHeap::with_capacity(inputs.len()),
            error: None,
        };
        for (at, run) in inputs.iter().enumerate() {
            merged.cursors.push(Cursor {
                run: run.clone(),
                page: 0,
                entries: Vec::new().into_iter(),
            });
            merged.advance(at)?;
        }
        Ok(merged)
    }

    /// Puts cursor `at`'s next entry on the heap, reading its next page
    /// when the current one is done.
    fn advance(&mut self, at: usize) -> Result<()> {
        let cursor = &mut self.cursors[at];
        loop {
            if let Some(entry) = cursor.entries.next() {
                self.heap.push(std::cmp::Reverse((entry, at)));
                return Ok(());
            }
            let Some(fence) = cursor.run.fences.get(cursor.page) else {
                return Ok(());
            };
            cursor.page += 1;
            // Damage fails the merge: its inputs stay, the damaged one
            // is left out of the next, and the next open rebuilds it.
            cursor.entries = self.runs.read_page(&cursor.run, fence)?.into_iter();
        }
    }
}

impl Iterator for MergedEntries<'_> {
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        let std::cmp::Reverse((entry, at)) = self.heap.pop()?;
        if let Err(error) = self.advance(at) {
            self.heap.clear();
            self.error = Some(error);
            return None;
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn open(dir: &Path) -> (sled::Db, TraceRuns) {
        let db = super::super::tests::open_index_db(dir);
        let (runs, damaged) = open_runs(dir, &db);
        assert!(damaged.is_empty());
        (db, runs)
    }

    fn open_runs(dir: &Path, db: &sled::Db) -> (TraceRuns, Vec<DamagedRun>) {
        TraceRuns::open(&dir.join("runs"), dir, db, SelfMetrics::new()).unwrap()
    }

    /// Writes and commits a run, as a flush does.
    fn commit(db: &sled::Db, runs: &TraceRuns, level: u8, entries: &[(u64, u32)]) {
        let entries = entries.iter().copied();
        let run = runs
            .write(level, RunKey::IdPrefix, entries)
            .unwrap()
            .unwrap();
        let (key, value) = TraceRuns::commit_key(&run);
        db.insert(key, &value).unwrap();
        runs.install(run);
    }

    /// Gives `blocks` an `R` key, as a flush does for the blocks it wrote.
    fn locate(db: &sled::Db, blocks: impl IntoIterator<Item = u32>) {
        for block in blocks {
            db.insert(index::block_ref_key(block), &[0u8; 16]).unwrap();
        }
    }

    fn id(prefix: u64) -> TraceId {
        let mut id = [7u8; 16];
        id[..8].copy_from_slice(&prefix.to_be_bytes());
        id
    }

    fn blocks(runs: &TraceRuns, prefix: u64) -> Vec<u32> {
        let (mut blocks, damaged) = runs.blocks_of(&id(prefix)).unwrap();
        assert!(!damaged);
        blocks.sort_unstable();
        blocks
    }

    fn run_files(dir: &Path) -> usize {
        fs::read_dir(dir.join("runs")).unwrap().count()
    }

    #[test]
    fn hashed_keys_tell_ids_with_a_common_prefix_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (db, runs) = open(dir.path());
        // 64-bit ids, as OTLP carries them: 8 zero bytes first.
        let ids: Vec<TraceId> = (0..1000u64)
            .map(|n| {
                let mut id = [0; 16];
                id[8..].copy_from_slice(&(n * 7919).to_be_bytes());
                id
            })
            .collect();
        let mut entries: Vec<(u64, u32)> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| (RunKey::IdHash.of(id), n as u32))
            .collect();
        entries.sort_unstable();
        entries.dedup_by_key(|(key, _)| *key);
        assert_eq!(entries.len(), ids.len(), "no two of them share a key");
        let run = runs.write(0, RunKey::IdHash, entries).unwrap().unwrap();
        let (key, value) = TraceRuns::commit_key(&run);
        db.insert(key, &value).unwrap();
        runs.install(run);
        for (n, id) in ids.iter().enumerate() {
            assert_eq!(runs.blocks_of(id).unwrap(), (vec![n as u32], false));
        }
        assert_eq!(RunKey::IdPrefix.of(&ids[1]), 0);
        // Part of the format: the same id has the same key in every build.
        assert_eq!(RunKey::IdHash.of(&[0; 16]), 0);
        assert_eq!(
            RunKey::IdHash.of(&[1; 16]),
            mix(0x0101_0101_0101_0101 ^ mix(0x0101_0101_0101_0101))
        );
    }

    #[test]
    fn a_prefix_is_found_across_page_boundaries_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (db, runs) = open(dir.path());
        // Prefix 5 fills more than two pages, between neighbours.
        let mut entries = vec![(1, 0)];
        entries.extend((0..2 * PAGE_ENTRIES as u32 + 3).map(|block| (5, block)));
        entries.push((9, 1));
        commit(&db, &runs, 0, &entries);
        commit(&db, &runs, 0, &[(5, 5000), (6, 5001)]);
        let mut expected: Vec<u32> = (0..2 * PAGE_ENTRIES as u32 + 3).collect();
        expected.push(5000);
        assert_eq!(blocks(&runs, 5), expected);
        assert_eq!(blocks(&runs, 1), [0]);
        assert_eq!(blocks(&runs, 9), [1]);
        assert_eq!(blocks(&runs, 6), [5001]);
        for absent in [0, 2, 7, 10, u64::MAX] {
            assert!(blocks(&runs, absent).is_empty(), "{absent}");
        }
        // Repeats are written once; disorder is refused.
        let write = |entries: &[(u64, u32)]| runs.write(0, RunKey::IdPrefix, entries.to_vec());
        assert_eq!(
            write(&[(3, 1), (3, 1), (4, 0)])
                .unwrap()
                .unwrap()
                .0
                .meta
                .entries,
            2
        );
        assert!(write(&[(4, 0), (3, 1)]).is_err());
        assert!(write(&[]).unwrap().is_none());
    }

    #[test]
    fn runs_merge_by_level_without_entries_of_dropped_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (db, runs) = open(dir.path());
        // FANOUT flushes of two traces each, in blocks 2n and 2n+1.
        for flush in 0..FANOUT as u32 {
            let prefix = u64::from(flush) * 10;
            commit(
                &db,
                &runs,
                0,
                &[(prefix, 2 * flush), (prefix + 1, 2 * flush + 1)],
            );
            locate(&db, [2 * flush, 2 * flush + 1]);
        }
        // Retention dropped block 3.
        db.remove(index::block_ref_key(3)).unwrap();
        runs.merge(&db).unwrap();
        assert_eq!(runs.levels(), [(1, 2 * FANOUT as u64 - 1)]);
        assert_eq!(run_files(dir.path()), 1, "the inputs' files went");
        assert_eq!(blocks(&runs, 10), [2]);
        assert!(blocks(&runs, 11).is_empty());
        assert_eq!(blocks(&runs, 71), [15]);

        // A run whose blocks are all older than the oldest left goes whole.
        commit(&db, &runs, 0, &[(3, 100)]);
        locate(&db, [100]);
        for block in 0..16 {
            db.remove(index::block_ref_key(block)).unwrap();
        }
        runs.merge(&db).unwrap();
        assert_eq!(runs.levels(), [(0, 1)]);
        drop(runs);
        let (_db, runs) = open_again(dir.path(), db);
        assert_eq!(runs.levels(), [(0, 1)]);
        assert_eq!(blocks(&runs, 3), [100]);
    }

    fn open_again(dir: &Path, db: sled::Db) -> (sled::Db, TraceRuns) {
        db.flush().unwrap();
        drop(db);
        open(dir)
    }

    #[test]
    fn open_deletes_uncommitted_runs_and_rebuilds_damaged_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (db, runs) = open(dir.path());
        locate(&db, [1, 2]);
        commit(&db, &runs, 0, &[(1, 1)]);
        commit(&db, &runs, 0, &[(2, 2)]);
        // A flush that crashed before its commit.
        runs.write(0, RunKey::IdPrefix, [(3, 3)]).unwrap().unwrap();
        assert_eq!(run_files(dir.path()), 3);
        // The first run's fences and the second's page damaged.
        let path = |run: u64| dir.path().join(format!("runs/{run:016x}.run"));
        let damage = |run: u64, at: fn(usize) -> usize| {
            let mut bytes = fs::read(path(run)).unwrap();
            let at = at(bytes.len());
            bytes[at] ^= 0xff;
            fs::write(path(run), bytes).unwrap();
        };
        damage(0, |len| len - 1);
        damage(1, |_| frame::HEADER_LEN);
        drop(runs);
        db.flush().unwrap();
        drop(db);

        let db = super::super::tests::open_index_db(dir.path());
        let (runs, damaged) = open_runs(dir.path(), &db);
        assert!(!path(2).exists(), "uncommitted");
        assert_eq!(damaged.len(), 2, "a damaged page is found at open too");
        let aside = dir.path().join("quarantine/runs").read_dir().unwrap();
        assert_eq!(aside.count(), 2);
        assert!(runs.levels().is_empty());
        for run in damaged {
            // Each block holds the trace whose id starts with its number.
            runs.rebuild(&db, run, |block| Ok(vec![id(u64::from(block))]))
                .unwrap();
        }
        assert_eq!(runs.levels(), [(0, 1), (0, 1)]);
        assert_eq!(runs.blocks_of(&id(1)).unwrap(), (vec![1], false));
        assert_eq!(runs.blocks_of(&id(2)).unwrap(), (vec![2], false));
        assert!(db.get(index::run_key(0)).unwrap().is_none());
        assert!(db.get(index::run_key(1)).unwrap().is_none());
        // New runs never reuse an id a file had.
        assert!(path(3).exists() && path(4).exists());

        // Damage that a lookup meets is reported as such, never taken for
        // no entries.
        damage(3, |_| frame::HEADER_LEN);
        let (found, damaged) = runs.blocks_of(&id(1)).unwrap();
        assert!(found.is_empty() && damaged);
    }

    #[test]
    fn a_run_damaged_after_open_is_kept_out_of_merges_until_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let (db, runs) = open(dir.path());
        for block in 0..FANOUT as u32 {
            commit(&db, &runs, 0, &[(u64::from(block), block)]);
            locate(&db, [block]);
        }
        let mut bytes = fs::read(dir.path().join("runs/0000000000000000.run")).unwrap();
        bytes[frame::HEADER_LEN] ^= 0xff;
        fs::write(dir.path().join("runs/0000000000000000.run"), bytes).unwrap();
        // The merge meets the damage and fails, losing nothing; the next
        // one leaves the damaged run out (and has too few to merge).
        assert!(runs.merge(&db).is_err());
        assert_eq!(runs.levels(), vec![(0, 1); FANOUT]);
        runs.merge(&db).unwrap();
        assert_eq!(runs.levels(), vec![(0, 1); FANOUT]);
        drop(runs);
        db.flush().unwrap();
        let (runs, damaged) = open_runs(dir.path(), &db);
        assert_eq!(damaged.len(), 1);
        for run in damaged {
            runs.rebuild(&db, run, |block| Ok(vec![id(u64::from(block))]))
                .unwrap();
        }
        // Rebuilt with hashed keys, as flushes write them (these test runs
        // have prefix keys, so it merges with none of them).
        assert_eq!(runs.levels().len(), FANOUT);
        assert_eq!(blocks(&runs, 0), [0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Whatever the flushes and merges, a lookup finds exactly the
        /// blocks of a prefix that still have an `R` key.
        #[test]
        fn lookups_match_a_model_through_merges(
            flushes in prop::collection::vec(
                prop::collection::btree_set((0u64..400, 0u32..8), 1..60),
                1..30,
            ),
            dropped_below in 0u32..40,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let (db, runs) = open(dir.path());
            let mut model = BTreeSet::new();
            for (flush, entries) in flushes.iter().enumerate() {
                // Each flush has blocks of its own, numbered upwards.
                let base = flush as u32 * 8;
                let entries: Vec<_> = entries.iter().map(|&(p, b)| (p, base + b)).collect();
                commit(&db, &runs, 0, &entries);
                locate(&db, entries.iter().map(|&(_, b)| b));
                model.extend(entries);
                runs.merge(&db).unwrap();
            }
            for block in 0..dropped_below {
                db.remove(index::block_ref_key(block)).unwrap();
            }
            runs.merge(&db).unwrap();
            let (_db, runs) = open_again(dir.path(), db);
            for prefix in 0..400 {
                let found: Vec<u32> = blocks(&runs, prefix)
                    .into_iter()
                    .filter(|&b| b >= dropped_below)
                    .collect();
                let expected: Vec<u32> = model
                    .range((prefix, dropped_below)..=(prefix, u32::MAX))
                    .map(|&(_, b)| b)
                    .collect();
                prop_assert_eq!(found, expected);
            }
            prop_assert!(runs.levels().iter().filter(|(level, _)| *level == 0).count() < FANOUT);
        }
    }
}
