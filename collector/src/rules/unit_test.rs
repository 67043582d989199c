//! Rule unit tests in `promtool test rules`' file format (Prometheus 2.42),
//! so teams keep the tests they already have: input series in the
//! expanding notation, `alert_rule_test` and `promql_expr_test`, run the way
//! promtool runs them. Time starts at 0; every group is evaluated each
//! `evaluation_interval` up to the latest `eval_time`, its outputs written
//! back so later rules see them; an alert test is checked after the last
//! evaluation at or before its `eval_time`, and only firing alerts count;
//! expression tests query the series once every evaluation is done.
//! Failures read as promtool words them (expected against got).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use promql_parser::label::MatchOp;
use promql_parser::parser::Expr;
use serde::Deserialize;
use strand_promql::{Limits, STALE_NAN_BITS, Value};

use super::{AlertState, Group, Health, MemorySeries, RuleContext, RuleSpec};
use super::{load_rule_files, parse_duration};
use crate::model::{Label, METRIC_NAME_LABEL, MetricSample, SeriesSamples};

/// Most values one input series may expand to.
const MAX_VALUES: usize = 10_000_000;

/// Most evaluations a test group may ask for (its latest `eval_time` over
/// `evaluation_interval`): a year of minutes is 525,600.
const MAX_EVALUATIONS: i64 = 10_000_000;

/// promtool's default `evaluation_interval`.
const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(60);

/// The outcome of one test file.
#[derive(Debug, Default)]
pub struct TestFileReport {
    /// What promtool warns about and still passes (a rule file that does
    /// not exist).
    pub warnings: Vec<String>,
    /// Every failure, in the order promtool reports them; none: the file
    /// passed.
    pub failures: Vec<UnitTestFailure>,
}

/// Labels (or annotations) as a sorted list, compared as promtool compares
/// `labels.Labels`.
pub type LabelList = Vec<(String, String)>;

/// A firing alert as a test compares it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ComparedAlert {
    pub labels: LabelList,
    pub annotations: LabelList,
}

/// A sample of an expression's result as a test compares it.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparedSample {
    pub labels: LabelList,
    pub value: f64,
}

/// Why a test file, or one of its tests, failed; `Display` is promtool's
/// wording, so a team's CI output reads the same.
#[derive(Debug, thiserror::Error)]
pub enum UnitTestFailure {
    /// The test file, a rule file or an input series is unreadable or
    /// invalid.
    #[error("{0}")]
    Setup(String),
    /// A rule failed to evaluate: the test group stops there.
    #[error("    rule: {rule}, time: {time}, err: {message}")]
    Evaluation {
        rule: String,
        time: String,
        message: String,
    },
    /// The firing alerts differ from `exp_alerts`.
    #[error(
        "{}    alertname: {alertname}, time: {eval_time}, \n        exp:{}, \n        got:{}",
        .test_name.as_deref().map(|n| format!("    name: {n},\n")).unwrap_or_default(),
        indent_lines(&alerts_text(.expected), "            "),
        indent_lines(&alerts_text(.got), "            ")
    )]
    Alerts {
        test_name: Option<String>,
        alertname: String,
        eval_time: String,
        expected: Vec<ComparedAlert>,
        got: Vec<ComparedAlert>,
    },
    /// An expression of `promql_expr_test` failed to evaluate.
    #[error("    expr: {expr:?}, time: {eval_time}, err: {message}")]
    Query {
        expr: String,
        eval_time: String,
        message: String,
    },
    /// An expression's result differs from `exp_samples`.
    #[error(
        "    expr: {expr:?}, time: {eval_time},\n        exp: {}\n        got: {}",
        samples_text(.expected),
        samples_text(.got)
    )]
    Samples {
        expr: String,
        eval_time: String,
        expected: Vec<ComparedSample>,
        got: Vec<ComparedSample>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFileDoc {
    rule_files: Option<Vec<String>>,
    evaluation_interval: Option<Scalar>,
    group_eval_order: Option<Vec<String>>,
    tests: Option<Vec<TestGroupDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroupDoc {
    interval: Option<Scalar>,
    input_series: Option<Vec<SeriesDoc>>,
    alert_rule_test: Option<Vec<AlertTestDoc>>,
    promql_expr_test: Option<Vec<PromqlTestDoc>>,
    external_labels: Option<BTreeMap<String, Scalar>>,
    external_url: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesDoc {
    series: String,
    values: Option<Scalar>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTestDoc {
    eval_time: Option<Scalar>,
    alertname: Option<String>,
    exp_alerts: Option<Vec<ExpAlertDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpAlertDoc {
    exp_labels: Option<BTreeMap<String, Scalar>>,
    exp_annotations: Option<BTreeMap<String, Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromqlTestDoc {
    expr: Scalar,
    eval_time: Option<Scalar>,
    exp_samples: Option<Vec<SampleDoc>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleDoc {
    labels: Option<String>,
    value: f64,
}

/// A YAML scalar read as text, as Go's YAML decoder fills a string from
/// `5`, `true` or `1.5` (`severity: 5`, `values: 1`, `eval_time: 0`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Text(text) => text,
            Scalar::Integer(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

fn texts(map: Option<BTreeMap<String, Scalar>>) -> BTreeMap<String, String> {
    map.unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.text()))
        .collect()
}

/// A duration of the test file (`0`, `90s`, `1h30m`); absent: zero.
fn test_duration(field: &str, value: Option<Scalar>) -> Result<Duration, UnitTestFailure> {
    value.map_or(Ok(Duration::ZERO), |value| {
        parse_duration(&value.text())
            .map_err(|message| UnitTestFailure::Setup(format!("{field}: {message}")))
    })
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Runs every test group of the test file at `path`; rule files are
/// relative to the test file's directory.
pub fn run_test_file(path: &Path) -> TestFileReport {
    let mut report = TestFileReport::default();
    let setup = |message: String| TestFileReport {
        warnings: Vec::new(),
        failures: vec![UnitTestFailure::Setup(message)],
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return setup(format!("{}: {error}", path.display())),
    };
    // An empty file has no tests, as promtool reads it.
    let parsed = match text.trim() {
        "" => serde_norway::from_str("{}"),
        _ => serde_norway::from_str(&text),
    };
    let doc: TestFileDoc = match parsed {
        Ok(doc) => doc,
        Err(error) => return setup(format!("{}: {error}", path.display())),
    };
    let base = path.parent().unwrap_or(Path::new(""));
    let mut rule_files = Vec::new();
    for file in doc.rule_files.unwrap_or_default() {
        let resolved = base.join(&file);
        let is_pattern = file.contains(['*', '?', '[']);
        if !is_pattern && !resolved.exists() {
            report.warnings.push(format!(
                "  WARNING: no file match pattern {}",
                resolved.display()
            ));
            continue;
        }
        rule_files.push(resolved.display().to_string());
    }
    let evaluation_interval = match test_duration("evaluation_interval", doc.evaluation_interval) {
        Ok(Duration::ZERO) => DEFAULT_EVALUATION_INTERVAL,
        Ok(interval) => interval,
        Err(failure) => return setup(failure.to_string()),
    };
    let mut order = HashMap::new();
    for (n, name) in doc
        .group_eval_order
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if order.contains_key(&name) {
            return setup(format!("group name repeated in evaluation order: {name}"));
        }
        order.insert(name, n);
    }
    let run = TestRun {
        rule_files: &rule_files,
        evaluation_interval,
        order: &order,
    };
    for group in doc.tests.unwrap_or_default() {
        report.failures.extend(run.test_group(group));
    }
    report
}

/// What every test group of a file shares.
struct TestRun<'a> {
    rule_files: &'a [String],
    evaluation_interval: Duration,
    order: &'a HashMap<String, usize>,
}

/// An alert test with its expectations in comparable form.
struct AlertTest {
    eval_ms: i64,
    eval_time: String,
    alertname: String,
    expected: Vec<ComparedAlert>,
}

impl TestRun<'_> {
    fn test_group(&self, doc: TestGroupDoc) -> Vec<UnitTestFailure> {
        match self.try_test_group(doc) {
            Ok(failures) => failures,
            Err(failure) => vec![failure],
        }
    }

    /// `Err`: the group could not be set up; `Ok`: its failures.
    fn try_test_group(&self, doc: TestGroupDoc) -> Result<Vec<UnitTestFailure>, UnitTestFailure> {
        let interval = test_duration("interval", doc.interval)?;
        let mut input = load_input(doc.input_series.unwrap_or_default(), interval)?;
        let specs = load_rule_files(self.rule_files)
            .map_err(|error| UnitTestFailure::Setup(error.to_string()))?;
        let context = RuleContext {
            default_interval: if interval.is_zero() {
                self.evaluation_interval
            } else {
                interval
            },
            external_labels: texts(doc.external_labels),
            external_url: doc.external_url.unwrap_or_default(),
            ..RuleContext::default()
        };
        let mut groups: Vec<Group> = specs
            .into_iter()
            .map(|spec| Group::new(spec, context.clone(), false))
            .collect();
        // A partial order, as promtool's: groups not named sort with the first.
        groups.sort_by_key(|g| self.order.get(&g.spec().name).copied().unwrap_or(0));

        let test_name = doc.name.filter(|n| !n.is_empty());
        let mut alert_tests = Vec::new();
        for test in doc.alert_rule_test.unwrap_or_default() {
            let eval_time = test_duration("eval_time", test.eval_time)?;
            let Some(alertname) = test.alertname.filter(|n| !n.is_empty()) else {
                return Err(UnitTestFailure::Setup(format!(
                    "an item under alert_rule_test misses required attribute alertname at eval_time {}{}",
                    prometheus_duration(millis(eval_time)),
                    test_name
                        .as_deref()
                        .map(|n| format!(" (in TestGroup {n})"))
                        .unwrap_or_default()
                )));
            };
            let mut expected: Vec<ComparedAlert> = test
                .exp_alerts
                .unwrap_or_default()
                .into_iter()
                .map(|alert| {
                    let mut labels = texts(alert.exp_labels);
                    labels.insert("alertname".into(), alertname.clone());
                    ComparedAlert {
                        labels: labels.into_iter().collect(),
                        annotations: texts(alert.exp_annotations).into_iter().collect(),
                    }
                })
                .collect();
            expected.sort();
            alert_tests.push(AlertTest {
                eval_ms: millis(eval_time),
                eval_time: prometheus_duration(millis(eval_time)),
                alertname,
                expected,
            });
        }
        alert_tests.sort_by_key(|t| t.eval_ms);
        let mut expr_tests = Vec::new();
        for test in doc.promql_expr_test.unwrap_or_default() {
            let eval_ms = millis(test_duration("eval_time", test.eval_time)?);
            expr_tests.push((
                test.expr.text(),
                eval_ms,
                test.exp_samples.unwrap_or_default(),
            ));
        }
        let max_ms = alert_tests
            .iter()
            .map(|t| t.eval_ms)
            .chain(expr_tests.iter().map(|(_, eval_ms, _)| *eval_ms))
            .max()
            .unwrap_or(0);

        let step = millis(self.evaluation_interval).max(1);
        if max_ms / step > MAX_EVALUATIONS {
            return Err(UnitTestFailure::Setup(format!(
                "eval_time {} needs more than {MAX_EVALUATIONS} evaluations every {}",
                prometheus_duration(max_ms),
                prometheus_duration(step)
            )));
        }
        let limits = Limits::default();
        let series = MemorySeries::default();
        let mut failures = Vec::new();
        let mut next_alert_test = 0;
        let mut ts = 0i64;
        while ts <= max_ms {
            // Input is appended as time passes, as promtool's loader does.
            series.append(take_until(&mut input, ts));
            let mut errors = Vec::new();
            for group in &mut groups {
                group.evaluate(&series, ts, &limits, &mut |batch| series.append(batch));
                for rule in group.rules() {
                    if let Health::Err(message) = rule.health {
                        errors.push(UnitTestFailure::Evaluation {
                            rule: rule.spec.name().to_owned(),
                            time: go_duration(ts),
                            message,
                        });
                    }
                }
            }
            if !errors.is_empty() {
                failures.extend(errors);
                return Ok(failures);
            }
            while let Some(test) = alert_tests.get(next_alert_test)
                && test.eval_ms >= ts
                && test.eval_ms < ts.saturating_add(step)
            {
                let got = firing_alerts(&groups, &test.alertname);
                if got != test.expected {
                    failures.push(UnitTestFailure::Alerts {
                        test_name: test_name.clone(),
                        alertname: test.alertname.clone(),
                        eval_time: test.eval_time.clone(),
                        expected: test.expected.clone(),
                        got,
                    });
                }
                next_alert_test += 1;
            }
            ts = ts.saturating_add(step);
        }

        for (expr, eval_ms, exp_samples) in expr_tests {
            let eval_time = prometheus_duration(eval_ms);
            let query_failure = |message: String| UnitTestFailure::Query {
                expr: expr.clone(),
                eval_time: eval_time.clone(),
                message,
            };
            let got = match query_samples(&series, &expr, eval_ms, &limits) {
                Ok(got) => got,
                Err(message) => {
                    failures.push(query_failure(message));
                    continue;
                }
            };
            let mut expected = Vec::new();
            let mut bad_labels = None;
            for sample in exp_samples {
                let text = sample.labels.unwrap_or_default();
                match parse_labels(&text) {
                    Ok(labels) => expected.push(ComparedSample {
                        labels,
                        value: sample.value,
                    }),
                    Err(message) => {
                        bad_labels = Some(format!("labels {text:?}: {message}"));
                        break;
                    }
                }
            }
            if let Some(message) = bad_labels {
                failures.push(query_failure(message));
                continue;
            }
            expected.sort_by(|a, b| a.labels.cmp(&b.labels));
            // Exact comparison, as promtool's: NaN never equals NaN.
            if expected != got {
                failures.push(UnitTestFailure::Samples {
                    expr,
                    eval_time,
                    expected,
                    got,
                });
            }
        }
        Ok(failures)
    }
}

/// The firing alerts named `alertname`, of every group, sorted.
fn firing_alerts(groups: &[Group], alertname: &str) -> Vec<ComparedAlert> {
    let mut got: Vec<ComparedAlert> = groups
        .iter()
        .flat_map(|g| g.rules())
        .filter(|r| matches!(&r.spec, RuleSpec::Alerting { alert, .. } if alert == alertname))
        .flat_map(|r| r.alerts)
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| ComparedAlert {
            labels: a.labels.into_iter().collect(),
            annotations: a.annotations.into_iter().collect(),
        })
        .collect();
    got.sort();
    got
}

/// An expression's value at `ts_ms` as samples sorted by labels: a scalar
/// is one sample without labels.
fn query_samples(
    series: &MemorySeries,
    expr: &str,
    ts_ms: i64,
    limits: &Limits,
) -> Result<Vec<ComparedSample>, String> {
    let value = strand_promql::instant_query(series, expr, ts_ms, limits)
        .map_err(|error| error.to_string())?;
    let mut samples = match value {
        Value::Scalar { v, .. } => vec![ComparedSample {
            labels: Vec::new(),
            value: v,
        }],
        Value::Vector(samples) => samples
            .into_iter()
            .map(|s| ComparedSample {
                labels: s
                    .labels
                    .iter()
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect(),
                value: s.v,
            })
            .collect(),
        Value::Matrix(_) | Value::String { .. } => {
            return Err("rule result is not a vector or scalar".into());
        }
    };
    for sample in &mut samples {
        sample.labels.sort();
    }
    samples.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(samples)
}

/// A series' labels written as a selector (`up{job="api"}`, `{a="b"}`),
/// read with Strand's PromQL parser; `""` and `{}` are no labels.
fn parse_labels(text: &str) -> Result<LabelList, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed == "{}" {
        return Ok(Vec::new());
    }
    let expr = strand_promql::parse(trimmed).map_err(|error| error.to_string())?;
    let Expr::VectorSelector(selector) = expr else {
        return Err(format!(
            "{trimmed:?} is not a series: write metric{{label=\"value\"}}"
        ));
    };
    if selector.offset.is_some()
        || selector.at.is_some()
        || !selector.matchers.or_matchers.is_empty()
    {
        return Err(format!(
            "{trimmed:?} is not a series: write metric{{label=\"value\"}}"
        ));
    }
    let mut labels = BTreeMap::new();
    if let Some(name) = selector.name {
        labels.insert(METRIC_NAME_LABEL.to_owned(), name);
    }
    for matcher in selector.matchers.matchers {
        if !matches!(matcher.op, MatchOp::Equal) {
            return Err(format!(
                "{trimmed:?} is not a series: only `=` may set a label"
            ));
        }
        labels.insert(matcher.name, matcher.value);
    }
    labels.retain(|_, value| !value.is_empty());
    Ok(labels.into_iter().collect())
}

/// The input series, each with its samples at 0, `interval`, 2 × `interval`,
/// ...; a series given twice keeps its last definition, and of samples at
/// the same time (an `interval` of 0) the first, as promtool's loader does.
fn load_input(
    docs: Vec<SeriesDoc>,
    interval: Duration,
) -> Result<Vec<SeriesSamples>, UnitTestFailure> {
    let step = millis(interval);
    let mut all: BTreeMap<Vec<Label>, Vec<MetricSample>> = BTreeMap::new();
    for doc in docs {
        let refused = |message: String| {
            UnitTestFailure::Setup(format!("input series {:?}: {message}", doc.series))
        };
        let labels = parse_labels(&doc.series).map_err(refused)?;
        if labels.is_empty() {
            return Err(refused("a series needs at least one label".into()));
        }
        let labels: Vec<Label> = labels
            .into_iter()
            .map(|(name, value)| Label::new(name, value))
            .collect();
        let values = doc.values.map(Scalar::text).unwrap_or_default();
        let mut samples: Vec<MetricSample> = Vec::new();
        for (n, value) in expand_values(&values)
            .map_err(refused)?
            .into_iter()
            .enumerate()
        {
            let timestamp_ms = (n as i64).saturating_mul(step);
            if let Some(value) = value
                && samples
                    .last()
                    .is_none_or(|last| last.timestamp_ms < timestamp_ms)
            {
                samples.push(MetricSample {
                    timestamp_ms,
                    value,
                });
            }
        }
        all.insert(labels, samples);
    }
    Ok(all
        .into_iter()
        .map(|(labels, samples)| SeriesSamples { labels, samples })
        .collect())
}

/// Removes from `input` and returns the samples at or before `ts_ms`.
fn take_until(input: &mut [SeriesSamples], ts_ms: i64) -> Vec<SeriesSamples> {
    input
        .iter_mut()
        .filter_map(|series| {
            let due = series
                .samples
                .iter()
                .take_while(|s| s.timestamp_ms <= ts_ms)
                .count();
            (due > 0).then(|| SeriesSamples {
                labels: series.labels.clone(),
                samples: series.samples.drain(..due).collect(),
            })
        })
        .collect()
}

/// Expands promtool's value notation into one entry per interval (`None`:
/// no sample): `a`, `axn` (n+1 times a), `a+bxn` and `a-bxn` (a, then n
/// steps of b), `_` (none), `_xn` (n times none) and `stale`.
pub fn expand_values(text: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for token in text.split_whitespace() {
        let (head, times) = match token.rsplit_once('x') {
            Some((head, count))
                if !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let times: usize = count
                    .parse()
                    .map_err(|_| format!("{token:?}: the repeat count is too large"))?;
                (head, Some(times))
            }
            _ => (token, None),
        };
        // Checked before expanding: `1x99999999999` must not exhaust memory.
        if out.len().saturating_add(times.unwrap_or(0)) >= MAX_VALUES {
            return Err(format!("more than {MAX_VALUES} values"));
        }
        if head == "_" {
            out.extend(std::iter::repeat_n(None, times.unwrap_or(1)));
            continue;
        }
        if head == "stale" {
            if times.is_some() {
                return Err(format!("{token:?}: stale cannot be repeated"));
            }
            out.push(Some(f64::from_bits(STALE_NAN_BITS)));
            continue;
        }
        // `a+b` or `a-b`: the sign after the first character that does
        // not belong to an exponent.
        let split = head
            .char_indices()
            .skip(1)
            .find(|&(i, c)| (c == '+' || c == '-') && !head[..i].ends_with(['e', 'E']))
            .map(|(i, _)| i);
        let number = |text: &str| {
            text.parse::<f64>().map_err(|_| {
                format!(
                    "{token:?}: unexpected {text:?} in series values, expected number or \"stale\""
                )
            })
        };
        match (split, times) {
            (None, None) => out.push(Some(number(head)?)),
            (None, Some(times)) => {
                let value = number(head)?;
                out.extend(std::iter::repeat_n(Some(value), times + 1));
            }
            (Some(at), Some(times)) => {
                let (mut value, increment) = (number(&head[..at])?, number(&head[at..])?);
                out.push(Some(value));
                for _ in 0..times {
                    value += increment;
                    out.push(Some(value));
                }
            }
            (Some(_), None) => {
                return Err(format!("{token:?}: an increment needs a count (a+bxn)"));
            }
        }
    }
    Ok(out)
}

/// Go's `labels.Labels` text: `{a="b", c="d"}`.
fn labels_text(labels: &LabelList) -> String {
    let mut out = String::from("{");
    for (n, (name, value)) in labels.iter().enumerate() {
        if n > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{name}={value:?}");
    }
    out.push('}');
    out
}

fn alerts_text(alerts: &[ComparedAlert]) -> String {
    if alerts.is_empty() {
        return "[]".into();
    }
    let mut out = String::from("[");
    for (n, alert) in alerts.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let item = format!(
            "\nLabels:{}\nAnnotations:{}",
            labels_text(&alert.labels),
            labels_text(&alert.annotations)
        );
        let _ = write!(out, "\n{n}:{}", indent_lines(&item, "  "));
    }
    out.push_str("\n]");
    out
}

fn samples_text(samples: &[ComparedSample]) -> String {
    if samples.is_empty() {
        return "nil".into();
    }
    samples
        .iter()
        .map(|s| format!("{} {}", labels_text(&s.labels), go_exponent(s.value)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every line but the first prefixed with `indent`.
fn indent_lines(text: &str, indent: &str) -> String {
    text.split('\n')
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

/// A float as Go's `FormatFloat(v, 'E', -1, 64)`: `1.5E+01`.
fn go_exponent(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let text = format!("{value:E}");
    let (mantissa, exponent) = text.split_once('E').unwrap_or((&text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}E{sign}{:02}", exponent.abs())
}

/// A duration as Prometheus's `model.Duration` prints it: `5m`, `1h30m`, `0s`.
fn prometheus_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    let mut rest = ms;
    let mut out = String::new();
    const DAY: i64 = 24 * 3_600_000;
    for (unit, size, exact) in [
        ("y", 365 * DAY, true),
        ("w", 7 * DAY, true),
        ("d", DAY, false),
        ("h", 3_600_000, false),
        ("m", 60_000, false),
        ("s", 1000, false),
        ("ms", 1, false),
    ] {
        if exact && rest % size != 0 {
            continue;
        }
        if rest / size > 0 {
            let _ = write!(out, "{}{unit}", rest / size);
            rest %= size;
        }
    }
    out
}

/// A duration as Go's `time.Duration` prints it: `0s`, `1m0s`, `1h30m0s`,
/// `1.5s`, `500ms`.
fn go_duration(ms: i64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms.abs() < 1000 {
        return format!("{ms}ms");
    }
    let (hours, minutes) = (ms / 3_600_000, ms % 3_600_000 / 60_000);
    let seconds = (ms % 60_000) as f64 / 1000.0;
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_expand_as_promtool_documents() {
        let stale = |v: &Option<f64>| v.is_some_and(strand_promql::is_stale_nan);
        assert_eq!(
            expand_values("-2+4x3 1-2x4 1x4").unwrap(),
            [
                -2.0, 2.0, 6.0, 10.0, 1.0, -1.0, -3.0, -5.0, -7.0, 1.0, 1.0, 1.0, 1.0, 1.0
            ]
            .map(Some)
        );
        let mixed = expand_values("1 _x3 stale 1e3 _ Inf").unwrap();
        assert_eq!(mixed.len(), 8);
        assert_eq!(mixed[..4], [Some(1.0), None, None, None]);
        assert!(stale(&mixed[4]));
        assert_eq!(mixed[5..], [Some(1000.0), None, Some(f64::INFINITY)]);
        assert_eq!(
            expand_values("1e-3+1e-3x1").unwrap(),
            [Some(0.001), Some(0.002)]
        );
        for bad in [
            "a",
            "1+2",
            "stalex2",
            "1+x3",
            "--1",
            "1x99999999999",
            "_x18446744073709551615",
        ] {
            assert!(expand_values(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn series_and_expected_labels_are_read_as_selectors() {
        assert_eq!(
            parse_labels(r#"up{job="api", instance="a:1"}"#).unwrap(),
            [
                ("__name__".to_owned(), "up".to_owned()),
                ("instance".to_owned(), "a:1".to_owned()),
                ("job".to_owned(), "api".to_owned())
            ]
        );
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels(" {} ").unwrap().is_empty());
        assert_eq!(parse_labels(r#"{a="b"}"#).unwrap().len(), 1);
        for bad in [r#"up{job=~"a"}"#, "up offset 5m", "sum(up)", "up{"] {
            assert!(parse_labels(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_and_values_print_as_go_does() {
        assert_eq!(prometheus_duration(0), "0s");
        assert_eq!(prometheus_duration(5 * 60_000), "5m");
        assert_eq!(prometheus_duration(90 * 60_000), "1h30m");
        assert_eq!(prometheus_duration(14 * 24 * 3_600_000), "2w");
        assert_eq!(go_duration(60_000), "1m0s");
        assert_eq!(go_duration(5_400_000), "1h30m0s");
        assert_eq!(go_duration(1500), "1.5s");
        assert_eq!(go_exponent(11.0), "1.1E+01");
        assert_eq!(go_exponent(1.0), "1E+00");
        assert_eq!(go_exponent(0.005), "5E-03");
        assert_eq!(go_exponent(f64::NEG_INFINITY), "-Inf");
    }

    #[test]
    fn failures_read_as_promtool_prints_them() {
        let failure = UnitTestFailure::Alerts {
            test_name: None,
            alertname: "Down".into(),
            eval_time: "5m".into(),
            expected: vec![ComparedAlert {
                labels: vec![("alertname".into(), "Down".into())],
                annotations: vec![("summary".into(), "i1 down".into())],
            }],
            got: Vec::new(),
        };
        assert_eq!(
            failure.to_string(),
            "    alertname: Down, time: 5m, \n        exp:[\n            0:\n              Labels:{alertname=\"Down\"}\n              Annotations:{summary=\"i1 down\"}\n            ], \n        got:[]"
        );
        let failure = UnitTestFailure::Samples {
            expr: "job:up:sum".into(),
            eval_time: "5m".into(),
            expected: vec![ComparedSample {
                labels: vec![("job".into(), "a".into())],
                value: 1.0,
            }],
            got: Vec::new(),
        };
        assert_eq!(
            failure.to_string(),
            "    expr: \"job:up:sum\", time: 5m,\n        exp: {job=\"a\"} 1E+00\n        got: nil"
        );
    }
}
