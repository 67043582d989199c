//! The metrics store as PromQL's series source: the evaluator (the
//! `strand-promql` crate) asks for series by matchers and time range, and
//! gets them in its own types.

use std::sync::Arc;

use promql_parser::label::Matcher;
use strand_promql::{Labels, Series, SeriesSource};

use crate::store::metrics::MetricStore;

/// Reads the metrics store for the evaluator.
pub struct MetricSource(Arc<MetricStore>);

impl MetricSource {
    pub fn new(store: Arc<MetricStore>) -> MetricSource {
        MetricSource(store)
    }
}

impl SeriesSource for MetricSource {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Series>, String> {
        let selected = self
            .0
            .select(matchers, start_ms, end_ms)
            .map_err(|e| e.to_string())?;
        Ok(selected
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
