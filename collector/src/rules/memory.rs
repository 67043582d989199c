//! A series set in memory: what rule unit tests read and write, as
//! `promtool test rules` keeps its input series and rule outputs.

use std::collections::BTreeMap;
use std::sync::Mutex;

use promql_parser::label::Matcher;
use strand_promql::{Labels, Series, SeriesSource};

use crate::model::{Label, SeriesSamples};

/// Samples of a series as (milliseconds, value), in time order.
type Points = Vec<(i64, f64)>;

/// Series by label set, each with its samples in time order. Appending
/// takes `&self`, so a rule group can write into the set it reads, as rules
/// see what the rules before them wrote.
#[derive(Default)]
pub struct MemorySeries {
    series: Mutex<BTreeMap<Vec<Label>, Points>>,
}

impl MemorySeries {
    /// Adds samples; a series' samples are kept sorted by time, and a
    /// sample at a time the series already has replaces it.
    pub fn append(&self, batch: Vec<SeriesSamples>) {
        let mut all = self.series.lock().expect("not poisoned");
        for series in batch {
            let points = all.entry(series.labels).or_default();
            for sample in series.samples {
                match points.binary_search_by_key(&sample.timestamp_ms, |&(t, _)| t) {
                    Ok(at) => points[at].1 = sample.value,
                    Err(at) => points.insert(at, (sample.timestamp_ms, sample.value)),
                }
            }
        }
    }
}

impl SeriesSource for MemorySeries {
    fn select(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> strand_promql::Result<Vec<Series>> {
        Ok(self
            .series
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(labels, _)| {
                matchers.iter().all(|m| {
                    m.is_match(
                        labels
                            .iter()
                            .find(|l| l.name == m.name)
                            .map_or("", |l| &*l.value),
                    )
                })
            })
            .map(|(labels, points)| Series {
                labels: Labels::from(
                    labels
                        .iter()
                        .map(|l| (l.name.to_string(), l.value.to_string()))
                        .collect::<Vec<_>>(),
                ),
                samples: points
                    .iter()
                    .filter(|(t, _)| (start_ms..=end_ms).contains(t))
                    .copied()
                    .collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect())
    }
}
