//! The inventory service: products and their stock in its own sled
//! database, stock reservations for orders (REST), and the consumer of
//! `OrderCreated` events, which turns a held reservation into a sale.
//!
//! Stock is `stock - reserved`: a reservation raises `reserved`; the
//! `OrderCreated` event lowers both (the goods are gone); a release (failed
//! payment) lowers `reserved` only. Every change happens in one sled
//! transaction over the products and reservations trees.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use opentelemetry::trace::{FutureExt as _, Status, TraceContextExt as _};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::config::{self, CommonArgs, blocking};
use crate::error::{ApiError, ApiResult};

/// `shop inventory` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (HTTP)
    #[arg(long, env = "SHOP_INVENTORY_ADDR", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// Share of reservations that fail with 503 (0..1)
    #[arg(long, env = "SHOP_INVENTORY_FAIL_RATE", default_value_t = 0.02)]
    pub fail_rate: f64,
    /// Share of requests that are answered slowly (0..1)
    #[arg(long, env = "SHOP_INVENTORY_SLOW_RATE", default_value_t = 0.1)]
    pub slow_rate: f64,
    /// How much slower a slow request is, in milliseconds
    #[arg(long, env = "SHOP_INVENTORY_SLOW_MS", default_value_t = 400)]
    pub slow_ms: u64,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// A product as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    sku: String,
    name: String,
    price_cents: u64,
    stock: u64,
    reserved: u64,
}

/// A product as listed: what can still be bought.
#[derive(Debug, Serialize)]
struct ProductView {
    sku: String,
    name: String,
    price_cents: u64,
    available: u64,
}

/// One line of an order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    /// The product.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// `POST /reservations`.
#[derive(Debug, Deserialize)]
struct ReserveRequest {
    order_id: String,
    items: Vec<Item>,
}

/// A held, committed or released reservation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Reservation {
    order_id: String,
    items: Vec<Item>,
    total_cents: u64,
    state: String,
}

/// The `OrderCreated` event as inventory reads it.
#[derive(Debug, Deserialize)]
struct OrderCreated {
    order_id: String,
}

/// The products a fresh database starts with; `vinyl-rare` is sold out so
/// that some orders fail with `out_of_stock`.
const SEED: [(&str, &str, u64, u64); 6] = [
    ("coffee-beans", "Coffee beans, 1 kg", 1_890, 1_000_000),
    ("espresso-cup", "Espresso cup", 650, 1_000_000),
    ("grinder", "Burr grinder", 12_900, 100_000),
    ("kettle", "Gooseneck kettle", 5_400, 100_000),
    ("filter-papers", "Filter papers, 100", 490, 1_000_000),
    ("vinyl-rare", "Rare vinyl (sold out)", 9_900, 0),
];

#[derive(Clone)]
struct AppState {
    products: sled::Tree,
    reservations: sled::Tree,
    telemetry: strand_sdk::Telemetry,
    args: Arc<Args>,
}

/// Runs the inventory service until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let guard = config::telemetry("inventory")?;
    let db = args.common.open_db("inventory")?;
    let products = db.open_tree("products")?;
    seed(&products)?;
    let state = AppState {
        products,
        reservations: db.open_tree("reservations")?,
        telemetry: guard.telemetry().clone(),
        args: Arc::new(args.clone()),
    };
    config::serve("inventory", args.listen, router(state)).await?;
    db.flush_async().await?;
    Ok(())
}

fn seed(products: &sled::Tree) -> anyhow::Result<()> {
    if !products.is_empty() {
        return Ok(());
    }
    for (sku, name, price_cents, stock) in SEED {
        let product = Product {
            sku: sku.into(),
            name: name.into(),
            price_cents,
            stock,
            reserved: 0,
        };
        products.insert(sku, serde_json::to_vec(&product)?)?;
    }
    tracing::info!(products = SEED.len(), "InventorySeeded");
    Ok(())
}

fn router(state: AppState) -> Router {
    let traced = Router::new()
        .route("/products", get(list_products))
        .route("/reservations", post(reserve))
        .route("/reservations/{order_id}", delete(release))
        .layer(strand_sdk::HttpServerLayer::new(&state.telemetry));
    // Events carry their producer's context in their headers; the consumer
    // span links to it instead of continuing it, so no server span here.
    let untraced = Router::new().route("/events/order-created", post(order_created));
    config::with_health(traced.merge(untraced).with_state(state), "inventory")
}

impl AppState {
    /// Fault injection: a slow answer now and then.
    async fn maybe_slow(&self) {
        if config::chance(self.args.slow_rate) {
            tracing::warn!(delay_ms = self.args.slow_ms, "inventory is slow");
            tokio::time::sleep(Duration::from_millis(self.args.slow_ms)).await;
        }
    }
}

async fn list_products(State(state): State<AppState>) -> ApiResult<Json<Vec<ProductView>>> {
    state.maybe_slow().await;
    let products = state.products.clone();
    let list = blocking(move || {
        products
            .iter()
            .values()
            .map(|value| {
                let product: Product = serde_json::from_slice(&value?)?;
                Ok(ProductView {
                    available: product.stock.saturating_sub(product.reserved),
                    sku: product.sku,
                    name: product.name,
                    price_cents: product.price_cents,
                })
            })
            .collect::<ApiResult<Vec<_>>>()
    })
    .await?;
    tracing::info!(products = list.len(), "products listed");
    Ok(Json(list))
}

async fn reserve(
    State(state): State<AppState>,
    Json(request): Json<ReserveRequest>,
) -> ApiResult<(StatusCode, Json<Reservation>)> {
    state.maybe_slow().await;
    if config::chance(state.args.fail_rate) {
        return Err(ApiError::unavailable(
            "the stock database",
            "injected failure",
        ));
    }
    if request.items.is_empty() || request.items.iter().any(|i| i.quantity == 0) {
        return Err(ApiError::bad_request(
            "a reservation needs items with a positive quantity",
        ));
    }
    let order_id = request.order_id.clone();
    let (products, reservations) = (state.products.clone(), state.reservations.clone());
    let result = blocking(move || {
        (&products, &reservations)
            .transaction(|(products, reservations)| {
                if let Some(existing) = reservations.get(request.order_id.as_bytes())? {
                    // A retry of a reservation already held: same answer.
                    return decode::<Reservation>(&existing);
                }
                let mut total_cents = 0;
                for item in &request.items {
                    let Some(stored) = products.get(item.sku.as_bytes())? else {
                        return abort(ApiError::not_found(format!("no product {:?}", item.sku)));
                    };
                    let mut product: Product = decode(&stored)?;
                    let available = product.stock.saturating_sub(product.reserved);
                    if available < u64::from(item.quantity) {
                        return abort(ApiError::new(
                            StatusCode::CONFLICT,
                            "out_of_stock",
                            format!(
                                "{} has {available} left, {} wanted",
                                item.sku, item.quantity
                            ),
                        ));
                    }
                    product.reserved += u64::from(item.quantity);
                    total_cents += product.price_cents * u64::from(item.quantity);
                    products.insert(item.sku.as_bytes(), encode(&product)?)?;
                }
                let reservation = Reservation {
                    order_id: request.order_id.clone(),
                    items: request.items.clone(),
                    total_cents,
                    state: "held".into(),
                };
                reservations.insert(request.order_id.as_bytes(), encode(&reservation)?)?;
                Ok(reservation)
            })
            .map_err(transaction_error)
    })
    .await?;
    tracing::info!(order_id, amount_cents = result.total_cents, "StockReserved");
    Ok((StatusCode::CREATED, Json(result)))
}

async fn release(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> ApiResult<StatusCode> {
    let released = state.settle(&order_id, "released").await?;
    tracing::info!(order_id, released, "StockReleased");
    Ok(StatusCode::NO_CONTENT)
}

async fn order_created(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let carrier: HashMap<String, String> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let cx = state.telemetry.receive_message("orders", &carrier);
    let work = async {
        let event: OrderCreated = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("OrderCreated event: {e}")))?;
        let committed = state.settle(&event.order_id, "committed").await?;
        tracing::info!(order_id = event.order_id, committed, "OrderCreatedConsumed");
        Ok(StatusCode::NO_CONTENT)
    };
    let result: ApiResult<StatusCode> = work.with_context(cx.clone()).await;
    if let Err(error) = &result {
        cx.span().set_status(Status::error(error.to_string()));
    }
    result
}

impl AppState {
    /// Moves a held reservation to `committed` (the stock is sold) or
    /// `released` (it is available again). Idempotent: settling a settled
    /// reservation changes nothing and answers false.
    async fn settle(&self, order_id: &str, to: &'static str) -> ApiResult<bool> {
        let (products, reservations) = (self.products.clone(), self.reservations.clone());
        let order_id = order_id.to_string();
        blocking(move || {
            (&products, &reservations)
                .transaction(|(products, reservations)| {
                    let Some(stored) = reservations.get(order_id.as_bytes())? else {
                        return abort(ApiError::not_found(format!(
                            "no reservation for order {order_id}"
                        )));
                    };
                    let mut reservation: Reservation = decode(&stored)?;
                    if reservation.state != "held" {
                        return Ok(false);
                    }
                    for item in &reservation.items {
                        if let Some(stored) = products.get(item.sku.as_bytes())? {
                            let mut product: Product = decode(&stored)?;
                            let quantity = u64::from(item.quantity);
                            product.reserved = product.reserved.saturating_sub(quantity);
                            if to == "committed" {
                                product.stock = product.stock.saturating_sub(quantity);
                            }
                            products.insert(item.sku.as_bytes(), encode(&product)?)?;
                        }
                    }
                    reservation.state = to.into();
                    reservations.insert(order_id.as_bytes(), encode(&reservation)?)?;
                    Ok(true)
                })
                .map_err(transaction_error)
        })
        .await
    }
}

type TxResult<T> = Result<T, ConflictableTransactionError<ApiError>>;

fn abort<T>(error: ApiError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(error))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> TxResult<T> {
    serde_json::from_slice(bytes).map_err(|e| ConflictableTransactionError::Abort(e.into()))
}

fn encode<T: Serialize>(value: &T) -> TxResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ConflictableTransactionError::Abort(e.into()))
}

fn transaction_error(error: TransactionError<ApiError>) -> ApiError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => error.into(),
    }
}
