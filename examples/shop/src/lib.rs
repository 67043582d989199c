//! The example shop: four instrumented services (gateway, order, inventory,
//! payment), a load generator and a demo launcher, all in one binary so one
//! `cargo build` gives everything. Each service runs as its own process with
//! its own sled database and sends traces, logs and metrics through
//! `strand-sdk` to whatever `OTEL_EXPORTER_OTLP_ENDPOINT` names (Strand's
//! OTLP/gRPC port by default).
//!
//! ```text
//! client -> gateway (JWT, rate limit) -> order --REST--> inventory
//!                                          |  --gRPC--> payment
//!                                          '-- outbox: OrderCreated --HTTP--> inventory
//! ```
//!
//! # Layout
//!
//! - `config`: flags shared by every service (listen address, data dir),
//!   telemetry setup, the sled database, serving with graceful shutdown.
//! - `error`: `ApiError`, the one place errors become HTTP statuses and JSON.
//! - `gateway`: the public entry point: login, JWT checks, rate limits, proxy.
//! - `order`: orders, the REST and gRPC calls, the outbox and its delivery.
//! - `inventory`: products and stock, reservations, the `OrderCreated` consumer.
//! - `payment`: the gRPC `Payment/Charge` service and its hand-declared messages.
//! - `load`: the traffic generator.
//! - `demo`: starts `strand`, the four services and the load, and stops them.

mod config;
mod demo;
mod error;
mod gateway;
mod inventory;
mod load;
mod order;
mod payment;

use clap::{Parser, Subcommand};

pub use config::HEALTH_PATH;

/// The example shop for Strand. `shop <command> --help` lists every flag;
/// [`clap::CommandFactory`] gives the same as data (flags, environment
/// variables, defaults), which the deployment tests check the compose file
/// and the Kubernetes manifests against.
#[derive(Parser, Debug)]
#[command(name = "shop", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The public entry point: login, JWT checks, rate limits, routing.
    Gateway(gateway::Args),
    /// Orders: reserves stock, charges payment, publishes `OrderCreated`.
    Order(order::Args),
    /// Products and stock levels, reservations.
    Inventory(inventory::Args),
    /// Charges over gRPC.
    Payment(payment::Args),
    /// Sends realistic traffic to the gateway and prints a summary.
    Load(load::Args),
    /// Starts strand, the four services and the load; Ctrl-C stops them all.
    Demo(demo::Args),
}

impl Cli {
    /// Runs the chosen command until it ends (the services: until SIGINT or
    /// SIGTERM).
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Gateway(args) => gateway::run(args).await,
            Command::Order(args) => order::run(args).await,
            Command::Inventory(args) => inventory::run(args).await,
            Command::Payment(args) => payment::run(args).await,
            Command::Load(args) => load::run(args).await,
            Command::Demo(args) => demo::run(args).await,
        }
    }
}
