//! The load generator: logs the demo users in, then sends a steady stream
//! of requests to the gateway with a burst now and then (enough to hit the
//! rate limit), mixing valid, expired, forged and missing tokens, and
//! orders for a sold-out product. Prints one summary line every few seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

use crate::config;
use crate::gateway::{AUDIENCE, Claims, DEMO_SECRET, DEMO_USERS};

/// `shop load` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Base URL of the gateway
    #[arg(
        long,
        env = "SHOP_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub gateway_url: String,
    /// Steady requests per second
    #[arg(long, env = "SHOP_LOAD_RATE", default_value_t = 5.0)]
    pub rate: f64,
    /// Seconds between bursts (0: no bursts)
    #[arg(long, env = "SHOP_LOAD_BURST_EVERY", default_value_t = 20)]
    pub burst_every: u64,
    /// Requests in one burst, all from one user
    #[arg(long, env = "SHOP_LOAD_BURST_SIZE", default_value_t = 80)]
    pub burst_size: u32,
    /// Stop after this many seconds (0: run until Ctrl-C)
    #[arg(long, env = "SHOP_LOAD_DURATION", default_value_t = 0)]
    pub duration: u64,
    /// Seconds between summary lines
    #[arg(long, env = "SHOP_LOAD_REPORT_EVERY", default_value_t = 5)]
    pub report_every: u64,
    /// The gateway's token secret, to make expired-but-genuine tokens
    #[arg(long, env = "SHOP_JWT_SECRET", default_value = DEMO_SECRET, hide_env_values = true)]
    pub jwt_secret: String,
}

/// What the load has seen, by outcome.
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    unauthorized: AtomicU64,
    declined: AtomicU64,
    out_of_stock: AtomicU64,
    limited: AtomicU64,
    server_errors: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
    latency_ms_total: AtomicU64,
    latency_ms_max: AtomicU64,
}

struct Load {
    http: reqwest::Client,
    base: String,
    /// Current valid tokens of the demo users.
    tokens: Mutex<Vec<(String, String)>>,
    expired: String,
    forged: String,
    recent_orders: Mutex<Vec<(String, String)>>,
    stats: Stats,
    inflight: Arc<Semaphore>,
}

/// Runs the load until Ctrl-C or `--duration`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.rate <= 0.0 {
        anyhow::bail!("--rate must be positive");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let now = config::now_millis() / 1000;
    let sign = |secret: &str, sub: &str, exp: u64| {
        let claims = Claims {
            sub: sub.into(),
            aud: AUDIENCE.into(),
            iat: now.saturating_sub(3600),
            exp,
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
    };
    let load = Arc::new(Load {
        http,
        base: args.gateway_url.trim_end_matches('/').to_string(),
        tokens: Mutex::new(Vec::new()),
        expired: sign(&args.jwt_secret, "alice", now.saturating_sub(600))?,
        forged: sign("not-the-secret", "mallory", now + 3600)?,
        recent_orders: Mutex::new(Vec::new()),
        stats: Stats::default(),
        inflight: Arc::new(Semaphore::new(256)),
    });
    load.login_all().await;
    println!(
        "load: {} req/s against {}, bursts of {} every {}s; Ctrl-C stops",
        args.rate, load.base, args.burst_size, args.burst_every
    );

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    let mut report = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    report.tick().await;
    let mut next_burst = Instant::now() + Duration::from_secs(args.burst_every.max(1));
    let mut last_sent = 0;
    let mut last_report = Instant::now();
    let shutdown = config::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                load.clone().spawn_one(None);
                if args.burst_every > 0 && Instant::now() >= next_burst {
                    next_burst = Instant::now() + Duration::from_secs(args.burst_every);
                    let user = load.tokens.lock().await.first().cloned();
                    for _ in 0..args.burst_size {
                        load.clone().spawn_one(user.clone());
                    }
                }
            }
            _ = report.tick() => {
                let sent = load.stats.sent.load(Ordering::Relaxed);
                let rate = (sent - last_sent) as f64 / last_report.elapsed().as_secs_f64();
                (last_sent, last_report) = (sent, Instant::now());
                println!("{}", load.stats.summary(rate));
                if args.duration > 0 && started.elapsed() >= Duration::from_secs(args.duration) {
                    break;
                }
            }
        }
    }
    let _ = load.inflight.acquire_many(256).await;
    println!("{} (final)", load.stats.summary(0.0));
    Ok(())
}

impl Load {
    async fn login_all(&self) {
        let mut tokens = Vec::new();
        for (user, password) in DEMO_USERS {
            match self.login(user, password).await {
                Some(token) => tokens.push((user.to_string(), token)),
                None => eprintln!("load: login of {user} failed; is the gateway up?"),
            }
        }
        *self.tokens.lock().await = tokens;
    }

    async fn login(&self, user: &str, password: &str) -> Option<String> {
        let response = self
            .http
            .post(format!("{}/api/login", self.base))
            .json(&json!({"user": user, "password": password}))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        body["token"].as_str().map(str::to_string)
    }

    /// Sends one request in its own task; `as_user` pins the user (bursts).
    fn spawn_one(self: Arc<Self>, as_user: Option<(String, String)>) {
        let Ok(permit) = self.inflight.clone().try_acquire_owned() else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        tokio::spawn(async move {
            self.one(as_user).await;
            drop(permit);
        });
    }

    async fn one(&self, as_user: Option<(String, String)>) {
        let roll = rand::random::<f64>();
        let valid = match as_user {
            Some(user) => Some(user),
            None => {
                let tokens = self.tokens.lock().await;
                match tokens.len() {
                    0 => None,
                    n => Some(tokens[rand::random_range(0..n)].clone()),
                }
            }
        };
        // 85 % good tokens, then expired, forged and missing ones.
        let (user, token) = match (roll, valid) {
            (r, Some(valid)) if r < 0.85 => (Some(valid.0), Some(valid.1)),
            (r, _) if r < 0.90 => (None, Some(self.expired.clone())),
            (r, _) if r < 0.95 => (None, Some(self.forged.clone())),
            _ => (None, None),
        };
        let kind = rand::random::<f64>();
        let request = if kind < 0.3 {
            self.http.get(format!("{}/api/products", self.base))
        } else if kind < 0.85 {
            let sku = match rand::random::<f64>() {
                r if r < 0.1 => "vinyl-rare",
                r if r < 0.4 => "coffee-beans",
                r if r < 0.6 => "filter-papers",
                r if r < 0.75 => "espresso-cup",
                r if r < 0.9 => "kettle",
                _ => "grinder",
            };
            self.http
                .post(format!("{}/api/orders", self.base))
                .json(&json!({"items": [{"sku": sku, "quantity": rand::random_range(1..4)}]}))
        } else {
            let recent = self.recent_orders.lock().await;
            let id = recent
                .iter()
                .rev()
                .find(|(owner, _)| Some(owner) == user.as_ref())
                .map_or("ord-unknown".to_string(), |(_, id)| id.clone());
            self.http.get(format!("{}/api/orders/{id}", self.base))
        };
        let request = match &token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let started = Instant::now();
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        let response = request.send().await;
        let elapsed = started.elapsed().as_millis() as u64;
        self.stats
            .latency_ms_total
            .fetch_add(elapsed, Ordering::Relaxed);
        self.stats
            .latency_ms_max
            .fetch_max(elapsed, Ordering::Relaxed);
        let Ok(response) = response else {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let status = response.status().as_u16();
        let counter = match status {
            200..=299 => &self.stats.ok,
            401 => &self.stats.unauthorized,
            402 => &self.stats.declined,
            409 => &self.stats.out_of_stock,
            429 => &self.stats.limited,
            500..=599 => &self.stats.server_errors,
            _ => &self.stats.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if status == 201
            && let (Some(user), Ok(body)) = (user, response.json::<serde_json::Value>().await)
            && let Some(id) = body["id"].as_str()
        {
            let mut recent = self.recent_orders.lock().await;
            recent.push((user, id.to_string()));
            if recent.len() > 100 {
                recent.remove(0);
            }
        } else if status == 401 && token.is_some() && roll < 0.85 {
            // Our own token expired: log in again.
            self.login_all().await;
        }
    }
}

impl Stats {
    fn summary(&self, rate: f64) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sent = get(&self.sent).max(1);
        format!(
            "load: {rate:6.1} req/s | sent {} | 2xx {} | 401 {} | 402 {} | 409 {} | 429 {} | 5xx {} | other {} | failed {} | latency avg {} ms max {} ms",
            get(&self.sent),
            get(&self.ok),
            get(&self.unauthorized),
            get(&self.declined),
            get(&self.out_of_stock),
            get(&self.limited),
            get(&self.server_errors),
            get(&self.other),
            get(&self.failed),
            get(&self.latency_ms_total) / sent,
            get(&self.latency_ms_max),
        )
    }
}
