//! The order service. `POST /orders` validates the order, reserves its
//! stock at inventory (REST), charges it at payment (gRPC), and stores the
//! order together with an `OrderCreated` event in an *outbox* tree of its own
//! sled database, in one transaction. A background task delivers the outbox
//! to inventory over HTTP, retrying with backoff until inventory takes it,
//! so an order is never confirmed without its event eventually arriving.
//!
//! The event carries the request's trace context in its headers (written by
//! `Telemetry::send_message` when the order is stored); the consumer's span
//! links back to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use tonic::Code;

use crate::config::{self, CommonArgs, Failure, blocking, with_retries};
use crate::error::{ApiError, ApiResult};
use crate::inventory::Item;
use crate::payment::{ChargeRequest, PaymentClient};

/// The header the gateway names the signed-in user in.
pub const USER_HEADER: &str = "x-shop-user";
/// Most lines one order may have.
const MAX_LINES: usize = 20;
/// Most items of one product per order.
const MAX_QUANTITY: u32 = 100;

/// `shop order` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (HTTP)
    #[arg(long, env = "SHOP_ORDER_ADDR", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Base URL of the inventory service
    #[arg(
        long,
        env = "SHOP_INVENTORY_URL",
        default_value = "http://127.0.0.1:8082"
    )]
    pub inventory_url: String,
    /// URL of the payment service (gRPC)
    #[arg(
        long,
        env = "SHOP_PAYMENT_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub payment_url: String,
    /// Longest wait for one upstream call, in milliseconds
    #[arg(long, env = "SHOP_UPSTREAM_TIMEOUT_MS", default_value_t = 2000)]
    pub upstream_timeout_ms: u64,
    /// Attempts per upstream call (transient failures only)
    #[arg(long, env = "SHOP_UPSTREAM_ATTEMPTS", default_value_t = 3)]
    pub upstream_attempts: u32,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `POST /orders`.
#[derive(Debug, Deserialize)]
struct OrderRequest {
    items: Vec<Item>,
}

/// An order as stored and returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: String,
    user: String,
    items: Vec<Item>,
    total_cents: u64,
    payment_id: String,
    status: String,
    created_ms: u64,
}

/// What inventory answers to a reservation.
#[derive(Debug, Deserialize)]
struct Reservation {
    total_cents: u64,
}

/// An `OrderCreated` event waiting in the outbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutboxEntry {
    /// The event (JSON) as delivered.
    payload: serde_json::Value,
    /// Message headers: the trace context of the request that made it.
    headers: HashMap<String, String>,
    attempts: u32,
    next_attempt_ms: u64,
}

#[derive(Clone)]
struct AppState {
    orders: sled::Tree,
    outbox: sled::Tree,
    inventory: strand_sdk::HttpClient,
    inventory_url: Arc<str>,
    payment: PaymentClient,
    telemetry: strand_sdk::Telemetry,
    attempts: u32,
    wake_outbox: Arc<tokio::sync::Notify>,
}

/// Runs the order service (and its outbox delivery) until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let guard = config::telemetry("order")?;
    let telemetry = guard.telemetry().clone();
    let db = args.common.open_db("order")?;
    let timeout = Duration::from_millis(args.upstream_timeout_ms);
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500).min(timeout))
        .build()?;
    let state = AppState {
        orders: db.open_tree("orders")?,
        outbox: db.open_tree("outbox")?,
        inventory: strand_sdk::HttpClient::new(http.clone(), &telemetry),
        inventory_url: args.inventory_url.trim_end_matches('/').into(),
        payment: PaymentClient::new(&args.payment_url, timeout, &telemetry)?,
        telemetry: telemetry.clone(),
        attempts: args.upstream_attempts,
        wake_outbox: Arc::new(tokio::sync::Notify::new()),
    };
    let delivery = tokio::spawn(deliver_outbox(state.clone(), http));
    let served = config::serve("order", args.listen, router(state)).await;
    delivery.abort();
    db.flush_async().await?;
    served
}

fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .layer(strand_sdk::HttpServerLayer::new(&state.telemetry));
    config::with_health(api.with_state(state), "order")
}

fn user_of(headers: &HeaderMap) -> ApiResult<String> {
    headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request(format!("missing {USER_HEADER} header")))
}

fn validate(request: &OrderRequest) -> ApiResult<()> {
    if request.items.is_empty() {
        return Err(ApiError::bad_request("an order needs at least one item"));
    }
    if request.items.len() > MAX_LINES {
        return Err(ApiError::bad_request(format!(
            "an order has at most {MAX_LINES} lines"
        )));
    }
    for item in &request.items {
        if item.sku.is_empty() || item.sku.len() > 64 {
            return Err(ApiError::bad_request("every item needs a sku"));
        }
        if item.quantity == 0 || item.quantity > MAX_QUANTITY {
            return Err(ApiError::bad_request(format!(
                "quantity of {} must be 1..={MAX_QUANTITY}",
                item.sku
            )));
        }
    }
    Ok(())
}

async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<OrderRequest>,
) -> ApiResult<(StatusCode, Json<Order>)> {
    let user = user_of(&headers)?;
    validate(&request)?;
    let id = format!("ord-{:016x}", rand::random::<u64>());
    tracing::info!(
        order_id = id,
        user,
        lines = request.items.len(),
        "OrderReceived"
    );

    let reservation = state.reserve(&id, &request.items).await?;
    let charge = ChargeRequest {
        order_id: id.clone(),
        user: user.clone(),
        amount_cents: reservation.total_cents,
    };
    let payment = match state.payment.charge(charge).await {
        Ok(reply) => reply,
        Err(status) => {
            state.release(&id).await;
            return Err(match status.code() {
                Code::FailedPrecondition | Code::InvalidArgument => {
                    tracing::warn!(
                        order_id = id,
                        user,
                        amount_cents = reservation.total_cents,
                        reason = status.message(),
                        "OrderPaymentDeclined"
                    );
                    ApiError::new(
                        StatusCode::PAYMENT_REQUIRED,
                        "payment_declined",
                        status.message(),
                    )
                }
                _ => ApiError::unavailable("the payment service", status.message()),
            });
        }
    };

    let order = Order {
        id: id.clone(),
        user: user.clone(),
        items: request.items,
        total_cents: reservation.total_cents,
        payment_id: payment.payment_id,
        status: "confirmed".into(),
        created_ms: config::now_millis(),
    };
    // The producer span: the event is "sent" when it is committed to the
    // outbox; its context travels with the message.
    let mut message_headers = HashMap::new();
    let producer = state.telemetry.send_message("orders", &mut message_headers);
    let entry = OutboxEntry {
        payload: serde_json::json!({
            "type": "OrderCreated",
            "order_id": order.id,
            "user": order.user,
            "total_cents": order.total_cents,
            "items": order.items,
        }),
        headers: message_headers,
        attempts: 0,
        next_attempt_ms: 0,
    };
    let (orders, outbox) = (state.orders.clone(), state.outbox.clone());
    let (order_bytes, entry_bytes) = (serde_json::to_vec(&order)?, serde_json::to_vec(&entry)?);
    blocking(move || {
        (&orders, &outbox)
            .transaction(|(orders, outbox)| {
                orders.insert(id.as_bytes(), order_bytes.as_slice())?;
                outbox.insert(id.as_bytes(), entry_bytes.as_slice())?;
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| ApiError::internal(format!("storing the order: {e:?}")))
    })
    .await?;
    drop(producer);
    state.wake_outbox.notify_one();
    tracing::info!(
        order_id = order.id,
        user = order.user,
        amount_cents = order.total_cents,
        payment_id = order.payment_id,
        "OrderCreated"
    );
    Ok((StatusCode::CREATED, Json(order)))
}

async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Json<Order>> {
    let user = user_of(&headers)?;
    let orders = state.orders.clone();
    let key = id.clone();
    let stored = blocking(move || Ok(orders.get(key.as_bytes())?)).await?;
    let order: Order = match stored {
        Some(bytes) => serde_json::from_slice(&bytes)?,
        None => return Err(ApiError::not_found(format!("no order {id}"))),
    };
    // Someone else's order does not exist, as far as this user can tell.
    if order.user != user {
        return Err(ApiError::not_found(format!("no order {id}")));
    }
    tracing::info!(order_id = id, user, "order read");
    Ok(Json(order))
}

impl AppState {
    /// Reserves the items at inventory; idempotent there (keyed by order
    /// id), so transient failures are retried.
    async fn reserve(&self, order_id: &str, items: &[Item]) -> ApiResult<Reservation> {
        let url = format!("{}/reservations", self.inventory_url);
        let body = serde_json::json!({"order_id": order_id, "items": items});
        with_retries(
            "inventory",
            self.attempts,
            Duration::from_millis(100),
            || async {
                let response = self
                    .inventory
                    .send(self.inventory.request(http::Method::POST, &url).json(&body))
                    .await
                    .map_err(|e| {
                        Failure::Transient(ApiError::unavailable("the inventory service", e))
                    })?;
                let status = response.status();
                if status.is_success() {
                    return response.json::<Reservation>().await.map_err(|e| {
                        Failure::Permanent(ApiError::internal(format!("inventory answer: {e}")))
                    });
                }
                let error = upstream_error("inventory", response).await;
                match status {
                    StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::BAD_GATEWAY
                    | StatusCode::GATEWAY_TIMEOUT => Err(Failure::Transient(error)),
                    _ => Err(Failure::Permanent(error)),
                }
            },
        )
        .await
    }

    /// Gives a reservation back after a failed payment; best effort (a
    /// reservation that stays held is a lost sale, not a wrong one).
    async fn release(&self, order_id: &str) {
        let url = format!("{}/reservations/{order_id}", self.inventory_url);
        match self
            .inventory
            .send(self.inventory.request(http::Method::DELETE, &url))
            .await
        {
            Ok(response) if response.status().is_success() => {
                tracing::info!(order_id, "reservation released")
            }
            Ok(response) => {
                tracing::error!(
                    order_id,
                    status = response.status().as_u16(),
                    "releasing the reservation failed"
                )
            }
            Err(error) => tracing::error!(order_id, %error, "releasing the reservation failed"),
        }
    }
}

/// An upstream's error answer as ours: its status and, if it sent our JSON
/// error shape, its code and message.
async fn upstream_error(upstream: &str, response: reqwest::Response) -> ApiError {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("{upstream} answered {status}"));
    let code = match body["error"].as_str() {
        Some("out_of_stock") => "out_of_stock",
        Some("not_found") => "not_found",
        Some("invalid_request") => "invalid_request",
        _ => "upstream_error",
    };
    if status.is_server_error() {
        return ApiError::unavailable(&format!("the {upstream} service"), message);
    }
    ApiError::new(status, code, message)
}

/// Delivers outbox entries to inventory until aborted: woken by new orders,
/// and every 500 ms for retries. A failed delivery is retried with
/// exponential backoff (capped at 30 s); the entry leaves the outbox only
/// once inventory has taken it.
async fn deliver_outbox(state: AppState, http: reqwest::Client) {
    let url = format!("{}/events/order-created", state.inventory_url);
    loop {
        let due = {
            let outbox = state.outbox.clone();
            blocking(move || {
                let now = config::now_millis();
                outbox
                    .iter()
                    .map(|entry| {
                        let (key, value) = entry?;
                        let entry: OutboxEntry = serde_json::from_slice(&value)?;
                        Ok((key, entry))
                    })
                    .filter(|entry| !matches!(entry, Ok((_, e)) if e.next_attempt_ms > now))
                    .take(100)
                    .collect::<ApiResult<Vec<_>>>()
            })
            .await
        };
        match due {
            Ok(due) => {
                for (key, entry) in due {
                    deliver_one(&state, &http, &url, key, entry).await;
                }
            }
            Err(error) => tracing::error!(%error, "OutboxReadError"),
        }
        let _ =
            tokio::time::timeout(Duration::from_millis(500), state.wake_outbox.notified()).await;
    }
}

async fn deliver_one(
    state: &AppState,
    http: &reqwest::Client,
    url: &str,
    key: sled::IVec,
    mut entry: OutboxEntry,
) {
    let order_id = entry.payload["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut request = http.post(url).json(&entry.payload);
    for (name, value) in &entry.headers {
        request = request.header(name, value);
    }
    let outcome = match request.send().await {
        // 404: inventory never held this reservation; retrying cannot help.
        Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => Ok(r.status()),
        Ok(r) => Err(format!("inventory answered {}", r.status())),
        Err(e) => Err(e.to_string()),
    };
    let outbox = state.outbox.clone();
    let result = match outcome {
        Ok(status) => {
            tracing::info!(
                order_id,
                attempts = entry.attempts + 1,
                status = status.as_u16(),
                "OrderCreatedDelivered"
            );
            blocking(move || Ok(outbox.remove(key).map(drop)?)).await
        }
        Err(error) => {
            entry.attempts += 1;
            let backoff = Duration::from_millis(200)
                .saturating_mul(2u32.saturating_pow(entry.attempts.min(10)))
                .min(Duration::from_secs(30));
            entry.next_attempt_ms = config::now_millis() + backoff.as_millis() as u64;
            tracing::warn!(order_id, attempts = entry.attempts, %error, retry_in_ms = backoff.as_millis() as u64, "OrderCreatedDeliveryError");
            let bytes = match serde_json::to_vec(&entry) {
                Ok(bytes) => bytes,
                Err(e) => return tracing::error!(order_id, error = %e, "OutboxWriteError"),
            };
            blocking(move || Ok(outbox.insert(key, bytes).map(drop)?)).await
        }
    };
    if let Err(error) = result {
        tracing::error!(order_id, %error, "OutboxWriteError");
    }
}
