//! A query's time budget and why a query did not run to an answer: shared
//! by the query pool, which enforces budgets, and the stores, whose reads
//! check them between units of work.

use std::time::{Duration, Instant};

/// Why a query did not run to an answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueryRefused {
    #[error("too many queries: {running} are running and {queued} waiting; retry later")]
    Busy { running: usize, queued: usize },
    #[error("query timed out after {0:?}")]
    Timeout(Duration),
    #[error("query failed: {0}")]
    Panicked(String),
}

/// When a query's time budget runs out, for the query itself to check
/// between units of work (log partitions, trace candidates): past it, the
/// query stops and frees its thread, instead of working on for a caller
/// that was answered `Timeout` already.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Deadline {
    /// `None`: never (work that is not a request's query, tests).
    at: Option<Instant>,
    budget: Duration,
}

impl Default for Deadline {
    fn default() -> Deadline {
        Deadline::never()
    }
}

impl Deadline {
    /// A deadline that never comes.
    pub fn never() -> Deadline {
        Deadline {
            at: None,
            budget: Duration::MAX,
        }
    }

    /// The deadline `budget` from now.
    pub fn after(budget: Duration) -> Deadline {
        Deadline {
            at: Some(Instant::now() + budget),
            budget,
        }
    }

    /// `Timeout` once the deadline has passed.
    pub fn check(&self) -> Result<(), QueryRefused> {
        match self.at {
            Some(at) if Instant::now() > at => Err(QueryRefused::Timeout(self.budget)),
            _ => Ok(()),
        }
    }
}
