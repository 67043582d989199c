//! `model::Span` -> OTLP `TracesData`, the way back of `otlp.rs`: Tempo's
//! and Jaeger v3's query APIs answer traces in OTLP, as protobuf (Tempo's
//! `tempopb.Trace` has the wire shape of `TracesData`: field 1, repeated
//! `ResourceSpans`) or as OTLP/JSON (hex ids, 64-bit integers as strings,
//! enums as numbers, fields at their default left out, as the OpenTelemetry
//! Collector's `pdata` writes it and Jaeger serves it).
//!
//! Kept beside the decoder so that the OTLP wire types stay in `ingest`: the
//! API gets bytes or a JSON value, never a generated message.

use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1 as otlp_common;
use opentelemetry_proto::tonic::resource::v1 as otlp_resource;
use opentelemetry_proto::tonic::trace::v1 as otlp_trace;
use prost::Message;
use serde_json::Value;

use crate::model::{AttrValue, KeyValue, Resource, Scope, Span, SpanKind, StatusCode};

/// The spans (of one trace or several) as OTLP protobuf `TracesData`.
pub fn traces_protobuf(spans: &[Span]) -> Vec<u8> {
    traces_data(spans).encode_to_vec()
}

/// `tempopb.TraceByIDResponse`: the trace as its field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct TraceByIdResponse {
    /// An encoded `tempopb.Trace` (bytes and an embedded message share the
    /// wire encoding).
    #[prost(bytes = "vec", tag = "1")]
    trace: Vec<u8>,
}

/// Tempo's v2 trace-by-id answer in protobuf: [`traces_protobuf`] wrapped
/// as `tempopb.TraceByIDResponse`.
pub fn trace_by_id_response_protobuf(spans: &[Span]) -> Vec<u8> {
    TraceByIdResponse {
        trace: traces_protobuf(spans),
    }
    .encode_to_vec()
}

/// The spans as OTLP/JSON `TracesData`: `{"resourceSpans": [...]}`.
pub fn traces_json(spans: &[Span]) -> Value {
    let mut json = serde_json::to_value(traces_data(spans)).unwrap_or(Value::Null);
    prune_defaults(&mut json);
    json
}

/// The spans of one scope.
type ScopeGroup<'a> = (&'a Arc<Scope>, Vec<&'a Span>);

/// The spans grouped by resource, then by scope, in the order met.
fn traces_data(spans: &[Span]) -> otlp_trace::TracesData {
    let mut groups: Vec<(&Arc<Resource>, Vec<ScopeGroup>)> = Vec::new();
    for span in spans {
        let group = match groups
            .iter()
            .position(|(r, _)| Arc::ptr_eq(r, &span.resource) || ***r == *span.resource)
        {
            Some(i) => &mut groups[i].1,
            None => {
                groups.push((&span.resource, Vec::new()));
                &mut groups.last_mut().expect("just pushed").1
            }
        };
        match group
            .iter()
            .position(|(s, _)| Arc::ptr_eq(s, &span.scope) || ***s == *span.scope)
        {
            Some(i) => group[i].1.push(span),
            None => group.push((&span.scope, vec![span])),
        }
    }
    otlp_trace::TracesData {
        resource_spans: groups
            .into_iter()
            .map(|(resource, scopes)| otlp_trace::ResourceSpans {
                resource: Some(resource_of(resource)),
                scope_spans: scopes
                    .into_iter()
                    .map(|(scope, spans)| otlp_trace::ScopeSpans {
                        scope: Some(otlp_common::InstrumentationScope {
                            name: scope.name.clone(),
                            version: scope.version.clone(),
                            ..Default::default()
                        }),
                        spans: spans.into_iter().map(span_of).collect(),
                        schema_url: String::new(),
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect(),
    }
}

/// `service.name` goes back first among the resource's attributes.
fn resource_of(resource: &Resource) -> otlp_resource::Resource {
    let service = KeyValue::new(
        "service.name",
        AttrValue::Str(resource.service.as_str().into()),
    );
    otlp_resource::Resource {
        attributes: std::iter::once(&service)
            .chain(&resource.attributes)
            .map(key_value)
            .collect(),
        ..Default::default()
    }
}

fn span_of(span: &Span) -> otlp_trace::Span {
    use otlp_trace::span::SpanKind as Kind;
    use otlp_trace::status::StatusCode as Code;
    let kind = match span.kind {
        SpanKind::Unspecified => Kind::Unspecified,
        SpanKind::Internal => Kind::Internal,
        SpanKind::Server => Kind::Server,
        SpanKind::Client => Kind::Client,
        SpanKind::Producer => Kind::Producer,
        SpanKind::Consumer => Kind::Consumer,
    };
    let code = match span.status_code {
        StatusCode::Unset => Code::Unset,
        StatusCode::Ok => Code::Ok,
        StatusCode::Error => Code::Error,
    };
    otlp_trace::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: span.trace_state.clone(),
        parent_span_id: span.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: span.flags,
        name: span.name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_nano,
        end_time_unix_nano: span.end_unix_nano,
        attributes: span.attributes.iter().map(key_value).collect(),
        events: span
            .events
            .iter()
            .map(|event| otlp_trace::span::Event {
                time_unix_nano: event.time_unix_nano,
                name: event.name.clone(),
                attributes: event.attributes.iter().map(key_value).collect(),
                dropped_attributes_count: 0,
            })
            .collect(),
        links: span
            .links
            .iter()
            .map(|link| otlp_trace::span::Link {
                trace_id: link.trace_id.to_vec(),
                span_id: link.span_id.to_vec(),
                attributes: link.attributes.iter().map(key_value).collect(),
                ..Default::default()
            })
            .collect(),
        status: Some(otlp_trace::Status {
            message: span.status_message.clone(),
            code: code as i32,
        }),
        ..Default::default()
    }
}

fn key_value(kv: &KeyValue) -> otlp_common::KeyValue {
    otlp_common::KeyValue {
        key: kv.key.to_string(),
        value: Some(any_value(&kv.value)),
        ..Default::default()
    }
}

fn any_value(value: &AttrValue) -> otlp_common::AnyValue {
    use otlp_common::any_value::Value as V;
    let value = match value {
        AttrValue::Str(s) => V::StringValue(s.to_string()),
        AttrValue::Bool(b) => V::BoolValue(*b),
        AttrValue::Int(i) => V::IntValue(*i),
        AttrValue::Double(d) => V::DoubleValue(*d),
        AttrValue::Bytes(b) => V::BytesValue(b.clone()),
        AttrValue::Array(items) => V::ArrayValue(otlp_common::ArrayValue {
            values: items.iter().map(any_value).collect(),
        }),
        AttrValue::Map(entries) => V::KvlistValue(otlp_common::KeyValueList {
            values: entries.iter().map(key_value).collect(),
        }),
    };
    otlp_common::AnyValue { value: Some(value) }
}

/// Leaves out what OTLP/JSON writers leave out: fields at their default
/// (empty strings and lists, zeros, nulls). Attribute values (`value`) are
/// kept whole: an empty string or a zero there is data.
fn prune_defaults(json: &mut Value) {
    match json {
        Value::Object(map) => {
            map.retain(|key, value| {
                key == "value"
                    || !matches!(value, Value::Null)
                        && value.as_str() != Some("")
                        && value.as_u64() != Some(0)
                        && value.as_array().is_none_or(|a| !a.is_empty())
            });
            for (key, value) in map.iter_mut() {
                if key != "value" {
                    prune_defaults(value);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(prune_defaults),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_span;
    use crate::ingest::otlp::convert_trace_request;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    #[test]
    fn protobuf_round_trips_through_the_decoder() {
        let mut a = sample_span(1, 1, "order");
        a.attributes = vec![
            KeyValue::new("n", AttrValue::Int(-3)),
            KeyValue::new("list", AttrValue::Array(vec![AttrValue::Bool(true)])),
        ];
        let mut b = sample_span(1, 2, "payment");
        b.parent_span_id = Some(a.span_id);
        let bytes = traces_protobuf(&[a.clone(), b.clone()]);
        let data = otlp_trace::TracesData::decode(bytes.as_slice()).unwrap();
        assert_eq!(data.resource_spans.len(), 2);
        let request = ExportTraceServiceRequest {
            resource_spans: data.resource_spans,
        };
        let back = convert_trace_request(request, &Default::default()).spans;
        assert_eq!(back, vec![a, b]);
    }

    #[test]
    fn json_uses_hex_ids_and_string_integers_and_leaves_defaults_out() {
        let mut span = sample_span(1, 1, "order");
        span.attributes = vec![
            KeyValue::new("n", AttrValue::Int(7)),
            KeyValue::new("empty", AttrValue::Str(Default::default())),
        ];
        span.status_code = StatusCode::Error;
        span.trace_state = String::new();
        let json = traces_json(&[span.clone()]);
        let out = &json["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(out["traceId"], hex::encode(span.trace_id));
        assert_eq!(out["spanId"], hex::encode(span.span_id));
        assert_eq!(out["startTimeUnixNano"], span.start_unix_nano.to_string());
        assert_eq!(out["kind"], 2);
        assert_eq!(out["status"]["code"], 2);
        assert!(out.get("parentSpanId").is_none(), "{out}");
        assert!(out.get("traceState").is_none(), "{out}");
        assert_eq!(out["attributes"][0]["value"]["intValue"], "7");
        assert_eq!(out["attributes"][1]["value"]["stringValue"], "");
        let resource = &json["resourceSpans"][0]["resource"]["attributes"][0];
        assert_eq!(resource["key"], "service.name");
        assert_eq!(resource["value"]["stringValue"], "order");
    }
}
