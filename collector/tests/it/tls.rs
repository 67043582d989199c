//! TLS on every listener: real OpenTelemetry exporters (gRPC and HTTP)
//! trusting a test CA send to a TLS daemon and the traces are queryable over
//! https; plain-text and untrusting clients are refused and counted; mutual
//! TLS refuses clients without a certificate from the configured CA on every
//! listener; the certificate is reloaded on SIGHUP and on file changes, and a
//! broken replacement keeps the old one serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_sdk::trace::SdkTracerProvider;
use strand_testkit::pki::{Issued, TestCa};
use strand_testkit::{ClientTls, DEADLINE, Strand, eventually};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::support::STRAND_BINARY;
use crate::support::shop_fixture::flush_and_shut_down;

/// A CA, the daemon's certificate from it, written to a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    /// The certificate the daemon starts with.
    first: Issued,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Strand test CA");
        let first = ca.server("strand-1", 1);
        let (cert, key) = first.write(dir.path(), "server");
        Pki {
            dir,
            ca,
            first,
            cert,
            key,
        }
    }

    /// `--tls-cert` and `--tls-key`, plus `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "--tls-cert",
            self.cert.to_str().unwrap(),
            "--tls-key",
            self.key.to_str().unwrap(),
        ];
        args.extend(extra);
        args
    }

    fn trusting(&self, identity: Option<Issued>) -> ClientTls {
        ClientTls {
            ca_pem: self.ca.cert_pem.clone(),
            identity,
        }
    }
}

/// The daemon's three listeners with their names.
fn listeners(daemon: &Strand) -> [(&'static str, SocketAddr); 3] {
    [
        ("otlp_grpc", daemon.otlp_grpc),
        ("otlp_http", daemon.otlp_http),
        ("http", daemon.http),
    ]
}

/// A tracer provider exporting one service's spans over OTLP/gRPC or
/// OTLP/HTTP, trusting `tls`'s CA.
fn provider(daemon: &Strand, tls: &ClientTls, service: &str, grpc: bool) -> SdkTracerProvider {
    let exporter = if grpc {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(daemon.grpc_endpoint())
            .with_tls_config(
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem)),
            )
            .build()
    } else {
        let ca = reqwest::Certificate::from_pem(tls.ca_pem.as_bytes()).unwrap();
        // A blocking client may not be built (or dropped) on an async worker.
        let client = std::thread::spawn(move || {
            reqwest::blocking::Client::builder()
                .add_root_certificate(ca)
                .build()
                .unwrap()
        })
        .join()
        .unwrap();
        opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(daemon.otlp_http_url("/v1/traces"))
            .with_http_client(HttpsClient(client))
            .build()
    }
    .expect("exporter builds");
    crate::support::tracer_provider(exporter, service)
}

/// The OTLP/HTTP exporter's client with the test CA: opentelemetry-http
/// implements its client trait only for reqwest 0.13, whose rustls would need
/// aws-lc-rs; this is the workspace's reqwest (rustls with ring), as
/// strand-sdk uses it.
#[derive(Debug)]
struct HttpsClient(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpsClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let request = reqwest::blocking::Request::try_from(request.map(|body| body.to_vec()))?;
        let response = self.0.execute(request)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut answer = opentelemetry_http::Response::new(response.bytes()?);
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// One OTLP/gRPC export over TLS configured by `tls`; the error says why
/// the connection or the call failed.
async fn grpc_export(daemon: &Strand, tls: ClientTlsConfig) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(daemon.grpc_endpoint())
        .unwrap()
        .tls_config(tls)
        .map_err(|e| format!("{e:?}"))?
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    TraceServiceClient::new(channel)
        .export(ExportTraceServiceRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("export: {e:?}"))
}

/// The status of GET `path` over https on `address` with `client`.
async fn https_get(
    client: &reqwest::Client,
    address: SocketAddr,
    path: &str,
) -> reqwest::Result<u16> {
    let response = client
        .get(format!("https://{address}{path}"))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// The certificate the HTTP listener presents to a new connection.
async fn served_certificate(daemon: &Strand, tls: &ClientTls) -> Vec<u8> {
    let client = tls.client_builder().tls_info(true).build().unwrap();
    let response = client.get(daemon.url("/readyz")).send().await.unwrap();
    response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the peer certificate")
        .to_vec()
}

/// The value of one sample line of the daemon's `/metrics`, 0 if absent.
async fn self_metric(daemon: &Strand, client: &reqwest::Client, series: &str) -> f64 {
    let text = client
        .get(daemon.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn otlp_exporters_send_over_tls_and_traces_are_queryable_over_https() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = pki.trusting(None);
    let daemon = Strand::start_tls(data.path(), &pki.args(&[]), tls.clone()).await;
    assert!(daemon.url("/").starts_with("https://"));

    let providers: Vec<_> = [("tls-over-grpc", true), ("tls-over-http", false)]
        .into_iter()
        .map(|(service, grpc)| {
            let provider = provider(&daemon, &tls, service, grpc);
            provider.tracer("tls-test").in_span("checkout", |_| {});
            provider
        })
        .collect();
    flush_and_shut_down(providers).await;

    for service in ["tls-over-grpc", "tls-over-http"] {
        let found = eventually(DEADLINE, || async {
            let (status, body) = daemon
                .get_json_query("/api/traces", &[("service", service)])
                .await;
            (status == 200 && body["data"].as_array().is_some_and(|d| !d.is_empty())).then_some(())
        })
        .await;
        assert!(found.is_some(), "no trace of {service} over https");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn plain_text_and_untrusting_clients_are_refused_and_counted() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = pki.trusting(None);
    let daemon = Strand::start_tls(data.path(), &pki.args(&[]), tls.clone()).await;
    let trusting = tls.client_builder().build().unwrap();

    // A client that connects and says nothing holds no listener up.
    let _silent = tokio::net::TcpStream::connect(daemon.http).await.unwrap();
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        https_get(&trusting, daemon.http, "/readyz"),
    )
    .await;
    assert!(
        matches!(answered, Ok(Ok(200))),
        "a silent client blocked the listener: {answered:?}"
    );

    let plain = reqwest::Client::new();
    let stranger = ClientTls {
        ca_pem: TestCa::new("Another CA").cert_pem,
        identity: None,
    }
    .client_builder()
    .build()
    .unwrap();
    for (name, address) in listeners(&daemon) {
        let answer = plain.get(format!("http://{address}/")).send().await;
        assert!(answer.is_err(), "{name} answered plain text: {answer:?}");
        let answer = https_get(&stranger, address, "/").await;
        assert!(
            answer.is_err(),
            "{name}: a client not trusting the CA got {answer:?}"
        );
    }
    let ca_only = |ca: &str| ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    let refused = grpc_export(&daemon, ca_only(&TestCa::new("Another CA").cert_pem)).await;
    assert!(refused.is_err(), "gRPC without trust: {refused:?}");
    grpc_export(&daemon, ca_only(&tls.ca_pem))
        .await
        .expect("gRPC trusting the CA");

    for (name, _) in listeners(&daemon) {
        let series = format!("strand_tls_handshake_failures_total{{listener=\"{name}\"}}");
        let counted = eventually(DEADLINE, || async {
            (self_metric(&daemon, &trusting, &series).await >= 2.0).then_some(())
        })
        .await;
        assert!(counted.is_some(), "{series} did not count both refusals");
    }
    daemon.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca_on_every_listener() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let client_ca = pki.ca.write(pki.dir.path());
    let client = pki.ca.client("harness");
    let tls = pki.trusting(Some(client.clone()));
    let daemon = Strand::start_tls(
        data.path(),
        &pki.args(&["--tls-client-ca", client_ca.to_str().unwrap()]),
        tls.clone(),
    )
    .await;

    let anonymous = pki.trusting(None).client_builder().build().unwrap();
    let impostor = pki.trusting(Some(TestCa::new("Another CA").client("impostor")));
    let impostor_client = impostor.client_builder().build().unwrap();
    let member = tls.client_builder().build().unwrap();
    for (name, address) in [("otlp_http", daemon.otlp_http), ("http", daemon.http)] {
        let path = if name == "http" {
            "/readyz"
        } else {
            "/v1/traces"
        };
        let answer = https_get(&anonymous, address, path).await;
        assert!(answer.is_err(), "{name} without a certificate: {answer:?}");
        let answer = https_get(&impostor_client, address, path).await;
        assert!(
            answer.is_err(),
            "{name} with a foreign certificate: {answer:?}"
        );
        let answer = https_get(&member, address, path).await;
        assert!(
            answer.is_ok(),
            "{name} with a certificate from the CA: {answer:?}"
        );
    }

    let grpc_tls = |identity: Option<&Issued>| {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        match identity {
            Some(issued) => config.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem)),
            None => config,
        }
    };
    let refused = grpc_export(&daemon, grpc_tls(None)).await;
    assert!(refused.is_err(), "gRPC without a certificate: {refused:?}");
    let refused = grpc_export(&daemon, grpc_tls(impostor.identity.as_ref())).await;
    assert!(
        refused.is_err(),
        "gRPC with a foreign certificate: {refused:?}"
    );
    grpc_export(&daemon, grpc_tls(Some(&client)))
        .await
        .expect("gRPC with a certificate from the CA");
    daemon.stop().await;
}

/// Replaces the daemon's certificate and key files with `issued`.
fn replace(pki: &Pki, issued: &Issued) {
    std::fs::write(&pki.cert, &issued.cert_pem).unwrap();
    std::fs::write(&pki.key, &issued.key_pem).unwrap();
}

/// Waits until a new connection is served `expected`.
async fn wait_for_certificate(daemon: &Strand, tls: &ClientTls, expected: &Issued, why: &str) {
    let served = eventually(DEADLINE, || async {
        (served_certificate(daemon, tls).await == expected.cert_der).then_some(())
    })
    .await;
    assert!(served.is_some(), "{why}:\n{}", daemon.log());
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_broken_one_keeps_the_old() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = pki.trusting(None);
    // No polling: only SIGHUP reloads.
    let args = pki.args(&["--tls-reload-interval", "0s"]);
    let daemon = Strand::spawn_tls(STRAND_BINARY, data.path(), &args, tls.clone()).await;
    assert_eq!(served_certificate(&daemon, &tls).await, pki.first.cert_der);

    let second = pki.ca.server("strand-2", 2);
    replace(&pki, &second);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(
        served_certificate(&daemon, &tls).await,
        second.cert_der,
        "reloaded without SIGHUP or polling"
    );
    daemon.signal(libc::SIGHUP);
    wait_for_certificate(&daemon, &tls, &second, "SIGHUP did not reload").await;
    assert!(daemon.log().contains("TlsReloaded"), "{}", daemon.log());

    std::fs::write(&pki.cert, "not a certificate").unwrap();
    daemon.signal(libc::SIGHUP);
    let client = tls.client_builder().build().unwrap();
    let counted = eventually(DEADLINE, || async {
        (self_metric(
            &daemon,
            &client,
            "strand_tls_reloads_total{result=\"failure\"}",
        )
        .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert!(counted.is_some(), "{}", daemon.log());
    assert!(daemon.log().contains("TlsReloadFailed"), "{}", daemon.log());
    assert_eq!(served_certificate(&daemon, &tls).await, second.cert_der);
    daemon.stop().await;
}

#[tokio::test]
async fn changed_files_are_reloaded_without_a_signal() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let tls = pki.trusting(None);
    let args = pki.args(&["--tls-reload-interval", "1s"]);
    let daemon = Strand::start_tls(data.path(), &args, tls.clone()).await;

    let second = pki.ca.server("strand-2", 2);
    replace(&pki, &second);
    wait_for_certificate(
        &daemon,
        &tls,
        &second,
        "the changed files were not reloaded",
    )
    .await;
    daemon.stop().await;
}
