//! Running the processes under test and observing them from outside: start
//! `strand` (or Prometheus, for comparison) on free loopback ports, wait until
//! it reports ready, stop it with SIGTERM, read its resident memory from
//! `/proc` and the size of its data directory.
//!
//! Everything is measured from outside the process on purpose: the numbers
//! must hold for the real binary as an operator runs it, not for a library
//! embedded in the benchmark.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a starting process may take to report ready; generous because a
/// restart may replay a write-ahead log.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A child process serving HTTP; killed if dropped while still running, so
/// an aborted benchmark never leaves a process behind.
pub struct Process {
    /// Program name for messages ("strand", "prometheus").
    name: &'static str,
    child: Option<Child>,
    http: SocketAddr,
    log: PathBuf,
}

/// A `strand serve` child process and its ports; dereferences to its
/// [`Process`].
pub struct Daemon {
    pub process: Process,
    pub grpc: SocketAddr,
}

/// How a SIGTERM'd process ended.
pub struct Stopped {
    pub status: ExitStatus,
    pub took: Duration,
}

/// Fails with how to build it unless `binary` (the `--strand` option) is a
/// file: benchmarks check this before they build their load, not after.
pub fn ensure_strand_binary(binary: &Path) -> Result<()> {
    anyhow::ensure!(
        binary.is_file(),
        "strand binary not found at {} (build it with `cargo build --release -p strand`, \
         or pass --strand PATH)",
        binary.display()
    );
    Ok(())
}

/// A loopback address nobody listens on right now. The port is released
/// before the daemon binds it; on a benchmark machine that race is harmless.
pub fn free_addr() -> Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .context("finding a free loopback port")
}

impl Daemon {
    /// Starts `binary serve` on `data_dir` (stderr appended to `log`) with
    /// fresh ports and waits until `/readyz` answers 200.
    pub async fn start(binary: &Path, data_dir: &Path, log: &Path) -> Result<Daemon> {
        Daemon::start_with(binary, data_dir, log, &[]).await
    }

    /// [`Daemon::start`] with more arguments to `serve`.
    pub async fn start_with(
        binary: &Path,
        data_dir: &Path,
        log: &Path,
        extra: &[&str],
    ) -> Result<Daemon> {
        ensure_strand_binary(binary)?;
        let (grpc, otlp_http, http) = (free_addr()?, free_addr()?, free_addr()?);
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--otlp-grpc", &grpc.to_string()])
            .args(["--otlp-http", &otlp_http.to_string()])
            .args(["--http", &http.to_string()])
            .args(extra);
        let process = Process::spawn("strand", command, http, "/readyz", log).await?;
        Ok(Daemon { process, grpc })
    }

    /// Base URL of the OTLP/gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// SIGTERM, then waits up to `timeout` for the daemon to exit (it
    /// flushes everything in memory first). Kills it if it does not.
    pub async fn stop(self, timeout: Duration) -> Result<Stopped> {
        self.process.stop(timeout).await
    }
}

impl Deref for Daemon {
    type Target = Process;

    fn deref(&self) -> &Process {
        &self.process
    }
}

impl DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

/// Starts Prometheus (`binary`) with an empty scrape configuration, its TSDB
/// in `storage`, the remote-write receiver enabled and `extra` flags, on a
/// fresh port, and waits until `/-/ready` answers 200 (after any WAL replay).
pub async fn start_prometheus(
    binary: &Path,
    storage: &Path,
    log: &Path,
    extra: &[&str],
) -> Result<Process> {
    if !binary.is_file() {
        bail!(
            "prometheus binary not found at {} (pass --prometheus PATH or --no-prometheus)",
            binary.display()
        );
    }
    std::fs::create_dir_all(storage).with_context(|| format!("creating {}", storage.display()))?;
    let config = storage.with_extension("yml");
    // The out-of-order window lets a remote-write client that lags the
    // others keep writing after the head was compacted past its samples
    // (short blocks, backfilled data); in-order samples never use it.
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 15s\nscrape_configs: []\n\
         storage:\n  tsdb:\n    out_of_order_time_window: 6h\n",
    )
    .with_context(|| format!("writing {}", config.display()))?;
    let http = free_addr()?;
    let mut command = Command::new(binary);
    command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", storage.display()))
        .arg(format!("--web.listen-address={http}"))
        .arg("--web.enable-remote-write-receiver")
        .args(extra);
    Process::spawn("prometheus", command, http, "/-/ready", log).await
}

/// Starts VictoriaMetrics (`binary`, Debian's `victoria-metrics`) with its
/// storage in `storage` on a fresh port and waits until `/health` answers
/// 200. Samples are queryable as soon as they are stored
/// (`-search.latencyOffset=0s`: the generated data ends just before now) and
/// the response cache is off, so repeated queries are computed each time as
/// in the other systems.
pub async fn start_victoria_metrics(binary: &Path, storage: &Path, log: &Path) -> Result<Process> {
    if !binary.is_file() {
        bail!(
            "victoria-metrics binary not found at {} (`apt-get install victoria-metrics`, or pass --victoria-metrics PATH)",
            binary.display()
        );
    }
    let http = free_addr()?;
    let mut command = Command::new(binary);
    command
        .arg(format!("-storageDataPath={}", storage.display()))
        .arg(format!("-httpListenAddr={http}"))
        .arg("-search.latencyOffset=0s")
        .arg("-search.disableCache");
    Process::spawn("victoria-metrics", command, http, "/health", log).await
}

impl Process {
    /// Spawns `command` (stdin and stdout discarded, stderr appended to
    /// `log`) and waits until `http` answers `ready_path` with 200.
    pub async fn spawn(
        name: &'static str,
        mut command: Command,
        http: SocketAddr,
        ready_path: &str,
        log: &Path,
    ) -> Result<Process> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {name} log {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        let mut process = Process {
            name,
            child: Some(child),
            http,
            log: log.to_path_buf(),
        };
        process.wait_ready(ready_path).await?;
        Ok(process)
    }

    async fn wait_ready(&mut self, ready_path: &str) -> Result<()> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building HTTP client")?;
        let url = format!("{}{ready_path}", self.http_url());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if let Some(status) = self.exited()? {
                bail!(
                    "{} exited with {status} before it was ready; its log ends with:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not answer {url} with 200 within {}s; its log ends with:\n{}",
                    self.name,
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Program name, for messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Pid of the process, `None` once it was stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Base URL of the HTTP listener (query APIs, remote write).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child
                .try_wait()
                .with_context(|| format!("checking on the {} process", self.name)),
            None => Ok(None),
        }
    }

    /// The last lines the process logged, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then waits up to `timeout` for the process to exit. Kills it
    /// if it does not.
    pub async fn stop(mut self, timeout: Duration) -> Result<Stopped> {
        let started = Instant::now();
        let name = self.name;
        let Some(mut child) = self.child.take() else {
            bail!("{name} is not running");
        };
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: kill(2) on the pid of our own child, which has not been
        // reaped yet (so the pid cannot have been reused).
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            let error = std::io::Error::last_os_error();
            let _ = child.kill();
            return Err(error).with_context(|| format!("sending SIGTERM to {name}"));
        }
        loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for {name} to exit"))?
            {
                return Ok(Stopped {
                    status,
                    took: started.elapsed(),
                });
            }
            if started.elapsed() >= timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{name} did not exit within {}s of SIGTERM (killed it); its log ends with:\n{}",
                    timeout.as_secs(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident set size of `pid` in bytes (VmRSS), `None` if the process is
/// gone or /proc is unavailable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "VmRSS:")
}

/// The anonymous part of `pid`'s resident set in bytes (RssAnon): heap and
/// stacks, without the pages of files it maps (its code, tantivy's index
/// files), which the kernel drops when it needs them and reads back.
pub fn anon_rss_bytes(pid: u32) -> Option<u64> {
    status_bytes(pid, "RssAnon:")
}

/// A size `/proc/<pid>/status` gives in kB on the line starting with `field`.
fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// User plus system CPU seconds of `pid` so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/<pid>/stat")?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are the 14th and 15th fields; 12th and 13th here.
    Ok((ticks(11) + ticks(12)) / 100.0)
}

/// Total length of all regular files under `path`, recursively (apparent
/// size, as `du --apparent-size -b` counts it; symlinks are not followed).
pub fn dir_bytes(path: &Path) -> Result<u64> {
    dir_total(path, std::fs::Metadata::len)
}

/// Bytes of disk blocks allocated to all regular files under `path`, as
/// `du -B1` counts them: a store with sparse or preallocated files (Badger)
/// is charged for what it occupies, not for its files' lengths.
pub fn dir_allocated_bytes(path: &Path) -> Result<u64> {
    dir_total(path, |metadata| {
        std::os::unix::fs::MetadataExt::blocks(metadata) * 512
    })
}

fn dir_total(path: &Path, size: fn(&std::fs::Metadata) -> u64) -> Result<u64> {
    let mut total = 0;
    let entries =
        std::fs::read_dir(path).with_context(|| format!("reading directory {}", path.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading directory {}", path.display()))?;
        let metadata = entry
            .metadata()
            .with_context(|| format!("stat {}", entry.path().display()))?;
        if metadata.is_dir() {
            total += dir_total(&entry.path(), size)?;
        } else if metadata.is_file() {
            total += size(&metadata);
        }
    }
    Ok(total)
}

/// Bytes per top-level entry of `path` (e.g. write-ahead log vs. stores),
/// for the progress output.
pub fn dir_breakdown(path: &Path) -> Result<Vec<(String, u64)>> {
    let mut parts = Vec::new();
    for entry in
        std::fs::read_dir(path).with_context(|| format!("reading directory {}", path.display()))?
    {
        let entry = entry?;
        let metadata = entry.metadata()?;
        let bytes = if metadata.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            metadata.len()
        };
        parts.push((entry.file_name().to_string_lossy().into_owned(), bytes));
    }
    parts.sort();
    Ok(parts)
}

/// Prints bytes per top-level entry of `dir` (e.g. whether the write-ahead
/// log is gone after a clean shutdown) to stderr.
pub fn print_breakdown(dir: &Path) {
    match dir_breakdown(dir) {
        Ok(parts) => {
            let parts: Vec<String> = parts
                .iter()
                .map(|(name, bytes)| format!("{name} {bytes} B"))
                .collect();
            eprintln!("{}: {}", dir.display(), parts.join(", "));
        }
        Err(error) => eprintln!("cannot list {}: {error:#}", dir.display()),
    }
}

/// A data directory is at rest once its size stays the same this long.
pub const SETTLE_QUIET: Duration = Duration::from_secs(5);

/// Waits until the size of `dir` stays the same for [`SETTLE_QUIET`]
/// (compaction, merges and flushes done), so what is measured next is the
/// data at rest, not a flush in progress. `false` if it still changed after
/// `timeout`.
pub async fn settle(dir: &Path, timeout: Duration) -> bool {
    let started = Instant::now();
    let mut last = dir_bytes(dir).ok();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < SETTLE_QUIET {
        if started.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Files may vanish mid-walk while a compaction replaces them.
        let now = dir_bytes(dir).ok();
        if now != last || now.is_none() {
            last = now;
            quiet_since = Instant::now();
        }
    }
    true
}

/// A scratch directory under the system temp dir holding the daemon's data
/// directory and log; removed on drop unless the user asked to keep it.
pub struct Scratch {
    pub path: PathBuf,
    keep: bool,
}

impl Scratch {
    pub fn create(keep: bool) -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("strand-bench-{}-{nanos:09}", std::process::id()));
        std::fs::create_dir_all(path.join("data"))
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch { path, keep })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path.join("data")
    }

    pub fn log(&self) -> PathBuf {
        self.path.join("strand.log")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {error}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_own_rss_and_a_directory() {
        let (rss, anon) = (
            rss_bytes(std::process::id()),
            anon_rss_bytes(std::process::id()),
        );
        assert!(anon.unwrap() > 0);
        assert!(
            rss.unwrap() > anon.unwrap(),
            "the test binary's code is mapped"
        );
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        let scratch = Scratch::create(false).unwrap();
        std::fs::write(scratch.data_dir().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(scratch.data_dir().join("sub")).unwrap();
        std::fs::write(scratch.data_dir().join("sub/b"), [0u8; 23]).unwrap();
        assert_eq!(dir_bytes(&scratch.data_dir()).unwrap(), 123);
        // Two files of a block each (at least).
        assert!(dir_allocated_bytes(&scratch.data_dir()).unwrap() >= 2 * 512);
        assert_eq!(
            dir_breakdown(&scratch.data_dir()).unwrap(),
            vec![("a".to_string(), 100), ("sub".to_string(), 23)]
        );
        let path = scratch.path.clone();
        drop(scratch);
        assert!(!path.exists());
    }
}
