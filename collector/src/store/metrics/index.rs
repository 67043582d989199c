//! Series ids and the inverted index. A label set gets a dense id the first
//! time it is seen; postings (label name -> value -> ids) narrow a selection,
//! then every matcher is checked against the candidates' labels.
//!
//! Label sets are stored once, interned: each distinct name and value is
//! one symbol, and a series holds only its (name, value) symbol pairs, a
//! few dozen bytes where owned strings took hundreds.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasher;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use promql_parser::label::{MatchOp, Matcher};

use crate::model::{Label, METRIC_NAME_LABEL};

/// Every distinct label name and value, once, numbered.
#[derive(Default)]
struct Symbols {
    ids: HashMap<Arc<str>, u32, FxBuildHasher>,
    strings: Vec<Arc<str>>,
}

impl Symbols {
    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.strings.len() as u32;
        let text: Arc<str> = text.into();
        self.strings.push(text.clone());
        self.ids.insert(text, id);
        id
    }

    fn get(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", |s| s)
    }
}

/// A stored series' labels, sorted by name: a view of its symbols.
#[derive(Clone, Copy)]
pub(super) struct LabelSet<'a> {
    /// Name and value symbols, alternating.
    pairs: &'a [u32],
    symbols: &'a Symbols,
}

impl<'a> LabelSet<'a> {
    /// (name, value) of each label, in name order.
    pub(super) fn iter(self) -> impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone {
        self.pairs
            .chunks_exact(2)
            .map(move |pair| (self.symbols.get(pair[0]), self.symbols.get(pair[1])))
    }

    /// The value of label `name`, "" when absent (as PromQL matchers see it).
    pub(super) fn value(self, name: &str) -> &'a str {
        self.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v)
    }

    pub(super) fn len(self) -> usize {
        self.pairs.len() / 2
    }

    pub(super) fn to_vec(self) -> Vec<Label> {
        self.iter()
            .map(|(name, value)| Label::new(name, value))
            .collect()
    }

    pub(super) fn equals(self, labels: &[Label]) -> bool {
        self.len() == labels.len()
            && self
                .iter()
                .zip(labels)
                .all(|((name, value), label)| label.name == name && label.value == value)
    }
}

/// Every series' labels by id, and what finds ids by labels.
#[derive(Default)]
pub(super) struct SeriesIndex {
    symbols: Symbols,
    /// By id, the series' [`LabelSet`] symbols; `None` for an id no series
    /// has.
    labels: Vec<Option<Box<[u32]>>>,
    /// The first series of each label set hash (a fast, in-memory-only
    /// hash: every ingested series is looked up by its labels)...
    by_hash: HashMap<u64, u32, FxBuildHasher>,
    /// ...and the others of the same hash, which a 64-bit hash makes rare:
    /// one id per series and no list keeps the map small.
    collisions: HashMap<u64, Vec<u32>, FxBuildHasher>,
    postings: HashMap<String, HashMap<String, Vec<u32>>>,
    series_per_metric: HashMap<String, usize>,
    live_series: usize,
}

impl SeriesIndex {
    pub(super) fn find(&self, labels: &[Label]) -> Option<u32> {
        let hash = label_hash(labels);
        let first = *self.by_hash.get(&hash)?;
        let same = |id: &u32| self.labels(*id).is_some_and(|l| l.equals(labels));
        if same(&first) {
            return Some(first);
        }
        self.collisions.get(&hash)?.iter().copied().find(same)
    }

    /// Adds a series under `id`, which no series has yet.
    pub(super) fn insert(&mut self, id: u32, labels: &[Label]) {
        let index = id as usize;
        if self.labels.len() <= index {
            self.labels.resize_with(index + 1, || None);
        }
        let hash = label_hash(labels);
        match self.by_hash.entry(hash) {
            Entry::Vacant(entry) => {
                entry.insert(id);
            }
            Entry::Occupied(_) => self.collisions.entry(hash).or_default().push(id),
        }
        for label in labels.iter() {
            let ids = self
                .postings
                .entry(label.name.to_string())
                .or_default()
                .entry(label.value.to_string())
                .or_default();
            // Ids are handed out in increasing order, except on open where
            // the series log is read in order too: postings stay sorted.
            ids.push(id);
        }
        let name = metric_name(labels).to_owned();
        *self.series_per_metric.entry(name).or_default() += 1;
        self.live_series += 1;
        let symbols = &mut self.symbols;
        self.labels[index] = Some(
            labels
                .iter()
                .flat_map(|l| [symbols.intern(&l.name), symbols.intern(&l.value)])
                .collect(),
        );
    }

    /// Keeps `id` from ever being handed out: chunks on disk belong to it,
    /// though its series log entry was lost to damage, and must never be
    /// taken for a new series' chunks.
    pub(super) fn reserve(&mut self, id: u32) {
        let index = id as usize;
        if self.labels.len() <= index {
            self.labels.resize_with(index + 1, || None);
        }
    }

    /// The id the next new series gets.
    pub(super) fn next_id(&self) -> u32 {
        self.labels.len() as u32
    }

    pub(super) fn labels(&self, id: u32) -> Option<LabelSet<'_>> {
        let pairs = self.labels.get(id as usize)?.as_deref()?;
        Some(LabelSet {
            pairs,
            symbols: &self.symbols,
        })
    }

    /// Every label name and its values' series ids.
    pub(super) fn postings(&self) -> impl Iterator<Item = (&str, &HashMap<String, Vec<u32>>)> {
        self.postings
            .iter()
            .map(|(name, values)| (name.as_str(), values))
    }

    /// The values of label `name` and their series ids.
    pub(super) fn postings_of(&self, name: &str) -> impl Iterator<Item = (&str, &[u32])> {
        self.postings
            .get(name)
            .into_iter()
            .flatten()
            .map(|(value, ids)| (value.as_str(), ids.as_slice()))
    }

    /// How many series exist, for the `--max-series` limit.
    pub(super) fn live_series(&self) -> usize {
        self.live_series
    }

    /// How many series a metric has, for the `--max-series-per-metric` limit.
    pub(super) fn series_of_metric(&self, name: &str) -> usize {
        self.series_per_metric.get(name).copied().unwrap_or(0)
    }

    /// Ids of the series matching every matcher (every series for none), in
    /// increasing order.
    pub(super) fn select(&self, matchers: &[Matcher]) -> Vec<u32> {
        // Start from the smallest posting list of an equality matcher on a
        // non-empty value, else from every series.
        let narrowest = self.narrowest(matchers);
        let matches = |id: u32| {
            self.labels(id)
                .is_some_and(|labels| matchers.iter().all(|m| m.is_match(labels.value(&m.name))))
        };
        match narrowest {
            Some(ids) => ids.iter().copied().filter(|&id| matches(id)).collect(),
            None => (0..self.next_id()).filter(|&id| matches(id)).collect(),
        }
    }

    /// The shortest posting list among the equality matchers on a
    /// non-empty value: every series `matchers` select is in it. `None`
    /// without such a matcher.
    fn narrowest(&self, matchers: &[Matcher]) -> Option<&[u32]> {
        matchers
            .iter()
            .filter(|m| matches!(m.op, MatchOp::Equal) && !m.value.is_empty())
            .map(|m| {
                self.postings
                    .get(&m.name)
                    .and_then(|values| values.get(&m.value))
                    .map_or(&[][..], |ids| ids.as_slice())
            })
            .min_by_key(|ids| ids.len())
    }

    /// At most how many series [`select`](Self::select) finds, known
    /// without looking at any: the length of the narrowest posting list.
    pub(super) fn select_bound(&self, matchers: &[Matcher]) -> Option<usize> {
        self.narrowest(matchers).map(<[u32]>::len)
    }
}

fn label_hash(labels: &[Label]) -> u64 {
    FxBuildHasher.hash_one(labels)
}

/// The value of label `name`, "" when absent (as PromQL matchers see it).
pub(super) fn label_value<'a>(labels: &'a [Label], name: &str) -> &'a str {
    labels
        .iter()
        .find(|l| l.name == name)
        .map_or("", |l| &*l.value)
}

/// The `__name__` label's value.
pub(super) fn metric_name(labels: &[Label]) -> &str {
    label_value(labels, METRIC_NAME_LABEL)
}

/// `name{a="b", ...}`, for error messages.
pub(super) fn format_labels(labels: &[Label]) -> String {
    let name = metric_name(labels);
    let rest: Vec<String> = labels
        .iter()
        .filter(|l| l.name != METRIC_NAME_LABEL)
        .map(|l| format!("{}={:?}", l.name, l.value))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sample_store::SampleStore;

    use crate::store::metrics::tests::{ingest, matcher, open_store, series};

    #[test]
    fn matchers_follow_prometheus_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_store(dir.path());
        let mut with_env = series("m", "b", &[(1, 2.0)]);
        with_env.labels.push(Label::new("env", "prod"));
        ingest(&store, vec![series("m", "a", &[(1, 1.0)]), with_env]);
        let jobs = |matchers: &[Matcher]| -> Vec<String> {
            store
                .select(matchers, 0, 10, usize::MAX)
                .unwrap()
                .series
                .into_iter()
                .map(|s| label_value(&s.labels, "job").to_owned())
                .collect()
        };
        // A missing label equals "": != matches series without it.
        assert_eq!(
            jobs(&[
                matcher("__name__", "m"),
                Matcher::new(MatchOp::NotEqual, "env", "prod")
            ]),
            ["a"]
        );
        assert_eq!(jobs(&[matcher("__name__", "m"), matcher("env", "")]), ["a"]);
        let regex = Matcher::new_matcher(
            promql_parser::parser::token::T_EQL_REGEX,
            "job".into(),
            "a|b".into(),
        )
        .unwrap();
        assert_eq!(jobs(&[regex]), ["a", "b"]);
        assert!(jobs(&[matcher("job", "zzz")]).is_empty());
    }
}
