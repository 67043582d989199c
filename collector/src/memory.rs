//! Keeping the daemon within `--memory-limit`.
//!
//! Memory grows with load in a known set of places: ingest requests being
//! decoded, the WAL's queue, the span head, the log index writer, the trace
//! index cache and running queries. [`MemoryBudget::split`] gives each a
//! share of the limit, and the settings that bound them are lowered to fit
//! at startup (`config`). Two checks at the ingest edge hold the rest:
//!
//! - every ingest request takes its share of the in-flight budget, sized by
//!   its body, before the body is read ([`MemoryGuard::admit`]); when the
//!   budget is spent, the request is refused at once with 429 /
//!   RESOURCE_EXHAUSTED and Retry-After, so a flood of requests cannot
//!   decode more than the budget at a time;
//! - [`MemoryGuard::watch`] samples the resident set; above
//!   [`PRESSURE_ON`] of the limit, ingest is refused the same way and the
//!   pipeline is asked to flush, until it is back under [`PRESSURE_OFF`].
//!
//! Queries are never refused for memory: refusing writes is what keeps them
//! answering.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::SelfMetrics;

/// The smallest limit that holds the daemon's fixed costs (runtime, the
/// smallest log writer tantivy accepts, caches) with room for ingest.
pub const MIN_LIMIT: u64 = 128 << 20;

/// How much more memory a request takes while it is decoded and converted
/// than its body: the wire message, the decoded structs, the model records
/// and the WAL encoding are alive together.
pub const DECODE_EXPANSION: u64 = 8;

/// What an ingest request without a declared length (gRPC, chunked
/// uploads) is charged, before expansion: a typical exporter batch.
const UNKNOWN_BODY_BYTES: u64 = 512 << 10;

/// Share of the limit at which ingest is refused.
pub const PRESSURE_ON: f64 = 0.8;
/// Share of the limit under which ingest is accepted again.
pub const PRESSURE_OFF: f64 = 0.7;

/// How often memory use is sampled: a flood cannot outgrow the
/// headroom between [`PRESSURE_ON`] and the limit between two looks.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);

/// The in-flight budget is counted in KiB, so a semaphore's `u32` permits
/// cover any limit.
const PERMIT_BYTES: u64 = 1024;

/// The memory limit, shared among what grows with load. The shares add up
/// to 10.5/16 of the limit; the rest is the daemon's own (code, runtime,
/// connections, the metrics head under `--max-series`) and the allocator's
/// (memory freed but not yet returned to the system).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub limit: u64,
    /// Ingest requests being read, decoded and converted.
    pub in_flight_ingest: u64,
    /// Requests waiting for the WAL writer (`--wal-queue-bytes`).
    pub wal_queue: u64,
    /// Spans in memory before a flush (`--max-buffered-spans`).
    pub span_head: u64,
    /// The log index writer's indexing buffer.
    pub log_writer: u64,
    /// The trace index's page cache.
    pub index_cache: u64,
    /// Samples of running PromQL queries (`--query-max-samples`).
    pub queries: u64,
}

impl MemoryBudget {
    /// Splits `limit` bytes.
    pub fn split(limit: u64) -> MemoryBudget {
        let sixteenth = limit / 16;
        MemoryBudget {
            limit,
            in_flight_ingest: 2 * sixteenth,
            wal_queue: sixteenth,
            span_head: 3 * sixteenth,
            log_writer: 2 * sixteenth,
            index_cache: sixteenth / 2,
            queries: 2 * sixteenth,
        }
    }

    /// The largest request body that fits the in-flight budget once decoded.
    pub fn max_body_bytes(&self) -> u64 {
        self.in_flight_ingest / DECODE_EXPANSION
    }
}

/// Why ingest was refused for memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryRefusal {
    #[error(
        "the daemon uses {resident} bytes of its {limit}-byte memory limit (--memory-limit); retry later"
    )]
    Pressure { resident: u64, limit: u64 },
    #[error(
        "ingest requests being decoded hold the in-flight share of the memory limit (--memory-limit); retry later"
    )]
    InFlight,
}

/// The ingest edge's memory checks; a no-op without a limit.
#[derive(Clone)]
pub struct MemoryGuard {
    limited: Option<Arc<Limited>>,
}

struct Limited {
    budget: MemoryBudget,
    in_flight: Arc<Semaphore>,
    pressured: AtomicBool,
    metrics: SelfMetrics,
}

/// An admitted request's share of the in-flight budget, given back when it
/// is dropped (when the request is answered).
pub struct Admission {
    _permit: Option<OwnedSemaphorePermit>,
    in_flight: Option<(prometheus::IntGauge, i64)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((gauge, bytes)) = &self.in_flight {
            gauge.sub(*bytes);
        }
    }
}

impl MemoryGuard {
    /// A guard for `budget`, or one that admits everything.
    pub fn new(budget: Option<MemoryBudget>, metrics: &SelfMetrics) -> MemoryGuard {
        let limited = budget.map(|budget| {
            metrics.memory_limit.set(budget.limit as i64);
            for (share, bytes) in [
                ("in_flight_ingest", budget.in_flight_ingest),
                ("wal_queue", budget.wal_queue),
                ("span_head", budget.span_head),
                ("log_writer", budget.log_writer),
                ("index_cache", budget.index_cache),
                ("queries", budget.queries),
            ] {
                metrics
                    .memory_budget
                    .with_label_values(&[share])
                    .set(bytes as i64);
            }
            Arc::new(Limited {
                budget,
                in_flight: Arc::new(Semaphore::new(permits(budget.in_flight_ingest) as usize)),
                pressured: AtomicBool::new(false),
                metrics: metrics.clone(),
            })
        });
        MemoryGuard { limited }
    }

    /// Admits an ingest request whose body declares `body_bytes` (`None`:
    /// unknown), or says why not. Never waits.
    pub fn admit(&self, body_bytes: Option<u64>) -> Result<Admission, MemoryRefusal> {
        let Some(limited) = &self.limited else {
            return Ok(Admission {
                _permit: None,
                in_flight: None,
            });
        };
        let refused = |refusal: MemoryRefusal| {
            limited
                .metrics
                .requests_rejected
                .with_label_values(&["memory_limit"])
                .inc();
            Err(refusal)
        };
        if limited.pressured.load(Ordering::Acquire) {
            return refused(MemoryRefusal::Pressure {
                resident: limited.metrics.resident_memory.get() as u64,
                limit: limited.budget.limit,
            });
        }
        let cost = body_bytes
            .unwrap_or(UNKNOWN_BODY_BYTES)
            .min(limited.budget.max_body_bytes())
            .max(1)
            * DECODE_EXPANSION;
        match limited
            .in_flight
            .clone()
            .try_acquire_many_owned(permits(cost))
        {
            Ok(permit) => {
                let gauge = limited.metrics.ingest_in_flight_bytes.clone();
                gauge.add(cost as i64);
                Ok(Admission {
                    _permit: Some(permit),
                    in_flight: Some((gauge, cost as i64)),
                })
            }
            Err(_) => refused(MemoryRefusal::InFlight),
        }
    }

    /// Samples memory use until `stop`, refusing ingest while it is
    /// high and calling `relieve` (which asks the pipeline to flush) when it
    /// becomes so. Returns at once without a limit, or where the resident
    /// set cannot be read (then with a warning).
    pub async fn watch(self, relieve: impl Fn(), stop: impl Future<Output = ()>) {
        let Some(limited) = self.limited else { return };
        if resident_bytes().is_none() {
            tracing::warn!(
                "MemoryLimitUnwatched: memory use cannot be read on this system; \
                 only the in-flight and buffer budgets bound memory"
            );
            return;
        }
        let on = (limited.budget.limit as f64 * PRESSURE_ON) as u64;
        let off = (limited.budget.limit as f64 * PRESSURE_OFF) as u64;
        tokio::pin!(stop);
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticks.tick() => {}
            }
            let Some(resident) = resident_bytes() else {
                continue;
            };
            limited.metrics.resident_memory.set(resident as i64);
            let was = limited.pressured.load(Ordering::Acquire);
            let now = if was { resident > off } else { resident >= on };
            if now != was {
                limited.pressured.store(now, Ordering::Release);
                limited.metrics.memory_pressure.set(i64::from(now));
                if now {
                    tracing::warn!(
                        resident,
                        limit = limited.budget.limit,
                        "MemoryPressure: refusing ingest until memory use falls under {:.0}% of the limit",
                        PRESSURE_OFF * 100.0
                    );
                } else {
                    tracing::info!(resident, "MemoryPressureEnded: accepting ingest again");
                }
            }
            if now {
                relieve();
            }
        }
    }
}

fn permits(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(PERMIT_BYTES)).unwrap_or(u32::MAX)
}

/// The process's resident set in bytes (Linux: `/proc/self/statm`), as
/// `top` and the kernel's accounting see it: heap, code, and the pages of
/// the files it maps.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// Sets up the process's allocators to give back what an idle daemon does
/// not use. Call first thing in `main`, before the heap grows and before
/// other threads start.
///
/// - It keeps the kernel from backing the heap with 2 MiB transparent huge
///   pages. mimalloc asks for them on its arena (where the kernel's THP
///   mode is `madvise`, as on Debian), and then each small allocation that
///   first touches a 2 MiB stretch makes all of it resident: an empty
///   daemon held 50 MB of heap that way, and 4 MB without.
/// - It keeps the C library's `malloc`, which the C libraries underneath
///   (zstd above all) allocate with, to one arena. By default each thread
///   that calls it gets an arena of its own, up to 16 here, and after a
///   load each kept about half a megabyte at its top, where trimming does
///   not reach: 8 MB of an idle daemon's resident set. These callers
///   allocate a context per compressed block at most, so sharing one lock
///   costs nothing measurable.
pub fn prepare_process_memory() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag
    // on this process. It exists since Linux 3.15; on an older kernel the
    // call fails and leaves things as they were, which is all it can do.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    // SAFETY: mallopt takes plain integers and only changes glibc's
    // settings; before other threads exist nothing races with it.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Release rounds asked for so far; see [`release_freed_memory`].
static RELEASE_ROUNDS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last release round this thread took part in.
    static RELEASED_ROUND: Cell<u64> = const { Cell::new(0) };
}

/// How long the daemon's own threads that wait for work wait at most before
/// they look whether a release round was asked for.
pub const RELEASE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Hands the memory the allocator keeps for reuse (freed after a burst of
/// ingest, a merge, a closed log writer) back to the operating system.
/// mimalloc, the binary's allocator, returns freed pages only a while after
/// its next allocations ask it to: a daemon gone quiet allocates almost
/// nothing, so without this its resident set stays at the burst's peak.
/// It keeps them per thread, and only the owning thread can hand them
/// back: this releases the calling thread's and starts a round that every
/// other thread joins at its next [`release_if_asked`]. What the C
/// libraries underneath (zstd) freed, glibc's `malloc` keeps the same way;
/// `malloc_trim` hands it back too. Cheap: it walks the allocators' free
/// lists, not the heap.
pub fn release_freed_memory() {
    RELEASE_ROUNDS.fetch_add(1, Ordering::Relaxed);
    release_if_asked();
    // SAFETY: malloc_trim takes a plain integer and only returns free
    // pages of glibc's arenas to the kernel; it is thread-safe.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A thread's scratch buffers. A reader that holds one while it needs
/// another (a block read from disk, then decompressed) takes the other.
#[derive(Clone, Copy)]
pub enum Scratch {
    /// Bytes read from a file.
    Read,
    /// Bytes decompressed from them.
    Inflate,
}

/// Scratch buffers larger than this are freed after use rather than kept.
const SCRATCH_KEEP_BYTES: usize = 2 << 20;

thread_local! {
    /// This thread's scratch buffers, by [`Scratch`].
    static SCRATCH: RefCell<[Vec<u8>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `use_buffer` on `len` bytes of this thread's `which` scratch
/// buffer. A trace lookup reads and decompresses a block of half a
/// megabyte: a fresh zeroed buffer for each cost as much CPU as the
/// decompression. The buffer is zeroed once as it grows and not again, so
/// its bytes are whatever the last user left: read only what you wrote.
/// Kept until the thread joins a release round ([`release_if_asked`]).
pub fn with_scratch<T>(which: Scratch, len: usize, use_buffer: impl FnOnce(&mut [u8]) -> T) -> T {
    let slot = which as usize;
    let mut buffer = SCRATCH.with_borrow_mut(|buffers| std::mem::take(&mut buffers[slot]));
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    let result = use_buffer(&mut buffer[..len]);
    if buffer.len() <= SCRATCH_KEEP_BYTES {
        SCRATCH.with_borrow_mut(|buffers| buffers[slot] = buffer);
    }
    result
}

/// Releases this thread's share of the freed memory if a round of
/// [`release_freed_memory`] started since it last did. Threads call it
/// where they go idle: tokio's workers when they park, the daemon's own
/// threads between jobs and after each [`RELEASE_CHECK_INTERVAL`] spent
/// waiting for one. One atomic load when there is nothing to do.
pub fn release_if_asked() {
    let round = RELEASE_ROUNDS.load(Ordering::Relaxed);
    RELEASED_ROUND.with(|released| {
        if released.get() != round {
            released.set(round);
            SCRATCH.with_borrow_mut(|buffers| *buffers = [Vec::new(), Vec::new()]);
            // SAFETY: mi_collect takes no pointers and only tidies
            // mimalloc's own structures; it is safe from any thread at any
            // time (and a no-op for memory another allocator gave out).
            unsafe { libmimalloc_sys::mi_collect(true) }
        }
    });
}

/// Fewer WAL records than this between two checks of a [`QuietWatch`] is
/// quiet: the daemon's own writes (self-scrape, derived metrics) are a few
/// records every 15 s; any traffic is many more.
const QUIET_WAL_RECORDS: u64 = 10;

/// While the daemon stays quiet, freed memory is handed back again every
/// this many checks: background work (merges, compaction, retention)
/// frees memory without traffic.
const QUIET_CHECKS_BETWEEN_RELEASES: u32 = 10;

/// Decides when to call [`release_freed_memory`], from the WAL records
/// applied so far, read at a steady interval: at the first quiet check
/// after traffic, so a burst's memory goes back soon after it ends, then
/// every [`QUIET_CHECKS_BETWEEN_RELEASES`] checks while it stays quiet.
/// Never under traffic, where the allocator reuses what it keeps.
pub struct QuietWatch {
    applied: u64,
    /// Quiet checks in a row so far; `None` after traffic.
    quiet_checks: Option<u32>,
}

impl QuietWatch {
    /// Starts from `applied` records, as after traffic: the first quiet
    /// check releases (what starting up and replaying the WAL freed).
    pub fn new(applied: u64) -> QuietWatch {
        QuietWatch {
            applied,
            quiet_checks: None,
        }
    }

    /// Records a check with `applied` records so far; `true` if freed
    /// memory should go back now.
    pub fn release_now(&mut self, applied: u64) -> bool {
        let quiet = applied.saturating_sub(self.applied) < QUIET_WAL_RECORDS;
        self.applied = applied;
        if !quiet {
            self.quiet_checks = None;
            return false;
        }
        let checks = self.quiet_checks.map_or(0, |n| n.wrapping_add(1));
        self.quiet_checks = Some(checks);
        checks.is_multiple_of(QUIET_CHECKS_BETWEEN_RELEASES)
    }
}

/// Takes the pages of `bytes`, a region of a read-only file mapping, out of
/// the process's resident set once a one-off pass over them is done (e.g.
/// checking a whole file at startup): they stay in the page cache, and a
/// later read maps them back in. Without it, every page read once counts
/// against the daemon's RSS for as long as the file stays mapped.
///
/// # Safety
///
/// `bytes` must lie in a read-only mapping of a file (tantivy's
/// `MmapDirectory`): on anonymous or privately written memory,
/// `MADV_DONTNEED` would discard the contents.
pub unsafe fn drop_file_pages(bytes: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let Ok(page) = usize::try_from(page) else {
        return;
    };
    // Whole pages inside `bytes` only: the pages at either end may hold
    // bytes of the file outside it, which stay mapped.
    let start = (bytes.as_ptr() as usize).next_multiple_of(page);
    let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
    if end > start {
        // SAFETY: whole pages of the caller's read-only file mapping; a
        // later access faults them in again from the file.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_joins_the_release_round_started_elsewhere_once() {
        release_freed_memory();
        let started = RELEASE_ROUNDS.load(Ordering::Relaxed);
        std::thread::spawn(move || {
            assert!(RELEASED_ROUND.get() < started, "not joined yet");
            release_if_asked();
            let joined = RELEASED_ROUND.get();
            // Other tests may start rounds meanwhile: never an older one.
            assert!(joined >= started);
            release_if_asked();
            assert!(RELEASED_ROUND.get() >= joined);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn memory_goes_back_once_traffic_stops_then_now_and_then() {
        let mut watch = QuietWatch::new(0);
        let mut applied = 0;
        let mut check = |records: u64| {
            applied += records;
            watch.release_now(applied)
        };
        assert!(check(0), "quiet from the start");
        assert!(!check(2), "still quiet: released just now");
        assert!(!check(500), "traffic");
        assert!(!check(QUIET_WAL_RECORDS));
        assert!(
            check(QUIET_WAL_RECORDS - 1),
            "the first quiet check after it"
        );
        let quiet: Vec<bool> = (0..2 * QUIET_CHECKS_BETWEEN_RELEASES)
            .map(|_| check(1))
            .collect();
        let releases: Vec<usize> = (0..quiet.len()).filter(|&i| quiet[i]).collect();
        let every = QUIET_CHECKS_BETWEEN_RELEASES as usize;
        assert_eq!(releases, [every - 1, 2 * every - 1]);
    }

    #[test]
    fn scratch_buffers_are_reused_and_freed_in_a_release_round() {
        with_scratch(Scratch::Read, 100, |buffer| {
            assert_eq!(buffer.len(), 100);
            buffer.fill(7);
            with_scratch(Scratch::Inflate, 10, |inner| inner.fill(1));
        });
        with_scratch(Scratch::Read, 50, |buffer| {
            assert_eq!(buffer, [7; 50], "the same buffer, not zeroed again");
        });
        SCRATCH.with_borrow(|buffers| assert_eq!(buffers[0].len(), 100));
        release_freed_memory();
        SCRATCH.with_borrow(|buffers| assert!(buffers.iter().all(|b| b.capacity() == 0)));
        with_scratch(Scratch::Read, SCRATCH_KEEP_BYTES + 1, |_| {});
        SCRATCH.with_borrow(|buffers| assert_eq!(buffers[0].capacity(), 0, "too large to keep"));
    }

    fn guard(limit: u64) -> (MemoryGuard, SelfMetrics) {
        let metrics = SelfMetrics::new();
        (
            MemoryGuard::new(Some(MemoryBudget::split(limit)), &metrics),
            metrics,
        )
    }

    #[test]
    fn the_shares_leave_room_for_the_daemon_itself() {
        let budget = MemoryBudget::split(1 << 30);
        let shared = budget.in_flight_ingest
            + budget.wal_queue
            + budget.span_head
            + budget.log_writer
            + budget.index_cache
            + budget.queries;
        assert_eq!(shared, (1 << 30) / 32 * 21);
        assert_eq!(
            budget.max_body_bytes() * DECODE_EXPANSION,
            budget.in_flight_ingest
        );
    }

    #[test]
    fn requests_are_admitted_until_the_in_flight_budget_is_spent() {
        let (guard, metrics) = guard(256 << 20);
        // 32 MiB in flight: four 1 MiB bodies (8 MiB each decoded) fit.
        let admitted: Vec<_> = (0..4)
            .map(|_| guard.admit(Some(1 << 20)).unwrap())
            .collect();
        assert_eq!(metrics.ingest_in_flight_bytes.get(), 32 << 20);
        assert!(matches!(
            guard.admit(Some(1 << 20)),
            Err(MemoryRefusal::InFlight)
        ));
        drop(admitted);
        assert_eq!(metrics.ingest_in_flight_bytes.get(), 0);
        // A body larger than the budget is charged as the largest that fits,
        // so it is refused only while others are in flight.
        let whole = guard.admit(Some(1 << 40)).unwrap();
        assert!(guard.admit(None).is_err());
        drop(whole);
        assert!(guard.admit(None).is_ok());
        assert_eq!(
            metrics
                .requests_rejected
                .with_label_values(&["memory_limit"])
                .get(),
            2
        );
    }

    #[test]
    fn without_a_limit_everything_is_admitted() {
        let guard = MemoryGuard::new(None, &SelfMetrics::new());
        let held: Vec<_> = (0..1000)
            .map(|_| guard.admit(Some(1 << 30)).unwrap())
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[tokio::test]
    async fn pressure_refuses_ingest_and_asks_for_relief_until_memory_falls() {
        let resident = resident_bytes().expect("a Linux /proc");
        // A limit the test process is already over: pressure at once.
        let (guard, metrics) = guard(resident / 2);
        let relieved = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(guard.clone().watch(
            {
                let relieved = relieved.clone();
                move || {
                    relieved.fetch_add(1, Ordering::Relaxed);
                }
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.memory_pressure.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no pressure seen");
            tokio::time::sleep(SAMPLE_INTERVAL).await;
        }
        let refusal = guard
            .admit(Some(100))
            .err()
            .expect("refused under pressure");
        assert!(refusal.to_string().contains("--memory-limit"), "{refusal}");
        assert!(relieved.load(Ordering::Relaxed) > 0);
        let _ = stop_tx.send(());
        watcher.await.unwrap();
    }
}
