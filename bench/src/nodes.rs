//! The Strand processes a benchmark loads: one node with embedded storage,
//! or several nodes over one ClickHouse server started for the run
//! (Debian's clickhouse-server), each node with its own data directory and
//! so its own WAL, as they run in production.

use std::path::Path;

use anyhow::{Context, Result};

use crate::Storage;
use crate::daemon::{Daemon, Scratch, Stopped};

/// See the module docs.
pub struct Nodes {
    pub clickhouse: Option<strand_testkit::ClickHouse>,
    /// The first node: the one restarted, sampled and queried.
    pub first: Daemon,
    /// The other nodes, in data directories beside the first's.
    pub others: Vec<Daemon>,
}

impl Nodes {
    /// Starts `count` nodes of `strand` on `storage` in `scratch`, the
    /// first on its data directory.
    pub async fn start(
        strand: &Path,
        storage: Storage,
        count: usize,
        scratch: &Scratch,
    ) -> Result<Nodes> {
        anyhow::ensure!(count >= 1, "--nodes must be at least 1");
        anyhow::ensure!(
            count == 1 || storage == Storage::ClickHouse,
            "--nodes above 1 needs --storage clickhouse: embedded nodes share nothing"
        );
        let clickhouse = match storage {
            Storage::Embedded => None,
            Storage::ClickHouse => {
                eprintln!("starting clickhouse-server");
                Some(strand_testkit::ClickHouse::start().await)
            }
        };
        let data_dir = scratch.data_dir();
        eprintln!("starting {} on {}", strand.display(), data_dir.display());
        let args = storage_args(clickhouse.as_ref());
        let first = Daemon::start_with(strand, &data_dir, &scratch.log(), &args).await?;
        let mut others = Vec::new();
        for node in 1..count {
            let dir = data_dir.with_file_name(format!("data-{node}"));
            others.push(Daemon::start_with(strand, &dir, &scratch.log(), &args).await?);
        }
        Ok(Nodes {
            clickhouse,
            first,
            others,
        })
    }

    /// Stops the other nodes, then the first (each with SIGTERM, so each
    /// flushes what it holds); returns the ClickHouse server, still
    /// running, and how the first node stopped.
    pub async fn stop(
        self,
        timeout: std::time::Duration,
    ) -> Result<(Option<strand_testkit::ClickHouse>, Stopped)> {
        for other in self.others {
            other.stop(timeout).await?;
        }
        let stopped = self.first.stop(timeout).await?;
        Ok((self.clickhouse, stopped))
    }

    /// Every node's OTLP/gRPC URL, the first's first.
    pub fn grpc_urls(&self) -> Vec<String> {
        std::iter::once(&self.first)
            .chain(&self.others)
            .map(Daemon::grpc_url)
            .collect()
    }
}

/// Starts a node of `strand` on the first node's data directory of
/// `scratch` (after it stopped), over `clickhouse` if any: the restart a
/// benchmark measures.
pub async fn restart_first(
    strand: &Path,
    scratch: &Scratch,
    clickhouse: Option<&strand_testkit::ClickHouse>,
) -> Result<Daemon> {
    let args = storage_args(clickhouse);
    Daemon::start_with(strand, &scratch.data_dir(), &scratch.log(), &args).await
}

/// Starts a node of `strand` over `clickhouse` on an empty data directory
/// of `scratch`: one that answers from ClickHouse alone.
pub async fn start_reader(
    strand: &Path,
    scratch: &Scratch,
    clickhouse: Option<&strand_testkit::ClickHouse>,
) -> Result<Daemon> {
    let args = storage_args(clickhouse);
    let dir = scratch.data_dir().with_file_name("data-reader");
    Daemon::start_with(strand, &dir, &scratch.log(), &args).await
}

/// Bytes `clickhouse` keeps for Strand's tables (active parts, on disk);
/// `None` without one.
pub async fn clickhouse_bytes(
    clickhouse: Option<&strand_testkit::ClickHouse>,
) -> Result<Option<u64>> {
    let Some(clickhouse) = clickhouse else {
        return Ok(None);
    };
    let answer = clickhouse
        .try_query(
            "SELECT sum(bytes_on_disk) FROM system.parts WHERE active AND database = 'strand'",
            &[],
        )
        .await
        .map_err(|error| anyhow::anyhow!("asking ClickHouse for its size: {error}"))?;
    let bytes = answer
        .trim()
        .parse()
        .with_context(|| format!("ClickHouse's size {answer:?}"))?;
    eprintln!(
        "ClickHouse holds {:.1} MiB",
        bytes as f64 / (1 << 20) as f64
    );
    Ok(Some(bytes))
}

/// The `serve` arguments of a node over `clickhouse` (none: embedded).
fn storage_args(clickhouse: Option<&strand_testkit::ClickHouse>) -> Vec<&str> {
    match clickhouse {
        Some(clickhouse) => vec![
            "--storage",
            "clickhouse",
            "--clickhouse-url",
            &clickhouse.url,
        ],
        None => vec![],
    }
}
