//! The metrics store as PromQL's series source: the evaluator (the
//! `strand-promql` crate) asks for series by matchers and time range, and
//! gets them in its own types.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use promql_parser::label::Matcher;
use strand_promql::{EvalError, Labels, Series, SeriesSource};

use crate::store::StoreError;
use crate::store::metrics::MetricStore;

/// Reads the metrics store for the evaluator, for one query.
pub struct MetricSource {
    store: Arc<MetricStore>,
    /// Most series one selector may load (`--query-max-series`).
    max_series: usize,
    /// A selection skipped a damaged chunk: the answer may miss samples.
    damaged: AtomicBool,
}

impl MetricSource {
    pub fn new(store: Arc<MetricStore>, max_series: usize) -> MetricSource {
        MetricSource {
            store,
            max_series,
            damaged: AtomicBool::new(false),
        }
    }

    /// Whether a selection so far skipped damaged data.
    pub fn damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }
}

impl SeriesSource for MetricSource {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> strand_promql::Result<Vec<Series>> {
        let selected = self
            .store
            .select(matchers, start_ms, end_ms, self.max_series)
            .map_err(|error| match error {
                StoreError::TooManySeries { .. } => EvalError::Execution(error.to_string()),
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
                        .map(|l| (l.name, l.value))
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
