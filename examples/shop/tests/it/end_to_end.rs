//! End-to-end tests: the four services as real processes on free ports,
//! driven through the gateway, with a real Strand receiving their telemetry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strand_testkit::{DEADLINE, Strand, eventually};

use crate::support::{
    STRAND_ARGS, Shop, ShopOptions, now_secs, operations, services, token, wait_healthy,
};

const SECRET: &str = "strand-shop-demo-secret";

async fn order(
    client: &reqwest::Client,
    shop: &Shop,
    token: &str,
    sku: &str,
    quantity: u32,
) -> reqwest::Response {
    client
        .post(shop.url("/api/orders"))
        .bearer_auth(token)
        .json(&json!({"items": [{"sku": sku, "quantity": quantity}]}))
        .send()
        .await
        .expect("gateway answers")
}

/// The logs of a trace, from Strand's log API.
async fn trace_logs(strand: &Strand, trace_id: &str) -> Option<Vec<Value>> {
    let (_, body) = strand
        .get_json(&format!("/api/traces/{trace_id}/logs"))
        .await;
    body["logs"].as_array().cloned()
}

/// The services that wrote `logs`, sorted, each once.
fn services_of(logs: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = logs
        .iter()
        .filter_map(|log| log["service"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The `job` labels of the series an instant PromQL query returns.
async fn jobs_of(strand: &Strand, query: &str) -> Option<Vec<String>> {
    let (_, body) = strand
        .get_json_query("/api/v1/query", &[("query", query)])
        .await;
    Some(
        body["data"]["result"]
            .as_array()?
            .iter()
            .filter_map(|series| series["metric"]["job"].as_str().map(str::to_string))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_across_all_four_services() {
    let dir = tempfile::tempdir().unwrap();
    let strand = Strand::start(dir.path(), STRAND_ARGS).await;
    let shop = Shop::start(ShopOptions {
        otlp_endpoint: Some(strand.grpc_endpoint()),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let alice = shop.login("alice").await;

    let response = order(&client, &shop, &alice, "coffee-beans", 2).await;
    let ordered = Instant::now();
    assert_eq!(response.status(), 201);
    let trace_id = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().expect("an order id").to_string();
    assert_eq!(created["total_cents"], 2 * 1890);
    assert_eq!(created["status"], "confirmed");

    // Within 5 s of the order, its logs from every service are found by
    // its trace id, and every service's request rate is in PromQL.
    let all_four = ["gateway", "inventory", "order", "payment"];
    let soon = Duration::from_secs(5).saturating_sub(ordered.elapsed());
    let logs = eventually(soon, || async {
        let logs = trace_logs(&strand, &trace_id).await?;
        (services_of(&logs) == all_four).then_some(logs)
    })
    .await;
    let logs = match logs {
        Some(logs) => logs,
        None => {
            let logs = trace_logs(&strand, &trace_id).await.unwrap_or_default();
            panic!(
                "within 5s, trace {trace_id} had logs only from {:?}",
                services_of(&logs)
            )
        }
    };
    assert!(
        logs.iter().all(|log| log["traceId"] == trace_id.as_str()),
        "{logs:?}"
    );
    for (service, event) in [
        ("gateway", "GatewayOrderForwarded"),
        ("order", "OrderCreated"),
        ("inventory", "StockReserved"),
        ("payment", "PaymentCaptured"),
    ] {
        assert!(
            logs.iter()
                .any(|log| log["service"] == service && log["body"] == event),
            "no {event:?} log of {service} in {logs:?}"
        );
    }
    // HTTP services report http.server.request.duration, payment (gRPC)
    // rpc.server.call.duration; `job` is the service's name.
    let rates = [
        (
            "sum by (job) (rate(http_server_request_duration_seconds_count[1m]))",
            &["gateway", "inventory", "order"][..],
        ),
        (
            "sum by (job) (rate(rpc_server_call_duration_seconds_count[1m]))",
            &["payment"][..],
        ),
    ];
    for (query, jobs) in rates {
        let soon = Duration::from_secs(5).saturating_sub(ordered.elapsed());
        let found = eventually(soon, || async {
            let seen = jobs_of(&strand, query).await?;
            jobs.iter()
                .all(|job| seen.iter().any(|s| s == job))
                .then_some(())
        })
        .await;
        assert!(
            found.is_some(),
            "within 5s of the order, {query} had series for {:?}, not all of {jobs:?}",
            jobs_of(&strand, query).await
        );
    }

    let read = client
        .get(shop.url(&format!("/api/orders/{id}")))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["id"], id.as_str());
    assert_eq!(read["user"], "alice");

    // Someone else's order is not there for bob.
    let bob = shop.login("bob").await;
    let theirs = client
        .get(shop.url(&format!("/api/orders/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 404);

    // A sold-out product: 409 with the reason, passed through the gateway.
    let sold_out = order(&client, &shop, &alice, "vinyl-rare", 1).await;
    assert_eq!(sold_out.status(), 409);
    let body: Value = sold_out.json().await.unwrap();
    assert_eq!(body["error"], "out_of_stock", "{body}");

    // The order's trace, found by searching the gateway's traces.
    let found = eventually(DEADLINE, || async {
        let (_, search) = strand
            .get_json("/api/traces?service=gateway&lookback=1h&limit=100")
            .await;
        let trace = search["data"]
            .as_array()?
            .iter()
            .find(|t| t["traceID"] == trace_id.as_str())?
            .clone();
        (services(&trace) == all_four).then_some(trace)
    })
    .await;
    assert!(
        found.is_some(),
        "no trace {trace_id} with spans of all four services"
    );
    let (status, trace) = strand.get_json(&format!("/api/traces/{trace_id}")).await;
    assert_eq!(status, 200, "the trace by id: {trace}");
    let trace = &trace["data"][0];
    assert_eq!(services(trace), all_four);
    let operations = operations(trace);
    for expected in [
        "POST /api/orders",
        "POST /orders",
        "POST /reservations",
        "shop.payment.v1.Payment/Charge",
        "send orders",
    ] {
        assert!(
            operations.iter().any(|o| o == expected),
            "no {expected:?} in {operations:?}"
        );
    }

    // The OrderCreated event reached inventory: its consumer span has its
    // own trace and a FOLLOWS_FROM reference to the order's trace.
    let consumed = eventually(DEADLINE, || async {
        let (_, search) = strand
            .get_json(
                "/api/traces?service=inventory&operation=process%20orders&lookback=1h&limit=100",
            )
            .await;
        search["data"].as_array()?.iter().find_map(|trace| {
            trace["spans"]
                .as_array()?
                .iter()
                .find(|span| {
                    span["references"].as_array().is_some_and(|refs| {
                        refs.iter().any(|r| {
                            r["refType"] == "FOLLOWS_FROM" && r["traceID"] == trace_id.as_str()
                        })
                    })
                })
                .cloned()
        })
    })
    .await;
    assert!(
        consumed.is_some(),
        "no consumer span linked to trace {trace_id}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_with_a_reason() {
    let shop = Shop::start(ShopOptions::default()).await;
    let client = reqwest::Client::new();
    let get = |token: Option<String>| {
        let request = client.get(shop.url("/api/products"));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.expect("gateway answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    let later = now_secs() + 600;
    let cases = [
        (None, "missing_token"),
        (
            Some(token("not-the-secret", "alice", "shop", later)),
            "token_invalid_signature",
        ),
        (
            Some(token(SECRET, "alice", "shop", now_secs() - 60)),
            "token_expired",
        ),
        (
            Some(token(SECRET, "alice", "elsewhere", later)),
            "token_invalid_audience",
        ),
        (Some("not.a.jwt".to_string()), "token_invalid"),
    ];
    for (token, reason) in cases {
        assert_eq!(get(token).await, (401, reason.to_string()));
    }
    // A genuine token gets through.
    let good = token(SECRET, "alice", "shop", later);
    assert_eq!(get(Some(good)).await.0, 200);

    let wrong_password = client
        .post(shop.url("/api/login"))
        .json(&json!({"user": "alice", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_password.status(), 401);
}

/// Lists products as `token` until the gateway answers 429 (every answer
/// before it must be 200), and returns that answer.
async fn until_rate_limited(
    client: &reqwest::Client,
    shop: &Shop,
    token: &str,
) -> reqwest::Response {
    for _ in 0..20 {
        let response = client
            .get(shop.url("/api/products"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            return response;
        }
        assert_eq!(response.status(), 200);
    }
    panic!("no 429 within 20 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_is_rate_limited_with_retry_after() {
    let shop = Shop::start(ShopOptions {
        gateway_args: ["--rate-per-second", "1", "--burst", "5"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let alice = shop.login("alice").await;
    let limited = until_rate_limited(&client, &shop, &alice).await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After: {retry_after}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");

    // Another client has its own bucket.
    let bob = shop.login("bob").await;
    let response = client
        .get(shop.url("/api/products"))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_gives_a_quick_503() {
    let mut shop = Shop::start(ShopOptions::default()).await;
    let client = reqwest::Client::new();
    let alice = shop.login("alice").await;
    assert_eq!(
        order(&client, &shop, &alice, "kettle", 1).await.status(),
        201
    );

    shop.payment.kill();
    let started = Instant::now();
    let response = order(&client, &shop, &alice, "kettle", 1).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("payment"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    shop.inventory.kill();
    let started = Instant::now();
    let response = client
        .get(shop.url("/api/products"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("inventory"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // SIGTERM stops a service cleanly.
    let status = shop.order.terminate().expect("order exits on SIGTERM");
    assert!(status.success(), "order exited with {status}");
}

/// The gateway trace with status `status` whose id is `trace_id`, found by
/// searching the gateway's traces by the `http.response.status_code` tag.
async fn find_by_status(strand: &Strand, status: &str, trace_id: &str) -> Option<Value> {
    let tags = json!({"http.response.status_code": status}).to_string();
    let (_, search) = strand
        .get_json_query(
            "/api/traces",
            &[
                ("service", "gateway"),
                ("tags", &tags),
                ("lookback", "1h"),
                ("limit", "100"),
            ],
        )
        .await;
    search["data"]
        .as_array()?
        .iter()
        .find(|t| t["traceID"] == trace_id)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_are_traced_with_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let strand = Strand::start(dir.path(), STRAND_ARGS).await;
    let shop = Shop::start(ShopOptions {
        otlp_endpoint: Some(strand.grpc_endpoint()),
        gateway_args: ["--rate-per-second", "1", "--burst", "5"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let trace_of = |response: &reqwest::Response| {
        response.headers()["x-trace-id"]
            .to_str()
            .unwrap()
            .to_string()
    };

    let forged = token("not-the-secret", "alice", "shop", now_secs() + 600);
    let response = client
        .get(shop.url("/api/products"))
        .bearer_auth(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let unauthorized = trace_of(&response);

    let alice = shop.login("alice").await;
    let limited = trace_of(&until_rate_limited(&client, &shop, &alice).await);

    for (status, trace_id) in [("401", &unauthorized), ("429", &limited)] {
        let trace = eventually(DEADLINE, || find_by_status(&strand, status, trace_id)).await;
        let trace = trace.unwrap_or_else(|| {
            panic!("no gateway trace {trace_id} found by http.response.status_code={status}")
        });
        assert_eq!(services(&trace), ["gateway"]);
        let code: i64 = status.parse().unwrap();
        let server_span = trace["spans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|span| span["operationName"] == "GET /api/products")
            .unwrap_or_else(|| panic!("no GET /api/products span in {trace}"));
        assert!(
            server_span["tags"].as_array().unwrap().iter().any(|tag| {
                tag["key"] == "http.response.status_code"
                    && (tag["value"] == code || tag["value"] == status)
            }),
            "{server_span}"
        );
    }
    // The search is by status: the 401 is not among the 429s.
    assert!(
        find_by_status(&strand, "429", &unauthorized)
            .await
            .is_none()
    );
}

/// What the client saw for one order.
struct Attempt {
    started: Instant,
    took: Duration,
    status: u16,
    body: Value,
}

/// Reads `<dir>/<service>`'s sled tree `tree` (the service must be stopped)
/// as key → JSON value or string.
fn read_tree(dir: &std::path::Path, service: &str, tree: &str) -> Vec<(String, Value)> {
    let db = sled::open(dir.join(service)).expect("the service's database");
    let tree = db.open_tree(tree).expect("the tree");
    tree.iter()
        .map(|entry| {
            let (key, value) = entry.expect("an entry");
            let key = String::from_utf8_lossy(&key).to_string();
            let value = serde_json::from_slice(&value)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&value).to_string()));
            (key, value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payment_crashing_mid_run_keeps_orders_consistent() {
    let mut shop = Shop::start(ShopOptions {
        gateway_args: ["--rate-per-second", "10000", "--burst", "10000"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await;
    let alice = shop.login("alice").await;
    let (attempts_tx, mut attempts) = tokio::sync::mpsc::unbounded_channel::<Attempt>();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Clients ordering back to back until told to stop.
    const CLIENTS: usize = 2;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (url, token, tx, stop) = (
                shop.url("/api/orders"),
                alice.clone(),
                attempts_tx.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"items": [{"sku": "filter-papers", "quantity": 1}]}))
                        .send()
                        .await
                        .expect("the gateway answers");
                    let status = response.status().as_u16();
                    let body = response.json().await.unwrap_or_default();
                    let took = started.elapsed();
                    if tx
                        .send(Attempt {
                            started,
                            took,
                            status,
                            body,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(attempts_tx);
    let mut seen = Vec::new();
    // Waits until an attempt started after `since` has `status`.
    async fn until(
        attempts: &mut tokio::sync::mpsc::UnboundedReceiver<Attempt>,
        seen: &mut Vec<Attempt>,
        since: Instant,
        status: u16,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, attempts.recv()).await {
                Ok(Some(attempt)) => {
                    let done = attempt.started >= since && attempt.status == status;
                    seen.push(attempt);
                    if done {
                        return true;
                    }
                }
                _ => return false,
            }
        }
    }

    let start = Instant::now();
    for _ in 0..10 {
        assert!(
            until(&mut attempts, &mut seen, start, 201).await,
            "orders go through before the crash"
        );
    }
    shop.payment.kill();
    let killed = Instant::now();
    // Down for at least a second of continuous ordering.
    assert!(
        until(
            &mut attempts,
            &mut seen,
            killed + Duration::from_secs(1),
            503
        )
        .await,
        "503s while payment is down"
    );
    let restarting = Instant::now();
    shop.payment.restart();
    wait_healthy(&shop.payment).await;
    let restarted = Instant::now();
    assert!(
        until(&mut attempts, &mut seen, restarted, 201).await,
        "orders go through again after payment restarts"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(attempt) = attempts.recv().await {
        seen.push(attempt);
    }
    for client in clients {
        client.await.unwrap();
    }

    for attempt in &seen {
        assert!(
            matches!(attempt.status, 201 | 503),
            "answered {}: {}",
            attempt.status,
            attempt.body
        );
        // While payment is surely down: quick 503s with a reason.
        if attempt.started >= killed && attempt.started + attempt.took < restarting {
            assert_eq!(attempt.status, 503, "{}", attempt.body);
            assert_eq!(attempt.body["error"], "upstream_unavailable");
            assert!(
                attempt.took < Duration::from_secs(2),
                "a 503 took {:?}",
                attempt.took
            );
        }
    }

    // Every order answered 201 is readable as confirmed, with its payment.
    let client = reqwest::Client::new();
    let created: Vec<&Value> = seen
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| &a.body)
        .collect();
    for order in &created {
        let id = order["id"].as_str().expect("an order id");
        let read = client
            .get(shop.url(&format!("/api/orders/{id}")))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 200, "order {id}");
        let read: Value = read.json().await.unwrap();
        assert_eq!(read["status"], "confirmed");
        assert_eq!(read["payment_id"], order["payment_id"]);
    }

    // Every order answered 503 is named in the answer and gets settled:
    // cancelled, its charge (if the charge was taken before the reply was
    // lost) refunded.
    let unsettled: Vec<&str> = seen
        .iter()
        .filter(|a| a.status == 503)
        .map(|a| {
            a.body["order_id"]
                .as_str()
                .unwrap_or_else(|| panic!("a 503 without its order: {}", a.body))
        })
        .collect();
    for id in &unsettled {
        let settled = eventually(Duration::from_secs(30), || async {
            let read: Value = client
                .get(shop.url(&format!("/api/orders/{id}")))
                .bearer_auth(&alice)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (read["status"] == "cancelled").then_some(())
        })
        .await;
        assert!(
            settled.is_some(),
            "order {id} answered 503 is never settled"
        );
    }

    // Order's and payment's own records agree: the confirmed orders are
    // exactly those answered 201, each with a charge of the same payment id;
    // every charge belongs to a confirmed order; every cancelled order is
    // cancelled at payment too (refunded with its payment id, or voided);
    // nothing is left pending.
    let order_status = shop.order.terminate().expect("order stops");
    assert!(order_status.success());
    let payment_status = shop.payment.terminate().expect("payment stops");
    assert!(payment_status.success());
    let stored: BTreeMap<String, Value> = read_tree(shop.data_dir(), "order", "orders")
        .into_iter()
        .collect();
    let charges: BTreeMap<String, Value> = read_tree(shop.data_dir(), "payment", "charges")
        .into_iter()
        .collect();
    let cancelled_at_payment: BTreeMap<String, Value> =
        read_tree(shop.data_dir(), "payment", "cancelled")
            .into_iter()
            .collect();
    assert!(read_tree(shop.data_dir(), "order", "pending").is_empty());
    let with_status = |status: &str| -> Vec<&str> {
        stored
            .iter()
            .filter(|(_, order)| order["status"] == status)
            .map(|(id, _)| id.as_str())
            .collect()
    };
    let mut answered: Vec<&str> = created.iter().map(|o| o["id"].as_str().unwrap()).collect();
    answered.sort();
    assert_eq!(
        with_status("confirmed"),
        answered,
        "confirmed orders vs orders answered 201"
    );
    let mut cancelled = with_status("cancelled");
    let mut expected_cancelled = unsettled.clone();
    cancelled.sort();
    expected_cancelled.sort();
    assert_eq!(cancelled, expected_cancelled, "cancelled vs answered 503");
    assert_eq!(
        stored.len(),
        answered.len() + unsettled.len(),
        "orders in other states: {stored:?}"
    );
    for id in &answered {
        assert_eq!(
            charges.get(*id),
            Some(&stored[*id]["payment_id"]),
            "order {id} is stored as paid without its charge"
        );
    }
    let orphans: Vec<&String> = charges
        .keys()
        .filter(|id| stored[id.as_str()]["status"] != "confirmed")
        .collect();
    assert!(
        orphans.is_empty(),
        "charges without a confirmed order: {orphans:?}"
    );
    let mut refunds = 0;
    for id in &unsettled {
        let record = cancelled_at_payment
            .get(*id)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("order {id} is cancelled but not at payment"));
        match record.strip_prefix("refunded:") {
            Some(payment_id) => {
                refunds += 1;
                assert_eq!(stored[*id]["payment_id"], payment_id, "order {id}");
            }
            None => assert_eq!(record, "voided", "order {id}"),
        }
    }
    let failed = seen.iter().filter(|a| a.status == 503).count();
    eprintln!(
        "{} orders created, {failed} answered 503 ({refunds} refunded), payment down for {:?}",
        created.len(),
        restarting - killed
    );
}

/// The products' available stock by sku.
async fn available(client: &reqwest::Client, shop: &Shop, token: &str) -> BTreeMap<String, u64> {
    let products: Value = client
        .get(shop.url("/api/products"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    products
        .as_array()
        .expect("a product list")
        .iter()
        .map(|p| {
            (
                p["sku"].as_str().unwrap().to_string(),
                p["available"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_whose_reply_is_lost_is_refunded() {
    // Payment takes 3 s, order gives up after 2 s: the charge is captured
    // after the client was told 503. Order settles it after 6 s.
    let mut shop = Shop::start(ShopOptions {
        payment_slow_ms: Some(3000),
        order_args: ["--settle-after-ms", "6000"].map(String::from).to_vec(),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let alice = shop.login("alice").await;
    let before = available(&client, &shop, &alice).await;

    let response = order(&client, &shop, &alice, "kettle", 1).await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
    let id = body["order_id"]
        .as_str()
        .expect("the order is named")
        .to_string();
    let read = |client: reqwest::Client| {
        let (url, alice, id) = (
            shop.url(&format!("/api/orders/{id}")),
            alice.clone(),
            id.clone(),
        );
        async move {
            let response = client.get(url).bearer_auth(alice).send().await.ok()?;
            assert_eq!(response.status(), 200, "order {id}");
            response.json::<Value>().await.ok()
        }
    };
    let pending = read(client.clone()).await.unwrap();
    assert_eq!(pending["status"], "pending", "{pending}");

    let cancelled = eventually(Duration::from_secs(30), || async {
        let order = read(client.clone()).await?;
        (order["status"] == "cancelled").then_some(order)
    })
    .await
    .expect("the pending order is settled");
    let payment_id = cancelled["payment_id"].as_str().unwrap().to_string();
    assert!(payment_id.starts_with("pay-"), "refunded: {cancelled}");
    assert!(
        cancelled["reason"].as_str().unwrap().contains("refunded"),
        "{cancelled}"
    );
    // The stock comes back once the order is cancelled.
    let restored = eventually(Duration::from_secs(10), || async {
        (available(&client, &shop, &alice).await == before).then_some(())
    })
    .await;
    assert!(restored.is_some(), "stock not released");

    assert!(shop.order.terminate().expect("order stops").success());
    assert!(shop.payment.terminate().expect("payment stops").success());
    assert!(read_tree(shop.data_dir(), "payment", "charges").is_empty());
    let cancelled_at_payment: BTreeMap<String, Value> =
        read_tree(shop.data_dir(), "payment", "cancelled")
            .into_iter()
            .collect();
    assert_eq!(
        cancelled_at_payment.get(&id),
        Some(&Value::String(format!("refunded:{payment_id}")))
    );
}
