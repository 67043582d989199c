//! TLS for the OTLP exporters, from OpenTelemetry's standard variables:
//! `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CERTIFICATE` (the CA bundle to trust),
//! `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CLIENT_CERTIFICATE` and
//! `..._CLIENT_KEY` (the certificate presented for mutual TLS).
//! opentelemetry-otlp 0.33 reads none of them; it only offers the TLS
//! configuration of its gRPC channel and a pluggable HTTP client.

use std::sync::Arc;
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
    /// certificate. It is the reqwest opentelemetry-http implements its
    /// client trait for, given a rustls configuration of our own (ring
    /// provider). Built on a thread of its own, as opentelemetry-otlp builds
    /// its default one: a blocking client made on an async worker panics.
    pub(crate) fn blocking_client(
        &self,
        timeout: Duration,
    ) -> Result<otlp_reqwest::blocking::Client> {
        let builder = otlp_reqwest::blocking::Client::builder()
            .timeout(timeout)
            .tls_backend_preconfigured(self.rustls_config()?);
        std::thread::spawn(move || builder.build())
            .join()
            .map_err(|_| Error::Config("building the OTLP HTTP client panicked".into()))?
            .map_err(|e| Error::Config(format!("the OTLP HTTP client: {e}")))
    }

    fn rustls_config(&self) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let invalid = |var: &str, e: &dyn std::fmt::Display| Error::Config(format!("{var}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca_pem {
            for certificate in CertificateDer::pem_slice_iter(ca) {
                let certificate =
                    certificate.map_err(|e| invalid("OTEL_EXPORTER_OTLP_CERTIFICATE", &e))?;
                roots
                    .add(certificate)
                    .map_err(|e| invalid("OTEL_EXPORTER_OTLP_CERTIFICATE", &e))?;
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", &e))?
            .with_root_certificates(roots);
        let Some((cert, key)) = &self.identity else {
            return Ok(builder.with_no_client_auth());
        };
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| invalid("OTEL_EXPORTER_OTLP_CLIENT_KEY", &e))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &e))
    }
}

/// rustls's ring provider, as tonic's `tls-ring` uses for the gRPC exporter.
/// rustls 0.23.48 deprecates it for lacking post-quantum key exchange, which
/// only the aws-lc-rs provider has (and that needs CMake and a C toolchain).
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
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
