//! A real OpenTelemetry Collector as a child process, for the tests that
//! check Strand against the Collector's own exporters. The Collector is
//! assembled from `testkit/otelcol` (the OTLP receiver, the batch processor,
//! the OTLP gRPC, OTLP HTTP and Prometheus remote-write exporters, one
//! release for all), built with the machine's Go by `testkit/otelcol/build.sh`
//! once per source into the cargo target directory.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::free_port;

/// A running Collector; killed when dropped.
pub struct OtelCollector {
    child: Child,
    /// Its OTLP/gRPC receiver, as an exporter's endpoint (`http://host:port`).
    pub grpc_endpoint: String,
    /// Its OTLP/HTTP receiver's base URL (append `/v1/traces`, ...).
    pub http_endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl OtelCollector {
    /// Starts a Collector whose OTLP receiver (gRPC and HTTP, on free
    /// loopback ports) feeds `pipelines` through the batch processor.
    /// `exporters` is the YAML body of the `exporters:` section (indented by
    /// two spaces), `pipelines` maps each signal (`traces`, `logs`,
    /// `metrics`) to the exporters it uses. Waits until both receivers
    /// accept connections, which the Collector opens after its exporters.
    pub async fn start(exporters: &str, pipelines: &[(&str, &[&str])]) -> OtelCollector {
        let binary = binary();
        let dir = tempfile::tempdir().unwrap();
        let (grpc, http) = (free_port(), free_port());
        let mut config = format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: {grpc}\n      \
             http:\n        endpoint: {http}\n\
             processors:\n  batch:\n    timeout: 100ms\n\
             exporters:\n{exporters}\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n"
        );
        for (signal, exporters) in pipelines {
            config.push_str(&format!(
                "    {signal}:\n      receivers: [otlp]\n      processors: [batch]\n      \
                 exporters: [{}]\n",
                exporters.join(", ")
            ));
        }
        let config_file = dir.path().join("otelcol.yaml");
        std::fs::write(&config_file, &config).unwrap();
        let log = dir.path().join("otelcol.log");
        let child = Command::new(&binary)
            .arg(format!("--config=file:{}", config_file.display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", binary.display()));
        let mut collector = OtelCollector {
            child,
            grpc_endpoint: format!("http://{grpc}"),
            http_endpoint: format!("http://{http}"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(listening(grpc) && listening(http)) {
            if let Some(status) = collector.child.try_wait().unwrap() {
                panic!(
                    "the OpenTelemetry Collector exited with {status}:\n{}\nconfig:\n{config}",
                    collector.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the OpenTelemetry Collector was not listening within 60s:\n{}",
                collector.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        collector
    }

    /// What the Collector logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OtelCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// The Collector binary, built on first use in this process (a no-op when
/// `build.sh` finds it built for this source already).
fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build).clone()
}

fn build() -> PathBuf {
    // build.sh says when Go is missing (and finds it where Go's installer puts it).
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("otelcol/build.sh");
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(&script)
        .arg(target_dir())
        .stderr(Stdio::inherit())
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{} failed with {}",
        script.display(),
        output.status
    );
    let path = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    eprintln!(
        "OpenTelemetry Collector ready in {:.1}s: {}",
        started.elapsed().as_secs_f64(),
        path.display()
    );
    path
}

/// The cargo target directory this test binary runs from
/// (`<target>/<profile>/deps/<test binary>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .expect("the test binary lives in <target>/<profile>/deps")
}
