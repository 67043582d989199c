//! The engine: plans which data each selector needs, loads it once, then evaluates the
//! expression tree at each evaluation timestamp.
//!
//! Range queries are evaluated step by step (each step is an instant evaluation); the
//! series a selector reads are fetched once for the whole query by the planning pass.
//! Subqueries evaluate their inner expression on a grid of multiples of their step,
//! which is exactly the grid Prometheus 2.42 uses.

use std::cell::Cell;
use std::collections::{HashMap, hash_map};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    AtModifier, Expr, MatrixSelector, Offset, SubqueryExpr, VectorSelector,
};

use crate::error::{EvalError, Result, exec_err};
use crate::value::{Labels, METRIC_NAME, Sample, Series, Value, is_stale_nan};
use crate::{Limits, SeriesSource, Steps, aggregate, binary, functions};

/// Interval of subqueries without an explicit step: Prometheus's default global
/// evaluation interval.
const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// Prometheus API limit on points per series in a range query.
const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// An intermediate value during evaluation.
pub(crate) enum Val {
    Scalar(f64),
    String(String),
    /// Samples all stamped with the evaluation time.
    Vector(Vec<Sample>),
    Matrix(RangeVal),
}

/// A range vector with the window it was read over, which rate-like functions
/// need for extrapolation.
pub(crate) struct RangeVal {
    pub series: Vec<Window>,
    /// Inclusive window start in ms.
    pub start: i64,
    /// Inclusive window end in ms.
    pub end: i64,
}

impl Val {
    /// Name of the value's type for error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::String(_) => "string",
            Val::Vector(_) => "vector",
            Val::Matrix(_) => "matrix",
        }
    }
}

/// Identity of a selector node in the parsed tree; the tree does not move while a
/// query runs, so its address is stable.
/// The samples one selector needs.
#[derive(Clone, Copy)]
struct SelectorWindow<'e> {
    vs: &'e VectorSelector,
    start: i64,
    end: i64,
    /// The times it is read at, when it is read only as an instant vector.
    steps: Option<Steps>,
}

fn key(vs: &VectorSelector) -> usize {
    vs as *const VectorSelector as usize
}

pub(crate) fn duration_ms(d: &std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => duration_ms(d).saturating_neg(),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => duration_ms(&e.duration()).saturating_neg(),
    }
}

/// Strips any number of parentheses, as Prometheus does for function arguments.
pub(crate) fn unwrap_parens(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// Evaluation state for one query.
pub(crate) struct Evaluator<'a> {
    src: &'a dyn SeriesSource,
    limits: &'a Limits,
    deadline: Instant,
    /// Query start and end, the targets of `@ start()` and `@ end()`.
    start: i64,
    end: i64,
    /// Series of each selector, sorted by labels, loaded once by `plan`.
    loaded: HashMap<usize, Vec<Loaded>>,
    /// Each subquery's inner results, for the windows still to come (see
    /// [`Evaluator::subquery`]).
    subquery_points: HashMap<usize, SubqueryPoints>,
    /// Samples held by the result accumulated so far (range queries).
    result_samples: usize,
    /// Samples produced while evaluating the current step.
    step_samples: usize,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(src: &'a dyn SeriesSource, limits: &'a Limits, start: i64, end: i64) -> Self {
        Evaluator {
            src,
            limits,
            deadline: Instant::now() + limits.timeout,
            start,
            end,
            loaded: HashMap::new(),
            subquery_points: HashMap::new(),
            result_samples: 0,
            step_samples: 0,
        }
    }

    /// Evaluates `expr` at one timestamp and converts the result for the caller.
    pub(crate) fn instant(&mut self, expr: &Expr, t: i64) -> Result<Value> {
        self.plan(expr, t, t, 1)?;
        Ok(match self.eval(expr, t)? {
            Val::Scalar(v) => Value::Scalar { t, v },
            Val::String(v) => Value::String { t, v },
            Val::Vector(mut v) => {
                if !functions::is_sort_call(expr) {
                    v.sort_by(|a, b| a.labels.cmp(&b.labels));
                }
                Value::Vector(v)
            }
            Val::Matrix(m) => Value::Matrix(
                m.series
                    .into_iter()
                    .map(|w| Series {
                        samples: w.samples().to_vec(),
                        labels: w.labels,
                    })
                    .collect(),
            ),
        })
    }

    /// Evaluates `expr` at `start, start+step, ... <= end` and assembles a matrix.
    pub(crate) fn range(&mut self, expr: &Expr, step: i64) -> Result<Value> {
        if step <= 0 {
            return Err(EvalError::Parse(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        if self.end < self.start {
            return Err(EvalError::Parse(
                "end timestamp must not be before start time".into(),
            ));
        }
        if self.end.saturating_sub(self.start) / step > MAX_POINTS_PER_SERIES {
            return Err(EvalError::Parse(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
            ));
        }
        let ty = expr.value_type();
        if !matches!(
            ty,
            promql_parser::parser::value::ValueType::Scalar
                | promql_parser::parser::value::ValueType::Vector
        ) {
            return Err(EvalError::Parse(format!(
                "invalid expression type \"{ty}\" for range query, must be Scalar or instant Vector"
            )));
        }
        self.plan(expr, self.start, self.end, step)?;
        let mut out: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
        let mut t = self.start;
        while t <= self.end {
            self.step_samples = 0;
            let samples = match self.eval(expr, t)? {
                Val::Scalar(v) => vec![Sample {
                    labels: Labels::default(),
                    t,
                    v,
                }],
                Val::Vector(v) => v,
                other => {
                    return exec_err(format!("unexpected {} in range query", other.type_name()));
                }
            };
            self.result_samples += samples.len();
            self.charge(0)?;
            for s in samples {
                out.entry(s.labels).or_default().push((t, s.v));
            }
            match t.checked_add(step) {
                Some(n) => t = n,
                None => break,
            }
        }
        Ok(Value::Matrix(into_series(out)))
    }

    /// What the query reads from.
    pub(crate) fn source(&self) -> &'a dyn SeriesSource {
        self.src
    }

    /// Accounts `n` more samples in memory and checks the limits.
    pub(crate) fn charge(&mut self, n: usize) -> Result<()> {
        self.step_samples = self.step_samples.saturating_add(n);
        if self.step_samples.saturating_add(self.result_samples) > self.limits.max_samples {
            return Err(EvalError::TooManySamples);
        }
        if Instant::now() > self.deadline {
            return Err(EvalError::Timeout);
        }
        Ok(())
    }

    /// The time a selector or subquery with these modifiers reads at when evaluated at `t`.
    fn ref_time(&self, at: &Option<AtModifier>, offset: &Option<Offset>, t: i64) -> i64 {
        let base = match at {
            None => t,
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(st)) => system_time_ms(st),
        };
        base.saturating_sub(offset_ms(offset))
    }

    /// Walks the tree once: rejects what Prometheus 2.42 does not support, computes the
    /// time window each selector needs over evaluation times `[lo, hi]`, and loads it.
    /// `step` is the range query's (any positive value for an instant
    /// query): selectors read only at those times may be downsampled by the
    /// source (see [`SeriesSource::select_steps`]).
    fn plan(&mut self, expr: &Expr, lo: i64, hi: i64, step: i64) -> Result<()> {
        let mut windows: Vec<SelectorWindow> = Vec::new();
        self.collect_windows(expr, lo, hi, Some(step), &mut windows)?;
        let mut merged: HashMap<usize, SelectorWindow> = HashMap::new();
        for window in windows {
            let e = merged.entry(key(window.vs)).or_insert(window);
            e.start = e.start.min(window.start);
            e.end = e.end.max(window.end);
            if e.steps != window.steps {
                e.steps = None;
            }
        }
        for (k, window) in merged {
            let series = self
                .select(window.vs, window.start, window.end, window.steps)?
                .into_iter()
                .map(Loaded::new)
                .collect();
            self.loaded.insert(k, series);
        }
        Ok(())
    }

    /// Collects the window of every selector under `expr`, evaluated over
    /// `[lo, hi]` every `step` (`None` inside a subquery, whose times are
    /// its own grid).
    fn collect_windows<'e>(
        &self,
        expr: &'e Expr,
        lo: i64,
        hi: i64,
        step: Option<i64>,
        out: &mut Vec<SelectorWindow<'e>>,
    ) -> Result<()> {
        match expr {
            Expr::VectorSelector(vs) => {
                check_selector(vs)?;
                let (a, b) = self.window(&vs.at, &vs.offset, lo, hi);
                // Read at `a`, `a + step`, ... `b` (with `@`, `b` is `a`).
                let steps = step.map(|step_ms| Steps {
                    first_ms: a,
                    step_ms,
                });
                out.push(SelectorWindow {
                    vs,
                    start: a.saturating_sub(self.limits.lookback_ms),
                    end: b,
                    steps,
                });
            }
            Expr::MatrixSelector(MatrixSelector { vs, range }) => {
                check_selector(vs)?;
                let (a, b) = self.window(&vs.at, &vs.offset, lo, hi);
                out.push(SelectorWindow {
                    vs,
                    start: a.saturating_sub(duration_ms(range)),
                    end: b,
                    steps: None,
                });
            }
            Expr::Subquery(sq) => {
                let (a, b) = self.window(&sq.at, &sq.offset, lo, hi);
                self.collect_windows(
                    &sq.expr,
                    a.saturating_sub(duration_ms(&sq.range)),
                    b,
                    None,
                    out,
                )?;
            }
            Expr::Aggregate(a) => {
                aggregate::check_supported(a)?;
                if let Some(p) = &a.param {
                    self.collect_windows(p, lo, hi, step, out)?;
                }
                self.collect_windows(&a.expr, lo, hi, step, out)?;
            }
            Expr::Unary(u) => self.collect_windows(&u.expr, lo, hi, step, out)?,
            Expr::Binary(b) => {
                binary::check_supported(b)?;
                self.collect_windows(&b.lhs, lo, hi, step, out)?;
                self.collect_windows(&b.rhs, lo, hi, step, out)?;
            }
            Expr::Paren(p) => self.collect_windows(&p.expr, lo, hi, step, out)?,
            Expr::Call(c) => {
                functions::check_supported(c)?;
                for a in &c.args.args {
                    self.collect_windows(a, lo, hi, step, out)?;
                }
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            Expr::Extension(_) => {
                return Err(EvalError::Parse(
                    "extension expressions are not supported".into(),
                ));
            }
        }
        Ok(())
    }

    fn window(
        &self,
        at: &Option<AtModifier>,
        offset: &Option<Offset>,
        lo: i64,
        hi: i64,
    ) -> (i64, i64) {
        (self.ref_time(at, offset, lo), self.ref_time(at, offset, hi))
    }

    /// Fetches the series of a selector over `[a, b]` (read only at
    /// `steps`, if given), sorted by labels.
    fn select(
        &mut self,
        vs: &VectorSelector,
        a: i64,
        b: i64,
        steps: Option<Steps>,
    ) -> Result<Vec<Series>> {
        let name = vs
            .name
            .as_ref()
            .map(|n| Matcher::new(MatchOp::Equal, METRIC_NAME, n));
        let mut matchers = vs.matchers.matchers.clone();
        matchers.extend(name);
        let mut all: Vec<Series> = match steps {
            Some(steps) => self.src.select_steps(&matchers, a, b, steps)?,
            None => self.src.select(&matchers, a, b)?,
        };
        for s in &mut all {
            s.samples.retain(|(t, _)| *t >= a && *t <= b);
        }
        all.sort_by(|x, y| x.labels.cmp(&y.labels));
        all.dedup_by(|x, y| x.labels == y.labels);
        if Instant::now() > self.deadline {
            return Err(EvalError::Timeout);
        }
        Ok(all)
    }

    /// Instant-vector selection: per series, the newest sample in `[ref - lookback, ref]`
    /// unless it is a staleness marker. Returns each sample with its own timestamp.
    pub(crate) fn select_instant(&mut self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>> {
        let rt = self.ref_time(&vs.at, &vs.offset, t);
        let min = rt.saturating_sub(self.limits.lookback_ms);
        let out: Vec<Sample> = self
            .loaded
            .get(&key(vs))
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| {
                let i = s.samples.partition_point(|(st, _)| *st <= rt);
                let (st, v) = *s.samples.get(i.checked_sub(1)?)?;
                (st >= min && !is_stale_nan(v)).then(|| Sample {
                    labels: s.labels.clone(),
                    t: st,
                    v,
                })
            })
            .collect();
        self.charge(out.len())?;
        Ok(out)
    }

    fn select_range(&mut self, ms: &MatrixSelector, t: i64) -> Result<RangeVal> {
        let end = self.ref_time(&ms.vs.at, &ms.vs.offset, t);
        let start = end.saturating_sub(duration_ms(&ms.range));
        let series: Vec<Window> = self
            .loaded
            .get(&key(&ms.vs))
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|s| {
                let data = &s.without_stale;
                let from = seek(data, &s.from_hint, |st| st < start);
                let to = seek(data, &s.to_hint, |st| st <= end).max(from);
                (to > from).then(|| Window {
                    labels: s.labels.clone(),
                    data: data.clone(),
                    range: from..to,
                })
            })
            .collect();
        self.charge(series.iter().map(|s| s.range.len()).sum())?;
        Ok(RangeVal { series, start, end })
    }

    /// Evaluates the inner expression on the subquery grid: multiples of the step in
    /// `[ref - range, ref]`.
    ///
    /// The grid is absolute, so the windows of consecutive evaluation
    /// times share most of their points: the results are kept per label
    /// set for the windows after them ([`SubqueryPoints`]: evaluation times
    /// only grow, and points before a window's start are dropped), so each
    /// grid time is evaluated once, as Prometheus evaluates a subquery once
    /// over the whole query range. A 30-minute range query of
    /// `max_over_time(rate(x[5m])[15m:1m])` evaluated the rate 16 times per
    /// step, 496 times, instead of 46.
    fn subquery(&mut self, sq: &SubqueryExpr, t: i64) -> Result<RangeVal> {
        let end = self.ref_time(&sq.at, &sq.offset, t);
        let start = end.saturating_sub(duration_ms(&sq.range));
        let step = sq
            .step
            .as_ref()
            .map(duration_ms)
            .unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
        if step <= 0 {
            return exec_err("subquery step must be positive");
        }
        let mut first = start.div_euclid(step).saturating_mul(step);
        if first < start {
            first = first.saturating_add(step);
        }
        let key = &*sq.expr as *const Expr as usize;
        let mut points = self.subquery_points.remove(&key).unwrap_or_default();
        points.keep_from(first);
        let mut ts = match points.evaluated {
            Some((_, through)) => through.saturating_add(step),
            None => first,
        };
        while ts <= end {
            let samples = match self.eval(&sq.expr, ts)? {
                Val::Scalar(v) => vec![Sample {
                    labels: Labels::default(),
                    t: ts,
                    v,
                }],
                Val::Vector(v) => v,
                other => {
                    return exec_err(format!(
                        "subquery over a {} is not allowed",
                        other.type_name()
                    ));
                }
            };
            points.add(ts, samples);
            // The deadline, at every grid time: an inner expression that
            // reads nothing never checks it itself.
            self.charge(0)?;
            match ts.checked_add(step) {
                Some(n) => ts = n,
                None => break,
            }
        }
        let series = points.windows_through(end);
        self.subquery_points.insert(key, points);
        self.charge(series.iter().map(|w| w.range.len()).sum())?;
        Ok(RangeVal { series, start, end })
    }

    /// Evaluates `expr` at time `t`.
    pub(crate) fn eval(&mut self, expr: &Expr, t: i64) -> Result<Val> {
        Ok(match expr {
            Expr::NumberLiteral(n) => Val::Scalar(n.val),
            Expr::StringLiteral(s) => Val::String(s.val.clone()),
            Expr::Paren(p) => self.eval(&p.expr, t)?,
            Expr::VectorSelector(vs) => {
                let mut v = self.select_instant(vs, t)?;
                v.iter_mut().for_each(|s| s.t = t);
                Val::Vector(v)
            }
            Expr::MatrixSelector(ms) => Val::Matrix(self.select_range(ms, t)?),
            Expr::Subquery(sq) => Val::Matrix(self.subquery(sq, t)?),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Val::Scalar(-v),
                Val::Vector(v) => Val::Vector(unique(
                    v.into_iter()
                        .map(|s| Sample {
                            labels: s.labels.without_name(),
                            t,
                            v: -s.v,
                        })
                        .collect(),
                )?),
                other => return exec_err(format!("unary minus on a {}", other.type_name())),
            },
            Expr::Binary(b) => binary::eval(self, b, t)?,
            Expr::Aggregate(a) => aggregate::eval(self, a, t)?,
            Expr::Call(c) => functions::eval(self, c, t)?,
            Expr::Extension(_) => return exec_err("extension expressions are not supported"),
        })
    }

    /// Evaluates an expression that must produce an instant vector.
    pub(crate) fn eval_vector(&mut self, expr: &Expr, t: i64) -> Result<Vec<Sample>> {
        match self.eval(expr, t)? {
            Val::Vector(v) => Ok(v),
            other => exec_err(format!(
                "expected instant vector, got {}",
                other.type_name()
            )),
        }
    }

    /// Evaluates an expression that must produce a scalar.
    pub(crate) fn eval_scalar(&mut self, expr: &Expr, t: i64) -> Result<f64> {
        match self.eval(expr, t)? {
            Val::Scalar(v) => Ok(v),
            other => exec_err(format!("expected scalar, got {}", other.type_name())),
        }
    }

    /// Evaluates an expression that must produce a range vector.
    pub(crate) fn eval_matrix(&mut self, expr: &Expr, t: i64) -> Result<RangeVal> {
        match self.eval(expr, t)? {
            Val::Matrix(m) => Ok(m),
            other => exec_err(format!("expected range vector, got {}", other.type_name())),
        }
    }
}

/// The points gathered per label set, as series in label order. Gathered
/// in a hash map (label sets hash once, and the same set is the same
/// allocation from step to step) and sorted once, rather than kept sorted
/// at every sample.
fn into_series(points: HashMap<Labels, Vec<(i64, f64)>>) -> Vec<Series> {
    let mut series: Vec<Series> = points
        .into_iter()
        .map(|(labels, samples)| Series { labels, samples })
        .collect();
    series.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
    series
}

/// A selector's series as loaded once for the whole query: every step reads
/// windows of these arrays rather than copies.
pub(crate) struct Loaded {
    labels: Labels,
    samples: Arc<[(i64, f64)]>,
    /// `samples` without staleness markers, which range vectors never see
    /// (the same array when there are none).
    without_stale: Arc<[(i64, f64)]>,
    /// Where the last range vector's window started and ended: the next
    /// step's window is usually a sample or two further on.
    from_hint: Cell<usize>,
    to_hint: Cell<usize>,
}

/// The first index of `data` whose time fails `before` (as
/// `partition_point`), searching forward from `hint` when it is at or
/// behind the answer, and by bisection otherwise; updates `hint`.
pub(crate) fn seek(data: &[(i64, f64)], hint: &Cell<usize>, before: impl Fn(i64) -> bool) -> usize {
    const LINEAR_STEPS: usize = 8;
    let mut i = hint.get().min(data.len());
    let found = if i == 0 || before(data[i - 1].0) {
        let limit = (i + LINEAR_STEPS).min(data.len());
        while i < limit && before(data[i].0) {
            i += 1;
        }
        if i < limit || i == data.len() {
            i
        } else {
            i + data[i..].partition_point(|(t, _)| before(*t))
        }
    } else {
        data.partition_point(|(t, _)| before(*t))
    };
    hint.set(found);
    found
}

impl Loaded {
    fn new(series: Series) -> Loaded {
        let samples: Arc<[(i64, f64)]> = series.samples.into();
        let without_stale = if samples.iter().any(|(_, v)| is_stale_nan(*v)) {
            samples
                .iter()
                .copied()
                .filter(|(_, v)| !is_stale_nan(*v))
                .collect()
        } else {
            samples.clone()
        };
        Loaded {
            labels: series.labels,
            samples,
            without_stale,
            from_hint: Cell::new(0),
            to_hint: Cell::new(0),
        }
    }
}

/// A subquery's inner results at the grid times evaluated so far, per
/// label set, kept from one evaluation time of a query to the next.
#[derive(Default)]
struct SubqueryPoints {
    /// The grid times evaluated, `first..=last` (every step between).
    evaluated: Option<(i64, i64)>,
    /// Each label set's points at those times, oldest first.
    series: HashMap<Labels, Vec<(i64, f64)>>,
    /// The keys of `series` in label order; `None` once the keys changed.
    order: Option<Vec<Labels>>,
}

impl SubqueryPoints {
    /// Keeps the points of a window starting at grid time `first`: those
    /// at `first` and after, if `first` is among the times evaluated;
    /// otherwise none (a window that does not overlap the last one is
    /// evaluated afresh).
    fn keep_from(&mut self, first: i64) {
        match self.evaluated {
            Some((from, through)) if from <= first && first <= through => {
                if from < first {
                    let before = self.series.len();
                    self.series.retain(|_, points| {
                        let old = points.partition_point(|&(t, _)| t < first);
                        points.drain(..old);
                        !points.is_empty()
                    });
                    if self.series.len() != before {
                        self.order = None;
                    }
                    self.evaluated = Some((first, through));
                }
            }
            _ => *self = SubqueryPoints::default(),
        }
    }

    /// Adds the inner expression's samples at grid time `ts`, the next
    /// after those evaluated.
    fn add(&mut self, ts: i64, samples: Vec<Sample>) {
        for sample in samples {
            match self.series.entry(sample.labels) {
                hash_map::Entry::Occupied(points) => points.into_mut().push((ts, sample.v)),
                hash_map::Entry::Vacant(slot) => {
                    slot.insert(vec![(ts, sample.v)]);
                    self.order = None;
                }
            }
        }
        self.evaluated = Some((self.evaluated.map_or(ts, |(from, _)| from), ts));
    }

    /// The range vector of the points up to `end`, series in label order.
    fn windows_through(&mut self, end: i64) -> Vec<Window> {
        let series = &self.series;
        let order = self.order.get_or_insert_with(|| {
            let mut keys: Vec<Labels> = series.keys().cloned().collect();
            keys.sort_unstable();
            keys
        });
        order
            .iter()
            .filter_map(|labels| {
                let points = series.get(labels)?;
                let upto = points.partition_point(|&(t, _)| t <= end);
                (upto > 0).then(|| Window {
                    labels: labels.clone(),
                    data: Arc::from(&points[..upto]),
                    range: 0..upto,
                })
            })
            .collect()
    }
}

/// One series of a range vector: a window of its samples, shared with the
/// loaded series (or with a subquery's result).
pub(crate) struct Window {
    pub labels: Labels,
    data: Arc<[(i64, f64)]>,
    range: std::ops::Range<usize>,
}

impl Window {
    /// The samples in the window, oldest first.
    pub(crate) fn samples(&self) -> &[(i64, f64)] {
        &self.data[self.range.clone()]
    }
}

/// Prometheus rejects selectors whose matchers all match the empty string; the parser
/// checks this too, but a defensive check keeps `select` from scanning everything.
fn check_selector(vs: &VectorSelector) -> Result<()> {
    if vs.name.is_none() && vs.matchers.is_empty_matchers() {
        return Err(EvalError::Parse(
            "vector selector must contain at least one non-empty matcher".into(),
        ));
    }
    if !vs.matchers.or_matchers.is_empty() {
        return Err(EvalError::Parse(
            "'or' in label matchers is not supported".into(),
        ));
    }
    Ok(())
}

/// Rejects a vector holding two samples with the same labels, which Prometheus reports
/// after functions and operators that drop or rewrite labels.
pub(crate) fn unique(v: Vec<Sample>) -> Result<Vec<Sample>> {
    let mut hashes: Vec<(u64, usize)> = v
        .iter()
        .enumerate()
        .map(|(i, s)| (s.labels.hash64(), i))
        .collect();
    hashes.sort_unstable();
    // Within a run of equal hashes, compare labels pairwise (collisions are
    // possible, just rare).
    let duplicate = hashes.chunk_by(|a, b| a.0 == b.0).any(|run| {
        run.iter()
            .enumerate()
            .any(|(i, a)| run[i + 1..].iter().any(|b| v[a.1].labels == v[b.1].labels))
    });
    if duplicate {
        return exec_err("vector cannot contain metrics with the same labelset");
    }
    Ok(v)
}
