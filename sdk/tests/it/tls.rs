//! The SDK exports to a Strand serving mutual TLS with a test CA, over gRPC
//! and HTTP, configured only through OpenTelemetry's standard variables
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE`,
//! `..._CLIENT_KEY`).

use axum::Router;
use axum::routing::get;
use strand_sdk::{HttpServerLayer, Protocol};
use strand_testkit::pki::TestCa;
use strand_testkit::{ClientTls, DEADLINE, Strand, eventually, in_own_process};
use tower::ServiceExt;

use crate::sdk;

#[test]
fn exports_over_mutual_tls_configured_by_the_otel_variables() {
    // Its own process: it sets environment variables.
    in_own_process(|| async {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Strand test CA");
        let ca_path = ca.write(dir.path());
        let (cert, key) = ca.server("strand", 1).write(dir.path(), "server");
        let client = ca.client("order");
        let (client_cert, client_key) = client.write(dir.path(), "client");
        // SAFETY: no other thread reads the environment while this test
        // sets it, before anything is exported.
        unsafe {
            std::env::set_var("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca_path);
            std::env::set_var("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &client_cert);
            std::env::set_var("OTEL_EXPORTER_OTLP_CLIENT_KEY", &client_key);
        }
        let data = tempfile::tempdir().unwrap();
        let args = [
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            ca_path.to_str().unwrap(),
        ];
        let tls = ClientTls {
            ca_pem: ca.cert_pem.clone(),
            identity: Some(client),
        };
        let strand = Strand::start_tls(data.path(), &args, tls).await;

        for (service, protocol, endpoint) in [
            ("tls-sdk-grpc", Protocol::Grpc, strand.grpc_endpoint()),
            (
                "tls-sdk-http",
                Protocol::HttpProtobuf,
                strand.otlp_http_url(""),
            ),
        ] {
            let guard = sdk(service, &endpoint).protocol(protocol).build().unwrap();
            let app = Router::new()
                .route("/orders", get(|| async { "ok" }))
                .layer(HttpServerLayer::new(guard.telemetry()));
            let request = http::Request::get("/orders")
                .body(axum::body::Body::empty())
                .unwrap();
            assert_eq!(app.oneshot(request).await.unwrap().status(), 200);
            tokio::task::block_in_place(|| guard.flush())
                .unwrap_or_else(|e| panic!("{service}: export over TLS failed: {e}"));

            let path = format!("/api/traces?service={service}");
            let found = eventually(DEADLINE, || async {
                let (status, body) = strand.get_json(&path).await;
                (status == 200 && body["data"].as_array().is_some_and(|d| !d.is_empty()))
                    .then_some(())
            })
            .await;
            assert!(found.is_some(), "no trace of {service}");
        }
    });
}
