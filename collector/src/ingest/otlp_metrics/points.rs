//! Gauge, sum and summary points, and what every point's time and flags
//! mean.

use opentelemetry_proto::tonic::metrics::v1 as otlp_metrics;

use super::delta::{DeltaKey, DeltaKind, DeltaState, Resumed, Running};
use super::naming::attribute_labels;
use super::{MetricContext, PointSeries};
use crate::model::STALE_NAN_BITS;

/// Prometheus's staleness marker, the NaN whose bits end a series.
pub(super) fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// A value as sent; a NaN that happens to carry the staleness bits is turned
/// into an ordinary NaN so only flagged points end a series.
pub(super) fn sample_value(value: f64) -> f64 {
    if value.to_bits() == STALE_NAN_BITS {
        f64::NAN
    } else {
        value
    }
}

/// Whether a point is flagged "no recorded value": its series ends there.
pub(super) fn is_stale(flags: u32) -> bool {
    flags & otlp_metrics::DataPointFlags::NoRecordedValueMask as u32 != 0
}

/// Milliseconds since the epoch. A point without a time is rejected: stored at
/// 1970 it would be invisible and never expire.
pub(super) fn timestamp_ms(time_unix_nano: u64) -> Result<i64, String> {
    if time_unix_nano == 0 {
        return Err("time_unix_nano is missing".to_string());
    }
    Ok(i64::try_from(time_unix_nano / 1_000_000).unwrap_or(i64::MAX))
}

/// A gauge or sum point. `delta` is `Some(is_monotonic)` for delta sums,
/// which are added to their running total.
pub(super) fn number_point(
    state: &mut DeltaState,
    context: &MetricContext<'_>,
    point: otlp_metrics::NumberDataPoint,
    delta: Option<bool>,
) -> Result<PointSeries, String> {
    use otlp_metrics::number_data_point::Value;
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let labels = context.labels(&attribute_labels(point.attributes), "", None);
    if is_stale(point.flags) {
        if delta.is_some() {
            state.forget(DeltaKind::Sum, &labels);
        }
        return Ok(PointSeries {
            timestamp_ms,
            series: vec![(labels, stale_nan())],
        });
    }
    let value = match point.value {
        Some(Value::AsDouble(value)) => value,
        Some(Value::AsInt(value)) => value as f64,
        None => return Err("data point has no value".to_string()),
    };
    let value = match delta {
        None => sample_value(value),
        Some(monotonic) => {
            if !value.is_finite() {
                return Err(format!("delta value {value} is not finite"));
            }
            if monotonic && value < 0.0 {
                return Err(format!("monotonic delta value {value} is negative"));
            }
            let key = DeltaKey {
                kind: DeltaKind::Sum,
                labels: labels.clone(),
            };
            let resume = || {
                let stored = context.stored.newest(&labels)?;
                (stored.value.to_bits() != STALE_NAN_BITS)
                    .then(|| Resumed::at(stored.timestamp_ms, Running::Sum(stored.value)))
            };
            let total = match state.previous(&key, point.time_unix_nano, resume)? {
                Some(Running::Sum(total)) => total + value,
                _ => value,
            };
            state.store(key, point.time_unix_nano, Running::Sum(total))?;
            total
        }
    };
    Ok(PointSeries {
        timestamp_ms,
        series: vec![(labels, value)],
    })
}

pub(super) fn summary_point(
    context: &MetricContext<'_>,
    point: otlp_metrics::SummaryDataPoint,
) -> Result<PointSeries, String> {
    let timestamp_ms = timestamp_ms(point.time_unix_nano)?;
    let attributes = attribute_labels(point.attributes);
    let stale = is_stale(point.flags);
    let value = |v: f64| if stale { stale_nan() } else { sample_value(v) };
    let mut series = Vec::with_capacity(point.quantile_values.len() + 2);
    for quantile in &point.quantile_values {
        series.push((
            context.labels(&attributes, "", Some(("quantile", quantile.quantile))),
            value(quantile.value),
        ));
    }
    series.push((context.labels(&attributes, "_sum", None), value(point.sum)));
    series.push((
        context.labels(&attributes, "_count", None),
        value(point.count as f64),
    ));
    Ok(PointSeries {
        timestamp_ms,
        series,
    })
}

#[cfg(test)]
mod tests {
    use crate::ingest::otlp_metrics::tests::{check, request};

    #[test]
    fn converts_a_gauge() {
        check(
            &request(
                r#"{"name":"queue.depth","unit":"{message}","description":"Messages waiting",
                    "gauge":{"dataPoints":[
                      {"timeUnixNano":"1000000000","asInt":"7",
                       "attributes":[{"key":"queue.name","value":{"stringValue":"orders"}}]},
                      {"timeUnixNano":"2000000000","asDouble":7.5,
                       "attributes":[{"key":"queue.name","value":{"stringValue":"orders"}}]}]}}"#,
            ),
            r#"
queue_depth{job="svc",queue_name="orders"} 1000:7 2000:7.5
# queue_depth gauge unit="" help="Messages waiting""#,
        );
    }

    #[test]
    fn converts_a_cumulative_counter() {
        check(
            &request(
                r#"{"name":"http.server.requests","unit":"{request}",
                    "sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[
                      {"timeUnixNano":"1000000000","asInt":"3",
                       "attributes":[{"key":"http.response.status_code","value":{"intValue":"200"}}]},
                      {"timeUnixNano":"1000000000","asInt":"1",
                       "attributes":[{"key":"http.response.status_code","value":{"intValue":"500"}}]}]}}"#,
            ),
            r#"
http_server_requests_total{http_response_status_code="200",job="svc"} 1000:3
http_server_requests_total{http_response_status_code="500",job="svc"} 1000:1
# http_server_requests_total counter unit="" help="""#,
        );
    }

    #[test]
    fn converts_a_summary() {
        check(
            &request(
                r#"{"name":"rpc.duration","unit":"ms","summary":{"dataPoints":[
                    {"timeUnixNano":"1000000000","count":"10","sum":55.5,
                     "quantileValues":[{"quantile":0.5,"value":4},{"quantile":0.99,"value":9.5}]}]}}"#,
            ),
            r#"
rpc_duration_milliseconds{job="svc",quantile="0.5"} 1000:4
rpc_duration_milliseconds{job="svc",quantile="0.99"} 1000:9.5
rpc_duration_milliseconds_sum{job="svc"} 1000:55.5
rpc_duration_milliseconds_count{job="svc"} 1000:10
# rpc_duration_milliseconds summary unit="milliseconds" help="""#,
        );
    }

    #[test]
    fn no_recorded_value_is_a_stale_marker() {
        check(
            &request(
                r#"{"name":"temp","gauge":{"dataPoints":[{"timeUnixNano":"1000000000","flags":1}]}},
                   {"name":"lat","unit":"s","histogram":{"aggregationTemporality":2,"dataPoints":[
                     {"timeUnixNano":"1000000000","flags":1,"sum":0,"explicitBounds":[0.1]}]}},
                   {"name":"q","summary":{"dataPoints":[{"timeUnixNano":"1000000000","flags":1,
                     "quantileValues":[{"quantile":0.5,"value":0}]}]}}"#,
            ),
            r#"
temp{job="svc"} 1000:stale
lat_seconds_bucket{job="svc",le="0.1"} 1000:stale
lat_seconds_bucket{job="svc",le="+Inf"} 1000:stale
lat_seconds_sum{job="svc"} 1000:stale
lat_seconds_count{job="svc"} 1000:stale
q{job="svc",quantile="0.5"} 1000:stale
q_sum{job="svc"} 1000:stale
q_count{job="svc"} 1000:stale
# temp gauge unit="" help=""
# lat_seconds histogram unit="seconds" help=""
# q summary unit="" help="""#,
        );
    }
}
