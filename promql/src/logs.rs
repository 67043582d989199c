//! `count_logs`: log conditions inside PromQL, so that an alerting rule on
//! logs ("more than 5 declined payments in 5 minutes") is one expression.
//!
//! `count_logs("<log query>", "<window>"[, "<field>", ...])` is, at each
//! evaluation time `t`, the number of log records matching the query (the
//! log explorer's syntax) with a timestamp in `(t - window, t]`, one sample
//! per distinct combination of the grouping fields' values. The engine reads
//! and checks the arguments and names the labels; the count itself comes
//! from [`SeriesSource::count_logs`], so the engine stays storage-free.

use promql_parser::parser::{Call, Expr};

use crate::SeriesSource;
use crate::error::{EvalError, Result};
use crate::eval::{Evaluator, duration_ms, unwrap_parens};
use crate::value::{Labels, Sample};

/// The grouping fields, for error messages.
const GROUPING_FIELDS: &str = "the fields are service, severity and attributes.<key>";

/// A field of log records that `count_logs` groups by: those a log store
/// can count by without reading records (the log index keeps them in
/// columns).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LogField {
    /// The record's service (its resource's `service.name`).
    Service,
    /// The severity level's name (`error`, `warn`, `info`, ...).
    Severity,
    /// A record attribute, by key; records without it (or whose value is
    /// not a short scalar) have no such label.
    Attribute(String),
}

impl LogField {
    /// Reads a grouping argument: `service`, `severity` or `attributes.<key>`.
    pub fn parse(text: &str) -> Option<LogField> {
        match text {
            "service" => Some(LogField::Service),
            "severity" => Some(LogField::Severity),
            _ => text
                .strip_prefix("attributes.")
                .filter(|key| !key.is_empty())
                .map(|key| LogField::Attribute(key.to_string())),
        }
    }

    /// The label a field's values are reported under: the field as written
    /// with every character a Prometheus label name cannot hold (dots among
    /// them) replaced by `_`: `attributes.order_id` is `attributes_order_id`.
    pub fn label_name(&self) -> String {
        match self {
            LogField::Service => "service".into(),
            LogField::Severity => "severity".into(),
            LogField::Attribute(key) => format!("attributes_{key}")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect(),
        }
    }
}

/// The checked arguments of one `count_logs` call.
pub(crate) struct CountLogs<'e> {
    query: &'e str,
    window_ms: i64,
    by: Vec<LogField>,
    /// The label of each grouping field, in the same order.
    labels: Vec<String>,
}

impl<'e> CountLogs<'e> {
    /// Reads and checks the arguments (the parser has checked that there
    /// are at least two and that all are strings); every refusal is
    /// `bad_data` naming the argument.
    pub(crate) fn read(c: &'e Call) -> Result<CountLogs<'e>> {
        let args = c
            .args
            .args
            .iter()
            .enumerate()
            .map(|(i, arg)| match unwrap_parens(arg) {
                Expr::StringLiteral(s) => Ok(s.val.as_str()),
                _ => Err(bad(format!("argument {} must be a string literal", i + 1))),
            })
            .collect::<Result<Vec<&str>>>()?;
        let [query, window, fields @ ..] = args.as_slice() else {
            return Err(bad(
                "takes a log query and a window, then the fields to group by".into(),
            ));
        };
        let window_ms = read_window(window)?;
        let mut by = Vec::with_capacity(fields.len());
        let mut labels: Vec<String> = Vec::with_capacity(fields.len());
        for (i, field) in fields.iter().enumerate() {
            let position = i + 3;
            let Some(parsed) = LogField::parse(field) else {
                return Err(bad(format!(
                    "cannot group by \"{field}\" (argument {position}): {GROUPING_FIELDS}"
                )));
            };
            let label = parsed.label_name();
            if let Some(earlier) = labels.iter().position(|l| *l == label) {
                return Err(bad(format!(
                    "\"{field}\" (argument {position}) and \"{}\" (argument {}) would both be \
                     the label {label}",
                    fields[earlier],
                    earlier + 3
                )));
            }
            by.push(parsed);
            labels.push(label);
        }
        Ok(CountLogs {
            query,
            window_ms,
            by,
            labels,
        })
    }

    /// The counts at `t`, as an instant vector: one sample per group with
    /// a match, or, without grouping fields, one sample without labels that
    /// is 0 when nothing matches.
    fn samples(&self, src: &dyn SeriesSource, t: i64) -> Result<Vec<Sample>> {
        let groups = src
            .count_logs(self.query, self.window_ms, &self.by, t)
            .map_err(|error| match error {
                EvalError::Parse(why) => bad(format!("invalid log query (argument 1): {why}")),
                other => other,
            })?;
        if self.by.is_empty() {
            let v = groups.iter().map(|(_, count)| *count).sum::<u64>() as f64;
            return Ok(vec![Sample {
                labels: Labels::default(),
                t,
                v,
            }]);
        }
        Ok(groups
            .into_iter()
            .map(|(values, count)| Sample {
                labels: Labels::from(self.labels.iter().cloned().zip(values).collect::<Vec<_>>()),
                t,
                v: count as f64,
            })
            .collect())
    }
}

/// Evaluates a `count_logs` call at `t`.
pub(crate) fn eval(ev: &mut Evaluator, c: &Call, t: i64) -> Result<Vec<Sample>> {
    let samples = CountLogs::read(c)?.samples(ev.source(), t)?;
    ev.charge(samples.len())?;
    Ok(samples)
}

/// The window argument in milliseconds: a PromQL duration (`5m`, `1h30m`)
/// longer than 0.
fn read_window(text: &str) -> Result<i64> {
    let refuse = |why: &str| {
        bad(format!(
            "the window (argument 2) \"{text}\" is not a duration ({why}): write one such as \"5m\" or \"1h30m\""
        ))
    };
    // The parser also takes a number of seconds, and panics on a negative one.
    if text.parse::<f64>().is_ok() {
        return Err(refuse("a number without a unit"));
    }
    let window = promql_parser::util::parse_duration(text).map_err(|why| refuse(&why))?;
    Ok(duration_ms(&window))
}

fn bad(why: String) -> EvalError {
    EvalError::Parse(format!("count_logs(): {why}"))
}
