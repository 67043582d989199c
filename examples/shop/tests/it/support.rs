//! The four shop services as real processes (the `shop` binary Cargo built
//! for these tests) on free ports, and what the tests ask of them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use strand_testkit::{DEADLINE, eventually, free_port};

/// Strand's flags in these tests: it flushes often, so that a service's logs
/// are searchable within the 5 s the first test allows.
pub const STRAND_ARGS: &[&str] = &["--flush-interval", "200ms"];

/// One shop service process; killed on drop. Its output goes to a log file
/// that is printed if the test fails.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Option<Child>,
    log: PathBuf,
    /// How it was started, for `restart`.
    data: PathBuf,
    flags: Vec<String>,
    env: Vec<(String, String)>,
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again (after `kill` or `terminate`) on the same
    /// address, with the same flags and data directory; its output is
    /// appended to the same log.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is still running", self.name);
        self.child = Some(start_process(
            self.name,
            self.addr,
            &self.data,
            &self.flags,
            &self.env,
            &self.log,
        ));
    }

    /// Sends SIGTERM and waits (up to the deadline) for the exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        strand_testkit::terminate(&mut child, DEADLINE)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last lines of {} ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// How to start the shop.
#[derive(Default)]
pub struct ShopOptions {
    /// Where telemetry goes (nowhere that answers by default).
    pub otlp_endpoint: Option<String>,
    /// Extra flags for the gateway.
    pub gateway_args: Vec<String>,
    /// Extra flags for order.
    pub order_args: Vec<String>,
    /// Makes every charge this slow (milliseconds); none is slow by default.
    pub payment_slow_ms: Option<u64>,
}

/// The four services on free ports with their data in a temporary directory.
pub struct Shop {
    pub inventory: Service,
    pub payment: Service,
    pub order: Service,
    pub gateway: Service,
    _data: tempfile::TempDir,
}

impl Shop {
    /// Starts inventory, payment, order and gateway (no injected faults) and
    /// waits until each answers `/health`.
    pub async fn start(options: ShopOptions) -> Shop {
        let data = tempfile::tempdir().expect("temporary directory");
        let endpoint = options
            .otlp_endpoint
            .unwrap_or_else(|| format!("http://{}", free_port()));
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("RUST_LOG", "info"),
        ];
        let spawn =
            |name: &'static str, flags: Vec<String>| spawn_service(name, data.path(), &flags, &env);
        let inventory = spawn(
            "inventory",
            strings(&["--fail-rate", "0", "--slow-rate", "0"]),
        );
        let (slow_rate, slow_ms) = match options.payment_slow_ms {
            Some(ms) => ("1", ms.to_string()),
            None => ("0", "0".to_string()),
        };
        let payment = spawn(
            "payment",
            strings(&[
                "--decline-rate",
                "0",
                "--fail-rate",
                "0",
                "--slow-rate",
                slow_rate,
                "--slow-ms",
                &slow_ms,
            ]),
        );
        let mut order_flags = strings(&[
            "--inventory-url",
            &inventory.url(""),
            "--payment-url",
            &payment.url(""),
            "--upstream-timeout-ms",
            "2000",
        ]);
        order_flags.extend(options.order_args);
        let order = spawn("order", order_flags);
        let mut gateway_flags = strings(&[
            "--order-url",
            &order.url(""),
            "--inventory-url",
            &inventory.url(""),
        ]);
        gateway_flags.extend(options.gateway_args);
        let gateway = spawn("gateway", gateway_flags);
        let shop = Shop {
            inventory,
            payment,
            order,
            gateway,
            _data: data,
        };
        for service in [&shop.inventory, &shop.payment, &shop.order, &shop.gateway] {
            wait_healthy(service).await;
        }
        shop
    }

    /// Where the services keep their data (`<dir>/<service>`).
    pub fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// A URL on the gateway.
    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// Logs `user` in (password `<user>-password`) and returns the token.
    pub async fn login(&self, user: &str) -> String {
        let response = reqwest::Client::new()
            .post(self.url("/api/login"))
            .json(&json!({"user": user, "password": format!("{user}-password")}))
            .send()
            .await
            .expect("gateway answers");
        assert_eq!(response.status(), 200, "login of {user}");
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().expect("a token").to_string()
    }
}

fn strings(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| s.to_string()).collect()
}

/// Starts `shop <name> --listen <free port> --data-dir <dir>/<name> <flags>`.
pub fn spawn_service(
    name: &'static str,
    data: &Path,
    flags: &[String],
    env: &[(&str, &str)],
) -> Service {
    let addr = free_port();
    let log = data.join(format!("{name}.log"));
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let child = start_process(name, addr, data, flags, &env, &log);
    Service {
        name,
        addr,
        child: Some(child),
        log,
        data: data.to_path_buf(),
        flags: flags.to_vec(),
        env,
    }
}

fn start_process(
    name: &str,
    addr: SocketAddr,
    data: &Path,
    flags: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_shop"))
        .arg(name)
        .arg("--listen")
        .arg(addr.to_string())
        .args(if name == "gateway" {
            Vec::new()
        } else {
            vec![
                "--data-dir".to_string(),
                data.join(name).display().to_string(),
            ]
        })
        .args(flags)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log file"))
        .stderr(file)
        .spawn()
        .expect("the shop binary starts")
}

/// Waits until `service` answers `GET /health` with 200.
pub async fn wait_healthy(service: &Service) {
    let healthy = eventually(DEADLINE, || async {
        let response = reqwest::get(service.url("/health")).await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    assert!(
        healthy.is_some(),
        "{} did not become healthy within {DEADLINE:?}",
        service.name
    );
}

/// A token signed with `secret` for `sub`, audience `aud`, expiring at `exp`
/// (seconds since the epoch).
pub fn token(secret: &str, sub: &str, aud: &str, exp: u64) -> String {
    let claims = json!({"sub": sub, "aud": aud, "iat": exp.saturating_sub(900), "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a signed token")
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The service names of a Jaeger trace.
pub fn services(trace: &Value) -> Vec<String> {
    let mut names: Vec<String> = trace["processes"]
        .as_object()
        .map(|processes| {
            processes
                .values()
                .filter_map(|p| p["serviceName"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

/// The operation names of a Jaeger trace.
pub fn operations(trace: &Value) -> Vec<String> {
    trace["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .filter_map(|s| s["operationName"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
