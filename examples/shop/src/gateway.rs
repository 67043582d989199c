//! The gateway: the shop's only public entry point.
//!
//! - `POST /api/login` checks a demo user's password and issues a JWT
//!   (HS256; claims `sub`, `aud` = `shop`, `iat`, `exp`).
//! - Every other `/api` route needs `Authorization: Bearer <jwt>`; a missing,
//!   forged, expired or wrong-audience token gets 401 with a JSON reason.
//! - Each client (its user when the token is good, else its IP) has a token
//!   bucket (`governor`); an empty bucket gets 429 with `Retry-After`.
//! - `GET /api/products`, `POST /api/orders`, `GET /api/orders/{id}` go to
//!   inventory and order with timeouts; idempotent calls are retried with
//!   backoff, and an upstream that is down gives 503 with a JSON body.
//!
//! Every answer carries `x-trace-id`, the trace the request started.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{self, Failure, with_retries};
use crate::error::{ApiError, ApiResult};
use crate::order::USER_HEADER;

/// The audience the gateway issues tokens for and accepts.
pub const AUDIENCE: &str = "shop";
/// The demo secret, for running the shop locally; set `SHOP_JWT_SECRET`
/// anywhere else.
pub const DEMO_SECRET: &str = "strand-shop-demo-secret";
/// Demo users and their passwords.
pub const DEMO_USERS: [(&str, &str); 3] = [
    ("alice", "alice-password"),
    ("bob", "bob-password"),
    ("carol", "carol-password"),
];

/// `shop gateway` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (HTTP)
    #[arg(long, env = "SHOP_GATEWAY_ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Base URL of the order service
    #[arg(long, env = "SHOP_ORDER_URL", default_value = "http://127.0.0.1:8081")]
    pub order_url: String,
    /// Base URL of the inventory service
    #[arg(
        long,
        env = "SHOP_INVENTORY_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub inventory_url: String,
    /// HS256 secret for signing and checking tokens
    #[arg(long, env = "SHOP_JWT_SECRET", default_value = DEMO_SECRET, hide_env_values = true)]
    pub jwt_secret: String,
    /// Lifetime of an issued token, in seconds
    #[arg(long, env = "SHOP_TOKEN_TTL_SECS", default_value_t = 900)]
    pub token_ttl_secs: u64,
    /// Sustained requests per second allowed per client
    #[arg(long, env = "SHOP_RATE_PER_SECOND", default_value_t = 20)]
    pub rate_per_second: u32,
    /// Requests a client may send at once above the sustained rate
    #[arg(long, env = "SHOP_RATE_BURST", default_value_t = 40)]
    pub burst: u32,
    /// Longest wait for one upstream call, in milliseconds
    #[arg(long, env = "SHOP_UPSTREAM_TIMEOUT_MS", default_value_t = 5000)]
    pub upstream_timeout_ms: u64,
    /// Attempts per idempotent upstream call
    #[arg(long, env = "SHOP_UPSTREAM_ATTEMPTS", default_value_t = 3)]
    pub upstream_attempts: u32,
}

/// The token's claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// Who the token is for (`shop`).
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

#[derive(Clone)]
struct AppState {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
    validation: Arc<Validation>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    http: strand_sdk::HttpClient,
    order_url: Arc<str>,
    inventory_url: Arc<str>,
    token_ttl: u64,
    attempts: u32,
}

/// Runs the gateway until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let guard = config::telemetry("gateway")?;
    let telemetry = guard.telemetry().clone();
    let (Some(rate), Some(burst)) = (
        NonZeroU32::new(args.rate_per_second),
        NonZeroU32::new(args.burst),
    ) else {
        anyhow::bail!("--rate-per-second and --burst must be positive");
    };
    let timeout = Duration::from_millis(args.upstream_timeout_ms);
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500).min(timeout))
        .build()?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "sub", "aud"]);
    validation.leeway = 0;
    let limiter = Arc::new(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    ));
    // Forget idle clients now and then so the table stays small.
    let sweeper = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                limiter.retain_recent();
            }
        })
    };
    let state = AppState {
        encoding: Arc::new(EncodingKey::from_secret(args.jwt_secret.as_bytes())),
        decoding: Arc::new(DecodingKey::from_secret(args.jwt_secret.as_bytes())),
        validation: Arc::new(validation),
        limiter,
        http: strand_sdk::HttpClient::new(http, &telemetry),
        order_url: args.order_url.trim_end_matches('/').into(),
        inventory_url: args.inventory_url.trim_end_matches('/').into(),
        token_ttl: args.token_ttl_secs,
        attempts: args.upstream_attempts,
    };
    let served = config::serve("gateway", args.listen, router(state, &telemetry)).await;
    sweeper.abort();
    served
}

fn router(state: AppState, telemetry: &strand_sdk::Telemetry) -> Router {
    let api = Router::new()
        .route("/api/login", post(login))
        .route("/api/products", get(products))
        .route("/api/orders", post(create_order))
        .route("/api/orders/{id}", get(get_order))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(strand_sdk::HttpServerLayer::new(telemetry));
    config::with_health(api.with_state(state), "gateway")
}

/// Who is calling: the verified user, if any.
#[derive(Clone, Debug)]
struct User(String);

/// Authentication and rate limiting for every `/api` route: finds the
/// client (user or IP), spends one token of its bucket, then (except for
/// login) insists on a valid JWT. Adds `x-trace-id` to every answer.
async fn guard(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let verified = bearer(&request).map(|token| state.verify(token));
    let client = match &verified {
        Some(Ok(claims)) => format!("user:{}", claims.sub),
        _ => format!("ip:{}", client_ip(&request, peer.ip())),
    };
    let mut response = if let Err(not_until) = state.limiter.check_key(&client) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        tracing::warn!(
            client,
            retry_after_ms = wait.as_millis() as u64,
            "GatewayRateLimited"
        );
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests from {client}; slow down"),
        )
        .retry_after(wait)
        .into_response()
    } else if request.uri().path() == "/api/login" {
        next.run(request).await
    } else {
        match verified {
            Some(Ok(claims)) => {
                request.extensions_mut().insert(User(claims.sub));
                next.run(request).await
            }
            Some(Err(error)) => error.into_response(),
            None => ApiError::unauthorized(
                "missing_token",
                "send Authorization: Bearer <token> (get one from POST /api/login)",
            )
            .into_response(),
        }
    };
    if let Some(trace_id) = config::current_trace_id()
        && let Ok(value) = HeaderValue::from_str(&trace_id)
    {
        response.headers_mut().insert("x-trace-id", value);
    }
    response
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}

/// The client's address: the first `X-Forwarded-For` hop if a proxy set
/// it, else the peer.
fn client_ip(request: &Request, peer: IpAddr) -> IpAddr {
    request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer)
}

impl AppState {
    fn verify(&self, token: &str) -> ApiResult<Claims> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(error) => {
                let (code, message) = match error.kind() {
                    ErrorKind::ExpiredSignature => {
                        ("token_expired", "the token has expired; log in again")
                    }
                    ErrorKind::InvalidSignature => (
                        "token_invalid_signature",
                        "the token's signature does not verify",
                    ),
                    ErrorKind::InvalidAudience => (
                        "token_invalid_audience",
                        "the token is not meant for this shop",
                    ),
                    ErrorKind::InvalidAlgorithm => (
                        "token_invalid_algorithm",
                        "the token must be signed with HS256",
                    ),
                    ErrorKind::MissingRequiredClaim(_) => {
                        ("token_missing_claim", "the token lacks sub, aud or exp")
                    }
                    _ => ("token_invalid", "the token is malformed"),
                };
                tracing::warn!(reason = code, %error, "GatewayTokenRejected");
                Err(ApiError::unauthorized(code, message))
            }
        }
    }
}

#[derive(Deserialize)]
struct Login {
    user: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    Json(login): Json<Login>,
) -> ApiResult<Json<serde_json::Value>> {
    let known = DEMO_USERS
        .iter()
        .any(|(user, password)| *user == login.user && *password == login.password);
    if !known {
        tracing::warn!(user = login.user, "GatewayLoginRefused");
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "unknown user or wrong password",
        ));
    }
    let now = config::now_millis() / 1000;
    let claims = Claims {
        sub: login.user.clone(),
        aud: AUDIENCE.into(),
        iat: now,
        exp: now + state.token_ttl,
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &state.encoding)
        .map_err(|e| ApiError::internal(format!("signing the token: {e}")))?;
    tracing::info!(
        user = login.user,
        expires_in = state.token_ttl,
        "GatewayLoggedIn"
    );
    Ok(Json(serde_json::json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": state.token_ttl,
    })))
}

async fn products(State(state): State<AppState>) -> ApiResult<Response> {
    let url = format!("{}/products", state.inventory_url);
    state
        .forward("inventory", || state.http.get(&url), true)
        .await
}

async fn create_order(
    State(state): State<AppState>,
    axum::Extension(User(user)): axum::Extension<User>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let url = format!("{}/orders", state.order_url);
    tracing::info!(user, "GatewayOrderForwarded");
    // Not idempotent: retried only when the request never left (see forward).
    state
        .forward(
            "order",
            || {
                state
                    .http
                    .request(http::Method::POST, &url)
                    .header(USER_HEADER, &user)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            },
            false,
        )
        .await
}

async fn get_order(
    State(state): State<AppState>,
    axum::Extension(User(user)): axum::Extension<User>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::bad_request("malformed order id"));
    }
    let url = format!("{}/orders/{id}", state.order_url);
    state
        .forward(
            "order",
            || state.http.get(&url).header(USER_HEADER, &user),
            true,
        )
        .await
}

impl AppState {
    /// Sends the request `build` makes to `upstream` and answers with the
    /// upstream's status and JSON body. Connection failures are retried
    /// (the request never arrived); timeouts and 502/503/504 only when
    /// `idempotent`. Whatever is still failing becomes 503.
    async fn forward(
        &self,
        upstream: &'static str,
        build: impl Fn() -> reqwest::RequestBuilder,
        idempotent: bool,
    ) -> ApiResult<Response> {
        let what = format!("the {upstream} service");
        let response = with_retries(
            upstream,
            self.attempts,
            Duration::from_millis(100),
            || async {
                match self.http.send(build()).await {
                    Ok(response)
                        if idempotent && matches!(response.status().as_u16(), 502..=504) =>
                    {
                        Err(Failure::Transient(Upstream::Answer(response)))
                    }
                    Ok(response) => Ok(response),
                    Err(strand_sdk::Error::Http(error))
                        if error.is_connect() || (idempotent && error.is_timeout()) =>
                    {
                        Err(Failure::Transient(Upstream::Down(ApiError::unavailable(
                            &what, error,
                        ))))
                    }
                    Err(error) => Err(Failure::Permanent(Upstream::Down(ApiError::unavailable(
                        &what, error,
                    )))),
                }
            },
        )
        .await;
        let response = match response {
            Ok(response) | Err(Upstream::Answer(response)) => response,
            Err(Upstream::Down(error)) => return Err(error),
        };
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::unavailable(&what, format!("reading the answer: {e}")))?;
        let mut answer = (status, body).into_response();
        answer.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::SERVICE_UNAVAILABLE {
            answer
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
        }
        Ok(answer)
    }
}

/// A failed upstream call: an answer worth retrying, or no answer at all.
enum Upstream {
    Answer(reqwest::Response),
    Down(ApiError),
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Answer(response) => write!(f, "answered {}", response.status()),
            Upstream::Down(error) => write!(f, "{}", error.message),
        }
    }
}
