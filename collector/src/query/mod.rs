//! Query semantics on top of the stores: what matches, in which order.
//! `traces`: Jaeger's search; `logs`: log search, histograms, facets, tail;
//! `logql`: LogQL (Grafana's Loki data source) over the log store;
//! `metrics`: the metrics store as the PromQL evaluator's series source.
//! `traceql`: Tempo's query language (a subset) over whole traces.
//! `pool`: the threads queries run on, bounded and below ingest's priority.

pub mod logql;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod traceql;
pub mod traces;

/// Parses a Go `time.Duration` string (`1.5s`, `100ms`, `2h45m`, `500us`,
/// `1µs`) into nanoseconds: what Jaeger's `minDuration`/`maxDuration`,
/// Tempo's search parameters and TraceQL's duration literals take.
pub fn parse_go_duration(input: &str) -> Result<u64, String> {
    let invalid = || format!("invalid duration {input:?}: use e.g. 1.5s, 100ms, 2h45m, 500us");
    let s = input.trim();
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_len);
        let value: f64 = number.parse().map_err(|_| invalid())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(invalid()),
        };
        total += value * nanos_per_unit;
        rest = tail;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(total.round() as u64)
}
