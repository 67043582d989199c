//! The metrics store as PromQL's series source: the evaluator (the
//! `strand-promql` crate) asks for series by matchers and time range, and
//! gets them in its own types; and, with the log store, counts logs for
//! `count_logs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use promql_parser::label::Matcher;
use strand_promql::{EvalError, Labels, Limits, LogField, Series, SeriesSource, Steps};

use crate::query::logs::{self, LogQuery, LogQueryError, Order};
use crate::query::pool::{Deadline, QueryRefused};
use crate::store::StoreError;
use crate::store::log_search::LogRecordStore;
use crate::store::sample_store::{SampleStore, Selection};

/// Reads the metrics store for the evaluator, for one query.
pub struct MetricSource {
    store: Arc<dyn SampleStore>,
    /// Most series one selector may load (`--query-max-series`), and most
    /// groups one `count_logs` may return.
    max_series: usize,
    /// Whether this is a quick attempt's source (see [`MetricSource::quick`]).
    quick: bool,
    /// A selection or a log count skipped damaged data: the answer may
    /// miss samples.
    damaged: AtomicBool,
    /// Where `count_logs` counts, and when the query's time is up (checked
    /// before each log partition); without it, `count_logs` fails.
    logs: Option<(Arc<dyn LogRecordStore>, Deadline)>,
}

impl MetricSource {
    pub fn new(store: Arc<dyn SampleStore>, max_series: usize) -> MetricSource {
        MetricSource {
            store,
            max_series,
            quick: false,
            damaged: AtomicBool::new(false),
            logs: None,
        }
    }

    /// A source for a query's quick attempt on an async worker (see
    /// `QueryPool::run_quick_first`): a selector may read only where the
    /// store bounds its series at `QUICK_MAX_SERIES` (and at `max_series`,
    /// as every source) without looking at them
    /// ([`SampleStore::select_bound`]), over at most `QUICK_MAX_WINDOW`,
    /// and no logs are counted; beyond that a selection fails, so that
    /// what it costs stays within the attempt's budget.
    pub fn quick(store: Arc<dyn SampleStore>, max_series: usize) -> MetricSource {
        MetricSource {
            quick: true,
            ..MetricSource::new(store, max_series.min(QUICK_MAX_SERIES))
        }
    }

    /// The same source with `count_logs` counting in `logs`, stopping at
    /// `deadline` (the query's own).
    pub fn with_logs(self, logs: Arc<dyn LogRecordStore>, deadline: Deadline) -> MetricSource {
        MetricSource {
            logs: Some((logs, deadline)),
            ..self
        }
    }

    /// Whether a selection so far skipped damaged data.
    pub fn damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }
}

/// Most series one selector of a quick attempt may read (look at).
const QUICK_MAX_SERIES: usize = 32;
/// Longest time range one selector of a quick attempt may read: the
/// samples of `QUICK_MAX_SERIES` series scraped every second over it
/// decode in about a millisecond.
const QUICK_MAX_WINDOW: Duration = Duration::from_secs(2 * 60 * 60);
/// A quick attempt's time budget and most samples held.
const QUICK_TIMEOUT: Duration = Duration::from_millis(1);
const QUICK_MAX_SAMPLES: usize = 100_000;

/// `limits` narrowed to a quick attempt's budget.
pub fn quick_limits(limits: &Limits) -> Limits {
    Limits {
        timeout: limits.timeout.min(QUICK_TIMEOUT),
        max_samples: limits.max_samples.min(QUICK_MAX_SAMPLES),
        ..limits.clone()
    }
}

/// `(start_ms, end_ms]` in nanoseconds as an inclusive range of log
/// timestamps (which are unsigned): empty (start after end) when it is all
/// before 1970.
fn nanos_between(start_ms: i64, end_ms: i64) -> (u64, u64) {
    let nanos = |ms: i64| i128::from(ms) * 1_000_000;
    let clamp = |n: i128| u64::try_from(n.max(0)).unwrap_or(u64::MAX);
    match nanos(end_ms) {
        end if end < 0 => (1, 0),
        end => (clamp(nanos(start_ms) + 1), clamp(end)),
    }
}

impl MetricSource {
    /// Refuses, in a quick attempt, a selection that may find more series
    /// or read a longer time range than the attempt may.
    fn check_quick(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> strand_promql::Result<()> {
        let small = || {
            end_ms.saturating_sub(start_ms) <= QUICK_MAX_WINDOW.as_millis() as i64
                && self
                    .store
                    .select_bound(matchers)
                    .is_some_and(|bound| bound <= self.max_series)
        };
        if self.quick && !small() {
            return Err(EvalError::Execution(
                "the selection is too large for a quick attempt".into(),
            ));
        }
        Ok(())
    }

    /// A store's selection as the evaluator's series, noting damage.
    fn series(
        &self,
        selected: Result<Selection, StoreError>,
    ) -> strand_promql::Result<Vec<Series>> {
        let selected = selected.map_err(|error| match error {
            StoreError::TooManySeries { .. } => EvalError::Execution(error.to_string()),
            error if error.is_unavailable() => EvalError::Unavailable(error.to_string()),
            error => EvalError::Storage(error.to_string()),
        })?;
        if selected.damaged {
            self.damaged.store(true, Ordering::Relaxed);
        }
        Ok(selected
            .series
            .into_iter()
            .map(|s| Series {
                labels: Labels::from(
                    s.labels
                        .into_iter()
                        .map(|l| (l.name.into(), l.value.into()))
                        .collect::<Vec<_>>(),
                ),
                samples: s
                    .samples
                    .into_iter()
                    .map(|p| (p.timestamp_ms, p.value))
                    .collect(),
            })
            .collect())
    }
}

impl SeriesSource for MetricSource {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> strand_promql::Result<Vec<Series>> {
        self.check_quick(matchers, start_ms, end_ms)?;
        self.series(
            self.store
                .select(matchers, start_ms, end_ms, self.max_series),
        )
    }

    fn select_steps(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        steps: Steps,
    ) -> strand_promql::Result<Vec<Series>> {
        self.check_quick(matchers, start_ms, end_ms)?;
        self.series(
            self.store
                .select_steps(matchers, start_ms, end_ms, self.max_series, steps),
        )
    }

    fn count_logs(
        &self,
        query: &str,
        window_ms: i64,
        by: &[LogField],
        at_ms: i64,
    ) -> strand_promql::Result<Vec<(Vec<String>, u64)>> {
        let Some((store, deadline)) = &self.logs else {
            return Err(EvalError::no_log_store());
        };
        let (start_nanos, end_nanos) = nanos_between(at_ms.saturating_sub(window_ms), at_ms);
        let query = LogQuery {
            text: query.to_string(),
            start_nanos,
            end_nanos,
            order: Order::NewestFirst,
            deadline: *deadline,
        };
        let counted = logs::count_by(&**store, &query, by, self.max_series).map_err(eval_error)?;
        if counted.too_many {
            return Err(EvalError::Execution(format!(
                "count_logs would return more than {} groups (--query-max-series): group by fewer \
                 or less varied fields, or narrow the log query",
                self.max_series
            )));
        }
        if counted.damaged {
            self.damaged.store(true, Ordering::Relaxed);
        }
        Ok(counted.groups)
    }
}

/// A log query's failure as the evaluator reports it: a query it cannot
/// read is `bad_data`, a deadline passed a timeout.
fn eval_error(error: LogQueryError) -> EvalError {
    match error {
        LogQueryError::Syntax(why) => EvalError::Parse(why),
        LogQueryError::Refused(QueryRefused::Timeout(_)) => EvalError::Timeout,
        LogQueryError::Refused(refused) => EvalError::Execution(refused.to_string()),
        LogQueryError::Store(error) if error.is_unavailable() => {
            EvalError::Unavailable(error.to_string())
        }
        LogQueryError::Store(error) => EvalError::Storage(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::metrics::tests::{ingest, matcher, open_store, series};

    #[test]
    fn a_quick_source_reads_a_few_series_over_a_short_range_and_refuses_more() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let batch = (0..2 * QUICK_MAX_SERIES)
            .map(|job| series("up", &job.to_string(), &[(1_000, 1.0)]))
            .collect();
        ingest(&store, batch);
        let store: Arc<dyn SampleStore> = Arc::new(store);
        let quick = MetricSource::quick(store.clone(), 1_000);
        let full = MetricSource::new(store, 1_000);
        let one = [matcher("__name__", "up"), matcher("job", "3")];
        let every = [matcher("__name__", "up")];
        let longest = QUICK_MAX_WINDOW.as_millis() as i64;

        assert_eq!(quick.select(&one, 0, 2_000).unwrap().len(), 1);
        assert_eq!(quick.select(&one, 2_000 - longest, 2_000).unwrap().len(), 1);
        // More series, no equality matcher to bound them, a longer range or
        // a log count: refused by the quick source, answered by the full one.
        assert!(quick.select(&every, 0, 2_000).is_err());
        let Ok(promql_parser::parser::Expr::VectorSelector(by_regex)) =
            strand_promql::parse(r#"{job=~"3"}"#)
        else {
            panic!("a selector parses as one");
        };
        let unbounded = by_regex.matchers.matchers;
        assert!(quick.select(&unbounded, 0, 2_000).is_err());
        assert_eq!(full.select(&unbounded, 0, 2_000).unwrap().len(), 1);
        assert!(quick.select(&one, 1_999 - longest, 2_000).is_err());
        assert!(quick.count_logs("error", 1_000, &[], 2_000).is_err());
        assert_eq!(
            full.select(&every, 0, 2_000).unwrap().len(),
            2 * QUICK_MAX_SERIES
        );
        assert_eq!(full.select(&one, 1_999 - longest, 2_000).unwrap().len(), 1);
    }
}
