//! TLS for the OTLP exporters, from OpenTelemetry's standard variables:
//! `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CERTIFICATE` (the CA bundle to trust),
//! `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CLIENT_CERTIFICATE` and
//! `..._CLIENT_KEY` (the certificate presented for mutual TLS).
//! opentelemetry-otlp 0.33 reads none of them; it only offers the TLS
//! configuration of its gRPC channel and a pluggable HTTP client.

use std::time::Duration;

use crate::{Error, Result};

/// One signal's TLS settings, read from the files the variables name.
pub(crate) struct ExportTls {
    ca_pem: Option<Vec<u8>>,
    /// Client certificate (chain) and key, PEM.
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ExportTls {
    /// The settings of `signal` (`TRACES`, `LOGS`, `METRICS`): its own
    /// variables, then the general ones; `None` when none is set.
    pub(crate) fn from_env(signal: &str) -> Result<Option<ExportTls>> {
        let ca_pem = read_var(signal, "CERTIFICATE")?;
        let identity = match (
            read_var(signal, "CLIENT_CERTIFICATE")?,
            read_var(signal, "CLIENT_KEY")?,
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY go together"
                        .into(),
                ));
            }
        };
        if ca_pem.is_none() && identity.is_none() {
            return Ok(None);
        }
        Ok(Some(ExportTls { ca_pem, identity }))
    }

    /// The gRPC channel's TLS configuration.
    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            config = config.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }

    /// The HTTP exporter's client, trusting the CA and presenting the client
    /// certificate. Built on a thread of its own, as opentelemetry-otlp builds
    /// its default one: a blocking client made on an async worker panics.
    pub(crate) fn http_client(&self, timeout: Duration) -> Result<TlsHttpClient> {
        let mut builder = reqwest::blocking::Client::builder().timeout(timeout);
        if let Some(ca) = &self.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(ca)
                .map_err(|e| Error::Config(format!("OTEL_EXPORTER_OTLP_CERTIFICATE: {e}")))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some((cert, key)) = &self.identity {
            let identity = reqwest::Identity::from_pem(&[cert.as_slice(), key.as_slice()].concat())
                .map_err(|e| {
                    Error::Config(format!("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE: {e}"))
                })?;
            builder = builder.identity(identity);
        }
        std::thread::spawn(move || builder.build())
            .join()
            .map_err(|_| Error::Config("building the OTLP HTTP client panicked".into()))?
            .map(TlsHttpClient)
            .map_err(|e| Error::Config(format!("the OTLP HTTP client: {e}")))
    }
}

/// The OTLP/HTTP exporters' client when TLS is configured: this crate's
/// reqwest (0.12, rustls with ring). opentelemetry-http implements its client
/// trait only for reqwest 0.13, whose rustls needs aws-lc-rs or a process-wide
/// default provider. Exports run on the processors' own threads, so the
/// blocking call is what opentelemetry-otlp's default client does too.
#[derive(Debug)]
pub(crate) struct TlsHttpClient(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for TlsHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<opentelemetry_http::Bytes>,
    ) -> Result<http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let request = reqwest::blocking::Request::try_from(request.map(|body| body.to_vec()))?;
        let response = self.0.execute(request)?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut answer = http::Response::new(response.bytes()?);
        *answer.status_mut() = status;
        *answer.headers_mut() = headers;
        Ok(answer)
    }
}

/// The contents of the file `OTEL_EXPORTER_OTLP_<signal>_<name>`, else
/// `OTEL_EXPORTER_OTLP_<name>`, names.
fn read_var(signal: &str, name: &str) -> Result<Option<Vec<u8>>> {
    for var in [
        format!("OTEL_EXPORTER_OTLP_{signal}_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ] {
        if let Ok(path) = std::env::var(&var)
            && !path.trim().is_empty()
        {
            return std::fs::read(path.trim())
                .map(Some)
                .map_err(|e| Error::Config(format!("{var}={path:?}: {e}")));
        }
    }
    Ok(None)
}
