//! Bearer tokens with scopes, checked on every listener.
//!
//! A token grants one scope: `ingest` (OTLP, remote write, `_bulk`), `read`
//! (query APIs, the UI's data, `/metrics` unless it is public) or `admin`
//! (dashboard changes and every other scope). Tokens come from the settings
//! (`--ingest-token`, `--read-token`, `--admin-token`, several each so they
//! can be rotated) and from `--token-file`, which is read again when it
//! changes or on SIGHUP — a Kubernetes Secret mounted as a file rotates
//! without a restart.
//!
//! As soon as one token or a token file is configured, every guarded
//! endpoint needs a token; with none, Strand is open (and says so loudly
//! when it listens beyond loopback). Only digests of the tokens are kept,
//! and a presented token is compared with every one of them in constant
//! time, so neither the answer's timing nor a memory dump gives a token
//! away.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::config::AuthSettings;
use crate::hangup::Hangups;
use crate::telemetry::SelfMetrics;

/// How often the token file's modification time is looked at.
const TOKEN_FILE_POLL: Duration = Duration::from_secs(2);

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Writing telemetry: OTLP, Prometheus remote write, `_bulk`.
    Ingest,
    /// Querying: the Jaeger, log and Prometheus APIs, dashboards, `/metrics`.
    Read,
    /// Changing what is not telemetry (dashboards); implies every scope.
    Admin,
}

impl Scope {
    const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.name() == name)
    }

    /// Whether a token of this scope may do what `needed` guards.
    fn grants(self, needed: Scope) -> bool {
        self == needed || self == Scope::Admin
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Denied {
    #[error(
        "this endpoint needs a token with the `{0}` scope: send `Authorization: Bearer <token>`"
    )]
    Missing(Scope),
    #[error("the token is not valid for this Strand")]
    Invalid,
    #[error("the token lacks the `{0}` scope this request needs")]
    WrongScope(Scope),
}

impl Denied {
    fn reason(&self) -> &'static str {
        match self {
            Denied::Missing(_) => "missing",
            Denied::Invalid => "invalid",
            Denied::WrongScope(_) => "wrong_scope",
        }
    }
}

/// Why tokens could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path}, line {line}: {problem}")]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("a {scope} token {problem}")]
    Token { scope: Scope, problem: &'static str },
}

/// The tokens in force: a digest and the scope it grants, for each.
#[derive(Default)]
struct TokenSet {
    digests: Vec<([u8; 32], Scope)>,
}

impl TokenSet {
    fn add(&mut self, scope: Scope, token: &str) -> Result<(), TokenError> {
        let problem = if token.is_empty() {
            Some("is empty")
        } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
            Some("must be printable ASCII without spaces, as an HTTP header carries it")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(TokenError::Token { scope, problem });
        }
        if token.len() < 16 {
            tracing::warn!(%scope, "ShortToken: a token shorter than 16 characters is easy to guess");
        }
        self.digests.push((Sha256::digest(token).into(), scope));
        Ok(())
    }

    /// Reads a token file: one `<scope> <token>` per line, `#` comments.
    fn add_file(&mut self, path: &Path) -> Result<(), TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |problem: String| TokenError::Line {
                path: path.to_owned(),
                line: number + 1,
                problem,
            };
            let (scope, token) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| problem("expected `<scope> <token>`".into()))?;
            let scope = Scope::parse(scope).ok_or_else(|| {
                problem(format!(
                    "unknown scope {scope:?}; the scopes are ingest, read and admin"
                ))
            })?;
            self.add(scope, token.trim())
                .map_err(|error| problem(error.to_string()))?;
        }
        Ok(())
    }

    /// Compares `presented` with every token (all of them, whatever
    /// matches, so the time taken says nothing).
    fn check(&self, presented: &str, needed: Scope) -> Result<(), Denied> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut known = Choice::from(0);
        let mut granted = Choice::from(0);
        for (stored, scope) in &self.digests {
            let equal = stored.ct_eq(&digest);
            known |= equal;
            granted |= equal & Choice::from(u8::from(scope.grants(needed)));
        }
        if bool::from(granted) {
            Ok(())
        } else if bool::from(known) {
            Err(Denied::WrongScope(needed))
        } else {
            Err(Denied::Invalid)
        }
    }
}

/// The token check every listener shares; cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AuthSettings,
    /// `None`: no token configured, every request passes.
    tokens: RwLock<Option<Arc<TokenSet>>>,
    /// The token file's modification time and length when it was loaded,
    /// taken before reading it: a change after that is noticed even when
    /// the watcher starts late.
    loaded_file: Option<(SystemTime, u64)>,
    self_metrics: SelfMetrics,
}

impl Auth {
    /// The tokens of `settings`; fails on a bad token or token file, so a
    /// typo never starts an unprotected daemon.
    pub fn new(settings: &AuthSettings, self_metrics: &SelfMetrics) -> Result<Auth, TokenError> {
        let loaded_file = settings.token_file.as_deref().and_then(modified);
        let tokens = load(settings)?;
        Ok(Auth {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                tokens: RwLock::new(tokens),
                loaded_file,
                self_metrics: self_metrics.clone(),
            }),
        })
    }

    /// Whether requests need a token at all.
    pub fn enabled(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<TokenSet>> {
        self.inner
            .tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Checks an `Authorization` header value against `needed`.
    pub fn check(&self, authorization: Option<&HeaderValue>, needed: Scope) -> Result<(), Denied> {
        let Some(tokens) = self.current() else {
            return Ok(());
        };
        let result = match authorization.and_then(presented_token) {
            None => Err(Denied::Missing(needed)),
            Some(token) => tokens.check(&token, needed),
        };
        if let Err(denied) = &result {
            self.inner
                .self_metrics
                .auth_denied
                .with_label_values(&[needed.name(), denied.reason()])
                .inc();
            tracing::debug!(scope = %needed, reason = denied.reason(), "RequestDenied");
        }
        result
    }

    /// `router` with every route guarded: GET and HEAD requests need
    /// `reads`, every other method `writes`. Unknown paths stay 404.
    pub fn guard<S>(&self, router: Router<S>, reads: Scope, writes: Scope) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        router.route_layer(axum::middleware::from_fn_with_state(
            Guard {
                auth: self.clone(),
                reads,
                writes,
            },
            guard_http,
        ))
    }

    /// A tonic interceptor that lets through only requests with a token
    /// granting `needed`.
    pub fn grpc_interceptor(&self, needed: Scope) -> GrpcGuard {
        GrpcGuard {
            auth: self.clone(),
            needed,
        }
    }

    /// Reads the token file again whenever it changes, and on SIGHUP, until
    /// `stopped` resolves. A file that fails to load keeps the tokens in
    /// force and is reported.
    pub async fn watch_token_file(self, stopped: impl Future<Output = ()>) {
        let Some(path) = self.inner.settings.token_file.clone() else {
            return;
        };
        let mut hangups = Hangups::listen("the token file");
        let mut seen = self.inner.loaded_file;
        tokio::pin!(stopped);
        loop {
            let forced = tokio::select! {
                () = &mut stopped => return,
                () = hangups.next() => true,
                () = tokio::time::sleep(TOKEN_FILE_POLL) => false,
            };
            // Taken before the reload reads the file: a write during the
            // read is seen at the next look.
            let now = modified(&path);
            if forced || now != seen {
                seen = now;
                self.reload();
            }
        }
    }

    fn reload(&self) {
        let outcome = match load(&self.inner.settings) {
            Ok(tokens) => {
                let count = tokens.as_ref().map_or(0, |set| set.digests.len());
                *self
                    .inner
                    .tokens
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = tokens;
                tracing::info!(tokens = count, "TokensReloaded");
                "ok"
            }
            Err(error) => {
                tracing::error!(%error, "TokenReloadFailed: the previous tokens stay in force");
                "failed"
            }
        };
        self.inner
            .self_metrics
            .token_reloads
            .with_label_values(&[outcome])
            .inc();
    }
}

/// The settings' tokens and the token file's; `None` when none is
/// configured (a configured token file, even empty, turns checking on).
fn load(settings: &AuthSettings) -> Result<Option<Arc<TokenSet>>, TokenError> {
    let mut set = TokenSet::default();
    for (scope, tokens) in [
        (Scope::Ingest, &settings.ingest_tokens),
        (Scope::Read, &settings.read_tokens),
        (Scope::Admin, &settings.admin_tokens),
    ] {
        for token in tokens {
            set.add(scope, token.expose())?;
        }
    }
    if let Some(path) = &settings.token_file {
        set.add_file(path)?;
    } else if set.digests.is_empty() {
        return Ok(None);
    }
    Ok(Some(Arc::new(set)))
}

fn modified(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// The token in an `Authorization` value: `Bearer <token>`, or the password
/// of `Basic` credentials (the username when the password is empty) for
/// clients that only offer basic auth (Prometheus remote write, Beats and
/// other `_bulk` senders).
fn presented_token(value: &HeaderValue) -> Option<String> {
    let value = value.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        return Some(if password.is_empty() { user } else { password }.to_owned());
    }
    None
}

#[derive(Clone)]
struct Guard {
    auth: Auth,
    reads: Scope,
    writes: Scope,
}

async fn guard_http(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let needed = if [Method::GET, Method::HEAD].contains(request.method()) {
        guard.reads
    } else {
        guard.writes
    };
    match guard
        .auth
        .check(request.headers().get(header::AUTHORIZATION), needed)
    {
        Ok(()) => next.run(request).await,
        Err(denied) => refusal(&denied, has_body(request.headers())),
    }
}

/// 401 (no or unknown token, with a Bearer challenge) or 403 (wrong
/// scope), in the error shape of the Prometheus API, whose `error` field
/// the other APIs' clients read too. A refused body is never read, so a
/// request that had one closes its connection.
fn refusal(denied: &Denied, had_body: bool) -> Response {
    let status = match denied {
        Denied::WrongScope(_) => StatusCode::FORBIDDEN,
        Denied::Missing(_) | Denied::Invalid => StatusCode::UNAUTHORIZED,
    };
    let body = serde_json::json!({
        "status": "error",
        "errorType": if status == StatusCode::FORBIDDEN { "forbidden" } else { "unauthorized" },
        "error": denied.to_string(),
    });
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"strand\""),
        );
    }
    if had_body {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length != "0")
}

/// The gRPC side of [`Auth`]: reads the `authorization` metadata and
/// answers UNAUTHENTICATED or PERMISSION_DENIED.
#[derive(Clone)]
pub struct GrpcGuard {
    auth: Auth,
    needed: Scope,
}

impl tonic::service::Interceptor for GrpcGuard {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| HeaderValue::from_bytes(value.as_bytes()).ok());
        match self.auth.check(authorization.as_ref(), self.needed) {
            Ok(()) => Ok(request),
            Err(denied @ Denied::WrongScope(_)) => {
                Err(tonic::Status::permission_denied(denied.to_string()))
            }
            Err(denied) => Err(tonic::Status::unauthenticated(denied.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn settings(ingest: &[&str], read: &[&str], admin: &[&str]) -> AuthSettings {
        let secrets = |tokens: &[&str]| tokens.iter().map(|t| Secret::new(*t)).collect();
        AuthSettings {
            ingest_tokens: secrets(ingest),
            read_tokens: secrets(read),
            admin_tokens: secrets(admin),
            token_file: None,
            public_metrics: false,
        }
    }

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
    }

    #[test]
    fn no_token_configured_lets_everything_through() {
        let auth = Auth::new(&settings(&[], &[], &[]), &SelfMetrics::new()).unwrap();
        assert!(!auth.enabled());
        assert_eq!(auth.check(None, Scope::Admin), Ok(()));
    }

    #[test]
    fn each_scope_grants_itself_and_admin_grants_all() {
        let auth = Auth::new(
            &settings(
                &["ingest-token-0001"],
                &["read-token-000001", "read-token-000002"],
                &["admin-token-00001"],
            ),
            &SelfMetrics::new(),
        )
        .unwrap();
        let check = |token: &str, scope| auth.check(Some(&bearer(token)), scope);
        assert_eq!(check("ingest-token-0001", Scope::Ingest), Ok(()));
        assert_eq!(
            check("ingest-token-0001", Scope::Read),
            Err(Denied::WrongScope(Scope::Read))
        );
        assert_eq!(check("read-token-000002", Scope::Read), Ok(()));
        assert_eq!(
            check("read-token-000001", Scope::Admin),
            Err(Denied::WrongScope(Scope::Admin))
        );
        for scope in Scope::ALL {
            assert_eq!(check("admin-token-00001", scope), Ok(()));
        }
        assert_eq!(check("read-token-00000", Scope::Read), Err(Denied::Invalid));
        assert_eq!(
            auth.check(None, Scope::Ingest),
            Err(Denied::Missing(Scope::Ingest))
        );
    }

    #[test]
    fn basic_credentials_carry_the_token_as_password_or_username() {
        let encode = |text: &str| {
            HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(text)
            ))
            .unwrap()
        };
        assert_eq!(
            presented_token(&encode("prometheus:s3cret")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            presented_token(&encode("s3cret:")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            presented_token(&HeaderValue::from_static("bearer  tok ")).as_deref(),
            Some("tok")
        );
        assert_eq!(presented_token(&HeaderValue::from_static("Token x")), None);
        assert_eq!(presented_token(&HeaderValue::from_static("Basic !!")), None);
    }

    #[test]
    fn token_file_lines_are_checked_and_reported_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# rotated 2026-12\ningest  ingest-token-0001\n\nread read-token-000001\n",
        )
        .unwrap();
        let mut set = TokenSet::default();
        set.add_file(&path).unwrap();
        assert_eq!(set.check("read-token-000001", Scope::Read), Ok(()));
        std::fs::write(&path, "ingest ok-token-000000001\nwrite nope\n").unwrap();
        let error = TokenSet::default().add_file(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 2") && error.contains("unknown scope"),
            "{error}"
        );
        std::fs::write(&path, "read\n").unwrap();
        let error = TokenSet::default().add_file(&path).unwrap_err().to_string();
        assert!(error.contains("expected `<scope> <token>`"), "{error}");
    }

    #[test]
    fn an_empty_token_file_still_requires_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "# nobody yet\n").unwrap();
        let mut settings = settings(&[], &[], &[]);
        settings.token_file = Some(path);
        let auth = Auth::new(&settings, &SelfMetrics::new()).unwrap();
        assert!(auth.enabled());
        assert_eq!(
            auth.check(Some(&bearer("anything")), Scope::Read),
            Err(Denied::Invalid)
        );
    }

    #[test]
    fn unprintable_tokens_are_refused() {
        let error = Auth::new(&settings(&["has space"], &[], &[]), &SelfMetrics::new())
            .err()
            .unwrap();
        assert!(error.to_string().contains("printable ASCII"), "{error}");
    }
}
