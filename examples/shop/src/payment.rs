//! The payment service: two gRPC methods, `shop.payment.v1.Payment/Charge`
//! and `Payment/Cancel`, served by axum next to `/health` (HTTP/1 and HTTP/2
//! on one port). The protobuf messages are declared here with `prost`
//! derives and the methods are wired with `tonic::server::Grpc` and
//! `tonic_prost::ProstCodec`, so no `protoc` and no build script are needed.
//! The equivalent `.proto`:
//!
//! ```proto
//! syntax = "proto3";
//! package shop.payment.v1;
//! service Payment {
//!   rpc Charge(ChargeRequest) returns (ChargeReply);
//!   rpc Cancel(CancelRequest) returns (CancelReply);
//! }
//! message ChargeRequest { string order_id = 1; string user = 2; uint64 amount_cents = 3; }
//! message ChargeReply { string payment_id = 1; string status = 2; }
//! message CancelRequest { string order_id = 1; }
//! message CancelReply { string status = 1; string payment_id = 2; }
//! ```
//!
//! Charges are kept in the service's own sled database, keyed by order id,
//! so charging an order twice charges it once. `Cancel` settles an order
//! whose charge's outcome the caller never learnt: a captured charge is
//! refunded, and an order never charged is voided so that a charge arriving
//! late is refused. Both are decided in one transaction with `Charge`'s, so
//! an order ends up either charged or cancelled, never both.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::uri::PathAndQuery;
use opentelemetry::KeyValue;
use opentelemetry::context::FutureExt as _;
use sled::Transactional;
use sled::transaction::ConflictableTransactionError;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::config::{self, CommonArgs};

/// The methods' paths on the wire.
const CHARGE_PATH: &str = "/shop.payment.v1.Payment/Charge";
const CANCEL_PATH: &str = "/shop.payment.v1.Payment/Cancel";

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

/// `CancelRequest`: settle `order_id` as not paid.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CancelRequest {
    /// The order whose charge is to be undone (or prevented).
    #[prost(string, tag = "1")]
    pub order_id: String,
}

/// `CancelReply`: what cancelling did.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CancelReply {
    /// `refunded` (a charge was captured and is given back) or `voided`
    /// (nothing was charged; a later charge for the order is refused).
    #[prost(string, tag = "1")]
    pub status: String,
    /// The refunded payment's id; empty when voided.
    #[prost(string, tag = "2")]
    pub payment_id: String,
}

/// Runs the payment service until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let guard = config::telemetry("payment")?;
    let db = args.common.open_db("payment")?;
    let state = Arc::new(Payments {
        charges: db.open_tree("charges")?,
        cancelled: db.open_tree("cancelled")?,
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
    /// Captured charges: order id -> payment id.
    charges: sled::Tree,
    /// Cancelled orders: order id -> `refunded:<payment id>` or `voided`.
    cancelled: sled::Tree,
    args: Args,
    /// `rpc.server.call.duration`: the request rate and latency of Charge.
    duration: opentelemetry::metrics::Histogram<f64>,
}

fn router(state: Arc<Payments>, telemetry: &strand_sdk::Telemetry) -> Router {
    let charge = {
        let state = state.clone();
        method(state.clone(), "Charge", move |request| {
            let state = state.clone();
            async move { state.charge(request).await }
        })
    };
    let cancel = method(state.clone(), "Cancel", move |request| {
        let state = state.clone();
        async move { state.cancel(request).await }
    });
    let traced = tower::ServiceBuilder::new().layer(strand_sdk::GrpcServerLayer::new(telemetry));
    config::with_health(
        Router::new()
            .route_service(CHARGE_PATH, traced.clone().service(charge))
            .route_service(CANCEL_PATH, traced.service(cancel)),
        "payment",
    )
}

/// One unary gRPC method as an HTTP service: decodes `Req`, runs `handle`,
/// records `rpc.server.call.duration` with the method and status code, and
/// encodes the reply or the status.
fn method<Req, Reply, F, Fut>(
    state: Arc<Payments>,
    name: &'static str,
    handle: F,
) -> impl tower::Service<
    http::Request<axum::body::Body>,
    Response = http::Response<tonic::body::Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static
where
    Req: prost::Message + Default + Send + 'static,
    Reply: prost::Message + Send + 'static,
    F: Fn(Req) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Reply, Status>> + Send + 'static,
{
    tower::service_fn(move |request: http::Request<axum::body::Body>| {
        let (state, handle) = (state.clone(), handle.clone());
        async move {
            let unary = tower::service_fn(move |request: Request<Req>| {
                let (state, handle) = (state.clone(), handle.clone());
                async move {
                    let start = std::time::Instant::now();
                    // Spawned: a caller that hangs up (a timeout) does not
                    // stop a charge midway, as with a real processor; its
                    // outcome is then unknown to the caller.
                    let call = handle(request.into_inner()).with_current_context();
                    let result = tokio::spawn(call)
                        .await
                        .unwrap_or_else(|e| Err(Status::internal(format!("the call failed: {e}"))));
                    let code = match &result {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    state.duration.record(
                        start.elapsed().as_secs_f64(),
                        &[
                            KeyValue::new("rpc.system", "grpc"),
                            KeyValue::new("rpc.service", "shop.payment.v1.Payment"),
                            KeyValue::new("rpc.method", name),
                            KeyValue::new("rpc.grpc.status_code", code as i64),
                        ],
                    );
                    result.map(Response::new)
                }
            });
            let mut grpc =
                tonic::server::Grpc::new(tonic_prost::ProstCodec::<Reply, Req>::default());
            Ok::<_, Infallible>(grpc.unary(unary, request).await)
        }
    })
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
        let declined = config::chance(self.args.decline_rate);
        let new_payment = format!("pay-{:016x}", rand::random::<u64>());
        let (charges, cancelled) = (self.charges.clone(), self.cancelled.clone());
        let key = order_id.clone();
        // One transaction with Cancel's, and durable before it is answered:
        // a crash after the answer must not lose a charge the order service
        // has stored as paid.
        let outcome = tokio::task::spawn_blocking(move || {
            let outcome = (&charges, &cancelled).transaction(|(charges, cancelled)| {
                if cancelled.get(&key)?.is_some() {
                    return Ok(Charged::Cancelled);
                }
                if let Some(existing) = charges.get(&key)? {
                    return Ok(Charged::Before(String::from_utf8_lossy(&existing).into()));
                }
                if declined {
                    return Ok(Charged::Declined);
                }
                charges.insert(key.as_bytes(), new_payment.as_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(Charged::Now(new_payment.clone()))
            });
            let outcome = outcome.map_err(|e| internal(format!("{e:?}")))?;
            if matches!(outcome, Charged::Now(_)) {
                charges.flush().map_err(internal)?;
            }
            Ok::<_, Status>(outcome)
        })
        .await
        .map_err(internal)??;
        let payment_id = match outcome {
            Charged::Now(payment_id) => {
                tracing::info!(order_id, user, amount_cents, payment_id, "PaymentCaptured");
                payment_id
            }
            Charged::Before(payment_id) => {
                tracing::info!(order_id, payment_id, "charge already captured");
                payment_id
            }
            Charged::Declined => {
                tracing::warn!(order_id, user, amount_cents, "PaymentDeclined");
                return Err(Status::failed_precondition("card declined"));
            }
            Charged::Cancelled => {
                tracing::warn!(order_id, user, "charge for a cancelled order refused");
                return Err(Status::failed_precondition("the order was cancelled"));
            }
        };
        Ok(ChargeReply {
            payment_id,
            status: "captured".into(),
        })
    }

    /// Settles an order as not paid: refunds its charge if one was captured,
    /// otherwise voids the order so that no charge for it is taken later.
    /// Idempotent: cancelling again answers what the first call did.
    async fn cancel(&self, request: CancelRequest) -> Result<CancelReply, Status> {
        let order_id = request.order_id;
        if order_id.is_empty() {
            return Err(Status::invalid_argument("a cancel needs an order id"));
        }
        let (charges, cancelled) = (self.charges.clone(), self.cancelled.clone());
        let key = order_id.clone();
        let record = tokio::task::spawn_blocking(move || {
            let record = (&charges, &cancelled).transaction(|(charges, cancelled)| {
                if let Some(done) = cancelled.get(&key)? {
                    return Ok(String::from_utf8_lossy(&done).into_owned());
                }
                let record = match charges.remove(key.as_bytes())? {
                    Some(payment) => format!("refunded:{}", String::from_utf8_lossy(&payment)),
                    None => "voided".to_string(),
                };
                cancelled.insert(key.as_bytes(), record.as_bytes())?;
                Ok::<_, ConflictableTransactionError<()>>(record)
            });
            let record = record.map_err(|e| internal(format!("{e:?}")))?;
            charges.flush().map_err(internal)?;
            Ok::<_, Status>(record)
        })
        .await
        .map_err(internal)??;
        let reply = match record.split_once(':') {
            Some((status, payment_id)) => CancelReply {
                status: status.into(),
                payment_id: payment_id.into(),
            },
            None => CancelReply {
                status: record,
                payment_id: String::new(),
            },
        };
        tracing::info!(
            order_id,
            status = reply.status,
            payment_id = reply.payment_id,
            "PaymentCancelled"
        );
        Ok(reply)
    }
}

/// What a charge found when it looked at the order's records.
enum Charged {
    /// Captured by this call, with this payment id.
    Now(String),
    /// Captured by an earlier call for the same order.
    Before(String),
    /// The card was declined; nothing stored.
    Declined,
    /// The order was cancelled before this charge arrived.
    Cancelled,
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
        self.call(CHARGE_PATH, request).await
    }

    /// `Payment/Cancel`.
    pub async fn cancel(&self, request: CancelRequest) -> Result<CancelReply, Status> {
        self.call(CANCEL_PATH, request).await
    }

    async fn call<Req, Reply>(&self, path: &'static str, request: Req) -> Result<Reply, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Reply: prost::Message + Default + Send + Sync + 'static,
    {
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("payment service not ready: {e}")))?;
        grpc.unary(
            Request::new(request),
            PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::<Req, Reply>::default(),
        )
        .await
        .map(Response::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payments(decline_rate: f64) -> (tempfile::TempDir, Payments) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let args = Args {
            listen: "127.0.0.1:0".parse().unwrap(),
            decline_rate,
            fail_rate: 0.0,
            slow_rate: 0.0,
            slow_ms: 0,
            common: CommonArgs { data_dir: None },
        };
        let payments = Payments {
            charges: db.open_tree("charges").unwrap(),
            cancelled: db.open_tree("cancelled").unwrap(),
            args,
            duration: opentelemetry::global::meter("test")
                .f64_histogram("d")
                .build(),
        };
        (dir, payments)
    }

    fn charge(order_id: &str) -> ChargeRequest {
        ChargeRequest {
            order_id: order_id.into(),
            user: "alice".into(),
            amount_cents: 1200,
        }
    }

    fn cancel(order_id: &str) -> CancelRequest {
        CancelRequest {
            order_id: order_id.into(),
        }
    }

    #[tokio::test]
    async fn charging_twice_charges_once() {
        let (_dir, payments) = payments(0.0);
        let first = payments.charge(charge("o1")).await.unwrap();
        let second = payments.charge(charge("o1")).await.unwrap();
        assert_eq!(first.payment_id, second.payment_id);
        assert_eq!(payments.charges.len(), 1);
    }

    #[tokio::test]
    async fn cancelling_a_charged_order_refunds_it_once() {
        let (_dir, payments) = payments(0.0);
        let charged = payments.charge(charge("o1")).await.unwrap();
        let refund = payments.cancel(cancel("o1")).await.unwrap();
        assert_eq!(refund.status, "refunded");
        assert_eq!(refund.payment_id, charged.payment_id);
        assert_eq!(payments.cancel(cancel("o1")).await.unwrap(), refund);
        assert!(payments.charges.is_empty());
        // A retried charge after the refund is refused, not taken again.
        let late = payments.charge(charge("o1")).await.unwrap_err();
        assert_eq!(late.code(), Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn cancelling_before_the_charge_voids_the_order() {
        let (_dir, payments) = payments(0.0);
        let void = payments.cancel(cancel("o2")).await.unwrap();
        assert_eq!(void.status, "voided");
        assert!(void.payment_id.is_empty());
        let late = payments.charge(charge("o2")).await.unwrap_err();
        assert_eq!(late.code(), Code::FailedPrecondition);
        assert!(payments.charges.is_empty());
    }

    #[tokio::test]
    async fn declined_and_invalid_charges_store_nothing() {
        let (_dir, payments) = payments(1.0);
        let declined = payments.charge(charge("o3")).await.unwrap_err();
        assert_eq!(declined.code(), Code::FailedPrecondition);
        let mut empty = charge("o4");
        empty.amount_cents = 0;
        let invalid = payments.charge(empty).await.unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument);
        let invalid = payments.cancel(cancel("")).await.unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(payments.charges.is_empty());
    }
}
