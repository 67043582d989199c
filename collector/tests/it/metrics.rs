//! End to end for metrics: a service records a counter, an up-down counter, a
//! gauge, a histogram with explicit buckets and an exponential histogram with
//! the real OpenTelemetry SDK, exports them with the real OTLP metric exporter
//! (gRPC, HTTP protobuf; cumulative and delta temporality), and PromQL reads
//! back exactly what was recorded, under the names OpenTelemetry's Prometheus
//! compatibility rules give them. Prometheus remote write round-trips through
//! the query, series, labels, label values and metadata endpoints, and an
//! out-of-order sample is refused while the rest of its request is stored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{
    Aggregation, Instrument, PeriodicReader, SdkMeterProvider, Stream, Temporality,
};
use serde_json::json;
use strand_testkit::{Strand, eventually};

use crate::support::now_ms;
use crate::support::prom::{self, Labels, label_set};
use crate::support::remote_write::{self as rw, MetricMetadata};

/// How long an exported point may take to become queryable.
const VISIBLE_WITHIN: Duration = Duration::from_secs(20);

enum Transport {
    Grpc,
    HttpProtobuf,
}

/// The checkout service's meter provider: resource `service.name=checkout`,
/// `service.instance.id=i-1`, `host.name=box-1`; `payload.size` aggregated as
/// an exponential histogram. Builds a blocking HTTP client for HTTP: call it
/// off the async runtime's threads.
fn meter_provider(
    endpoint: &str,
    transport: Transport,
    temporality: Temporality,
    interval: Duration,
) -> SdkMeterProvider {
    let exporter = match transport {
        Transport::Grpc => opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_temporality(temporality)
            .build(),
        Transport::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint)
            .with_temporality(temporality)
            .build(),
    }
    .expect("exporter builds");
    let reader = PeriodicReader::builder(exporter)
        .with_interval(interval)
        .build();
    SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(
            Resource::builder()
                .with_service_name("checkout")
                .with_attributes([
                    KeyValue::new("service.instance.id", "i-1"),
                    KeyValue::new("host.name", "box-1"),
                ])
                .build(),
        )
        .with_view(|instrument: &Instrument| {
            (instrument.name() == "payload.size").then(|| {
                Stream::builder()
                    .with_aggregation(Aggregation::Base2ExponentialHistogram {
                        max_size: 160,
                        max_scale: 0,
                        record_min_max: true,
                    })
                    .build()
                    .expect("valid stream")
            })
        })
        .build()
}

async fn meter_provider_off_runtime(
    endpoint: String,
    transport: Transport,
    temporality: Temporality,
    interval: Duration,
) -> SdkMeterProvider {
    tokio::task::spawn_blocking(move || meter_provider(&endpoint, transport, temporality, interval))
        .await
        .unwrap()
}

/// Exports what was recorded and waits for the daemon's acknowledgement.
async fn flush(provider: &SdkMeterProvider) {
    let provider = provider.clone();
    tokio::task::spawn_blocking(move || provider.force_flush().expect("export acknowledged"))
        .await
        .unwrap();
}

async fn shutdown(provider: SdkMeterProvider) {
    tokio::task::spawn_blocking(move || provider.shutdown().expect("clean shutdown"))
        .await
        .unwrap();
}

/// Records the checkout service's metrics. All values are dyadic fractions,
/// so every sum is exact.
fn record_checkout_metrics(provider: &SdkMeterProvider) {
    let meter = provider.meter("shop");
    let orders = meter
        .u64_counter("orders.created")
        .with_unit("{order}")
        .with_description("Orders placed.")
        .build();
    orders.add(3, &[KeyValue::new("payment.method", "card")]);
    orders.add(4, &[KeyValue::new("payment.method", "card")]);
    orders.add(5, &[KeyValue::new("payment.method", "cash")]);

    let queue = meter
        .i64_up_down_counter("queue.depth")
        .with_unit("{item}")
        .build();
    queue.add(10, &[]);
    queue.add(-3, &[]);

    let memory = meter.f64_gauge("memory.usage").with_unit("By").build();
    memory.record(1000.0, &[]);
    memory.record(2048.5, &[]);

    let duration = meter
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_boundaries(vec![0.125, 0.5, 1.0])
        .build();
    for seconds in [0.0625, 0.25, 0.375, 0.75, 2.0] {
        duration.record(seconds, &[KeyValue::new("http.route", "/pay")]);
    }

    // Exponential, scale 0: 1.5 falls in (1, 2], 3 in (2, 4].
    let payload = meter.f64_histogram("payload.size").with_unit("By").build();
    for bytes in [1.5, 3.0, 3.0, 3.0] {
        payload.record(bytes, &[]);
    }
}

/// What `record_checkout_metrics` must read back as.
async fn assert_checkout_metrics(daemon: &Strand) {
    // Everything of one export arrives together; wait for the last instrument.
    prom::wait_for_value(
        daemon,
        r#"payload_size_bytes_count{job="checkout"}"#,
        4.0,
        VISIBLE_WITHIN,
    )
    .await;

    let expectations: &[(&str, f64)] = &[
        (
            r#"orders_created_total{job="checkout",instance="i-1",payment_method="card"}"#,
            7.0,
        ),
        (
            r#"orders_created_total{job="checkout",instance="i-1",payment_method="cash"}"#,
            5.0,
        ),
        (r#"sum(orders_created_total{job="checkout"})"#, 12.0),
        (r#"queue_depth{job="checkout"}"#, 7.0),
        (r#"memory_usage_bytes{job="checkout"}"#, 2048.5),
        (
            r#"http_server_request_duration_seconds_count{job="checkout",http_route="/pay"}"#,
            5.0,
        ),
        (
            r#"http_server_request_duration_seconds_sum{job="checkout"}"#,
            3.4375,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="0.125"}"#,
            1.0,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="0.5"}"#,
            3.0,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="1"}"#,
            4.0,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="+Inf"}"#,
            5.0,
        ),
        // Rank 2.5 lies in (0.125, 0.5], which holds ranks 2 and 3.
        (
            r#"histogram_quantile(0.5, http_server_request_duration_seconds_bucket{job="checkout"})"#,
            0.40625,
        ),
        (r#"payload_size_bytes_sum{job="checkout"}"#, 10.5),
        (r#"payload_size_bytes_bucket{job="checkout",le="2"}"#, 1.0),
        (r#"payload_size_bytes_bucket{job="checkout",le="4"}"#, 4.0),
        (
            r#"payload_size_bytes_bucket{job="checkout",le="+Inf"}"#,
            4.0,
        ),
        (
            r#"target_info{job="checkout",instance="i-1",host_name="box-1",telemetry_sdk_language="rust"}"#,
            1.0,
        ),
    ];
    let mut wrong = Vec::new();
    for &(query, expected) in expectations {
        let got = prom::instant_vector(daemon, query, None).await;
        if got.len() != 1 || got[0].1 != expected {
            wrong.push(format!("{query}: want {expected}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));

    // The up-down counter is a gauge: no `_total`; and the full label set of a series.
    assert!(
        prom::instant_vector(daemon, "queue_depth_total", None)
            .await
            .is_empty()
    );
    let card = prom::instant_vector(
        daemon,
        r#"orders_created_total{payment_method="card"}"#,
        None,
    )
    .await;
    assert_eq!(
        card.iter().map(|(l, _)| l.clone()).collect::<Vec<Labels>>(),
        vec![label_set(&[
            ("__name__", "orders_created_total"),
            ("instance", "i-1"),
            ("job", "checkout"),
            ("otel_scope_name", "shop"),
            ("payment_method", "card"),
        ])]
    );
    // Resource attributes other than the service's identity go to target_info only.
    let memory = prom::instant_vector(daemon, "memory_usage_bytes", None).await;
    assert!(
        !memory[0].0.contains_key("host_name"),
        "resource attribute copied onto a series: {memory:?}"
    );

    let metadata = prom::get_ok(daemon, "/api/v1/metadata", &[]).await;
    for (family, kind) in [
        ("orders_created_total", "counter"),
        ("queue_depth", "gauge"),
        ("memory_usage_bytes", "gauge"),
        ("http_server_request_duration_seconds", "histogram"),
        ("payload_size_bytes", "histogram"),
    ] {
        assert_eq!(metadata[family][0]["type"], kind, "{family}: {metadata}");
    }
    assert_eq!(
        metadata["orders_created_total"][0]["help"], "Orders placed.",
        "{metadata}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_grpc_metrics_read_back_through_promql() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    // No explicit flush: the periodic reader's own export must get there.
    let provider = meter_provider(
        &daemon.grpc_endpoint(),
        Transport::Grpc,
        Temporality::Cumulative,
        Duration::from_millis(300),
    );
    record_checkout_metrics(&provider);
    assert_checkout_metrics(&daemon).await;
    shutdown(provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_http_metrics_read_back_through_promql() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let provider = meter_provider_off_runtime(
        daemon.otlp_http_url("/v1/metrics"),
        Transport::HttpProtobuf,
        Temporality::Cumulative,
        Duration::from_secs(3600),
    )
    .await;
    record_checkout_metrics(&provider);
    flush(&provider).await;
    assert_checkout_metrics(&daemon).await;
    // Exporting the same cumulative totals again changes nothing.
    flush(&provider).await;
    flush(&provider).await;
    assert_eq!(
        prom::instant_value(&daemon, r#"sum(orders_created_total{job="checkout"})"#).await,
        Some(12.0)
    );
    shutdown(provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_temporality_reads_as_cumulative() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let provider = meter_provider(
        &daemon.grpc_endpoint(),
        Transport::Grpc,
        Temporality::Delta,
        Duration::from_secs(3600),
    );
    let meter = provider.meter("shop");
    let orders = meter
        .u64_counter("orders.created")
        .with_unit("{order}")
        .build();
    let duration = meter
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_boundaries(vec![0.5, 1.0])
        .build();
    let payload = meter.f64_histogram("payload.size").with_unit("By").build();

    orders.add(5, &[]);
    duration.record(0.25, &[]);
    payload.record(1.5, &[]);
    flush(&provider).await;
    prom::wait_for_value(
        &daemon,
        r#"orders_created_total{job="checkout"}"#,
        5.0,
        VISIBLE_WITHIN,
    )
    .await;

    orders.add(7, &[]);
    duration.record(0.75, &[]);
    duration.record(4.0, &[]);
    payload.record(3.0, &[]);
    payload.record(3.0, &[]);
    flush(&provider).await;
    prom::wait_for_value(
        &daemon,
        r#"orders_created_total{job="checkout"}"#,
        12.0,
        VISIBLE_WITHIN,
    )
    .await;
    // An export with nothing new recorded leaves the totals alone.
    flush(&provider).await;

    let expectations: &[(&str, f64)] = &[
        (r#"orders_created_total{job="checkout"}"#, 12.0),
        (
            r#"http_server_request_duration_seconds_count{job="checkout"}"#,
            3.0,
        ),
        (
            r#"http_server_request_duration_seconds_sum{job="checkout"}"#,
            5.0,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="0.5"}"#,
            1.0,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="1"}"#,
            2.0,
        ),
        (
            r#"http_server_request_duration_seconds_bucket{job="checkout",le="+Inf"}"#,
            3.0,
        ),
        (r#"payload_size_bytes_count{job="checkout"}"#, 3.0),
        (r#"payload_size_bytes_sum{job="checkout"}"#, 7.5),
        (r#"payload_size_bytes_bucket{job="checkout",le="2"}"#, 1.0),
        (r#"payload_size_bytes_bucket{job="checkout",le="4"}"#, 3.0),
    ];
    let mut wrong = Vec::new();
    for &(query, expected) in expectations {
        let got = prom::instant_vector(&daemon, query, None).await;
        if got.len() != 1 || got[0].1 != expected {
            wrong.push(format!("{query}: want {expected}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));

    // The counter never goes down between the two exports: no false reset.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let resets = prom::instant_vector(
        &daemon,
        r#"resets(orders_created_total{job="checkout"}[10m])"#,
        Some(now),
    )
    .await;
    assert_eq!(resets.len(), 1, "{resets:?}");
    assert_eq!(resets[0].1, 0.0, "{resets:?}");
    shutdown(provider).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_round_trips_through_the_prometheus_api() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    // Ten minutes ago, on a whole second; samples 15 s apart.
    let base = (now_ms() - 600_000) / 1000 * 1000;
    let at = |step: i64| base + step * 15_000;
    let seconds = |ms: i64| ms as f64 / 1000.0;

    let mut request = rw::request(vec![
        rw::series(
            "rw_requests_total",
            &[("job", "api"), ("instance", "a")],
            &[(at(0), 1.0), (at(1), 5.0), (at(2), 9.0)],
        ),
        rw::series(
            "rw_requests_total",
            &[("job", "api"), ("instance", "b")],
            &[(at(0), 100.0), (at(1), 100.0), (at(2), 130.0)],
        ),
        rw::series(
            "rw_temperature_celsius",
            // An empty label value is no label at all.
            &[("job", "sensor"), ("room", "lab"), ("floor", "")],
            &[(at(0), 21.5), (at(1), -3.25), (at(2), 22.0)],
        ),
    ]);
    request.metadata = vec![
        MetricMetadata {
            r#type: 1,
            metric_family_name: "rw_requests_total".into(),
            help: "Requests served.".into(),
            unit: String::new(),
        },
        MetricMetadata {
            r#type: 2,
            metric_family_name: "rw_temperature_celsius".into(),
            help: "Room temperature.".into(),
            unit: "celsius".into(),
        },
    ];
    rw::write_ok(&daemon, &request).await;

    // Range query: every sample, exactly, at the steps it was written at.
    let got = prom::range(
        &daemon,
        r#"{__name__=~"rw_.+"}"#,
        seconds(at(0)),
        seconds(at(2)),
        "15s",
    )
    .await;
    let want = vec![
        (
            label_set(&[
                ("__name__", "rw_requests_total"),
                ("instance", "a"),
                ("job", "api"),
            ]),
            vec![(at(0), 1.0), (at(1), 5.0), (at(2), 9.0)],
        ),
        (
            label_set(&[
                ("__name__", "rw_requests_total"),
                ("instance", "b"),
                ("job", "api"),
            ]),
            vec![(at(0), 100.0), (at(1), 100.0), (at(2), 130.0)],
        ),
        (
            label_set(&[
                ("__name__", "rw_temperature_celsius"),
                ("job", "sensor"),
                ("room", "lab"),
            ]),
            vec![(at(0), 21.5), (at(1), -3.25), (at(2), 22.0)],
        ),
    ];
    assert_eq!(got, want);

    let instant = |query: &'static str| {
        let daemon = &daemon;
        async move {
            prom::instant_vector(daemon, query, Some(seconds(at(2))))
                .await
                .into_iter()
                .map(|(_, v)| v)
                .collect::<Vec<f64>>()
        }
    };
    assert_eq!(instant("sum(rw_requests_total)").await, [139.0]);
    assert_eq!(
        instant("min_over_time(rw_temperature_celsius[1m])").await,
        [-3.25]
    );

    // Series, labels and label values, restricted and not.
    let series = prom::get_ok(
        &daemon,
        "/api/v1/series",
        &[("match[]", "rw_requests_total")],
    )
    .await;
    assert_eq!(
        series,
        json!([
            {"__name__": "rw_requests_total", "instance": "a", "job": "api"},
            {"__name__": "rw_requests_total", "instance": "b", "job": "api"},
        ])
    );
    let series = prom::get_ok(
        &daemon,
        "/api/v1/series",
        &[
            ("match[]", r#"{job="sensor"}"#),
            ("match[]", r#"rw_requests_total{instance="b"}"#),
        ],
    )
    .await;
    assert_eq!(series.as_array().unwrap().len(), 2, "{series}");
    // Before the first sample, no series.
    let before = (seconds(at(0)) - 3600.0).to_string();
    let series = prom::get_ok(
        &daemon,
        "/api/v1/series",
        &[
            ("match[]", "rw_requests_total"),
            ("start", &before),
            ("end", &before),
        ],
    )
    .await;
    assert_eq!(series, json!([]));

    let ours = r#"{__name__=~"rw_.+"}"#;
    assert_eq!(
        prom::get_ok(&daemon, "/api/v1/labels", &[("match[]", ours)]).await,
        json!(["__name__", "instance", "job", "room"])
    );
    let all_labels = prom::get_ok(&daemon, "/api/v1/labels", &[]).await;
    for name in ["__name__", "instance", "job", "room"] {
        assert!(
            all_labels.as_array().unwrap().contains(&json!(name)),
            "{all_labels}"
        );
    }
    assert!(
        !all_labels.as_array().unwrap().contains(&json!("floor")),
        "{all_labels}"
    );
    assert_eq!(
        prom::get_ok(&daemon, "/api/v1/label/job/values", &[("match[]", ours)]).await,
        json!(["api", "sensor"])
    );
    let jobs = prom::get_ok(&daemon, "/api/v1/label/job/values", &[]).await;
    for job in ["api", "sensor"] {
        assert!(jobs.as_array().unwrap().contains(&json!(job)), "{jobs}");
    }
    assert_eq!(
        prom::get_ok(
            &daemon,
            "/api/v1/label/__name__/values",
            &[("match[]", ours)]
        )
        .await,
        json!(["rw_requests_total", "rw_temperature_celsius"])
    );

    // Metadata from the request's metadata field.
    assert_eq!(
        prom::get_ok(
            &daemon,
            "/api/v1/metadata",
            &[("metric", "rw_requests_total")]
        )
        .await,
        json!({"rw_requests_total": [{"type": "counter", "help": "Requests served.", "unit": ""}]})
    );
    let metadata = prom::get_ok(&daemon, "/api/v1/metadata", &[]).await;
    assert_eq!(
        metadata["rw_temperature_celsius"],
        json!([{"type": "gauge", "help": "Room temperature.", "unit": "celsius"}]),
        "{metadata}"
    );

    // An out-of-order sample is refused with 400; the rest of its request is stored.
    let (status, text) = rw::write(
        &daemon,
        &rw::request(vec![
            rw::series(
                "rw_temperature_celsius",
                &[("job", "sensor"), ("room", "lab")],
                &[(at(1), 99.0)],
            ),
            rw::series(
                "rw_requests_total",
                &[("job", "api"), ("instance", "a")],
                &[(at(3), 12.0)],
            ),
        ]),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("out of order"), "{text}");
    assert!(text.contains("1 samples were not stored"), "{text}");
    // A different value for a stored timestamp is refused too; the same value
    // (a sender's retry) is fine.
    let temperature = |samples: &[(i64, f64)]| {
        rw::request(vec![rw::series(
            "rw_temperature_celsius",
            &[("job", "sensor"), ("room", "lab")],
            samples,
        )])
    };
    let (status, text) = rw::write(&daemon, &temperature(&[(at(2), 23.0)])).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("duplicate sample"), "{text}");
    rw::write_ok(&daemon, &temperature(&[(at(2), 22.0)])).await;

    // The first two requests named series new to the store (the second
    // sends the temperature without its empty label: another encoding);
    // the last two were found by the keys of their labels as sent before.
    let metrics = daemon.self_metrics().await;
    for line in [
        r#"strand_remote_write_requests_total{series_by="labels"} 2"#,
        r#"strand_remote_write_requests_total{series_by="key"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} missing from /metrics");
    }

    let raw = prom::raw_samples(
        &daemon,
        r#"{__name__=~"rw_.+",job=~"api|sensor"}[5m]"#,
        seconds(at(3)),
    )
    .await;
    let raw: Vec<(String, Vec<(i64, f64)>)> = raw
        .into_iter()
        .map(|(labels, samples)| {
            (
                format!(
                    "{}/{}",
                    labels["__name__"],
                    labels.get("instance").map_or("", |s| s)
                ),
                samples,
            )
        })
        .collect();
    assert_eq!(
        raw,
        vec![
            (
                "rw_requests_total/a".to_string(),
                vec![(at(0), 1.0), (at(1), 5.0), (at(2), 9.0), (at(3), 12.0)]
            ),
            (
                "rw_requests_total/b".to_string(),
                vec![(at(0), 100.0), (at(1), 100.0), (at(2), 130.0)]
            ),
            (
                "rw_temperature_celsius/".to_string(),
                vec![(at(0), 21.5), (at(1), -3.25), (at(2), 22.0)]
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_load_is_flushed_to_chunk_files_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = Strand::start(&data, &["--metrics-flush-interval", "1h"]).await;
    // 200 series of 3,000 samples 2 s apart, values that barely compress:
    // about 5 MB of sealed chunks, past the 4 MiB that asks for a flush.
    let (series, samples_each, step_ms) = (200, 3_000, 2_000);
    let first = now_ms() - samples_each * step_ms;
    for batch in 0..20 {
        let timeseries = (0..series / 20)
            .map(|n| {
                let instance = (batch * series / 20 + n).to_string();
                let samples: Vec<(i64, f64)> = (0..samples_each)
                    .map(|i| (first + i * step_ms, (i as f64 * 0.7 + n as f64).sin() * 1e9))
                    .collect();
                rw::series("heavy_load", &[("instance", &instance)], &samples)
            })
            .collect();
        rw::write_ok(&daemon, &rw::request(timeseries)).await;
    }
    let chunk_bytes = || {
        std::fs::read_dir(data.join("metrics/chunks"))
            .map(|files| {
                files
                    .filter_map(|file| file.ok()?.metadata().ok())
                    .map(|metadata| metadata.len())
                    .sum::<u64>()
            })
            .unwrap_or(0)
    };
    let flushed = eventually(Duration::from_secs(30), || async {
        (chunk_bytes() > 2 << 20).then_some(())
    })
    .await;
    assert!(
        flushed.is_some(),
        "{} bytes of chunk files with the interval an hour away",
        chunk_bytes()
    );
    // What went to the chunk files is read from there.
    let counted = prom::instant_value(&daemon, "sum(count_over_time(heavy_load[2h]))").await;
    assert_eq!(counted, Some((series * samples_each) as f64));
    daemon.stop().await;
}
