//! TLS on the daemon's listeners: rustls (ring provider) server
//! configurations loaded from PEM files, listeners that hand over only
//! connections whose handshake succeeded, and reloading of the files without
//! a restart.
//!
//! [`Tls::load`] reads the certificate chain, its key and the optional
//! client CA bundle (mutual TLS) into one rustls `ServerConfig` per ALPN set:
//! gRPC offers `h2`, the HTTP listeners `h2` and `http/1.1`. The pair is
//! swapped as a whole by [`Tls::reload_on_change`] on SIGHUP or, polled every
//! `--tls-reload-interval`, when a file's modification time, size or inode
//! changes, so every new connection gets
//! the current files while open connections keep theirs; files that do not
//! load leave the previous configuration in place.
//!
//! [`TlsListener`] accepts TCP connections and runs each handshake as its own
//! task under [`HANDSHAKE_TIMEOUT`], so a slow or silent client never holds
//! up the accept loop. It serves axum (`axum::serve::Listener`) and tonic
//! ([`TlsListener::into_incoming`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsSettings;
use crate::hangup::Hangups;
use crate::telemetry::SelfMetrics;

/// How long a client may take to complete its handshake before the
/// connection is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: no PEM certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: {source}")]
    ClientCa {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("certificate {cert} with key {key}: {source}")]
    CertifiedKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the TLS protocol versions: {0}")]
    Protocols(rustls::Error),
    #[error("{path}: {source}")]
    Root {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// Where a CA bundle for outgoing https is looked for after
/// `SSL_CERT_FILE`: Debian and Ubuntu, Fedora and RHEL, Alpine and macOS.
const CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The CA bundle outgoing https checks servers against when not told
/// otherwise: `SSL_CERT_FILE`, or the first of the system's bundles that
/// exists. `Err` lists where it looked.
pub fn system_ca_bundle() -> Result<PathBuf, String> {
    let candidates: Vec<String> = std::env::var("SSL_CERT_FILE")
        .ok()
        .into_iter()
        .chain(CA_BUNDLES.iter().map(|path| path.to_string()))
        .collect();
    candidates
        .iter()
        .find(|path| Path::new(path).is_file())
        .map(PathBuf::from)
        .ok_or_else(|| candidates.join(", "))
}

/// A TLS client configuration that trusts the CA certificates of the PEM
/// file `ca_file`, with the same provider and protocol versions as the
/// listeners.
pub fn client_config(ca_file: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca_file)? {
        roots.add(certificate).map_err(|source| TlsError::Root {
            path: ca_file.to_path_buf(),
            source,
        })?;
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::new(ring_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocols)?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Which protocols a listener offers in ALPN.
#[derive(Clone, Copy, Debug)]
pub enum Protocols {
    /// OTLP/gRPC: HTTP/2 only.
    Grpc,
    /// OTLP/HTTP and the API: HTTP/2 and HTTP/1.1.
    Http,
}

/// The server configurations of one load of the files.
struct ServerConfigs {
    grpc: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// The listeners' current TLS configuration, shared by every listener and
/// replaced as a whole on reload.
#[derive(Clone)]
pub struct Tls {
    settings: Arc<TlsSettings>,
    current: Arc<RwLock<Arc<ServerConfigs>>>,
    /// The files' fingerprint when they were loaded, taken before reading
    /// them: a change after that is noticed even when the watcher starts
    /// late.
    loaded: Vec<Option<(SystemTime, u64, u64)>>,
    self_metrics: SelfMetrics,
}

impl Tls {
    /// Loads the files `settings` name; an error names the file and what is
    /// wrong with it.
    pub fn load(settings: TlsSettings, self_metrics: SelfMetrics) -> Result<Tls, TlsError> {
        let loaded = settings.fingerprint();
        let configs = server_configs(&settings)?;
        Ok(Tls {
            settings: Arc::new(settings),
            current: Arc::new(RwLock::new(Arc::new(configs))),
            loaded,
            self_metrics,
        })
    }

    /// `listener` serving TLS with `protocols`; `name` labels its handshake
    /// failures in `/metrics` and the log.
    pub fn listener(
        &self,
        listener: TcpListener,
        protocols: Protocols,
        name: &'static str,
    ) -> TlsListener {
        TlsListener {
            tcp: listener,
            tls: self.clone(),
            protocols,
            name,
            handshakes: JoinSet::new(),
        }
    }

    /// Reloads the files on SIGHUP and whenever one of them changes, until
    /// `stop` resolves. Logs `TlsReloaded` or, keeping the previous
    /// configuration, `TlsReloadFailed`.
    pub async fn reload_on_change(self, stop: impl Future<Output = ()>) {
        let mut hangups = Hangups::listen("the TLS files");
        tokio::pin!(stop);
        let mut seen = self.loaded.clone();
        let mut poll = self.settings.reload_interval.map(|interval| {
            let mut poll = tokio::time::interval(interval);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll
        });
        let tick = async |poll: &mut Option<tokio::time::Interval>| match poll {
            Some(poll) => poll.tick().await,
            None => std::future::pending().await,
        };
        loop {
            let trigger = tokio::select! {
                _ = &mut stop => return,
                () = hangups.next() => "sighup",
                _ = tick(&mut poll) => {
                    if self.settings.fingerprint() == seen {
                        continue;
                    }
                    "file_changed"
                }
            };
            seen = self.settings.fingerprint();
            let tls = self.clone();
            let result = tokio::task::spawn_blocking(move || tls.reload()).await;
            match result {
                Ok(Ok(())) => {
                    self.self_metrics
                        .tls_reloads
                        .with_label_values(&["success"])
                        .inc();
                    tracing::info!(trigger, cert = %self.settings.cert.display(), "TlsReloaded");
                }
                Ok(Err(error)) => {
                    self.self_metrics
                        .tls_reloads
                        .with_label_values(&["failure"])
                        .inc();
                    tracing::error!(trigger, %error, "TlsReloadFailed: serving the previous certificate");
                }
                Err(error) => tracing::error!(%error, "TlsReloadFailed: the reload task failed"),
            }
        }
    }

    /// Loads the files again and, if they load, makes them the configuration
    /// of every new connection.
    fn reload(&self) -> Result<(), TlsError> {
        let configs = Arc::new(server_configs(&self.settings)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = configs;
        Ok(())
    }

    fn acceptor(&self, protocols: Protocols) -> TlsAcceptor {
        let configs = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TlsAcceptor::from(match protocols {
            Protocols::Grpc => configs.grpc.clone(),
            Protocols::Http => configs.http.clone(),
        })
    }
}

impl TlsSettings {
    /// What identifies the files' current contents without reading them.
    fn fingerprint(&self) -> Vec<Option<(SystemTime, u64, u64)>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|path| {
                let metadata = std::fs::metadata(path).ok()?;
                Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
            })
            .collect()
    }
}

fn server_configs(files: &TlsSettings) -> Result<ServerConfigs, TlsError> {
    let chain = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Pem {
        path: files.key.clone(),
        source,
    })?;
    let provider = Arc::new(ring_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certificates(path)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut http =
        builder
            .with_single_cert(chain, key)
            .map_err(|source| TlsError::CertifiedKey {
                cert: files.cert.clone(),
                key: files.key.clone(),
                source,
            })?;
    let mut grpc = http.clone();
    grpc.alpn_protocols = vec![b"h2".to_vec()];
    http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerConfigs {
        grpc: Arc::new(grpc),
        http: Arc::new(http),
    })
}

/// rustls's ring provider. rustls 0.23.48 deprecates it for lacking
/// post-quantum key exchange, which only its aws-lc-rs provider has; that one
/// needs CMake and a C toolchain to build, so Strand stays on ring and its
/// classical (X25519, P-256, P-384) key exchange.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// Every certificate in the PEM file at `path` (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}

/// A TCP listener that yields connections once their TLS handshake is done.
/// Handshakes run as tasks of their own, so accepting never waits for one.
pub struct TlsListener {
    tcp: TcpListener,
    tls: Tls,
    protocols: Protocols,
    name: &'static str,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    /// The next connection whose handshake succeeded. Cancel-safe: a
    /// handshake in progress stays in the set.
    async fn next_connection(&mut self) -> (TlsStream<TcpStream>, SocketAddr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => match accepted {
                    Ok((stream, peer)) => self.start_handshake(stream, peer),
                    Err(error) => accept_failed(error).await,
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(connection)) = done {
                        return connection;
                    }
                }
            }
        }
    }

    fn start_handshake(&mut self, stream: TcpStream, peer: SocketAddr) {
        let acceptor = self.tls.acceptor(self.protocols);
        let failures = self
            .tls
            .self_metrics
            .tls_handshake_failures
            .with_label_values(&[self.name]);
        let listener = self.name;
        self.handshakes.spawn(async move {
            let error = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                Ok(Ok(stream)) => return Some((stream, peer)),
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no handshake within {HANDSHAKE_TIMEOUT:?}"),
            };
            failures.inc();
            tracing::debug!(listener, %peer, error, "TlsHandshakeFailed");
            None
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        self.next_connection().await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Waits out a failed `accept`: a connection reset before it was accepted
/// is nothing; anything else (out of file descriptors) is logged and retried
/// after a second instead of spinning.
async fn accept_failed(error: io::Error) {
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "TlsAcceptFailed: retrying in 1s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `localhost` and its key, as PEM.
    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write_files(dir: &Path, cert: &str, key: &str) -> TlsSettings {
        std::fs::write(dir.join("cert.pem"), cert).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        TlsSettings {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
            reload_interval: None,
        }
    }

    #[test]
    fn loads_a_certificate_and_offers_alpn_per_listener() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let tls = Tls::load(write_files(dir.path(), &cert, &key), SelfMetrics::new()).unwrap();
        let configs = tls.current.read().unwrap().clone();
        assert_eq!(configs.grpc.alpn_protocols, [b"h2".to_vec()]);
        assert_eq!(
            configs.http.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn bad_files_are_named_and_keep_the_loaded_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let files = write_files(dir.path(), &cert, &key);
        let tls = Tls::load(files.clone(), SelfMetrics::new()).unwrap();
        let loaded = tls.current.read().unwrap().clone();

        let (_, other_key) = self_signed();
        for (cert, key, expected) in [
            ("not pem", key.as_str(), "no PEM certificate"),
            (cert.as_str(), "", "key.pem"),
            (cert.as_str(), other_key.as_str(), "with key"),
        ] {
            write_files(dir.path(), cert, key);
            let error = tls.reload().unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(Arc::ptr_eq(&loaded, &tls.current.read().unwrap()));
        }

        let mut with_ca = files.clone();
        with_ca.client_ca = Some(dir.path().join("missing-ca.pem"));
        let error = Tls::load(with_ca, SelfMetrics::new())
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("missing-ca.pem"), "{error}");
    }

    #[test]
    fn fingerprint_changes_with_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed();
        let files = write_files(dir.path(), &cert, &key);
        let before = files.fingerprint();
        assert_eq!(before, files.fingerprint());
        std::fs::File::options()
            .write(true)
            .open(&files.key)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert_ne!(before, files.fingerprint());
    }
}
