//! The one error type of the crate and its mapping to Prometheus's `errorType`.

/// Why a query failed; each variant maps to one Prometheus `errorType` so the API
/// layer can answer exactly as Prometheus would.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The query text (or a query parameter such as the step) is invalid.
    #[error("{0}")]
    Parse(String),
    /// The query is valid but failed while evaluating, e.g. a many-to-many match.
    #[error("{0}")]
    Execution(String),
    /// The query ran past `Limits::timeout`.
    #[error("query timed out in query execution")]
    Timeout,
    /// The query needed more than `Limits::max_samples` samples in memory.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The series source failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The series source cannot be reached for now (a database down or
    /// slow): worth retrying, unlike [`EvalError::Storage`].
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl EvalError {
    /// What a source without logs answers `count_logs` (see
    /// [`crate::SeriesSource::count_logs`]).
    pub fn no_log_store() -> EvalError {
        EvalError::Execution("count_logs needs a log store".into())
    }

    /// Prometheus's `errorType` string for this error (`bad_data`, `execution`, ...).
    pub fn error_type(&self) -> &'static str {
        match self {
            EvalError::Parse(_) => "bad_data",
            EvalError::Execution(_) | EvalError::TooManySamples => "execution",
            EvalError::Timeout => "timeout",
            EvalError::Storage(_) => "internal",
            EvalError::Unavailable(_) => "unavailable",
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, EvalError>;

/// Shorthand for an execution error, the common failure inside the engine.
pub(crate) fn exec_err<T>(msg: impl Into<String>) -> Result<T> {
    Err(EvalError::Execution(msg.into()))
}
