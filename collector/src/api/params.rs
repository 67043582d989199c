//! Parsers for query parameters in the formats Jaeger clients send, and
//! the parameters of a request as query APIs take them.

use axum::http::Method;

use crate::model::TraceId;
pub use crate::query::parse_go_duration;

/// The query string's parameters, then (for POST) those of an
/// `application/x-www-form-urlencoded` body, in order: query APIs take both
/// (Prometheus's and Loki's do), and a POST carries a query too long for a
/// URL.
pub fn query_and_form(
    method: &Method,
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let mut params: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|e| format!("invalid query string: {e}"))?;
    if method == Method::POST && !body.is_empty() {
        let form: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|e| format!("invalid form body: {e}"))?;
        params.extend(form);
    }
    Ok(params)
}

/// A point in time as log APIs take it: RFC 3339 in UTC
/// (`2026-11-25T10:00:00Z`, fractions allowed), or a unix epoch number whose unit is told by its size
/// (seconds, milliseconds, microseconds or nanoseconds), as Loki accepts.
pub fn parse_time(input: &str) -> Result<u64, String> {
    let input = input.trim();
    if let Ok(number) = input.parse::<u64>() {
        return Ok(match number {
            0..100_000_000_000 => number.saturating_mul(1_000_000_000),
            100_000_000_000..100_000_000_000_000 => number * 1_000_000,
            100_000_000_000_000..100_000_000_000_000_000 => number * 1_000,
            _ => number,
        });
    }
    let time = humantime::parse_rfc3339_weak(input)
        .map_err(|_| format!("'{input}' is neither RFC 3339 nor a unix timestamp"))?;
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .map_err(|_| format!("'{input}' is before 1970"))
}

/// Parses Jaeger's `lookback` (`1h`, `2d`, any Go duration) into nanoseconds.
pub fn parse_lookback(input: &str) -> Result<u64, String> {
    match input.trim().strip_suffix('d') {
        Some(days) => days
            .parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(86_400 * 1_000_000_000))
            .ok_or_else(|| format!("invalid lookback {input:?}: use e.g. 1h or 2d")),
        None => parse_go_duration(input),
    }
}

/// Parses a trace id in hex. Like Jaeger, accepts ids shorter than 32 digits
/// (leading zeros dropped, or 64-bit ids).
pub fn parse_trace_id(input: &str) -> Result<TraceId, String> {
    let invalid = || format!("invalid trace id {input:?}: expected up to 32 hex digits");
    if input.is_empty() || input.len() > 32 || !input.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let padded = format!("{input:0>32}");
    let bytes = hex::decode(padded).map_err(|_| invalid())?;
    let id: TraceId = bytes.try_into().map_err(|_| invalid())?;
    if id == [0; 16] {
        return Err(invalid());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn times_in_every_unit() {
        let nanos = 1_764_064_800_000_000_000;
        assert_eq!(parse_time("1764064800"), Ok(nanos));
        assert_eq!(parse_time("1764064800000"), Ok(nanos));
        assert_eq!(parse_time("1764064800000000"), Ok(nanos));
        assert_eq!(parse_time("1764064800000000000"), Ok(nanos));
        assert_eq!(parse_time("2025-11-25T10:00:00Z"), Ok(nanos));
        assert_eq!(
            parse_time("2025-11-25T10:00:00.5Z"),
            Ok(nanos + 500_000_000)
        );
        assert!(parse_time("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("100ms"), Ok(100_000_000));
        assert_eq!(parse_go_duration("500us"), Ok(500_000));
        assert_eq!(parse_go_duration("1µs"), Ok(1_000));
        assert_eq!(
            parse_go_duration("2h45m"),
            Ok((2 * 3600 + 45 * 60) * 1_000_000_000)
        );
        assert_eq!(parse_go_duration("0"), Ok(0));
        for bad in ["", "5", "ms", "1x", "1..2s", "-1s", "1s2"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lookbacks() {
        assert_eq!(parse_lookback("2d"), Ok(2 * 86_400 * 1_000_000_000));
        assert_eq!(parse_lookback("1h"), Ok(3_600 * 1_000_000_000));
        assert!(parse_lookback("xd").is_err());
    }

    #[test]
    fn trace_ids() {
        assert_eq!(parse_trace_id("01").unwrap()[15], 1);
        assert_eq!(
            parse_trace_id("5b8efff798038103d269b633813fc60c").unwrap()[0],
            0x5b
        );
        for bad in ["", "zz", "0", "5b8efff798038103d269b633813fc60c00"] {
            assert!(parse_trace_id(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,20}") {
            let _ = parse_go_duration(&s);
            let _ = parse_lookback(&s);
            let _ = parse_trace_id(&s);
        }

        #[test]
        fn whole_milliseconds_round_trip(ms in 0u64..10_000_000) {
            prop_assert_eq!(parse_go_duration(&format!("{ms}ms")), Ok(ms * 1_000_000));
        }
    }
}
