//! The span store.
//!
//! Spans land in an in-memory head (queryable at once) as soon as the WAL has
//! them. A flush moves the whole head to disk: traces sorted by id, packed into
//! zstd blocks appended to segment files together with the flush's search
//! tables; then sled keys map each trace id to its blocks, and one sled batch
//! adds a key per search table, names and dependency counts and records the
//! WAL sequence number the flush covers. That batch is the commit point: after
//! it the WAL up to that number can go; before it a crash replays the WAL, and
//! on open the uncommitted block bytes are cut off and the trace keys written
//! for them deleted.
//!
//! A trace whose spans arrived across several flushes simply has several block
//! references; reads merge them with the head.

mod blocks;
mod deps;
mod index;
mod search;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::model::{IdMap, Span, SpanKind, TraceId};
use crate::store::{Result, StoreError};
use crate::telemetry::Metrics;

pub use search::{Candidates, ServiceEntry};

use blocks::{BlockRef, Segments};
use deps::DependencyTracker;
pub use deps::Edge;

/// Uncompressed bytes of span tables per block: large enough to compress well,
/// small enough that reading one trace decompresses little.
const BLOCK_TARGET_BYTES: usize = 512 << 10;

/// Calls from one service to another, summed over a time range;
/// `error_count` counts the failed ones (see [`Edge::failed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependencyLink {
    pub parent: String,
    pub child: String,
    pub call_count: u64,
    pub error_count: u64,
}

#[derive(Default)]
struct Head {
    traces: IdMap<TraceId, Vec<Span>>,
    spans: usize,
    /// Highest WAL sequence number applied.
    max_seq: u64,
}

/// A head being flushed: still visible to queries until its index is committed.
struct Flushing {
    traces: IdMap<TraceId, Vec<Span>>,
    spans: usize,
}

/// service -> operation -> span kinds seen.
#[derive(Default)]
struct Names {
    operations: BTreeMap<String, BTreeMap<String, BTreeSet<SpanKind>>>,
}

impl Names {
    fn contains(&self, service: &str, operation: &str, kind: SpanKind) -> bool {
        self.operations
            .get(service)
            .and_then(|ops| ops.get(operation))
            .is_some_and(|kinds| kinds.contains(&kind))
    }

    fn insert(&mut self, service: &str, operation: &str, kind: SpanKind) {
        self.operations
            .entry(service.to_string())
            .or_default()
            .entry(operation.to_string())
            .or_default()
            .insert(kind);
    }
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
    db: sled::Db,
    segments: Segments,
    head: Mutex<Head>,
    flushing: RwLock<Option<Arc<Flushing>>>,
    names: RwLock<Names>,
    flush_state: Mutex<FlushState>,
    metrics: Metrics,
}

impl TraceStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, metrics: Metrics) -> Result<TraceStore> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir.join("index"))
            .cache_capacity(64 << 20)
            .flush_every_ms(None)
            .open()?;
        match db.get(index::META_FORMAT)? {
            None => {
                db.insert(index::META_FORMAT, &index::FORMAT_VERSION.to_be_bytes())?;
            }
            Some(v) if v.as_ref() == index::FORMAT_VERSION.to_be_bytes() => {}
            Some(_) => {
                return Err(StoreError::Corrupt(
                    "trace index was written by an incompatible version of strand".into(),
                ));
            }
        }
        let mut committed = HashMap::new();
        for entry in db.scan_prefix(index::META_SEGMENT_PREFIX) {
            let (key, value) = entry?;
            let id = key[index::META_SEGMENT_PREFIX.len()..]
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("segment key".into()))?;
            committed.insert(id, index::decode_u64(&value)?);
        }
        let segments = Segments::open(&dir.join("blocks"), &committed)?;
        let next_block = match db.get(index::META_NEXT_BLOCK)? {
            Some(v) => index::decode_u64(&v)?,
            None => 0,
        };
        drop_uncommitted_trace_keys(&db, next_block)?;

        let mut names = Names::default();
        for entry in db.scan_prefix([index::OPERATIONS]) {
            let (key, _) = entry?;
            if let Some((service, kind, operation)) = index::parse_operation_key(&key) {
                names.insert(&service, &operation, kind);
            }
        }

        let store = TraceStore {
            db,
            segments,
            head: Mutex::new(Head::default()),
            flushing: RwLock::new(None),
            names: RwLock::new(names),
            flush_state: Mutex::new(FlushState {
                next_block,
                dependencies: DependencyTracker::default(),
            }),
            metrics,
        };
        store.update_size_metric();
        Ok(store)
    }

    /// The WAL sequence number up to which everything is in blocks.
    pub fn checkpoint(&self) -> Result<u64> {
        match self.db.get(index::META_CHECKPOINT)? {
            Some(v) => index::decode_u64(&v),
            None => Ok(0),
        }
    }

    /// Adds durable spans to the head. Called in WAL sequence order.
    pub fn apply(&self, seq: u64, spans: Vec<Span>) {
        self.note_names(&spans);
        let mut head = self.head.lock().expect("not poisoned");
        head.spans += spans.len();
        head.max_seq = head.max_seq.max(seq);
        for span in spans {
            head.traces.entry(span.trace_id).or_default().push(span);
        }
        self.metrics.head_spans.set(head.spans as i64);
    }

    /// Spans held in memory (head and any flush in progress): what ingest
    /// checks to keep memory bounded.
    pub fn buffered_spans(&self) -> usize {
        let head = self.head.lock().expect("not poisoned").spans;
        let flushing = self
            .flushing
            .read()
            .expect("not poisoned")
            .as_ref()
            .map_or(0, |f| f.spans);
        head + flushing
    }

    fn note_names(&self, spans: &[Span]) {
        let new: HashSet<(&str, &str, SpanKind)> = {
            let names = self.names.read().expect("not poisoned");
            spans
                .iter()
                .filter(|s| !names.contains(s.service(), &s.name, s.kind))
                .map(|s| (s.service(), s.name.as_str(), s.kind))
                .collect()
        };
        if new.is_empty() {
            return;
        }
        let mut names = self.names.write().expect("not poisoned");
        for (service, operation, kind) in new {
            names.insert(service, operation, kind);
        }
    }

    /// Moves the head to span blocks and commits their index. Returns what
    /// the flush covered, or `None` when there was nothing to flush.
    pub fn flush(&self) -> Result<Option<Flushed>> {
        let mut state = self.flush_state.lock().expect("not poisoned");
        let started = Instant::now();
        let (snapshot, max_seq) = {
            let mut head = self.head.lock().expect("not poisoned");
            if head.traces.is_empty() {
                return Ok(None);
            }
            let head = std::mem::take(&mut *head);
            let snapshot = Arc::new(Flushing {
                traces: head.traces,
                spans: head.spans,
            });
            *self.flushing.write().expect("not poisoned") = Some(snapshot.clone());
            (snapshot, head.max_seq)
        };
        self.metrics.head_spans.set(0);

        let result = self.write_snapshot(&mut state, &snapshot, max_seq);
        drop(snapshot);
        match &result {
            Ok(_) => {
                *self.flushing.write().expect("not poisoned") = None;
                self.metrics
                    .store_flush_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.update_size_metric();
            }
            Err(error) => {
                // Put the spans back so nothing acknowledged is lost; the next
                // flush retries them.
                self.metrics.store_flush_errors.inc();
                tracing::error!(%error, "SpanStoreFlushError");
                let flushing = self.flushing.write().expect("not poisoned").take();
                if let Some(flushing) = flushing {
                    let mut head = self.head.lock().expect("not poisoned");
                    let flushing = Arc::try_unwrap(flushing).unwrap_or_else(|shared| Flushing {
                        traces: shared.traces.clone(),
                        spans: shared.spans,
                    });
                    head.spans += flushing.spans;
                    head.max_seq = head.max_seq.max(max_seq);
                    for (trace_id, mut spans) in flushing.traces {
                        head.traces.entry(trace_id).or_default().append(&mut spans);
                    }
                    self.metrics.head_spans.set(head.spans as i64);
                }
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
        snapshot: &Flushing,
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
                encoded_blocks.push(blocks::encode_block(&current));
                block_traces.push(current.drain(..).map(|(id, _)| id).collect());
                current_bytes = 0;
            }
        }
        if !current.is_empty() {
            encoded_blocks.push(blocks::encode_block(&current));
            block_traces.push(current.drain(..).map(|(id, _)| id).collect());
        }
        let tables = search::build_tables(
            trace_ids
                .iter()
                .map(|id| (*id, snapshot.traces[*id].as_slice())),
        );
        let block_count = encoded_blocks.len();
        encoded_blocks.extend(tables.iter().map(|t| t.bytes.clone()));
        let (refs, segment, segment_len) = self.segments.append(&encoded_blocks)?;

        // One key per trace cannot go in the commit batch: sled keeps large
        // batches in memory for good. They are written first, under a
        // reservation of their block numbers that `open` uses to delete them
        // if the commit below never happens.
        let first_seq = state.next_block;
        self.db.insert(
            index::META_RESERVED_BLOCKS,
            &(first_seq + refs.len() as u64).to_be_bytes(),
        )?;
        for (block_ref, ids) in refs.iter().zip(&block_traces) {
            let block_seq = state.next_block;
            state.next_block += 1;
            for trace_id in ids {
                self.db.insert(
                    index::trace_block_key(trace_id, block_seq),
                    &block_ref.to_bytes(),
                )?;
            }
        }

        let mut batch = sled::Batch::default();
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

        let names: HashSet<_> = snapshot
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
        let mut counts: HashMap<Vec<u8>, (u64, u64)> = HashMap::new();
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

        batch.insert(index::META_CHECKPOINT, &max_seq.to_be_bytes());
        batch.insert(index::META_NEXT_BLOCK, &state.next_block.to_be_bytes());
        batch.insert(index::segment_key(segment), &segment_len.to_be_bytes());
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(edges)
    }

    /// Every span of a trace, from blocks and memory, in start order; empty when
    /// the trace is unknown.
    pub fn trace(&self, trace_id: &TraceId) -> Result<Vec<Span>> {
        let mut spans = Vec::new();
        for entry in self.db.scan_prefix(index::trace_blocks_prefix(trace_id)) {
            let (_, value) = entry?;
            let block = self.segments.read(BlockRef::from_bytes(&value)?)?;
            spans.extend(blocks::decode_trace(&block, trace_id)?);
        }
        if let Some(flushing) = self.flushing.read().expect("not poisoned").as_ref()
            && let Some(buffered) = flushing.traces.get(trace_id)
        {
            spans.extend(buffered.iter().cloned());
        }
        if let Some(buffered) = self.head.lock().expect("not poisoned").traces.get(trace_id) {
            spans.extend(buffered.iter().cloned());
        }
        // A span sent twice (a client retrying an export) is shown once.
        let mut seen = HashSet::new();
        spans.retain(|s| seen.insert(s.span_id));
        spans.sort_by_key(|s| (s.start_unix_nano, s.span_id));
        Ok(spans)
    }

    /// Ids of in-memory traces with a span that satisfies `matches`.
    pub fn buffered_traces_matching(&self, matches: impl Fn(&Span) -> bool) -> Vec<TraceId> {
        let mut ids = HashSet::new();
        if let Some(flushing) = self.flushing.read().expect("not poisoned").as_ref() {
            ids.extend(
                flushing
                    .traces
                    .iter()
                    .filter(|(_, spans)| spans.iter().any(&matches))
                    .map(|(id, _)| *id),
            );
        }
        let head = self.head.lock().expect("not poisoned");
        ids.extend(
            head.traces
                .iter()
                .filter(|(_, spans)| spans.iter().any(&matches))
                .map(|(id, _)| *id),
        );
        ids.into_iter().collect()
    }

    /// Search-index entries of `service` whose spans start in `[start, end]`
    /// (nanoseconds), newest first. Covers flushed data only; see
    /// [`TraceStore::buffered_traces_matching`] for the rest.
    pub fn search_candidates(
        &self,
        service: &str,
        start_nanos: u64,
        end_nanos: u64,
    ) -> Candidates<'_> {
        Candidates::new(&self.db, &self.segments, service, start_nanos, end_nanos)
    }

    /// Services that sent spans, sorted.
    pub fn services(&self) -> Vec<String> {
        let names = self.names.read().expect("not poisoned");
        names.operations.keys().cloned().collect()
    }

    /// Operations (span names) of a service with their span kinds, sorted.
    pub fn operations(&self, service: &str) -> Vec<(String, SpanKind)> {
        let names = self.names.read().expect("not poisoned");
        names
            .operations
            .get(service)
            .into_iter()
            .flatten()
            .flat_map(|(name, kinds)| kinds.iter().map(|kind| (name.clone(), *kind)))
            .collect()
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

    /// Bytes on disk: span blocks and index.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.disk_bytes() + self.db.size_on_disk().unwrap_or(0)
    }

    fn update_size_metric(&self) {
        self.metrics
            .store_size_bytes
            .with_label_values(&["traces"])
            .set(self.disk_bytes() as i64);
    }
}

/// Deletes the trace keys of a flush that crashed before its commit: they
/// point at block bytes that were cut off, and their block numbers are about
/// to be used again. A full scan, but only after such a crash.
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
        let seq = index::trace_key_block_seq(&key)?;
        if (committed_next_block..reserved).contains(&seq) {
            db.remove(key)?;
            dropped += 1;
        }
    }
    db.insert(
        index::META_RESERVED_BLOCKS,
        &committed_next_block.to_be_bytes(),
    )?;
    db.flush()?;
    tracing::warn!(dropped, "SpanIndexUncommittedKeysDropped");
    Ok(())
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

    fn span(trace: u8, id: u8, parent: Option<u8>, service: &str) -> Span {
        let mut span = sample_span(trace, id, service);
        span.parent_span_id = parent.map(|p| [p; 8]);
        span
    }

    #[test]
    fn spans_are_queryable_before_and_after_flush_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
        store.apply(
            1,
            vec![span(1, 1, None, "gateway"), span(2, 1, None, "order")],
        );
        assert_eq!(store.trace(&[1; 16]).unwrap().len(), 1);

        assert_eq!(store.flush().unwrap().map(|f| f.through_seq), Some(1));
        assert!(store.flush().unwrap().is_none());
        // The rest of trace 1 arrives in a later batch.
        store.apply(2, vec![span(1, 2, Some(1), "order")]);
        let trace = store.trace(&[1; 16]).unwrap();
        assert_eq!(trace.len(), 2);
        store.flush().unwrap();
        drop(store);

        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
        assert_eq!(store.checkpoint().unwrap(), 2);
        let trace = store.trace(&[1; 16]).unwrap();
        assert_eq!(trace.len(), 2);
        assert_eq!(trace[1].parent_span_id, Some([1; 8]));
        assert!(store.trace(&[9; 16]).unwrap().is_empty());
        assert_eq!(store.services(), vec!["gateway", "order"]);
        assert_eq!(store.operations("order").len(), 2);
    }

    #[test]
    fn dependencies_are_counted_across_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
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
        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
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
            .search_candidates("order", 2000, 4000)
            .map(|c| c.unwrap().trace_id[0])
            .collect();
        assert_eq!(found, vec![4, 3, 2]);
    }

    #[test]
    fn search_candidates_merge_flushes_in_start_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
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
            .search_candidates("order", 0, 8000)
            .map(|c| c.unwrap().trace_id[0])
            .collect();
        assert_eq!(found, vec![5, 4, 3, 1]);
        assert!(store.search_candidates("payment", 0, 8000).next().is_none());
    }

    #[test]
    fn trace_keys_of_an_uncommitted_flush_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
        store.apply(1, vec![span(1, 1, None, "order")]);
        store.flush().unwrap();
        let next_block =
            index::decode_u64(&store.db.get(index::META_NEXT_BLOCK).unwrap().unwrap()).unwrap();
        // What a flush that crashed after writing its trace keys leaves.
        store
            .db
            .insert(index::META_RESERVED_BLOCKS, &(next_block + 1).to_be_bytes())
            .unwrap();
        let stale = index::trace_block_key(&[2; 16], next_block);
        store.db.insert(&stale, &[0u8; 16]).unwrap();
        store.db.flush().unwrap();
        drop(store);

        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
        assert!(store.db.get(&stale).unwrap().is_none());
        assert!(store.trace(&[2; 16]).unwrap().is_empty());
        assert_eq!(store.trace(&[1; 16]).unwrap().len(), 1);
    }

    #[test]
    fn many_traces_span_several_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let store = TraceStore::open(dir.path(), Metrics::new()).unwrap();
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
        let refs: Vec<_> = store
            .db
            .scan_prefix([index::TRACE_BLOCKS])
            .map(|e| e.unwrap().1)
            .collect();
        assert_eq!(refs.len(), 256, "each trace is in exactly one block");
        let distinct: HashSet<_> = refs.iter().collect();
        assert!(distinct.len() > 1, "traces were cut into several blocks");
        for trace in [0u8, 77, 255] {
            assert_eq!(store.trace(&[trace; 16]).unwrap().len(), 40);
        }
    }
}
