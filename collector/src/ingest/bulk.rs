//! The Elasticsearch bulk API, so Fluent Bit, Vector, Logstash and Filebeat
//! can ship logs to Strand with their Elasticsearch outputs unchanged.
//!
//! A body is NDJSON: an action line (`{"index":{...}}` or `{"create":{...}}`)
//! followed by the document. Each document becomes a `LogRecord`, reading the
//! fields those shippers use for time, message, level, service and trace
//! context; every other field becomes an attribute (nested objects as dotted
//! keys). Problems with one item are reported in that item, the way
//! Elasticsearch does, and never cost the other items.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::model::{AttrValue, KeyValue, LogRecord, Resource, Scope, Severity, SpanId, TraceId};

const DEFAULT_INDEX: &str = "logs";
const TIME_FIELDS: [&str; 4] = ["@timestamp", "timestamp", "time", "date"];
const BODY_FIELDS: [&str; 5] = ["message", "log", "msg", "body", "body.text"];
const LEVEL_FIELDS: [&str; 5] = [
    "level",
    "severity",
    "log.level",
    "loglevel",
    "severity_text",
];
const SERVICE_FIELDS: [&str; 5] = [
    "service.name",
    "service",
    "kubernetes.container_name",
    "kubernetes.labels.app",
    "app",
];
const TRACE_FIELDS: [&str; 4] = ["trace_id", "traceId", "trace.id", "traceid"];
const SPAN_FIELDS: [&str; 4] = ["span_id", "spanId", "span.id", "spanid"];
/// The Elastic Common Schema's field sets that describe where a log comes
/// from rather than the event: they become the record's resource.
const RESOURCE_PREFIXES: [&str; 6] = [
    "service.",
    "host.",
    "agent.",
    "cloud.",
    "container.",
    "orchestrator.",
];
/// Where the OpenTelemetry Collector's Elasticsearch exporter (`otel`
/// mapping mode) nests resource and record attributes.
const OTEL_RESOURCE: &str = "resource.attributes.";
const OTEL_ATTRIBUTES: &str = "attributes.";

/// A body that is not a bulk request at all.
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error("the bulk request body is empty")]
    Empty,
    #[error("the bulk request body is not UTF-8")]
    NotUtf8,
    #[error("the bulk request has no valid action line: {0}")]
    NoActions(String),
}

/// The records to store and the answer for every item, in request order.
#[derive(Debug)]
pub struct BulkRequest {
    pub records: Vec<LogRecord>,
    pub items: Vec<BulkItem>,
}

/// One item of a bulk request and how it fared.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkItem {
    /// `index` or `create`, echoed as the key of the item's answer.
    pub action: String,
    pub index: String,
    pub id: String,
    /// `None` when accepted; else (HTTP status, error type, reason).
    pub error: Option<(u16, &'static str, String)>,
}

/// Parses a bulk body; `path_index` comes from `/{index}/_bulk`.
pub fn parse_bulk(
    body: &[u8],
    path_index: Option<&str>,
    now_unix_nano: u64,
) -> Result<BulkRequest, BulkError> {
    let text = std::str::from_utf8(body).map_err(|_| BulkError::NotUtf8)?;
    let mut lines = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .peekable();
    if lines.peek().is_none() {
        return Err(BulkError::Empty);
    }
    let mut resources: HashMap<(String, String), Arc<Resource>> = HashMap::new();
    let scope = Arc::new(Scope {
        name: "elasticsearch-bulk".into(),
        version: String::new(),
    });
    let mut request = BulkRequest {
        records: Vec::new(),
        items: Vec::new(),
    };
    let mut first_bad_action = None;
    let mut any_action = false;
    while let Some(line) = lines.next() {
        let position = request.items.len();
        let Some((action, meta)) = parse_action(line) else {
            first_bad_action.get_or_insert_with(|| line.chars().take(80).collect::<String>());
            // The pairing is lost: skip to the next line that is an action.
            continue;
        };
        any_action = true;
        let index = meta
            .get("_index")
            .and_then(Value::as_str)
            .or(path_index)
            .unwrap_or(DEFAULT_INDEX)
            .to_string();
        let id = meta
            .get("_id")
            .and_then(|v| {
                v.as_str()
                    .map(str::to_string)
                    .or_else(|| Some(v.to_string()))
            })
            .unwrap_or_else(|| format!("{now_unix_nano:x}-{position}"));
        let mut item = BulkItem {
            action: action.clone(),
            index,
            id,
            error: None,
        };
        if action == "delete" {
            item.error = Some(unsupported());
            request.items.push(item);
            continue;
        }
        let source = lines.next();
        if action == "update" {
            item.error = Some(unsupported());
        } else {
            match source.map(|s| parse_document(s, &item.index, now_unix_nano)) {
                None => {
                    item.error = Some((
                        400,
                        "action_request_validation_exception",
                        "the action line has no document after it".into(),
                    ))
                }
                Some(Err(reason)) => item.error = Some((400, "mapper_parsing_exception", reason)),
                Some(Ok(document)) => {
                    let key = (document.service.clone(), resource_key(&document.resource));
                    let resource = resources
                        .entry(key)
                        .or_insert_with(|| {
                            Arc::new(Resource {
                                service: document.service.clone(),
                                attributes: document.resource.clone(),
                            })
                        })
                        .clone();
                    request.records.push(LogRecord {
                        time_unix_nano: document.time_unix_nano,
                        severity: document.severity,
                        severity_text: document.severity_text,
                        body: document.body,
                        trace_id: document.trace_id,
                        span_id: document.span_id,
                        resource,
                        scope: scope.clone(),
                        attributes: document.attributes,
                    });
                }
            }
        }
        request.items.push(item);
    }
    if !any_action {
        return Err(BulkError::NoActions(first_bad_action.unwrap_or_default()));
    }
    Ok(request)
}

fn unsupported() -> (u16, &'static str, String) {
    (
        400,
        "illegal_argument_exception",
        "strand accepts only index and create actions".into(),
    )
}

fn parse_action(line: &str) -> Option<(String, Map<String, Value>)> {
    let Value::Object(object) = serde_json::from_str(line).ok()? else {
        return None;
    };
    let mut entries = object.into_iter();
    let (action, meta) = entries.next()?;
    if entries.next().is_some()
        || !["index", "create", "delete", "update"].contains(&action.as_str())
    {
        return None;
    }
    match meta {
        Value::Object(meta) => Some((action, meta)),
        _ => Some((action, Map::new())),
    }
}

struct Document {
    time_unix_nano: u64,
    severity: Severity,
    severity_text: String,
    body: String,
    service: String,
    trace_id: Option<TraceId>,
    span_id: Option<SpanId>,
    resource: Vec<KeyValue>,
    attributes: Vec<KeyValue>,
}

fn parse_document(line: &str, index: &str, now_unix_nano: u64) -> Result<Document, String> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| format!("failed to parse document: {e}"))?;
    let Value::Object(object) = value else {
        return Err("the document must be a JSON object".into());
    };
    // Flattened to dotted keys, so `{"log":{"level":"x"}}` and
    // `{"log.level":"x"}` read the same.
    let mut fields: Vec<(String, Value)> = Vec::new();
    flatten("", Value::Object(object.clone()), &mut fields);
    // OpenTelemetry's own nesting reads as the ECS names it carries.
    let mut otel_resource = std::collections::HashSet::new();
    for (key, _) in &mut fields {
        if let Some(name) = key.strip_prefix(OTEL_RESOURCE) {
            *key = name.to_string();
            otel_resource.insert(key.clone());
        } else if let Some(name) = key.strip_prefix(OTEL_ATTRIBUTES) {
            *key = name.to_string();
        }
    }
    let mut taken = |names: &[&str]| -> Option<Value> {
        names.iter().find_map(|name| {
            let at = fields.iter().position(|(key, _)| key == name)?;
            Some(fields.remove(at).1)
        })
    };
    let time_unix_nano = match taken(&TIME_FIELDS) {
        None => now_unix_nano,
        Some(value) => parse_time(&value).ok_or_else(|| format!("unreadable timestamp {value}"))?,
    };
    let body = match taken(&BODY_FIELDS) {
        Some(Value::String(text)) => text,
        Some(other) => other.to_string(),
        None => Value::Object(object).to_string(),
    };
    let (severity, severity_text) = match taken(&LEVEL_FIELDS) {
        Some(Value::String(text)) => (Severity::from_text(&text), text),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(level @ 1..=24) => (
                Severity(level as u8),
                Severity(level as u8).level().to_string(),
            ),
            _ => (Severity(0), n.to_string()),
        },
        _ => (Severity(0), String::new()),
    };
    let service = match taken(&SERVICE_FIELDS) {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => index.to_string(),
    };
    let trace_id = hex_id::<16>(taken(&TRACE_FIELDS), "trace_id", 32)?;
    let span_id = hex_id::<8>(taken(&SPAN_FIELDS), "span_id", 16)?;
    let (resource, attributes): (Vec<_>, Vec<_>) = fields
        .into_iter()
        .filter_map(|(key, value)| Some(KeyValue::new(key, attr_value(value)?)))
        .partition(|kv| {
            otel_resource.contains(kv.key.as_str())
                || RESOURCE_PREFIXES
                    .iter()
                    .any(|prefix| kv.key.starts_with(prefix))
        });
    Ok(Document {
        time_unix_nano,
        severity,
        severity_text,
        body,
        service,
        trace_id,
        span_id,
        resource,
        attributes,
    })
}

fn flatten(prefix: &str, value: Value, into: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(object) => {
            for (key, value) in object {
                let key = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                flatten(&key, value, into);
            }
        }
        other => into.push((prefix.to_string(), other)),
    }
}

fn attr_value(value: Value) -> Option<AttrValue> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => AttrValue::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AttrValue::Int(i),
            None => AttrValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => AttrValue::Str(s.into()),
        Value::Array(items) => AttrValue::Array(items.into_iter().filter_map(attr_value).collect()),
        Value::Object(object) => AttrValue::Map(
            object
                .into_iter()
                .filter_map(|(k, v)| Some(KeyValue::new(k, attr_value(v)?)))
                .collect(),
        ),
    })
}

/// RFC 3339 / ISO 8601 (`Z`, a `+02:00` offset, or no zone meaning UTC),
/// or epoch milliseconds; numbers below 1e11 are epoch seconds, possibly
/// fractional (Fluent Bit's float times).
fn parse_time(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => {
            let number = n.as_f64()?;
            if !(0.0..1e17).contains(&number) {
                return None;
            }
            Some(if number < 1e11 {
                (number * 1e9) as u64
            } else {
                (number * 1e6) as u64
            })
        }
        Value::String(text) => {
            let (local, offset_seconds) = split_zone(text.trim())?;
            let time = humantime::parse_rfc3339_weak(local).ok()?;
            let nanos = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
            u64::try_from(nanos - i128::from(offset_seconds) * 1_000_000_000).ok()
        }
        _ => None,
    }
}

/// Splits the zone off a time: (local time, offset east of UTC in seconds).
fn split_zone(text: &str) -> Option<(&str, i64)> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let time_start = text.find(['T', 't', ' '])?;
    let Some(sign_at) = text[time_start..].rfind(['+', '-']).map(|i| time_start + i) else {
        return Some((text, 0));
    };
    let zone: String = text[sign_at + 1..].chars().filter(|c| *c != ':').collect();
    if zone.len() != 4 || !zone.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = zone[..2].parse().ok()?;
    let minutes: i64 = zone[2..].parse().ok()?;
    let sign = if text.as_bytes()[sign_at] == b'-' {
        -1
    } else {
        1
    };
    Some((&text[..sign_at], sign * (hours * 3_600 + minutes * 60)))
}

fn hex_id<const N: usize>(
    value: Option<Value>,
    name: &str,
    digits: usize,
) -> Result<Option<[u8; N]>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let invalid = || format!("{name} must be {digits} hex characters");
    let text = value.as_str().ok_or_else(invalid)?;
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = hex::decode(text).map_err(|_| invalid())?;
    let id: [u8; N] = bytes.try_into().map_err(|_| invalid())?;
    Ok((id != [0; N]).then_some(id))
}

fn resource_key(attributes: &[KeyValue]) -> String {
    attributes
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value.to_display_string()))
        .collect::<Vec<_>>()
        .join("\u{1}")
}

/// Elasticsearch's bulk answer. When `stored` is false (the daemon could not
/// store, e.g. overloaded) accepted items answer 429, so shippers retry them.
pub fn bulk_response(items: &[BulkItem], took_ms: u64, stored: bool) -> Value {
    let mut errors = false;
    let items: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(seq_no, item)| {
            let error = item.error.clone().or_else(|| {
                (!stored).then(|| {
                    (
                        429,
                        "es_rejected_execution_exception",
                        "strand is overloaded, retry later".to_string(),
                    )
                })
            });
            let answer = match error {
                Some((status, kind, reason)) => {
                    errors = true;
                    json!({
                        "_index": item.index, "_id": item.id, "status": status,
                        "error": {"type": kind, "reason": reason},
                    })
                }
                None => json!({
                    "_index": item.index, "_id": item.id, "_version": 1,
                    "result": "created",
                    "_shards": {"total": 1, "successful": 1, "failed": 0},
                    "status": 201, "_seq_no": seq_no, "_primary_term": 1,
                }),
            };
            json!({ item.action.clone(): answer })
        })
        .collect();
    json!({"took": took_ms, "errors": errors, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_764_064_800_000_000_000;

    #[test]
    fn fluent_bit_kubernetes_logs() {
        let body = concat!(
            "{\"create\":{\"_index\":\"fluent-bit\"}}\n",
            "{\"@timestamp\":\"2025-11-25T10:00:00.123Z\",\"log\":\"GET /api 200\",\"stream\":\"stdout\",",
            "\"kubernetes\":{\"pod_name\":\"shop-1\",\"container_name\":\"payment\",\"labels\":{\"app\":\"payment\"}}}\n",
        );
        let request = parse_bulk(body.as_bytes(), None, NOW).unwrap();
        assert_eq!(request.items.len(), 1);
        assert_eq!(request.items[0].index, "fluent-bit");
        let record = &request.records[0];
        assert_eq!(record.time_unix_nano, NOW + 123_000_000);
        assert_eq!(record.body, "GET /api 200");
        assert_eq!(record.service(), "payment");
        let keys: Vec<&str> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["kubernetes.labels.app", "kubernetes.pod_name", "stream"]
        );
    }

    #[test]
    fn vector_and_filebeat_documents() {
        let body = concat!(
            "{\"index\":{\"_index\":\"vector-2025.11.25\",\"_id\":\"a1\"}}\r\n",
            "{\"message\":\"order created\",\"timestamp\":1764064800000,\"host\":\"node-1\",\"level\":\"WARNING\",",
            "\"trace_id\":\"4BF92F3577B34DA6A3CE929D0E0E4736\",\"span_id\":\"00f067aa0ba902b7\"}\n",
            "\n",
            "{\"create\":{}}\n",
            "{\"@timestamp\":\"2025-11-25T10:00:00Z\",\"message\":\"boom\",\"log\":{\"level\":\"error\"},",
            "\"service\":{\"name\":\"order\",\"version\":\"1.2\"}}",
        );
        let request = parse_bulk(body.as_bytes(), Some("app"), NOW).unwrap();
        assert_eq!(request.items[0].id, "a1");
        assert_eq!(request.items[1].index, "app");
        let vector = &request.records[0];
        assert_eq!(vector.time_unix_nano, NOW);
        assert_eq!(vector.severity.level(), "warn");
        assert_eq!(vector.severity_text, "WARNING");
        assert_eq!(vector.service(), "vector-2025.11.25");
        assert_eq!(
            hex::encode(vector.trace_id.unwrap()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            vector.span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let filebeat = &request.records[1];
        assert_eq!(filebeat.severity.level(), "error");
        assert_eq!(filebeat.service(), "order");
        assert_eq!(filebeat.resource.attributes[0].key, "service.version");
    }

    #[test]
    fn elastic_common_schema_and_opentelemetry_documents() {
        let body = concat!(
            "{\"create\":{\"_index\":\"logs-checkout-default\"}}\n",
            "{\"@timestamp\":\"2025-11-25T10:00:00Z\",\"message\":\"declined\",",
            "\"log\":{\"level\":\"ERROR\",\"logger\":\"payments\"},\"service\":{\"name\":\"checkout\"},",
            "\"trace\":{\"id\":\"4bf92f3577b34da6a3ce929d0e0e4736\"},\"span.id\":\"00f067aa0ba902b7\",",
            "\"host\":{\"name\":\"node-1\"},\"cloud\":{\"region\":\"eu-west-1\"},",
            "\"container\":{\"id\":\"c1\"},\"order\":{\"id\":7,\"lines\":[1,2]}}\n",
            "{\"create\":{\"_index\":\"logs-generic.otel-default\"}}\n",
            "{\"@timestamp\":\"2025-11-25T10:00:00Z\",\"body\":{\"text\":\"cart saved\"},",
            "\"severity_text\":\"WARN\",\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",",
            "\"resource\":{\"attributes\":{\"service.name\":\"cart\",\"process.pid\":42}},",
            "\"attributes\":{\"cart.items\":3}}\n",
        );
        let request = parse_bulk(body.as_bytes(), None, NOW).unwrap();
        let keys = |kvs: &[KeyValue]| kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>();

        let ecs = &request.records[0];
        assert_eq!(ecs.time_unix_nano, NOW);
        assert_eq!((ecs.body.as_str(), ecs.service()), ("declined", "checkout"));
        assert_eq!(ecs.severity.level(), "error");
        assert_eq!(
            ecs.trace_id.map(hex::encode).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            ecs.span_id.map(hex::encode).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(
            keys(&ecs.resource.attributes),
            ["cloud.region", "container.id", "host.name"]
        );
        assert_eq!(
            keys(&ecs.attributes),
            ["log.logger", "order.id", "order.lines"]
        );

        let otel = &request.records[1];
        assert_eq!((otel.body.as_str(), otel.service()), ("cart saved", "cart"));
        assert_eq!(otel.severity.level(), "warn");
        assert!(otel.trace_id.is_some());
        assert_eq!(keys(&otel.resource.attributes), ["process.pid"]);
        assert_eq!(keys(&otel.attributes), ["cart.items"]);
    }

    #[test]
    fn bad_items_are_reported_and_the_rest_kept() {
        let body = concat!(
            "{\"index\":{}}\n{\"message\":\"one\"}\n",
            "{\"index\":{}}\n{\"message\":\"broken\n",
            "{\"delete\":{\"_id\":\"x\"}}\n",
            "{\"index\":{}}\n{\"message\":\"bad id\",\"trace_id\":\"xyz\"}\n",
            "{\"create\":{}}\n{\"message\":\"two\"}\n",
        );
        let request = parse_bulk(body.as_bytes(), None, NOW).unwrap();
        let bodies: Vec<&str> = request.records.iter().map(|r| r.body.as_str()).collect();
        assert_eq!(bodies, vec!["one", "two"]);
        let statuses: Vec<Option<u16>> = request
            .items
            .iter()
            .map(|i| i.error.as_ref().map(|e| e.0))
            .collect();
        assert_eq!(statuses, vec![None, Some(400), Some(400), Some(400), None]);

        let answer = bulk_response(&request.items, 3, true);
        assert_eq!(answer["errors"], true);
        assert_eq!(answer["items"][0]["index"]["status"], 201);
        assert_eq!(
            answer["items"][1]["index"]["error"]["type"],
            "mapper_parsing_exception"
        );
        assert_eq!(answer["items"][2]["delete"]["status"], 400);
        assert_eq!(answer["items"][4]["create"]["result"], "created");
        let overloaded = bulk_response(&request.items, 3, false);
        assert_eq!(overloaded["items"][0]["index"]["status"], 429);
    }

    #[test]
    fn times_with_zones_and_epochs() {
        let at = |v: Value| parse_time(&v);
        assert_eq!(at(json!("2025-11-25T10:00:00Z")), Some(NOW));
        assert_eq!(at(json!("2025-11-25T12:00:00+02:00")), Some(NOW));
        assert_eq!(at(json!("2025-11-25T09:30:00-0030")), Some(NOW));
        assert_eq!(at(json!("2025-11-25T10:00:00")), Some(NOW));
        assert_eq!(at(json!(1_764_064_800.5)), Some(NOW + 500_000_000));
        assert_eq!(at(json!(1_764_064_800_000u64)), Some(NOW));
        assert_eq!(at(json!("soon")), None);
    }

    #[test]
    fn whole_body_errors() {
        assert!(matches!(parse_bulk(b"", None, NOW), Err(BulkError::Empty)));
        assert!(matches!(
            parse_bulk(b"\n \n", None, NOW),
            Err(BulkError::Empty)
        ));
        assert!(matches!(
            parse_bulk(&[0xff, 0xfe], None, NOW),
            Err(BulkError::NotUtf8)
        ));
        assert!(matches!(
            parse_bulk(b"{\"message\":\"no action\"}", None, NOW),
            Err(BulkError::NoActions(_))
        ));
    }

    proptest! {
        #[test]
        fn never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_bulk(&bytes, None, NOW);
        }

        #[test]
        fn never_panics_on_json_fragments(lines in proptest::collection::vec(
            prop_oneof![
                Just("{\"index\":{}}".to_string()),
                Just("{\"create\":{\"_index\":3}}".to_string()),
                Just("{\"delete\":{}}".to_string()),
                Just("{\"@timestamp\":1e300,\"level\":99}".to_string()),
                Just("{\"time\":\"2025-11-25T10:00:00+02:00\",\"trace_id\":\"\"}".to_string()),
                Just("[1,2]".to_string()),
                "\\PC{0,40}",
            ],
            0..12,
        )) {
            let _ = parse_bulk(lines.join("\n").as_bytes(), Some("x"), NOW);
        }
    }
}
