//! Tokens end to end: every endpoint of the three listeners answered with no
//! token, an unknown token, a token of the wrong scope and the right one;
//! the real OpenTelemetry exporters and a real Prometheus (remote write with
//! bearer and with basic auth, scraping `/metrics`) sending with tokens; the
//! token file rotated without a restart (on change and on SIGHUP); the
//! warning for an unprotected listener beyond loopback.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_sdk::trace::SdkTracerProvider;
use reqwest::Method;
use serde_json::Value;
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::support::prometheus::Prometheus;
use crate::support::remote_write as rw;
use crate::support::{STRAND_BINARY, now_ms};

pub const INGEST: &str = "ingest-token-4f1c9a0e7b";
pub const READ: &str = "read-token-8d2e6b1f3a";
pub const ADMIN: &str = "admin-token-c7a94e2d10";
pub const UNKNOWN: &str = "unknown-token-5b3f8c6e2a";

/// The flags giving each scope its token.
pub const TOKEN_FLAGS: [&str; 6] = [
    "--ingest-token",
    INGEST,
    "--read-token",
    READ,
    "--admin-token",
    ADMIN,
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    Nothing,
    Ingest,
    Read,
    Admin,
}

impl Needs {
    /// A valid token that lacks this scope.
    fn wrong_scope(self) -> Option<&'static str> {
        match self {
            Needs::Nothing => None,
            Needs::Ingest | Needs::Admin => Some(READ),
            Needs::Read => Some(INGEST),
        }
    }

    /// The token of exactly this scope.
    fn right(self) -> Option<&'static str> {
        match self {
            Needs::Nothing => None,
            Needs::Ingest => Some(INGEST),
            Needs::Read => Some(READ),
            Needs::Admin => Some(ADMIN),
        }
    }
}

#[derive(Clone, Copy)]
enum Port {
    OtlpHttp,
    Http,
}

struct Endpoint {
    port: Port,
    method: Method,
    path: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
    needs: Needs,
}

/// Every route of the OTLP/HTTP and API listeners, with a request each
/// would accept.
fn endpoints() -> Vec<Endpoint> {
    let now_ms = now_ms();
    let write = rw::body(&rw::request(vec![rw::series(
        "auth_test_total",
        &[],
        &[(now_ms, 1.0)],
    )]));
    let bulk = b"{\"index\":{}}\n{\"message\":\"bulk with a token\"}\n".to_vec();
    let dashboard = serde_json::to_vec(&serde_json::json!({
        "title": "Auth test",
        "panels": [{"title": "up", "query": "up"}],
    }))
    .unwrap();
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let endpoint = |port, method, path, needs| Endpoint {
        port,
        method,
        path,
        content_type: "",
        body: Vec::new(),
        needs,
    };
    let mut all = vec![
        endpoint(Port::Http, Method::GET, "/healthz", Needs::Nothing),
        endpoint(Port::Http, Method::GET, "/readyz", Needs::Nothing),
        endpoint(Port::Http, Method::GET, "/", Needs::Nothing),
        endpoint(Port::Http, Method::GET, "/ui/app.js", Needs::Nothing),
        endpoint(Port::Http, Method::GET, "/metrics", Needs::Read),
        endpoint(Port::Http, Method::GET, "/api/services", Needs::Read),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/services/order/operations",
            Needs::Read,
        ),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/operations?service=order",
            Needs::Read,
        ),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/traces?service=order",
            Needs::Read,
        ),
        endpoint(Port::Http, Method::GET, "/api/dependencies", Needs::Read),
        endpoint(Port::Http, Method::GET, "/api/logs?q=error", Needs::Read),
        endpoint(Port::Http, Method::GET, "/api/logs/histogram", Needs::Read),
        endpoint(Port::Http, Method::GET, "/api/logs/facets", Needs::Read),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/logs/tail?q=error",
            Needs::Read,
        ),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/v1/query?query=up",
            Needs::Read,
        ),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/v1/query_range?query=up&start=0&end=60&step=15",
            Needs::Read,
        ),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/v1/series?match[]=up",
            Needs::Read,
        ),
        endpoint(Port::Http, Method::GET, "/api/v1/labels", Needs::Read),
        endpoint(Port::Http, Method::POST, "/api/v1/labels", Needs::Read),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/v1/label/job/values",
            Needs::Read,
        ),
        endpoint(Port::Http, Method::GET, "/api/v1/metadata", Needs::Read),
        endpoint(
            Port::Http,
            Method::GET,
            "/api/v1/status/buildinfo",
            Needs::Read,
        ),
        endpoint(Port::Http, Method::GET, "/api/dashboards", Needs::Read),
        endpoint(Port::Http, Method::GET, "/api/dashboards/shop", Needs::Read),
        Endpoint {
            content_type: "application/x-www-form-urlencoded",
            body: b"query=up".to_vec(),
            ..endpoint(Port::Http, Method::POST, "/api/v1/query", Needs::Read)
        },
        Endpoint {
            content_type: "application/x-www-form-urlencoded",
            body: b"query=up&start=0&end=60&step=15".to_vec(),
            ..endpoint(Port::Http, Method::POST, "/api/v1/query_range", Needs::Read)
        },
        Endpoint {
            content_type: "application/json",
            body: dashboard,
            ..endpoint(
                Port::Http,
                Method::PUT,
                "/api/dashboards/auth-test",
                Needs::Admin,
            )
        },
        endpoint(
            Port::Http,
            Method::DELETE,
            "/api/dashboards/auth-test",
            Needs::Admin,
        ),
        endpoint(
            Port::Http,
            Method::POST,
            "/api/admin/snapshot",
            Needs::Admin,
        ),
        Endpoint {
            content_type: "application/x-protobuf",
            body: write,
            ..endpoint(Port::Http, Method::POST, "/api/v1/write", Needs::Ingest)
        },
        Endpoint {
            content_type: "application/x-ndjson",
            body: bulk.clone(),
            ..endpoint(Port::Http, Method::POST, "/_bulk", Needs::Ingest)
        },
        Endpoint {
            content_type: "application/x-ndjson",
            body: bulk,
            ..endpoint(Port::Http, Method::PUT, "/app-logs/_bulk", Needs::Ingest)
        },
    ];
    // Loki's API: queries read, push ingests.
    for path in [
        "/loki/api/v1/query?query=vector(1)",
        "/loki/api/v1/query_range?query=%7Bservice_name%3D%22x%22%7D",
        "/loki/api/v1/labels",
        "/loki/api/v1/label/service_name/values",
        "/loki/api/v1/series?match[]=%7Bservice_name%3D%22x%22%7D",
        "/loki/api/v1/index/stats?query=%7Bservice_name%3D%22x%22%7D",
        "/loki/api/v1/index/volume?query=%7Bservice_name%3D%22x%22%7D",
        "/loki/api/v1/status/buildinfo",
        "/loki/api/v1/tail?query=%7Bservice_name%3D%22x%22%7D",
    ] {
        all.push(endpoint(Port::Http, Method::GET, path, Needs::Read));
    }
    all.push(Endpoint {
        content_type: "application/json",
        body: br#"{"streams":[{"stream":{"job":"auth"},"values":[["1700000000000000000","with a token"]]}]}"#.to_vec(),
        ..endpoint(Port::Http, Method::POST, "/loki/api/v1/push", Needs::Ingest)
    });
    for path in ["/v1/traces", "/v1/logs", "/v1/metrics"] {
        all.push(Endpoint {
            content_type: "application/x-protobuf",
            ..endpoint(Port::OtlpHttp, Method::POST, path, Needs::Ingest)
        });
    }
    // Paths with a trace id: unknown ids are 404 once the token passes.
    for path in [
        "/api/traces/0af7651916cd43dd8448eb211c80319c",
        "/api/traces/0af7651916cd43dd8448eb211c80319c/logs",
    ] {
        assert!(path.contains(trace_id));
        all.push(endpoint(Port::Http, Method::GET, path, Needs::Read));
    }
    all
}

/// Sends `endpoint`'s request with `token` as a bearer token; returns the
/// status, the `WWW-Authenticate` header and the body.
async fn call(
    client: &reqwest::Client,
    daemon: &Strand,
    endpoint: &Endpoint,
    token: Option<&str>,
) -> (u16, Option<String>, String) {
    let url = match endpoint.port {
        Port::OtlpHttp => daemon.otlp_http_url(endpoint.path),
        Port::Http => daemon.url(endpoint.path),
    };
    let mut request = client
        .request(endpoint.method.clone(), url)
        .body(endpoint.body.clone());
    if !endpoint.content_type.is_empty() {
        request = request.header("content-type", endpoint.content_type);
    }
    if endpoint.path == "/api/v1/write" {
        request = request
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "0.1.0");
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", endpoint.method, endpoint.path));
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let streaming = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    // The live tail's stream does not end: its status is the answer.
    let body = if streaming {
        String::new()
    } else {
        response.text().await.unwrap_or_default()
    };
    (status, challenge, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_by_the_scope_of_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &TOKEN_FLAGS).await;
    let client = reqwest::Client::new();
    let mut failures = Vec::new();
    for endpoint in endpoints() {
        let name = format!("{} {}", endpoint.method, endpoint.path);
        let mut expect = |what: &str, check: &dyn Fn(u16) -> bool, got| {
            let (status, challenge, body): (u16, Option<String>, String) = got;
            if !check(status) {
                failures.push(format!("{name} with {what}: HTTP {status} {body}"));
            }
            if status == 401 && challenge.as_deref() != Some("Bearer realm=\"strand\"") {
                failures.push(format!(
                    "{name} with {what}: 401 without a Bearer challenge"
                ));
            }
            if (status == 401 || status == 403) && !body.contains("\"error\"") {
                failures.push(format!(
                    "{name} with {what}: refusal without a reason: {body}"
                ));
            }
        };
        let passes = |status: u16| status != 401 && status != 403 && status < 500;
        if endpoint.needs == Needs::Nothing {
            for token in [None, Some(UNKNOWN), Some(INGEST)] {
                let got = call(&client, &daemon, &endpoint, token).await;
                expect("any token", &|s| s == 200, got);
            }
            continue;
        }
        let got = call(&client, &daemon, &endpoint, None).await;
        expect("no token", &|s| s == 401, got);
        let got = call(&client, &daemon, &endpoint, Some(UNKNOWN)).await;
        expect("an unknown token", &|s| s == 401, got);
        if let Some(wrong) = endpoint.needs.wrong_scope() {
            let got = call(&client, &daemon, &endpoint, Some(wrong)).await;
            expect("a token of another scope", &|s| s == 403, got);
        }
        for token in [endpoint.needs.right(), Some(ADMIN)] {
            let got = call(&client, &daemon, &endpoint, token).await;
            expect("the right token", &passes, got);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The refusals are counted on /metrics, by scope and reason.
    let metrics = client
        .get(daemon.url("/metrics"))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "strand_auth_denied_total{reason=\"missing\",scope=\"read\"}",
        "strand_auth_denied_total{reason=\"invalid\",scope=\"ingest\"}",
        "strand_auth_denied_total{reason=\"wrong_scope\",scope=\"admin\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }
    daemon.stop().await;
}

/// `message` as a gRPC request carrying `token` as `authorization` metadata.
fn with_token<T>(token: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// The code of a refused call; `None` for an answered one.
fn code<T>(result: Result<T, tonic::Status>) -> Option<tonic::Code> {
    result.err().map(|status| status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_services_check_the_authorization_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &TOKEN_FLAGS).await;
    let cases = [
        (None, Some(tonic::Code::Unauthenticated)),
        (Some(UNKNOWN), Some(tonic::Code::Unauthenticated)),
        (Some(READ), Some(tonic::Code::PermissionDenied)),
        (Some(INGEST), None),
        (Some(ADMIN), None),
    ];
    let endpoint = daemon.grpc_endpoint();
    let mut traces = TraceServiceClient::connect(endpoint.clone()).await.unwrap();
    let mut logs = LogsServiceClient::connect(endpoint.clone()).await.unwrap();
    let mut metrics = MetricsServiceClient::connect(endpoint).await.unwrap();
    for (token, refusal) in cases {
        let answers = [
            (
                "traces",
                code(
                    traces
                        .export(with_token(token, ExportTraceServiceRequest::default()))
                        .await,
                ),
            ),
            (
                "logs",
                code(
                    logs.export(with_token(token, ExportLogsServiceRequest::default()))
                        .await,
                ),
            ),
            (
                "metrics",
                code(
                    metrics
                        .export(with_token(token, ExportMetricsServiceRequest::default()))
                        .await,
                ),
            ),
        ];
        for (service, code) in answers {
            assert_eq!(code, refusal, "{service} with token {token:?}");
        }
    }
    daemon.stop().await;
}

/// A tracer provider exporting `service`'s spans with the token: OTLP/gRPC
/// with `authorization` metadata, or OTLP/HTTP with the header.
fn provider_with_token(daemon: &Strand, service: &str, grpc: bool) -> SdkTracerProvider {
    let exporter = if grpc {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {INGEST}").parse().unwrap());
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(daemon.grpc_endpoint())
            .with_metadata(metadata)
            .build()
    } else {
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(daemon.otlp_http_url("/v1/traces"))
            .with_headers(HashMap::from([(
                "authorization".to_string(),
                format!("Bearer {INGEST}"),
            )]))
            .build()
    }
    .expect("exporter builds");
    crate::support::tracer_provider(exporter, service)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentelemetry_exporters_send_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &TOKEN_FLAGS).await;
    for (service, grpc) in [("auth-grpc", true), ("auth-http", false)] {
        let provider = provider_with_token(&daemon, service, grpc);
        provider.tracer("auth").in_span("checkout", |_| {});
        provider.force_flush().expect("the exporter sends");
        provider.shutdown().unwrap();
    }
    let client = reqwest::Client::new();
    let services = eventually(DEADLINE, || async {
        let body: Value = client
            .get(daemon.url("/api/services"))
            .bearer_auth(READ)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let data = body["data"].as_array()?.clone();
        (data.len() == 2).then_some(data)
    })
    .await
    .expect("both exporters' spans arrive");
    assert!(
        services.contains(&Value::from("auth-grpc"))
            && services.contains(&Value::from("auth-http"))
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_remote_writes_with_bearer_or_basic_auth_and_scrapes_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &TOKEN_FLAGS).await;
    let strand = daemon.http;
    let config = format!(
        "global:
  scrape_interval: 1s
scrape_configs:
  - job_name: strand
    authorization:
      credentials: {READ}
    static_configs:
      - targets: ['{strand}']
remote_write:
  - url: http://{strand}/api/v1/write
    name: bearer
    authorization:
      credentials: {INGEST}
    queue_config:
      batch_send_deadline: 1s
    write_relabel_configs:
      - target_label: via
        replacement: bearer
  - url: http://{strand}/api/v1/write
    name: basic
    basic_auth:
      username: prometheus
      password: {INGEST}
    queue_config:
      batch_send_deadline: 1s
    write_relabel_configs:
      - target_label: via
        replacement: basic
"
    );
    let prometheus = Prometheus::start(&config).await;
    let client = reqwest::Client::new();
    let up = |via: &'static str| {
        let client = client.clone();
        let url = daemon.url("/api/v1/query");
        async move {
            let body: Value = client
                .get(url)
                .query(&[("query", format!("up{{job=\"strand\",via=\"{via}\"}}"))])
                .bearer_auth(READ)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            body["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        }
    };
    for via in ["bearer", "basic"] {
        let value = eventually(Duration::from_secs(60), || up(via)).await;
        assert_eq!(
            value.as_deref(),
            Some("1"),
            "Prometheus' scrape of /metrics with a read token, remote written with {via} auth, \
             is not in Strand as up == 1\nPrometheus log:\n{}",
            prometheus.log()
        );
    }
    daemon.stop().await;
}

fn mtime(path: &std::path::Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_rotates_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# read tokens\nread old-read-token-0000001\n").unwrap();
    let token_file = tokens.display().to_string();
    // Listening beyond loopback, protected: no warning.
    let daemon = Strand::spawn(
        STRAND_BINARY,
        &dir.path().join("data"),
        &["--token-file", &token_file, "--http", "0.0.0.0:0"],
    )
    .await;
    let client = reqwest::Client::new();
    let status = |token: &'static str| {
        let request = client
            .get(format!(
                "http://127.0.0.1:{}/api/services",
                daemon.http.port()
            ))
            .bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("old-read-token-0000001").await, 200);
    assert_eq!(status("new-read-token-0000001").await, 401);

    // Rotation: the new token is added, then the old one removed.
    std::fs::write(
        &tokens,
        "read old-read-token-0000001\nread new-read-token-0000001\n",
    )
    .unwrap();
    eventually(DEADLINE, || async {
        (status("new-read-token-0000001").await == 200).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the added token works without a restart: it did not\n{}",
            daemon.log()
        )
    });
    assert_eq!(status("old-read-token-0000001").await, 200);
    std::fs::write(&tokens, "read new-read-token-0000001\n").unwrap();
    eventually(DEADLINE, || async {
        (status("old-read-token-0000001").await == 401).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the removed token stops working: it did not\n{}",
            daemon.log()
        )
    });

    // A broken file keeps the tokens in force, and says so.
    std::fs::write(&tokens, "raed newer-read-token-00001\n").unwrap();
    eventually(DEADLINE, || async {
        daemon.log().contains("TokenReloadFailed").then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("no TokenReloadFailed in the log:\n{}", daemon.log()));
    assert_eq!(status("new-read-token-0000001").await, 200);

    // SIGHUP reloads even when the file's time and size look unchanged
    // (same length, modification time set back, swapped in by a rename).
    let replacement = dir.path().join("tokens.new");
    std::fs::write(&replacement, "read hup-read-token-0000001\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&replacement)
        .unwrap()
        .set_modified(mtime(&tokens))
        .unwrap();
    std::fs::rename(&replacement, &tokens).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status("hup-read-token-0000001").await,
        401,
        "reloaded without SIGHUP though the file looked unchanged"
    );
    daemon.signal(libc::SIGHUP);
    eventually(DEADLINE, || async {
        (status("hup-read-token-0000001").await == 200).then_some(())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "SIGHUP reloads the token file: it did not\n{}",
            daemon.log()
        )
    });
    assert!(
        !daemon.log().contains("UnprotectedListener"),
        "a protected listener was reported unprotected:\n{}",
        daemon.log()
    );
    daemon.stop().await;

    let open = Strand::spawn(
        STRAND_BINARY,
        &dir.path().join("open"),
        &["--http", "0.0.0.0:0"],
    )
    .await;
    assert!(
        open.log().contains("UnprotectedListener"),
        "no warning for a listener open to other hosts without a token:\n{}",
        open.log()
    );
    open.stop().await;
}

/// Strand's scrape of its own metrics needs no token: it reads them
/// in-process, so `up{job="strand"}` is 1 behind tokens (and TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_scrape_works_behind_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = TOKEN_FLAGS.to_vec();
    args.extend(["--self-scrape-interval", "1s"]);
    let mut daemon = Strand::start(&dir.path().join("data"), &args).await;
    daemon.set_read_token(READ);
    let up = eventually(DEADLINE, || async {
        let (_, body) = daemon
            .get_json_query("/api/v1/query", &[("query", "up{job=\"strand\"}")])
            .await;
        body["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert_eq!(up.as_deref(), Some("1"), "the self-scrape failed");
    daemon.stop().await;
}
