//! PromQL evaluation with the semantics of Prometheus 2.42.
//!
//! Queries are parsed with the `promql-parser` crate and evaluated against any
//! [`SeriesSource`]; this crate knows nothing about HTTP or how samples are stored.
//! The result is a [`Value`]; [`format_value`] and [`EvalError::error_type`] give the
//! pieces of Prometheus's JSON API that depend on evaluation.
//!
//! ```
//! use strand_promql::{instant_query, Labels, Limits, Series, SeriesSource, Value};
//! use promql_parser::label::Matcher;
//!
//! struct One;
//! impl SeriesSource for One {
//!     fn select(&self, m: &[Matcher], _: i64, _: i64) -> strand_promql::Result<Vec<Series>> {
//!         let labels = Labels::from(vec![("__name__".to_string(), "up".to_string())]);
//!         let matches = m.iter().all(|m| m.is_match(labels.get(&m.name).unwrap_or("")));
//!         Ok(if matches { vec![Series { labels, samples: vec![(0, 1.0)] }] } else { vec![] })
//!     }
//! }
//! let v = instant_query(&One, "sum(up) * 2", 10_000, &Limits::default()).unwrap();
//! assert!(matches!(v, Value::Vector(s) if s[0].v == 2.0));
//! ```
//!
//! # Layout
//!
//! - `eval`: the engine. Plans the data each selector needs and loads it once, then
//!   evaluates the tree at each step; selectors, staleness, `offset`/`@`, subqueries,
//!   limits.
//! - `functions`: the function library (`rate`, `histogram_quantile`, `label_replace`, ...).
//! - `aggregate`: aggregation operators and grouping.
//! - `binary`: arithmetic, comparison and set operators and vector matching.
//! - `gomath`: Go's `exp`, `pow`, logarithms and trigonometric functions, whose
//!   last bits differ from the C library's; Prometheus answers with Go's.
//! - `value`: labels, samples, series, result values, float formatting.
//! - `logs`: `count_logs`, Strand's one function beyond 2.42: log records
//!   matching a log query in a window, counted by the source
//!   ([`SeriesSource::count_logs`]), grouped into labels here ([`LogField`]).
//! - `error`: [`EvalError`] and its Prometheus `errorType`.
//!
//! Invariant: nothing here panics on any query text or data; every failure is an
//! [`EvalError`]. Floats are combined in the order Prometheus 2.42 combines them
//! (compensated sums in `*_over_time` and `deriv`, running means, the rate's
//! extrapolation factor), so answers are equal to the last bit.
//!
//! # Known differences from Prometheus 2.42
//!
//! - Float samples only: native-histogram functions (`histogram_count`, `histogram_sum`,
//!   `histogram_fraction`) always return nothing, as 2.42 does for float series.
//! - Range queries are evaluated step by step. Functions whose result depends on the
//!   evaluation time under a step-invariant `@` (e.g. `predict_linear(x[5m] @ t, ...)`)
//!   use the step's time where 2.42 uses the range start.
//! - `max_samples` is approximate: it counts the samples selected during one step plus
//!   the points already in the range-query result, not Prometheus's exact peak.
//! - Two series with the same labels at one step of a range query fail the query
//!   ("vector cannot contain metrics with the same labelset"); 2.42 does not check this
//!   in every range-query path.
//! - `holt_winters` is registered with `promql-parser` under its 2.42 name (process-wide,
//!   once); syntax newer than 2.42 that the parser accepts (`limitk`, `fill`, `or` inside
//!   braces, 3.x functions) is rejected as `bad_data`.
//! - `count_logs("<log query>", "<window>"[, "<field>", ...])` is registered the
//!   same way; Prometheus has no such function.

#![warn(missing_docs)]

mod aggregate;
mod binary;
mod error;
mod eval;
mod functions;
mod gomath;
mod logs;
mod value;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use error::{EvalError, Result};
pub use functions::quantile;
pub use logs::LogField;
pub use value::{Labels, STALE_NAN_BITS, Sample, Series, Value, format_value, is_stale_nan};

/// What the evaluator reads from; implemented by the TSDB (and by test doubles), so the
/// engine stays independent of storage.
///
/// `select` returns every series matching all `matchers` with its samples in
/// `[start_ms, end_ms]` (inclusive), sorted by time. Staleness markers (see
/// [`STALE_NAN_BITS`]) are returned as samples; the engine honours them. A
/// source refuses a selection over its own limits with
/// [`EvalError::Execution`], and reports its failures as
/// [`EvalError::Storage`].
pub trait SeriesSource {
    /// Series matching all matchers, with samples in `[start_ms, end_ms]`.
    fn select(
        &self,
        matchers: &[promql_parser::label::Matcher],
        start_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<Series>>;

    /// [`select`](Self::select) for a selector the engine reads only as an
    /// instant vector at `steps.first_ms`, `steps.first_ms + steps.step_ms`,
    /// ... up to `end_ms` (each time taking the newest sample of the last
    /// lookback): a source may return, of each series, only the newest
    /// sample of each step, `(t - step, t]` (and the newest at or before
    /// the first), which gives the same answer from fewer samples. The
    /// default returns them all.
    fn select_steps(
        &self,
        matchers: &[promql_parser::label::Matcher],
        start_ms: i64,
        end_ms: i64,
        steps: Steps,
    ) -> Result<Vec<Series>> {
        let _ = steps;
        self.select(matchers, start_ms, end_ms)
    }

    /// What `count_logs` counts: the log records matching `query` (the log
    /// explorer's query syntax) whose timestamp is in
    /// `(at_ms - window_ms, at_ms]`, per distinct combination of the values
    /// of the `by` fields: each group's values (in the order of `by`; empty
    /// for a record without the field) with its count. Only groups with
    /// matches need be returned; without `by`, one group without values.
    ///
    /// A query the source cannot read is refused with [`EvalError::Parse`]
    /// saying why (the engine names the argument). The default is for
    /// sources without logs (a metrics-only store, test doubles): every
    /// `count_logs` fails with [`EvalError::Execution`].
    fn count_logs(
        &self,
        query: &str,
        window_ms: i64,
        by: &[LogField],
        at_ms: i64,
    ) -> Result<Vec<(Vec<String>, u64)>> {
        let _ = (query, window_ms, by, at_ms);
        Err(EvalError::no_log_store())
    }
}

/// The evaluation times of [`SeriesSource::select_steps`]: `first_ms` and
/// every `step_ms` after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    /// The first time the selector is read at (its offset applied).
    pub first_ms: i64,
    /// Between one time and the next.
    pub step_ms: i64,
}

/// Resource limits of one query, so a single query cannot take the daemon down.
#[derive(Clone, Debug)]
pub struct Limits {
    /// How far back an instant selector looks for a sample (Prometheus: 5m).
    pub lookback_ms: i64,
    /// Most samples held in memory at once (Prometheus: 50,000,000).
    pub max_samples: usize,
    /// Wall-clock budget of the query (Prometheus: 2m).
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            lookback_ms: 300_000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Deepest nesting of parentheses, brackets and braces a query may have.
/// Dashboards nest a handful of levels; the limit keeps the recursion of
/// parsing and evaluation far inside a thread's stack.
pub const MAX_NESTING: usize = 128;
/// Most operator characters (`+ - * / % ^ = ! < > ~`, outside strings and
/// label matchers) a query may have: a chain of binary or unary operators
/// nests as deep as it is long.
pub const MAX_OPERATORS: usize = 256;

/// The deepest nesting of `(`, `[` and `{`, and the number of operator
/// characters outside braces (label matchers do not nest), outside quoted
/// strings (`"…"`, `'…'` and `` `…` ``, with
/// backslash escapes in the first two). Shared with the log query syntax,
/// which quotes and nests the same way.
pub fn nesting(text: &str) -> (usize, usize) {
    let (mut depth, mut deepest, mut operators) = (0usize, 0usize, 0usize);
    let mut braces = 0usize;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q != '`' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' | '`' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                    braces += usize::from(c == '{');
                }
                ')' | ']' | '}' => {
                    depth = depth.saturating_sub(1);
                    braces = braces.saturating_sub(usize::from(c == '}'));
                }
                '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' | '~' if braces == 0 => {
                    operators += 1
                }
                _ => {}
            },
        }
    }
    (deepest, operators)
}

/// Parses a query, turning parser failures (and, defensively, parser panics) into
/// `bad_data` errors. Public so that series selectors elsewhere in an API
/// (`match[]`) are read exactly as queries are.
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr> {
    // The parser and the evaluator recurse once per level: a hostile query
    // must not be able to overflow a thread's stack and abort the process.
    let (depth, operators) = nesting(query);
    if depth > MAX_NESTING || operators > MAX_OPERATORS {
        return Err(EvalError::Parse(format!(
            "query too complex: at most {MAX_NESTING} levels of parentheses, brackets and braces and {MAX_OPERATORS} operators are accepted"
        )));
    }
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // promql-parser 0.11 only knows the 3.x name `double_exponential_smoothing`;
    // 2.42 calls it `holt_winters`. The registry is process-global, hence the Once.
    REGISTER.call_once(|| {
        use promql_parser::parser::{Function, register_extra_functions, value::ValueType};
        let args = vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar];
        let hw = Function::new("holt_winters", args, 0, ValueType::Vector, false);
        // Strand's own: a log query and a window, then any number of fields.
        let args = vec![ValueType::String, ValueType::String, ValueType::String];
        let count_logs = Function::new("count_logs", args, -1, ValueType::Vector, false);
        // Only fails on a clash with a built-in, which would make it parse anyway.
        let _ = register_extra_functions(vec![hw, count_logs]);
    });
    let query = raw_strings_as_quoted(query);
    std::panic::catch_unwind(|| promql_parser::parser::parse(&query))
        .unwrap_or_else(|_| Err("invalid promql query".to_owned()))
        .map_err(EvalError::Parse)
}

/// Rewrites every backtick (raw) string into the equivalent double-quoted one.
/// PromQL's raw strings take no escapes (`` `10\.0` `` is the regex `10\.0`),
/// but promql-parser 0.11's lexer applies escape rules inside them and
/// rejects `\.`; quoting them is exact and leaves everything else alone.
/// Unterminated strings are returned unchanged, for the parser to report.
fn raw_strings_as_quoted(query: &str) -> std::borrow::Cow<'_, str> {
    if !query.contains('`') {
        return query.into();
    }
    let mut out = String::with_capacity(query.len() + 16);
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                out.push(c);
                loop {
                    let Some(inner) = chars.next() else {
                        return query.into();
                    };
                    out.push(inner);
                    if inner == '\\' {
                        match chars.next() {
                            Some(escaped) => out.push(escaped),
                            None => return query.into(),
                        }
                    } else if inner == c {
                        break;
                    }
                }
            }
            '#' => {
                out.push(c);
                for inner in chars.by_ref() {
                    out.push(inner);
                    if inner == '\n' {
                        break;
                    }
                }
            }
            '`' => {
                out.push('"');
                loop {
                    match chars.next() {
                        Some('`') => break,
                        Some('\\') => out.push_str("\\\\"),
                        Some('"') => out.push_str("\\\""),
                        Some('\n') => out.push_str("\\n"),
                        Some(other) => out.push(other),
                        None => return query.into(),
                    }
                }
                out.push('"');
            }
            _ => out.push(c),
        }
    }
    out.into()
}

/// Evaluates `query` at `time_ms` (Prometheus `/api/v1/query`).
pub fn instant_query(
    src: &dyn SeriesSource,
    query: &str,
    time_ms: i64,
    limits: &Limits,
) -> Result<Value> {
    let expr = parse(query)?;
    eval::Evaluator::new(src, limits, time_ms, time_ms).instant(&expr, time_ms)
}

/// Evaluates `query` at `start_ms, start_ms + step_ms, ... <= end_ms` (Prometheus
/// `/api/v1/query_range`). Returns a [`Value::Matrix`] with one point per step where the
/// expression has a value, series sorted by labels; the expression must be a scalar or
/// an instant vector.
pub fn range_query(
    src: &dyn SeriesSource,
    query: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    limits: &Limits,
) -> Result<Value> {
    let expr = parse(query)?;
    eval::Evaluator::new(src, limits, start_ms, end_ms).range(&expr, step_ms)
}
