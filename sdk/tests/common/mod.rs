//! Test harness: the real Strand daemon in-process on free loopback ports,
//! services instrumented with the SDK, and polling helpers.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::oneshot;

/// How long telemetry may take to become queryable before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A loopback address nothing listens on (yet).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// A running Strand daemon with a temporary data directory; stopped on drop.
pub struct Strand {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    _data_dir: tempfile::TempDir,
}

impl Strand {
    /// Starts the daemon with its OTLP/gRPC listener on `grpc` and waits until
    /// `/readyz` answers.
    pub async fn start_on(grpc: SocketAddr) -> Strand {
        let data_dir = tempfile::tempdir().expect("temporary directory");
        let http = free_port();
        let config = strand::Config::from_args([
            "--data-dir".to_string(),
            data_dir.path().display().to_string(),
            format!("--otlp-grpc={grpc}"),
            format!("--otlp-http={}", free_port()),
            format!("--http={http}"),
            "--flush-interval=200ms".to_string(),
        ])
        .expect("valid daemon config");
        let listeners = strand::Listeners::bind(&config)
            .await
            .expect("daemon listeners bind");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            if let Err(error) = strand::run(config, listeners, async {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("strand failed: {error:#}");
            }
        });
        let strand = Strand {
            grpc,
            http,
            stop: Some(stop),
            _data_dir: data_dir,
        };
        let ready = eventually(Duration::from_secs(60), || async {
            let response = reqwest::get(strand.url("/readyz")).await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        assert!(ready.is_some(), "strand was not ready within 60s");
        strand
    }

    /// Starts the daemon on free ports.
    pub async fn start() -> Strand {
        Strand::start_on(free_port()).await
    }

    /// Where the SDK sends OTLP/gRPC.
    pub fn otlp_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// GET on the API port: the status and the JSON body (`Null` if not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let Ok(response) = reqwest::get(self.url(path)).await else {
            return (0, Value::Null);
        };
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

impl Drop for Strand {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh trace id and a `traceparent` header that starts it (sampled), so
/// a test knows which trace to look up.
pub fn new_trace() -> (String, String) {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let trace_id = format!("{:032x}", nanos ^ (u128::from(std::process::id()) << 64));
    let traceparent = format!("00-{trace_id}-{:016x}-01", (nanos as u64) | 1);
    (trace_id, traceparent)
}

/// The SDK settings every test uses: export to `strand` quickly, and keep
/// the daemon's own logs (it runs in this process) out of the exported ones.
pub fn sdk(service: &str, endpoint: &str) -> strand_sdk::Builder {
    strand_sdk::Builder::new(service)
        .endpoint(endpoint)
        .batch_delay(Duration::from_millis(100))
        .metric_interval(Duration::from_millis(500))
        .log_filter("info,strand=off")
}

/// The spans of a Jaeger `/api/traces/{id}` answer as
/// `(service, operation, spanID, parent spanID)`.
pub fn spans(body: &Value) -> Vec<(String, String, String, Option<String>)> {
    let trace = &body["data"][0];
    let Some(spans) = trace["spans"].as_array() else {
        return Vec::new();
    };
    spans
        .iter()
        .map(|span| {
            let process = span["processID"].as_str().unwrap_or_default();
            let parent = span["references"].as_array().and_then(|refs| {
                refs.iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_string)
            });
            (
                trace["processes"][process]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                span["operationName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                span["spanID"].as_str().unwrap_or_default().to_string(),
                parent,
            )
        })
        .collect()
}
