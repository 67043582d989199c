//! LogQL, the query language of Grafana's Loki data source, over the log
//! store: a subset (see `parse`) evaluated on the records a stream
//! selector finds.
//!
//! Streams are named as Loki 3 names OpenTelemetry data: a record's service
//! is the label `service_name`, each resource attribute a label whose name
//! has `.` and `-` turned into `_` (`deployment.environment` answers
//! `deployment_environment`). The labels of a stream pushed through Loki's
//! API are stored as resource attributes under their own names, so the same
//! selector finds them again. A record's attributes (Loki's structured
//! metadata) and its level (`detected_level`) are labels too, once the
//! stream is selected.
//!
//! The selector's `service_name="x"` narrows the search in the index;
//! everything else is checked on the decoded records, at most
//! [`MAX_SCANNED`] of them per query, so an expensive query is refused
//! rather than left to run.

pub mod parse;

use std::collections::{BTreeMap, HashMap};

pub use parse::{
    AggregateOp, BinaryOp, Expr, Grouping, LogExpr, MetricExpr, RangeFunction, Stage, parse,
};
use parse::{CompareOp, CompareValue, Comparison, FormatPiece, LabelPredicate, MatchOp};

use strand_promql::LogField;

use crate::model::{AttrValue, LogRecord};
use crate::query::logs::{self, Cursor, LogQuery, LogQueryError, Order};
use crate::query::pool::{Deadline, QueryRefused};
use crate::store::log_search::LogRecordStore;

/// Most records one query reads: beyond, it is refused (narrow the time
/// range or the selector).
pub const MAX_SCANNED: usize = 500_000;
/// Most points per series of a range query, as Loki's limit.
pub const MAX_POINTS: u64 = 11_000;
/// Most series a metric query produces.
pub const MAX_SERIES: usize = 50_000;
/// Records read from the store per page.
const PAGE: usize = 2_000;

/// What Strand's LogQL answers, for error messages.
const SUBSET: &str = "Strand answers stream selectors, line filters (|= != |~ !~), json, \
     logfmt, label filters, line_format with {{.label}}, drop, keep, unwrap, count_over_time, \
     rate, bytes_over_time, bytes_rate, sum/avg/max/min/quantile_over_time, sum, avg, max, \
     min, count, topk, bottomk, vector() and + - * / % between them";

/// Why a LogQL query failed.
#[derive(Debug, thiserror::Error)]
pub enum LogqlError {
    /// The query is not LogQL, or not of the subset: Loki's wording
    /// (`parse error at line 1, col 9: ...`), HTTP 400.
    #[error("parse error at line {line}, col {col}: {message}")]
    Parse {
        line: usize,
        col: usize,
        message: String,
    },
    /// Valid but over a limit; HTTP 400.
    #[error("{0}")]
    Limit(String),
    #[error(transparent)]
    Query(#[from] LogQueryError),
}

impl From<QueryRefused> for LogqlError {
    fn from(refused: QueryRefused) -> Self {
        LogqlError::Query(LogQueryError::Refused(refused))
    }
}

impl LogqlError {
    /// An error at byte `pos` of the query (its line and column are
    /// filled in by `parse`).
    fn parse(pos: usize, message: String) -> LogqlError {
        LogqlError::Parse {
            line: 0,
            col: pos,
            message,
        }
    }

    fn unsupported(pos: usize, what: &str) -> LogqlError {
        LogqlError::parse(pos, format!("not supported: {what} ({SUBSET})"))
    }

    /// Turns a byte offset into Loki's 1-based line and column.
    fn locate(self, text: &str) -> LogqlError {
        match self {
            LogqlError::Parse {
                line: 0,
                col,
                message,
            } => {
                let before = &text[..col.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                LogqlError::Parse { line, col, message }
            }
            other => other,
        }
    }

    /// Whether the caller can fix it (400) rather than the daemon.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            LogqlError::Parse { .. }
                | LogqlError::Limit(_)
                | LogqlError::Query(LogQueryError::Syntax(_))
        )
    }
}

/// A set of labels, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// Matches per (service, level) from the index.
pub type LevelCounts = Vec<((String, String), u64)>;

/// Where queries read records from: the log store, or a test's list.
pub trait LogSource {
    /// Calls `visit` with the records of `[start, end]` (nanoseconds) of
    /// the service `service` (any when `None`), newest first when
    /// `backward`, until it returns false.
    fn scan(
        &self,
        service: Option<&str>,
        start: u64,
        end: u64,
        backward: bool,
        visit: &mut dyn FnMut(&LogRecord) -> bool,
    ) -> Result<(), LogqlError>;

    /// The records of `[start, end]` of the service `service` (any when
    /// `None`) counted per (service, level), from the index alone.
    fn count_by_service_and_level(
        &self,
        service: Option<&str>,
        start: u64,
        end: u64,
    ) -> Result<LevelCounts, LogqlError>;

    /// Whether a record of `[start, end]` may carry the label `name` from
    /// its attributes or resource (true when unsure), which decides whether
    /// grouping by it can be counted from the index.
    fn may_have_label(&self, name: &str, start: u64, end: u64) -> Result<bool, LogqlError>;
}

/// The search text that finds a service's records in the index; empty (all
/// records) for a name tantivy's syntax cannot quote, which the records are
/// then checked for instead.
fn service_text(service: Option<&str>) -> String {
    service
        .filter(|s| !s.contains(['"', '\\']) && !s.is_empty())
        .map(|s| format!("service:\"{s}\""))
        .unwrap_or_default()
}

/// The log store as a [`LogSource`], read page by page within a deadline.
pub struct StoreSource<'a> {
    store: &'a dyn LogRecordStore,
    deadline: Deadline,
    /// Records read so far, and the bytes of their lines (for the stats).
    read: std::cell::Cell<(u64, u64)>,
}

impl<'a> StoreSource<'a> {
    pub fn new(store: &'a dyn LogRecordStore, deadline: Deadline) -> StoreSource<'a> {
        StoreSource {
            store,
            deadline,
            read: Default::default(),
        }
    }

    /// Records read so far and the bytes of their lines.
    pub fn read(&self) -> (u64, u64) {
        self.read.get()
    }
}

impl LogSource for StoreSource<'_> {
    fn scan(
        &self,
        service: Option<&str>,
        start: u64,
        end: u64,
        backward: bool,
        visit: &mut dyn FnMut(&LogRecord) -> bool,
    ) -> Result<(), LogqlError> {
        let query = LogQuery {
            text: service_text(service),
            start_nanos: start,
            end_nanos: end,
            order: if backward {
                Order::NewestFirst
            } else {
                Order::OldestFirst
            },
            deadline: self.deadline,
        };
        let mut cursor: Option<Cursor> = None;
        let mut read = 0usize;
        loop {
            let page = logs::search(self.store, &query, PAGE, cursor)?;
            for hit in &page.hits {
                read += 1;
                if read > MAX_SCANNED {
                    return Err(too_many_records());
                }
                let (records, bytes) = self.read.get();
                self.read
                    .set((records + 1, bytes + hit.record.body.len() as u64));
                if !visit(&hit.record) {
                    return Ok(());
                }
            }
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(()),
            }
            self.deadline.check()?;
        }
    }

    fn count_by_service_and_level(
        &self,
        service: Option<&str>,
        start: u64,
        end: u64,
    ) -> Result<LevelCounts, LogqlError> {
        let query = LogQuery {
            text: service_text(service),
            start_nanos: start,
            end_nanos: end,
            order: Order::NewestFirst,
            deadline: self.deadline,
        };
        let counts = logs::count_by(
            self.store,
            &query,
            &[LogField::Service, LogField::Severity],
            MAX_SERIES,
        )?;
        if counts.too_many {
            return Err(too_many_series());
        }
        Ok(counts
            .groups
            .into_iter()
            .filter_map(|(values, count)| match values.as_slice() {
                [service, level] => Some(((service.clone(), level.clone()), count)),
                _ => None,
            })
            .collect())
    }

    fn may_have_label(&self, name: &str, start: u64, end: u64) -> Result<bool, LogqlError> {
        // Label names are attribute names with `.` and `-` as `_`; a name
        // without `_` comes from that very attribute name alone.
        if name.contains('_') {
            return Ok(true);
        }
        Ok(logs::may_have_key(self.store, start, end, name)?)
    }
}

fn too_many_records() -> LogqlError {
    LogqlError::Limit(format!(
        "the query would read more than {MAX_SCANNED} log records; narrow the time range or \
         the stream selector"
    ))
}

/// A name as a label name: `.`, `-` and anything else outside
/// `[a-zA-Z0-9_]` become `_`, and a leading digit gets a `_` before it.
pub fn label_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// An attribute value as a label value; `None` for maps and arrays.
fn label_value(value: &AttrValue) -> Option<String> {
    match value {
        AttrValue::Map(_) | AttrValue::Array(_) => None,
        other => Some(other.to_display_string()),
    }
}

/// A record's stream labels: `service_name` and the resource attributes.
pub fn stream_labels(record: &LogRecord) -> Labels {
    let mut labels = Labels::new();
    for kv in &record.resource.attributes {
        if let Some(value) = label_value(&kv.value) {
            labels.insert(label_name(&kv.key), value);
        }
    }
    if !record.service().is_empty() {
        labels.insert("service_name".into(), record.service().to_string());
    }
    labels
}

/// The stream labels and, as Loki adds them to results, the structured
/// metadata (the record's attributes, trace and span ids) and
/// `detected_level`.
pub fn entry_labels(record: &LogRecord) -> Labels {
    let mut labels = stream_labels(record);
    for kv in &record.attributes {
        if let Some(value) = label_value(&kv.value) {
            labels.entry(label_name(&kv.key)).or_insert(value);
        }
    }
    // Loki 3 keeps an OTLP record's ids as structured metadata.
    if let Some(trace_id) = record.trace_id {
        labels
            .entry("trace_id".into())
            .or_insert_with(|| hex::encode(trace_id));
    }
    if let Some(span_id) = record.span_id {
        labels
            .entry("span_id".into())
            .or_insert_with(|| hex::encode(span_id));
    }
    let level = record.severity.level();
    if level != "unknown" {
        labels
            .entry("detected_level".into())
            .or_insert_with(|| level.to_string());
    }
    labels
}

/// The search text (tantivy's syntax) that narrows a selector's records in
/// the index; the records it finds must still be checked with `selected`.
pub fn index_text(logs: &LogExpr) -> String {
    service_text(selected_service(logs))
}

/// The value of `service_name="x"` in the selector, which the index finds.
fn selected_service(logs: &LogExpr) -> Option<&str> {
    logs.matchers
        .iter()
        .find(|m| m.name == "service_name" && m.op == MatchOp::Eq)
        .map(|m| m.value.as_str())
}

/// Whether a record's stream is selected by the matchers.
pub fn selected(logs: &LogExpr, record: &LogRecord) -> bool {
    let stream = stream_labels(record);
    logs.matchers
        .iter()
        .all(|m| m.matches(stream.get(&m.name).map(String::as_str).unwrap_or("")))
}

/// One line after the pipeline: its labels and text.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub labels: Labels,
    pub line: String,
}

/// Runs the pipeline's stages over one selected record; `None` when a
/// filter drops it.
pub fn run_pipeline(stages: &[Stage], record: &LogRecord) -> Option<Entry> {
    let mut labels = entry_labels(record);
    let mut line = record.body.clone();
    for stage in stages {
        match stage {
            Stage::Line(filter) => {
                if !filter.keeps(&line) {
                    return None;
                }
            }
            Stage::Json => extract_json(&line, &mut labels),
            Stage::Logfmt => extract_logfmt(&line, &mut labels),
            Stage::Labels(predicate) => {
                if !holds(predicate, &labels) {
                    return None;
                }
            }
            Stage::LineFormat(pieces) => {
                line = pieces
                    .iter()
                    .map(|piece| match piece {
                        FormatPiece::Text(text) => text.as_str(),
                        FormatPiece::Label(name) => {
                            labels.get(name).map(String::as_str).unwrap_or("")
                        }
                    })
                    .collect();
            }
            Stage::Drop(names) => {
                for name in names {
                    labels.remove(name);
                }
            }
            Stage::Keep(names) => labels.retain(|name, _| names.contains(name)),
            // Taken out of the pipeline by the parser.
            Stage::Unwrap(_) => {}
        }
    }
    Some(Entry { labels, line })
}

/// Adds an extracted label; one that clashes with a stream label gets
/// `_extracted` appended, as Loki does.
fn add_extracted(labels: &mut Labels, name: String, value: String) {
    let name = if labels.contains_key(&name) {
        format!("{name}_extracted")
    } else {
        name
    };
    labels.insert(name, value);
}

/// `| json`: every scalar of a JSON object line, nested keys joined by `_`.
fn extract_json(line: &str, labels: &mut Labels) {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str::<serde_json::Value>(line)
    else {
        labels.insert("__error__".into(), "JSONParserErr".into());
        return;
    };
    fn walk(
        prefix: &str,
        object: &serde_json::Map<String, serde_json::Value>,
        out: &mut Vec<(String, String)>,
    ) {
        for (key, value) in object {
            let name = if prefix.is_empty() {
                label_name(key)
            } else {
                format!("{prefix}_{}", label_name(key))
            };
            match value {
                serde_json::Value::Object(inner) => walk(&name, inner, out),
                serde_json::Value::Array(_) => {}
                serde_json::Value::String(s) => out.push((name, s.clone())),
                serde_json::Value::Null => out.push((name, String::new())),
                other => out.push((name, other.to_string())),
            }
        }
    }
    let mut found = Vec::new();
    walk("", &object, &mut found);
    for (name, value) in found {
        add_extracted(labels, name, value);
    }
}

/// `| logfmt`: `key=value` and `key="quoted value"` pairs; a bare key has
/// an empty value.
fn extract_logfmt(line: &str, labels: &mut Labels) {
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => {
                            if let Some(escaped) = chars.next() {
                                value.push(match escaped {
                                    'n' => '\n',
                                    't' => '\t',
                                    other => other,
                                });
                            }
                        }
                        other => value.push(other),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        if !key.is_empty() {
            add_extracted(labels, label_name(&key), value);
        }
    }
}

fn holds(predicate: &LabelPredicate, labels: &Labels) -> bool {
    match predicate {
        LabelPredicate::And(a, b) => holds(a, labels) && holds(b, labels),
        LabelPredicate::Or(a, b) => holds(a, labels) || holds(b, labels),
        LabelPredicate::Compare(comparison) => compare(comparison, labels),
    }
}

fn compare(comparison: &Comparison, labels: &Labels) -> bool {
    let actual = labels
        .get(&comparison.label)
        .map(String::as_str)
        .unwrap_or("");
    match &comparison.value {
        CompareValue::Text(text, regex) => match comparison.op {
            CompareOp::Eq => actual == text,
            CompareOp::Ne => actual != text,
            CompareOp::Re => regex.as_ref().is_some_and(|r| r.is_match(actual)),
            CompareOp::NotRe => !regex.as_ref().is_some_and(|r| r.is_match(actual)),
            _ => false,
        },
        CompareValue::Number(wanted) => {
            let Some(actual) = number_of(actual) else {
                return false;
            };
            match comparison.op {
                CompareOp::Eq => actual == *wanted,
                CompareOp::Ne => actual != *wanted,
                CompareOp::Gt => actual > *wanted,
                CompareOp::Ge => actual >= *wanted,
                CompareOp::Lt => actual < *wanted,
                CompareOp::Le => actual <= *wanted,
                CompareOp::Re | CompareOp::NotRe => false,
            }
        }
    }
}

/// A label's value as a number: a float, or a duration in seconds.
fn number_of(text: &str) -> Option<f64> {
    let text = text.trim();
    text.parse::<f64>()
        .ok()
        .or_else(|| parse::parse_duration(text).map(|nanos| nanos as f64 / 1e9))
}

/// Lines of a log query, grouped in streams by their labels.
#[derive(Debug, Default)]
pub struct StreamsResult {
    pub streams: Vec<(Labels, Vec<(u64, String)>)>,
}

/// The first `limit` lines of `[start, end]` in the direction asked.
pub fn select_lines(
    source: &dyn LogSource,
    logs: &LogExpr,
    start: u64,
    end: u64,
    limit: usize,
    backward: bool,
) -> Result<StreamsResult, LogqlError> {
    let mut result = StreamsResult::default();
    let mut streams: HashMap<Labels, usize> = HashMap::new();
    let mut found = 0;
    if limit == 0 {
        return Ok(result);
    }
    source.scan(
        selected_service(logs),
        start,
        end,
        backward,
        &mut |record| {
            if !selected(logs, record) {
                return true;
            }
            let Some(entry) = run_pipeline(&logs.stages, record) else {
                return true;
            };
            let index = *streams.entry(entry.labels.clone()).or_insert_with(|| {
                result.streams.push((entry.labels, Vec::new()));
                result.streams.len() - 1
            });
            result.streams[index]
                .1
                .push((record.time_unix_nano, entry.line));
            found += 1;
            found < limit
        },
    )?;
    Ok(result)
}

/// A series of a metric result: one value (or none) per evaluation time.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub values: Vec<Option<f64>>,
}

/// What a metric expression evaluates to.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<Series>),
}

/// Evaluates a metric query at each of `times` (nanoseconds, ascending).
pub fn evaluate(
    source: &dyn LogSource,
    expr: &MetricExpr,
    times: &[u64],
) -> Result<Value, LogqlError> {
    match expr {
        MetricExpr::Number(n) => Ok(Value::Scalar(*n)),
        MetricExpr::Vector(n) => Ok(Value::Vector(vec![Series {
            labels: Labels::new(),
            values: vec![Some(*n); times.len()],
        }])),
        MetricExpr::Range {
            function,
            logs,
            unwrap,
            range_nanos,
            grouping,
        } => range_vector(
            source,
            *function,
            logs,
            unwrap.as_deref(),
            *range_nanos,
            grouping.as_ref(),
            times,
        )
        .map(Value::Vector),
        MetricExpr::Aggregate {
            op,
            grouping,
            inner,
        } => match counted_from_index(source, expr, times)? {
            Some(series) => Ok(Value::Vector(series)),
            None => match evaluate(source, inner, times)? {
                Value::Scalar(_) => Err(LogqlError::Limit(
                    "an aggregation needs a vector, not a number".into(),
                )),
                Value::Vector(series) => Ok(Value::Vector(aggregate(
                    *op,
                    grouping.as_ref(),
                    series,
                    times.len(),
                ))),
            },
        },
        MetricExpr::Binary { op, left, right } => {
            let left = evaluate(source, left, times)?;
            let right = evaluate(source, right, times)?;
            Ok(binary(*op, left, right))
        }
    }
}

/// Labels a record has from the index's fast columns.
const INDEXED_LABELS: [&str; 2] = ["service_name", "detected_level"];

/// `sum [by (service_name, detected_level[, level])] (count_over_time|rate(
/// {service_name...} [| drop __error__] [r]))` — what dashboards and the
/// logs volume ask most — counted per step from the index's fast columns
/// (`query::logs::count_by`) instead of decoding the records; `None` for
/// any other query.
fn counted_from_index(
    source: &dyn LogSource,
    expr: &MetricExpr,
    times: &[u64],
) -> Result<Option<Vec<Series>>, LogqlError> {
    let MetricExpr::Aggregate {
        op: AggregateOp::Sum,
        grouping,
        inner,
    } = expr
    else {
        return Ok(None);
    };
    let MetricExpr::Range {
        function: function @ (RangeFunction::CountOverTime | RangeFunction::Rate),
        logs,
        unwrap: None,
        range_nanos,
        grouping: None,
    } = inner.as_ref()
    else {
        return Ok(None);
    };
    let by: &[String] = match grouping {
        None => &[],
        Some(Grouping::By(labels)) => labels,
        Some(Grouping::Without(_)) => return Ok(None),
    };
    let only_drops_errors = logs.stages.iter().all(|stage| {
        matches!(stage, Stage::Drop(names)
            if names.iter().all(|n| n == "__error__" || n == "__error_details__"))
    });
    if !only_drops_errors || !logs.matchers.iter().all(|m| m.name == "service_name") {
        return Ok(None);
    }
    // Grafana's logs volume also groups by `level`, a label only records
    // with such an attribute have: when no record of the range may, it
    // groups nothing and the index still answers.
    let first_start = times.first().map_or(0, |t| t.saturating_sub(*range_nanos));
    let last_end = times.last().copied().unwrap_or(0);
    for name in by {
        let indexed = INDEXED_LABELS.contains(&name.as_str())
            || (name == "level" && !source.may_have_label(name, first_start, last_end)?);
        if !indexed {
            return Ok(None);
        }
    }
    let mut series: BTreeMap<Labels, Vec<Option<f64>>> = BTreeMap::new();
    for (step, &t) in times.iter().enumerate() {
        let start = t.saturating_sub(*range_nanos).saturating_add(1);
        let counts = source.count_by_service_and_level(selected_service(logs), start, t)?;
        for ((service, level), count) in counts {
            if !logs.matchers.iter().all(|m| m.matches(&service)) {
                continue;
            }
            let mut labels = Labels::new();
            if by.iter().any(|l| l == "service_name") && !service.is_empty() {
                labels.insert("service_name".into(), service);
            }
            if by.iter().any(|l| l == "detected_level") && level != "unknown" {
                labels.insert("detected_level".into(), level);
            }
            if !series.contains_key(&labels) && series.len() >= MAX_SERIES {
                return Err(too_many_series());
            }
            let values = series
                .entry(labels)
                .or_insert_with(|| vec![None; times.len()]);
            let value = match function {
                RangeFunction::Rate => count as f64 / (*range_nanos as f64 / 1e9),
                _ => count as f64,
            };
            values[step] = Some(values[step].unwrap_or(0.0) + value);
        }
    }
    Ok(Some(
        series
            .into_iter()
            .map(|(labels, values)| Series { labels, values })
            .collect(),
    ))
}

/// The labels a grouping keeps.
fn group_key(grouping: Option<&Grouping>, labels: &Labels) -> Labels {
    match grouping {
        None => Labels::new(),
        Some(Grouping::By(names)) => labels
            .iter()
            .filter(|(name, _)| names.contains(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
        Some(Grouping::Without(names)) => labels
            .iter()
            .filter(|(name, _)| !names.contains(name))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect(),
    }
}

fn range_vector(
    source: &dyn LogSource,
    function: RangeFunction,
    logs: &LogExpr,
    unwrap: Option<&str>,
    range_nanos: u64,
    grouping: Option<&Grouping>,
    times: &[u64],
) -> Result<Vec<Series>, LogqlError> {
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return Ok(Vec::new());
    };
    // Each series' samples: (time, value).
    let mut samples: HashMap<Labels, Vec<(u64, f64)>> = HashMap::new();
    let mut too_many = false;
    source.scan(
        selected_service(logs),
        first.saturating_sub(range_nanos).saturating_add(1),
        last,
        true,
        &mut |record| {
            if !selected(logs, record) {
                return true;
            }
            let Some(mut entry) = run_pipeline(&logs.stages, record) else {
                return true;
            };
            let value = match function {
                RangeFunction::BytesOverTime | RangeFunction::BytesRate => entry.line.len() as f64,
                RangeFunction::CountOverTime | RangeFunction::Rate => 1.0,
                _ => {
                    let Some(label) = unwrap else { return true };
                    let Some(value) = entry.labels.remove(label).as_deref().and_then(number_of)
                    else {
                        return true;
                    };
                    value
                }
            };
            let labels = match grouping {
                Some(_) => group_key(grouping, &entry.labels),
                None => entry.labels,
            };
            if !samples.contains_key(&labels) && samples.len() >= MAX_SERIES {
                too_many = true;
                return false;
            }
            samples
                .entry(labels)
                .or_default()
                .push((record.time_unix_nano, value));
            true
        },
    )?;
    if too_many {
        return Err(too_many_series());
    }
    let range_seconds = range_nanos as f64 / 1e9;
    let mut series: Vec<Series> = samples
        .into_iter()
        .map(|(labels, mut points)| {
            points.sort_by_key(|(time, _)| *time);
            let values = times
                .iter()
                .map(|&t| {
                    let from =
                        points.partition_point(|(time, _)| *time <= t.saturating_sub(range_nanos));
                    let to = points.partition_point(|(time, _)| *time <= t);
                    let window: Vec<f64> = points[from..to].iter().map(|(_, v)| *v).collect();
                    over_time(function, &window, range_seconds)
                })
                .collect();
            Series { labels, values }
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect();
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(series)
}

fn too_many_series() -> LogqlError {
    LogqlError::Limit(format!(
        "the query would produce more than {MAX_SERIES} series; group by fewer labels or \
         narrow the stream selector"
    ))
}

/// A range function over the values of one window; `None` when empty.
fn over_time(function: RangeFunction, window: &[f64], range_seconds: f64) -> Option<f64> {
    if window.is_empty() {
        return None;
    }
    let sum: f64 = window.iter().sum();
    Some(match function {
        RangeFunction::CountOverTime => window.len() as f64,
        RangeFunction::Rate => window.len() as f64 / range_seconds,
        RangeFunction::BytesOverTime | RangeFunction::SumOverTime => sum,
        RangeFunction::BytesRate => sum / range_seconds,
        RangeFunction::AvgOverTime => sum / window.len() as f64,
        RangeFunction::MaxOverTime => window.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        RangeFunction::MinOverTime => window.iter().copied().fold(f64::INFINITY, f64::min),
        RangeFunction::QuantileOverTime(q) => strand_promql::quantile(q, window.to_vec()),
    })
}

fn aggregate(
    op: AggregateOp,
    grouping: Option<&Grouping>,
    series: Vec<Series>,
    steps: usize,
) -> Vec<Series> {
    let mut groups: BTreeMap<Labels, Vec<usize>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        groups
            .entry(group_key(grouping, &s.labels))
            .or_default()
            .push(i);
    }
    match op {
        AggregateOp::Topk(k) | AggregateOp::Bottomk(k) => {
            let top = matches!(op, AggregateOp::Topk(_));
            let mut out: Vec<Series> = series
                .iter()
                .map(|s| Series {
                    labels: s.labels.clone(),
                    values: vec![None; steps],
                })
                .collect();
            for members in groups.values() {
                for step in 0..steps {
                    let mut present: Vec<(usize, f64)> = members
                        .iter()
                        .filter_map(|&i| series[i].values[step].map(|v| (i, v)))
                        .collect();
                    present.sort_by(|a, b| {
                        let order = a.1.total_cmp(&b.1);
                        if top { order.reverse() } else { order }
                    });
                    for (i, v) in present.into_iter().take(k) {
                        out[i].values[step] = Some(v);
                    }
                }
            }
            out.retain(|s| s.values.iter().any(Option::is_some));
            out
        }
        _ => groups
            .into_iter()
            .map(|(labels, members)| {
                let values = (0..steps)
                    .map(|step| {
                        let present: Vec<f64> = members
                            .iter()
                            .filter_map(|&i| series[i].values[step])
                            .collect();
                        if present.is_empty() {
                            return None;
                        }
                        let sum: f64 = present.iter().sum();
                        Some(match op {
                            AggregateOp::Sum => sum,
                            AggregateOp::Avg => sum / present.len() as f64,
                            AggregateOp::Max => {
                                present.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                            }
                            AggregateOp::Min => {
                                present.iter().copied().fold(f64::INFINITY, f64::min)
                            }
                            _ => present.len() as f64,
                        })
                    })
                    .collect();
                Series { labels, values }
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect(),
    }
}

fn apply(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Mod => a % b,
        BinaryOp::Pow => a.powf(b),
    }
}

/// Arithmetic: number with number, each series with a number, and series
/// with the series of the same labels on the other side.
fn binary(op: BinaryOp, left: Value, right: Value) -> Value {
    let map = |series: Vec<Series>, f: &dyn Fn(f64) -> f64| {
        series
            .into_iter()
            .map(|s| Series {
                labels: s.labels,
                values: s.values.into_iter().map(|v| v.map(f)).collect(),
            })
            .collect()
    };
    match (left, right) {
        (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(apply(op, a, b)),
        (Value::Vector(series), Value::Scalar(b)) => {
            Value::Vector(map(series, &|a| apply(op, a, b)))
        }
        (Value::Scalar(a), Value::Vector(series)) => {
            Value::Vector(map(series, &|b| apply(op, a, b)))
        }
        (Value::Vector(left), Value::Vector(right)) => {
            let right: HashMap<Labels, Vec<Option<f64>>> =
                right.into_iter().map(|s| (s.labels, s.values)).collect();
            Value::Vector(
                left.into_iter()
                    .filter_map(|s| {
                        let other = right.get(&s.labels)?;
                        let values: Vec<Option<f64>> = s
                            .values
                            .iter()
                            .zip(other)
                            .map(|(a, b)| Some(apply(op, (*a)?, (*b)?)))
                            .collect();
                        values.iter().any(Option::is_some).then_some(Series {
                            labels: s.labels,
                            values,
                        })
                    })
                    .collect(),
            )
        }
    }
}

/// Most records the metadata endpoints (labels, series, stats) read: the
/// newest of the range. They answer from what these hold rather than
/// refuse, as a label browser needs an answer more than a complete one.
pub const METADATA_RECORDS: usize = 50_000;

/// The distinct label sets (series) of the selected streams in a range,
/// and how many records and bytes they hold.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub series: Vec<Labels>,
    pub entries: u64,
    pub bytes: u64,
    /// Only the newest [`METADATA_RECORDS`] of the range were read.
    pub truncated: bool,
}

/// Streams of `[start, end]` matching any of `selectors` (all streams when
/// there are none), from the newest [`METADATA_RECORDS`] records.
pub fn streams(
    source: &dyn LogSource,
    selectors: &[LogExpr],
    start: u64,
    end: u64,
) -> Result<StreamStats, LogqlError> {
    let mut stats = StreamStats::default();
    let mut seen: std::collections::BTreeSet<Labels> = Default::default();
    let service = match selectors {
        [only] => selected_service(only),
        _ => None,
    };
    let mut read = 0;
    source.scan(service, start, end, true, &mut |record| {
        read += 1;
        if read > METADATA_RECORDS {
            stats.truncated = true;
            return false;
        }
        let chosen = selectors.is_empty()
            || selectors
                .iter()
                .any(|logs| selected(logs, record) && run_pipeline(&logs.stages, record).is_some());
        if chosen {
            stats.entries += 1;
            stats.bytes += record.body.len() as u64;
            seen.insert(stream_labels(record));
        }
        true
    })?;
    stats.series = seen.into_iter().collect();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{KeyValue, Resource, Scope, Severity};

    struct Records(Vec<LogRecord>);

    impl LogSource for Records {
        fn scan(
            &self,
            _: Option<&str>,
            start: u64,
            end: u64,
            _: bool,
            visit: &mut dyn FnMut(&LogRecord) -> bool,
        ) -> Result<(), LogqlError> {
            for record in self.0.iter().rev() {
                if (start..=end).contains(&record.time_unix_nano) && !visit(record) {
                    break;
                }
            }
            Ok(())
        }

        fn count_by_service_and_level(
            &self,
            _: Option<&str>,
            _: u64,
            _: u64,
        ) -> Result<LevelCounts, LogqlError> {
            Err(LogqlError::Limit("counted from the index".into()))
        }

        fn may_have_label(&self, name: &str, start: u64, end: u64) -> Result<bool, LogqlError> {
            Ok(self.0.iter().any(|record| {
                (start..=end).contains(&record.time_unix_nano)
                    && entry_labels(record).contains_key(name)
            }))
        }
    }

    /// Counts from an index only: reading records is refused. Records may
    /// have a `level` attribute when `may_have_level`.
    struct IndexOnly {
        may_have_level: bool,
    }

    impl LogSource for IndexOnly {
        fn scan(
            &self,
            _: Option<&str>,
            _: u64,
            _: u64,
            _: bool,
            _: &mut dyn FnMut(&LogRecord) -> bool,
        ) -> Result<(), LogqlError> {
            Err(LogqlError::Limit("records decoded".into()))
        }

        fn count_by_service_and_level(
            &self,
            _: Option<&str>,
            start: u64,
            _: u64,
        ) -> Result<LevelCounts, LogqlError> {
            // Two counts in the first window, one in the later ones.
            let first = start < S;
            Ok(vec![
                (("a".into(), "error".into()), if first { 2 } else { 1 }),
                (("b".into(), "unknown".into()), 4),
            ])
        }

        fn may_have_label(&self, name: &str, _: u64, _: u64) -> Result<bool, LogqlError> {
            Ok(name == "level" && self.may_have_level)
        }
    }

    fn on_index(text: &str, times: &[u64]) -> Result<Value, LogqlError> {
        on(
            &IndexOnly {
                may_have_level: false,
            },
            text,
            times,
        )
    }

    fn on(source: &dyn LogSource, text: &str, times: &[u64]) -> Result<Value, LogqlError> {
        match parse(text).unwrap() {
            Expr::Metric(m) => evaluate(source, &m, times),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn counts_by_service_and_level_come_from_the_index() {
        let one = |labels: &[(&str, &str)], values: Vec<Option<f64>>| Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            values,
        };
        assert_eq!(
            on_index(
                r#"sum by (detected_level, service_name) (count_over_time({service_name=~".+"} | drop __error__ [2s]))"#,
                &[S, 3 * S]
            )
            .unwrap(),
            Value::Vector(vec![
                one(
                    &[("detected_level", "error"), ("service_name", "a")],
                    vec![Some(2.0), Some(1.0)]
                ),
                one(&[("service_name", "b")], vec![Some(4.0), Some(4.0)]),
            ])
        );
        assert_eq!(
            on_index(r#"sum(rate({service_name="a"}[2s]))"#, &[S]).unwrap(),
            Value::Vector(vec![one(&[], vec![Some(1.0)])])
        );
        // Grafana's logs volume groups by `level` too, which no record has.
        let volume = r#"sum by (level, detected_level) (count_over_time({service_name="a"} | drop __error__ [2s]))"#;
        assert_eq!(
            on_index(volume, &[S]).unwrap(),
            Value::Vector(vec![one(&[("detected_level", "error")], vec![Some(2.0)])])
        );
        // Anything the index cannot answer reads the records: grouping by
        // `level` when a record may have one, and the rest.
        assert!(
            on(
                &IndexOnly {
                    may_have_level: true
                },
                volume,
                &[S]
            )
            .is_err()
        );
        for text in [
            r#"sum(count_over_time({service_name="a", env="x"}[2s]))"#,
            r#"sum(count_over_time({service_name="a"} |= "x" [2s]))"#,
            r#"sum without (x) (count_over_time({service_name="a"}[2s]))"#,
            r#"max(count_over_time({service_name="a"}[2s]))"#,
        ] {
            assert!(on_index(text, &[S]).is_err(), "{text}");
        }
    }

    fn record(time: u64, service: &str, env: &str, body: &str) -> LogRecord {
        LogRecord {
            time_unix_nano: time,
            severity: Severity::from_text("info"),
            severity_text: String::new(),
            body: body.into(),
            trace_id: None,
            span_id: None,
            resource: Arc::new(Resource {
                service: service.into(),
                attributes: vec![KeyValue {
                    key: "deployment.environment".into(),
                    value: AttrValue::Str(env.into()),
                }],
            }),
            scope: Arc::new(Scope::default()),
            attributes: vec![],
        }
    }

    const S: u64 = 1_000_000_000;

    fn data() -> Records {
        Records(vec![
            record(S, "a", "prod", r#"{"status":200,"req":{"ms":5}}"#),
            record(2 * S, "a", "prod", r#"{"status":500,"req":{"ms":15}}"#),
            record(3 * S, "b", "dev", "level=warn msg=\"slow call\" took=250ms"),
        ])
    }

    fn logs(text: &str) -> LogExpr {
        match parse(text).unwrap() {
            Expr::Logs(logs) => logs,
            other => panic!("{other:?}"),
        }
    }

    fn metric(text: &str, times: &[u64]) -> Value {
        match parse(text).unwrap() {
            Expr::Metric(m) => evaluate(&data(), &m, times).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selectors_use_otel_label_names_and_pipelines_extract() {
        let found = select_lines(
            &data(),
            &logs(r#"{deployment_environment="prod"} | json | status >= 500"#),
            0,
            10 * S,
            100,
            true,
        )
        .unwrap();
        assert_eq!(found.streams.len(), 1);
        let (labels, lines) = &found.streams[0];
        assert_eq!(labels["req_ms"], "15");
        assert_eq!(labels["service_name"], "a");
        assert_eq!(labels["detected_level"], "info");
        assert_eq!(lines.len(), 1);
        let found = select_lines(
            &data(),
            &logs(r#"{service_name=~"a|b"} | logfmt | took > 100ms | line_format "{{.msg}}!""#),
            0,
            10 * S,
            100,
            true,
        )
        .unwrap();
        assert_eq!(found.streams[0].1[0].1, "slow call!");
    }

    #[test]
    fn metrics_over_windows() {
        assert_eq!(
            metric(
                r#"count_over_time({service_name="a"}[2s])"#,
                &[2 * S, 3 * S, 10 * S]
            ),
            Value::Vector(vec![Series {
                labels: entry_labels(&data().0[0]),
                values: vec![Some(2.0), Some(1.0), None],
            }])
        );
        let Value::Vector(series) = metric(
            r#"quantile_over_time(0.5, {deployment_environment=~".+"} | json | unwrap req_ms [10s]) by (service_name)"#,
            &[5 * S],
        ) else {
            panic!()
        };
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].values, vec![Some(10.0)]);
        assert_eq!(
            metric("vector(1)+vector(1)", &[4 * S]),
            Value::Vector(vec![Series {
                labels: Labels::new(),
                values: vec![Some(2.0)]
            }])
        );
        assert_eq!(metric("2 * 3 + 1", &[S]), Value::Scalar(7.0));
    }

    #[test]
    fn logfmt_reads_quoted_values_and_bare_keys() {
        let mut labels = Labels::new();
        extract_logfmt(r#"a=1 b="x \"y\"" flag c="#, &mut labels);
        assert_eq!(labels["a"], "1");
        assert_eq!(labels["b"], "x \"y\"");
        assert_eq!(labels["flag"], "");
        assert_eq!(labels["c"], "");
    }

    #[test]
    fn label_names_follow_loki() {
        assert_eq!(
            label_name("deployment.environment"),
            "deployment_environment"
        );
        assert_eq!(label_name("k8s-pod"), "k8s_pod");
        assert_eq!(label_name("1x"), "_1x");
    }
}
