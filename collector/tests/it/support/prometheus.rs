//! A real Prometheus as a child process, for the tests that compare with it
//! or use it as a client (remote write, scraping); killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strand_testkit::{free_port, require_tool};

/// A running Prometheus; killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Where its HTTP API answers.
    pub url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn binary() -> PathBuf {
        match std::env::var_os("PROMETHEUS_BIN") {
            Some(path) => PathBuf::from(path),
            None => require_tool(
                "prometheus",
                "this test runs a real Prometheus \
                 (Debian: `sudo apt-get install prometheus`)",
            ),
        }
    }

    /// Starts Prometheus with the configuration file `config` (YAML), its
    /// remote-write receiver on, and waits until it is ready.
    pub async fn start(config: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port().port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(Self::binary())
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-remote-write-receiver")
            .arg("--storage.tsdb.retention.time=30d")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        let mut prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = reqwest::get(format!("{}/-/ready", prometheus.url)).await
                && response.status().is_success()
            {
                return prometheus;
            }
            if let Some(status) = prometheus.child.try_wait().unwrap() {
                panic!("prometheus exited with {status}:\n{}", prometheus.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within 60s:\n{}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What Prometheus logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
