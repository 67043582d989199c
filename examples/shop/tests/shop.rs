//! End-to-end tests: the four services as real processes on free ports,
//! driven through the gateway, with a real Strand receiving their telemetry.

mod common;

use std::time::{Duration, Instant};

use common::{
    DEADLINE, Shop, ShopOptions, Strand, eventually, now_secs, operations, services, token,
};
use serde_json::{Value, json};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_across_all_four_services() {
    let strand = Strand::start().await;
    let shop = Shop::start(ShopOptions {
        otlp_endpoint: Some(strand.otlp_endpoint()),
        ..Default::default()
    })
    .await;
    let client = reqwest::Client::new();
    let alice = shop.login("alice").await;

    let response = order(&client, &shop, &alice, "coffee-beans", 2).await;
    assert_eq!(response.status(), 201);
    let trace_id = response.headers()["x-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().expect("an order id").to_string();
    assert_eq!(created["total_cents"], 2 * 1890);
    assert_eq!(created["status"], "confirmed");

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
    let all_four = ["gateway", "inventory", "order", "payment"];
    let found = eventually(DEADLINE, || async {
        let search = strand
            .get_json("/api/traces?service=gateway&lookback=1h&limit=100")
            .await?;
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
    let trace = strand
        .get_json(&format!("/api/traces/{trace_id}"))
        .await
        .expect("the trace by id");
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
        let search = strand
            .get_json(
                "/api/traces?service=inventory&operation=process%20orders&lookback=1h&limit=100",
            )
            .await?;
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
    let mut limited = None;
    for _ in 0..20 {
        let response = client
            .get(shop.url("/api/products"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let limited = limited.expect("alice hit the rate limit within 20 requests");
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
