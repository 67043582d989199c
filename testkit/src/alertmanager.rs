//! A real Alertmanager (Debian's `prometheus-alertmanager`) as a child
//! process, for the alerting tests: one route that sends every alert, each
//! in its own group, to a webhook this harness serves, so a test sees both
//! what Alertmanager holds (its v2 API) and what it notified (firing, then
//! resolved). No cluster, its own storage; killed when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pki::TestCa;
use crate::{free_port, require_tool};

/// A running Alertmanager; killed when dropped.
pub struct Alertmanager {
    child: Child,
    /// Its base URL, what `strand --alertmanager` takes.
    pub url: String,
    log: PathBuf,
    /// Speaks to it (trusting its CA when it serves https).
    client: reqwest::Client,
    webhook: Webhook,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager on a free port and waits until it is ready.
    /// Notifications go out 1 s after an alert arrives or changes
    /// (`group_wait`, `group_interval`), resolved ones included.
    pub async fn start() -> Alertmanager {
        Alertmanager::launch(None).await
    }

    /// [`Alertmanager::start`] serving https, with a server certificate
    /// for 127.0.0.1 that `ca` issues.
    pub async fn start_tls(ca: &TestCa) -> Alertmanager {
        Alertmanager::launch(Some(ca)).await
    }

    async fn launch(ca: Option<&TestCa>) -> Alertmanager {
        let binary = match std::env::var_os("ALERTMANAGER_BIN") {
            Some(path) => PathBuf::from(path),
            None => require_tool(
                "prometheus-alertmanager",
                "this test runs a real Alertmanager \
                 (Debian: `sudo apt-get install prometheus-alertmanager`)",
            ),
        };
        let webhook = Webhook::serve();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: webhook\n  group_by: ['...']\n  group_wait: 1s\n  \
                 group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: webhook\n    webhook_configs:\n      \
                 - url: {}\n        send_resolved: true\n",
                webhook.url
            ),
        )
        .unwrap();
        let port = free_port().port();
        let log = dir.path().join("alertmanager.log");
        let mut command = Command::new(binary);
        let mut client = reqwest::Client::builder();
        let scheme = match ca {
            Some(ca) => {
                let (cert, key) = ca.server("alertmanager", 1).write(dir.path(), "server");
                let web = dir.path().join("web.yml");
                std::fs::write(
                    &web,
                    format!(
                        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                        cert.display(),
                        key.display()
                    ),
                )
                .unwrap();
                command.arg(format!("--web.config.file={}", web.display()));
                client = client.add_root_certificate(
                    reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap(),
                );
                "https"
            }
            None => "http",
        };
        let child = command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus-alertmanager starts");
        let mut alertmanager = Alertmanager {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            log,
            client: client.build().unwrap(),
            webhook,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = alertmanager
                .client
                .get(format!("{}/-/ready", alertmanager.url))
                .send()
                .await
                && response.status().is_success()
            {
                return alertmanager;
            }
            if let Some(status) = alertmanager.child.try_wait().unwrap() {
                panic!("alertmanager exited with {status}:\n{}", alertmanager.log());
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager was not ready within 60s:\n{}",
                alertmanager.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The alerts Alertmanager holds, from `GET /api/v2/alerts?<filter>`
    /// (e.g. `active=true`, or `filter=alertname="X"`; "" for its
    /// defaults). Its API leaves out alerts whose `endsAt` has passed: a
    /// resolved alert is absent.
    pub async fn alerts(&self, filter: &str) -> Vec<Value> {
        let url = format!("{}/api/v2/alerts?{filter}", self.url);
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .expect("alertmanager answers");
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        let alerts: Value = response.json().await.expect("a JSON answer");
        alerts.as_array().cloned().unwrap_or_default()
    }

    /// Every alert of every notification Alertmanager sent so far, in
    /// order: each with its `status` (`firing`, `resolved`), `labels`,
    /// `annotations`, `startsAt`, `endsAt` and `generatorURL`.
    pub fn notified(&self) -> Vec<Value> {
        self.webhook
            .received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|notification| {
                notification["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// What Alertmanager logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 server on a thread of its own that keeps the JSON
/// body of every request and answers 200: Alertmanager's webhook receiver.
struct Webhook {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Webhook {
    fn serve() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let received = received.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for connection in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(connection) = connection {
                        let received = received.clone();
                        std::thread::spawn(move || serve_connection(connection, &received));
                    }
                }
            });
        }
        Webhook {
            url,
            received,
            stop,
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accepting thread so it sees `stop`.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://").trim_end_matches('/'));
    }
}

/// Reads requests off one (keep-alive) connection until the peer closes it.
fn serve_connection(connection: TcpStream, received: &Mutex<Vec<Value>>) {
    let mut writer = match connection.try_clone() {
        Ok(writer) => writer,
        Err(_) => return,
    };
    let mut reader = BufReader::new(connection);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(json) = serde_json::from_slice(&body) {
            received.lock().unwrap().push(json);
        }
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}
