//! A full disk, for real: Strand's data directory on a 64 MiB tmpfs, part
//! of it taken by a balloon file. Ingest fills the rest; from then on
//! requests are refused 503 with the reason (no space left on device), not
//! acknowledged, while queries keep answering. Once the balloon is removed,
//! ingest resumes by itself, and after a `kill -9` every acknowledged
//! sample is there.
//!
//! Mounting needs root (as CI runs); without it the test fails, saying so.

use std::path::{Path, PathBuf};
use std::process::Command;

use strand_testkit::{DEADLINE, Strand, eventually};

use crate::support::remote_write as rw;
use crate::support::{STRAND_BINARY, now_ms};

/// A tmpfs mounted for the test, unmounted when dropped.
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(megabytes: u32) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("the disk-full test runs `mount` (util-linux)");
        assert!(
            output.status.success(),
            "the disk-full test mounts a {megabytes} MiB tmpfs and needs root for it: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows (or shrinks) the filesystem to `megabytes`.
    pub(crate) fn resize(&self, megabytes: u32) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}m")])
            .arg(self.dir.path())
            .status()
            .expect("`mount` runs");
        assert!(status.success(), "remounting the tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// One remote-write request of 200 new series (long label values, so the
/// disk fills in a few hundred requests); returns the status and body.
async fn write_batch(daemon: &Strand, batch: usize) -> (u16, String) {
    let now = now_ms();
    let padding = "p".repeat(400);
    let series = (0..200)
        .map(|i| {
            let id = format!("{batch}-{i}");
            rw::series(
                "fill",
                &[("id", id.as_str()), ("padding", padding.as_str())],
                &[(now, 1.0)],
            )
        })
        .collect();
    rw::write(daemon, &rw::request(series)).await
}

async fn stored_series(daemon: &Strand) -> u64 {
    let (status, body) = daemon
        .get_json_query("/api/v1/query", &[("query", "count(fill)")])
        .await;
    assert_eq!(status, 200, "queries answer: {body}");
    body["data"]["result"][0]["value"][1]
        .as_str()
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_ingest_clearly_and_recovers_when_space_returns() {
    let disk = Tmpfs::mount(64);
    let balloon: PathBuf = disk.path().join("balloon");
    std::fs::write(&balloon, vec![1u8; 24 << 20]).unwrap();
    let data = disk.path().join("data");
    let daemon = Strand::spawn(STRAND_BINARY, &data, &["--max-series", "10000000"]).await;

    // Fill the disk; every acknowledged batch is remembered.
    let mut acked = 0u64;
    let mut refusal = None;
    for batch in 0..5_000 {
        let (status, body) = write_batch(&daemon, batch).await;
        match status {
            204 => acked += 1,
            503 => {
                refusal = Some(body);
                break;
            }
            other => panic!("batch {batch}: HTTP {other}: {body}\n{}", daemon.log()),
        }
    }
    let refusal = refusal.expect("the disk filled up");
    assert!(
        refusal.contains("No space left on device"),
        "the refusal says why: {refusal}"
    );
    assert!(acked > 10, "only {acked} batches before the disk was full");
    // Still full: still refused, and queries answer meanwhile.
    assert_eq!(write_batch(&daemon, 100_000).await.0, 503);
    assert!(stored_series(&daemon).await >= acked * 200);

    // Space returns: ingest resumes by itself.
    std::fs::remove_file(&balloon).unwrap();
    let mut batch = 200_000;
    eventually(DEADLINE, || {
        batch += 1;
        let daemon = &daemon;
        async move { (write_batch(daemon, batch).await.0 == 204).then_some(()) }
    })
    .await
    .unwrap_or_else(|| panic!("ingest did not resume:\n{}", daemon.log()));
    acked += 1;
    let log = daemon.log();
    let lines = log.matches("WalWriteError").count();
    assert!(
        lines <= 3,
        "{lines} WalWriteError lines: the log is flooded"
    );

    // Nothing acknowledged is lost, through a kill -9.
    daemon.kill9();
    let daemon = Strand::spawn(STRAND_BINARY, &data, &["--max-series", "10000000"]).await;
    assert_eq!(
        stored_series(&daemon).await,
        acked * 200,
        "{}",
        daemon.log()
    );
    daemon.stop().await;
}
