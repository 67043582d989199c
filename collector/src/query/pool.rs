//! Where queries run: a fixed set of worker threads at a lower CPU priority
//! than ingest, behind a bounded queue.
//!
//! Queries are the one workload a single request can make arbitrarily
//! expensive. Running them on their own threads bounds how many run at
//! once (the rest wait in a short queue, and beyond it are refused with
//! "retry later"), and the threads' nice value lets the kernel give the
//! write path the CPU first, so an expensive query slows other queries, not
//! ingest. A query that outlives its time budget is answered with a
//! timeout at once; its thread finishes the work it cannot interrupt (the
//! PromQL evaluator checks its own deadline and stops).
//!
//! Point lookups (a trace by its id) have threads of their own at the
//! daemon's priority: their cost is bounded by the one trace they read (a
//! few index keys and blocks), not by what a request asks for, and at nice
//! 19 a sub-millisecond lookup waited tens of milliseconds for the CPU
//! whenever anything else ran. They are bounded the same way (as many
//! threads, as long a queue, the same time budget).
//!
//! A query that finds little costs less than its hand-off to a thread and
//! back; [`QueryPool::run_quick_first`] lets the caller try it first on
//! the async worker, under a budget small enough not to hold up ingest.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::config::QuerySettings;
pub use crate::deadline::{Deadline, QueryRefused};

/// The query threads' nice value: the lowest priority short of
/// SCHED_IDLE, so that under contention the write path gets nearly all of
/// the CPU (CFS weighs nice 19 at 15 against nice 0's 1024) and queries
/// still progress.
const QUERY_NICENESS: libc::c_int = 19;

type Job = Box<dyn FnOnce() + Send>;

/// The query threads and their queue; cheap to clone.
#[derive(Clone)]
pub struct QueryPool {
    jobs: Sender<Job>,
    /// The point lookups' threads (see the module docs).
    lookups: Sender<Job>,
    /// Set while a quick attempt runs on an async worker: one at a time.
    quick_running: Arc<AtomicBool>,
    settings: QuerySettings,
}

impl QueryPool {
    /// Starts `settings.workers` threads named `strand-query-N` and as many
    /// named `strand-lookup-N`.
    pub fn start(settings: &QuerySettings) -> std::io::Result<QueryPool> {
        Ok(QueryPool {
            jobs: start_threads(settings, "strand-query", true)?,
            lookups: start_threads(settings, "strand-lookup", false)?,
            quick_running: Arc::new(AtomicBool::new(false)),
            settings: settings.clone(),
        })
    }

    /// The time budget of one query.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// The most samples one PromQL query may hold.
    pub fn max_samples(&self) -> usize {
        self.settings.max_samples
    }

    /// The deadline of a query submitted now, which [`QueryPool::run`]
    /// also answers `Timeout` at.
    pub fn deadline(&self) -> Deadline {
        Deadline::after(self.settings.timeout)
    }

    /// Series one selector may load (`--query-max-series`).
    pub fn max_series(&self) -> usize {
        self.settings.max_series
    }

    /// Runs `query` on a query thread and waits for its answer, at most the
    /// time budget (counted from now, queueing included).
    pub async fn run<T: Send + 'static>(
        &self,
        query: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryRefused> {
        self.submit(&self.jobs, query).await
    }

    /// Tries `quick` on the calling async worker and, when it gives no
    /// answer, runs `query` on a query thread as [`QueryPool::run`] does.
    ///
    /// Handing a query to a query thread and its answer back costs two
    /// thread wake-ups, about as much as evaluating a query that finds
    /// little or nothing; `quick` is such a query under a budget of its own
    /// (a millisecond, a few series), giving up (`None`) beyond it. One
    /// attempt runs at a time, so the other async workers stay free for
    /// ingest; while one runs, queries go straight to the threads. A
    /// panicking attempt counts as no answer: `query` then meets the same
    /// panic and reports it.
    pub async fn run_quick_first<T: Send + 'static>(
        &self,
        quick: impl FnOnce() -> Option<T>,
        query: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryRefused> {
        if let Some(_running) = QuickAttempt::start(&self.quick_running)
            && let Ok(Some(answer)) = std::panic::catch_unwind(AssertUnwindSafe(quick))
        {
            return Ok(answer);
        }
        self.run(query).await
    }

    /// Runs a point lookup, one whose cost the data bounds, not the request
    /// (a trace by id), as [`QueryPool::run`] does but on the lookup
    /// threads, at the daemon's priority.
    pub async fn run_lookup<T: Send + 'static>(
        &self,
        lookup: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryRefused> {
        self.submit(&self.lookups, lookup).await
    }

    async fn submit<T: Send + 'static>(
        &self,
        jobs: &Sender<Job>,
        query: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, QueryRefused> {
        let timeout = self.settings.timeout;
        let deadline = Instant::now() + timeout;
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move || {
            // Waited out its budget in the queue: the caller has gone.
            if Instant::now() > deadline {
                return;
            }
            let result = std::panic::catch_unwind(AssertUnwindSafe(query))
                .map_err(|panic| QueryRefused::Panicked(panic_message(panic.as_ref())));
            let _ = answer.send(result);
        });
        match jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(QueryRefused::Busy {
                    running: self.settings.workers,
                    queued: self.settings.queue,
                });
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(QueryRefused::Panicked(
                    "the query threads have stopped".into(),
                ));
            }
        }
        match tokio::time::timeout(timeout, answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(QueryRefused::Timeout(timeout)),
        }
    }
}

/// The one quick attempt running; clears the flag when dropped.
struct QuickAttempt<'a>(&'a AtomicBool);

impl<'a> QuickAttempt<'a> {
    /// `None` while another attempt runs.
    fn start(running: &'a AtomicBool) -> Option<QuickAttempt<'a>> {
        running
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| QuickAttempt(running))
    }
}

impl Drop for QuickAttempt<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Starts `settings.workers` threads named `name-N` taking jobs from one
/// queue; `lower` lowers their priority.
fn start_threads(
    settings: &QuerySettings,
    name: &str,
    lower: bool,
) -> std::io::Result<Sender<Job>> {
    let (jobs, queue) = crossbeam_channel::bounded::<Job>(settings.queue);
    for n in 0..settings.workers {
        let queue = queue.clone();
        std::thread::Builder::new()
            .name(format!("{name}-{n}"))
            .spawn(move || {
                if lower {
                    lower_priority();
                }
                work(&queue)
            })?;
    }
    Ok(jobs)
}

/// Runs jobs until the pool is dropped. Every idle thread waits at the
/// queue itself, so a job wakes exactly one thread (a queue behind a mutex
/// woke a second one per job, to take over the wait: a context switch more
/// than a sub-millisecond query can afford). The wait is cut every
/// `RELEASE_CHECK_INTERVAL` for the thread to join a memory release round.
fn work(queue: &Receiver<Job>) {
    loop {
        crate::memory::release_if_asked();
        let job = match queue.recv_timeout(crate::memory::RELEASE_CHECK_INTERVAL) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            // Every pool handle dropped: the daemon is stopping.
            Err(RecvTimeoutError::Disconnected) => return,
        };
        job();
    }
}

/// Raises this thread's nice value (Linux: per thread).
fn lower_priority() {
    // SAFETY: gettid and setpriority on the calling thread; no memory is
    // shared with the kernel.
    let result = unsafe {
        let thread = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread as libc::id_t, QUERY_NICENESS)
    };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "QueryPriorityUnchanged: query threads run at the daemon's priority"
        );
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(workers: usize, queue: usize, timeout: Duration) -> QuerySettings {
        QuerySettings {
            timeout,
            max_samples: 1000,
            max_series: 1000,
            workers,
            queue,
        }
    }

    /// Occupies a pool of one query thread and a queue of one: a query that
    /// runs until the returned sender sends, and one queued behind it (not
    /// yet polled: poll it once to enqueue it).
    async fn fill(
        pool: &QueryPool,
    ) -> (
        std::sync::mpsc::Sender<()>,
        tokio::task::JoinHandle<Result<(), QueryRefused>>,
        std::pin::Pin<Box<impl Future<Output = Result<(), QueryRefused>> + '_>>,
    ) {
        let (started, running_now) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let running = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(move || {
                    started.send(()).unwrap();
                    released.recv().unwrap()
                })
                .await
            }
        });
        running_now.await.unwrap();
        (release, running, Box::pin(pool.run(|| ())))
    }

    /// A context whose waker does nothing, for polling a future once by hand.
    fn context() -> std::task::Context<'static> {
        std::task::Context::from_waker(std::task::Waker::noop())
    }

    #[tokio::test]
    async fn answers_refuses_when_full_and_times_out() {
        let pool = QueryPool::start(&settings(1, 1, Duration::from_millis(300))).unwrap();
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));

        // One running, one queued: a third is refused at once.
        let (release, running, mut queued) = fill(&pool).await;
        assert!(queued.as_mut().poll(&mut context()).is_pending());
        assert_eq!(
            pool.run(|| ()).await,
            Err(QueryRefused::Busy {
                running: 1,
                queued: 1
            })
        );
        // The running one outlives its budget: answered with a timeout; so
        // is the queued one, which never starts once its budget is gone.
        assert_eq!(
            running.await.unwrap(),
            Err(QueryRefused::Timeout(Duration::from_millis(300)))
        );
        assert_eq!(
            queued.await,
            Err(QueryRefused::Timeout(Duration::from_millis(300)))
        );
        // Released, the thread skips the expired job and takes new ones
        // (refused as busy only until it has taken the expired one).
        release.send(()).unwrap();
        let again = loop {
            match pool.run(|| "again").await {
                Err(QueryRefused::Busy { .. }) => tokio::task::yield_now().await,
                answer => break answer,
            }
        };
        assert_eq!(again, Ok("again"));
    }

    #[tokio::test]
    async fn a_panicking_query_is_an_error_and_the_thread_lives_on() {
        // Generous: printing the panic's backtrace on a loaded machine takes
        // seconds, and the timeout is not what is tested.
        let pool = QueryPool::start(&settings(1, 4, Duration::from_secs(120))).unwrap();
        let error = pool.run(|| -> u8 { panic!("bad index") }).await;
        assert_eq!(error, Err(QueryRefused::Panicked("bad index".into())));
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }

    #[tokio::test]
    async fn a_quick_attempt_answers_or_gives_way_to_the_query_threads() {
        let pool = QueryPool::start(&settings(1, 1, Duration::from_secs(120))).unwrap();
        let here = std::thread::current().id();
        let current = || std::thread::current().id();
        // Answered here: the query never runs (it would answer elsewhere).
        assert_eq!(
            pool.run_quick_first(|| Some(current()), current).await,
            Ok(here)
        );
        // No answer, or a panic: the query thread answers.
        let there = pool.run_quick_first(|| None, current).await.unwrap();
        assert_ne!(there, here);
        let panicked = pool.run_quick_first(|| -> Option<u8> { panic!("bad index") }, || 2);
        assert_eq!(panicked.await, Ok(2));
        // While another attempt runs, none starts.
        let running = QuickAttempt::start(&pool.quick_running).unwrap();
        assert_eq!(pool.run_quick_first(|| Some(1), || 2).await, Ok(2));
        drop(running);
        assert_eq!(pool.run_quick_first(|| Some(1), || 2).await, Ok(1));
    }

    /// This thread's nice value.
    fn niceness() -> libc::c_int {
        // SAFETY: getpriority of the calling thread reads no memory of ours.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[tokio::test]
    async fn lookups_run_at_the_daemons_priority_beside_busy_queries() {
        let pool = QueryPool::start(&settings(1, 1, Duration::from_secs(120))).unwrap();
        let own = niceness();
        assert_eq!(pool.run(niceness).await, Ok(QUERY_NICENESS.max(own)));
        assert_eq!(pool.run_lookup(niceness).await, Ok(own));

        // Every query thread busy and the queue full: lookups still answer.
        let (release, running, mut queued) = fill(&pool).await;
        assert!(queued.as_mut().poll(&mut context()).is_pending());
        assert_eq!(pool.run_lookup(|| "found").await, Ok("found"));
        release.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Ok(()));
        assert_eq!(queued.await, Ok(()));
    }
}
