//! Explicit-bucket and exponential histograms, both written as classic
//! Prometheus histograms (`_bucket` with `le`, `_sum`, `_count`).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::metrics::v1 as otlp_metrics;

use super::delta::{DeltaKey, DeltaKind, DeltaState, Resumed, Running};
use super::naming::attribute_labels;
use super::points::{is_stale, sample_value, stale_nan, timestamp_ms};
use super::{MetricContext, PointSeries};
use crate::model::{Label, MetricSample, STALE_NAN_BITS};

/// The scales the OTLP data model allows for exponential histograms.
const MIN_SCALE: i32 = -10;
const MAX_SCALE: i32 = 20;
/// Exponential histograms are downscaled until each sign has at most this many
/// buckets (the SDKs' default maximum), so one point never becomes thousands
/// of `le` series.
const MAX_EXPONENTIAL_BUCKETS: usize = 160;

/// Cumulative `le` buckets (finite bounds, strictly increasing), ready to be
/// written as a classic Prometheus histogram.
struct ClassicHistogram {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: Option<f64>,
}

impl ClassicHistogram {
    /// The `_bucket` series (with `+Inf` = count), `_sum` when known, and
    /// `_count`; every value a staleness marker when `stale`.
    fn series(
        &self,
        context: &MetricContext<'_>,
        attributes: &[Label],
        stale: bool,
    ) -> Vec<(Vec<Label>, f64)> {
        let value = |v: f64| if stale { stale_nan() } else { sample_value(v) };
        let mut series = Vec::with_capacity(self.buckets.len() + 3);
        for &(le, cumulative) in &self.buckets {
            series.push((
                context.labels(attributes, "_bucket", Some(("le", le))),
                value(cumulative as f64),
            ));
        }
        series.push((
            context.labels(attributes, "_bucket", Some(("le", f64::INFINITY))),
            value(self.count as f64),
        ));
        if let Some(sum) = self.sum {
            series.push((context.labels(attributes, "_sum", None), value(sum)));
        }
        series.push((
            context.labels(attributes, "_count", None),
            value(self.count as f64),
        ));
        series
    }
}

/// An explicit-bucket histogram point, or the running total of a delta one.
#[derive(Clone, Debug)]
pub(super) struct ExplicitHistogram {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative); `bounds.len() + 1` entries, or none.
    counts: Vec<u64>,
    count: u64,
    sum: Option<f64>,
}

impl ExplicitHistogram {
    fn new(point: &otlp_metrics::HistogramDataPoint) -> Result<ExplicitHistogram, String> {
        check_bounds(&point.explicit_bounds)?;
        let buckets = point.bucket_counts.len();
        if buckets != 0 && buckets != point.explicit_bounds.len() + 1 {
            return Err(format!(
                "{buckets} bucket counts for {} explicit bounds (want one more count than bounds)",
                point.explicit_bounds.len()
            ));
        }
        if buckets == 0 && !point.explicit_bounds.is_empty() {
            return Err("explicit bounds without bucket counts".to_string());
        }
        let total = point
            .bucket_counts
            .iter()
            .fold(0u64, |total, c| total.saturating_add(*c));
        if total > point.count {
            return Err(format!(
                "bucket counts add up to {total}, more than count {}",
                point.count
            ));
        }
        Ok(ExplicitHistogram {
            bounds: point.explicit_bounds.clone(),
            counts: point.bucket_counts.clone(),
            count: point.count,
            sum: point.sum,
        })
    }

    /// Adds a later delta; `None` when the bucket layout changed, which
    /// restarts the running total.
    fn add(&self, delta: &ExplicitHistogram) -> Option<ExplicitHistogram> {
        let same_bounds = self.bounds.len() == delta.bounds.len()
            && self
                .bounds
                .iter()
                .zip(&delta.bounds)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same_bounds || self.counts.len() != delta.counts.len() {
            return None;
        }
        Some(ExplicitHistogram {
            bounds: self.bounds.clone(),
            counts: self
                .counts
                .iter()
                .zip(&delta.counts)
                .map(|(a, b)| a.saturating_add(*b))
                .collect(),
            count: self.count.saturating_add(delta.count),
            sum: self.sum.zip(delta.sum).map(|(a, b)| a + b),
        })
    }

    /// The running total of this delta's series and bucket layout, taken
    /// back from its stored `_bucket`, `_sum` and `_count` samples: all of
    /// one time and none a staleness marker, or there is none.
    fn resume(&self, context: &MetricContext<'_>, attributes: &[Label]) -> Option<Resumed> {
        let stored = |suffix: &str, le: Option<f64>| {
            let sample = context.stored.newest(&context.labels(
                attributes,
                suffix,
                le.map(|le| ("le", le)),
            ))?;
            (sample.value.to_bits() != STALE_NAN_BITS).then_some(sample)
        };
        let count = stored("_count", None)?;
        let time = count.timestamp_ms;
        let whole = |sample: MetricSample| {
            (sample.timestamp_ms == time && sample.value >= 0.0 && sample.value.fract() == 0.0)
                .then_some(sample.value as u64)
        };
        let mut cumulative = Vec::with_capacity(self.bounds.len() + 1);
        for &le in &self.bounds {
            cumulative.push(whole(stored("_bucket", Some(le))?)?);
        }
        cumulative.push(whole(stored("_bucket", Some(f64::INFINITY))?)?);
        let sum = match self.sum {
            Some(_) => {
                let sum = stored("_sum", None)?;
                (sum.timestamp_ms == time).then_some(Some(sum.value))?
            }
            None => None,
        };
        let counts = if self.counts.is_empty() {
            Vec::new()
        } else {
            let mut below = 0;
            let mut counts = Vec::with_capacity(cumulative.len());
            for c in cumulative {
                counts.push(c.checked_sub(below)?);
                below = c;
            }
            counts
        };
        Some(Resumed::at(
            time,
            Running::Histogram(ExplicitHistogram {
                bounds: self.bounds.clone(),
                counts,
                count: whole(count)?,
                sum,
            }),
        ))
    }

    fn classic(&self) -> ClassicHistogram {
        let mut cumulative = 0u64;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&le, &count)| {
                cumulative = cumulative.saturating_add(count);
                (le, cumulative)
            })
            .collect();
        ClassicHistogram {
            buckets,
            count: self.count,
            sum: self.sum,
        }
    }
}

/// Explicit bounds must be finite and strictly increasing to be `le` values.
fn check_bounds(bounds: &[f64]) -> Result<(), String> {
    if let Some(bad) = bounds.iter().find(|b| !b.is_finite()) {
        return Err(format!("explicit bound {bad} is not finite"));
    }
    if bounds.windows(2).any(|w| w[0] >= w[1]) {
        return Err("explicit bounds are not strictly increasing".to_string());
    }
    Ok(())
}

pub(super) fn histogram_point(
    state: &mut DeltaState,
    context: &MetricContext<'_>,
    mut point: otlp_metrics::HistogramDataPoint,
    delta: bool,
) -> Result<PointSeries, String> {
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let attributes = attribute_labels(std::mem::take(&mut point.attributes));
    let key = DeltaKey {
        kind: DeltaKind::Histogram,
        labels: context.labels(&attributes, "", None),
    };
    if is_stale(point.flags) {
        if delta {
            state.forget(key.kind, &key.labels);
        }
        // A stale point carries no counts; its bounds still name the buckets.
        let bounds = match check_bounds(&point.explicit_bounds) {
            Ok(()) => point.explicit_bounds.as_slice(),
            Err(_) => &[],
        };
        let classic = ClassicHistogram {
            buckets: bounds.iter().map(|&le| (le, 0)).collect(),
            count: 0,
            sum: point.sum,
        };
        return Ok(PointSeries {
            timestamp_ms,
            series: classic.series(context, &attributes, true),
        });
    }
    let mut histogram = ExplicitHistogram::new(&point)?;
    if delta {
        if let Some(sum) = histogram.sum.filter(|s| !s.is_finite()) {
            return Err(format!("delta sum {sum} is not finite"));
        }
        let resume = || histogram.resume(context, &attributes);
        let previous = match state.previous(&key, point.time_unix_nano, resume)? {
            Some(Running::Histogram(previous)) => previous.add(&histogram),
            _ => None,
        };
        if let Some(total) = previous {
            histogram = total;
        }
        state.store(
            key,
            point.time_unix_nano,
            Running::Histogram(histogram.clone()),
        )?;
    }
    Ok(PointSeries {
        timestamp_ms,
        series: histogram.classic().series(context, &attributes, false),
    })
}

/// An exponential histogram point, or the running total of a delta one, with
/// its buckets by index (dense over the ranges sent, zeros included).
#[derive(Clone, Debug)]
pub(super) struct ExponentialHistogram {
    scale: i32,
    zero_count: u64,
    zero_threshold: f64,
    positive: BTreeMap<i64, u64>,
    negative: BTreeMap<i64, u64>,
    count: u64,
    sum: Option<f64>,
}

impl ExponentialHistogram {
    fn new(
        point: &otlp_metrics::ExponentialHistogramDataPoint,
    ) -> Result<ExponentialHistogram, String> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&point.scale) {
            return Err(format!(
                "scale {} is outside {MIN_SCALE}..={MAX_SCALE}",
                point.scale
            ));
        }
        // NaN fails this too.
        if !(0.0..f64::INFINITY).contains(&point.zero_threshold) {
            return Err(format!(
                "zero threshold {} is not a finite non-negative number",
                point.zero_threshold
            ));
        }
        let ranges = [point.positive.as_ref(), point.negative.as_ref()];
        // Downscale up front when the ranges sent are too wide, rather than
        // building a huge map first.
        let mut shift = 0;
        while !ranges.iter().all(|b| fits(*b, shift)) {
            if point.scale - shift as i32 <= MIN_SCALE {
                return Err("too many buckets even at the coarsest scale".to_string());
            }
            shift += 1;
        }
        let index = |buckets: Option<&otlp_metrics::exponential_histogram_data_point::Buckets>| {
            let mut map = BTreeMap::new();
            let offset = i64::from(buckets.map_or(0, |b| b.offset));
            let counts = buckets.map_or(&[][..], |b| b.bucket_counts.as_slice());
            for (i, &count) in counts.iter().enumerate() {
                let i = i64::try_from(i).unwrap_or(i64::MAX);
                let slot = map.entry(offset.saturating_add(i) >> shift).or_insert(0u64);
                *slot = slot.saturating_add(count);
            }
            map
        };
        let histogram = ExponentialHistogram {
            scale: point.scale - shift as i32,
            zero_count: point.zero_count,
            zero_threshold: point.zero_threshold,
            positive: index(point.positive.as_ref()),
            negative: index(point.negative.as_ref()),
            count: point.count,
            sum: point.sum,
        };
        let total = histogram
            .positive
            .values()
            .chain(histogram.negative.values())
            .fold(histogram.zero_count, |total, c| total.saturating_add(*c));
        if total > histogram.count {
            return Err(format!(
                "bucket counts add up to {total}, more than count {}",
                histogram.count
            ));
        }
        Ok(histogram)
    }

    /// Merges each two neighbouring buckets `by` times (scale - by).
    fn downscale(&mut self, by: u32) {
        if by == 0 {
            return;
        }
        for map in [&mut self.positive, &mut self.negative] {
            let mut merged = BTreeMap::new();
            for (index, count) in std::mem::take(map) {
                let slot = merged.entry(index >> by).or_insert(0u64);
                *slot = slot.saturating_add(count);
            }
            *map = merged;
        }
        self.scale -= by as i32;
    }

    /// Adds a later delta at the coarser of the two scales, downscaling
    /// further if the union of buckets is too wide.
    fn add(&self, delta: &ExponentialHistogram) -> Result<ExponentialHistogram, String> {
        let scale = self.scale.min(delta.scale);
        let mut total = self.clone();
        let mut delta = delta.clone();
        total.downscale(total.scale.abs_diff(scale));
        delta.downscale(delta.scale.abs_diff(scale));
        for (into, from) in [
            (&mut total.positive, delta.positive),
            (&mut total.negative, delta.negative),
        ] {
            for (index, count) in from {
                let slot = into.entry(index).or_insert(0);
                *slot = slot.saturating_add(count);
            }
        }
        total.zero_count = total.zero_count.saturating_add(delta.zero_count);
        total.zero_threshold = total.zero_threshold.max(delta.zero_threshold);
        total.count = total.count.saturating_add(delta.count);
        total.sum = total.sum.zip(delta.sum).map(|(a, b)| a + b);
        while total.positive.len().max(total.negative.len()) > MAX_EXPONENTIAL_BUCKETS {
            if total.scale <= MIN_SCALE {
                return Err("too many buckets even at the coarsest scale".to_string());
            }
            total.downscale(1);
        }
        Ok(total)
    }

    /// The running total of this delta's series, taken back from its stored
    /// classic samples: every `_bucket` (whatever its `le`), `_sum` when this
    /// point has one, and `_count`, all of one time and none a staleness
    /// marker. The buckets are rebuilt at the scale whose bounds are exactly
    /// the stored `le` values, around this point's zero threshold: the
    /// inverse of [`Self::classic`]. `None` when there is no such total or no
    /// scale explains it.
    fn resume(&self, context: &MetricContext<'_>, attributes: &[Label]) -> Option<Resumed> {
        let live =
            |sample: MetricSample| (sample.value.to_bits() != STALE_NAN_BITS).then_some(sample);
        let count = live(
            context
                .stored
                .newest(&context.labels(attributes, "_count", None))?,
        )?;
        let time = count.timestamp_ms;
        let whole = |sample: MetricSample| {
            (sample.timestamp_ms == time && sample.value >= 0.0 && sample.value.fract() == 0.0)
                .then_some(sample.value as u64)
        };
        let count = whole(count)?;
        let mut bounds = Vec::new();
        let mut infinite = None;
        let buckets = context.labels(attributes, "_bucket", None);
        for (le, sample) in context.stored.newest_by(&buckets, "le") {
            let le: f64 = le.parse().ok()?;
            let cumulative = whole(live(sample)?)?;
            if le == f64::INFINITY {
                infinite = Some(cumulative);
            } else {
                bounds.push((le, cumulative));
            }
        }
        if infinite != Some(count) {
            return None;
        }
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        if bounds.windows(2).any(|w| w[1].1 < w[0].1) || bounds.last().is_some_and(|b| b.1 > count)
        {
            return None;
        }
        let zero = bounds
            .iter()
            .position(|&(le, _)| le == self.zero_threshold)?;
        // A positive bucket's upper bound is base^(index + 1), a negative
        // one's -base^index.
        let index_at = |le: f64, i: usize, scale: i32| {
            if i < zero {
                exponential_index(-le, scale)
            } else {
                exponential_index(le, scale).map(|index| index - 1)
            }
        };
        // The scale the total was stored at: its bounds are bucket bounds
        // there, and neighbouring buckets (classic() writes every bucket of
        // a range, empty ones too) are one index apart somewhere. At a finer
        // scale every gap is even; a total of one bucket per sign is kept at
        // the finest scale, a sub-bucket with the same upper bound, which
        // `add` merges into the right bucket at any coarser scale.
        let scale = (MIN_SCALE..=MAX_SCALE).rev().find(|&scale| {
            let indices: Option<Vec<(bool, i64)>> = bounds
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != zero)
                .map(|(i, &(le, _))| Some((i < zero, index_at(le, i, scale)?)))
                .collect();
            let Some(indices) = indices else {
                return false;
            };
            let gaps: Vec<i64> = indices
                .windows(2)
                .filter(|w| w[0].0 == w[1].0)
                .map(|w| (w[1].1 - w[0].1).abs())
                .collect();
            gaps.is_empty() || gaps.iter().any(|gap| gap % 2 == 1)
        })?;
        let mut total = ExponentialHistogram {
            scale,
            zero_count: 0,
            zero_threshold: self.zero_threshold,
            positive: BTreeMap::new(),
            negative: BTreeMap::new(),
            count,
            sum: None,
        };
        let mut below = 0;
        for (i, &(le, cumulative)) in bounds.iter().enumerate() {
            let in_bucket = cumulative - below;
            below = cumulative;
            match i.cmp(&zero) {
                std::cmp::Ordering::Equal => total.zero_count = in_bucket,
                std::cmp::Ordering::Less => {
                    total.negative.insert(index_at(le, i, scale)?, in_bucket);
                }
                std::cmp::Ordering::Greater => {
                    total.positive.insert(index_at(le, i, scale)?, in_bucket);
                }
            }
        }
        if self.sum.is_some() {
            let sum = live(
                context
                    .stored
                    .newest(&context.labels(attributes, "_sum", None))?,
            )?;
            total.sum = Some((sum.timestamp_ms == time).then_some(sum.value)?);
        }
        Some(Resumed::at(time, Running::Exponential(total)))
    }

    /// Classic buckets: negative buckets from the most negative (upper bound
    /// `-base^index`), the zero bucket (`le` = zero threshold), then positive
    /// buckets (upper bound `base^(index+1)`), with `base = 2^(2^-scale)`.
    /// Bounds that overflow, or do not increase (rounding, a zero threshold
    /// wider than the first buckets), are skipped; their counts show in the
    /// next bucket, so the result stays a valid cumulative histogram.
    fn classic(&self) -> ClassicHistogram {
        let bound = |index: i64| (index as f64 * f64::from(-self.scale).exp2()).exp2();
        let mut raw = Vec::with_capacity(self.negative.len() + self.positive.len() + 1);
        let mut cumulative = 0u64;
        for (&index, &count) in self.negative.iter().rev() {
            cumulative = cumulative.saturating_add(count);
            raw.push((-bound(index), cumulative));
        }
        cumulative = cumulative.saturating_add(self.zero_count);
        raw.push((self.zero_threshold, cumulative));
        for (&index, &count) in &self.positive {
            cumulative = cumulative.saturating_add(count);
            raw.push((bound(index.saturating_add(1)), cumulative));
        }
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(raw.len());
        for (le, cumulative) in raw {
            // No "-0" label.
            let le = if le == 0.0 { 0.0 } else { le };
            if le.is_finite() && buckets.last().is_none_or(|&(previous, _)| le > previous) {
                buckets.push((le, cumulative));
            }
        }
        ClassicHistogram {
            buckets,
            count: self.count,
            sum: self.sum,
        }
    }
}

/// The index `i` whose bound `base^i` at `scale` is exactly `bound` (as
/// [`ExponentialHistogram::classic`] computes bounds), if there is one.
fn exponential_index(bound: f64, scale: i32) -> Option<i64> {
    if !(bound > 0.0 && bound.is_finite()) {
        return None;
    }
    let index = (bound.log2() * f64::from(scale).exp2()).round();
    let index = index as i64;
    let exact = (index as f64 * f64::from(-scale).exp2()).exp2();
    (exact.to_bits() == bound.to_bits()).then_some(index)
}

/// Whether a dense bucket range, downscaled by `shift`, has few enough buckets.
fn fits(
    buckets: Option<&otlp_metrics::exponential_histogram_data_point::Buckets>,
    shift: u32,
) -> bool {
    let Some(buckets) = buckets.filter(|b| !b.bucket_counts.is_empty()) else {
        return true;
    };
    let low = i64::from(buckets.offset);
    let len = i64::try_from(buckets.bucket_counts.len()).unwrap_or(i64::MAX);
    let high = low.saturating_add(len - 1);
    (high >> shift) - (low >> shift) < MAX_EXPONENTIAL_BUCKETS as i64
}

pub(super) fn exponential_point(
    state: &mut DeltaState,
    context: &MetricContext<'_>,
    mut point: otlp_metrics::ExponentialHistogramDataPoint,
    delta: bool,
) -> Result<PointSeries, String> {
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let attributes = attribute_labels(std::mem::take(&mut point.attributes));
    let key = DeltaKey {
        kind: DeltaKind::Exponential,
        labels: context.labels(&attributes, "", None),
    };
    if is_stale(point.flags) {
        if delta {
            state.forget(key.kind, &key.labels);
        }
        // Buckets named by the point's own layout, if it has a valid one.
        let buckets = ExponentialHistogram::new(&point)
            .map(|h| h.classic().buckets)
            .unwrap_or_default();
        let classic = ClassicHistogram {
            buckets,
            count: 0,
            sum: point.sum,
        };
        return Ok(PointSeries {
            timestamp_ms,
            series: classic.series(context, &attributes, true),
        });
    }
    let mut histogram = ExponentialHistogram::new(&point)?;
    if delta {
        if let Some(sum) = histogram.sum.filter(|s| !s.is_finite()) {
            return Err(format!("delta sum {sum} is not finite"));
        }
        let resume = || histogram.resume(context, &attributes);
        if let Some(Running::Exponential(previous)) =
            state.previous(&key, point.time_unix_nano, resume)?
        {
            histogram = previous.add(&histogram)?;
        }
        state.store(
            key,
            point.time_unix_nano,
            Running::Exponential(histogram.clone()),
        )?;
    }
    Ok(PointSeries {
        timestamp_ms,
        series: histogram.classic().series(context, &attributes, false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::otlp_metrics::tests::{check, request};

    #[test]
    fn converts_a_histogram() {
        check(
            &request(
                r#"{"name":"http.server.request.duration","unit":"s","description":"Duration",
                    "histogram":{"aggregationTemporality":2,"dataPoints":[
                      {"timeUnixNano":"1000000000","count":"6","sum":1.25,
                       "explicitBounds":[0.005,0.5,1],"bucketCounts":["1","2","0","3"]},
                      {"timeUnixNano":"1000000000","count":"1",
                       "attributes":[{"key":"route","value":{"stringValue":"/x"}}]}]}}"#,
            ),
            r#"
http_server_request_duration_seconds_bucket{job="svc",le="0.005"} 1000:1
http_server_request_duration_seconds_bucket{job="svc",le="0.5"} 1000:3
http_server_request_duration_seconds_bucket{job="svc",le="1"} 1000:3
http_server_request_duration_seconds_bucket{job="svc",le="+Inf"} 1000:6
http_server_request_duration_seconds_sum{job="svc"} 1000:1.25
http_server_request_duration_seconds_count{job="svc"} 1000:6
http_server_request_duration_seconds_bucket{job="svc",le="+Inf",route="/x"} 1000:1
http_server_request_duration_seconds_count{job="svc",route="/x"} 1000:1
# http_server_request_duration_seconds histogram unit="seconds" help="Duration""#,
        );
    }

    #[test]
    fn histogram_with_mismatched_buckets_is_rejected() {
        check(
            &request(
                r#"{"name":"h","histogram":{"aggregationTemporality":2,"dataPoints":[
                    {"timeUnixNano":"1000000000","count":"3","explicitBounds":[1,2],"bucketCounts":["1","2"]},
                    {"timeUnixNano":"1000000000","count":"1","explicitBounds":[2,1],"bucketCounts":["1","0","0"]},
                    {"timeUnixNano":"1000000000","count":"1","explicitBounds":[1],"bucketCounts":["5","0"]}]}}"#,
            ),
            r#"rejected=3 metric "h": 2 bucket counts for 2 explicit bounds (want one more count than bounds)"#,
        );
    }

    #[test]
    fn converts_an_exponential_histogram() {
        // Scale 0: base 2. Negative bucket 0 holds (-2, -1], zero bucket 1,
        // positive buckets 0 and 1 hold (1, 2] and (2, 4].
        check(
            &request(
                r#"{"name":"payload.size","unit":"By","exponentialHistogram":{"aggregationTemporality":2,
                    "dataPoints":[{"timeUnixNano":"1000000000","count":"6","sum":4.5,"scale":0,
                      "zeroCount":"1","zeroThreshold":0.001,
                      "positive":{"offset":0,"bucketCounts":["1","3"]},
                      "negative":{"offset":0,"bucketCounts":["1"]}}]}}"#,
            ),
            r#"
payload_size_bytes_bucket{job="svc",le="-1"} 1000:1
payload_size_bytes_bucket{job="svc",le="0.001"} 1000:2
payload_size_bytes_bucket{job="svc",le="2"} 1000:3
payload_size_bytes_bucket{job="svc",le="4"} 1000:6
payload_size_bytes_bucket{job="svc",le="+Inf"} 1000:6
payload_size_bytes_sum{job="svc"} 1000:4.5
payload_size_bytes_count{job="svc"} 1000:6
# payload_size_bytes histogram unit="bytes" help="""#,
        );
    }

    #[test]
    fn exponential_histogram_bounds_follow_the_scale() {
        // Scale 1: base sqrt(2); bucket -1 holds (2^-0.5, 1], bucket 0 (1, 2^0.5].
        check(
            &request(
                r#"{"name":"x","exponentialHistogram":{"aggregationTemporality":2,
                    "dataPoints":[{"timeUnixNano":"1000000000","count":"2","scale":1,
                      "positive":{"offset":-1,"bucketCounts":["1","1"]}}]}}"#,
            ),
            r#"
x_bucket{job="svc",le="0"} 1000:0
x_bucket{job="svc",le="1"} 1000:1
x_bucket{job="svc",le="1.4142135623730951"} 1000:2
x_bucket{job="svc",le="+Inf"} 1000:2
x_count{job="svc"} 1000:2
# x histogram unit="" help="""#,
        );
    }

    #[test]
    fn huge_exponential_histograms_are_downscaled_or_rejected() {
        let mut point = otlp_metrics::ExponentialHistogramDataPoint {
            time_unix_nano: 1,
            scale: 20,
            count: u64::MAX,
            positive: Some(otlp_metrics::exponential_histogram_data_point::Buckets {
                offset: i32::MAX,
                bucket_counts: vec![u64::MAX; 1000],
            }),
            ..Default::default()
        };
        let histogram = ExponentialHistogram::new(&point).unwrap();
        assert!(histogram.positive.len() <= MAX_EXPONENTIAL_BUCKETS);
        assert!(histogram.scale < 20);
        point.scale = 21;
        assert!(ExponentialHistogram::new(&point).is_err());
    }
}
