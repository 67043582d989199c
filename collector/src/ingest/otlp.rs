//! OTLP trace and log requests -> `model::Span` / `model::LogRecord`, with
//! validation.
//!
//! A span or log record with an invalid trace or span id is rejected on its own (OTLP partial
//! success); the rest of the request is kept. Names lose NUL bytes (the store
//! uses NUL as a key separator) and a resource without `service.name` gets
//! `unknown_service`, as the OpenTelemetry resource spec says.
//!
//! Attributes follow OpenTelemetry's attribute limits (`AttributeLimits`):
//! beyond the count limit they are dropped, the first ones kept; string and
//! byte values over the length limit are truncated (strings at a character
//! boundary), inside arrays and maps too. Both are counted (`Trimmed`).

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as otlp_common;
use opentelemetry_proto::tonic::logs::v1 as otlp_logs;
use opentelemetry_proto::tonic::trace::v1 as otlp_trace;

use crate::config::AttributeLimits;
use crate::model::{
    AttrValue, Event, KeyValue, Link, LogRecord, Resource, Scope, Severity, Span, SpanId, SpanKind,
    StatusCode, TraceId,
};

const SERVICE_NAME: &str = "service.name";
const UNKNOWN_SERVICE: &str = "unknown_service";

/// The accepted spans of a request and what was rejected.
#[derive(Debug, Default)]
pub struct ConvertedSpans {
    pub spans: Vec<Span>,
    pub rejected: u64,
    /// The first rejection reason, for the partial-success message.
    pub first_error: Option<String>,
    pub trimmed: Trimmed,
}

/// What the attribute limits took away from a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Attributes dropped beyond the count limit.
    pub dropped: u64,
    /// Values truncated to the length limit.
    pub truncated: u64,
}

/// Converts and validates every span of an export request.
pub fn convert_trace_request(
    request: ExportTraceServiceRequest,
    limits: &AttributeLimits,
) -> ConvertedSpans {
    let mut out = ConvertedSpans::default();
    let mut converter = Converter::new(limits);
    for resource_spans in request.resource_spans {
        let resource = Arc::new(
            converter.resource(
                resource_spans
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            ),
        );
        for scope_spans in resource_spans.scope_spans {
            let scope = Arc::new(
                scope_spans
                    .scope
                    .map(|s| Scope {
                        name: s.name,
                        version: s.version,
                    })
                    .unwrap_or_default(),
            );
            for span in scope_spans.spans {
                match converter.span(span, &resource, &scope) {
                    Ok(span) => out.spans.push(span),
                    Err(reason) => {
                        out.rejected += 1;
                        out.first_error.get_or_insert(reason);
                    }
                }
            }
        }
    }
    out.trimmed = converter.trimmed;
    out
}

/// The accepted log records of a request and what was rejected.
#[derive(Debug, Default)]
pub struct ConvertedLogs {
    pub records: Vec<LogRecord>,
    pub rejected: u64,
    /// The first rejection reason, for the partial-success message.
    pub first_error: Option<String>,
    pub trimmed: Trimmed,
}

/// Converts and validates every log record of an export request. Records
/// without a time get the observed time, or `now_unix_nano`.
pub fn convert_logs_request(
    request: ExportLogsServiceRequest,
    limits: &AttributeLimits,
    now_unix_nano: u64,
) -> ConvertedLogs {
    let mut out = ConvertedLogs::default();
    let mut converter = Converter::new(limits);
    let mut position = 0usize;
    for resource_logs in request.resource_logs {
        let resource = Arc::new(
            converter.resource(
                resource_logs
                    .resource
                    .map(|r| r.attributes)
                    .unwrap_or_default(),
            ),
        );
        for scope_logs in resource_logs.scope_logs {
            let scope = Arc::new(
                scope_logs
                    .scope
                    .map(|s| Scope {
                        name: s.name,
                        version: s.version,
                    })
                    .unwrap_or_default(),
            );
            for record in scope_logs.log_records {
                match converter.log(record, &resource, &scope, now_unix_nano) {
                    Ok(record) => out.records.push(record),
                    Err(reason) => {
                        out.rejected += 1;
                        out.first_error
                            .get_or_insert(format!("log record {position}: {reason}"));
                    }
                }
                position += 1;
            }
        }
    }
    out.trimmed = converter.trimmed;
    out
}

impl Converter<'_> {
    fn log(
        &mut self,
        record: otlp_logs::LogRecord,
        resource: &Arc<Resource>,
        scope: &Arc<Scope>,
        now_unix_nano: u64,
    ) -> Result<LogRecord, String> {
        // SDKs send no trace as empty bytes or as all zeros.
        let trace_id = match record.trace_id.as_slice() {
            [] => None,
            bytes if bytes.len() == 16 => parse_trace_id(bytes),
            bytes => return Err(format!("trace_id must be 16 bytes, got {}", bytes.len())),
        };
        let span_id = match record.span_id.as_slice() {
            [] => None,
            bytes if bytes.len() == 8 => parse_span_id(bytes),
            bytes => return Err(format!("span_id must be 8 bytes, got {}", bytes.len())),
        };
        let severity = match u8::try_from(record.severity_number) {
            Ok(number @ 1..=24) => Severity(number),
            _ => Severity::from_text(&record.severity_text),
        };
        let severity_text = if record.severity_text.is_empty() && severity.0 != 0 {
            severity.level().to_ascii_uppercase()
        } else {
            record.severity_text
        };
        let body = match record.body.and_then(|body| self.value(body)) {
            Some(AttrValue::Str(text)) => text.into_string(),
            Some(other) => other.to_json().to_string(),
            None => String::new(),
        };
        let mut attributes = self.attributes(record.attributes);
        if !record.event_name.is_empty() {
            attributes.push(KeyValue::new(
                "event.name",
                AttrValue::Str(record.event_name.into()),
            ));
        }
        let time_unix_nano = [
            record.time_unix_nano,
            record.observed_time_unix_nano,
            now_unix_nano,
        ]
        .into_iter()
        .find(|t| *t != 0)
        .unwrap_or(now_unix_nano);
        Ok(LogRecord {
            time_unix_nano,
            severity,
            severity_text,
            body,
            trace_id,
            span_id,
            resource: resource.clone(),
            scope: scope.clone(),
            attributes,
        })
    }

    fn resource(&mut self, attributes: Vec<otlp_common::KeyValue>) -> Resource {
        let mut service = None;
        let mut rest = Vec::with_capacity(attributes.len());
        for kv in self.attributes(attributes) {
            match kv {
                KeyValue {
                    key,
                    value: AttrValue::Str(name),
                } if key == SERVICE_NAME && !name.is_empty() => {
                    service = Some(clean_name(name.into_string()))
                }
                kv => rest.push(kv),
            }
        }
        Resource {
            service: service.unwrap_or_else(|| UNKNOWN_SERVICE.to_string()),
            attributes: rest,
        }
    }

    fn span(
        &mut self,
        span: otlp_trace::Span,
        resource: &Arc<Resource>,
        scope: &Arc<Scope>,
    ) -> Result<Span, String> {
        let trace_id = parse_trace_id(&span.trace_id).ok_or_else(|| {
            format!(
                "span {:?}: trace_id must be 16 bytes and not all zero, got {} bytes",
                span.name,
                span.trace_id.len()
            )
        })?;
        let span_id = parse_span_id(&span.span_id).ok_or_else(|| {
            format!(
                "span {:?}: span_id must be 8 bytes and not all zero, got {} bytes",
                span.name,
                span.span_id.len()
            )
        })?;
        let parent_span_id = match span.parent_span_id.len() {
            0 => None,
            _ => Some(span_id_or_zero(&span.parent_span_id).ok_or_else(|| {
                format!(
                    "span {:?}: parent_span_id must be empty or 8 bytes, got {} bytes",
                    span.name,
                    span.parent_span_id.len()
                )
            })?)
            .filter(|id| *id != [0; 8]),
        };
        let status = span.status.unwrap_or_default();
        Ok(Span {
            trace_id,
            span_id,
            parent_span_id,
            trace_state: span.trace_state,
            flags: span.flags,
            name: clean_name(span.name).into(),
            kind: match otlp_trace::span::SpanKind::try_from(span.kind) {
                Ok(otlp_trace::span::SpanKind::Internal) => SpanKind::Internal,
                Ok(otlp_trace::span::SpanKind::Server) => SpanKind::Server,
                Ok(otlp_trace::span::SpanKind::Client) => SpanKind::Client,
                Ok(otlp_trace::span::SpanKind::Producer) => SpanKind::Producer,
                Ok(otlp_trace::span::SpanKind::Consumer) => SpanKind::Consumer,
                _ => SpanKind::Unspecified,
            },
            start_unix_nano: span.start_time_unix_nano,
            end_unix_nano: span.end_time_unix_nano,
            attributes: self.attributes(span.attributes),
            events: span
                .events
                .into_iter()
                .map(|e| Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name,
                    attributes: self.attributes(e.attributes),
                })
                .collect(),
            // A link without a valid target says nothing; drop it, keep the span.
            links: span
                .links
                .into_iter()
                .filter_map(|l| {
                    Some(Link {
                        trace_id: parse_trace_id(&l.trace_id)?,
                        span_id: parse_span_id(&l.span_id)?,
                        attributes: self.attributes(l.attributes),
                    })
                })
                .collect(),
            status_code: match otlp_trace::status::StatusCode::try_from(status.code) {
                Ok(otlp_trace::status::StatusCode::Ok) => StatusCode::Ok,
                Ok(otlp_trace::status::StatusCode::Error) => StatusCode::Error,
                _ => StatusCode::Unset,
            },
            status_message: status.message,
            resource: resource.clone(),
            scope: scope.clone(),
        })
    }
}

fn parse_trace_id(bytes: &[u8]) -> Option<TraceId> {
    TraceId::try_from(bytes).ok().filter(|id| *id != [0; 16])
}

fn parse_span_id(bytes: &[u8]) -> Option<SpanId> {
    span_id_or_zero(bytes).filter(|id| *id != [0; 8])
}

fn span_id_or_zero(bytes: &[u8]) -> Option<SpanId> {
    SpanId::try_from(bytes).ok()
}

fn clean_name(name: String) -> String {
    if name.contains('\0') {
        name.replace('\0', "\u{fffd}")
    } else {
        name
    }
}

/// Converts attributes under one request's limits, counting what they cut.
struct Converter<'a> {
    limits: &'a AttributeLimits,
    trimmed: Trimmed,
}

impl<'a> Converter<'a> {
    fn new(limits: &'a AttributeLimits) -> Self {
        Converter {
            limits,
            trimmed: Trimmed::default(),
        }
    }

    /// Attributes without a value carry nothing and are dropped (not
    /// counted); beyond the count limit, the rest are dropped and counted.
    fn attributes(&mut self, attributes: Vec<otlp_common::KeyValue>) -> Vec<KeyValue> {
        let mut kept = Vec::with_capacity(attributes.len().min(self.limits.count));
        for kv in attributes {
            let Some(value) = kv.value else { continue };
            if kept.len() == self.limits.count {
                self.trimmed.dropped += 1;
                continue;
            }
            if let Some(value) = self.value(value) {
                kept.push(KeyValue {
                    key: kv.key.into(),
                    value,
                });
            }
        }
        kept
    }

    fn value(&mut self, value: otlp_common::AnyValue) -> Option<AttrValue> {
        use otlp_common::any_value::Value;
        let limit = self.limits.value_length;
        Some(match value.value? {
            Value::StringValue(mut s) => {
                // A string of at most `limit` bytes has at most as many
                // characters: most values are, and are not walked.
                if s.len() > limit
                    && let Some((cut, _)) = s.char_indices().nth(limit)
                {
                    s.truncate(cut);
                    self.trimmed.truncated += 1;
                }
                AttrValue::Str(s.into())
            }
            Value::BoolValue(b) => AttrValue::Bool(b),
            Value::IntValue(i) => AttrValue::Int(i),
            Value::DoubleValue(d) => AttrValue::Double(d),
            Value::BytesValue(mut b) => {
                if b.len() > limit {
                    b.truncate(limit);
                    self.trimmed.truncated += 1;
                }
                AttrValue::Bytes(b)
            }
            Value::ArrayValue(a) => {
                AttrValue::Array(a.values.into_iter().filter_map(|v| self.value(v)).collect())
            }
            Value::KvlistValue(kv) => AttrValue::Map(self.attributes(kv.values)),
            // Only meaningful with a profiles dictionary, which traces never have.
            Value::StringValueStrindex(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a JSON request (OTLP/JSON encoding) through the converter and
    /// compares a compact rendering with `expect`.
    fn check(json: &str, expect: &str) {
        let request: ExportTraceServiceRequest = serde_json::from_str(json).unwrap();
        let converted = convert_trace_request(request, &AttributeLimits::default());
        let mut got = String::new();
        for span in &converted.spans {
            got.push_str(&format!(
                "{} {} parent={:?} svc={} kind={:?} status={:?} dur={} attrs={:?} res={:?} scope={} links={}\n",
                hex::encode(span.trace_id),
                hex::encode(span.span_id),
                span.parent_span_id.map(hex::encode),
                span.service(),
                span.kind,
                span.status_code,
                span.duration_nanos(),
                span.attributes
                    .iter()
                    .map(|kv| format!("{}={}", kv.key, kv.value.to_display_string()))
                    .collect::<Vec<_>>(),
                span.resource
                    .attributes
                    .iter()
                    .map(|kv| kv.key.as_str())
                    .collect::<Vec<_>>(),
                span.scope.name,
                span.links.len(),
            ));
        }
        if let Some(error) = &converted.first_error {
            got.push_str(&format!("rejected={} {error}\n", converted.rejected));
        }
        assert_eq!(got.trim(), expect.trim(), "\n--- got ---\n{got}");
    }

    #[test]
    fn converts_a_full_span() {
        check(
            r#"{"resourceSpans":[{"resource":{"attributes":[
                {"key":"service.name","value":{"stringValue":"order"}},
                {"key":"host.name","value":{"stringValue":"h1"}}]},
              "scopeSpans":[{"scope":{"name":"shop","version":"1"},"spans":[{
                "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
                "parentSpanId":"eee19b7ec3c1b173","name":"POST /orders","kind":2,
                "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000",
                "attributes":[{"key":"http.status_code","value":{"intValue":"500"}},
                              {"key":"ok","value":{"boolValue":true}},
                              {"key":"tags","value":{"arrayValue":{"values":[{"stringValue":"a"}]}}}],
                "links":[{"traceId":"5b8efff798038103d269b633813fc60d","spanId":"eee19b7ec3c1b175"},
                         {"traceId":"00","spanId":"eee19b7ec3c1b175"}],
                "status":{"code":2,"message":"boom"}}]}]}]}"#,
            r#"5b8efff798038103d269b633813fc60c eee19b7ec3c1b174 parent=Some("eee19b7ec3c1b173") svc=order kind=Server status=Error dur=1000000000 attrs=["http.status_code=500", "ok=true", "tags=[\"a\"]"] res=["host.name"] scope=shop links=1"#,
        );
    }

    #[test]
    fn missing_service_name_is_unknown_service() {
        check(
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{
                "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
                "parentSpanId":"0000000000000000","name":"x"}]}]}]}"#,
            r#"5b8efff798038103d269b633813fc60c eee19b7ec3c1b174 parent=None svc=unknown_service kind=Unspecified status=Unset dur=0 attrs=[] res=[] scope= links=0"#,
        );
    }

    #[test]
    fn invalid_ids_reject_only_their_span() {
        check(
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"a"}}]},
              "scopeSpans":[{"spans":[
                {"traceId":"00000000000000000000000000000000","spanId":"eee19b7ec3c1b174","name":"zero"},
                {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"ee","name":"short"},
                {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"good"}]}]}]}"#,
            r#"5b8efff798038103d269b633813fc60c eee19b7ec3c1b174 parent=None svc=a kind=Unspecified status=Unset dur=0 attrs=[] res=[] scope= links=0
rejected=2 span "zero": trace_id must be 16 bytes and not all zero, got 16 bytes"#,
        );
    }

    #[test]
    fn attribute_limits_drop_the_excess_and_truncate_long_values() {
        let attribute =
            |key: &str, value: serde_json::Value| serde_json::json!({"key": key, "value": value});
        let mut attributes = vec![
            attribute("long", serde_json::json!({"stringValue": "ééééééé"})),
            attribute("short", serde_json::json!({"stringValue": "ok"})),
            attribute("bytes", serde_json::json!({"bytesValue": "AAECAwQFBgc="})),
            attribute(
                "array",
                serde_json::json!({"arrayValue": {"values": [{"stringValue": "abcdefgh"}, {"intValue": "7"}]}}),
            ),
            attribute(
                "map",
                serde_json::json!({"kvlistValue": {"values": [
                    {"key": "a", "value": {"intValue": "1"}},
                    {"key": "b", "value": {"intValue": "2"}},
                    {"key": "c", "value": {"intValue": "3"}},
                    {"key": "d", "value": {"intValue": "4"}},
                    {"key": "e", "value": {"intValue": "5"}},
                    {"key": "f", "value": {"intValue": "6"}}
                ]}}),
            ),
        ];
        attributes.extend(
            (0..3).map(|i| attribute(&format!("extra{i}"), serde_json::json!({"intValue": "1"}))),
        );
        let request = serde_json::json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
            "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
            "name": "x", "attributes": attributes}]}]}]});
        let request: ExportTraceServiceRequest = serde_json::from_value(request).unwrap();
        let limits = AttributeLimits {
            count: 5,
            value_length: 4,
        };
        let converted = convert_trace_request(request, &limits);
        let span = &converted.spans[0];
        let keys: Vec<&str> = span.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["long", "short", "bytes", "array", "map"]);
        assert_eq!(span.attributes[0].value, AttrValue::Str("éééé".into()));
        assert_eq!(span.attributes[2].value, AttrValue::Bytes(vec![0, 1, 2, 3]));
        assert_eq!(
            span.attributes[3].value,
            AttrValue::Array(vec![AttrValue::Str("abcd".into()), AttrValue::Int(7)])
        );
        let AttrValue::Map(map) = &span.attributes[4].value else {
            panic!("a map")
        };
        assert_eq!(map.len(), 5);
        // 3 extra attributes and one map entry dropped; a string, the bytes
        // and the array's string truncated.
        assert_eq!(
            converted.trimmed,
            Trimmed {
                dropped: 4,
                truncated: 3
            }
        );
    }
}
