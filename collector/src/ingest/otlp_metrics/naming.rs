//! Prometheus names for OTLP metrics and attributes: metric family names
//! with unit and type suffixes, label names, and label values from attribute
//! values.

use opentelemetry_proto::tonic::common::v1 as otlp_common;

use crate::model::{Label, MetricKind};

/// How a metric is named and typed; decides the suffixes and the metadata kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Gauge,
    Counter,
    /// A non-monotonic sum: a gauge for Prometheus, but never `_ratio`.
    UpDownSum,
    Histogram,
    Summary,
}

impl Shape {
    pub(super) fn kind(self) -> MetricKind {
        match self {
            Shape::Gauge | Shape::UpDownSum => MetricKind::Gauge,
            Shape::Counter => MetricKind::Counter,
            Shape::Histogram => MetricKind::Histogram,
            Shape::Summary => MetricKind::Summary,
        }
    }
}

/// The Prometheus name of a metric family and its unit word.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct MetricName {
    /// Empty when the OTLP name has no valid character at all.
    pub(super) family: String,
    pub(super) unit: String,
}

impl MetricName {
    pub(super) fn new(name: &str, unit: &str, shape: Shape) -> MetricName {
        let mut tokens: Vec<&str> = name
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.is_empty() {
            return MetricName {
                family: String::new(),
                unit: String::new(),
            };
        }
        // The type suffix comes after the unit: take it off, put it back last.
        let type_suffix = match shape {
            Shape::Counter => Some("total"),
            Shape::Gauge if unit.trim() == "1" => Some("ratio"),
            _ => None,
        };
        if type_suffix.is_some() && tokens.len() > 1 && tokens.last().copied() == type_suffix {
            tokens.pop();
        }
        let (main, per) = unit_words(unit);
        let mut family = tokens.join("_");
        for word in [&main, &per] {
            if !word.is_empty() && !contains_words(&tokens, word) {
                family.push('_');
                family.push_str(word);
            }
        }
        if let Some(suffix) = type_suffix {
            family.push('_');
            family.push_str(suffix);
        }
        if family.starts_with(|c: char| c.is_ascii_digit()) {
            family.insert(0, '_');
        }
        let unit = match (main.is_empty(), per.is_empty()) {
            _ if shape == Shape::Gauge && unit.trim() == "1" => "ratio".to_string(),
            (false, false) => format!("{main}_{per}"),
            (false, true) => main,
            (true, _) => per,
        };
        MetricName { family, unit }
    }
}

/// Whether `words` (underscore-separated) appear as consecutive whole tokens.
fn contains_words(tokens: &[&str], words: &str) -> bool {
    let words: Vec<&str> = words.split('_').collect();
    tokens.windows(words.len()).any(|window| window == words)
}

/// The Prometheus words for an OTLP (UCUM) unit: the main unit and the `per_`
/// part, each "" when absent. Annotations in braces are dropped, unknown units
/// kept as written (sanitized).
fn unit_words(unit: &str) -> (String, String) {
    let (main, per) = match unit.split_once('/') {
        Some((main, per)) => (main.trim(), per.trim()),
        None => (unit.trim(), ""),
    };
    let usable = |part: &str| !part.is_empty() && !part.contains(['{', '}']);
    let main = if usable(main) {
        clean_unit(match main {
            "d" => "days",
            "h" => "hours",
            "min" => "minutes",
            "s" => "seconds",
            "ms" => "milliseconds",
            "us" => "microseconds",
            "ns" => "nanoseconds",
            "By" => "bytes",
            "KiBy" => "kibibytes",
            "MiBy" => "mebibytes",
            "GiBy" => "gibibytes",
            "TiBy" => "tebibytes",
            "KBy" => "kilobytes",
            "MBy" => "megabytes",
            "GBy" => "gigabytes",
            "TBy" => "terabytes",
            "m" => "meters",
            "V" => "volts",
            "A" => "amperes",
            "J" => "joules",
            "W" => "watts",
            "g" => "grams",
            "Cel" => "celsius",
            "Hz" => "hertz",
            "%" => "percent",
            "1" => "",
            other => other,
        })
    } else {
        String::new()
    };
    let per = if usable(per) {
        let word = clean_unit(match per {
            "s" => "second",
            "m" => "minute",
            "h" => "hour",
            "d" => "day",
            "w" => "week",
            "mo" => "month",
            "y" => "year",
            other => other,
        });
        if word.is_empty() {
            word
        } else {
            format!("per_{word}")
        }
    } else {
        String::new()
    };
    (main, per)
}

/// A unit as metric name characters: invalid ones become `_`, runs of `_`
/// collapse, no `_` at either end.
fn clean_unit(unit: &str) -> String {
    unit.split(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

/// A Prometheus label name for an attribute key, as Prometheus's OTLP receiver
/// builds it: invalid characters become `_` and runs of `_` collapse; a name
/// starting with a digit gets `key_`; a reserved `__x__` name keeps its
/// underscores. `None` for a key with no valid character at all.
fn label_name(key: &str) -> Option<String> {
    let reserved = key
        .strip_prefix("__")
        .and_then(|k| k.strip_suffix("__"))
        .filter(|_| key.len() >= 4);
    let mut name = String::with_capacity(key.len() + 4);
    let mut last_was_underscore = false;
    for c in reserved.unwrap_or(key).chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
            last_was_underscore = false;
        } else if !last_was_underscore {
            name.push('_');
            last_was_underscore = true;
        }
    }
    if reserved.is_some() {
        name = format!("__{name}__");
    }
    if name.bytes().all(|b| b == b'_') {
        None
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some(format!("key_{name}"))
    } else {
        Some(name)
    }
}

/// Attributes as labels. Keys that sanitize to the same name have their values
/// joined with `;` in the order of the original keys, as the spec says;
/// attributes without a value or with an empty one are dropped.
pub(super) fn attribute_labels(attributes: Vec<otlp_common::KeyValue>) -> Vec<Label> {
    let mut named: Vec<(String, String, String)> = attributes
        .into_iter()
        .filter_map(|kv| {
            let value = any_value_string(kv.value?)?;
            Some((label_name(&kv.key)?, kv.key, value))
        })
        .filter(|(_, _, value)| !value.is_empty())
        .collect();
    named.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut labels: Vec<Label> = Vec::with_capacity(named.len());
    for (name, _, value) in named {
        match labels.last_mut() {
            Some(last) if last.name == name => {
                last.value = format!("{};{value}", last.value).into();
            }
            _ => labels.push(Label::new(name, value)),
        }
    }
    labels
}

/// An attribute value as label text, following the attribute spec: strings
/// as they are, numbers and booleans in their usual form, bytes as base64,
/// arrays and maps as JSON. `None` for a value that carries nothing.
pub(super) fn any_value_string(value: otlp_common::AnyValue) -> Option<String> {
    use otlp_common::any_value::Value;
    Some(match value.value? {
        Value::StringValue(s) => clean_value(s),
        Value::BoolValue(b) => b.to_string(),
        Value::IntValue(i) => i.to_string(),
        Value::DoubleValue(d) => d.to_string(),
        Value::BytesValue(b) => base64(&b),
        other @ (Value::ArrayValue(_) | Value::KvlistValue(_)) => {
            clean_value(any_value_json(Some(other)).to_string())
        }
        // Only meaningful with a profiles dictionary, which metrics never have.
        Value::StringValueStrindex(_) => return None,
    })
}

fn any_value_json(value: Option<otlp_common::any_value::Value>) -> serde_json::Value {
    use otlp_common::any_value::Value;
    use serde_json::Value as Json;
    match value {
        None | Some(Value::StringValueStrindex(_)) => Json::Null,
        Some(Value::StringValue(s)) => Json::String(s),
        Some(Value::BoolValue(b)) => Json::Bool(b),
        Some(Value::IntValue(i)) => Json::from(i),
        Some(Value::DoubleValue(d)) => serde_json::Number::from_f64(d)
            .map_or_else(|| Json::String(d.to_string()), Json::Number),
        Some(Value::BytesValue(b)) => Json::String(base64(&b)),
        Some(Value::ArrayValue(array)) => Json::Array(
            array
                .values
                .into_iter()
                .map(|v| any_value_json(v.value))
                .collect(),
        ),
        Some(Value::KvlistValue(map)) => Json::Object(
            map.values
                .into_iter()
                .map(|kv| (kv.key, any_value_json(kv.value.and_then(|v| v.value))))
                .collect(),
        ),
    }
}

/// Standard base64 with padding, how the attribute spec renders bytes.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Label values lose NUL bytes, which stores use as separators (as span names
/// do in `ingest::otlp`).
pub(super) fn clean_value(value: String) -> String {
    if value.contains('\0') {
        value.replace('\0', "\u{fffd}")
    } else {
        value
    }
}

/// A float as Prometheus writes `le` and `quantile` values (Go's
/// `FormatFloat(f, 'f', -1, 64)`): `1`, `0.005`, `+Inf`.
pub(super) fn format_float(value: f64) -> String {
    if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if value.is_nan() {
        "NaN".to_string()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_names_and_units() {
        // OTLP name, unit, shape -> family name, unit word; `-` for "".
        let cases = "
            http.server.request.duration  s            histogram  http_server_request_duration_seconds  seconds
            process.cpu.time              s            counter    process_cpu_time_seconds_total        seconds
            memory.usage                  By           gauge      memory_usage_bytes                    bytes
            memory.usage                  By           updown     memory_usage_bytes                    bytes
            utilization                   1            gauge      utilization_ratio                     ratio
            cpu.utilization.ratio         1            gauge      cpu_utilization_ratio                 ratio
            utilization                   1            updown     utilization                           -
            requests                      1            counter    requests_total                        -
            requests_total                -            counter    requests_total                        -
            requests.total                s            counter    requests_seconds_total                seconds
            total                         -            counter    total_total                           -
            http.requests                 {request}    counter    http_requests_total                   -
            network.io                    By/s         gauge      network_io_bytes_per_second           bytes_per_second
            queue.rate                    {message}/s  gauge      queue_rate_per_second                 per_second
            speed                         m/s          gauge      speed_meters_per_second               meters_per_second
            latency_seconds               s            histogram  latency_seconds                       seconds
            heap                          MiBy         gauge      heap_mebibytes                        mebibytes
            disk                          KiBy         gauge      disk_kibibytes                        kibibytes
            distance                      m            gauge      distance_meters                       meters
            gc.pause                      us           summary    gc_pause_microseconds                 microseconds
            temperature                   Cel          gauge      temperature_celsius                   celsius
            widgets                       widget.count gauge      widgets_widget_count                  widget_count
            2xx.responses                 -            counter    _2xx_responses_total                  -
            a..b__c--d                    -            gauge      a_b_c_d                               -
            app:requests                  -            counter    app:requests_total                    -
            ...                           s            gauge      -                                     -
            -                             -            gauge      -                                     -
        ";
        let word = |w: &str| {
            if w == "-" {
                String::new()
            } else {
                w.to_string()
            }
        };
        for line in cases.lines().filter(|l| !l.trim().is_empty()) {
            let [name, unit, shape, family, unit_word] =
                line.split_whitespace().collect::<Vec<_>>()[..]
            else {
                panic!("bad case {line:?}");
            };
            let shape = match shape {
                "gauge" => Shape::Gauge,
                "counter" => Shape::Counter,
                "updown" => Shape::UpDownSum,
                "histogram" => Shape::Histogram,
                "summary" => Shape::Summary,
                other => panic!("unknown shape {other}"),
            };
            let got = MetricName::new(&word(name), &word(unit), shape);
            let want = MetricName {
                family: word(family),
                unit: word(unit_word),
            };
            assert_eq!(got, want, "{line}");
        }
    }

    #[test]
    fn sanitizes_label_names() {
        let cases = [
            ("http.method", Some("http_method")),
            ("http..request--id", Some("http_request_id")),
            ("123abc", Some("key_123abc")),
            ("_private", Some("_private")),
            ("__reserved__", Some("__reserved__")),
            ("__a.b__", Some("__a_b__")),
            ("__x", Some("_x")),
            ("ünïcode", Some("_n_code")),
            ("", None),
            ("___", None),
            ("é", None),
        ];
        for (key, want) in cases {
            assert_eq!(label_name(key).as_deref(), want, "{key:?}");
        }
        // Keys that collide are joined in the order of the original keys.
        let kv = |key: &str, value: &str| otlp_common::KeyValue {
            key: key.to_string(),
            key_strindex: 0,
            value: Some(otlp_common::AnyValue {
                value: Some(otlp_common::any_value::Value::StringValue(
                    value.to_string(),
                )),
            }),
        };
        assert_eq!(
            attribute_labels(vec![kv("a_b", "2"), kv("a.b", "1"), kv("c", "")]),
            vec![Label::new("a_b", "1;2")]
        );
    }

    #[test]
    fn attribute_values_become_text() {
        use otlp_common::any_value::Value;
        let text = |value: Value| any_value_string(otlp_common::AnyValue { value: Some(value) });
        assert_eq!(text(Value::BoolValue(true)).as_deref(), Some("true"));
        assert_eq!(text(Value::IntValue(-3)).as_deref(), Some("-3"));
        assert_eq!(text(Value::DoubleValue(0.25)).as_deref(), Some("0.25"));
        assert_eq!(
            text(Value::BytesValue(b"hi!?".to_vec())).as_deref(),
            Some("aGkhPw==")
        );
        assert_eq!(
            text(Value::ArrayValue(otlp_common::ArrayValue {
                values: vec![otlp_common::AnyValue {
                    value: Some(Value::StringValue("a".into()))
                }]
            }))
            .as_deref(),
            Some(r#"["a"]"#)
        );
    }
}
