//! ClickHouse as the durable tier, for teams that outgrow one machine: many
//! stateless Strand nodes over one ClickHouse, each with its own WAL.
//!
//! Strand creates and migrates its schema itself at start (see `schema`),
//! shaped for the server it finds: Debian's 18.16 gets plain MergeTree
//! tables, newer servers also get column codecs and skip indexes.
//!
//! The stores are synchronous (the write path and the query pool call them
//! from blocking threads); the client is async, so each call waits for its
//! request on the daemon's runtime (see [`ClickHouse::wait`]).

pub mod dashboards;
pub mod logs;
pub mod metrics;
pub mod schema;
pub mod spans;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::config::ClickHouseSettings;
use crate::store::{Result, StoreError};

/// How long one request may take before it counts as failed: a ClickHouse
/// that hangs must turn into an error the write path retries, not a stuck
/// flusher.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows per INSERT statement: each one takes ClickHouse a fraction of
/// [`super::REQUEST_TIMEOUT`] and a bounded block of memory.
const MAX_ROWS_PER_INSERT: usize = 20_000;

const NANOS_PER_DAY: u64 = 86_400 * 1_000_000_000;

/// How long a node waits between attempts to reach a ClickHouse it could
/// not reach.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// The server version from which `Accept-Encoding: lz4` answers are
/// understood; older servers get uncompressed requests.
const LZ4_HTTP_MIN_VERSION: Version = Version(22, 1);

/// A ClickHouse server version, major and minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32);

impl Version {
    /// Parses `SELECT version()`: "18.16.1", "24.8.4.13".
    fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Version(major, minor))
    }
}

/// A connection to one ClickHouse database, with the server's version.
#[derive(Clone)]
pub struct ClickHouse {
    client: clickhouse::Client,
    runtime: tokio::runtime::Handle,
    database: String,
    version: Version,
}

/// The servers a node talks to: queries and inserts go to the first; DDL
/// and retention to every one of them (with a cluster, one per shard:
/// 18.16 runs no `ON CLUSTER` DDL without ZooKeeper, so each shard gets its
/// tables from the node itself).
#[derive(Clone)]
pub struct Servers {
    pub query: ClickHouse,
    pub each: Vec<ClickHouse>,
    pub layout: schema::Layout,
}

/// Connections made when ClickHouse can first be reached: a node starts,
/// and takes data into its WAL, while ClickHouse is down.
pub struct Connector {
    settings: ClickHouseSettings,
    runtime: tokio::runtime::Handle,
    /// A client per URL, before its server's version is known; https ones
    /// check the server's certificate against the configured CAs.
    clients: Vec<clickhouse::Client>,
    state: Mutex<ConnectState>,
}

#[derive(Default)]
struct ConnectState {
    servers: Option<Servers>,
    last_attempt: Option<Instant>,
    last_error: String,
}

impl Connector {
    /// Tries to connect once (see [`Connector::get`]); an unreachable
    /// server is logged and tried again when the connection is next
    /// needed. Called on a thread of the daemon's runtime.
    pub fn new(settings: &ClickHouseSettings) -> Result<Connector> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            StoreError::Backend("ClickHouse needs the daemon's async runtime".into())
        })?;
        let tls = match settings.urls.iter().any(|url| url.starts_with("https://")) {
            true => Some(tls_config(settings)?),
            false => None,
        };
        let clients = settings
            .urls
            .iter()
            .map(|url| {
                let client = match (&tls, url.starts_with("https://")) {
                    (Some(tls), true) => https_client(tls.clone()),
                    _ => clickhouse::Client::default(),
                };
                client.with_url(url)
            })
            .collect();
        let connector = Connector {
            settings: settings.clone(),
            runtime,
            clients,
            state: Mutex::new(ConnectState::default()),
        };
        if let Err(error) = connector.get() {
            tracing::warn!(urls = ?settings.urls, %error, "ClickHouseUnreachable: data waits in the WAL");
        }
        Ok(connector)
    }

    /// The servers, connected — each one's version read and Strand's schema
    /// brought up to date on it — first if they are not yet and the last
    /// attempt is [`RECONNECT_INTERVAL`] old.
    pub fn get(&self) -> Result<Servers> {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some(servers) = &state.servers {
            return Ok(servers.clone());
        }
        if state
            .last_attempt
            .is_none_or(|at| at.elapsed() >= RECONNECT_INTERVAL)
        {
            state.last_attempt = Some(Instant::now());
            match self.connect() {
                Ok(servers) => {
                    state.servers = Some(servers.clone());
                    return Ok(servers);
                }
                Err(error) => state.last_error = error.to_string(),
            }
        }
        Err(StoreError::Backend(format!(
            "ClickHouse at {} is not reachable yet: {}",
            self.settings.urls.join(", "),
            state.last_error
        )))
    }

    fn connect(&self) -> Result<Servers> {
        let layout = match &self.settings.cluster {
            Some(cluster) => schema::Layout::Cluster(cluster.clone()),
            None => schema::Layout::Single,
        };
        let mut each = Vec::new();
        for (url, client) in self.settings.urls.iter().zip(&self.clients) {
            let connection =
                ClickHouse::connect(&self.settings, url, client.clone(), self.runtime.clone())?;
            schema::migrate(&connection, &layout)?;
            each.push(connection.with_database());
        }
        let mut query = each[0].clone();
        if matches!(layout, schema::Layout::Cluster(_)) {
            // An insert is acknowledged once every shard has its rows.
            query.client = query
                .client
                .clone()
                .with_setting("insert_distributed_sync", "1");
        }
        Ok(Servers {
            query,
            each,
            layout,
        })
    }
}

impl ClickHouse {
    /// Connects to `url` through `client` and reads the server's version.
    fn connect(
        settings: &ClickHouseSettings,
        url: &str,
        client: clickhouse::Client,
        runtime: tokio::runtime::Handle,
    ) -> Result<ClickHouse> {
        let mut client = client
            .with_validation(false)
            .with_compression(clickhouse::Compression::None);
        if let Some(user) = &settings.user {
            client = client.with_user(user.as_str());
        }
        if let Some(password) = &settings.password {
            client = client.with_password(password.expose());
        }
        let mut connection = ClickHouse {
            client,
            runtime,
            database: settings.database.clone(),
            version: Version(0, 0),
        };
        let version: String = connection.wait(
            "reading the server version",
            connection.query("SELECT version()").fetch_one::<String>(),
        )?;
        connection.version = Version::parse(&version).ok_or_else(|| {
            StoreError::Backend(format!("ClickHouse reports version {version:?}"))
        })?;
        if connection.version >= LZ4_HTTP_MIN_VERSION {
            connection.client = connection
                .client
                .clone()
                .with_compression(clickhouse::Compression::Lz4);
        }
        tracing::info!(
            url,
            database = %settings.database,
            version,
            "ClickHouseConnected"
        );
        Ok(connection)
    }

    /// The connection with Strand's database as the default one.
    fn with_database(mut self) -> ClickHouse {
        self.client = self.client.clone().with_database(self.database.as_str());
        self
    }

    /// A query of `sql` as written: the client reads `?` as a parameter
    /// to bind, so each one (in a regular expression, a value searched
    /// for) is doubled, which it reads as a plain `?`.
    pub fn query(&self, sql: &str) -> clickhouse::query::Query {
        self.client.query(&sql.replace('?', "??"))
    }

    /// Runs one statement that returns nothing (DDL, ALTER).
    fn execute(&self, what: &str, sql: &str) -> Result<()> {
        self.wait(what, self.query(sql).execute())
    }

    /// Inserts `rows`, made as they are sent, [`MAX_ROWS_PER_INSERT`] per
    /// statement: a large flush neither holds all its rows in memory at
    /// once nor asks ClickHouse to take them in one block.
    pub fn insert_rows<T: clickhouse::RowOwned + clickhouse::RowWrite>(
        &self,
        table: &str,
        rows: impl IntoIterator<Item = T>,
    ) -> Result<()> {
        let connection = self;
        let client = &connection.client;
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            connection.wait(&format!("inserting into {table}"), async {
                let mut insert = client.insert::<T>(table).await?;
                for row in rows.by_ref().take(MAX_ROWS_PER_INSERT) {
                    insert.write(&row).await?;
                }
                insert.end().await
            })?;
        }
        Ok(())
    }

    /// Waits for `request` on the daemon's runtime, from the blocking
    /// thread the store was called on, within [`REQUEST_TIMEOUT`]; `what`
    /// names the request in its error.
    fn wait<T>(
        &self,
        what: &str,
        request: impl Future<Output = clickhouse::error::Result<T>>,
    ) -> Result<T> {
        let timed = async { tokio::time::timeout(REQUEST_TIMEOUT, request).await };
        // On a runtime worker, give the worker's other tasks away first.
        let answer = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| self.runtime.block_on(timed)),
            Err(_) => self.runtime.block_on(timed),
        };
        match answer {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError::Backend(format!(
                "ClickHouse failed {what}: {}",
                crate::telemetry::error_chain(&error)
            ))),
            Err(_) => Err(StoreError::Backend(format!(
                "ClickHouse did not answer {what} within {}s",
                REQUEST_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Drops the day partitions of `tables` past `retention` as of `now`
/// (nanoseconds): each server its own (with a cluster, its shard's rows),
/// by age and by its share of the size limit. Returns how many went.
pub fn drop_expired(
    servers: &Servers,
    tables: &[&str],
    retention: crate::config::Retention,
    now_nanos: u64,
) -> Result<usize> {
    let cutoff =
        now_nanos.saturating_sub(u64::try_from(retention.max_age.as_nanos()).unwrap_or(u64::MAX));
    let max_bytes = retention.max_bytes / servers.each.len() as u64;
    let mut dropped = 0;
    for server in &servers.each {
        dropped += drop_old_partitions(server, &servers.layout, tables, cutoff, max_bytes)?;
    }
    Ok(dropped)
}

/// Drops the day partitions on `server` older than `cutoff` (nanoseconds),
/// then the oldest while `tables` take more than `max_bytes` (0: no
/// limit); the newest day always stays. Returns how many days went.
fn drop_old_partitions(
    server: &ClickHouse,
    layout: &schema::Layout,
    tables: &[&str],
    cutoff: u64,
    max_bytes: u64,
) -> Result<usize> {
    let tables: Vec<String> = tables.iter().map(|table| layout.local(table)).collect();
    let partitions: Vec<PartitionSize> = server.wait(
        "reading partition sizes",
        server
            .query(&partitions_sql(&server.database, &tables))
            .fetch_all(),
    )?;
    let mut total: u64 = partitions.iter().map(|p| p.bytes).sum();
    let mut dropped = 0;
    for partition in partitions.iter().take(partitions.len().saturating_sub(1)) {
        let Some(day_end) = day_end_nanos(&partition.partition) else {
            continue;
        };
        let too_old = day_end <= cutoff;
        let too_large = max_bytes > 0 && total > max_bytes;
        if !too_old && !too_large {
            break;
        }
        for table in &tables {
            server.execute(
                "dropping an old partition",
                &drop_partition_sql(table, &partition.partition),
            )?;
        }
        total = total.saturating_sub(partition.bytes);
        dropped += 1;
        tracing::info!(day = %partition.partition, too_old, too_large, tables = ?tables, "PartitionDropped");
    }
    Ok(dropped)
}

#[derive(clickhouse::Row, Deserialize)]
struct PartitionSize {
    partition: String,
    bytes: u64,
}

/// The `Date` (days since 1970-01-01) of a time in nanoseconds.
fn day_of(nanos: u64) -> u16 {
    u16::try_from(nanos / NANOS_PER_DAY).unwrap_or(u16::MAX)
}

/// A `Date` literal for the day of `nanos`.
fn date_literal(nanos: u64) -> String {
    let date = chrono::DateTime::from_timestamp((nanos / 1_000_000_000) as i64, 0)
        .unwrap_or_default()
        .date_naive();
    format!("toDate('{}')", date.format("%Y-%m-%d"))
}

/// The end, in nanoseconds, of the day a `PARTITION BY day` partition
/// names ("2026-12-05").
fn day_end_nanos(partition: &str) -> Option<u64> {
    let date = chrono::NaiveDate::parse_from_str(partition.trim_matches('\''), "%Y-%m-%d").ok()?;
    let start = date.and_hms_opt(0, 0, 0)?.and_utc().timestamp();
    u64::try_from(start)
        .ok()
        .map(|s| s * 1_000_000_000 + NANOS_PER_DAY)
}

/// The bytes of each day partition of `tables` in `database`.
fn partitions_sql(database: &str, tables: &[String]) -> String {
    let tables = tables
        .iter()
        .map(|t| quote(t))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT partition, toUInt64(sum(bytes_on_disk)) AS bytes FROM system.parts \
         WHERE active AND database = {} AND table IN ({tables}) \
         GROUP BY partition ORDER BY partition",
        quote(database)
    )
}

fn drop_partition_sql(table: &str, partition: &str) -> String {
    format!("ALTER TABLE {table} DROP PARTITION {}", quote(partition))
}

/// The WAL sequence number through which a node's spans are in ClickHouse,
/// in a file of the node's data directory: written whole (a temporary file
/// renamed over it) and synced before it counts.
struct Checkpoint {
    path: PathBuf,
    seq: Mutex<u64>,
}

impl Checkpoint {
    fn open(path: PathBuf) -> Result<Checkpoint> {
        let seq = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().map_err(|_| {
                StoreError::Corrupt(format!(
                    "{}: {text:?} is not a sequence number",
                    path.display()
                ))
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => 0,
            Err(error) => return Err(error.into()),
        };
        Ok(Checkpoint {
            path,
            seq: Mutex::new(seq),
        })
    }

    fn get(&self) -> u64 {
        *self.seq.lock().expect("not poisoned")
    }

    fn advance(&self, seq: u64) -> Result<()> {
        let mut current = self.seq.lock().expect("not poisoned");
        if seq <= *current {
            return Ok(());
        }
        let temporary = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary)?;
        std::io::Write::write_all(&mut file, format!("{seq}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        *current = seq;
        Ok(())
    }
}

/// This node's id, made once and kept in `dir`: log rows name the node
/// that inserted them, so its retries find its own, and derived metrics
/// carry it, so each node's counters are series of their own.
pub fn node_id(dir: &std::path::Path) -> Result<u64> {
    let path = dir.join("node.id");
    match std::fs::read_to_string(&path) {
        Ok(text) => u64::from_str_radix(text.trim(), 16).map_err(|_| {
            StoreError::Corrupt(format!("{}: {text:?} is not a node id", path.display()))
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = rand::random::<u64>();
            let temporary = path.with_extension("tmp");
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, format!("{id:016x}\n").as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(id)
        }
        Err(error) => Err(error.into()),
    }
}

/// The TLS client configuration for https URLs: the CAs of
/// `--clickhouse-ca`, or of the system's bundle. A CA file that cannot be
/// read stops the start, as any bad setting does.
fn tls_config(settings: &ClickHouseSettings) -> Result<rustls::ClientConfig> {
    let ca_file = match &settings.ca_file {
        Some(file) => file.clone(),
        None => crate::tls::system_ca_bundle().map_err(|looked| {
            StoreError::Backend(format!(
                "no CA bundle to check https ClickHouse servers against (looked at {looked}); \
                 set --clickhouse-ca or SSL_CERT_FILE"
            ))
        })?,
    };
    crate::tls::client_config(&ca_file)
        .map_err(|error| StoreError::Backend(format!("the ClickHouse CAs: {error}")))
}

/// A ClickHouse client speaking https with `tls`, over HTTP/1.1 with the
/// pool settings the crate's own client has.
fn https_client(tls: rustls::ClientConfig) -> clickhouse::Client {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(connector);
    clickhouse::Client::with_http_client(client)
}

/// Why a snapshot of a ClickHouse-backed store (`signal`: "spans",
/// "logs") is refused: its data is not in the data directory.
pub fn snapshot_refused(signal: &str) -> StoreError {
    StoreError::Backend(format!(
        "{signal} are kept in ClickHouse: back them up with ClickHouse's own tools \
         (snapshots copy the embedded stores)"
    ))
}

/// `text` as a ClickHouse string literal.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for c in text.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\'' => quoted.push_str("\\'"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// `name` as a ClickHouse identifier (a database or table name).
fn identifier(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_what_servers_report() {
        assert_eq!(Version::parse("18.16.1"), Some(Version(18, 16)));
        assert_eq!(Version::parse("24.8.4.13\n"), Some(Version(24, 8)));
        assert_eq!(Version::parse("devel"), None);
        assert!(Version(18, 16) < LZ4_HTTP_MIN_VERSION);
    }

    /// The schema Strand creates on a current server and every statement
    /// shape it sends run on ClickHouse 26.9, in process through chDB
    /// (`chdb-core` from PyPI, in the `target/py` venv scripts/test makes).
    #[test]
    fn the_schema_and_every_statement_run_on_a_current_clickhouse() {
        let python = std::env::var_os("STRAND_TEST_PYTHON")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python")
            });
        let mut statements = vec!["CREATE DATABASE IF NOT EXISTS `strand`".to_string()];
        statements.extend(schema::all_statements(
            "strand",
            &schema::Layout::Single,
            Version(26, 9),
        ));
        statements.push("USE `strand`".into());
        statements.extend(spans::statement_shapes());
        statements.extend(logs::statement_shapes());
        statements.extend(metrics::statement_shapes());
        statements.extend(dashboards::statement_shapes());
        statements.push(partitions_sql(
            "strand",
            &["spans".to_string(), "span_search".to_string()],
        ));
        statements.push(drop_partition_sql("logs", "2025-12-05"));
        const SCRIPT: &str = r#"
import json, sys
import chdb
from chdb import session
db = session.Session()
version = db.query("SELECT version()", "TSV").bytes().decode().strip()
failures = []
for sql in json.load(sys.stdin):
    try:
        db.query(sql, "TSV")
    except Exception as error:
        failures.append(sql + "\n  -> " + str(error))
print(json.dumps({"version": version, "failures": failures}))
"#;
        let mut child = std::process::Command::new(&python)
            .args(["-c", SCRIPT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "this test needs Python with chdb-core at {}: {error} \
                     (scripts/test installs it into target/py), or set STRAND_TEST_PYTHON",
                    python.display()
                )
            });
        let input = serde_json::to_vec(&statements).unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), &input).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "chDB failed (scripts/test installs chdb-core into target/py): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let version = Version::parse(answer["version"].as_str().unwrap()).unwrap();
        assert!(version >= Version(24, 1), "{answer}");
        assert_eq!(answer["failures"], serde_json::json!([]), "{answer:#}");
    }

    #[test]
    fn days_and_partitions_agree() {
        let nanos = 1_764_892_800 * 1_000_000_000 + 5; // 2025-12-05T00:00:00Z + 5 ns
        assert_eq!(date_literal(nanos), "toDate('2025-12-05')");
        assert_eq!(u64::from(day_of(nanos)) * NANOS_PER_DAY, nanos - 5);
        assert_eq!(day_end_nanos("2025-12-05"), Some(nanos - 5 + NANOS_PER_DAY));
        assert_eq!(
            day_end_nanos("'2025-12-05'"),
            Some(nanos - 5 + NANOS_PER_DAY)
        );
        assert_eq!(day_end_nanos("tuple()"), None);
    }

    #[test]
    fn a_checkpoint_only_moves_forward_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spans.checkpoint");
        let checkpoint = Checkpoint::open(path.clone()).unwrap();
        assert_eq!(checkpoint.get(), 0);
        checkpoint.advance(7).unwrap();
        checkpoint.advance(3).unwrap();
        assert_eq!(Checkpoint::open(path.clone()).unwrap().get(), 7);
        std::fs::write(&path, "seven").unwrap();
        assert!(matches!(
            Checkpoint::open(path),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_node_keeps_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let id = node_id(dir.path()).unwrap();
        assert_eq!(node_id(dir.path()).unwrap(), id);
        assert_ne!(node_id(tempfile::tempdir().unwrap().path()).unwrap(), id);
    }

    #[test]
    fn literals_and_identifiers_are_escaped() {
        assert_eq!(quote(r"it's a\b"), r"'it\'s a\\b'");
        assert_eq!(identifier("a`b"), r"`a\`b`");
    }
}
