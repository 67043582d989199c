//! The payment service: one gRPC method, `shop.payment.v1.Payment/Charge`,
//! served by axum next to `/health` (HTTP/1 and HTTP/2 on one port). The
//! protobuf messages are declared here with `prost` derives and the method
//! is wired with `tonic::server::Grpc` and `tonic_prost::ProstCodec`, so no
//! `protoc` and no build script are needed. The equivalent `.proto`:
//!
//! ```proto
//! syntax = "proto3";
//! package shop.payment.v1;
//! service Payment { rpc Charge(ChargeRequest) returns (ChargeReply); }
//! message ChargeRequest { string order_id = 1; string user = 2; uint64 amount_cents = 3; }
//! message ChargeReply { string payment_id = 1; string status = 2; }
//! ```
//!
//! Charges are kept in the service's own sled database, keyed by order id,
//! so charging an order twice charges it once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::uri::PathAndQuery;
use opentelemetry::KeyValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::config::{self, CommonArgs};

/// The method's path on the wire.
const CHARGE_PATH: &str = "/shop.payment.v1.Payment/Charge";

/// `shop payment` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on (gRPC and `/health`)
    #[arg(long, env = "SHOP_PAYMENT_ADDR", default_value = "127.0.0.1:8083")]
    pub listen: SocketAddr,
    /// Share of charges declined (FAILED_PRECONDITION "card declined") (0..1)
    #[arg(long, env = "SHOP_PAYMENT_DECLINE_RATE", default_value_t = 0.05)]
    pub decline_rate: f64,
    /// Share of charges that fail (UNAVAILABLE) (0..1)
    #[arg(long, env = "SHOP_PAYMENT_FAIL_RATE", default_value_t = 0.02)]
    pub fail_rate: f64,
    /// Share of charges answered slowly (0..1)
    #[arg(long, env = "SHOP_PAYMENT_SLOW_RATE", default_value_t = 0.05)]
    pub slow_rate: f64,
    /// How much slower a slow charge is, in milliseconds
    #[arg(long, env = "SHOP_PAYMENT_SLOW_MS", default_value_t = 800)]
    pub slow_ms: u64,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `ChargeRequest`: charge `amount_cents` to `user` for `order_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChargeRequest {
    /// The order paid for; also the idempotency key.
    #[prost(string, tag = "1")]
    pub order_id: String,
    /// Who pays.
    #[prost(string, tag = "2")]
    pub user: String,
    /// How much, in cents.
    #[prost(uint64, tag = "3")]
    pub amount_cents: u64,
}

/// `ChargeReply`: the payment made.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChargeReply {
    /// The payment's id.
    #[prost(string, tag = "1")]
    pub payment_id: String,
    /// Always `captured` on success.
    #[prost(string, tag = "2")]
    pub status: String,
}

/// Runs the payment service until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let guard = config::telemetry("payment")?;
    let db = args.common.open_db("payment")?;
    let state = Arc::new(Payments {
        charges: db.open_tree("charges")?,
        args: args.clone(),
        duration: opentelemetry::global::meter("shop")
            .f64_histogram("rpc.server.call.duration")
            .with_unit("s")
            .with_description("Duration of gRPC calls served.")
            .build(),
    });
    config::serve("payment", args.listen, router(state, guard.telemetry())).await?;
    db.flush_async().await?;
    Ok(())
}

struct Payments {
    charges: sled::Tree,
    args: Args,
    /// `rpc.server.call.duration`: the request rate and latency of Charge.
    duration: opentelemetry::metrics::Histogram<f64>,
}

fn router(state: Arc<Payments>, telemetry: &strand_sdk::Telemetry) -> Router {
    let charge = tower::service_fn(move |request: http::Request<axum::body::Body>| {
        let state = state.clone();
        async move {
            let method = tower::service_fn(move |request: Request<ChargeRequest>| {
                let state = state.clone();
                async move {
                    let start = std::time::Instant::now();
                    let result = state.charge(request.into_inner()).await;
                    let code = match &result {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    state.duration.record(
                        start.elapsed().as_secs_f64(),
                        &[
                            KeyValue::new("rpc.system", "grpc"),
                            KeyValue::new("rpc.service", "shop.payment.v1.Payment"),
                            KeyValue::new("rpc.method", "Charge"),
                            KeyValue::new("rpc.grpc.status_code", code as i64),
                        ],
                    );
                    result.map(Response::new)
                }
            });
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<
                ChargeReply,
                ChargeRequest,
            >::default());
            Ok::<_, Infallible>(grpc.unary(method, request).await)
        }
    });
    let charge = tower::ServiceBuilder::new()
        .layer(strand_sdk::GrpcServerLayer::new(telemetry))
        .service(charge);
    config::with_health(Router::new().route_service(CHARGE_PATH, charge), "payment")
}

impl Payments {
    async fn charge(&self, request: ChargeRequest) -> Result<ChargeReply, Status> {
        let ChargeRequest {
            order_id,
            user,
            amount_cents,
        } = request;
        if order_id.is_empty() || amount_cents == 0 {
            return Err(Status::invalid_argument(
                "a charge needs an order id and a positive amount",
            ));
        }
        if config::chance(self.args.slow_rate) {
            tracing::warn!(
                order_id,
                delay_ms = self.args.slow_ms,
                "payment processor is slow"
            );
            tokio::time::sleep(Duration::from_millis(self.args.slow_ms)).await;
        }
        if config::chance(self.args.fail_rate) {
            tracing::error!(
                order_id,
                user,
                amount_cents,
                "payment processor unavailable"
            );
            return Err(Status::unavailable("payment processor unavailable"));
        }
        if let Some(existing) = self.charges.get(&order_id).map_err(internal)? {
            let reply = String::from_utf8_lossy(&existing).to_string();
            tracing::info!(order_id, payment_id = reply, "charge already captured");
            return Ok(ChargeReply {
                payment_id: reply,
                status: "captured".into(),
            });
        }
        if config::chance(self.args.decline_rate) {
            tracing::warn!(order_id, user, amount_cents, "PaymentDeclined");
            return Err(Status::failed_precondition("card declined"));
        }
        let payment_id = format!("pay-{:016x}", rand::random::<u64>());
        let charges = self.charges.clone();
        let (key, value) = (order_id.clone(), payment_id.clone());
        // Durable before it is confirmed: a crash after the answer must not
        // lose a charge the order service has stored as paid.
        tokio::task::spawn_blocking(move || {
            charges.insert(key, value.as_bytes())?;
            charges.flush()
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        tracing::info!(order_id, user, amount_cents, payment_id, "PaymentCaptured");
        Ok(ChargeReply {
            payment_id,
            status: "captured".into(),
        })
    }
}

fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("payment database: {error}"))
}

/// A traced client of the payment service.
#[derive(Clone)]
pub struct PaymentClient {
    grpc: tonic::client::Grpc<strand_sdk::GrpcService<Channel>>,
}

impl PaymentClient {
    /// A client of the service at `url` (e.g. `http://payment:8083`); it
    /// connects lazily, and every call gives up after `timeout`.
    pub fn new(
        url: &str,
        timeout: Duration,
        telemetry: &strand_sdk::Telemetry,
    ) -> anyhow::Result<PaymentClient> {
        let channel = Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_millis(500).min(timeout))
            .timeout(timeout)
            .connect_lazy();
        let channel = tower::ServiceBuilder::new()
            .layer(strand_sdk::GrpcClientLayer::new(telemetry))
            .service(channel);
        Ok(PaymentClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// `Payment/Charge`.
    pub async fn charge(&self, request: ChargeRequest) -> Result<ChargeReply, Status> {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("payment service not ready: {e}")))?;
        grpc.unary(
            Request::new(request),
            PathAndQuery::from_static(CHARGE_PATH),
            tonic_prost::ProstCodec::<ChargeRequest, ChargeReply>::default(),
        )
        .await
        .map(Response::into_inner)
    }
}
