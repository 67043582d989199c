//! A page of matches in time order without ranking every match.
//!
//! Ranking all matches of a common term by their timestamp cost a
//! fast-field look per match: at 50M lines, `customer` matched 25M
//! records, and a page of 100 took over 600 milliseconds.
//! Records arrive roughly in time order, so documents that are close in a
//! segment are close in time. Each segment is therefore cut into runs of
//! [`RUN_DOCS`] documents, and each run's least and greatest timestamp is
//! noted once per segment (segments never change). A page walks the runs
//! best first and stops as soon as no run left can hold a record that
//! would make the page; runs wholly outside the query's time range are
//! never read. The answer is exactly what ranking every match gives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use tantivy::columnar::ColumnIndex;
use tantivy::index::SegmentId;
use tantivy::query::{EnableScoring, Query, Scorer};
use tantivy::{DocAddress, DocId, DocSet, Searcher, SegmentOrdinal, SegmentReader, TERMINATED};

use super::search::SortKeys;
use crate::store::log_search::Order;

/// Documents per run: small enough that a page of a common term reads
/// one or two runs' matches, large enough that a segment of 10M documents
/// has only ~150 runs to note and sort.
const RUN_DOCS: DocId = 1 << 16;

/// Documents `[first, end)` of a segment, whose timestamps lie in
/// `[min, max]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    first: DocId,
    end: DocId,
    min: u64,
    max: u64,
}

/// The runs of each segment of one partition, noted on a segment's first
/// search (see the module docs).
pub(super) struct TimeRuns {
    run_docs: DocId,
    by_segment: Mutex<HashMap<SegmentId, Arc<[Run]>>>,
}

impl Default for TimeRuns {
    fn default() -> TimeRuns {
        TimeRuns::with_run_docs(RUN_DOCS)
    }
}

/// Where a page's walk is in one segment.
struct SegmentWalk {
    keys: SortKeys,
    /// The segment's matches, at the end of the last run read.
    matches: Box<dyn Scorer>,
    /// Not moved since it was made: at its end, nothing in the segment matches.
    fresh: bool,
}

/// What a page asks of one searcher.
pub(super) struct PageRequest<'a> {
    pub query: &'a dyn Query,
    pub start_nanos: u64,
    pub end_nanos: u64,
    pub order: Order,
    pub wanted: usize,
    /// Only keys (see [`Order::key`]) below this one: the cursor's.
    pub below: Option<(u64, u64)>,
}

impl TimeRuns {
    fn with_run_docs(run_docs: DocId) -> TimeRuns {
        TimeRuns {
            run_docs,
            by_segment: Mutex::new(HashMap::new()),
        }
    }

    /// The `wanted` matches with the highest keys, best first, with their
    /// keys.
    pub fn top(
        &self,
        searcher: &Searcher,
        request: &PageRequest,
    ) -> tantivy::Result<Vec<((u64, u64), DocAddress)>> {
        let order = request.order;
        let mut runs = Vec::new();
        for (ord, segment) in searcher.segment_readers().iter().enumerate() {
            for run in self.runs(searcher, segment)?.iter() {
                if run.max < request.start_nanos || request.end_nanos < run.min {
                    continue;
                }
                // The best key a record of the run can have.
                let best = match order {
                    Order::NewestFirst => (run.max, u64::MAX),
                    Order::OldestFirst => order.key((run.min, 0)),
                };
                let best = request.below.map_or(best, |below| best.min(below));
                runs.push((best, ord as SegmentOrdinal, *run));
            }
        }
        runs.sort_unstable_by_key(|(best, ..)| Reverse(*best));
        let weight = request
            .query
            .weight(EnableScoring::disabled_from_searcher(searcher))?;
        // The best `wanted` so far, the worst of them on top.
        let mut page: BinaryHeap<Reverse<((u64, u64), DocAddress)>> = BinaryHeap::new();
        let mut walks: Vec<Option<SegmentWalk>> = Vec::new();
        walks.resize_with(searcher.segment_readers().len(), || None);
        for (best, ord, run) in runs {
            let full = page.len() == request.wanted;
            if full
                && page
                    .peek()
                    .is_some_and(|Reverse((worst, _))| *worst >= best)
            {
                break;
            }
            let segment = searcher.segment_reader(ord);
            let walk = match &mut walks[ord as usize] {
                Some(walk) => walk,
                empty => empty.insert(SegmentWalk {
                    keys: SortKeys::new(segment),
                    matches: weight.scorer(segment, 1.0)?,
                    fresh: true,
                }),
            };
            if walk.fresh && walk.matches.doc() == TERMINATED {
                // Nothing in the segment matches: none of its runs needs a look.
                continue;
            }
            if walk.matches.doc() > run.first {
                // Past the run's start: a scorer only moves forward.
                walk.matches = weight.scorer(segment, 1.0)?;
            }
            walk.fresh = false;
            let alive = segment.alive_bitset();
            let mut doc = walk.matches.seek(run.first.max(walk.matches.doc()));
            while doc != TERMINATED && doc < run.end {
                if alive.is_none_or(|alive| alive.is_alive(doc)) {
                    let key = order.key(walk.keys.key(doc));
                    let wanted = request.below.is_none_or(|below| key < below)
                        && (page.len() < request.wanted
                            || page.peek().is_some_and(|Reverse((worst, _))| key > *worst));
                    if wanted {
                        page.push(Reverse((key, DocAddress::new(ord, doc))));
                        if page.len() > request.wanted {
                            page.pop();
                        }
                    }
                }
                doc = walk.matches.advance();
            }
        }
        let mut page: Vec<_> = page.into_iter().map(|Reverse(hit)| hit).collect();
        page.sort_unstable_by_key(|(key, _)| Reverse(*key));
        Ok(page)
    }

    /// The runs of `segment`, noted now if this is its first search. Runs
    /// of segments `searcher` no longer has (merged away) are forgotten.
    fn runs(&self, searcher: &Searcher, segment: &SegmentReader) -> tantivy::Result<Arc<[Run]>> {
        let id = segment.segment_id();
        if let Some(runs) = self.by_segment.lock().expect("not poisoned").get(&id) {
            return Ok(runs.clone());
        }
        let runs: Arc<[Run]> = note_runs(segment, self.run_docs)?.into();
        let mut by_segment = self.by_segment.lock().expect("not poisoned");
        by_segment.retain(|id, _| {
            searcher
                .segment_readers()
                .iter()
                .any(|segment| segment.segment_id() == *id)
        });
        by_segment.insert(id, runs.clone());
        Ok(runs)
    }
}

/// Reads a segment's timestamp column once, `run_docs` documents a run.
fn note_runs(segment: &SegmentReader, run_docs: DocId) -> tantivy::Result<Vec<Run>> {
    let timestamps = segment.fast_fields().u64("timestamp")?;
    let max_doc = segment.max_doc();
    let mut runs = Vec::with_capacity(max_doc.div_ceil(run_docs) as usize);
    let mut values = vec![0; run_docs as usize];
    for first in (0..max_doc).step_by(run_docs as usize) {
        let end = first.saturating_add(run_docs).min(max_doc);
        let values = &mut values[..(end - first) as usize];
        if let ColumnIndex::Full = timestamps.index {
            // Every document has one value, in document order: read in bulk.
            timestamps.values.get_range(u64::from(first), values);
        } else {
            // A record without one sorts as timestamp 0 (see `SortKeys`).
            for (value, doc) in values.iter_mut().zip(first..end) {
                *value = timestamps.first(doc).unwrap_or(0);
            }
        }
        let (Some(&min), Some(&max)) = (values.iter().min(), values.iter().max()) else {
            continue;
        };
        runs.push(Run {
            first,
            end,
            min,
            max,
        });
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use tantivy::Term;
    use tantivy::collector::DocSetCollector;
    use tantivy::query::{AllQuery, BooleanQuery, Occur, RangeQuery, TermQuery};
    use tantivy::schema::IndexRecordOption;

    use super::*;
    use crate::codec::tests::sample_log;
    use crate::config::Retention;
    use crate::store::logs::LogStore;

    /// Every match ranked: what a page must equal.
    fn ranked(searcher: &Searcher, request: &PageRequest) -> Vec<((u64, u64), DocAddress)> {
        let mut all: Vec<_> = searcher
            .search(request.query, &DocSetCollector)
            .unwrap()
            .into_iter()
            .map(|address| {
                let keys = SortKeys::new(searcher.segment_reader(address.segment_ord));
                (request.order.key(keys.key(address.doc_id)), address)
            })
            .filter(|(key, _)| request.below.is_none_or(|below| *key < below))
            .collect();
        all.sort_unstable_by_key(|(key, _)| Reverse(*key));
        all.truncate(request.wanted);
        all
    }

    #[test]
    fn pages_walked_run_by_run_are_the_pages_of_every_match_ranked() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open_hourly(dir.path(), Retention::MAX_FILE_BYTES);
        let hour = 3_600 * 1_000_000_000u64;
        // Mostly in time order, with stragglers from far back and ahead and
        // ties, over several commits (segments).
        for commit in 0..5u64 {
            let records = (0..120u64)
                .map(|i| {
                    let n = commit * 120 + i;
                    let time = match n % 17 {
                        0 => 3 * n % 50,
                        5 => 600 - n / 2,
                        9 => n - n % 4,
                        _ => n,
                    };
                    let service = ["payment", "order", "inventory"][(n % 3) as usize];
                    sample_log(service, 1_000 * hour + time * 1_000_000, "line")
                })
                .collect();
            store.apply(commit + 1, records).unwrap();
            store.commit().unwrap();
        }
        let partitions = store.partitions_between(0, u64::MAX);
        assert_eq!(partitions.len(), 1);
        let searcher = partitions[0].searcher();
        assert!(searcher.segment_readers().len() > 1);
        let payment = TermQuery::new(
            Term::from_field_text(store.fields().service, "payment"),
            IndexRecordOption::Basic,
        );
        let nowhere = TermQuery::new(
            Term::from_field_text(store.fields().service, "nowhere"),
            IndexRecordOption::Basic,
        );
        let at = |ms: u64| 1_000 * hour + ms * 1_000_000;
        let timestamp = store.fields().timestamp;
        let runs = TimeRuns::with_run_docs(16);
        let mut pages = 0;
        for query in [&AllQuery as &dyn Query, &payment, &nowhere] {
            for order in [Order::NewestFirst, Order::OldestFirst] {
                for wanted in [1, 7, 100, 1_000] {
                    for (start_nanos, end_nanos) in [(0, u64::MAX), (at(100), at(400))] {
                        // As `search::compile` makes it: the range in the query.
                        let range = RangeQuery::new(
                            Bound::Included(Term::from_field_u64(timestamp, start_nanos)),
                            Bound::Included(Term::from_field_u64(timestamp, end_nanos)),
                        );
                        let query = BooleanQuery::new(vec![
                            (Occur::Must, query.box_clone()),
                            (Occur::Must, Box::new(range)),
                        ]);
                        let whole = PageRequest {
                            query: &query,
                            start_nanos,
                            end_nanos,
                            order,
                            wanted,
                            below: None,
                        };
                        let page = runs.top(&searcher, &whole).unwrap();
                        assert_eq!(page, ranked(&searcher, &whole), "{order:?} {wanted}");
                        pages += usize::from(!page.is_empty());
                        // The page after each of its records, as a cursor would ask.
                        for (below, _) in page.iter().step_by(3) {
                            let after = PageRequest {
                                below: Some(*below),
                                ..whole
                            };
                            let page = runs.top(&searcher, &after).unwrap();
                            assert_eq!(page, ranked(&searcher, &after), "{order:?} {below:?}");
                        }
                    }
                }
            }
        }
        assert_eq!(pages, 32, "only the query matching nothing finds nothing");
    }
}
