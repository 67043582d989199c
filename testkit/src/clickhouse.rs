//! A real ClickHouse (Debian's `clickhouse-server`, 18.16 in bookworm) as
//! child processes, for the tests of Strand's ClickHouse storage: one server
//! ([`ClickHouse::start`]) or a cluster of one-replica shards
//! ([`ClickHouseCluster::start`]) that a `Distributed` table spreads over.
//! Each server has its own temporary directory (data, tmp, user files,
//! format schemas, log) and a config the harness writes: the `default` user
//! without a password, listening on 127.0.0.1 only, on free ports, with small
//! caches and pools for a 2-core test machine. Killed (SIGKILL) when dropped;
//! a test can also [`stop`](ClickHouse::stop) a server and
//! [`restart`](ClickHouse::restart) it on the same ports and data, to see
//! what a query does while a shard is down.
//!
//! # No `ON CLUSTER`
//!
//! ClickHouse 18.16 runs distributed DDL (`CREATE ... ON CLUSTER`) through
//! ZooKeeper, and these servers have none: such a query fails (`Code: 49,
//! ... DDL background thread is not initialized.`). A test creates the
//! shard-local tables on every server itself (`for shard in &cluster.shards
//! { shard.query(...) }`), then the `Distributed(strand_test, db,
//! table_local, sharding_key)` table on the server(s) it queries through.
//!
//! # 18.16 as observed
//!
//! - It ignores config keys it does not know (a newer one, like
//!   `max_server_memory_usage`, silently does nothing) but refuses to start
//!   on a settings-profile entry it does not know (`Unknown setting ...`):
//!   the harness's profile holds only settings 18.16 has.
//! - An HTTP error is a 4xx or 5xx whose body is `Code: N, e.displayText()
//!   = DB::Exception: ..., e.what() = DB::Exception`; no
//!   `X-ClickHouse-Exception-Code` or `X-ClickHouse-Summary` header.
//! - A `SELECT` through a `Distributed` table with a shard down fails at
//!   once (`Code: 279, ... All connection tries failed`, each try's
//!   `Connection refused (127.0.0.1:PORT)` inside). With
//!   `skip_unavailable_shards = 1` it answers 200 with the live shards'
//!   rows, and nothing in the answer says it is partial.
//! - `SETTINGS` clauses work on `SELECT`, not on `INSERT`: settings go as
//!   URL parameters ([`ClickHouse::query_with`]).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, require_tool};

/// How long a server may take to answer `/ping` before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running ClickHouse server; killed and its directory removed when
/// dropped.
pub struct ClickHouse {
    /// Its HTTP interface, `http://127.0.0.1:PORT`: where a Strand under
    /// test sends queries and inserts, and what [`ClickHouse::query`] uses.
    pub url: String,
    /// Its native-protocol (TCP) port: what a cluster's `remote_servers`
    /// names, and `clickhouse-client --port` takes.
    pub tcp_port: u16,
    /// `None` while [`ClickHouse::stop`]ped.
    child: Option<Child>,
    binary: PathBuf,
    config: PathBuf,
    /// The server's own log (it logs to a file, not to stderr).
    log: PathBuf,
    /// Its stderr, where it reports what happens before its logger is up
    /// (a config it cannot parse).
    stderr: PathBuf,
    client: reqwest::Client,
    dir: tempfile::TempDir,
    /// Its HTTPS port, with [`ClickHouse::start_tls`].
    https_port: Option<u16>,
}

/// The ports one server listens on, all chosen before any config is written
/// (a cluster's configs name each other's ports).
#[derive(Clone, Copy)]
struct Ports {
    http: u16,
    tcp: u16,
    interserver: u16,
}

impl ClickHouse {
    /// Starts one server on free loopback ports and waits until `GET /ping`
    /// answers `Ok.`. Panics with the tail of its log if it does not within
    /// 60 s, and when `clickhouse-server` is not installed: a test that
    /// needs ClickHouse fails without it, it does not skip.
    pub async fn start() -> ClickHouse {
        let ports = distinct_ports(1)[0];
        ClickHouse::launch(ports, "").await
    }

    /// Starts one server that also serves HTTPS with `certificate` and its
    /// private `key` (PEM files, e.g. from `TestCa::server`) on the port of
    /// [`ClickHouse::https_url`]; the plain HTTP port stays for the harness.
    pub async fn start_tls(certificate: &std::path::Path, key: &std::path::Path) -> ClickHouse {
        let ports = distinct_ports(2);
        let https = ports[1].http;
        let extra = format!(
            r#"<https_port>{https}</https_port>
    <openSSL>
        <server>
            <certificateFile>{}</certificateFile>
            <privateKeyFile>{}</privateKeyFile>
            <verificationMode>none</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>"#,
            certificate.display(),
            key.display()
        );
        let mut server = ClickHouse::launch(ports[0], &extra).await;
        server.https_port = Some(https);
        server
    }

    /// The server's HTTPS interface, `https://localhost:PORT` (the name
    /// `TestCa::server` certificates carry), when started with
    /// [`ClickHouse::start_tls`].
    pub fn https_url(&self) -> Option<String> {
        self.https_port
            .map(|port| format!("https://localhost:{port}"))
    }

    /// Starts a server whose config.xml carries `extra` (XML elements under
    /// `<yandex>`) besides the harness's own settings.
    async fn launch(ports: Ports, extra: &str) -> ClickHouse {
        let binary = binary();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["data", "tmp", "user_files", "format_schemas", "log"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let log = root.join("log/clickhouse-server.log");
        let config = root.join("config.xml");
        std::fs::write(&config, config_xml(root, &log, ports, extra)).unwrap();
        std::fs::write(root.join("users.xml"), USERS_XML).unwrap();
        let mut server = ClickHouse {
            url: format!("http://127.0.0.1:{}", ports.http),
            tcp_port: ports.tcp,
            child: None,
            binary,
            config,
            log,
            stderr: root.join("log/stderr.log"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            dir,
            https_port: None,
        };
        server.spawn_and_wait().await;
        server
    }

    /// Kills the server (SIGKILL, as a crash would) and keeps its directory:
    /// [`ClickHouse::restart`] brings it back with its data. For tests of
    /// what Strand does while a shard is down.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports, config and data after
    /// [`ClickHouse::stop`] (stopping it first if it runs), and waits until
    /// it is ready, as [`ClickHouse::start`] does.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait().await;
    }

    async fn spawn_and_wait(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)
            .unwrap();
        let child = Command::new(&self.binary)
            .arg(format!("--config-file={}", self.config.display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(response) = self.client.get(format!("{}/ping", self.url)).send().await
                && response.status().is_success()
                && response.text().await.is_ok_and(|body| body.trim() == "Ok.")
            {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!("clickhouse-server exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "clickhouse-server was not ready within {}s:\n{}",
                READY_TIMEOUT.as_secs(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `sql` over HTTP (POST, the body is the query) and returns the
    /// answer (`TabSeparated` unless the query says `FORMAT`). Panics with
    /// the server's error text when the query fails: for a test's setup
    /// and checks, where a failure is the test's failure.
    pub async fn query(&self, sql: &str) -> String {
        self.query_with(sql, &[]).await
    }

    /// [`ClickHouse::query`] with query-level settings (e.g.
    /// `("insert_distributed_sync", "1")`), sent as URL parameters: 18.16
    /// takes a `SETTINGS` clause on `SELECT` but not on `INSERT`.
    pub async fn query_with(&self, sql: &str, settings: &[(&str, &str)]) -> String {
        self.try_query(sql, settings)
            .await
            .unwrap_or_else(|error| panic!("ClickHouse at {} failed `{sql}`: {error}", self.url))
    }

    /// Runs `sql` with `settings` as [`ClickHouse::query_with`] does, but
    /// returns a failure instead of panicking: `Err` holds the server's
    /// error text (`Code: 279, e.displayText() = DB::Exception: ...`), or
    /// the transport error when the server does not answer. For tests of
    /// how failures look, e.g. a `Distributed` query with a shard down.
    pub async fn try_query(&self, sql: &str, settings: &[(&str, &str)]) -> Result<String, String> {
        let response = self
            .client
            .post(format!("{}/", self.url))
            .query(settings)
            .body(sql.to_owned())
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| format!("{status}, body unreadable: {e}"))?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(body.trim_end().to_owned())
        }
    }

    /// The server's process id while it runs, for tests that measure it
    /// (RSS) or signal it themselves.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last 60 lines of what the server logged (its stderr, then its
    /// log file), for failure messages.
    pub fn log(&self) -> String {
        let mut text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(&self.log).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cluster of ClickHouse servers, one shard each (one replica), that every
/// server's config names [`ClickHouseCluster::cluster`]: a
/// `Distributed(strand_test, db, table_local, sharding_key)` table on any of
/// them reaches all. The shard-local tables are the test's to create on
/// each server: see the module docs (no `ON CLUSTER` without ZooKeeper).
pub struct ClickHouseCluster {
    /// The servers, in shard order: `shards[i]` is shard `i + 1` of the
    /// cluster (its `shard_num` in `system.clusters`, and its `{shard}`
    /// macro).
    pub shards: Vec<ClickHouse>,
    /// The cluster's name in `remote_servers`, `strand_test`: what a
    /// `Distributed` table's first argument is.
    pub cluster: String,
}

impl ClickHouseCluster {
    /// Starts `shards` servers (at least one) whose configs all hold the
    /// same `remote_servers` cluster, one shard per server by its native
    /// port on 127.0.0.1, and waits until each is ready. Every server gets
    /// `<macros><shard>N</shard></macros>` (N counted from 1).
    pub async fn start(shards: usize) -> ClickHouseCluster {
        assert!(shards >= 1, "a cluster has at least one shard");
        let cluster = "strand_test".to_owned();
        let ports = distinct_ports(shards);
        let mut remote = format!("<remote_servers>\n        <{cluster}>\n");
        for shard in &ports {
            writeln!(
                remote,
                "            <shard><replica><host>127.0.0.1</host><port>{}</port></replica></shard>",
                shard.tcp
            )
            .unwrap();
        }
        write!(remote, "        </{cluster}>\n    </remote_servers>").unwrap();
        let mut servers = Vec::with_capacity(shards);
        for (index, shard) in ports.iter().enumerate() {
            let extra = format!(
                "{remote}\n    <macros><shard>{}</shard></macros>",
                index + 1
            );
            servers.push(ClickHouse::launch(*shard, &extra).await);
        }
        ClickHouseCluster {
            shards: servers,
            cluster,
        }
    }
}

/// The `clickhouse-server` to run: `CLICKHOUSE_SERVER_BIN` when set, else
/// Debian's, which lives in /usr/sbin (not on a non-root user's `PATH`),
/// else the one on `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CLICKHOUSE_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/sbin/clickhouse-server");
    if debian.is_file() {
        return debian;
    }
    require_tool(
        "clickhouse-server",
        "this test runs a real ClickHouse (Debian: `sudo apt-get install clickhouse-server`)",
    )
}

/// Free ports for `servers` servers, three each, no two the same:
/// [`free_port`] may hand out a port it handed out just before, since each
/// call's listener is closed before the next.
fn distinct_ports(servers: usize) -> Vec<Ports> {
    let mut seen = HashSet::new();
    let mut ports = Vec::with_capacity(servers * 3);
    while ports.len() < servers * 3 {
        let port = free_port().port();
        if seen.insert(port) {
            ports.push(port);
        }
    }
    ports
        .chunks(3)
        .map(|p| Ports {
            http: p[0],
            tcp: p[1],
            interserver: p[2],
        })
        .collect()
}

/// The server config: every path inside `root`, loopback only, UTC, small
/// caches (a 64 MiB mark cache, no uncompressed cache) and no query log or
/// dictionaries, which a test does not need and which cost threads and
/// memory.
fn config_xml(root: &std::path::Path, log: &std::path::Path, ports: Ports, extra: &str) -> String {
    let root = root.display();
    format!(
        r#"<?xml version="1.0"?>
<yandex>
    <logger>
        <level>information</level>
        <log>{log}</log>
        <console>0</console>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{interserver}</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <path>{root}/data/</path>
    <tmp_path>{root}/tmp/</tmp_path>
    <user_files_path>{root}/user_files/</user_files_path>
    <format_schema_path>{root}/format_schemas/</format_schema_path>
    <users_config>{root}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mark_cache_size>67108864</mark_cache_size>
    <uncompressed_cache_size>0</uncompressed_cache_size>
    <max_concurrent_queries>50</max_concurrent_queries>
    <max_connections>256</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <mlock_executable>false</mlock_executable>
    <max_table_size_to_drop>0</max_table_size_to_drop>
    <max_partition_size_to_drop>0</max_partition_size_to_drop>
    {extra}
</yandex>
"#,
        log = log.display(),
        http = ports.http,
        tcp = ports.tcp,
        interserver = ports.interserver,
    )
}

/// Users and settings: `default` without a password from loopback only;
/// per-query memory capped at 2 GB and 2 threads per query, 4 background
/// merge and schedule threads (18.16's defaults are 10 GB and 16 each).
const USERS_XML: &str = r#"<?xml version="1.0"?>
<yandex>
    <profiles>
        <default>
            <max_memory_usage>2000000000</max_memory_usage>
            <max_threads>2</max_threads>
            <background_pool_size>4</background_pool_size>
            <background_schedule_pool_size>4</background_schedule_pool_size>
            <use_uncompressed_cache>0</use_uncompressed_cache>
        </default>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks>
                <ip>127.0.0.1</ip>
                <ip>::1</ip>
            </networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default></default>
    </quotas>
</yandex>
"#;
