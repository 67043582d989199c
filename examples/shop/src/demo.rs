//! `shop demo`: the whole shop on one machine. Starts `strand` (the binary
//! next to this one) with its data in `./strand-data`, the four services
//! (this binary, with its subcommands) with their data in `./shop-data`,
//! waits until everything answers, places one order and prints the link to
//! its trace in the UI, starts the load and, on Ctrl-C, stops every child
//! with SIGTERM.
//!
//! A newcomer looks at the UI within seconds, so the services export metrics
//! every 10 s and spans every second, and Strand derives its span metrics
//! (the shop dashboard's) every 5 s: every service is on the dashboard well
//! within 30 s of the start.
//!
//! The services' logs go to `./shop-data/logs/<service>.log`; the load's
//! summary lines to the terminal.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::process::{Child, Command};

use crate::config;

/// `shop demo` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The strand binary [default: `strand` next to this binary]
    #[arg(long, env = "SHOP_STRAND_BIN")]
    pub strand: Option<PathBuf>,
    /// Steady requests per second of the load
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// The IP every process listens on: strand on its usual ports (UI 7070,
    /// OTLP 4317 and 4318), the services on 8080 to 8083. Another loopback
    /// address, e.g. 127.0.0.2, runs a second demo beside a first.
    #[arg(long, env = "SHOP_DEMO_LISTEN", default_value = "127.0.0.1")]
    pub listen: IpAddr,
}

/// A started child process, stopped with SIGTERM.
struct Running {
    name: &'static str,
    child: Child,
}

const UI_PORT: u16 = 7070;
const OTLP_GRPC_PORT: u16 = 4317;
const GATEWAY_PORT: u16 = 8080;
const ORDER_PORT: u16 = 8081;
const INVENTORY_PORT: u16 = 8082;
const PAYMENT_PORT: u16 = 8083;

/// Telemetry settings of the services unless the environment has its own
/// (the standard variables, in milliseconds): metrics every 10 s instead of
/// OpenTelemetry's 60 s, spans batched for 1 s instead of 5 s.
const SERVICE_TELEMETRY_ENV: [(&str, &str); 2] = [
    ("OTEL_METRIC_EXPORT_INTERVAL", "10000"),
    ("OTEL_BSP_SCHEDULE_DELAY", "1000"),
];
/// How often Strand writes the metrics it derives from spans (default 15 s).
const DERIVED_METRICS_INTERVAL: &str = "5s";

/// Runs the demo until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shop = std::env::current_exe().context("finding the shop binary")?;
    let strand = match &args.strand {
        Some(path) => path.clone(),
        None => shop
            .parent()
            .map(|dir| dir.join("strand"))
            .unwrap_or_else(|| PathBuf::from("strand")),
    };
    if !strand.is_file() {
        bail!(
            "no strand binary at {}: run `cargo build --release -p strand -p shop` and start target/release/shop demo",
            strand.display()
        );
    }
    let logs = Path::new("shop-data").join("logs");
    std::fs::create_dir_all(&logs).context("creating shop-data/logs")?;

    let mut children = Vec::new();
    let result = start_all(&shop, &strand, &logs, &args, &mut children).await;
    if let Err(error) = &result {
        eprintln!("demo: {error:#}");
    } else {
        config::shutdown_signal().await;
        println!("demo: stopping");
    }
    for running in children.iter_mut().rev() {
        stop(running).await;
    }
    result
}

/// The shop's rules (error ratio, latency, payment declines), written next
/// to `strand-data` for strand to load: the demo binary carries them.
const SHOP_RULES: &str = include_str!("../rules.yml");
const RULES_FILE: &str = "shop-rules.yml";

async fn start_all(
    shop: &Path,
    strand: &Path,
    logs: &Path,
    args: &Args,
    children: &mut Vec<Running>,
) -> anyhow::Result<()> {
    let url = |port: u16| format!("http://{}", SocketAddr::new(args.listen, port));
    let ui = url(UI_PORT);
    let gateway = url(GATEWAY_PORT);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let log_file = |name: &str| -> anyhow::Result<(Stdio, Stdio)> {
        let file = std::fs::File::create(logs.join(format!("{name}.log")))?;
        Ok((file.try_clone()?.into(), file.into()))
    };

    std::fs::write(RULES_FILE, SHOP_RULES).with_context(|| format!("writing {RULES_FILE}"))?;
    let (out, err) = log_file("strand")?;
    let child = Command::new(strand)
        .args(["serve", "--data-dir", "strand-data"])
        .args(["--rules", RULES_FILE])
        .args(["--listen", &args.listen.to_string()])
        .args(["--derived-metrics-interval", DERIVED_METRICS_INTERVAL])
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", strand.display()))?;
    children.push(Running {
        name: "strand",
        child,
    });
    wait_healthy(&http, "strand", &format!("{ui}/readyz"), children).await?;

    // Callees first, so that every caller finds its upstreams up.
    let services = [
        ("inventory", INVENTORY_PORT, vec![]),
        ("payment", PAYMENT_PORT, vec![]),
        (
            "order",
            ORDER_PORT,
            vec![
                "--inventory-url".to_string(),
                url(INVENTORY_PORT),
                "--payment-url".to_string(),
                url(PAYMENT_PORT),
            ],
        ),
        (
            "gateway",
            GATEWAY_PORT,
            vec![
                "--order-url".to_string(),
                url(ORDER_PORT),
                "--inventory-url".to_string(),
                url(INVENTORY_PORT),
            ],
        ),
    ];
    for (name, port, upstreams) in services {
        let (out, err) = log_file(name)?;
        let mut command = Command::new(shop);
        command
            .arg(name)
            .args(["--listen", &SocketAddr::new(args.listen, port).to_string()])
            .args(upstreams)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", url(OTLP_GRPC_PORT));
        for (var, value) in SERVICE_TELEMETRY_ENV {
            if std::env::var_os(var).is_none() {
                command.env(var, value);
            }
        }
        let child = command
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        children.push(Running { name, child });
        wait_healthy(&http, name, &format!("{}/health", url(port)), children).await?;
    }
    println!(
        "demo: strand and the four services are up (logs in {})",
        logs.display()
    );
    println!("demo: UI at {ui}, the shop's dashboard at {ui}/#/dashboard/shop");
    match example_order(&http, &gateway).await {
        Ok(trace_id) => {
            let whole = wait_for_trace(&http, &ui, &trace_id).await;
            let note = if whole {
                ""
            } else {
                " (its spans are still arriving)"
            };
            println!("demo: an order's trace{note}: {ui}/#/trace/{trace_id}");
        }
        Err(error) => println!("demo: could not place an example order: {error:#}"),
    }

    let child = Command::new(shop)
        .args(["load", "--rate", &args.rate.to_string()])
        .args(["--gateway-url", &gateway])
        .kill_on_drop(true)
        .spawn()
        .context("starting the load")?;
    children.push(Running {
        name: "load",
        child,
    });
    println!("demo: load running; Ctrl-C stops everything");
    Ok(())
}

/// Polls `url` until it answers 2xx (30 s at most), watching that the
/// process has not died meanwhile.
async fn wait_healthy(
    http: &reqwest::Client,
    name: &str,
    url: &str,
    children: &mut [Running],
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if let Some(running) = children.last_mut()
            && let Ok(Some(status)) = running.child.try_wait()
        {
            bail!(
                "{} exited ({status}); see shop-data/logs/{}.log",
                running.name,
                running.name
            );
        }
        if Instant::now() > deadline {
            bail!("{name} did not answer {url} within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Logs in as alice and places one order (a few tries: payment declines
/// some); returns the trace id the gateway reported.
async fn example_order(http: &reqwest::Client, gateway: &str) -> anyhow::Result<String> {
    let login: serde_json::Value = http
        .post(format!("{gateway}/api/login"))
        .json(&json!({"user": "alice", "password": "alice-password"}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["token"].as_str().context("no token from login")?;
    let mut last = String::new();
    for _ in 0..5 {
        let response = http
            .post(format!("{gateway}/api/orders"))
            .bearer_auth(token)
            .json(&json!({"items": [{"sku": "coffee-beans", "quantity": 1}]}))
            .send()
            .await?;
        let trace_id = response
            .headers()
            .get("x-trace-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let status = response.status();
        if status.as_u16() == 201
            && let Some(trace_id) = trace_id
        {
            return Ok(trace_id);
        }
        last = format!("{status}: {}", response.text().await.unwrap_or_default());
    }
    bail!("the order was not placed ({last})")
}

/// Waits (15 s at most) until Strand has spans of all four services in the
/// trace, so that its link shows the whole waterfall rather than "not found"
/// or a part; returns whether it does.
async fn wait_for_trace(http: &reqwest::Client, ui: &str, trace_id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(response) = http.get(format!("{ui}/api/traces/{trace_id}")).send().await
            && let Ok(body) = response.json::<serde_json::Value>().await
        {
            let services: HashSet<&str> = body["data"][0]["processes"]
                .as_object()
                .into_iter()
                .flat_map(|processes| processes.values())
                .filter_map(|process| process["serviceName"].as_str())
                .collect();
            if ["gateway", "order", "inventory", "payment"]
                .iter()
                .all(|service| services.contains(service))
            {
                return true;
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM, then up to 10 s for a clean exit, then SIGKILL.
async fn stop(running: &mut Running) {
    if let Some(pid) = running.child.id() {
        // SAFETY: kill(2) with a pid we spawned and have not reaped.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
    match tokio::time::timeout(Duration::from_secs(10), running.child.wait()).await {
        Ok(Ok(status)) => println!("demo: {} stopped ({status})", running.name),
        _ => {
            let _ = running.child.kill().await;
            println!("demo: {} killed after 10 s", running.name);
        }
    }
}
