//! A newcomer's first minutes, in headless Chromium: the trace link that
//! `shop demo` prints opens that order's waterfall; within 30 s of the demo's
//! start the shop dashboard and the metrics explorer show all four services;
//! the explorer's known metric names are links that run their query; the
//! service map keeps its arrow labels clear of the boxes and of each other,
//! and draws red only what fails more than the threshold in its legend.
//!
//! The demo tests run the real `shop` binary, which Cargo builds here beside
//! `strand` (the collector cannot depend on the shop: the shop's tests depend
//! on the collector). Each demo listens on a loopback address of its own, so
//! it never meets another demo on the usual ports. The browser harness and
//! what it needs are in `strand_testkit::browser`.

use std::cell::RefCell;
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use strand_testkit::browser::{Client, Locator, in_browser, snapshot, wait_for};
use strand_testkit::{Strand, eventually};

use crate::support::remote_write as rw;
use crate::support::shop_fixture::send_shop_calls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_names_are_links_that_run_their_query() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let samples: Vec<(i64, f64)> = (0..20)
        .map(|i| (now_ms - 300_000 + i * 15_000, i as f64))
        .collect();
    let series = |service| rw::series("newcomer_orders_total", &[("service", service)], &samples);
    rw::write_ok(
        &daemon,
        &rw::request(vec![series("order"), series("payment")]),
    )
    .await;

    in_browser("ui-newcomer-metric-names", |client| async move {
        client
            .goto(&daemon.url("/#/metrics"))
            .await
            .map_err(|e| e.to_string())?;
        let offered = wait_for(
            &client,
            "the known metric names",
            "const p = document.querySelector('.metrics-out .metric-browser');
             return p && { text: p.textContent,
                           names: [...p.querySelectorAll('button.link')].map(b => b.textContent) }",
            |v| v["names"].as_array().is_some_and(|n| !n.is_empty()),
        )
        .await?;
        snapshot(&client, "newcomer-metric-names").await;
        let text = offered["text"].as_str().unwrap_or("");
        if text.contains("[object")
            || !offered["names"]
                .as_array()
                .unwrap()
                .contains(&json!("newcomer_orders_total"))
        {
            return Err(format!("the names are not offered as names: {offered}"));
        }

        let name = client
            .find(Locator::XPath(
                "//section[contains(@class,'metric-browser')]//button[text()='newcomer_orders_total']",
            ))
            .await
            .map_err(|e| format!("no button for the metric: {e}"))?;
        name.click().await.map_err(|e| e.to_string())?;
        let ran = wait_for(
            &client,
            "the metric's query",
            "return { hash: decodeURIComponent(location.hash),
                      query: document.querySelector('form .query')?.value,
                      series: document.querySelectorAll('.series-table .legend-row').length }",
            |v| v["series"] == 2,
        )
        .await?;
        if ran["query"] != "newcomer_orders_total"
            || !ran["hash"]
                .as_str()
                .unwrap_or("")
                .contains("query=newcomer_orders_total")
        {
            return Err(format!("clicking the name did not run its query: {ran}"));
        }
        Ok(())
    })
    .await;
}

/// Every label's and node's box on the page, and the pairs that overlap.
const MAP_BOXES: &str = "const box = (el) => { const r = el.getBoundingClientRect();
        return { x: r.x, y: r.y, w: r.width, h: r.height }; };
    const labels = [...document.querySelectorAll('.map-edge')].map(e => ({
        name: 'label ' + e.dataset.client + '->' + e.dataset.server, ...box(e.querySelector('.label-bg')) }));
    const nodes = [...document.querySelectorAll('.map-node')].map(n => ({
        name: 'node ' + n.dataset.service, ...box(n.querySelector('.box')) }));
    const meet = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
    const overlaps = [];
    labels.forEach((a, i) => [...labels.slice(i + 1), ...nodes].forEach(b => {
        if (meet(a, b)) overlaps.push(a.name + ' / ' + b.name); }));
    return { labels: labels.length, nodes: nodes.length, overlaps,
             sized: labels.every(l => l.w > 20 && l.h > 10),
             rated: [...document.querySelectorAll('.map-edge')].every(e => e.dataset.rate !== '') }";

/// What is red, and the threshold the legend shows.
const MAP_RED: &str = "return {
    threshold: document.querySelector('.map-legend input[name=threshold]')?.value,
    legend: document.querySelector('.map-legend')?.textContent,
    hash: location.hash,
    red: [...document.querySelectorAll('.map-node.error')].map(n => n.dataset.service)
         .concat([...document.querySelectorAll('.map-edge.error')]
                 .map(e => e.dataset.client + '->' + e.dataset.server)).sort() }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_map_labels_stay_clear_and_red_follows_the_threshold() {
    let dir = tempfile::tempdir().unwrap();
    // Derived metrics every second, so the numbers follow the spans at once.
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--derived-metrics-interval", "1s"],
    )
    .await;
    // 3% of payment's calls fail: under the default 5%, over 1%.
    send_shop_calls(&daemon, 100, 3).await;

    in_browser("ui-newcomer-map", |client| async move {
        client
            .goto(&daemon.url("/#/map?range=15m"))
            .await
            .map_err(|e| e.to_string())?;
        let boxes = wait_for(&client, "the map's labels", MAP_BOXES, |v| {
            v["labels"] == 4 && v["nodes"] == 4 && v["sized"] == true && v["rated"] == true
        })
        .await?;
        snapshot(&client, "newcomer-map").await;
        if boxes["overlaps"] != json!([]) {
            return Err(format!("labels overlap: {boxes}"));
        }

        let red = client
            .execute(MAP_RED, vec![])
            .await
            .map_err(|e| e.to_string())?;
        let legend = red["legend"].as_str().unwrap_or("");
        if red["threshold"] != "5"
            || !legend.contains("% of requests failed")
            || red["red"] != json!([])
        {
            return Err(format!("at the default 5% nothing should be red: {red}"));
        }
        set_threshold(&client, "1").await?;
        let over = json!(["order->payment", "payment"]);
        let red = wait_for(&client, "red above 1%", MAP_RED, |v| v["red"] == over).await?;
        if !red["hash"].as_str().unwrap_or("").contains("threshold=1") {
            return Err(format!("the threshold is not in the URL: {red}"));
        }
        snapshot(&client, "newcomer-map-threshold").await;
        // A reload (or a shared link) keeps it.
        client.refresh().await.map_err(|e| e.to_string())?;
        wait_for(&client, "the threshold after a reload", MAP_RED, |v| {
            v["threshold"] == "1" && v["red"] == over
        })
        .await?;
        Ok(())
    })
    .await;
}

async fn set_threshold(client: &Client, percent: &str) -> Result<(), String> {
    let input = client
        .find(Locator::Css(".map-legend input[name=threshold]"))
        .await
        .map_err(|e| format!("no threshold input: {e}"))?;
    input.clear().await.map_err(|e| e.to_string())?;
    input.send_keys(percent).await.map_err(|e| e.to_string())
}

/// The shop's services, in the order the UI lists them.
const SERVICES: [&str; 4] = ["gateway", "inventory", "order", "payment"];

/// How soon after `shop demo` starts a newcomer sees every service.
const ALL_SERVICES_WITHIN: Duration = Duration::from_secs(30);

/// One demo at a time: two would share the two cores and blur the 30 s.
static ONE_DEMO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_trace_link_opens_the_waterfall_of_its_order() {
    let _turn = ONE_DEMO.lock().await;
    let demo = Demo::start(1);
    let link = demo
        .line_after("demo: an order's trace: ", Duration::from_secs(60))
        .await;
    let ui = demo.ui();
    assert!(
        link.starts_with(&format!("{ui}/#/trace/")),
        "the demo printed {link:?}, not a link to the UI's trace view at {ui}\n{}",
        demo.output()
    );
    let trace_id = link.rsplit('/').next().unwrap().to_string();
    in_browser("ui-newcomer-trace-link", |client| async move {
        client.goto(&link).await.map_err(|e| e.to_string())?;
        let shown = wait_for(
            &client,
            "the order's waterfall",
            "return { hash: location.hash,
                      spans: document.querySelectorAll('.waterfall .span-row').length,
                      services: [...document.querySelectorAll('.trace-head .legend .chip')]
                                  .map(c => c.dataset.service).sort() }",
            |v| v["spans"].as_u64().is_some_and(|n| n >= 4) && v["services"] == json!(SERVICES),
        )
        .await?;
        snapshot(&client, "newcomer-trace-link").await;
        if !shown["hash"].as_str().unwrap_or("").contains(&trace_id) {
            return Err(format!("the waterfall is not of trace {trace_id}: {shown}"));
        }
        Ok(())
    })
    .await;
}

/// The shop dashboard's panels: title and the services each charts.
const DASHBOARD: &str = "return [...document.querySelectorAll('.panel')].map(p => ({
    title: p.querySelector('h2').innerText,
    services: [...p.querySelectorAll('.legend-item')].map(li => li.children[1].textContent).sort() }))";

/// The metrics explorer's series names.
const EXPLORER: &str = "return [...document.querySelectorAll('.series-table .legend-row code')]
    .map(c => c.textContent).sort()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_dashboard_and_metrics_explorer_show_every_service_within_30s() {
    let _turn = ONE_DEMO.lock().await;
    let demo = Demo::start(2);
    let ui = demo.ui();
    let deadline = demo.started + ALL_SERVICES_WITHIN;
    let demo = &demo;
    in_browser("ui-newcomer-dashboard", |client| async move {
        let late = |what: &str, last: Value| {
            format!(
                "{what} did not show all four services within {ALL_SERVICES_WITHIN:?} of the \
                 demo's start; last saw {last}\n{}",
                demo.output()
            )
        };
        // The views reload themselves every 5 s (the header's auto refresh).
        client
            .goto(&format!("{ui}/#/dashboard/shop?refresh=5s"))
            .await
            .map_err(|e| e.to_string())?;
        shown_by(&client, DASHBOARD, deadline, |v| {
            v.as_array().is_some_and(|panels| {
                panels.len() == 5 && panels.iter().all(|p| p["services"] == json!(SERVICES))
            })
        })
        .await
        .map_err(|last| late("the shop dashboard", last))?;
        snapshot(&client, "newcomer-dashboard").await;

        // The explorer: each service's own metrics (target_info, one series
        // per resource that sent metrics), as a newcomer would look them up.
        let query = "count by (job) (target_info)";
        client
            .goto(&format!(
                "{ui}/#/metrics?refresh=5s&query={}",
                strand_testkit::urlencode(query)
            ))
            .await
            .map_err(|e| e.to_string())?;
        shown_by(&client, EXPLORER, deadline, |v| {
            v.as_array()
                .is_some_and(|jobs| SERVICES.iter().all(|s| jobs.contains(&json!(s))))
        })
        .await
        .map_err(|last| late("the metrics explorer", last))?;
        snapshot(&client, "newcomer-explorer").await;
        Ok(())
    })
    .await;
}

/// Runs `script` until `check` accepts its value or `deadline` passes; then
/// the last value it saw.
async fn shown_by(
    client: &Client,
    script: &str,
    deadline: Instant,
    check: impl Fn(&Value) -> bool,
) -> Result<(), Value> {
    let last = RefCell::new(Value::Null);
    let shown = eventually(
        deadline.saturating_duration_since(Instant::now()),
        || async {
            let value = client.execute(script, vec![]).await.ok()?;
            let accepted = check(&value);
            *last.borrow_mut() = value;
            accepted.then_some(())
        },
    )
    .await;
    shown.ok_or_else(|| last.into_inner())
}

/// `shop demo` running in a temporary directory on a loopback address of
/// its own; stopped with SIGTERM (which stops its children) when dropped.
struct Demo {
    child: Child,
    ip: Ipv4Addr,
    started: Instant,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Demo {
    /// Starts the demo on 127.<pid>.<n>: `n` tells the tests of one run apart.
    fn start(n: u8) -> Demo {
        let shop = shop_binary();
        let pid = std::process::id();
        let ip = Ipv4Addr::new(127, 100 + (pid % 100) as u8, (pid / 100 % 250) as u8, n);
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let mut child = Command::new(shop)
            .args(["demo", "--listen", &ip.to_string()])
            .args(["--strand", env!("CARGO_BIN_EXE_strand")])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("shop demo starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        // Read both streams to the end: the demo's load keeps printing.
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Demo {
            child,
            ip,
            started,
            lines,
            _dir: dir,
        }
    }

    fn ui(&self) -> String {
        format!("http://{}:7070", self.ip)
    }

    fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The rest of the first output line that starts with `prefix`.
    async fn line_after(&self, prefix: &str, timeout: Duration) -> String {
        let found = eventually(timeout, || async {
            let lines = self.lines.lock().unwrap();
            lines
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_string)
        })
        .await;
        found.unwrap_or_else(|| {
            panic!(
                "the demo printed no {prefix:?} within {timeout:?}:\n{}",
                self.output()
            )
        })
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        strand_testkit::terminate(&mut self.child, Duration::from_secs(60));
    }
}

/// The `shop` binary beside `strand` in Cargo's target directory, built
/// (or found up to date) once per run with the same profile.
fn shop_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = Path::new(env!("CARGO_BIN_EXE_strand")).parent().unwrap();
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev",
                Some(other) => other,
            };
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "shop", "--bin", "shop"])
                .args(["--profile", profile])
                .arg("--target-dir")
                .arg(profile_dir.parent().unwrap())
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "cargo could not build the shop");
            profile_dir.join("shop")
        })
        .clone()
}
