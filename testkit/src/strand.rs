//! A running Strand daemon, in this process or as a child process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::pki::Issued;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long the daemon may take to start or to stop.
const START_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many of the last lines of its log a failed stop's message quotes.
const STOP_LOG_LINES: usize = 20;

/// The listen flags, each bound to loopback port 0 unless the test names
/// an address of its own.
const LISTEN_FLAGS: [&str; 3] = ["--otlp-grpc", "--otlp-http", "--http"];

/// A running daemon on `data_dir`; stopped (in-process) or killed (process)
/// when dropped.
pub struct Strand {
    pub data_dir: PathBuf,
    pub otlp_grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub http: SocketAddr,
    /// Sent as a bearer token by `get_json*`, for a daemon that needs one.
    read_token: Option<String>,
    /// Set when the daemon serves TLS: how this harness reaches it.
    pub tls: Option<ClientTls>,
    /// The client `get_json` and readiness use (trusting `tls`'s CA).
    client: reqwest::Client,
    runner: Runner,
}

/// How a client reaches a daemon serving TLS: the CA it trusts and, for
/// mutual TLS, the certificate it presents.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: String,
    pub identity: Option<Issued>,
}

impl ClientTls {
    /// A reqwest client builder trusting the CA (only it) and presenting the
    /// client certificate, if any.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("a PEM CA");
        let builder = reqwest::Client::builder().add_root_certificate(ca);
        match &self.identity {
            Some(identity) => builder.identity(
                reqwest::Identity::from_pem(identity.identity_pem().as_bytes())
                    .expect("a PEM client certificate and key"),
            ),
            None => builder,
        }
    }
}

/// The harness's client for a daemon serving `tls`, or plain text.
fn harness_client(tls: Option<&ClientTls>) -> reqwest::Client {
    tls.map_or_else(reqwest::Client::builder, ClientTls::client_builder)
        .build()
        .expect("an HTTP client")
}

enum Runner {
    /// `strand::run` on this process's runtime: starts in milliseconds and
    /// needs no binary, but cannot be killed and logs nowhere.
    InProcess {
        stop: Option<oneshot::Sender<()>>,
        run: Option<JoinHandle<anyhow::Result<()>>>,
    },
    /// The `strand` binary, its stderr in `log`.
    Process {
        child: Option<Child>,
        log: tempfile::NamedTempFile,
    },
}

impl Strand {
    /// Runs `strand serve --data-dir <data_dir> <args>` in this process, as a
    /// task on the caller's Tokio runtime, and waits until `/readyz` answers.
    /// The listeners are bound here, on 127.0.0.1 port 0 (unless `args` name
    /// an address), before the daemon starts: their addresses are known and
    /// no other test can take them.
    pub async fn start(data_dir: &Path, args: &[&str]) -> Strand {
        Strand::start_with_tls(data_dir, args, None).await
    }

    /// Like [`Strand::start`] for a daemon whose `args` turn TLS on: the
    /// harness (`url`, `get_json`, readiness) speaks https through `tls`.
    pub async fn start_tls(data_dir: &Path, args: &[&str], tls: ClientTls) -> Strand {
        Strand::start_with_tls(data_dir, args, Some(tls)).await
    }

    async fn start_with_tls(data_dir: &Path, args: &[&str], tls: Option<ClientTls>) -> Strand {
        let config = strand::Config::from_args(command_line(data_dir, args))
            .unwrap_or_else(|e| panic!("strand serve {args:?}: {e:#}"));
        let listeners = strand::Listeners::bind(&config)
            .await
            .unwrap_or_else(|e| panic!("strand's listeners: {e:#}"));
        let address = |listener: &tokio::net::TcpListener| listener.local_addr().unwrap();
        let (otlp_grpc, otlp_http, http) = (
            address(&listeners.otlp_grpc),
            address(&listeners.otlp_http),
            address(&listeners.http),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(strand::run(config, listeners, async {
            let _ = stopped.await;
        }));
        let mut strand = Strand {
            data_dir: data_dir.to_path_buf(),
            otlp_grpc,
            otlp_http,
            http,
            read_token: None,
            client: harness_client(tls.as_ref()),
            tls,
            runner: Runner::InProcess {
                stop: Some(stop),
                run: Some(run),
            },
        };
        strand.wait_ready().await;
        strand
    }

    /// Runs `<binary> serve --data-dir <data_dir> <args>` as a child process,
    /// for tests that `kill -9` the daemon or read its log, and waits until
    /// `/readyz` answers. It listens on 127.0.0.1 port 0 (unless `args` name
    /// an address) and its `StrandListening` log line says where.
    pub async fn spawn(binary: impl AsRef<Path>, data_dir: &Path, args: &[&str]) -> Strand {
        Strand::launch(binary.as_ref(), data_dir, args, "info", None).await
    }

    /// [`Strand::spawn`] with `log_filter` as the daemon's `STRAND_LOG`
    /// (e.g. `info,strand=debug`), for tests that wait for debug-level events.
    pub async fn spawn_logging(
        binary: impl AsRef<Path>,
        data_dir: &Path,
        args: &[&str],
        log_filter: &str,
    ) -> Strand {
        Strand::launch(binary.as_ref(), data_dir, args, log_filter, None).await
    }

    /// Like [`Strand::spawn`] for a daemon whose `args` turn TLS on: the
    /// harness speaks https through `tls`.
    pub async fn spawn_tls(
        binary: impl AsRef<Path>,
        data_dir: &Path,
        args: &[&str],
        tls: ClientTls,
    ) -> Strand {
        Strand::launch(binary.as_ref(), data_dir, args, "info", Some(tls)).await
    }

    async fn launch(
        binary: &Path,
        data_dir: &Path,
        args: &[&str],
        log_filter: &str,
        tls: Option<ClientTls>,
    ) -> Strand {
        let log = tempfile::NamedTempFile::new().expect("a log file");
        let child = Command::new(binary)
            .arg("serve")
            .args(command_line(data_dir, args))
            .env("STRAND_LOG", log_filter)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("{} does not start: {e}", binary.display()));
        let mut runner = Runner::Process {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + START_STOP_TIMEOUT;
        let [otlp_grpc, otlp_http, http] = loop {
            if let Some(addresses) = listening(&runner.log()) {
                break addresses;
            }
            runner.assert_running().await;
            assert!(
                Instant::now() < deadline,
                "strand did not listen within {START_STOP_TIMEOUT:?}:\n{}",
                runner.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut strand = Strand {
            data_dir: data_dir.to_path_buf(),
            otlp_grpc,
            otlp_http,
            http,
            read_token: None,
            client: harness_client(tls.as_ref()),
            tls,
            runner,
        };
        strand.wait_ready().await;
        strand
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_STOP_TIMEOUT;
        loop {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await
                && response.status().is_success()
            {
                return;
            }
            self.runner.assert_running().await;
            assert!(
                Instant::now() < deadline,
                "strand was not ready within {START_STOP_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `https` when the daemon serves TLS, else `http`.
    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// A URL on the API and UI port.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.http)
    }

    /// Where OTLP/gRPC exporters send.
    pub fn grpc_endpoint(&self) -> String {
        format!("{}://{}", self.scheme(), self.otlp_grpc)
    }

    /// A URL on the OTLP/HTTP port, e.g. `/v1/logs`.
    pub fn otlp_http_url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme(), self.otlp_http)
    }

    /// Makes `get_json*` send `token`, for a daemon started with tokens.
    pub fn set_read_token(&mut self, token: &str) {
        self.read_token = Some(token.to_string());
    }

    /// GET on the API port: the status and the JSON body (panics on a body
    /// that is not JSON).
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        self.get_json_query(path, &[]).await
    }

    /// Like [`Strand::get_json`], with query parameters (URL-encoded here).
    pub async fn get_json_query(&self, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self.client.get(self.url(path)).query(params);
        if let Some(token) = &self.read_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} {params:?}: {e}"));
        let status = response.status().as_u16();
        let body = response.text().await.expect("a body");
        let json = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET {path} {params:?}: not JSON ({e}): {body}"));
        (status, json)
    }

    /// The daemon's own metrics, as `/metrics` exposes them now (with the
    /// read token, if one was set).
    pub async fn self_metrics(&self) -> String {
        let mut request = self.client.get(self.url("/metrics"));
        if let Some(token) = &self.read_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}"));
        assert_eq!(response.status(), 200, "GET /metrics");
        response.text().await.expect("a body")
    }

    /// What the daemon logged so far (without ANSI colours), for failure
    /// messages and for tests that wait for an event.
    pub fn log(&self) -> String {
        self.runner.log()
    }

    /// Stops the daemon cleanly (in-process: resolves the shutdown future;
    /// process: SIGTERM) and fails unless it flushed and ended without error.
    pub async fn stop(mut self) {
        match &mut self.runner {
            Runner::InProcess { stop, run } => {
                let _ = stop.take().expect("running").send(());
                let run = run.take().expect("running");
                let result = tokio::time::timeout(START_STOP_TIMEOUT, run)
                    .await
                    .unwrap_or_else(|_| panic!("strand did not stop within {START_STOP_TIMEOUT:?}"))
                    .expect("strand::run does not panic");
                if let Err(error) = result {
                    panic!("strand stopped with an error: {error:#}");
                }
            }
            Runner::Process { child, log } => {
                let mut child = child.take().expect("running");
                let failure = match crate::terminate(&mut child, START_STOP_TIMEOUT) {
                    Some(status) if status.success() => return,
                    Some(status) => format!("strand exited with {status}"),
                    None => format!("strand did not stop within {START_STOP_TIMEOUT:?}"),
                };
                // The whole log goes to the test's output; the message keeps
                // to its end, which says why, so that a shortened report of
                // the run still shows it.
                let log = read_log(log);
                eprintln!("{failure}; its whole log:\n{log}");
                let lines: Vec<&str> = log.lines().collect();
                let end = lines[lines.len().saturating_sub(STOP_LOG_LINES)..].join("\n");
                panic!("{failure}; the end of its log:\n{end}");
            }
        }
    }

    /// The daemon's process id, for reading what the kernel knows of it
    /// (`/proc/<pid>/status`). Only a process has one.
    pub fn pid(&self) -> u32 {
        match &self.runner {
            Runner::InProcess { .. } => {
                panic!("only a process has a pid: start the daemon with Strand::spawn")
            }
            Runner::Process { child, .. } => child.as_ref().expect("running").id(),
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the daemon. Only a process
    /// can be signalled.
    pub fn signal(&self, signal: libc::c_int) {
        match &self.runner {
            Runner::InProcess { .. } => {
                panic!("signals need the daemon as a process: start it with Strand::spawn")
            }
            Runner::Process { child, .. } => {
                let child = child.as_ref().expect("running");
                // SAFETY: kill(2) on a child we spawned and have not reaped.
                let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
                assert_eq!(sent, 0, "kill({}, {signal})", child.id());
            }
        }
    }

    /// The process's exit status once it has ended by itself, for tests of
    /// what makes the daemon stop; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        match &mut self.runner {
            Runner::InProcess { .. } => {
                panic!("an exit status needs the daemon as a process: start it with Strand::spawn")
            }
            Runner::Process { child, .. } => child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("the child's status"),
        }
    }

    /// SIGKILL: no flush, no clean shutdown. Only a process can be killed.
    pub fn kill9(mut self) {
        match &mut self.runner {
            Runner::InProcess { .. } => {
                panic!("kill9 needs the daemon as a process: start it with Strand::spawn")
            }
            Runner::Process { child, .. } => {
                let mut child = child.take().expect("running");
                child.kill().expect("SIGKILL");
                child.wait().expect("the killed child's status");
            }
        }
    }
}

impl Runner {
    fn log(&self) -> String {
        match self {
            Runner::InProcess { .. } => "(the in-process daemon's log is not captured: \
                 start it with Strand::spawn to read it)"
                .to_string(),
            Runner::Process { log, .. } => read_log(log),
        }
    }

    /// Fails if the daemon has ended, with why.
    async fn assert_running(&mut self) {
        match self {
            Runner::InProcess { run, .. } => {
                if let Some(ended) = run.take_if(|run| run.is_finished()) {
                    match ended.await {
                        Ok(Ok(())) => panic!("strand::run returned before it was stopped"),
                        Ok(Err(error)) => panic!("strand::run failed: {error:#}"),
                        Err(panic) => panic!("strand::run panicked: {panic}"),
                    }
                }
            }
            Runner::Process { child, log } => {
                if let Some(status) = child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    panic!("strand exited with {status}:\n{}", read_log(log));
                }
            }
        }
    }
}

/// The daemon's log so far, without the ANSI colours its formatter may add,
/// so that tests match plain `field=value` text.
fn read_log(log: &tempfile::NamedTempFile) -> String {
    strip_ansi(&std::fs::read_to_string(log.path()).unwrap_or_default())
}

impl Drop for Strand {
    fn drop(&mut self) {
        match &mut self.runner {
            // The task flushes and ends on its own, or with the test's runtime.
            Runner::InProcess { stop, .. } => {
                if let Some(stop) = stop.take() {
                    let _ = stop.send(());
                }
            }
            Runner::Process { child, .. } => {
                if let Some(child) = child.as_mut() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// `--data-dir <data_dir>`, each listen flag `args` leaves out on
/// 127.0.0.1:0, then `args`.
fn command_line(data_dir: &Path, args: &[&str]) -> Vec<String> {
    let mut line = vec!["--data-dir".to_string(), data_dir.display().to_string()];
    for flag in LISTEN_FLAGS {
        let named = args
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")));
        if !named {
            line.extend([flag.to_string(), "127.0.0.1:0".to_string()]);
        }
    }
    line.extend(args.iter().map(|a| a.to_string()));
    line
}

/// The addresses of the `StrandListening` log line (`otlp_grpc=ADDR
/// otlp_http=ADDR http=ADDR`), once it is there.
fn listening(log: &str) -> Option<[SocketAddr; 3]> {
    let line = log.lines().find(|l| l.contains("StrandListening"))?;
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
            .and_then(|addr| addr.parse().ok())
    };
    Some([field("otlp_grpc")?, field("otlp_http")?, field("http")?])
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), which the
/// daemon's log may carry.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    plain
}
