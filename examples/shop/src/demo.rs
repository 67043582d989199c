//! `shop demo`: the whole shop on one machine. Starts `strand` (the binary
//! next to this one) with its data in `./strand-data`, the four services
//! (this binary, with its subcommands) with their data in `./shop-data`,
//! waits until everything answers, places one order to show a trace link,
//! starts the load and, on Ctrl-C, stops every child with SIGTERM.
//!
//! The services' logs go to `./shop-data/logs/<service>.log`; the load's
//! summary lines to the terminal.

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
}

/// A started child process, stopped with SIGTERM.
struct Running {
    name: &'static str,
    child: Child,
}

const UI: &str = "http://127.0.0.1:7070";
const GATEWAY: &str = "http://127.0.0.1:8080";

/// Runs the demo until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shop = std::env::current_exe().context("finding the shop binary")?;
    let strand = match args.strand {
        Some(path) => path,
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
    let result = start_all(&shop, &strand, &logs, args.rate, &mut children).await;
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

async fn start_all(
    shop: &Path,
    strand: &Path,
    logs: &Path,
    rate: f64,
    children: &mut Vec<Running>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let log_file = |name: &str| -> anyhow::Result<(Stdio, Stdio)> {
        let file = std::fs::File::create(logs.join(format!("{name}.log")))?;
        Ok((file.try_clone()?.into(), file.into()))
    };

    let (out, err) = log_file("strand")?;
    let child = Command::new(strand)
        .args(["serve", "--data-dir", "strand-data"])
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", strand.display()))?;
    children.push(Running {
        name: "strand",
        child,
    });
    wait_healthy(&http, "strand", &format!("{UI}/readyz"), children).await?;

    for (name, port) in [
        ("inventory", 8082),
        ("payment", 8083),
        ("order", 8081),
        ("gateway", 8080),
    ] {
        let (out, err) = log_file(name)?;
        let child = Command::new(shop)
            .arg(name)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        children.push(Running { name, child });
        wait_healthy(
            &http,
            name,
            &format!("http://127.0.0.1:{port}/health"),
            children,
        )
        .await?;
    }
    println!(
        "demo: strand and the four services are up (logs in {})",
        logs.display()
    );
    println!("demo: UI at {UI}");
    match example_order(&http).await {
        Ok(trace_id) => println!("demo: an order's trace: {UI}/api/traces/{trace_id}"),
        Err(error) => println!("demo: could not place an example order: {error:#}"),
    }

    let child = Command::new(shop)
        .args(["load", "--rate", &rate.to_string()])
        .env("SHOP_GATEWAY_URL", GATEWAY)
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
async fn example_order(http: &reqwest::Client) -> anyhow::Result<String> {
    let login: serde_json::Value = http
        .post(format!("{GATEWAY}/api/login"))
        .json(&json!({"user": "alice", "password": "alice-password"}))
        .send()
        .await?
        .json()
        .await?;
    let token = login["token"].as_str().context("no token from login")?;
    let mut last = String::new();
    for _ in 0..5 {
        let response = http
            .post(format!("{GATEWAY}/api/orders"))
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
