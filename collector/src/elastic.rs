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

/// The Elasticsearch version `GET /` reports: an 8.x, which Elasticsearch 8
/// and 9 clients, Filebeat and Logstash 8 accept.
const VERSION: &str = "8.17.0";
const LUCENE_VERSION: &str = "9.12.0";
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
        .route("/_ilm/policy/{name}", stored_nothing("lifecycle policy"))
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

/// A kind of set-up object Strand does not keep: reading one finds none
/// (404, or an empty answer to `HEAD`), writing one is acknowledged.
fn stored_nothing<S: Clone + Send + Sync + 'static>(kind: &'static str) -> MethodRouter<S> {
    let missing = move |Path(name): Path<String>| async move {
        error(
            StatusCode::NOT_FOUND,
            "resource_not_found_exception",
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

fn with_product(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("x-elastic-product", HeaderValue::from_static(PRODUCT));
    response
}

/// Middleware over the Elasticsearch routes: every answer, refusals of the
/// token guard included, carries the product header clients check, and a
/// JSON answer to a client asking for Elasticsearch's compatible media
/// type (`application/vnd.elasticsearch+json; compatible-with=9`) is
/// labelled with it.
pub async fn product_header(request: Request, next: Next) -> Response {
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
    if let (Some(content_type), true) = (compatible, is_json) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}
