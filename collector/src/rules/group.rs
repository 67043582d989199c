//! One rule group's evaluation with Prometheus 2.42's semantics, storage
//! aside: the group asks a [`SeriesSource`] and hands what it writes to a
//! sink, so the daemon (durable writes through the pipeline) and `strand
//! rules test` (an in-memory series set) run the very same code.
//!
//! What Prometheus does and this keeps: every rule of a group is evaluated
//! at the same timestamp, on a grid offset by a hash of the group's name and
//! file; a rule sees what the rules before it wrote; series a rule wrote
//! last time and not this time get a staleness marker; alerts go inactive
//! -> pending -> firing -> resolved (kept 15 minutes to be reported),
//! `keep_firing_for` holds a firing alert after its condition ends; after a
//! start, `ALERTS` and `ALERTS_FOR_STATE` are written only once the `for`
//! state was restored from `ALERTS_FOR_STATE`, after the second evaluation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use promql_parser::label::{MatchOp, Matcher};
use strand_promql::{EvalError, Limits, STALE_NAN_BITS, SeriesSource, Value, is_stale_nan};

use super::file::{GroupSpec, RuleSpec};
use super::template::{Expander, TemplateData};
use crate::model::{Label, METRIC_NAME_LABEL, MetricSample, SeriesSamples};

/// How long a resolved alert is still reported (to Alertmanager and the
/// API), as Prometheus does.
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Settings every group shares.
#[derive(Clone, Debug)]
pub struct RuleContext {
    /// Interval of groups that name none (Prometheus's `evaluation_interval`).
    pub default_interval: Duration,
    /// Labels added to alerts sent out, and `$externalLabels` in templates.
    pub external_labels: BTreeMap<String, String>,
    /// Strand's UI address: `$externalURL` and the base of `generatorURL`.
    pub external_url: String,
    /// How long a `for` state is restored after a restart (Prometheus's
    /// `--rules.alert.for-outage-tolerance`).
    pub outage_tolerance: Duration,
    /// The least time left to fire a restored alert (Prometheus's
    /// `--rules.alert.for-grace-period`); rules with a shorter `for` are not
    /// restored.
    pub for_grace_period: Duration,
    /// How often a firing alert is sent again (Prometheus's
    /// `--rules.alert.resend-delay`).
    pub resend_delay: Duration,
}

impl Default for RuleContext {
    fn default() -> Self {
        RuleContext {
            default_interval: Duration::from_secs(60),
            external_labels: BTreeMap::new(),
            external_url: String::new(),
            outage_tolerance: Duration::from_secs(3600),
            for_grace_period: Duration::from_secs(600),
            resend_delay: Duration::from_secs(60),
        }
    }
}

/// An alert's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertState {
    /// Resolved: kept a while to be reported.
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    /// Prometheus's name, used in `ALERTS{alertstate}` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule: one label set its expression returned.
#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    /// The result's labels without the metric name, the rule's labels
    /// (expanded) and `alertname`.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    /// The expression's value at the last evaluation that returned it.
    pub value: f64,
    pub active_at_ms: i64,
    pub fired_at_ms: Option<i64>,
    pub resolved_at_ms: Option<i64>,
    pub last_sent_at_ms: Option<i64>,
    /// When Alertmanager should consider it resolved if it hears nothing.
    pub valid_until_ms: i64,
    pub keep_firing_since_ms: Option<i64>,
}

/// A rule's health after its last evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Ok,
    Err(String),
}

/// A rule, its last outcome and, for alerting rules, its alerts.
#[derive(Clone, Debug)]
pub struct RuleStatus {
    pub spec: RuleSpec,
    pub health: Health,
    pub last_evaluation_ms: Option<i64>,
    pub evaluation_time: Duration,
    /// Active alerts (pending, firing, and resolved ones still reported),
    /// sorted by labels.
    pub alerts: Vec<Alert>,
}

/// An alert to deliver, with the expression that raised it (for the
/// `generatorURL`).
#[derive(Clone, Debug)]
pub struct AlertToSend {
    pub expr: String,
    pub alert: Alert,
}

struct RuleRuntime {
    spec: RuleSpec,
    health: Health,
    last_evaluation_ms: Option<i64>,
    evaluation_time: Duration,
    /// Alerts by their label set.
    active: BTreeMap<BTreeMap<String, String>, Alert>,
    /// Whether `ALERTS`/`ALERTS_FOR_STATE` may be written (see the module
    /// documentation).
    restored: bool,
    /// Series written at the previous evaluation, for staleness markers.
    written: HashSet<Vec<Label>>,
    /// Whether the expression may read what an earlier rule of the group
    /// writes: only then must that output be written before this rule runs.
    reads_earlier_output: bool,
    /// An alerting rule's label and annotation templates, parsed once.
    label_templates: Vec<(String, Expander)>,
    annotation_templates: Vec<(String, Expander)>,
}

/// A group and the state of its rules.
pub struct Group {
    spec: GroupSpec,
    interval: Duration,
    context: RuleContext,
    rules: Vec<RuleRuntime>,
    /// Whether the `for` state still has to be restored (see [`Group::restore_for_state`]).
    should_restore: bool,
    last_evaluation_ms: Option<i64>,
    evaluation_time: Duration,
}

impl Group {
    /// A group starting fresh: with `restore` (a daemon's start), alert
    /// series wait for [`Group::restore_for_state`]; without (a reload, or
    /// a rule unit test) they are written at once.
    pub fn new(spec: GroupSpec, context: RuleContext, restore: bool) -> Group {
        let interval = spec.interval.unwrap_or(context.default_interval);
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(n, rule)| RuleRuntime {
                reads_earlier_output: may_read_output_of(rule.expr(), &spec.rules[..n]),
                label_templates: match rule {
                    RuleSpec::Alerting { labels, .. } => expanders(labels),
                    RuleSpec::Recording { .. } => Vec::new(),
                },
                annotation_templates: match rule {
                    RuleSpec::Alerting { annotations, .. } => expanders(annotations),
                    RuleSpec::Recording { .. } => Vec::new(),
                },
                spec: rule.clone(),
                health: Health::Unknown,
                last_evaluation_ms: None,
                evaluation_time: Duration::ZERO,
                active: BTreeMap::new(),
                restored: !restore,
                written: HashSet::new(),
            })
            .collect();
        Group {
            spec,
            interval,
            context,
            rules,
            should_restore: restore,
            last_evaluation_ms: None,
            evaluation_time: Duration::ZERO,
        }
    }

    pub fn spec(&self) -> &GroupSpec {
        &self.spec
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn should_restore(&self) -> bool {
        self.should_restore
    }

    pub fn last_evaluation_ms(&self) -> Option<i64> {
        self.last_evaluation_ms
    }

    pub fn evaluation_time(&self) -> Duration {
        self.evaluation_time
    }

    /// Takes over the alerts and written series of the same rules (same
    /// name, expression and labels) in `old`, so a reload neither resets
    /// `for` nor forgets what to mark stale.
    pub fn take_state_from(&mut self, old: Group) {
        let mut old_rules: HashMap<(String, String), Vec<RuleRuntime>> = HashMap::new();
        for rule in old.rules {
            old_rules
                .entry((rule.spec.name().to_owned(), rule.spec.expr().to_owned()))
                .or_default()
                .push(rule);
        }
        for rule in &mut self.rules {
            let key = (rule.spec.name().to_owned(), rule.spec.expr().to_owned());
            if let Some(candidates) = old_rules.get_mut(&key)
                && !candidates.is_empty()
            {
                let previous = candidates.remove(0);
                rule.active = previous.active;
                rule.written = previous.written;
                rule.health = previous.health;
                rule.last_evaluation_ms = previous.last_evaluation_ms;
                rule.evaluation_time = previous.evaluation_time;
                rule.restored = previous.restored;
            }
        }
        self.should_restore = old.should_restore;
        self.last_evaluation_ms = old.last_evaluation_ms;
    }

    /// The timestamp of the evaluation due at or before `now_ms`: the grid
    /// of `interval` steps offset by the group's hash, as Prometheus's
    /// `EvalTimestamp`, so Strand and Prometheus evaluate the same rule
    /// file at the same instants.
    pub fn eval_timestamp(&self, now_ms: i64) -> i64 {
        let interval_ns = self.interval.as_nanos().max(1) as u64;
        let offset = (self.hash() % interval_ns) as i64;
        // A millisecond stands for all of its nanoseconds: a grid point,
        // truncated to milliseconds, still names its own evaluation.
        let now_ns = now_ms as i128 * 1_000_000 + 999_999;
        let adjusted = now_ns - offset as i128;
        let base = adjusted - adjusted.rem_euclid(interval_ns as i128);
        ((base + offset as i128) / 1_000_000) as i64
    }

    /// Prometheus's group hash: of the label set `{file, name}`.
    fn hash(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.spec.file.len() + self.spec.name.len() + 12);
        for (name, value) in [("file", &self.spec.file), ("name", &self.spec.name)] {
            bytes.extend_from_slice(name.as_bytes());
            bytes.push(0xff);
            bytes.extend_from_slice(value.as_bytes());
            bytes.push(0xff);
        }
        xxhash_rust::xxh64::xxh64(&bytes, 0)
    }

    /// Evaluates every rule at `ts_ms`, in order. The rules' output
    /// (recorded series, `ALERTS`, `ALERTS_FOR_STATE`, staleness markers)
    /// goes to `write` before a rule that may read it runs, and the rest at
    /// the end, in as few batches as that allows (each is a durable write
    /// in the daemon). Returns the alerts to send.
    pub fn evaluate(
        &mut self,
        source: &dyn SeriesSource,
        ts_ms: i64,
        limits: &Limits,
        write: &mut dyn FnMut(Vec<SeriesSamples>),
    ) -> Vec<AlertToSend> {
        let started = Instant::now();
        let mut to_send = Vec::new();
        let mut unwritten: Vec<SeriesSamples> = Vec::new();
        for rule in &mut self.rules {
            if rule.reads_earlier_output && !unwritten.is_empty() {
                write(std::mem::take(&mut unwritten));
            }
            let rule_started = Instant::now();
            let result = match rule.spec.clone() {
                RuleSpec::Recording {
                    record,
                    expr,
                    labels,
                } => record_rule(
                    source,
                    &record,
                    &expr,
                    &labels,
                    self.spec.limit,
                    ts_ms,
                    limits,
                ),
                RuleSpec::Alerting { .. } => {
                    alert_rule(rule, source, &self.context, self.spec.limit, ts_ms, limits)
                }
            };
            rule.evaluation_time = rule_started.elapsed();
            rule.last_evaluation_ms = Some(ts_ms);
            match result {
                Ok(series) => {
                    rule.health = Health::Ok;
                    let now: HashSet<Vec<Label>> =
                        series.iter().map(|s| s.labels.clone()).collect();
                    let mut output = series;
                    for gone in rule.written.difference(&now) {
                        output.push(SeriesSamples {
                            labels: gone.clone(),
                            samples: vec![MetricSample {
                                timestamp_ms: ts_ms,
                                value: f64::from_bits(STALE_NAN_BITS),
                            }],
                        });
                    }
                    rule.written = now;
                    unwritten.extend(output);
                }
                Err(message) => rule.health = Health::Err(message),
            }
            if let RuleSpec::Alerting { expr, .. } = &rule.spec {
                let expr = expr.clone();
                to_send.extend(
                    alerts_to_send(rule, ts_ms, &self.context, self.interval)
                        .into_iter()
                        .map(|alert| AlertToSend {
                            expr: expr.clone(),
                            alert,
                        }),
                );
            }
        }
        if !unwritten.is_empty() {
            write(unwritten);
        }
        self.last_evaluation_ms = Some(ts_ms);
        self.evaluation_time = started.elapsed();
        to_send
    }

    /// Restores the `for` state of active alerts from `ALERTS_FOR_STATE`
    /// as Prometheus's `RestoreForState` does, then lets alert series be
    /// written. The daemon calls it after the second evaluation since its
    /// start.
    pub fn restore_for_state(&mut self, source: &dyn SeriesSource, now_ms: i64) {
        let grace = self.context.for_grace_period.as_millis() as i64;
        let tolerance = self.context.outage_tolerance.as_millis() as i64;
        for rule in &mut self.rules {
            let RuleSpec::Alerting { alert, hold, .. } = &rule.spec else {
                continue;
            };
            let hold = hold.as_millis() as i64;
            if hold >= grace {
                for active in rule.active.values_mut() {
                    let mut matchers = vec![Matcher::new(
                        MatchOp::Equal,
                        METRIC_NAME_LABEL,
                        "ALERTS_FOR_STATE",
                    )];
                    matchers.extend(
                        active
                            .labels
                            .iter()
                            .map(|(name, value)| Matcher::new(MatchOp::Equal, name, value)),
                    );
                    let Ok(found) = source.select(&matchers, now_ms - tolerance, now_ms) else {
                        tracing::warn!(alert = %alert, "RestoreForStateFailed: ALERTS_FOR_STATE could not be read");
                        continue;
                    };
                    let exact = found.into_iter().find(|s| {
                        s.labels
                            .iter()
                            .filter(|(n, _)| *n != METRIC_NAME_LABEL)
                            .count()
                            == active.labels.len()
                    });
                    let Some(&(t, v)) = exact.as_ref().and_then(|s| s.samples.last()) else {
                        continue;
                    };
                    if is_stale_nan(v) {
                        continue;
                    }
                    let down_at = t.div_euclid(1000) * 1000;
                    let mut restored_active_at = v as i64 * 1000;
                    let remaining = hold - (down_at - restored_active_at);
                    if remaining <= 0 {
                    } else if remaining < grace {
                        restored_active_at = now_ms + grace - hold;
                    } else {
                        restored_active_at += now_ms - down_at;
                    }
                    active.active_at_ms = restored_active_at;
                }
            }
            rule.restored = true;
        }
        self.should_restore = false;
    }

    /// Each rule whose last evaluation failed, with why: read after every
    /// evaluation, without copying the rules' alerts as [`Group::rules`] does.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.rules.iter().filter_map(|rule| match &rule.health {
            Health::Err(error) => Some((rule.spec.name(), error.as_str())),
            _ => None,
        })
    }

    /// Each rule with its last outcome and alerts.
    pub fn rules(&self) -> Vec<RuleStatus> {
        self.rules
            .iter()
            .map(|rule| RuleStatus {
                spec: rule.spec.clone(),
                health: rule.health.clone(),
                last_evaluation_ms: rule.last_evaluation_ms,
                evaluation_time: rule.evaluation_time,
                alerts: rule.active.values().cloned().collect(),
            })
            .collect()
    }
}

/// Each template of `texts`, parsed, by its label or annotation name.
fn expanders(texts: &BTreeMap<String, String>) -> Vec<(String, Expander)> {
    texts
        .iter()
        .map(|(name, text)| (name.clone(), Expander::new(text)))
        .collect()
}

/// Whether `expr` may select what `earlier` rules write: it names one of
/// their series (a recorded name, `ALERTS`, `ALERTS_FOR_STATE`), or has a
/// selector whose metric name is not given literally. Errs towards yes:
/// a wrong yes only costs an earlier write.
fn may_read_output_of(expr: &str, earlier: &[RuleSpec]) -> bool {
    if earlier.is_empty() {
        return false;
    }
    let names_one = earlier.iter().any(|rule| match rule {
        RuleSpec::Recording { record, .. } => expr.contains(record.as_str()),
        RuleSpec::Alerting { .. } => expr.contains("ALERTS"),
    });
    let nameless_selector = expr.contains("__name__")
        || expr.char_indices().any(|(at, c)| {
            c == '{'
                && !expr[..at]
                    .trim_end()
                    .ends_with(|p: char| p.is_ascii_alphanumeric() || p == '_' || p == ':')
        });
    names_one || nameless_selector
}

/// A result's labels, as name/value pairs.
type LabelPairs = Vec<(String, String)>;

/// The vector an expression returns at `ts_ms`: a scalar is one sample
/// without labels; anything else is an error.
fn query_vector(
    source: &dyn SeriesSource,
    expr: &str,
    ts_ms: i64,
    limits: &Limits,
) -> Result<Vec<(LabelPairs, f64)>, String> {
    let value =
        strand_promql::instant_query(source, expr, ts_ms, limits).map_err(|error| match error {
            EvalError::Parse(message) => format!("parse error: {message}"),
            other => other.to_string(),
        })?;
    match value {
        Value::Scalar { v, .. } => Ok(vec![(Vec::new(), v)]),
        Value::Vector(samples) => Ok(samples
            .into_iter()
            .map(|s| {
                (
                    s.labels
                        .iter()
                        .map(|(n, v)| (n.to_owned(), v.to_owned()))
                        .collect(),
                    s.v,
                )
            })
            .collect()),
        Value::Matrix(_) => Err("rule result is not a vector or scalar: a range vector".into()),
        Value::String { .. } => Err("rule result is not a vector or scalar: a string".into()),
    }
}

fn to_labels(map: BTreeMap<String, String>) -> Vec<Label> {
    map.into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, value)| Label::new(name, value))
        .collect()
}

fn one_sample(labels: Vec<Label>, ts_ms: i64, value: f64) -> SeriesSamples {
    SeriesSamples {
        labels,
        samples: vec![MetricSample {
            timestamp_ms: ts_ms,
            value,
        }],
    }
}

fn record_rule(
    source: &dyn SeriesSource,
    record: &str,
    expr: &str,
    rule_labels: &BTreeMap<String, String>,
    limit: usize,
    ts_ms: i64,
    limits: &Limits,
) -> Result<Vec<SeriesSamples>, String> {
    let vector = query_vector(source, expr, ts_ms, limits)?;
    let mut seen = HashSet::new();
    let mut series = Vec::with_capacity(vector.len());
    for (labels, value) in vector {
        let mut map: BTreeMap<String, String> = labels.into_iter().collect();
        map.insert(METRIC_NAME_LABEL.to_owned(), record.to_owned());
        for (name, value) in rule_labels {
            map.insert(name.clone(), value.clone());
        }
        let labels = to_labels(map);
        if !seen.insert(labels.clone()) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
        series.push(one_sample(labels, ts_ms, value));
    }
    if limit > 0 && series.len() > limit {
        return Err(format!(
            "exceeded limit of {limit} with {} series",
            series.len()
        ));
    }
    Ok(series)
}

fn alert_rule(
    rule: &mut RuleRuntime,
    source: &dyn SeriesSource,
    context: &RuleContext,
    limit: usize,
    ts_ms: i64,
    limits: &Limits,
) -> Result<Vec<SeriesSamples>, String> {
    let RuleSpec::Alerting {
        alert: name,
        expr,
        hold,
        keep_firing_for,
        ..
    } = &rule.spec
    else {
        unreachable!("alert_rule is only called for alerting rules")
    };
    let vector = query_vector(source, expr, ts_ms, limits)?;
    let mut current: BTreeMap<BTreeMap<String, String>, Alert> = BTreeMap::new();
    for (labels, value) in vector {
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        let data = TemplateData {
            labels: &labels,
            external_labels: &context.external_labels,
            external_url: &context.external_url,
            value,
        };
        let expand = |template: &Expander| {
            template
                .expand(&data)
                .unwrap_or_else(|error| format!("<error expanding template: {error}>"))
        };
        let mut alert_labels = labels.clone();
        alert_labels.remove(METRIC_NAME_LABEL);
        for (label, template) in &rule.label_templates {
            let expanded = expand(template);
            if expanded.is_empty() {
                alert_labels.remove(label);
            } else {
                alert_labels.insert(label.clone(), expanded);
            }
        }
        alert_labels.insert("alertname".into(), name.clone());
        let annotations = rule
            .annotation_templates
            .iter()
            .map(|(key, template)| (key.clone(), expand(template)))
            .collect();
        if current.contains_key(&alert_labels) {
            return Err(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            );
        }
        current.insert(
            alert_labels.clone(),
            Alert {
                labels: alert_labels,
                annotations,
                state: AlertState::Pending,
                value,
                active_at_ms: ts_ms,
                fired_at_ms: None,
                resolved_at_ms: None,
                last_sent_at_ms: None,
                valid_until_ms: 0,
                keep_firing_since_ms: None,
            },
        );
    }
    for (labels, new) in &current {
        match rule.active.get_mut(labels) {
            Some(existing) if existing.state != AlertState::Inactive => {
                existing.value = new.value;
                existing.annotations = new.annotations.clone();
            }
            _ => {
                rule.active.insert(labels.clone(), new.clone());
            }
        }
    }
    let hold_ms = hold.as_millis() as i64;
    let keep_ms = keep_firing_for.as_millis() as i64;
    let mut output = Vec::new();
    let mut active_or_pending = 0usize;
    rule.active.retain(|labels, alert| {
        if !current.contains_key(labels) {
            let mut keep_firing = false;
            if alert.state == AlertState::Firing && keep_ms > 0 {
                let since = *alert.keep_firing_since_ms.get_or_insert(ts_ms);
                keep_firing = ts_ms - since < keep_ms;
            }
            let forget = alert.state == AlertState::Pending
                || alert
                    .resolved_at_ms
                    .is_some_and(|resolved| ts_ms - resolved > RESOLVED_RETENTION_MS);
            if alert.state != AlertState::Inactive && !keep_firing {
                alert.state = AlertState::Inactive;
                alert.resolved_at_ms = Some(ts_ms);
            }
            if !keep_firing {
                return !forget;
            }
        } else {
            alert.keep_firing_since_ms = None;
        }
        active_or_pending += 1;
        if alert.state == AlertState::Pending && ts_ms - alert.active_at_ms >= hold_ms {
            alert.state = AlertState::Firing;
            alert.fired_at_ms = Some(ts_ms);
        }
        if rule.restored {
            let mut series_labels = alert.labels.clone();
            series_labels.insert(METRIC_NAME_LABEL.into(), "ALERTS".into());
            series_labels.insert("alertstate".into(), alert.state.as_str().into());
            output.push(one_sample(to_labels(series_labels), ts_ms, 1.0));
            let mut for_state = alert.labels.clone();
            for_state.insert(METRIC_NAME_LABEL.into(), "ALERTS_FOR_STATE".into());
            output.push(one_sample(
                to_labels(for_state),
                ts_ms,
                alert.active_at_ms.div_euclid(1000) as f64,
            ));
        }
        true
    });
    if limit > 0 && active_or_pending > limit {
        rule.active.clear();
        return Err(format!(
            "exceeded limit of {limit} with {active_or_pending} alerts"
        ));
    }
    Ok(output)
}

/// The alerts due to be sent at `ts_ms` (Prometheus's `sendAlerts`): firing
/// ones every `resend_delay`, resolved ones once more after they resolve.
fn alerts_to_send(
    rule: &mut RuleRuntime,
    ts_ms: i64,
    context: &RuleContext,
    interval: Duration,
) -> Vec<Alert> {
    let resend = context.resend_delay.as_millis() as i64;
    let delta = resend.max(interval.as_millis() as i64);
    let mut due = Vec::new();
    for alert in rule.active.values_mut() {
        let needs_sending = match alert.state {
            AlertState::Pending => false,
            _ => match (alert.resolved_at_ms, alert.last_sent_at_ms) {
                (Some(resolved), Some(sent)) if resolved > sent => true,
                (Some(_), None) => true,
                (_, Some(sent)) => sent + resend < ts_ms,
                (None, None) => true,
            },
        };
        if needs_sending {
            alert.last_sent_at_ms = Some(ts_ms);
            alert.valid_until_ms = ts_ms + 4 * delta;
            due.push(alert.clone());
        }
    }
    due
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{MemorySeries, parse_rule_file};

    const MINUTE: i64 = 60_000;

    fn series(name: &str, labels: &[(&str, &str)], points: &[(i64, f64)]) -> SeriesSamples {
        let mut all: Vec<Label> = labels
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect();
        all.push(Label {
            name: METRIC_NAME_LABEL.into(),
            value: name.into(),
        });
        all.sort_by(|a, b| a.name.cmp(&b.name));
        SeriesSamples {
            labels: all,
            samples: points
                .iter()
                .map(|&(timestamp_ms, value)| MetricSample {
                    timestamp_ms,
                    value,
                })
                .collect(),
        }
    }

    fn group(text: &str) -> Group {
        let spec = parse_rule_file(text, "test.yml").unwrap().remove(0);
        Group::new(spec, RuleContext::default(), false)
    }

    /// Evaluates every minute from 0 through `until`, writing outputs back
    /// into `data`; returns the states of the first rule's alerts after each
    /// evaluation and everything written.
    fn run(
        group: &mut Group,
        data: &MemorySeries,
        until: i64,
    ) -> (Vec<Vec<AlertState>>, Vec<SeriesSamples>) {
        let mut states = Vec::new();
        let mut written = Vec::new();
        for ts in (0..=until).step_by(MINUTE as usize) {
            let mut out = Vec::new();
            group.evaluate(data, ts, &Limits::default(), &mut |batch| out.extend(batch));
            data.append(out.clone());
            written.extend(out);
            states.push(group.rules()[0].alerts.iter().map(|a| a.state).collect());
        }
        (states, written)
    }

    #[test]
    fn an_alert_goes_pending_firing_and_resolved() {
        let data = MemorySeries::default();
        let up: Vec<(i64, f64)> = (0..=10)
            .map(|m| (m * MINUTE, if (2..=5).contains(&m) { 0.0 } else { 1.0 }))
            .collect();
        data.append(vec![series("up", &[("job", "api")], &up)]);
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 2m\n    labels: {severity: page}\n    annotations: {summary: '{{ $labels.job }} is down'}\n",
        );
        let (states, written) = run(&mut g, &data, 8 * MINUTE);
        use AlertState::*;
        assert_eq!(
            states,
            vec![
                vec![],
                vec![],
                vec![Pending],
                vec![Pending],
                vec![Firing],
                vec![Firing],
                vec![Inactive],
                vec![Inactive],
                vec![Inactive]
            ]
        );
        let alert = &g.rules()[0].alerts[0];
        assert_eq!(alert.labels["alertname"], "Down");
        assert_eq!(alert.labels["severity"], "page");
        assert_eq!(alert.annotations["summary"], "api is down");
        assert_eq!(alert.fired_at_ms, Some(4 * MINUTE));
        assert_eq!(alert.resolved_at_ms, Some(6 * MINUTE));
        let alerts_series: Vec<_> = written
            .iter()
            .filter(|s| s.metric_name() == "ALERTS")
            .map(|s| {
                let state = s
                    .labels
                    .iter()
                    .find(|l| l.name == "alertstate")
                    .unwrap()
                    .value
                    .clone();
                (
                    s.samples[0].timestamp_ms / MINUTE,
                    state,
                    is_stale_nan(s.samples[0].value),
                )
            })
            .collect();
        assert_eq!(
            alerts_series,
            vec![
                (2, "pending".into(), false),
                (3, "pending".into(), false),
                (4, "firing".into(), false),
                (4, "pending".into(), true),
                (5, "firing".into(), false),
                (6, "firing".into(), true),
            ]
        );
    }

    #[test]
    fn keep_firing_for_holds_a_firing_alert() {
        let data = MemorySeries::default();
        let points: Vec<(i64, f64)> = (0..=10)
            .map(|m| (m * MINUTE, if m == 1 { 1.0 } else { 0.0 }))
            .collect();
        data.append(vec![series("errors", &[], &points)]);
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - alert: E\n    expr: errors > 0\n    keep_firing_for: 2m\n",
        );
        let (states, _) = run(&mut g, &data, 5 * MINUTE);
        use AlertState::*;
        assert_eq!(
            states,
            vec![
                vec![],
                vec![Firing],
                vec![Firing],
                vec![Firing],
                vec![Inactive],
                vec![Inactive]
            ]
        );
    }

    #[test]
    fn recording_rules_see_earlier_rules_and_mark_what_vanished_stale() {
        let data = MemorySeries::default();
        data.append(vec![
            series("requests", &[("job", "a")], &[(0, 1.0), (MINUTE, 2.0)]),
            series("requests", &[("job", "b")], &[(0, 3.0)]),
        ]);
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - record: job:requests\n    expr: requests * 10\n    labels: {source: rule}\n  - record: total\n    expr: sum(job:requests)\n",
        );
        let limits = Limits {
            lookback_ms: 30_000,
            ..Limits::default()
        };
        let mut written = Vec::new();
        for ts in [0, MINUTE] {
            let mut out = Vec::new();
            g.evaluate(&data, ts, &limits, &mut |batch| {
                data.append(batch.clone());
                out.extend(batch)
            });
            written.push(out);
        }
        let total = |batch: &[SeriesSamples]| {
            batch
                .iter()
                .find(|s| s.metric_name() == "total")
                .map(|s| s.samples[0].value)
        };
        assert_eq!(total(&written[0]), Some(40.0));
        assert_eq!(total(&written[1]), Some(20.0));
        let stale: Vec<_> = written[1]
            .iter()
            .filter(|s| is_stale_nan(s.samples[0].value))
            .map(|s| {
                s.labels
                    .iter()
                    .map(|l| &*l.value)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        assert_eq!(stale, vec!["job:requests,b,rule"]);
        assert_eq!(g.rules()[0].health, Health::Ok);
    }

    #[test]
    fn output_is_written_before_a_rule_that_may_read_it_and_batched_otherwise() {
        let data = MemorySeries::default();
        let mut independent = group(
            "groups:\n- name: g\n  rules:\n  - record: a\n    expr: vector(1)\n  - record: b\n    expr: vector(2)\n  - alert: C\n    expr: vector(3) > 1\n",
        );
        let mut writes = 0;
        independent.evaluate(&data, 0, &Limits::default(), &mut |_| writes += 1);
        assert_eq!(writes, 1);
        let mut dependent = group(
            "groups:\n- name: g\n  rules:\n  - record: a\n    expr: vector(1)\n  - record: b\n    expr: a * 2\n  - record: c\n    expr: '{__name__=\"b\"}'\n",
        );
        let mut writes = 0;
        dependent.evaluate(&data, 0, &Limits::default(), &mut |batch| {
            writes += 1;
            data.append(batch)
        });
        assert_eq!(writes, 3);
        let spec = |expr: &str| RuleSpec::Recording {
            record: "job:x".into(),
            expr: expr.into(),
            labels: BTreeMap::new(),
        };
        let earlier = [spec("x")];
        assert!(!may_read_output_of("sum(rate(y{job=\"a\"}[5m]))", &earlier));
        assert!(may_read_output_of("job:x > 1", &earlier));
        assert!(may_read_output_of("sum({job=\"a\"})", &earlier));
        assert!(!may_read_output_of("job:x", &[]));
    }

    #[test]
    fn failures_set_health_and_duplicates_are_refused() {
        let data = MemorySeries::default();
        let mut g = group(
            "groups:\n- name: g\n  rules:\n  - record: r\n    expr: vector(1) or label_replace(vector(2), 'x', 'y', '', '')\n    labels: {x: ''}\n  - alert: A\n    expr: '\"text\"'\n  - record: fine\n    expr: vector(1)\n",
        );
        let mut written = Vec::new();
        g.evaluate(&data, 0, &Limits::default(), &mut |batch| {
            written.extend(batch)
        });
        let rules = g.rules();
        assert!(
            matches!(&rules[0].health, Health::Err(e) if e.contains("same labelset")),
            "{:?}",
            rules[0].health
        );
        assert!(
            matches!(&rules[1].health, Health::Err(e) if e.contains("string")),
            "{:?}",
            rules[1].health
        );
        assert_eq!(rules[2].health, Health::Ok);
        assert_eq!(written.len(), 1, "only the healthy rule wrote");
    }

    #[test]
    fn restored_for_state_counts_the_time_before_a_restart() {
        let data = MemorySeries::default();
        let down: Vec<(i64, f64)> = (0..=40).map(|m| (m * MINUTE, 0.0)).collect();
        data.append(vec![series("up", &[], &down)]);
        let rule =
            "groups:\n- name: g\n  rules:\n  - alert: Down\n    expr: up == 0\n    for: 30m\n";
        let mut before = group(rule);
        let (_, written) = run(&mut before, &data, 10 * MINUTE);
        assert!(
            written
                .iter()
                .any(|s| s.metric_name() == "ALERTS_FOR_STATE")
        );
        // A restart at minute 12: the alert was pending since minute 0.
        let spec = parse_rule_file(rule, "test.yml").unwrap().remove(0);
        let mut after = Group::new(spec, RuleContext::default(), true);
        let mut out = Vec::new();
        for ts in [12 * MINUTE, 13 * MINUTE] {
            after.evaluate(&data, ts, &Limits::default(), &mut |batch| {
                out.extend(batch)
            });
        }
        assert!(out.is_empty(), "no alert series before the restore");
        after.restore_for_state(&data, 13 * MINUTE);
        let alert = &after.rules()[0].alerts[0];
        // Pending for 10 minutes before going down at minute 10, down for
        // 3: the downtime does not count, active since minute 3.
        assert_eq!(alert.active_at_ms, 3 * MINUTE);
    }

    #[test]
    fn groups_evaluate_on_a_grid_offset_by_their_hash() {
        let g = group(
            "groups:\n- name: g\n  interval: 15s\n  rules:\n  - record: r\n    expr: vector(1)\n",
        );
        let now = 1_700_000_000_123;
        let ts = g.eval_timestamp(now);
        assert!(ts <= now && now - ts < 15_000);
        assert_eq!(g.eval_timestamp(ts + 15_000), ts + 15_000);
        assert_eq!(g.eval_timestamp(ts + 14_999), ts);
    }
}
