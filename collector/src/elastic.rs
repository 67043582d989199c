//! Elasticsearch compatibility beyond `_bulk`: what Elasticsearch clients and
//! shippers (the official clients, Filebeat, Logstash) ask before they send,
//! answered so they proceed against Strand unchanged.
//!
//! Clients refuse a server that is not Elasticsearch: they read `GET /` for
//! a version they support and require `X-Elastic-Product: Elasticsearch` on
//! every answer (the Python client 9.x raises `UnsupportedProductError`
//! without it). Shippers then set up index templates, ILM policies and data
//! streams; Strand keeps none of them (every index name is accepted and its
//! documents become logs), so it acknowledges writes and reports nothing
//! stored, which makes them write again at their next start, harmlessly.
//! Every other Elasticsearch call answers Elasticsearch's error shape with
//! a reason, never a plain 404.

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, head};
use serde_json::{Value, json};

/// The Elasticsearch version `GET /` reports: the last 8.x minor, which
/// Elasticsearch 8 and 9 clients and Logstash 8 accept, and which no
/// Filebeat 8 finds older than itself (libbeat's
/// `outputs/elasticsearch/client.go` refuses an Elasticsearch of an older
/// minor unless `allow_older_versions` is set: `ErrTooOld`).
const VERSION: &str = "8.19.0";
const LUCENE_VERSION: &str = "9.12.2";
const CLUSTER_NAME: &str = "strand";
const CLUSTER_UUID: &str = "c3RyYW5kLWVzLWNvbXBhdA";
const PRODUCT: &str = "Elasticsearch";
const ES_JSON: &str = "application/vnd.elasticsearch+json";

/// The set-up calls shippers make, merged with the `_bulk` routes by the
/// caller, which guards them and adds [`product_header`].
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/_cluster/health", es(get(cluster_health)))
        .route("/_cluster/health/{index}", es(get(cluster_health)))
        .route("/_license", es(get(license)))
        .route("/_xpack", es(get(xpack)))
        .route("/_nodes", es(get(nodes)))
        .route("/_nodes/{*filter}", es(get(nodes)))
        .route("/_index_template", es(get(|| listing("index_templates"))))
        .route("/_index_template/{name}", stored_nothing("index template"))
        .route("/_template/{name}", stored_nothing("template"))
        .route(
            "/_component_template/{name}",
            stored_nothing("component template"),
        )
        .route(
            "/_ingest/pipeline/{name}",
            stored_nothing("ingest pipeline"),
        )
        .route("/_ilm/policy", es(get(|| async { axum::Json(json!({})) })))
        .route("/_ilm/policy/{name}", stored_nothing("lifecycle policy"))
        .route("/_data_stream", es(get(|| listing("data_streams"))))
        .route("/_data_stream/{name}", stored_nothing("data stream"))
        .route(
            "/{index}",
            es(
                head(|| async { StatusCode::OK }).put(|Path(index): Path<String>| async move {
                    axum::Json(json!({
                        "acknowledged": true, "shards_acknowledged": true, "index": index,
                    }))
                }),
            ),
        )
}

/// A method router whose other methods answer Elasticsearch's error.
fn es<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    route.fallback(not_found)
}

/// The answer to listing a kind of set-up object Strand keeps none of.
async fn listing(key: &'static str) -> axum::Json<Value> {
    axum::Json(json!({ key: [] }))
}

/// A kind of set-up object Strand does not keep: reading one finds none
/// (404 with the error type Elasticsearch gives — a data stream is an
/// index, so `index_not_found_exception` — or an empty answer to `HEAD`),
/// writing one is acknowledged.
fn stored_nothing<S: Clone + Send + Sync + 'static>(kind: &'static str) -> MethodRouter<S> {
    let missing = move |Path(name): Path<String>| async move {
        let kind_of_error = if kind == "data stream" {
            "index_not_found_exception"
        } else {
            "resource_not_found_exception"
        };
        error(
            StatusCode::NOT_FOUND,
            kind_of_error,
            &format!(
                "{kind} [{name}] not found: strand keeps no {kind}s, it stores every document as a log"
            ),
        )
    };
    let acknowledged = || async { axum::Json(json!({"acknowledged": true})) };
    es(get(missing).put(acknowledged).post(acknowledged))
}

/// Whether a request for `/` comes from an Elasticsearch client rather
/// than a browser, which asks for HTML and gets the UI.
pub fn wants_cluster_info(headers: &HeaderMap) -> bool {
    !headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"))
}

/// `GET /` as Elasticsearch 8 answers it, with the product header (the
/// route is the UI's, outside the layer that adds it).
pub fn cluster_info() -> Response {
    let body = json!({
        "name": CLUSTER_NAME,
        "cluster_name": CLUSTER_NAME,
        "cluster_uuid": CLUSTER_UUID,
        "version": {
            "number": VERSION,
            "build_flavor": "default",
            "build_type": "docker",
            "build_hash": "strand",
            "build_date": "2024-12-11T12:08:05.663969764Z",
            "build_snapshot": false,
            "lucene_version": LUCENE_VERSION,
            "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0",
        },
        "tagline": "You Know, for Search",
    });
    with_product(axum::Json(body).into_response())
}

async fn cluster_health() -> axum::Json<Value> {
    axum::Json(json!({
        "cluster_name": CLUSTER_NAME, "status": "green", "timed_out": false,
        "number_of_nodes": 1, "number_of_data_nodes": 1,
        "active_primary_shards": 0, "active_shards": 0, "relocating_shards": 0,
        "initializing_shards": 0, "unassigned_shards": 0, "delayed_unassigned_shards": 0,
        "number_of_pending_tasks": 0, "number_of_in_flight_fetch": 0,
        "task_max_waiting_in_queue_millis": 0, "active_shards_percent_as_number": 100.0,
    }))
}

async fn license() -> axum::Json<Value> {
    axum::Json(json!({"license": {
        "status": "active", "uid": CLUSTER_UUID, "type": "basic",
        "issue_date": "1970-01-01T00:00:00.000Z", "issue_date_in_millis": 0,
        "max_nodes": 1000, "max_resource_units": null,
        "issued_to": CLUSTER_NAME, "issuer": "elasticsearch", "start_date_in_millis": -1,
    }}))
}

async fn xpack() -> axum::Json<Value> {
    axum::Json(json!({
        "build": {"hash": "strand", "date": "2024-12-11T12:08:05.663969764Z"},
        "license": {"uid": CLUSTER_UUID, "type": "basic", "mode": "basic", "status": "active"},
        "features": {"ilm": {"available": true, "enabled": true}},
    }))
}

async fn nodes() -> axum::Json<Value> {
    axum::Json(json!({
        "_nodes": {"total": 1, "successful": 1, "failed": 0},
        "cluster_name": CLUSTER_NAME,
        "nodes": {CLUSTER_UUID: {
            "name": CLUSTER_NAME, "version": VERSION, "roles": ["data", "ingest", "master"],
        }},
    }))
}

/// The API port's answer to what no route serves: Strand's plain 404, or,
/// for a call to an Elasticsearch API (a path segment starting with `_`,
/// such as `/_search` or `/{index}/_doc`), Elasticsearch's error saying
/// what Strand does not support, so its clients show why.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if !path.split('/').any(|segment| segment.starts_with('_')) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    error(
        StatusCode::BAD_REQUEST,
        "illegal_argument_exception",
        &format!(
            "strand does not support {method} {path}: it accepts logs through _bulk \
             (index and create actions); search them with /api/logs"
        ),
    )
}

/// An error in Elasticsearch's shape, which clients parse for its type.
pub fn error(status: StatusCode, kind: &str, reason: &str) -> Response {
    let cause = json!({"type": kind, "reason": reason});
    let body = json!({
        "error": {"root_cause": [cause], "type": kind, "reason": reason},
        "status": status.as_u16(),
    });
    with_product((status, axum::Json(body)).into_response())
}

/// The token guard's refusal (401 or 403, its reason in `error`) in
/// Elasticsearch's shape, a `security_exception`, keeping its headers (the
/// Bearer challenge, `Connection: close`), so clients show the reason.
async fn as_security_exception(response: Response) -> Response {
    let status = response.status();
    if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The guard's answers are a line of JSON; 64 KiB bounds anything else.
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let refusal: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let reason = refusal["error"].as_str().unwrap_or("not authorized");
    let mut answer = error(status, "security_exception", reason);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}

/// `response`'s JSON body cut down to `filter_path`.
async fn filtered(response: Response, filter: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    // Strand's own answer, already in memory.
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let body = serde_json::to_vec(&filter_path(value, filter)).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Elasticsearch's response filtering: `filter` is a comma-separated list
/// of dotted paths whose segments may hold `*` wildcards, `**` standing for
/// any number of segments; arrays are looked through. Only what some path
/// names is kept, then what a path prefixed with `-` names is removed;
/// objects and arrays left empty are dropped, and nothing kept is `{}`.
fn filter_path(value: Value, filter: &str) -> Value {
    let (excludes, includes): (Vec<&str>, Vec<&str>) = filter
        .split(',')
        .map(str::trim)
        .filter(|path| !path.is_empty())
        .partition(|path| path.starts_with('-'));
    let split = |path: &str| -> Vec<String> { path.split('.').map(str::to_owned).collect() };
    let includes: Vec<Vec<String>> = includes.into_iter().map(split).collect();
    let excludes: Vec<Vec<String>> = excludes.into_iter().map(|path| split(&path[1..])).collect();
    let kept = if includes.is_empty() {
        Some(value)
    } else {
        include(value, &includes)
    };
    let kept = match kept {
        Some(value) if !excludes.is_empty() => exclude(value, &excludes),
        other => other,
    };
    kept.unwrap_or_else(|| json!({}))
}

/// What is left of each path once `key` is matched against its first
/// segment (`**` may match it and stay, or match nothing).
fn descend(paths: &[Vec<String>], key: &str) -> Vec<Vec<String>> {
    let mut next = Vec::new();
    for path in paths {
        let Some(first) = path.first() else { continue };
        if first == "**" {
            next.push(path.clone());
            next.extend(descend(&[path[1..].to_vec()], key));
        } else if wildcard_match(first, key) {
            next.push(path[1..].to_vec());
        }
    }
    next
}

fn include(value: Value, paths: &[Vec<String>]) -> Option<Value> {
    if paths.iter().any(|path| path.is_empty()) {
        return Some(value);
    }
    match value {
        Value::Object(object) => {
            let kept: serde_json::Map<String, Value> = object
                .into_iter()
                .filter_map(|(key, value)| {
                    let next = descend(paths, &key);
                    if next.is_empty() {
                        return None;
                    }
                    Some((key, include(value, &next)?))
                })
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(values) => {
            let kept: Vec<Value> = values
                .into_iter()
                .filter_map(|value| include(value, paths))
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        _ => None,
    }
}

fn exclude(value: Value, paths: &[Vec<String>]) -> Option<Value> {
    if paths.iter().any(|path| path.is_empty()) {
        return None;
    }
    match value {
        Value::Object(object) => Some(Value::Object(
            object
                .into_iter()
                .filter_map(|(key, value)| {
                    let next = descend(paths, &key);
                    if next.is_empty() {
                        return Some((key, value));
                    }
                    Some((key, exclude(value, &next)?))
                })
                .collect(),
        )),
        Value::Array(values) => Some(Value::Array(
            values
                .into_iter()
                .filter_map(|value| exclude(value, paths))
                .collect(),
        )),
        other => Some(other),
    }
}

/// `pattern` with `*` standing for any run of characters.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    let (last, middle) = parts.split_last().unwrap_or((&"", &[]));
    for part in middle {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

fn with_product(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("x-elastic-product", HeaderValue::from_static(PRODUCT));
    response
}

/// Middleware over the Elasticsearch routes: every answer, refusals of the
/// token guard included, carries the product header clients check; a JSON
/// answer is cut down to the request's `filter_path` (Filebeat and Logstash
/// send their bulk requests with
/// `filter_path=errors,items.*.error,items.*.status`); and a JSON answer to
/// a client asking for Elasticsearch's compatible media type
/// (`application/vnd.elasticsearch+json; compatible-with=9`) is labelled
/// with it.
pub async fn product_header(request: Request, next: Next) -> Response {
    let filter = request.uri().query().and_then(|query| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()?
            .into_iter()
            .find(|(name, _)| name == "filter_path")
            .map(|(_, value)| value)
    });
    let compatible = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(|accept| accept.split(',').next().unwrap_or("").trim())
        .filter(|accept| accept.starts_with(ES_JSON))
        .and_then(|accept| HeaderValue::from_str(accept).ok());
    let mut response = with_product(as_security_exception(next.run(request).await).await);
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if let (Some(filter), true) = (filter, is_json) {
        response = filtered(response, &filter).await;
    }
    if let (Some(content_type), true) = (compatible, is_json) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk_answer() -> Value {
        json!({"took": 3, "errors": true, "items": [
            {"create": {"_index": "logs-a", "_id": "1", "status": 201, "result": "created"}},
            {"index": {"_index": "logs-a", "_id": "2", "status": 400,
                "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
        ]})
    }

    #[test]
    fn filter_path_keeps_what_shippers_ask_for() {
        // Filebeat's and Logstash's bulk filter.
        assert_eq!(
            filter_path(bulk_answer(), "errors,items.*.error,items.*.status"),
            json!({"errors": true, "items": [
                {"create": {"status": 201}},
                {"index": {"status": 400,
                    "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
            ]})
        );
        // Objects left empty go, and nothing kept is `{}`.
        assert_eq!(
            filter_path(bulk_answer(), "errors,items.*.error"),
            json!({"errors": true, "items": [{"index": {
                "error": {"type": "mapper_parsing_exception", "reason": "bad"}}}]})
        );
        assert_eq!(filter_path(bulk_answer(), "nothing.here"), json!({}));
        assert_eq!(
            filter_path(bulk_answer(), "**.reason"),
            json!({"items": [{"index": {"error": {"reason": "bad"}}}]})
        );
        assert_eq!(
            filter_path(bulk_answer(), "items.*.st*"),
            json!({"items": [{"create": {"status": 201}}, {"index": {"status": 400}}]})
        );
        assert_eq!(
            filter_path(json!({"a": 1, "b": {"c": 2, "d": 3}}), "-b.c"),
            json!({"a": 1, "b": {"d": 3}})
        );
        assert_eq!(
            filter_path(
                json!({"version": {"number": "8"}, "name": "x"}),
                "version.number,-name"
            ),
            json!({"version": {"number": "8"}})
        );
    }

    #[test]
    fn wildcards() {
        for (pattern, text, matches) in [
            ("*", "anything", true),
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "abc", true),
            ("a*c", "ab", false),
            ("a*b*c", "aXbYc", true),
            ("ab", "abc", false),
            ("a*a", "a", false),
        ] {
            assert_eq!(wildcard_match(pattern, text), matches, "{pattern} {text}");
        }
    }
}
