//! Values the evaluator produces and consumes: label sets, samples, series and
//! the query result type, plus Prometheus's float formatting and staleness marker.

use std::fmt;
use std::sync::{Arc, OnceLock};

/// Name of the label that carries the metric name.
pub(crate) const METRIC_NAME: &str = "__name__";

/// Bit pattern Prometheus writes as a staleness marker: a NaN that no arithmetic produces.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is a staleness marker (and not just any NaN), so lookups can end a series there.
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// Formats a sample value the way Prometheus's JSON API does, so responses match byte for byte:
/// `NaN`, `+Inf`, `-Inf`, otherwise the shortest decimal that round-trips, never in exponent form.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        // Rust's `Display` for f64 is shortest round-trip and never uses an exponent,
        // which is exactly Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
        v.to_string()
    }
}

/// Label set, sorted by name, includes "__name__" when present.
///
/// Empty values are dropped on construction because Prometheus treats an empty
/// label value as an absent label; keeping them would make equal series compare unequal.
///
/// Shared behind an `Arc`: evaluation copies a series' labels into every step's
/// result, and a reference count is much cheaper than a dozen strings. The
/// set without its metric name (what most functions return) is made once per
/// set and kept.
#[derive(Clone, Default)]
pub struct Labels(Arc<LabelSet>);

#[derive(Default)]
struct LabelSet {
    pairs: Vec<(String, String)>,
    /// Whether `pairs` holds `__name__`: asked for every sample a function
    /// or operator returns, so answered once per set.
    has_name: bool,
    nameless: OnceLock<Labels>,
    hash: OnceLock<u64>,
}

impl Labels {
    fn new(pairs: Vec<(String, String)>) -> Labels {
        let has_name = pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(METRIC_NAME))
            .is_ok();
        Labels(Arc::new(LabelSet {
            pairs,
            has_name,
            nameless: OnceLock::new(),
            hash: OnceLock::new(),
        }))
    }

    fn pairs(&self) -> &[(String, String)] {
        &self.0.pairs
    }

    /// A hash of the pairs, computed once per set: duplicate checks run at
    /// every evaluation step and compare hashes before labels.
    pub(crate) fn hash64(&self) -> u64 {
        *self.0.hash.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut hasher = rustc_hash::FxHasher::default();
            self.pairs().hash(&mut hasher);
            hasher.finish()
        })
    }
}

impl PartialEq for Labels {
    fn eq(&self, other: &Labels) -> bool {
        // The same set is most often the same allocation.
        Arc::ptr_eq(&self.0, &other.0) || self.pairs() == other.pairs()
    }
}

impl Eq for Labels {}

impl std::hash::Hash for Labels {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash64());
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Labels) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Labels {
    fn cmp(&self, other: &Labels) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.pairs().cmp(other.pairs())
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.pairs()).finish()
    }
}

impl Labels {
    /// Value of label `name`, so callers need not know the internal layout.
    pub fn get(&self, name: &str) -> Option<&str> {
        let pairs = self.pairs();
        pairs
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| pairs[i].1.as_str())
    }

    /// All `(name, value)` pairs in name order, for serialisation at the API edge.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs().iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The metric name (`__name__`), which the API and UI show separately.
    pub fn metric_name(&self) -> Option<&str> {
        self.get(METRIC_NAME)
    }

    /// Whether the set has no labels, e.g. the result of `sum(x)` or `vector(1)`.
    pub fn is_empty(&self) -> bool {
        self.pairs().is_empty()
    }

    /// Sets `name` to `value`; an empty value removes the label (Prometheus semantics).
    pub(crate) fn set(&mut self, name: &str, value: &str) {
        let mut pairs = self.pairs().to_vec();
        match pairs.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(i) if value.is_empty() => {
                pairs.remove(i);
            }
            Ok(i) => pairs[i].1 = value.to_owned(),
            Err(_) if value.is_empty() => return,
            Err(i) => pairs.insert(i, (name.to_owned(), value.to_owned())),
        }
        *self = Labels::new(pairs);
    }

    /// Copy without the metric name, for functions and operators that drop it.
    pub(crate) fn without_name(&self) -> Labels {
        if !self.0.has_name {
            return self.clone();
        }
        self.0
            .nameless
            .get_or_init(|| self.retain(|n| n != METRIC_NAME))
            .clone()
    }

    /// Copy keeping only labels for which `keep` is true.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) -> Labels {
        Labels::new(
            self.pairs()
                .iter()
                .filter(|(n, _)| keep(n))
                .cloned()
                .collect(),
        )
    }

    /// A hash of the labels selected by `keep`: grouping keys its groups by
    /// it, with `selected_eq` settling collisions, so that no string is built
    /// per sample per step.
    pub(crate) fn hash_selected(&self, keep: impl Fn(&str) -> bool) -> u64 {
        use std::hash::Hasher;
        let mut hasher = rustc_hash::FxHasher::default();
        for (n, v) in self.pairs().iter().filter(|(n, _)| keep(n)) {
            hasher.write(n.as_bytes());
            hasher.write_u8(0xff);
            hasher.write(v.as_bytes());
            hasher.write_u8(0xfe);
        }
        hasher.finish()
    }

    /// Whether the labels selected by `keep` are exactly `selected`.
    pub(crate) fn selected_eq(&self, keep: impl Fn(&str) -> bool, selected: &Labels) -> bool {
        let mut ours = self.pairs().iter().filter(|(n, _)| keep(n));
        let mut theirs = selected.pairs().iter();
        loop {
            match (ours.next(), theirs.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// Whether the labels selected by `keep` are the same in both sets.
    pub(crate) fn same_selection(&self, other: &Labels, keep: impl Fn(&str) -> bool) -> bool {
        let mut ours = self.pairs().iter().filter(|(n, _)| keep(n));
        let mut theirs = other.pairs().iter().filter(|(n, _)| keep(n));
        loop {
            match (ours.next(), theirs.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if a == b => {}
                _ => return false,
            }
        }
    }

    /// A string that identifies the labels selected by `keep`, used as a hash-map key
    /// for grouping and vector matching.
    pub(crate) fn signature(&self, keep: impl Fn(&str) -> bool) -> String {
        let mut sig = String::new();
        for (n, v) in self.pairs().iter().filter(|(n, _)| keep(n)) {
            sig.push_str(n);
            sig.push('\u{ff}');
            sig.push_str(v);
            sig.push('\u{fe}');
        }
        sig
    }
}

impl From<Vec<(String, String)>> for Labels {
    fn from(mut pairs: Vec<(String, String)>) -> Self {
        pairs.retain(|(_, v)| !v.is_empty());
        // Stable sort + keep-last dedup: a later duplicate name wins, like a label builder.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for (n, v) in pairs {
            match out.last_mut() {
                Some(last) if last.0 == n => last.1 = v,
                _ => out.push((n, v)),
            }
        }
        Labels::new(out)
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (n, v)) in self.pairs().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// One series with its samples `(timestamp ms, value)` sorted by time: what storage
/// returns and what a range query or range-vector result holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Identity of the series.
    pub labels: Labels,
    /// Samples sorted by timestamp.
    pub samples: Vec<(i64, f64)>,
}

/// One element of an instant vector: a series' value at one evaluation time.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Identity of the element.
    pub labels: Labels,
    /// Evaluation timestamp in milliseconds.
    pub t: i64,
    /// The value.
    pub v: f64,
}

/// Result of a query, mirroring Prometheus's four result types (`resultType` in the API).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A single number, e.g. `1 + 1` or `scalar(x)`.
    Scalar {
        /// Evaluation timestamp in milliseconds.
        t: i64,
        /// The value.
        v: f64,
    },
    /// A string literal query.
    String {
        /// Evaluation timestamp in milliseconds.
        t: i64,
        /// The string.
        v: String,
    },
    /// An instant vector.
    Vector(Vec<Sample>),
    /// A range vector (instant query of `x[5m]`) or the result of a range query.
    Matrix(Vec<Series>),
}
