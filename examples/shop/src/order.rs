//! The order service. `POST /orders` validates the order, reserves its
//! stock at inventory (REST), records it as `pending`, charges it at payment
//! (gRPC), and stores the confirmed order together with an `OrderCreated`
//! event in an *outbox* tree of its own sled database, in one transaction. A
//! background task delivers the outbox to inventory over HTTP, retrying with
//! backoff until inventory takes it, so an order is never confirmed without
//! its event eventually arriving.
//!
//! A charge whose outcome is unknown (payment down, a timeout, a reply lost
//! in a crash) leaves the order `pending` and the client gets 503. Another
//! background task settles pending orders: it asks payment to cancel them
//! (refunding a charge that was taken, or voiding the order so that none is
//! taken later), marks them `cancelled` and releases their stock. So every
//! charge belongs to a confirmed order, and no order stays half-done.
//!
//! The event carries the request's trace context in its headers (written by
//! `Telemetry::send_message` when the order is stored); the consumer's span
//! links back to it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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
use crate::payment::{CancelRequest, ChargeRequest, PaymentClient};

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
    /// Age in milliseconds after which a pending order (its charge's outcome
    /// lost) is cancelled at payment; a request still waiting for its charge
    /// is never cancelled under it
    #[arg(long, env = "SHOP_ORDER_SETTLE_AFTER_MS", default_value_t = 5000)]
    pub settle_after_ms: u64,
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
    /// The captured charge's id (`confirmed`), the refunded one
    /// (`cancelled` after a refund), or empty.
    payment_id: String,
    status: OrderStatus,
    /// Why a `declined` or `cancelled` order did not go through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    created_ms: u64,
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OrderStatus {
    /// Stock reserved, charge asked for, outcome not known yet.
    Pending,
    /// Charged; the `OrderCreated` event is in the outbox.
    Confirmed,
    /// The payment was refused; nothing charged.
    Declined,
    /// Settled after an unknown charge outcome: refunded or voided.
    Cancelled,
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
    /// Ids of `pending` orders (-> creation time), so settling them does
    /// not scan every order ever made.
    pending: sled::Tree,
    outbox: sled::Tree,
    /// Orders whose request is still being handled here: never settled
    /// under the handler's feet.
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// How old a pending order must be before it is settled.
    settle_after: Duration,
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
        pending: db.open_tree("pending")?,
        outbox: db.open_tree("outbox")?,
        in_flight: Arc::default(),
        settle_after: Duration::from_millis(args.settle_after_ms),
        inventory: strand_sdk::HttpClient::new(http.clone(), &telemetry),
        inventory_url: args.inventory_url.trim_end_matches('/').into(),
        payment: PaymentClient::new(&args.payment_url, timeout, &telemetry)?,
        telemetry: telemetry.clone(),
        attempts: args.upstream_attempts,
        wake_outbox: Arc::new(tokio::sync::Notify::new()),
    };
    let delivery = tokio::spawn(deliver_outbox(state.clone(), http));
    let settling = tokio::spawn(settle_pending(state.clone()));
    let served = config::serve("order", args.listen, router(state)).await;
    delivery.abort();
    settling.abort();
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
    let _handling = InFlight::enter(&state.in_flight, &id);
    let mut order = Order {
        id: id.clone(),
        user: user.clone(),
        items: request.items,
        total_cents: reservation.total_cents,
        payment_id: String::new(),
        status: OrderStatus::Pending,
        reason: None,
        created_ms: config::now_millis(),
    };
    // Durable before the charge: if this process dies while the charge is
    // out, the restarted service finds the order and settles it.
    state.store(&order, None, true).await?;

    let charge = ChargeRequest {
        order_id: id.clone(),
        user: user.clone(),
        amount_cents: reservation.total_cents,
    };
    let payment = match state.payment.charge(charge).await {
        Ok(reply) => reply,
        Err(status)
            if matches!(
                status.code(),
                Code::FailedPrecondition | Code::InvalidArgument
            ) =>
        {
            // Refused outright: nothing was charged.
            tracing::warn!(
                order_id = id,
                user,
                amount_cents = reservation.total_cents,
                reason = status.message(),
                "OrderPaymentDeclined"
            );
            order.status = OrderStatus::Declined;
            order.reason = Some(status.message().to_string());
            state.store(&order, None, false).await?;
            state.release(&id).await;
            return Err(ApiError::new(
                StatusCode::PAYMENT_REQUIRED,
                "payment_declined",
                status.message(),
            ));
        }
        Err(status) => {
            // Charged or not, we cannot tell: the order stays pending and is
            // settled (refunded or voided) once payment answers again.
            tracing::warn!(
                order_id = id,
                user,
                code = ?status.code(),
                reason = status.message(),
                "OrderPaymentUnknown"
            );
            return Err(ApiError::unavailable(
                "the payment service",
                format!(
                    "{}; the order is not placed and any charge for it will be refunded",
                    status.message()
                ),
            )
            .for_order(&id));
        }
    };

    order.status = OrderStatus::Confirmed;
    order.payment_id = payment.payment_id;
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
    state.store(&order, Some(&entry), false).await?;
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

/// Marks an order as being handled by a request of this process for as
/// long as the value lives (also when the request is dropped midway).
struct InFlight {
    set: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl InFlight {
    fn enter(set: &Arc<Mutex<HashSet<String>>>, id: &str) -> InFlight {
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string());
        InFlight {
            set: set.clone(),
            id: id.to_string(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
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
    /// Writes `order`, keeps the pending index in step with its status and,
    /// for a confirmed order, queues its event — in one transaction.
    /// `durable` waits for the write to reach the disk.
    async fn store(
        &self,
        order: &Order,
        event: Option<&OutboxEntry>,
        durable: bool,
    ) -> ApiResult<()> {
        let (orders, pending, outbox) = (
            self.orders.clone(),
            self.pending.clone(),
            self.outbox.clone(),
        );
        let id = order.id.clone();
        let is_pending = order.status == OrderStatus::Pending;
        let created = order.created_ms.to_be_bytes();
        let order_bytes = serde_json::to_vec(order)?;
        let event_bytes = event.map(serde_json::to_vec).transpose()?;
        blocking(move || {
            (&orders, &pending, &outbox)
                .transaction(|(orders, pending, outbox)| {
                    orders.insert(id.as_bytes(), order_bytes.as_slice())?;
                    if is_pending {
                        pending.insert(id.as_bytes(), &created)?;
                    } else {
                        pending.remove(id.as_bytes())?;
                    }
                    if let Some(event) = &event_bytes {
                        outbox.insert(id.as_bytes(), event.as_slice())?;
                    }
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(|e| ApiError::internal(format!("storing the order: {e:?}")))?;
            if durable {
                orders.flush()?;
            }
            Ok(())
        })
        .await
    }

    /// Settles one pending order: cancels it at payment (a refund if it was
    /// charged), marks it cancelled, and gives its stock back.
    async fn settle(&self, id: &str) -> ApiResult<()> {
        let orders = self.orders.clone();
        let key = id.to_string();
        let stored = blocking(move || Ok(orders.get(key.as_bytes())?)).await?;
        let Some(bytes) = stored else {
            return Err(ApiError::internal(format!(
                "pending order {id} is not stored"
            )));
        };
        let mut order: Order = serde_json::from_slice(&bytes)?;
        let cancelled = self
            .payment
            .cancel(CancelRequest {
                order_id: id.to_string(),
            })
            .await
            .map_err(|status| ApiError::unavailable("the payment service", status.message()))?;
        order.status = OrderStatus::Cancelled;
        order.reason = Some(format!(
            "the payment's outcome was not known in time; {}",
            cancelled.status
        ));
        order.payment_id = cancelled.payment_id;
        self.store(&order, None, true).await?;
        self.release(id).await;
        tracing::info!(
            order_id = id,
            user = order.user,
            amount_cents = order.total_cents,
            payment = cancelled.status,
            "OrderCancelled"
        );
        Ok(())
    }

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

/// The first 100 entries of `tree` that are due, their values decoded by
/// `decode`: what one round of a background task handles. Read off the
/// async runtime.
async fn due_entries<T: Send + 'static>(
    tree: sled::Tree,
    decode: impl Fn(&[u8]) -> ApiResult<T> + Send + 'static,
    is_due: impl Fn(&T) -> bool + Send + 'static,
) -> ApiResult<Vec<(sled::IVec, T)>> {
    blocking(move || {
        tree.iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((key, decode(&value)?))
            })
            .filter(|entry| !matches!(entry, Ok((_, value)) if !is_due(value)))
            .take(100)
            .collect()
    })
    .await
}

/// Settles pending orders until aborted: every second, those older than
/// `settle_after` that no request here is still handling. One that cannot be
/// settled now (payment still down) is tried again on the next round.
async fn settle_pending(state: AppState) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let oldest = config::now_millis().saturating_sub(state.settle_after.as_millis() as u64);
        let due = due_entries(
            state.pending.clone(),
            |created| Ok(created.try_into().map(u64::from_be_bytes).unwrap_or(0)),
            move |created| *created <= oldest,
        )
        .await;
        let due = match due {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "PendingReadError");
                continue;
            }
        };
        for (key, _) in due {
            let id = String::from_utf8_lossy(&key).into_owned();
            let handled_here = state
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&id);
            if handled_here {
                continue;
            }
            if let Err(error) = state.settle(&id).await {
                tracing::warn!(order_id = id, %error, "OrderSettleError");
            }
        }
    }
}

/// Delivers outbox entries to inventory until aborted: woken by new orders,
/// and every 500 ms for retries. A failed delivery is retried with
/// exponential backoff (capped at 30 s); the entry leaves the outbox only
/// once inventory has taken it.
async fn deliver_outbox(state: AppState, http: reqwest::Client) {
    let url = format!("{}/events/order-created", state.inventory_url);
    loop {
        let now = config::now_millis();
        let due = due_entries(
            state.outbox.clone(),
            |value| Ok(serde_json::from_slice::<OutboxEntry>(value)?),
            move |entry| entry.next_attempt_ms <= now,
        )
        .await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(items: &[(&str, u32)]) -> OrderRequest {
        OrderRequest {
            items: items
                .iter()
                .map(|(sku, quantity)| Item {
                    sku: sku.to_string(),
                    quantity: *quantity,
                })
                .collect(),
        }
    }

    #[test]
    fn orders_are_validated_before_anything_is_reserved() {
        assert!(validate(&request(&[("kettle", 1), ("coffee-beans", 100)])).is_ok());
        let refused = [
            request(&[]),
            request(&[("kettle", 0)]),
            request(&[("kettle", MAX_QUANTITY + 1)]),
            request(&[("", 1)]),
            request(&[(&"x".repeat(65), 1)]),
            request(&vec![("kettle", 1); MAX_LINES + 1]),
        ];
        for order in refused {
            let error = validate(&order).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{order:?}");
        }
    }

    #[test]
    fn statuses_are_stored_in_snake_case_and_old_records_still_read() {
        let order = Order {
            id: "ord-1".into(),
            user: "alice".into(),
            items: Vec::new(),
            total_cents: 1,
            payment_id: String::new(),
            status: OrderStatus::Pending,
            reason: None,
            created_ms: 0,
        };
        let json = serde_json::to_value(&order).unwrap();
        assert_eq!(json["status"], "pending");
        assert!(json.get("reason").is_none());
        // Records written before orders had a reason.
        let stored = r#"{"id":"ord-2","user":"bob","items":[],"total_cents":5,
            "payment_id":"pay-1","status":"confirmed","created_ms":1}"#;
        let order: Order = serde_json::from_str(stored).unwrap();
        assert_eq!(order.status, OrderStatus::Confirmed);
    }
}
