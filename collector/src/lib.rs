//! Strand: observability for microservices in one daemon.
//!
//! # Layout
//!
//! - [`config`]: flags, environment and config file -> [`Config`].
//! - `ingest`: the wire edge — OTLP over gRPC and HTTP, Elasticsearch `_bulk`,
//!   Prometheus remote write and scraping, decoded and validated into
//!   [`model`] types. The only place that knows the wire formats.
//! - `pipeline`: the data path — WAL append with group commit, the in-memory
//!   heads, acknowledgement, and the background loops that move data to the
//!   stores.
//! - `wal`: the write-ahead log. `codec`: the encodings the WAL, span blocks
//!   and stored log records share.
//! - `store`: embedded storage engines (`traces`: zstd span blocks with a sled
//!   index; `logs`: tantivy partitions; `metrics`: Gorilla-chunk TSDB;
//!   `dashboards`: JSON files), opened once as `Stores` and shared by the
//!   pipeline (writes) and the API (reads).
//! - `query`: query semantics over the stores: trace search, log search, and
//!   the metrics store as a PromQL series source (the evaluator is the
//!   `strand-promql` crate).
//! - `api`: the HTTP API on the UI port (Jaeger, logs and Prometheus APIs,
//!   dashboards, health, `/metrics`); it reads `Stores`, never the pipeline.
//! - `derived`: metrics derived from spans — RED metrics per service and
//!   operation (`span_metrics`), calls, failures and latency per
//!   service-to-service edge (`service_graph`).
//! - `auth`: bearer tokens with scopes, checked on every listener.
//! - `elastic`: the Elasticsearch surface beyond `_bulk` (what clients check
//!   before they send, Elasticsearch's error shape), shared by `ingest` and
//!   `api` without either importing the other.
//! - `telemetry`: Strand's own metrics.
//! - `tls`: TLS on the listeners, and reloading its files.
//! - `connections`: how many connections each listener serves, and how
//!   long a peer may leave an answer unread.
//! - `memory`: `--memory-limit` — its shares, and the ingest edge's checks.
//! - `snapshot`: consistent copies of the data directory while ingest goes
//!   on (`POST /api/admin/snapshot`), from the WAL's durable records and each
//!   store's last flush; `backup` links or copies their files.
//! - `data_dir`: the data directory's lock, so that one daemon at a time
//!   writes it.
//!
//! [`run`] wires them together on [`Listeners`]; `main.rs` only parses flags,
//! binds and waits for a signal.

mod api;
mod auth;
mod backup;
mod codec;
pub mod config;
mod connections;
mod data_dir;
mod deadline;
mod derived;
mod elastic;
mod frame;
mod hangup;
mod ingest;
mod memory;
pub mod model;
mod pipeline;
mod query;
pub mod rules;
mod snapshot;
mod store;
mod telemetry;
mod tls;
mod wal;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::Config;
pub use memory::{prepare_process_memory, release_if_asked};
/// Strand's own metrics: public so tests can hand them to a
/// [`rules::Notifier`] and read them back.
pub use telemetry::SelfMetrics;

/// Prometheus remote write 1.0 messages (`prometheus.WriteRequest`), as the
/// daemon decodes them: public so test and benchmark senders encode exactly
/// what `/api/v1/write` reads.
pub mod remote_write {
    pub use crate::ingest::remote_write::{
        TimeSeries, WireLabel, WireMetadata, WireSample, WriteRequest,
    };
}

/// The log index exactly as the daemon builds it (schema, settings, writer
/// sizing, record -> document) and the OTLP conversion in front of it: public
/// so `strand-bench` can index the daemon's own documents with bare tantivy
/// and measure what the protocol and the WAL cost on top.
pub mod log_index {
    pub use crate::ingest::otlp::{ConvertedLogs, convert_logs_request};
    pub use crate::store::logs::schema::{
        HOT_WRITER_BYTES, LogFields, build, hot_writer_threads, index_settings, to_document,
        tokenizers,
    };
}

/// How long servers get to finish in-flight requests on shutdown: half of
/// the 10 s a stop may take, the rest is for the final flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How often the daemon looks whether its data directory is still there:
/// within about a second of its removal it stops taking data.
const DATA_DIR_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The daemon's three listeners. The caller binds them, so that a test can
/// bind port 0 and know every address before the daemon starts.
pub struct Listeners {
    pub otlp_grpc: TcpListener,
    pub otlp_http: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the addresses `config` names.
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))
        };
        Ok(Listeners {
            otlp_grpc: bind(config.otlp_grpc).await?,
            otlp_http: bind(config.otlp_http).await?,
            http: bind(config.http).await?,
        })
    }
}

/// Runs the daemon on `listeners` until `shutdown` resolves, then stops
/// accepting requests, flushes everything to the stores and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let self_metrics = telemetry::SelfMetrics::new();
    let auth = auth::Auth::new(&config.auth, &self_metrics).context("loading tokens")?;
    let tls = config
        .tls
        .clone()
        .map(|files| tls::Tls::load(files, self_metrics.clone()))
        .transpose()
        .context("loading the TLS files")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    // Held to the end, after the last flush.
    let data_dir_lock = {
        let dir = config.data_dir.clone();
        tokio::task::spawn_blocking(move || {
            data_dir::DataDirLock::acquire(&dir, data_dir::LOCK_WAIT)
        })
        .await
        .context("locking the data directory")??
    };
    let (stores, pipeline) = {
        let config = config.clone();
        let self_metrics = self_metrics.clone();
        tokio::task::spawn_blocking(move || {
            let stores = store::Stores::open(&config, &self_metrics)?;
            let pipeline = pipeline::Pipeline::open(&stores, &config, self_metrics)?;
            anyhow::Ok((stores, pipeline))
        })
        .await
        .context("opening the data directory")??
    };

    let Listeners {
        otlp_grpc: grpc_listener,
        otlp_http: otlp_http_listener,
        http: http_listener,
    } = listeners;
    tracing::info!(
        otlp_grpc = %grpc_listener.local_addr()?,
        otlp_http = %otlp_http_listener.local_addr()?,
        http = %http_listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        tls = tls.is_some(),
        "StrandListening"
    );
    warn_if_open_beyond_loopback(
        &auth,
        &[&grpc_listener, &otlp_http_listener, &http_listener],
    )?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let mut scrape_targets: Vec<_> = config
        .metrics
        .scrape
        .iter()
        .map(|target| (target.clone(), ingest::scrape::Source::Http))
        .collect();
    if let Some(interval) = config.metrics.self_scrape_interval {
        scrape_targets.push((
            config::ScrapeTarget {
                job: "strand".into(),
                address: own_instance(http_listener.local_addr()?),
                path: "/metrics".into(),
                interval,
                timeout: interval.min(Duration::from_secs(10)),
                labels: Vec::new(),
            },
            ingest::scrape::Source::Own(Box::new(self_metrics.clone())),
        ));
    }
    let scrapers: Vec<_> = scrape_targets
        .into_iter()
        .map(|(target, source)| {
            tokio::spawn(ingest::scrape::run(
                pipeline.clone(),
                target,
                source,
                stopped(),
            ))
        })
        .collect();
    let memory_guard = memory::MemoryGuard::new(config.memory, &self_metrics);
    tokio::spawn(memory_guard.clone().watch(
        {
            let pipeline = pipeline.clone();
            move || pipeline.request_flush()
        },
        stopped(),
    ));
    let admit_http = axum::middleware::from_fn_with_state(memory_guard.clone(), ingest::admit_http);
    let metrics_converter = Arc::new(ingest::otlp_metrics::MetricsConverter::new(
        config.metrics.limits.max_series,
    ));
    let grpc_server = tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(
            auth.grpc_interceptor(auth::Scope::Ingest),
        ))
        .layer(tower::util::MapResponseLayer::new(
            ingest::grpc::oversized_as_resource_exhausted(config.max_body_bytes),
        ))
        .layer(ingest::grpc::AdmitLayer(memory_guard))
        .add_service(ingest::grpc::trace_service(
            pipeline.clone(),
            config.max_body_bytes,
        ))
        .add_service(ingest::grpc::logs_service(
            pipeline.clone(),
            config.max_body_bytes,
        ))
        .add_service(ingest::grpc::metrics_service(
            pipeline.clone(),
            metrics_converter.clone(),
            config.max_body_bytes,
        ));
    let served_grpc = Served {
        name: "otlp_grpc",
        tls: tls.as_ref(),
        limits: config.connections,
        metrics: &self_metrics,
    };
    let grpc = match &tls {
        Some(tls) => tokio::spawn(
            grpc_server.serve_with_incoming_shutdown(
                served_grpc
                    .bound(tls.listener(grpc_listener, tls::Protocols::Grpc, "otlp_grpc"))
                    .into_incoming(),
                stopped(),
            ),
        ),
        None => tokio::spawn(grpc_server.serve_with_incoming_shutdown(
            served_grpc.bound(grpc_listener).into_incoming(),
            stopped(),
        )),
    };
    let close_after_refused_body =
        axum::middleware::map_response(ingest::http::close_after_refused_body);
    let otlp_http = serve_http(
        otlp_http_listener,
        auth.guard(
            ingest::http::router(pipeline.clone(), metrics_converter, config.max_body_bytes)
                .layer(admit_http.clone()),
            auth::Scope::Ingest,
            auth::Scope::Ingest,
        )
        .layer(close_after_refused_body.clone()),
        Served {
            name: "otlp_http",
            tls: tls.as_ref(),
            limits: config.connections,
            metrics: &self_metrics,
        },
        stopped(),
    );
    let rules = start_rules(
        &config,
        &stores,
        &pipeline,
        &http_listener,
        &self_metrics,
        stopped(),
    )?;
    let rules_reloader = rules
        .clone()
        .map(|rules| tokio::spawn(rules.reload_on_hangup(stopped())));
    let healthy = Arc::new(AtomicBool::new(true));
    let api_state = Arc::new(api::ApiState {
        rules,
        stores: stores.clone(),
        self_metrics: self_metrics.clone(),
        healthy: healthy.clone(),
        queries: query::pool::QueryPool::start(&config.queries)
            .context("starting the query threads")?,
        snapshots: Arc::new(snapshot::Snapshotter::new(
            config.data_dir.clone(),
            pipeline.wal(),
            stores,
            self_metrics.clone(),
        )),
        stopping,
    });
    let http = serve_http(
        http_listener,
        api::router(api_state, &auth, config.auth.public_metrics)
            .merge(
                auth.guard(
                    ingest::remote_write::router(pipeline.clone(), config.max_body_bytes)
                        .layer(admit_http.clone()),
                    auth::Scope::Ingest,
                    auth::Scope::Ingest,
                ),
            )
            .merge(
                auth.guard(
                    ingest::loki::router(pipeline.clone(), config.max_body_bytes)
                        .layer(admit_http.clone()),
                    auth::Scope::Ingest,
                    auth::Scope::Ingest,
                ),
            )
            // Shippers hold ingest tokens, so their set-up reads need that
            // scope rather than read; they expose no stored data.
            .merge(
                auth.guard(
                    ingest::http::bulk_router(pipeline.clone(), config.max_body_bytes)
                        .merge(elastic::router())
                        .layer(admit_http),
                    auth::Scope::Ingest,
                    auth::Scope::Ingest,
                )
                .layer(axum::middleware::from_fn(elastic::product_header)),
            )
            .layer(close_after_refused_body),
        Served {
            name: "http",
            tls: tls.as_ref(),
            limits: config.connections,
            metrics: &self_metrics,
        },
        stopped(),
    );
    let token_watch = tokio::spawn(auth.watch_token_file(stopped()));
    if let Some(tls) = tls {
        tokio::spawn(tls.reload_on_change(stopped()));
    }
    let (flusher_stop_tx, flusher_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let flusher = tokio::spawn(pipeline.clone().run_flusher(healthy, async move {
        let _ = flusher_stop_rx.await;
    }));

    let data_dir_removed = tokio::select! {
        () = shutdown => false,
        () = data_dir_lock.removed(DATA_DIR_CHECK_INTERVAL) => true,
    };
    if data_dir_removed {
        tracing::error!(
            data_dir = %config.data_dir.display(),
            "DataDirRemoved: the data directory was removed while the daemon ran; \
             stopping rather than acknowledge data it cannot keep"
        );
    }
    tracing::info!("StrandShuttingDown");
    let _ = stop_tx.send(true);
    let servers = async {
        let (grpc, otlp_http, http) = tokio::join!(grpc, otlp_http, http);
        grpc.context("OTLP/gRPC server task")?
            .context("OTLP/gRPC server")?;
        otlp_http
            .context("OTLP/HTTP server task")?
            .context("OTLP/HTTP server")?;
        http.context("HTTP server task")?.context("HTTP server")?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(SHUTDOWN_GRACE, servers).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("ShutdownGraceExpired: closing remaining connections"),
    }
    let _ = token_watch.await;
    if let Some(rules_reloader) = rules_reloader {
        let _ = rules_reloader.await;
    }
    for scraper in scrapers {
        let _ = scraper.await;
    }
    let _ = flusher_stop_tx.send(());
    flusher.await.context("flusher task")?;
    tracing::info!("StrandStopped");
    if data_dir_removed {
        bail!(
            "data directory {} was removed while the daemon ran: what it held is gone \
             with it; start it again to begin a new one",
            config.data_dir.display()
        );
    }
    Ok(())
}

/// Loads the `--rules` files and starts evaluating them: they read the
/// stores as the query API does and write through the pipeline, so recorded
/// series and `ALERTS` are durable like any acknowledged sample; alerts due
/// go to the `--alertmanager`s until `stop`. `None` without rule files.
fn start_rules(
    config: &Config,
    stores: &store::Stores,
    pipeline: &Arc<pipeline::Pipeline>,
    http_listener: &TcpListener,
    self_metrics: &telemetry::SelfMetrics,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Option<Arc<rules::RuleManager>>> {
    let settings = &config.rules;
    if settings.files.is_empty() {
        if !config.alertmanagers.urls.is_empty() {
            tracing::warn!(
                "AlertmanagerWithoutRules: --alertmanager is set but no --rules, so no alert is ever sent"
            );
        }
        return Ok(None);
    }
    let external_url = match &settings.external_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let addr = http_listener.local_addr()?;
            let host = if addr.ip().is_unspecified() {
                "localhost".to_owned()
            } else {
                addr.ip().to_string()
            };
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{host}:{}", addr.port())
        }
    };
    let metrics = stores.metrics.clone();
    let logs = stores.logs.clone();
    let max_series = config.queries.max_series;
    let timeout = config.queries.timeout;
    let writer = pipeline.clone();
    let runtime = tokio::runtime::Handle::current();
    let context = rules::RuleContext {
        default_interval: settings.evaluation_interval,
        external_labels: settings.external_labels.clone(),
        external_url,
        outage_tolerance: settings.outage_tolerance,
        for_grace_period: settings.for_grace_period,
        resend_delay: settings.resend_delay,
    };
    let notify: rules::AlertSink = if config.alertmanagers.urls.is_empty() {
        Arc::new(|alerts| tracing::debug!(alerts = alerts.len(), "AlertsDue: no --alertmanager"))
    } else {
        let notifier = rules::Notifier::new(&config.alertmanagers, &context, self_metrics.clone())
            .context("setting up alert delivery")?;
        tokio::spawn(notifier.clone().run(stop));
        Arc::new(move |alerts| notifier.send(alerts))
    };
    let environment = rules::RuleEnvironment {
        context,
        limits: strand_promql::Limits {
            max_samples: config.queries.max_samples,
            timeout: config.queries.timeout,
            ..strand_promql::Limits::default()
        },
        source: Arc::new(move || {
            Box::new(
                query::metrics::MetricSource::new(metrics.clone(), max_series)
                    .with_logs(logs.clone(), query::pool::Deadline::after(timeout)),
            )
        }),
        write: Arc::new(move |series| {
            let rejections = runtime
                .block_on(writer.accept_samples(series, Vec::new(), "rules"))
                .map_err(|error| error.to_string())?;
            match rejections.first_error {
                Some(error) => Err(format!("{} samples refused: {error}", rejections.rejected)),
                None => Ok(()),
            }
        }),
        notify,
        metrics: self_metrics.clone(),
    };
    let manager = rules::RuleManager::start(settings.files.clone(), environment)
        .context("loading the rule files")?;
    Ok(Some(manager))
}

/// A loud warning when a listener accepts connections from other hosts and
/// no token protects it: anyone who can reach it may write and read
/// everything.
fn warn_if_open_beyond_loopback(
    auth: &auth::Auth,
    listeners: &[&TcpListener],
) -> anyhow::Result<()> {
    if auth.enabled() {
        return Ok(());
    }
    for listener in listeners {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "UnprotectedListener: no token is configured and this listener accepts \
                 connections from other hosts; anyone who reaches it can write telemetry, \
                 read every log line and change dashboards. Set --ingest-token, \
                 --read-token and --admin-token (or --token-file)."
            );
        }
    }
    Ok(())
}

/// How a listener is served: its name (in metrics and logs), TLS if on,
/// and its connection bounds.
struct Served<'a> {
    name: &'static str,
    tls: Option<&'a tls::Tls>,
    limits: connections::ConnectionLimits,
    metrics: &'a telemetry::SelfMetrics,
}

impl Served<'_> {
    fn bound<L: axum::serve::Listener>(&self, listener: L) -> connections::Bounded<L> {
        connections::Bounded::new(listener, self.limits, self.name, self.metrics)
    }
}

/// Serves `router` on `listener` until `stop` resolves, within the
/// listener's connection bounds: over TLS when `served.tls` is set, plain
/// text otherwise.
fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    served: Served<'_>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<std::io::Result<()>> {
    match served.tls {
        Some(tls) => tokio::spawn(
            axum::serve(
                served.bound(tls.listener(listener, tls::Protocols::Http, served.name)),
                router,
            )
            .with_graceful_shutdown(stop)
            .into_future(),
        ),
        None => tokio::spawn(
            axum::serve(served.bound(listener), router)
                .with_graceful_shutdown(stop)
                .into_future(),
        ),
    }
}

/// The `instance` Strand's own samples carry: its HTTP address, with the
/// host's name where it listens on every address (`0.0.0.0:7070` is the
/// same on every node of a deployment, whose samples may share a store).
fn own_instance(address: std::net::SocketAddr) -> String {
    if !address.ip().is_unspecified() {
        return address.to_string();
    }
    let mut name = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let named = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    match std::str::from_utf8(&name[..end]) {
        Ok(host) if named && !host.is_empty() => format!("{host}:{}", address.port()),
        _ => address.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_samples_name_the_host_where_strand_listens_everywhere() {
        let loopback: std::net::SocketAddr = "127.0.0.1:7070".parse().unwrap();
        assert_eq!(own_instance(loopback), "127.0.0.1:7070");
        let everywhere: std::net::SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let named = own_instance(everywhere);
        assert!(
            named.ends_with(":7070") && !named.starts_with("0.0.0.0"),
            "{named}"
        );
    }
}
