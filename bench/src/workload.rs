//! Realistic OTLP trace batches, built once and re-stamped for every send.
//!
//! Storage cost per span and query speed depend heavily on what the spans look
//! like (attribute count, value variety, how many distinct resources there
//! are), so the batches mimic what four instrumented Rust services behind a
//! gateway would export: one request `POST /api/orders` travelling
//! gateway -> order -> inventory / payment, about ten spans per trace, about
//! ten semantic-convention attributes per span, a few percent of failing
//! requests with exception events, and one `ResourceSpans` per service the way
//! an SDK (or an agent batching several SDKs) groups them.
//!
//! Building such a batch is far slower than sending it, so a pool of
//! [`Template`]s is built before the timed phase. At send time a template is
//! cloned and [`Template::rewrite`] gives every trace a fresh random trace id,
//! every span a fresh random span id (parent ids follow), and shifts all
//! timestamps so the batch ends "now": the daemon never sees the same trace
//! twice, and the clone + rewrite + encode costs only a small fraction of
//! what ingesting the batch costs the daemon.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use rand::Rng;

/// A 16-byte trace id as it goes over the wire.
pub type TraceId = [u8; 16];

/// The services of the simulated shop, in `ResourceSpans` order.
const SERVICES: [(&str, &str); 4] = [
    ("gateway", "2.3.1"),
    ("order", "1.14.2"),
    ("inventory", "0.9.7"),
    ("payment", "3.0.4"),
];
const GATEWAY: usize = 0;
const ORDER: usize = 1;
const INVENTORY: usize = 2;
const PAYMENT: usize = 3;

/// Instances ("pods") per service; each batch picks one per service, so the
/// daemon sees a realistic small number of distinct resources.
const REPLICAS: usize = 3;

/// All spans of a batch end within this window before the send time, like a
/// batch span processor exporting what finished during the last second.
const WINDOW_NS: u64 = 1_000_000_000;

const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.26.0";

/// W3C "sampled" flag, plus the OTLP bits saying whether the parent is
/// remote: SERVER spans continue a context that came over the network.
const FLAGS_LOCAL_PARENT: u32 = 0x101;
const FLAGS_REMOTE_PARENT: u32 = 0x301;

/// A trace that was sent, with the span count a lookup must return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRef {
    pub id: TraceId,
    pub spans: u16,
}

/// One pre-built export request and where its ids and timestamps live, so
/// they can be rewritten without walking or re-building the message.
#[derive(Clone)]
pub struct Template {
    request: ExportTraceServiceRequest,
    /// Every span of the request, grouped by trace (see `traces`).
    slots: Vec<Slot>,
    traces: Vec<TraceShape>,
}

/// Where one span lives in the request and its timing relative to the start
/// of the batch window.
#[derive(Clone)]
struct Slot {
    resource: usize,
    span: usize,
    /// Index into `Template::slots` of the parent span, `None` for a root.
    parent: Option<usize>,
    start: u64,
    end: u64,
    events: Vec<u64>,
}

/// A trace's spans are `slots[first..first + len]`.
#[derive(Clone, Copy)]
struct TraceShape {
    first: usize,
    len: usize,
}

impl Template {
    /// The message as it stands after the last rewrite.
    #[cfg(test)]
    pub fn request(&self) -> &ExportTraceServiceRequest {
        &self.request
    }

    pub fn span_count(&self) -> usize {
        self.slots.len()
    }

    /// A copy of the batch with fresh ids, ending at `now_ns`; the traces it
    /// contains are appended to `sent`.
    pub fn instantiate(
        &self,
        rng: &mut impl Rng,
        now_ns: u64,
        sent: &mut Vec<TraceRef>,
    ) -> ExportTraceServiceRequest {
        let mut request = self.request.clone();
        self.rewrite(&mut request, rng, now_ns, sent);
        request
    }

    /// Gives `request` (a clone of this template's request) a new random
    /// trace id per trace and span id per span, keeping every parent id equal
    /// to its parent's new span id, and moves all timestamps so the batch
    /// window ends at `now_ns`. Appends the new traces to `sent`.
    pub fn rewrite(
        &self,
        request: &mut ExportTraceServiceRequest,
        rng: &mut impl Rng,
        now_ns: u64,
        sent: &mut Vec<TraceRef>,
    ) {
        let base = now_ns.saturating_sub(WINDOW_NS);
        let span_ids: Vec<[u8; 8]> = self.slots.iter().map(|_| nonzero_id(rng)).collect();
        for shape in &self.traces {
            let trace_id: TraceId = nonzero_id(rng);
            sent.push(TraceRef {
                id: trace_id,
                spans: u16::try_from(shape.len).unwrap_or(u16::MAX),
            });
            for index in shape.first..shape.first + shape.len {
                let slot = &self.slots[index];
                let span =
                    &mut request.resource_spans[slot.resource].scope_spans[0].spans[slot.span];
                // clear + extend reuses the existing allocation.
                span.trace_id.clear();
                span.trace_id.extend_from_slice(&trace_id);
                span.span_id.clear();
                span.span_id.extend_from_slice(&span_ids[index]);
                span.parent_span_id.clear();
                if let Some(parent) = slot.parent {
                    span.parent_span_id.extend_from_slice(&span_ids[parent]);
                }
                span.start_time_unix_nano = base + slot.start;
                span.end_time_unix_nano = base + slot.end;
                for (event, offset) in span.events.iter_mut().zip(&slot.events) {
                    event.time_unix_nano = base + offset;
                }
            }
        }
    }
}

/// Random id bytes; all-zero ids are invalid in OTLP, so never return one.
fn nonzero_id<const N: usize>(rng: &mut impl Rng) -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        rng.fill(&mut id);
        if id != [0u8; N] {
            return id;
        }
    }
}

/// Builds `requests` distinct batches of `traces_per_request` traces each.
pub fn build_pool(rng: &mut impl Rng, requests: usize, traces_per_request: usize) -> Vec<Template> {
    let replicas: Vec<Vec<Resource>> = SERVICES
        .iter()
        .map(|&(name, version)| {
            (0..REPLICAS)
                .map(|_| resource(rng, name, version))
                .collect()
        })
        .collect();
    (0..requests)
        .map(|_| build_request(rng, &replicas, traces_per_request))
        .collect()
}

fn build_request(
    rng: &mut impl Rng,
    replicas: &[Vec<Resource>],
    traces_per_request: usize,
) -> Template {
    let mut per_service: Vec<Vec<Span>> = vec![Vec::new(); SERVICES.len()];
    let mut slots = Vec::new();
    let mut traces = Vec::with_capacity(traces_per_request);
    for _ in 0..traces_per_request {
        // Leave room for the slowest trace (~150 ms) inside the window.
        let start = rng.random_range(0..WINDOW_NS - 200_000_000);
        let first = slots.len();
        for draft in build_trace(rng, start) {
            let spans = &mut per_service[draft.service];
            slots.push(Slot {
                resource: draft.service,
                span: spans.len(),
                parent: draft.parent.map(|parent| first + parent),
                start: draft.start,
                end: draft.end,
                events: draft.span.events.iter().map(|e| e.time_unix_nano).collect(),
            });
            spans.push(draft.span);
        }
        traces.push(TraceShape {
            first,
            len: slots.len() - first,
        });
    }

    // An SDK sends no ResourceSpans for a service without spans (possible
    // when every trace of a small batch failed before reaching it).
    let mut resource_index = vec![usize::MAX; SERVICES.len()];
    let mut resource_spans = Vec::new();
    for (service, spans) in per_service.into_iter().enumerate() {
        if spans.is_empty() {
            continue;
        }
        resource_index[service] = resource_spans.len();
        let replica = &replicas[service][rng.random_range(0..replicas[service].len())];
        resource_spans.push(ResourceSpans {
            resource: Some(replica.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracing-opentelemetry".into(),
                    version: "0.32.0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: SCHEMA_URL.into(),
            }],
            schema_url: SCHEMA_URL.into(),
        });
    }
    for slot in &mut slots {
        slot.resource = resource_index[slot.resource];
    }

    let mut template = Template {
        request: ExportTraceServiceRequest { resource_spans },
        slots,
        traces,
    };
    // Give the template valid ids so it is a well-formed request by itself.
    let mut request = template.request.clone();
    template.rewrite(&mut request, rng, WINDOW_NS, &mut Vec::new());
    template.request = request;
    template
}

/// The identity of one service instance.
fn resource(rng: &mut impl Rng, service: &str, version: &str) -> Resource {
    let pod = format!(
        "{service}-{:08x}-{}",
        rng.random::<u32>(),
        random_token(rng, 5)
    );
    Resource {
        attributes: vec![
            string("service.name", service),
            string("service.version", version),
            string("service.namespace", "shop"),
            string("service.instance.id", hex::encode(rng.random::<[u8; 16]>())),
            string("host.name", pod),
            string("host.arch", "amd64"),
            string("os.type", "linux"),
            int("process.pid", rng.random_range(7..40_000)),
            string("process.executable.name", service),
            string("process.runtime.name", "rustc"),
            string("process.runtime.version", "1.86.0"),
            string("telemetry.sdk.language", "rust"),
            string("telemetry.sdk.name", "opentelemetry"),
            string("telemetry.sdk.version", "0.31.0"),
            string("deployment.environment", "production"),
        ],
        ..Default::default()
    }
}

/// How a simulated request ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// The order service rejects the request body: 4 spans, 422.
    InvalidOrder,
    /// The inventory store times out: 7 spans, 503 all the way up.
    InventoryTimeout,
    /// The payment provider declines the card: 10 spans, 402.
    PaymentDeclined,
}

/// A span before it is placed into its service's `ResourceSpans`.
struct Draft {
    service: usize,
    /// Index of the parent within the same trace's drafts.
    parent: Option<usize>,
    start: u64,
    end: u64,
    span: Span,
}

/// The per-request values that appear on several spans of a trace.
struct Request {
    user: String,
    order: String,
    sku: String,
    quantity: i64,
    amount_cents: i64,
    currency: &'static str,
    client_ip: String,
}

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15",
    "shop-android/4.12.0 okhttp/4.12.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0",
];

/// One trace starting at `t0` (ns since the batch window start).
fn build_trace(rng: &mut impl Rng, t0: u64) -> Vec<Draft> {
    let request = Request {
        user: format!("user-{}", rng.random_range(1..250_000)),
        order: format!("ord_{}", random_token(rng, 16)),
        sku: format!("SKU-{:05}", rng.random_range(1..5_000)),
        quantity: rng.random_range(1..6),
        amount_cents: rng.random_range(499..150_000),
        currency: ["EUR", "USD", "GBP"][rng.random_range(0..3)],
        client_ip: format!(
            "{}.{}",
            ["203.0.113", "198.51.100", "192.0.2"][rng.random_range(0..3)],
            rng.random_range(1..255)
        ),
    };
    let outcome = match rng.random_range(0..1000) {
        0..10 => Outcome::InvalidOrder,
        10..20 => Outcome::InventoryTimeout,
        20..35 => Outcome::PaymentDeclined,
        _ => Outcome::Ok,
    };
    let mut d: Vec<Draft> = Vec::with_capacity(10);

    // Timing, outside in: every child starts after and ends before its
    // parent; a network hop costs 0.15-0.8 ms each way.
    let gw_srv = push(
        &mut d,
        GATEWAY,
        None,
        "POST /api/orders",
        SpanKind::Server,
        t0,
    );
    let gw_cli_start = t0 + us(rng, 100, 800);
    let gw_cli = push(
        &mut d,
        GATEWAY,
        Some(gw_srv),
        "POST /orders",
        SpanKind::Client,
        gw_cli_start,
    );
    let ord_srv_start = gw_cli_start + hop(rng);
    let ord_srv = push(
        &mut d,
        ORDER,
        Some(gw_cli),
        "POST /orders",
        SpanKind::Server,
        ord_srv_start,
    );
    let val_start = ord_srv_start + us(rng, 50, 300);
    let val = push(
        &mut d,
        ORDER,
        Some(ord_srv),
        "validate order",
        SpanKind::Internal,
        val_start,
    );
    d[val].end = val_start + us(rng, 20, 400);
    let mut cursor = d[val].end;

    let status_code: i64;
    if outcome == Outcome::InvalidOrder {
        let message = ["order has no items", "quantity must be positive"][rng.random_range(0..2)];
        let at = d[val].end - 5_000;
        fail(&mut d[val], "order::ValidationError", message, at);
        status_code = 422;
    } else {
        let inv_cli_start = cursor + us(rng, 10, 100);
        let inv_cli = push(
            &mut d,
            ORDER,
            Some(ord_srv),
            "GET /inventory/reserve",
            SpanKind::Client,
            inv_cli_start,
        );
        let inv_srv_start = inv_cli_start + hop(rng);
        let inv_srv = push(
            &mut d,
            INVENTORY,
            Some(inv_cli),
            "GET /inventory/reserve",
            SpanKind::Server,
            inv_srv_start,
        );
        let db_start = inv_srv_start + us(rng, 50, 400);
        let db = push(
            &mut d,
            INVENTORY,
            Some(inv_srv),
            "sled.get",
            SpanKind::Client,
            db_start,
        );
        let timeout = outcome == Outcome::InventoryTimeout;
        d[db].end = db_start
            + if timeout {
                us(rng, 20_000, 50_000)
            } else {
                us(rng, 20, 300)
            };
        d[inv_srv].end = d[db].end + us(rng, 50, 300);
        d[inv_cli].end = d[inv_srv].end + hop(rng);
        cursor = d[inv_cli].end;

        let inv_status = if timeout { 503 } else { 200 };
        d[db].span.attributes = vec![
            string("db.system", "sled"),
            string("db.operation", "get"),
            string("db.namespace", "inventory"),
            string("db.collection.name", "stock"),
            string("db.query.text", format!("get stock/{}", request.sku)),
            string("inventory.sku", request.sku.clone()),
            int("db.response.returned_rows", if timeout { 0 } else { 1 }),
            string("thread.name", "tokio-runtime-worker"),
        ];
        let inv_client_ip = internal_ip(rng);
        d[inv_srv].span.attributes = http_server(
            rng,
            "GET",
            "/inventory/reserve",
            inv_status,
            "inventory",
            8080,
            &inv_client_ip,
        );
        d[inv_srv].span.attributes.extend([
            string(
                "url.query",
                format!("sku={}&qty={}", request.sku, request.quantity),
            ),
            string("inventory.sku", request.sku.clone()),
            int("inventory.quantity", request.quantity),
            string("order.id", request.order.clone()),
        ]);
        d[inv_cli].span.attributes = http_client(
            rng,
            "GET",
            &format!(
                "http://inventory:8080/inventory/reserve?sku={}&qty={}",
                request.sku, request.quantity
            ),
            inv_status,
            "inventory",
            8080,
        );
        d[inv_cli].span.attributes.extend([
            string("order.id", request.order.clone()),
            string("inventory.sku", request.sku.clone()),
        ]);
        if timeout {
            let at = d[db].end - 2_000;
            fail(
                &mut d[db],
                "sled::Error",
                "io error: operation timed out",
                at,
            );
            error_status(&mut d[inv_srv], "503 Service Unavailable");
            error_status(&mut d[inv_cli], "503 Service Unavailable");
            status_code = 503;
        } else {
            let declined = outcome == Outcome::PaymentDeclined;
            let pay_cli_start = cursor + us(rng, 20, 200);
            let pay_cli = push(
                &mut d,
                ORDER,
                Some(ord_srv),
                "payment.Charge",
                SpanKind::Client,
                pay_cli_start,
            );
            let pay_srv_start = pay_cli_start + hop(rng);
            let pay_srv = push(
                &mut d,
                PAYMENT,
                Some(pay_cli),
                "payment.Charge",
                SpanKind::Server,
                pay_srv_start,
            );
            // The call to the card provider happens before the row is written.
            let pg_start = pay_srv_start + us(rng, 1_000, 8_000);
            let pg = push(
                &mut d,
                PAYMENT,
                Some(pay_srv),
                "INSERT payments",
                SpanKind::Client,
                pg_start,
            );
            d[pg].end = pg_start + us(rng, 800, 6_000);
            d[pay_srv].end = d[pg].end + us(rng, 100, 500);
            d[pay_cli].end = d[pay_srv].end + hop(rng);
            cursor = d[pay_cli].end;

            let grpc_status = if declined { 9 } else { 0 };
            d[pg].span.attributes = vec![
                string("db.system", "postgresql"),
                string("db.operation", "INSERT"),
                string("db.namespace", "payments"),
                string("db.collection.name", "payments"),
                string(
                    "db.statement",
                    "INSERT INTO payments (order_id, amount_cents, currency, status) VALUES ($1, $2, $3, $4)",
                ),
                string("server.address", "payments-db.internal"),
                int("server.port", 5432),
                string("network.peer.address", internal_ip(rng)),
                int("net.peer.port", 5432),
                int("db.response.rows_affected", 1),
            ];
            let rpc = |kind_port: i64, peer: String| {
                vec![
                    string("rpc.system", "grpc"),
                    string("rpc.service", "payment.Payment"),
                    string("rpc.method", "Charge"),
                    int("rpc.grpc.status_code", grpc_status),
                    string("server.address", "payment"),
                    int("server.port", 50051),
                    string("network.peer.address", peer),
                    int("net.peer.port", kind_port),
                    string("order.id", request.order.clone()),
                    int("payment.amount_cents", request.amount_cents),
                ]
            };
            d[pay_cli].span.attributes = rpc(50051, internal_ip(rng));
            let client_port = rng.random_range(32_768..61_000);
            d[pay_srv].span.attributes = rpc(client_port, internal_ip(rng));
            d[pay_srv].span.attributes.extend([
                string("payment.currency", request.currency),
                string(
                    "payment.provider",
                    ["stripe", "adyen"][rng.random_range(0..2)],
                ),
            ]);
            if declined {
                let at = d[pg].start - 10_000;
                fail(
                    &mut d[pay_srv],
                    "payment::CardDeclined",
                    "card declined: insufficient funds",
                    at,
                );
                error_status(&mut d[pay_cli], "FAILED_PRECONDITION: card declined");
                status_code = 402;
            } else {
                status_code = 201;
            }
        }
    }

    d[ord_srv].end = cursor + us(rng, 100, 600);
    d[gw_cli].end = d[ord_srv].end + hop(rng);
    d[gw_srv].end = d[gw_cli].end + us(rng, 50, 400);

    d[val].span.attributes = vec![
        string("order.id", request.order.clone()),
        string("user.id", request.user.clone()),
        int("order.items", request.quantity),
        int("order.total_cents", request.amount_cents),
        string("code.function", "validate_order"),
        string("code.namespace", "order::handlers"),
        string("code.filepath", "src/handlers.rs"),
        int("code.lineno", 142),
        string("thread.name", "tokio-runtime-worker"),
        int("thread.id", rng.random_range(1..9)),
    ];
    let order_ip = internal_ip(rng);
    d[ord_srv].span.attributes = http_server(
        rng,
        "POST",
        "/orders",
        status_code,
        "order",
        8080,
        &order_ip,
    );
    d[ord_srv].span.attributes.extend([
        string("user.id", request.user.clone()),
        string("order.id", request.order.clone()),
        int("order.items", request.quantity),
    ]);
    d[gw_cli].span.attributes = http_client(
        rng,
        "POST",
        "http://order:8080/orders",
        status_code,
        "order",
        8080,
    );
    d[gw_cli]
        .span
        .attributes
        .push(string("user.id", request.user.clone()));
    d[gw_srv].span.attributes = http_server(
        rng,
        "POST",
        "/api/orders",
        status_code,
        "shop.example.com",
        443,
        &request.client_ip,
    );
    d[gw_srv].span.attributes.extend([
        string("url.scheme", "https"),
        string(
            "user_agent.original",
            USER_AGENTS[rng.random_range(0..USER_AGENTS.len())],
        ),
        string("user.id", request.user),
        int("http.request.body.size", rng.random_range(180..2_400)),
    ]);
    // Semantic conventions: 5xx is an error on every HTTP span, 4xx only on
    // the client side.
    if status_code >= 500 {
        for index in [ord_srv, gw_cli, gw_srv] {
            error_status(&mut d[index], "503 Service Unavailable");
        }
    } else if status_code >= 400 {
        error_status(&mut d[gw_cli], &format!("{status_code} from order"));
    }
    d
}

/// Appends a span with placeholder ids (the right lengths, so rewriting never
/// reallocates) and returns its index.
fn push(
    drafts: &mut Vec<Draft>,
    service: usize,
    parent: Option<usize>,
    name: &str,
    kind: SpanKind,
    start: u64,
) -> usize {
    let remote_parent = kind == SpanKind::Server && parent.is_some();
    drafts.push(Draft {
        service,
        parent,
        start,
        end: start,
        span: Span {
            trace_id: vec![0; 16],
            span_id: vec![0; 8],
            parent_span_id: if parent.is_some() {
                vec![0; 8]
            } else {
                Vec::new()
            },
            flags: if remote_parent {
                FLAGS_REMOTE_PARENT
            } else {
                FLAGS_LOCAL_PARENT
            },
            name: name.into(),
            kind: kind as i32,
            ..Default::default()
        },
    });
    drafts.len() - 1
}

/// Marks a span failed with an `exception` event at `at`, as
/// `Span::record_error` plus `set_status(Error)` would.
fn fail(draft: &mut Draft, kind: &str, message: &str, at: u64) {
    draft.span.events.push(Event {
        time_unix_nano: at,
        name: "exception".into(),
        attributes: vec![
            string("exception.type", kind),
            string("exception.message", message),
            string(
                "exception.stacktrace",
                format!("{kind}: {message}\n   at src/handlers.rs:87\n   at tokio::runtime::task::harness"),
            ),
        ],
        ..Default::default()
    });
    error_status(draft, message);
}

fn error_status(draft: &mut Draft, message: &str) {
    draft.span.status = Some(Status {
        message: message.into(),
        code: StatusCode::Error as i32,
    });
}

fn http_server(
    rng: &mut impl Rng,
    method: &str,
    route: &str,
    status: i64,
    host: &str,
    port: i64,
    client: &str,
) -> Vec<KeyValue> {
    vec![
        string("http.request.method", method),
        string("url.path", route),
        string("http.route", route),
        int("http.response.status_code", status),
        string("server.address", host),
        int("server.port", port),
        string("client.address", client),
        int("net.peer.port", rng.random_range(32_768..61_000)),
        string("network.protocol.version", "1.1"),
    ]
}

fn http_client(
    rng: &mut impl Rng,
    method: &str,
    url: &str,
    status: i64,
    host: &str,
    port: i64,
) -> Vec<KeyValue> {
    vec![
        string("http.request.method", method),
        string("url.full", url),
        int("http.response.status_code", status),
        string("server.address", host),
        int("server.port", port),
        string("network.peer.address", internal_ip(rng)),
        int("net.peer.port", port),
        string("network.protocol.version", "1.1"),
    ]
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// A duration in ns, uniform between `lo` and `hi` microseconds.
fn us(rng: &mut impl Rng, lo: u64, hi: u64) -> u64 {
    rng.random_range(lo * 1_000..hi * 1_000)
}

/// One network hop inside the cluster.
fn hop(rng: &mut impl Rng) -> u64 {
    us(rng, 150, 800)
}

fn internal_ip(rng: &mut impl Rng) -> String {
    format!(
        "10.{}.{}.{}",
        rng.random_range(0..4),
        rng.random_range(0..256),
        rng.random_range(2..255)
    )
}

/// Lower-case base32-ish token, like generated order ids or pod suffixes.
fn random_token(rng: &mut impl Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use std::collections::{HashMap, HashSet};

    /// (trace id, span id) -> (parent span id, name, start, end) of a request.
    type Spans = HashMap<(Vec<u8>, Vec<u8>), (Vec<u8>, String, u64, u64)>;

    fn spans(request: &ExportTraceServiceRequest) -> Spans {
        let mut all = HashMap::new();
        for span in request
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
        {
            let previous = all.insert(
                (span.trace_id.clone(), span.span_id.clone()),
                (
                    span.parent_span_id.clone(),
                    span.name.clone(),
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                ),
            );
            assert!(previous.is_none(), "duplicate span id");
        }
        all
    }

    /// (child name, parent name) pairs, which must survive any rewrite.
    fn edges(spans: &Spans) -> Vec<(String, String)> {
        let mut edges: Vec<_> = spans
            .iter()
            .map(|((trace, _), (parent, name, _, _))| {
                let parent_name = if parent.is_empty() {
                    "<root>".to_string()
                } else {
                    spans[&(trace.clone(), parent.clone())].1.clone()
                };
                (name.clone(), parent_name)
            })
            .collect();
        edges.sort();
        edges
    }

    #[test]
    fn rewrite_keeps_parent_links_and_changes_every_id() {
        let mut rng = SmallRng::seed_from_u64(42);
        let pool = build_pool(&mut rng, 3, 40);
        for template in &pool {
            let before = spans(template.request());
            let mut sent = Vec::new();
            let now = 1_700_000_000_000_000_000;
            let request = template.instantiate(&mut rng, now, &mut sent);
            let after = spans(&request);

            assert_eq!(after.len(), template.span_count());
            assert_eq!(sent.len(), 40);
            assert_eq!(
                sent.iter().map(|t| t.spans as usize).sum::<usize>(),
                after.len()
            );
            // Same tree shape, every parent found in the same trace.
            assert_eq!(edges(&before), edges(&after));
            // Fresh ids everywhere.
            let old_traces: HashSet<_> = before.keys().map(|(t, _)| t.clone()).collect();
            let old_spans: HashSet<_> = before.keys().map(|(_, s)| s.clone()).collect();
            for (trace, span) in after.keys() {
                assert_eq!((trace.len(), span.len()), (16, 8));
                assert!(!old_traces.contains(trace));
                assert!(!old_spans.contains(span));
            }
            // One root per trace, and the reported span counts match.
            for trace in &sent {
                let in_trace: Vec<_> = after
                    .iter()
                    .filter(|((t, _), _)| t.as_slice() == trace.id)
                    .collect();
                assert_eq!(in_trace.len(), trace.spans as usize);
                assert_eq!(in_trace.iter().filter(|(_, v)| v.0.is_empty()).count(), 1);
            }
            // Children inside their parents, everything ended by `now`.
            for ((trace, _), (parent, _, start, end)) in &after {
                assert!(start <= end && *end <= now);
                if !parent.is_empty() {
                    let (_, _, p_start, p_end) = &after[&(trace.clone(), parent.clone())];
                    assert!(p_start <= start && end <= p_end);
                }
            }
        }
    }

    #[test]
    fn batches_look_like_the_shop() {
        let mut rng = SmallRng::seed_from_u64(1);
        let pool = build_pool(&mut rng, 20, 25);
        let spans: usize = pool.iter().map(Template::span_count).sum();
        let traces = 20 * 25;
        // Mostly 10-span traces, a few shorter failing ones.
        assert!(spans > traces * 9 && spans <= traces * 10);
        for template in &pool {
            for rs in &template.request().resource_spans {
                let attributes = &rs.resource.as_ref().unwrap().attributes;
                assert!(attributes.iter().any(|kv| kv.key == "service.name"));
                for span in &rs.scope_spans[0].spans {
                    assert!(span.attributes.len() >= 8, "{}", span.name);
                }
            }
        }
    }
}
