//! The metrics store as PromQL's series source: the evaluator (the
//! `strand-promql` crate) asks for series by matchers and time range, and
//! gets them in its own types; and, with the log store, counts logs for
//! `count_logs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use promql_parser::label::Matcher;
use strand_promql::{EvalError, Labels, LogField, Series, SeriesSource, Steps};

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
            damaged: AtomicBool::new(false),
            logs: None,
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
