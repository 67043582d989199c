//! The log store: one tantivy index per time partition (an hour by default).
//!
//! Records reach the store once durable, through the [`LogFeed`]'s thread
//! (in WAL order, off the WAL writer thread), and are added to the writer
//! of the partition their timestamp falls in. A commit
//! cycle (every half second) commits every partition that received records
//! and reloads its reader, which is what makes a record searchable; it also
//! reloads a reader whose segments a merge replaced since (tantivy merges on
//! its own threads after commits), so that it lets go of them. Each
//! partition's commit carries, as its payload, the highest WAL sequence number
//! it contains all records of; replay skips records a partition already has,
//! so replaying the WAL twice never duplicates a log.
//!
//! A time range's partition that has grown to the size target (an eighth of
//! the size limit, see [`Retention::file_bytes`]) after a commit is closed:
//! its range's records go to a new partition from then on, so one range can
//! have several partitions, numbered from 0. Retention drops whole
//! partitions, oldest first, by age and by total size, never the newest one;
//! the store thus stays within its size limit plus the newest partition and
//! what one commit cycle adds.
//!
//! The store's `FORMAT` file holds [`FORMAT_VERSION`]: of the partition
//! directories (named by their start in Unix seconds, `<start>` for a
//! range's first partition and `<start>-<n>` for the n-th after it), the
//! schema and document ids of `schema` and the commit payload (the WAL
//! sequence number, in decimal). A stored record carries the `codec` version
//! of its own. Version 1 had one partition per range, named `<start>`: a
//! version 1 directory is a valid version 2 one, and is marked so on open.

mod doc_store;
pub mod schema;
mod search;
mod time_order;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use tantivy::directory::MmapDirectory;
use tantivy::query::{Query, QueryParser, QueryParserError};
use tantivy::query_grammar::UserInputAst;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher};

pub use schema::{LEVELS, LogFields, record_of};

use crate::backup::BackupDir;
use crate::config::Retention;
use crate::model::LogRecord;
use crate::store::{self, Result, StoreError};
use crate::telemetry::{DropReason, SelfMetrics};

/// Writers of older partitions (late records, replay) get tantivy's minimum
/// and are closed after each commit.
const COLD_WRITER_BYTES: usize = 15 << 20;
/// How long a partition's writer stays open with nothing to add, unless
/// [`LogStore::with_writer_idle`] says otherwise.
pub const DEFAULT_WRITER_IDLE: Duration = Duration::from_secs(60);
/// Records per WAL record are numbered below this in document ids.
const MAX_RECORDS_PER_WAL_RECORD: u64 = 1 << 24;
/// Bumped when the partition layout, schema or commit payload changes
/// incompatibly.
const FORMAT_VERSION: u32 = 2;
/// The oldest version this code opens (and marks as [`FORMAT_VERSION`]).
const OLDEST_READABLE_FORMAT: u32 = 1;
/// Retention renames a partition's directory to `<start>.dropped` before
/// deleting it, so a new partition of the same start never shares it.
const DROPPED_SUFFIX: &str = "dropped";
/// Tantivy's files naming a partition's committed segments, and every file
/// it manages (deletes when unused); tantivy does not export the names.
const META_FILE: &str = "meta.json";
const MANAGED_FILE: &str = ".managed.json";

impl From<tantivy::TantivyError> for StoreError {
    fn from(error: tantivy::TantivyError) -> Self {
        StoreError::Search(error.to_string())
    }
}

/// Where a partition sorts: its range's start, then its number in the
/// range (older partitions of a range have lower numbers).
type PartitionKey = (u64, u32);

/// One time partition.
pub struct Partition {
    pub start_nanos: u64,
    pub end_nanos: u64,
    /// Its place among the partitions of its time range, from 0.
    number: u32,
    dir: PathBuf,
    index: Index,
    reader: IndexReader,
    writer: RwLock<Option<IndexWriter>>,
    /// When records were last added: the writer is released once this is
    /// [`LogStore::with_writer_idle`] ago and all of them are committed.
    last_added: Mutex<Instant>,
    /// Highest WAL sequence number added to the writer.
    added_through: AtomicU64,
    /// Highest WAL sequence number all of whose records are committed.
    committed_through: AtomicU64,
    /// Created with the current schema: only such a partition gets new
    /// records (an older one is read as it is).
    current_schema: bool,
    /// Where in its segments each time lies, for pages in time order.
    time_runs: time_order::TimeRuns,
}

impl Partition {
    /// A searcher over what the last commit made visible.
    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    /// Reloads the reader if a merge replaced segments it holds. Tantivy
    /// merges after commits, on its own threads, and a reader reloads only
    /// when told: it would keep the replaced segments (deleted files, still
    /// mapped, every page of which the merge read in) until the partition's
    /// next commit, which a quiet daemon never makes. A failure is logged:
    /// the next commit cycle tries again, and queries go on with the
    /// segments they have.
    fn follow_merges(&self) {
        let reloaded = || -> Result<()> {
            let on_disk: HashSet<_> = self.index.searchable_segment_ids()?.into_iter().collect();
            let searcher = self.reader.searcher();
            let held = searcher.segment_readers();
            if held.len() != on_disk.len()
                || held.iter().any(|s| !on_disk.contains(&s.segment_id()))
            {
                self.reader.reload()?;
            }
            Ok(())
        };
        if let Err(error) = reloaded() {
            tracing::warn!(partition = %self.dir.display(), %error, "LogReaderReloadError");
        }
    }

    /// Closes the writer `writer` guards (its memory goes; the next record
    /// opens a new one), then lets the reader go of what the writer's last
    /// merges replaced.
    fn close_writer(&self, mut writer: RwLockWriteGuard<'_, Option<IndexWriter>>) {
        *writer = None;
        drop(writer);
        self.follow_merges();
    }

    fn has_uncommitted(&self) -> bool {
        self.added_through.load(Ordering::Acquire) > self.committed_through.load(Ordering::Acquire)
    }

    fn key(&self) -> PartitionKey {
        (self.start_nanos, self.number)
    }
}

/// See the module docs.
pub struct LogStore {
    dir: PathBuf,
    schema: tantivy::schema::Schema,
    fields: LogFields,
    tokenizers: tantivy::tokenizer::TokenizerManager,
    partition_nanos: u64,
    /// A time range's newest partition is closed once this large.
    partition_bytes: u64,
    /// Indexing memory of the newest partition's writer.
    hot_writer_bytes: usize,
    /// How long a writer stays open with nothing to add.
    writer_idle: Duration,
    partitions: RwLock<BTreeMap<PartitionKey, Arc<Partition>>>,
    /// Serialises commit cycles and retention.
    maintenance: Mutex<()>,
    /// Held shared by `apply`, exclusively by retention while it takes a
    /// partition out: records are never added to a partition whose
    /// directory is going, nor to a new one retention is still deleting.
    adding: RwLock<()>,
    metrics: SelfMetrics,
    /// Damaged files already reported, so each is reported once per run.
    reported: Mutex<HashSet<PathBuf>>,
}

impl LogStore {
    /// The store, with each partition's writer closed once it had nothing
    /// new for `idle` (and opened again for the next record): an idle
    /// daemon holds no indexing threads, merge threads or buffers.
    pub fn with_writer_idle(mut self, idle: Duration) -> LogStore {
        self.writer_idle = idle;
        self
    }

    /// Opens (or creates) the store in `dir` with partitions `partition` long,
    /// each closed once it holds `partition_bytes` (see
    /// [`Retention::file_bytes`]), the newest indexing with
    /// `hot_writer_bytes` of memory.
    pub fn open(
        dir: &Path,
        partition: Duration,
        partition_bytes: u64,
        hot_writer_bytes: usize,
        metrics: SelfMetrics,
    ) -> Result<LogStore> {
        fs::create_dir_all(dir)?;
        crate::store::check_format(dir, "log", OLDEST_READABLE_FORMAT..=FORMAT_VERSION)?;
        let (schema, fields) = schema::build();
        let partition_nanos = u64::try_from(partition.as_nanos())
            .unwrap_or(u64::MAX)
            .max(1_000_000_000);
        let store = LogStore {
            dir: dir.to_path_buf(),
            schema,
            fields,
            tokenizers: schema::tokenizers(),
            partition_nanos,
            partition_bytes,
            hot_writer_bytes,
            writer_idle: DEFAULT_WRITER_IDLE,
            partitions: RwLock::new(BTreeMap::new()),
            maintenance: Mutex::new(()),
            adding: RwLock::new(()),
            metrics,
            reported: Mutex::new(HashSet::new()),
        };
        let mut partitions = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == DROPPED_SUFFIX) {
                // Retention was interrupted after taking the partition out.
                fs::remove_dir_all(&path)?;
                continue;
            }
            let Some(key) = partition_key(&path) else {
                continue;
            };
            // Tantivy may panic on files damaged in ways it does not check.
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.open_partition(key)
            }))
            .unwrap_or_else(|_| Err(StoreError::Search("opening it panicked".into())));
            match opened {
                Ok(partition) => {
                    partitions.insert(key, Arc::new(partition));
                }
                Err(StoreError::Search(error)) => {
                    let moved = store::quarantine(store.data_dir(), &path)?;
                    store.metrics.corrupt_data(
                        "logs",
                        store.data_dir(),
                        &path,
                        0,
                        &format!("the partition cannot be opened: {error}"),
                        &format!("moved to {}", moved.display()),
                    );
                }
                Err(error) => return Err(error),
            }
        }
        *store.partitions.write().expect("not poisoned") = partitions;
        store.update_size_metric();
        Ok(store)
    }

    /// Reports damage a query met in `partition` (what it cost: the
    /// records it could not read), once per file and run. `file` names the
    /// damaged file in the partition; `None` when the query cannot tell, and
    /// the partition's checksums are checked to find it.
    pub fn report_damage(&self, partition: &Partition, file: Option<&str>, damage: &str) {
        let files: Vec<PathBuf> = match file {
            Some(file) => vec![partition.dir.join(file)],
            None => match partition.index.validate_checksum() {
                Ok(bad) if !bad.is_empty() => bad.iter().map(|f| partition.dir.join(f)).collect(),
                _ => vec![partition.dir.clone()],
            },
        };
        for path in files {
            if self
                .reported
                .lock()
                .expect("not poisoned")
                .insert(path.clone())
            {
                self.metrics.corrupt_data(
                    "logs",
                    self.data_dir(),
                    &path,
                    0,
                    damage,
                    "skipped what cannot be read: queries answer the rest with a warning",
                );
            }
        }
    }

    /// The data directory this store is in, which reports name files
    /// relative to.
    fn data_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    pub fn fields(&self) -> &LogFields {
        &self.fields
    }

    /// The highest WAL sequence number any partition has committed: the WAL
    /// must never hand out a number at or below it again. (Each partition
    /// skips, on replay, what it has committed itself.)
    pub fn durable_through(&self) -> u64 {
        self.partitions
            .read()
            .expect("not poisoned")
            .values()
            .map(|p| p.committed_through.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Adds durable records; called in WAL sequence order (at ingest and on
    /// replay). Records a partition already committed are skipped; returns
    /// how many were added.
    pub fn apply(&self, seq: u64, records: Vec<LogRecord>) -> Result<usize> {
        let _adding = self.adding.read().expect("not poisoned");
        let mut by_partition: BTreeMap<u64, Vec<(u64, &LogRecord)>> = BTreeMap::new();
        for (position, record) in records.iter().enumerate() {
            let id = seq * MAX_RECORDS_PER_WAL_RECORD + position as u64;
            by_partition
                .entry(self.partition_of(record.time_unix_nano))
                .or_default()
                .push((id, record));
        }
        // One partition failing does not keep the records of the others out.
        let (mut added, mut first_error) = (0, None);
        for (start, records) in by_partition {
            match self.add_to_partition(start, seq, records) {
                Ok(count) => added += count,
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(added),
        }
    }

    /// Adds the records of WAL record `seq` that fall in the time range
    /// starting at `start` to its newest partition, unless the range has
    /// committed them; returns how many. (A range's older partitions only
    /// ever hold records of lower sequence numbers than its newer ones, and
    /// commit first: the highest commit among them covers the range.)
    fn add_to_partition(
        &self,
        start: u64,
        seq: u64,
        records: Vec<(u64, &LogRecord)>,
    ) -> Result<usize> {
        let (partition, committed) = self.newest_in_range(start)?;
        if seq <= committed {
            return Ok(0);
        }
        let writer = self.open_writer(&partition)?;
        let writer = writer.as_ref().expect("open_writer returns an open writer");
        let count = records.len();
        for (id, record) in records {
            writer.add_document(schema::to_document(&self.fields, record, id))?;
        }
        // Under the writer's read lock: releasing it sees these as
        // uncommitted.
        partition.added_through.fetch_max(seq, Ordering::AcqRel);
        *partition.last_added.lock().expect("not poisoned") = Instant::now();
        Ok(count)
    }

    /// Commits every partition holding uncommitted records and makes them
    /// searchable, oldest first; then closes each committed partition that
    /// reached the size target and is the newest of its range, so that
    /// range's records go to a new partition. Returns the number of
    /// partitions committed.
    pub fn commit(&self) -> Result<usize> {
        let _maintenance = self.maintenance.lock().expect("not poisoned");
        let started = std::time::Instant::now();
        let newest = self.newest_key();
        let partitions: Vec<Arc<Partition>> = self
            .partitions
            .read()
            .expect("not poisoned")
            .values()
            .filter(|p| p.has_uncommitted())
            .cloned()
            .collect();
        if !partitions.is_empty() {
            // Marks the moment a crash test kills the daemon in.
            tracing::debug!(partitions = partitions.len(), "LogCommitStarted");
        }
        for partition in &partitions {
            let mut writer = partition.writer.write().expect("not poisoned");
            let Some(index_writer) = writer.as_mut() else {
                continue;
            };
            let through = partition.added_through.load(Ordering::Acquire);
            let mut prepared = index_writer.prepare_commit()?;
            prepared.set_payload(&through.to_string());
            // Scheduled now, so it holds exactly the prepared segments.
            let committing = prepared.commit_future();
            if Some(partition.key()) == newest {
                // The writer takes records again while the commit is
                // written out.
                drop(writer);
                committing.wait()?;
            } else {
                // Late records are rare: free the writer's memory, once the
                // commit is through (a dropped writer's commit is dropped).
                let committed = committing.wait();
                *writer = None;
                committed?;
            }
            partition
                .committed_through
                .store(through, Ordering::Release);
            partition.reader.reload()?;
        }
        for partition in &partitions {
            if dir_bytes(&partition.dir) >= self.partition_bytes {
                self.close_partition(partition)?;
            }
        }
        self.release_idle_writers();
        self.follow_merges(&partitions);
        if !partitions.is_empty() {
            self.update_size_metric();
            tracing::debug!(
                partitions = partitions.len(),
                seconds = started.elapsed().as_secs_f64(),
                "LogCommitted"
            );
        }
        Ok(partitions.len())
    }

    /// Starts the next partition of `full`'s time range, unless `full` is no
    /// longer the newest of it (or was dropped). Its writer goes too unless
    /// it holds records the next commit cycle has yet to commit.
    fn close_partition(&self, full: &Partition) -> Result<()> {
        let _exclusive = self.adding.write().expect("not poisoned");
        let next = (full.start_nanos, full.number + 1);
        {
            let partitions = self.partitions.read().expect("not poisoned");
            let newest_in_range = partitions
                .range(full.key()..=(full.start_nanos, u32::MAX))
                .next_back()
                .map(|(key, _)| *key);
            if newest_in_range != Some(full.key()) || full.number == u32::MAX {
                return Ok(());
            }
        }
        let partition = Arc::new(self.open_partition(next)?);
        self.partitions
            .write()
            .expect("not poisoned")
            .insert(next, partition);
        if !full.has_uncommitted() {
            full.close_writer(full.writer.write().expect("not poisoned"));
        }
        tracing::info!(partition = %full.dir.display(), "LogPartitionClosed");
        Ok(())
    }

    /// Drops partitions past the retention limits; returns how many.
    pub fn enforce_retention(&self, retention: Retention, now_nanos: u64) -> Result<usize> {
        let _maintenance = self.maintenance.lock().expect("not poisoned");
        let oldest_kept = now_nanos
            .saturating_sub(u64::try_from(retention.max_age.as_nanos()).unwrap_or(u64::MAX));
        let mut doomed = Vec::new();
        {
            let partitions = self.partitions.read().expect("not poisoned");
            let mut sizes: Vec<(PartitionKey, u64)> = partitions
                .values()
                .map(|p| (p.key(), dir_bytes(&p.dir)))
                .collect();
            let mut total: u64 = sizes.iter().map(|(_, bytes)| bytes).sum();
            // Oldest first; the newest partition always stays.
            sizes.pop();
            for (key, bytes) in sizes {
                let reason = if partitions[&key].end_nanos <= oldest_kept {
                    DropReason::Age
                } else if retention.max_bytes > 0 && total > retention.max_bytes {
                    DropReason::Size
                } else {
                    continue;
                };
                doomed.push((key, reason, bytes));
                total -= bytes;
            }
        }
        for (key, reason, bytes) in &doomed {
            let dropped = {
                let _exclusive = self.adding.write().expect("not poisoned");
                let removed = self.partitions.write().expect("not poisoned").remove(key);
                let Some(partition) = removed else { continue };
                // Its uncommitted records are past retention too.
                *partition.writer.write().expect("not poisoned") = None;
                let dropped = partition.dir.with_extension(DROPPED_SUFFIX);
                fs::rename(&partition.dir, &dropped)?;
                dropped
            };
            // Open searchers keep their mapped files readable after this.
            fs::remove_dir_all(&dropped)?;
            self.metrics.retention_dropped("logs", *reason, *bytes);
            tracing::info!(partition = %dropped.display(), reason = reason.as_str(), "LogPartitionDropped");
        }
        if !doomed.is_empty() {
            self.update_size_metric();
        }
        Ok(doomed.len())
    }

    /// Writes every partition as of its last commit into `relative` under
    /// `backup`; commits and retention wait meanwhile, records keep being
    /// added (the WAL the snapshot also holds has those not committed).
    /// Tantivy never rewrites a segment file, so the files of the commit's
    /// segments are hard-linked, and its `meta.json` copied; a merge that
    /// finishes meanwhile may delete files the commit named, and then the
    /// partition is taken again from its new `meta.json`.
    pub fn snapshot(&self, backup: &mut BackupDir, relative: &Path) -> Result<()> {
        let _maintenance = self.maintenance.lock().expect("not poisoned");
        backup.create_dir(relative)?;
        let format = self.dir.join(crate::store::FORMAT_FILE);
        if format.exists() {
            backup.copy(&format, &relative.join(crate::store::FORMAT_FILE))?;
        }
        for partition in self.all_partitions() {
            let Some(name) = partition.dir.file_name() else {
                continue;
            };
            let target = relative.join(name);
            let mut attempts = 0;
            while !snapshot_partition(&partition, backup, &target)? {
                fs::remove_dir_all(backup.root().join(&target))?;
                attempts += 1;
                if attempts == PARTITION_SNAPSHOT_ATTEMPTS {
                    return Err(StoreError::Search(format!(
                        "{}: merges changed the partition {attempts} times while it was copied",
                        partition.dir.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Builds the tantivy query of a parsed query (`query::logs` parses and
    /// checks it): `body` is the default field, terms are ANDed unless `OR`
    /// says otherwise, and regular expressions are accepted (the query
    /// layer writes `word*` as one). What tantivy refuses comes back as
    /// errors beside a query that matches nothing there.
    pub fn build_query(&self, ast: UserInputAst) -> (Box<dyn Query>, Vec<QueryParserError>) {
        let mut parser = QueryParser::new(
            self.schema.clone(),
            vec![self.fields.body],
            self.tokenizers.clone(),
        );
        parser.set_conjunction_by_default();
        parser.allow_regexes();
        parser.build_query_from_user_input_ast_lenient(ast)
    }

    /// Partitions that may hold records in `[start, end]`, newest first.
    pub fn partitions_between(&self, start_nanos: u64, end_nanos: u64) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .expect("not poisoned")
            .values()
            .rev()
            .filter(|p| p.start_nanos <= end_nanos && p.end_nanos > start_nanos)
            .cloned()
            .collect()
    }

    /// A store in `dir` with hourly partitions closed at `partition_bytes`,
    /// as the tests of the log store and its queries open it.
    #[cfg(test)]
    pub(crate) fn open_hourly(dir: &Path, partition_bytes: u64) -> LogStore {
        LogStore::open(
            dir,
            Duration::from_secs(3600),
            partition_bytes,
            schema::HOT_WRITER_BYTES,
            SelfMetrics::new(),
        )
        .expect("a log store opens")
    }

    /// Bytes of all partitions on disk.
    pub fn disk_bytes(&self) -> u64 {
        dir_bytes(&self.dir)
    }

    fn partition_of(&self, time_unix_nano: u64) -> u64 {
        time_unix_nano - time_unix_nano % self.partition_nanos
    }

    /// Every partition, oldest first, taken out of the map's lock so the
    /// caller may block on one (a commit, a copy) without holding it.
    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect()
    }

    fn newest_key(&self) -> Option<PartitionKey> {
        self.partitions
            .read()
            .expect("not poisoned")
            .keys()
            .next_back()
            .copied()
    }

    /// The newest partition of the time range starting at `start` (opened
    /// when the range has none), and the highest WAL sequence number any
    /// partition of the range has committed.
    fn newest_in_range(&self, start: u64) -> Result<(Arc<Partition>, u64)> {
        // The range's newest partition and the highest commit among them.
        let newest = |partitions: &BTreeMap<PartitionKey, Arc<Partition>>| {
            let range = partitions.range((start, 0)..=(start, u32::MAX));
            let committed = range
                .clone()
                .map(|(_, p)| p.committed_through.load(Ordering::Acquire))
                .max()
                .unwrap_or(0);
            (range.last().map(|(_, p)| p.clone()), committed)
        };
        let (found, committed) = newest(&self.partitions.read().expect("not poisoned"));
        if let Some(partition) = found.filter(|p| p.current_schema) {
            return Ok((partition, committed));
        }
        let mut partitions = self.partitions.write().expect("not poisoned");
        let (found, committed) = newest(&partitions);
        // None yet, or the newest has an older schema: a new one after it.
        let number = match found {
            Some(partition) if partition.current_schema => return Ok((partition, committed)),
            Some(partition) => partition.number.checked_add(1).ok_or_else(|| {
                StoreError::Search(format!("time range {start} has too many partitions"))
            })?,
            None => 0,
        };
        let partition = Arc::new(self.open_partition((start, number))?);
        partitions.insert(partition.key(), partition.clone());
        Ok((partition, committed))
    }

    fn open_partition(&self, (start, number): PartitionKey) -> Result<Partition> {
        let seconds = start / 1_000_000_000;
        let dir = self.dir.join(match number {
            0 => format!("{seconds}"),
            n => format!("{seconds}-{n}"),
        });
        fs::create_dir_all(&dir)?;
        let directory = MmapDirectory::open(&dir)
            .map_err(|e| StoreError::Search(format!("opening {}: {e}", dir.display())))?;
        let exists = Index::exists(&directory)
            .map_err(|e| StoreError::Search(format!("opening {}: {e}", dir.display())))?;
        let (index, reader) = if exists {
            self.open_guarded(&dir, directory)?
        } else {
            self.with_reader(
                Index::builder()
                    .schema(self.schema.clone())
                    .tokenizers(self.tokenizers.clone())
                    .fast_field_tokenizers(self.tokenizers.clone())
                    .settings(schema::index_settings())
                    .open_or_create(directory)?,
            )?
        };
        let current_schema = index.schema() == self.schema;
        let committed = index
            .load_metas()?
            .payload
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        Ok(Partition {
            start_nanos: start,
            end_nanos: start.saturating_add(self.partition_nanos),
            number,
            dir,
            index,
            reader,
            writer: RwLock::new(None),
            last_added: Mutex::new(Instant::now()),
            added_through: AtomicU64::new(committed),
            committed_through: AtomicU64::new(committed),
            current_schema,
            time_runs: time_order::TimeRuns::default(),
        })
    }

    /// `index` with Strand's tokenizers, and its reader.
    fn with_reader(&self, mut index: Index) -> Result<(Index, IndexReader)> {
        index.set_tokenizers(self.tokenizers.clone());
        index.set_fast_field_tokenizers(self.tokenizers.clone());
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok((index, reader))
    }

    /// Opens the existing index in `directory` — again through a
    /// [`doc_store::GuardedDirectory`] (reported) when blocks of its
    /// document store have lengths that cannot be trusted.
    fn open_guarded(&self, dir: &Path, directory: MmapDirectory) -> Result<(Index, IndexReader)> {
        let (index, reader) = self.with_reader(Index::open(directory.clone())?)?;
        let untrusted = doc_store::untrusted_blocks(&reader.searcher(), &directory);
        if untrusted.is_empty() {
            return Ok((index, reader));
        }
        for (file, blocks) in &untrusted {
            let path = dir.join(file);
            self.metrics.corrupt_data(
                "logs",
                self.data_dir(),
                &path,
                blocks[0] as u64,
                &format!(
                    "{} document store block(s) have a length that does not match their data",
                    blocks.len()
                ),
                "their records are skipped: queries answer the rest with a warning",
            );
            self.reported.lock().expect("not poisoned").insert(path);
        }
        drop((index, reader));
        self.with_reader(Index::open(doc_store::GuardedDirectory::new(
            directory, untrusted,
        ))?)
    }

    /// `partition`'s writer, opened if it was not (or was released), under
    /// its read lock: holding it keeps [`LogStore::release_idle_writers`]
    /// from closing the writer meanwhile.
    fn open_writer<'a>(
        &self,
        partition: &'a Partition,
    ) -> Result<RwLockReadGuard<'a, Option<IndexWriter>>> {
        loop {
            let writer = partition.writer.read().expect("not poisoned");
            if writer.is_some() {
                return Ok(writer);
            }
            drop(writer);
            let mut writer = partition.writer.write().expect("not poisoned");
            if writer.is_none() {
                let hot = self.newest_key() == Some(partition.key());
                let (threads, bytes) = if hot {
                    (schema::hot_writer_threads(), self.hot_writer_bytes)
                } else {
                    (1, COLD_WRITER_BYTES)
                };
                *writer = Some(partition.index.writer_with_num_threads(threads, bytes)?);
            }
        }
    }

    /// Closes the writer of every partition that has committed all it was
    /// given and had nothing new for `writer_idle`: a quiet daemon keeps no
    /// indexing and merge threads, nor their buffers. The next record opens
    /// it again.
    fn release_idle_writers(&self) {
        for partition in self.all_partitions() {
            let idle = partition.last_added.lock().expect("not poisoned").elapsed();
            if idle < self.writer_idle || partition.has_uncommitted() {
                continue;
            }
            let writer = partition.writer.write().expect("not poisoned");
            if writer.is_some() && !partition.has_uncommitted() {
                partition.close_writer(writer);
                tracing::debug!(partition = %partition.dir.display(), "LogWriterReleased");
            }
        }
    }

    /// [`Partition::follow_merges`] for each partition with an open writer
    /// (only a writer merges), but those `just_reloaded` by this cycle's
    /// commit: a merge that ends after that reload is seen next cycle.
    fn follow_merges(&self, just_reloaded: &[Arc<Partition>]) {
        for partition in self.all_partitions() {
            let reloaded = just_reloaded.iter().any(|p| Arc::ptr_eq(p, &partition));
            if !reloaded && partition.writer.read().expect("not poisoned").is_some() {
                partition.follow_merges();
            }
        }
    }

    /// Whether `partition`'s writer is open.
    #[cfg(test)]
    fn writer_open(&self, partition: &Partition) -> bool {
        partition.writer.read().expect("not poisoned").is_some()
    }

    fn update_size_metric(&self) {
        self.metrics
            .store_size_bytes
            .with_label_values(&["logs"])
            .set(self.disk_bytes() as i64);
    }
}

/// How often [`LogStore::snapshot`] takes a partition again when merges
/// keep replacing its segments under it.
const PARTITION_SNAPSHOT_ATTEMPTS: u32 = 5;

/// Links the files of `partition`'s last commit into `target` and copies
/// its `meta.json` and tantivy's list of the files it manages; returns false
/// when a file of the commit went meanwhile (the caller starts over).
fn snapshot_partition(
    partition: &Partition,
    backup: &mut BackupDir,
    target: &Path,
) -> Result<bool> {
    let meta_path = partition.dir.join(META_FILE);
    let meta = match fs::read(&meta_path) {
        Ok(meta) => meta,
        // Created, never committed: the WAL holds all of it.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(error) => return Err(error.into()),
    };
    let metas = partition.index.load_metas()?;
    if fs::read(&meta_path)? != meta {
        return Ok(false);
    }
    backup.create_dir(target)?;
    for file in metas.list_segment_files() {
        match backup.link(&partition.dir.join(&file), &target.join(&file)) {
            Ok(()) => {}
            // Tantivy lists every file a segment may have. One missing
            // while `meta.json` is unchanged never existed: tantivy deletes
            // a file only after a new `meta.json` stopped naming it.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if fs::read(&meta_path)? != meta {
                    return Ok(false);
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    backup.write(&target.join(META_FILE), &meta)?;
    // Read after the links: it names every file linked (tantivy lists a
    // file before creating it), so the snapshot's own merges delete them.
    match backup.copy(
        &partition.dir.join(MANAGED_FILE),
        &target.join(MANAGED_FILE),
    ) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
        _ => Ok(true),
    }
}

/// The key of a partition directory's name: `<start seconds>` or
/// `<start seconds>-<number>`.
fn partition_key(path: &Path) -> Option<PartitionKey> {
    let name = path.file_name()?.to_str()?;
    let (seconds, number) = match name.split_once('-') {
        Some((seconds, number)) => (seconds, number.parse().ok().filter(|&n| n > 0)?),
        None => (name, 0),
    };
    let start = seconds.parse::<u64>().ok()?.checked_mul(1_000_000_000)?;
    Some((start, number))
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_log;

    const HOUR: u64 = 3_600 * 1_000_000_000;

    fn documents(store: &LogStore) -> u64 {
        store
            .partitions_between(0, u64::MAX)
            .iter()
            .map(|p| p.searcher().num_docs())
            .sum()
    }

    #[test]
    fn an_idle_writer_is_released_after_its_commit_and_reopened_by_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let open = |idle| {
            LogStore::open_hourly(dir.path(), Retention::MAX_FILE_BYTES).with_writer_idle(idle)
        };
        let now = 1_000 * HOUR;
        let newest = |store: &LogStore| store.partitions_between(0, u64::MAX)[0].clone();

        // Not idle long enough: the writer stays open across commits.
        let store = open(Duration::from_secs(3600));
        store.apply(1, vec![sample_log("a", now, "first")]).unwrap();
        store.commit().unwrap();
        assert!(store.writer_open(&newest(&store)));
        drop(store);

        // Idle at once: released only once its records are committed.
        let store = open(Duration::ZERO);
        store
            .apply(2, vec![sample_log("a", now + 1, "second")])
            .unwrap();
        store.release_idle_writers();
        assert!(
            store.writer_open(&newest(&store)),
            "a writer holding uncommitted records stays open"
        );
        store.commit().unwrap();
        assert!(!store.writer_open(&newest(&store)));
        assert_eq!(documents(&store), 2);

        // The next record opens it again; nothing is lost, nothing doubled.
        store
            .apply(3, vec![sample_log("a", now + 2, "third")])
            .unwrap();
        assert!(store.writer_open(&newest(&store)));
        store.commit().unwrap();
        assert!(!store.writer_open(&newest(&store)));
        assert_eq!(documents(&store), 3);
        assert_eq!(store.durable_through(), 3);
        drop(store);
        assert_eq!(documents(&open(Duration::ZERO)), 3);
    }

    #[test]
    fn a_merge_that_ends_after_the_last_commit_reaches_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open_hourly(dir.path(), Retention::MAX_FILE_BYTES);
        let now = 1_000 * HOUR;
        // Eight one-record segments: tantivy merges them after the last
        // commit, on its own threads.
        for seq in 1..=8u64 {
            store
                .apply(seq, vec![sample_log("a", now + seq, "line")])
                .unwrap();
            store.commit().unwrap();
        }
        let partition = store.partitions_between(0, u64::MAX)[0].clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The commit cycle goes on with nothing new, as a quiet
            // daemon's does.
            store.commit().unwrap();
            let on_disk = partition.index.searchable_segment_ids().unwrap();
            let held: Vec<_> = partition
                .searcher()
                .segment_readers()
                .iter()
                .map(|s| s.segment_id())
                .collect();
            if on_disk.len() < 8 && held.len() == on_disk.len() {
                assert!(held.iter().all(|id| on_disk.contains(id)));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the reader holds {held:?}, the index has {on_disk:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(documents(&store), 8);
    }

    #[test]
    fn records_for_a_dropped_partition_start_a_new_one_and_keep_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            LogStore::open(
                dir.path(),
                Duration::from_secs(3600),
                Retention::MAX_FILE_BYTES,
                schema::HOT_WRITER_BYTES,
                SelfMetrics::new(),
            )
        };
        let store = open().unwrap();
        let now = 1_000 * HOUR;
        store
            .apply(1, vec![sample_log("a", now - 30 * HOUR, "old")])
            .unwrap();
        store.apply(2, vec![sample_log("a", now, "new")]).unwrap();
        store.commit().unwrap();
        let retention = Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: 0,
        };
        assert_eq!(store.enforce_retention(retention, now).unwrap(), 1);
        assert_eq!(documents(&store), 1);

        // One WAL record with a late record for the dropped hour and a new one.
        let both = vec![
            sample_log("a", now - 30 * HOUR, "late"),
            sample_log("a", now + 1, "newer"),
        ];
        assert_eq!(store.apply(3, both).unwrap(), 2);
        store.commit().unwrap();
        assert_eq!(documents(&store), 3);

        // A drop interrupted between its rename and its delete is finished on open.
        drop(store);
        let interrupted = dir
            .path()
            .join(format!("{}.{DROPPED_SUFFIX}", now / 1_000_000_000));
        fs::create_dir_all(interrupted.join("segment")).unwrap();
        let store = open().unwrap();
        assert!(!interrupted.exists());
        assert_eq!(documents(&store), 3);
    }

    #[test]
    fn a_snapshot_holds_each_partition_as_committed_and_links_its_segment_files() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let open = |dir: &Path| LogStore::open_hourly(dir, Retention::MAX_FILE_BYTES);
        let store = open(&logs);
        let now = 1_000 * HOUR;
        store
            .apply(1, vec![sample_log("a", now - HOUR, "older hour")])
            .unwrap();
        store
            .apply(2, vec![sample_log("a", now, "committed")])
            .unwrap();
        store.commit().unwrap();
        // Not committed: the snapshot's WAL has it.
        store.apply(3, vec![sample_log("a", now, "added")]).unwrap();

        let snapshot = dir.path().join("snapshot");
        fs::create_dir(&snapshot).unwrap();
        let mut backup = BackupDir::new(snapshot.clone());
        store.snapshot(&mut backup, Path::new("logs")).unwrap();
        store.commit().unwrap();

        let partition = format!("{}", now / 1_000_000_000);
        let copied = snapshot.join("logs").join(&partition);
        let mut linked = 0;
        for entry in fs::read_dir(&copied).unwrap() {
            let name = entry.unwrap().file_name();
            let (copy, original) = (copied.join(&name), logs.join(&partition).join(&name));
            let same = fs::metadata(&copy).unwrap().ino() == fs::metadata(&original).unwrap().ino();
            let is_json = name.to_str().unwrap().ends_with(".json");
            assert_eq!(same, !is_json, "{name:?}");
            linked += usize::from(same);
        }
        assert!(linked > 0);

        let copy = open(&snapshot.join("logs"));
        assert_eq!(documents(&copy), 2);
        assert_eq!(copy.durable_through(), 2);
        // Replay adds the rest, as after a crash.
        assert_eq!(
            copy.apply(3, vec![sample_log("a", now, "added")]).unwrap(),
            1
        );
    }

    fn partition_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_range_whose_partition_has_an_older_schema_gets_a_new_one_for_its_records() {
        use crate::model::{AttrValue, KeyValue};
        use tantivy::schema::TextOptions;
        let dir = tempfile::tempdir().unwrap();
        let now = 1_000 * HOUR;
        // The schema before attribute_keys was indexed, for the hour of `now`.
        let (current, _) = schema::build();
        let mut older = tantivy::schema::Schema::builder();
        for (_, entry) in current.fields() {
            if entry.name() == "attribute_keys" {
                older.add_text_field("attribute_keys", TextOptions::default().set_fast("raw"));
            } else {
                older.add_field(entry.clone());
            }
        }
        let old_dir = dir.path().join(format!("{}", now / 1_000_000_000));
        fs::create_dir_all(&old_dir).unwrap();
        Index::create_in_dir(&old_dir, older.build()).unwrap();

        let store = LogStore::open_hourly(dir.path(), Retention::MAX_FILE_BYTES);
        let mut record = sample_log("a", now + 1, "new");
        record.attributes = vec![KeyValue::new("order_id", AttrValue::Int(7))];
        assert_eq!(store.apply(1, vec![record]).unwrap(), 1);
        store.commit().unwrap();
        let hour = (now / 1_000_000_000).to_string();
        assert_eq!(
            partition_names(dir.path()),
            vec![hour.clone(), format!("{hour}-1")]
        );
        // Written with the current schema: attribute_keys is searchable.
        let query = tantivy::query::TermQuery::new(
            tantivy::Term::from_field_text(store.fields().attribute_keys, "order_id"),
            tantivy::schema::IndexRecordOption::Basic,
        );
        let found: usize = store
            .partitions_between(0, u64::MAX)
            .iter()
            .map(|p| {
                p.searcher()
                    .search(&query, &tantivy::collector::Count)
                    .unwrap()
            })
            .sum();
        assert_eq!(found, 1);
    }

    #[test]
    fn a_partition_closes_at_its_size_and_retention_drops_the_oldest_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = SelfMetrics::new();
        let hour = 1_000 * HOUR;
        let seconds = hour / 1_000_000_000;
        let records = |seq: u64| {
            (0..100)
                .map(|i| sample_log("a", hour + seq * 1000 + i, &format!("record {seq} {i}")))
                .collect::<Vec<_>>()
        };
        // Every commit fills its partition.
        let open = || {
            LogStore::open(
                dir.path(),
                Duration::from_secs(3600),
                1,
                schema::HOT_WRITER_BYTES,
                metrics.clone(),
            )
        };
        let store = open().unwrap();
        store.apply(1, records(1)).unwrap();
        store.commit().unwrap();
        // Full: the hour's records go to a second partition from now on.
        assert_eq!(
            partition_names(dir.path()),
            [format!("{seconds}"), format!("{seconds}-1")]
        );
        store.apply(2, records(2)).unwrap();
        store.commit().unwrap();
        assert_eq!(store.partitions_between(hour, hour).len(), 3);
        assert_eq!(documents(&store), 200);
        assert_eq!(
            fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
            format!("{FORMAT_VERSION}\n")
        );

        // Reopened, the hour has all three; a size limit drops the oldest.
        drop(store);
        let store = open().unwrap();
        assert_eq!(store.partitions_between(hour, hour).len(), 3);
        assert_eq!(documents(&store), 200);
        let newer_bytes = dir_bytes(&dir.path().join(format!("{seconds}-1")))
            + dir_bytes(&dir.path().join(format!("{seconds}-2")));
        let retention = Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_bytes: newer_bytes,
        };
        assert_eq!(store.enforce_retention(retention, hour).unwrap(), 1);
        assert_eq!(
            partition_names(dir.path()),
            [format!("{seconds}-1"), format!("{seconds}-2")]
        );
        assert_eq!(documents(&store), 100);
        let counted = "strand_retention_dropped_files_total{reason=\"size\",signal=\"logs\"} 1";
        assert!(metrics.render().contains(counted), "{}", metrics.render());
        // The newest partition stays, however small the limit; records of
        // the hour keep going to it.
        let retention = Retention {
            max_bytes: 1,
            ..retention
        };
        assert_eq!(store.enforce_retention(retention, hour).unwrap(), 1);
        store.apply(3, records(3)).unwrap();
        store.commit().unwrap();
        assert_eq!(documents(&store), 100);
        assert_eq!(
            partition_names(dir.path()),
            [format!("{seconds}-2"), format!("{seconds}-3")]
        );
    }
}
