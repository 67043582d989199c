//! The log stores' feed: durable records wait here, in WAL order,
//! for one thread that turns them into documents and adds them to their
//! partitions' writers.
//!
//! Without it the WAL writer thread would add them itself, and a commit
//! (which holds a partition's writer while tantivy finishes and writes its
//! segments, a good part of a second under load) would stop every group
//! commit, and so every acknowledgement of any signal, until it is done.
//! With it the WAL writer only waits when the feed holds
//! [`FEED_RECORDS`] records already (the backpressure tantivy's own
//! document queue gave before).
//!
//! A commit must hold everything acknowledged before it began, so
//! [`LogFeed::wait_fed`] comes first: it waits until what was handed over
//! by then has been added.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::model::LogRecord;
use crate::store::log_search::LogRecordStore;

/// Records the feed holds at most before [`LogFeed::push`] waits: a few
/// requests' worth, to keep the WAL writing while a commit holds the
/// writer, but no more: acknowledged records waiting here are not
/// searchable yet and keep their WAL segments from being trimmed (under a
/// size limit, the data directory's bound counts on that), and a deeper
/// queue would only make them wait longer.
const FEED_RECORDS: usize = 1_024;

/// See the module docs.
pub struct LogFeed {
    store: Arc<dyn LogRecordStore>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a batch is pushed or added, or the feed closes.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// WAL sequence numbers with their records, oldest first.
    batches: VecDeque<(u64, Vec<LogRecord>)>,
    /// Records in `batches`.
    records: usize,
    /// Highest sequence number pushed.
    pushed_through: u64,
    /// Highest sequence number added (or failed: the error is logged and
    /// the WAL keeps the records until they are committed, as before).
    fed_through: u64,
    closed: bool,
}

impl LogFeed {
    /// Starts the feed's thread, which adds to `store`.
    pub fn start(store: Arc<dyn LogRecordStore>) -> std::io::Result<LogFeed> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let (feeding, adding_to) = (shared.clone(), store.clone());
        let thread = std::thread::Builder::new()
            .name("strand-log-feed".into())
            .spawn(move || feeding.run(&*adding_to))?;
        Ok(LogFeed {
            store,
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hands the durable records of WAL record `seq` over (called in
    /// sequence order); waits while the feed is full. Once the feed is shut
    /// down, adds them at once.
    pub fn push(&self, seq: u64, records: Vec<LogRecord>) {
        let mut state = self.shared.lock();
        if state.closed {
            drop(state);
            apply(&*self.store, seq, records);
            return;
        }
        // One batch larger than the whole budget goes in alone.
        while state.records > 0 && state.records + records.len() > FEED_RECORDS {
            state = self.shared.wait(state);
        }
        state.records += records.len();
        state.pushed_through = seq;
        state.batches.push_back((seq, records));
        self.shared.changed.notify_all();
    }

    /// Waits until every record pushed before the call has been added to
    /// its partition's writer.
    pub fn wait_fed(&self) {
        let mut state = self.shared.lock();
        let target = state.pushed_through;
        while state.fed_through < target {
            state = self.shared.wait(state);
        }
    }

    /// Adds what is left and stops the thread (later pushes add at once).
    pub fn shutdown(&self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
        let thread = self.thread.lock().expect("not poisoned").take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for LogFeed {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
    }

    fn wait<'a>(&self, state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(state).expect("not poisoned")
    }

    /// Adds batches in order until the feed is closed and empty. Joins
    /// memory release rounds between batches and after each
    /// `RELEASE_CHECK_INTERVAL` spent waiting for one.
    fn run(&self, store: &dyn LogRecordStore) {
        loop {
            crate::memory::release_if_asked();
            let (seq, records) = {
                let mut state = self.lock();
                loop {
                    if let Some(batch) = state.batches.pop_front() {
                        break batch;
                    }
                    if state.closed {
                        return;
                    }
                    let (next, waited) = self
                        .changed
                        .wait_timeout(state, crate::memory::RELEASE_CHECK_INTERVAL)
                        .expect("not poisoned");
                    state = next;
                    if waited.timed_out() {
                        crate::memory::release_if_asked();
                    }
                }
            };
            let count = records.len();
            apply(store, seq, records);
            let mut state = self.lock();
            state.records -= count;
            state.fed_through = seq;
            self.changed.notify_all();
        }
    }
}

/// Adds the records of WAL record `seq` to `store`, logging what fails
/// (tantivy may panic on a damaged partition: that fails only these
/// records, and the feed goes on).
fn apply(store: &dyn LogRecordStore, seq: u64, records: Vec<LogRecord>) {
    let added =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store.apply(seq, records)));
    match added {
        Ok(Ok(_)) => {}
        // The WAL has the records: they are indexed on replay.
        Ok(Err(error)) => tracing::error!(seq, %error, "LogIndexError"),
        Err(_) => tracing::error!(seq, "LogIndexError: adding the records panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::sample_log;
    use crate::config::Retention;
    use crate::store::logs::LogStore;

    #[test]
    fn what_was_pushed_is_added_in_order_before_wait_fed_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open_hourly(dir.path(), Retention::MAX_FILE_BYTES));
        let feed = LogFeed::start(store.clone()).unwrap();
        let hour = 1_000 * 3_600 * 1_000_000_000u64;
        // More than the feed holds, so pushing waits for the thread.
        for seq in 1..=3u64 {
            let records = (0..FEED_RECORDS as u64)
                .map(|i| sample_log("a", hour + seq * 100_000 + i, "line"))
                .collect();
            feed.push(seq, records);
        }
        feed.wait_fed();
        assert_eq!(store.commit().unwrap(), 1);
        assert_eq!(store.durable_through(), 3);
        let docs: u64 = store
            .partitions_between(0, u64::MAX)
            .iter()
            .map(|p| p.searcher().num_docs())
            .sum();
        assert_eq!(docs, 3 * FEED_RECORDS as u64);
        // Once shut down, a push adds at once.
        feed.shutdown();
        feed.push(4, vec![sample_log("a", hour, "late")]);
        store.commit().unwrap();
        assert_eq!(store.durable_through(), 4);
    }
}
