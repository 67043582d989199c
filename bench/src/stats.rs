//! Latency summaries and trace-id sampling.
//!
//! Percentiles use the nearest-rank method on the full sample set: the
//! benchmark keeps every latency (tens of thousands of values at most), so
//! there is no need for an approximate histogram, and nearest-rank always
//! reports a latency that was actually observed.

use rand::Rng;

/// p50 / p99 / max of one set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarizes `samples` (any order); `None` when there are none, so the
    /// report can say `null` instead of inventing a zero latency.
    pub fn of(mut samples: Vec<f64>) -> Option<Summary> {
        samples.sort_by(f64::total_cmp);
        Some(Summary {
            p50: percentile(&samples, 50.0)?,
            p99: percentile(&samples, 99.0)?,
            max: *samples.last()?,
        })
    }
}

/// Nearest-rank percentile `q` (0..=100) of an ascending slice: the smallest
/// value such that at least `q`% of the samples are less than or equal to it.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A uniform random sample of a stream of unknown length (Algorithm R).
///
/// Trace-by-id lookups should hit traces from the whole load phase (early
/// ones are already compacted into the stores, late ones may still be close to
/// the write-ahead log), not only the first or the last ones.
pub struct Reservoir<T> {
    items: Vec<T>,
    capacity: usize,
    seen: u64,
}

impl<T> Reservoir<T> {
    pub fn new(capacity: usize) -> Self {
        Reservoir {
            items: Vec::with_capacity(capacity),
            capacity,
            seen: 0,
        }
    }

    /// Offers one item; it is kept with probability capacity / items seen.
    pub fn offer(&mut self, item: T, rng: &mut impl Rng) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(item);
        } else {
            let slot = rng.random_range(0..self.seen);
            if let Some(kept) = self.items.get_mut(slot as usize) {
                *kept = item;
            }
        }
    }

    pub fn into_items(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.5], 99.0), Some(7.5));
        assert_eq!(percentile(&[], 50.0), None);
        // Ten samples: p99 is the largest, p50 the fifth.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
    }

    #[test]
    fn summary_sorts_and_handles_empty() {
        let summary = Summary::of(vec![3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!(summary.p50, 2.0);
        assert_eq!(summary.p99, 10.0);
        assert_eq!(summary.max, 10.0);
        assert_eq!(Summary::of(Vec::new()), None);
    }

    #[test]
    fn reservoir_keeps_capacity_and_samples_whole_stream() {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut reservoir = Reservoir::new(100);
        for i in 0..10_000u32 {
            reservoir.offer(i, &mut rng);
        }
        let items = reservoir.into_items();
        assert_eq!(items.len(), 100);
        // Uniform over 0..10000: some items must come from the second half.
        assert!(items.iter().any(|&i| i >= 5_000));
    }
}
