//! PromQL functions, following `promql/functions.go` of Prometheus 2.42.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};
use regex::Regex;

use crate::error::{EvalError, Result, exec_err};
use crate::eval::{Evaluator, RangeVal, Val, unique, unwrap_parens};
use crate::gomath;
use crate::logs;
use crate::value::{Labels, METRIC_NAME, Sample};

/// Functions this engine implements: those of Prometheus 2.42 (float samples only).
const SUPPORTED: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "acos",
    "acosh",
    "asin",
    "asinh",
    "atan",
    "atanh",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "cos",
    "cosh",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "deg",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "pi",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rad",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sin",
    "sinh",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "tan",
    "tanh",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// Rejects functions Prometheus 2.42 does not know (the parser knows newer
/// ones), and `count_logs` calls with bad arguments, before anything runs.
pub(crate) fn check_supported(c: &Call) -> Result<()> {
    if c.func.name == "count_logs" {
        logs::CountLogs::read(c).map(|_| ())
    } else if SUPPORTED.contains(&c.func.name) {
        Ok(())
    } else {
        Err(EvalError::Parse(format!(
            "unknown function with name \"{}\"",
            c.func.name
        )))
    }
}

/// Whether the outermost expression is `sort`/`sort_desc`, whose order must be kept.
pub(crate) fn is_sort_call(e: &Expr) -> bool {
    matches!(unwrap_parens(e), Expr::Call(c) if c.func.name == "sort" || c.func.name == "sort_desc")
}

/// Whether `s` is a valid Prometheus label name.
pub(crate) fn is_valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Go's `math.Max`: NaN wins (Rust's `f64::max` ignores NaN).
fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins.
fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Prometheus's quantile with linear interpolation between the two nearest ranks;
/// NaN values sort first. Public because LogQL's `quantile_over_time` is
/// Prometheus's too, to the last bit.
pub fn quantile(q: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| {
        b.is_nan()
            .cmp(&a.is_nan())
            .then(a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Evaluates a function call at `t`.
pub(crate) fn eval(ev: &mut Evaluator, c: &Call, t: i64) -> Result<Val> {
    let args: Vec<&Expr> = c.args.args.iter().map(|a| unwrap_parens(a)).collect();
    let name = c.func.name;
    let arg = |i: usize| nth_arg(&args, i, name);
    let out = match name {
        "time" => return Ok(Val::Scalar(t as f64 / 1000.0)),
        "pi" => return Ok(Val::Scalar(std::f64::consts::PI)),
        "scalar" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            return Ok(Val::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }));
        }
        "vector" => vec![Sample {
            labels: Labels::default(),
            t,
            v: ev.eval_scalar(arg(0)?, t)?,
        }],
        "abs" | "ceil" | "floor" | "exp" | "sqrt" | "ln" | "log2" | "log10" | "sgn" | "acos"
        | "acosh" | "asin" | "asinh" | "atan" | "atanh" | "cos" | "cosh" | "sin" | "sinh"
        | "tan" | "tanh" | "deg" | "rad" => {
            let f = math_fn(name);
            map_values(ev.eval_vector(arg(0)?, t)?, f)
        }
        "round" => {
            let to_nearest = match args.get(1) {
                Some(e) => ev.eval_scalar(e, t)?,
                None => 1.0,
            };
            let inv = 1.0 / to_nearest;
            map_values(ev.eval_vector(arg(0)?, t)?, |v| {
                (v * inv + 0.5).floor() / inv
            })
        }
        "clamp" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let min = ev.eval_scalar(arg(1)?, t)?;
            let max = ev.eval_scalar(arg(2)?, t)?;
            if max < min {
                Vec::new()
            } else {
                map_values(v, |x| go_max(min, go_min(max, x)))
            }
        }
        "clamp_min" | "clamp_max" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let bound = ev.eval_scalar(arg(1)?, t)?;
            if name == "clamp_min" {
                map_values(v, |x| go_max(x, bound))
            } else {
                map_values(v, |x| go_min(x, bound))
            }
        }
        "timestamp" => {
            // On a plain selector the sample's own timestamp is used, not the evaluation time.
            let v = match arg(0)? {
                Expr::VectorSelector(vs) => ev.select_instant(vs, t)?,
                e => ev.eval_vector(e, t)?,
            };
            v.into_iter()
                .map(|s| Sample {
                    labels: s.labels.without_name(),
                    t,
                    v: s.t as f64 / 1000.0,
                })
                .collect()
        }
        "sort" | "sort_desc" => {
            let mut v = ev.eval_vector(arg(0)?, t)?;
            let desc = name == "sort_desc";
            v.sort_by(|a, b| {
                b.v.is_nan().cmp(&a.v.is_nan()).then_with(|| {
                    let o = a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal);
                    if desc { o.reverse() } else { o }
                })
            });
            return Ok(Val::Vector(v));
        }
        "absent" => {
            if ev.eval_vector(arg(0)?, t)?.is_empty() {
                vec![Sample {
                    labels: absent_labels(arg(0)?),
                    t,
                    v: 1.0,
                }]
            } else {
                Vec::new()
            }
        }
        "absent_over_time" => {
            if ev.eval_matrix(arg(0)?, t)?.series.is_empty() {
                vec![Sample {
                    labels: absent_labels(arg(0)?),
                    t,
                    v: 1.0,
                }]
            } else {
                Vec::new()
            }
        }
        "label_replace" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let dst = string_arg(arg(1)?)?;
            let repl = string_arg(arg(2)?)?;
            let src = string_arg(arg(3)?)?;
            let re_str = string_arg(arg(4)?)?;
            let re = Regex::new(&format!("^(?:{re_str})$")).map_err(|_| {
                EvalError::Execution(format!(
                    "invalid regular expression in label_replace(): {re_str}"
                ))
            })?;
            if !is_valid_label_name(dst) {
                return exec_err(format!(
                    "invalid destination label name in label_replace(): {dst}"
                ));
            }
            v.into_iter()
                .map(|mut s| {
                    if let Some(caps) = re.captures(s.labels.get(src).unwrap_or("")) {
                        let mut res = String::new();
                        caps.expand(repl, &mut res);
                        s.labels.set(dst, &res);
                    }
                    s
                })
                .collect()
        }
        "label_join" => {
            let v = ev.eval_vector(arg(0)?, t)?;
            let dst = string_arg(arg(1)?)?;
            let sep = string_arg(arg(2)?)?;
            let srcs = args
                .get(3..)
                .unwrap_or_default()
                .iter()
                .map(|e| string_arg(e))
                .collect::<Result<Vec<_>>>()?;
            if !is_valid_label_name(dst) {
                return exec_err(format!(
                    "invalid destination label name in label_join(): {dst}"
                ));
            }
            if let Some(bad) = srcs.iter().find(|s| !is_valid_label_name(s)) {
                return exec_err(format!("invalid source label name in label_join(): {bad}"));
            }
            v.into_iter()
                .map(|mut s| {
                    let joined = srcs
                        .iter()
                        .map(|l| s.labels.get(l).unwrap_or(""))
                        .collect::<Vec<_>>()
                        .join(sep);
                    s.labels.set(dst, &joined);
                    s
                })
                .collect()
        }
        // Native-histogram functions: this engine stores floats only, and 2.42 ignores
        // float samples in these functions, so the result is always empty.
        "histogram_count" | "histogram_sum" | "histogram_fraction" => {
            ev.eval_vector(nth_arg(&args, args.len().saturating_sub(1), name)?, t)?;
            Vec::new()
        }
        "histogram_quantile" => {
            let q = ev.eval_scalar(arg(0)?, t)?;
            histogram_quantile(q, ev.eval_vector(arg(1)?, t)?, t)
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute"
        | "month" | "year" => {
            let f = date_fn(name);
            match args.first() {
                None => vec![Sample {
                    labels: Labels::default(),
                    t,
                    v: f(t.div_euclid(1000)),
                }],
                Some(e) => map_values(ev.eval_vector(e, t)?, |v| f(v as i64)),
            }
        }
        "count_logs" => logs::eval(ev, c, t)?,
        _ => return range_function(ev, name, &args, t),
    };
    Ok(Val::Vector(unique(out)?))
}

/// Argument `i`; the parser checks arity, this keeps a mismatch from panicking.
fn nth_arg<'e>(args: &[&'e Expr], i: usize, name: &str) -> Result<&'e Expr> {
    args.get(i)
        .copied()
        .ok_or_else(|| EvalError::Execution(format!("missing argument {i} of {name}")))
}

/// Replaces each value with `f(value)` and drops the metric name.
fn map_values(v: Vec<Sample>, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    v.into_iter()
        .map(|s| Sample {
            labels: s.labels.without_name(),
            t: s.t,
            v: f(s.v),
        })
        .collect()
}

fn math_fn(name: &str) -> fn(f64) -> f64 {
    match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => gomath::exp,
        "sqrt" => f64::sqrt,
        "ln" => gomath::ln,
        "log2" => gomath::log2,
        "log10" => gomath::log10,
        "sgn" => |v| {
            if v < 0.0 {
                -1.0
            } else if v > 0.0 {
                1.0
            } else {
                v
            }
        },
        "acos" => gomath::acos,
        "acosh" => gomath::acosh,
        "asin" => gomath::asin,
        "asinh" => gomath::asinh,
        "atan" => f64::atan,
        "atanh" => gomath::atanh,
        "cos" => gomath::cos,
        "cosh" => gomath::cosh,
        "sin" => gomath::sin,
        "sinh" => gomath::sinh,
        "tan" => gomath::tan,
        "tanh" => gomath::tanh,
        "deg" => gomath::deg,
        _ => gomath::rad,
    }
}

/// A date function of Unix seconds (UTC); NaN when the time is out of range.
fn date_fn(name: &str) -> fn(i64) -> f64 {
    fn with(secs: i64, f: impl Fn(DateTime<Utc>) -> u32) -> f64 {
        DateTime::from_timestamp(secs, 0).map_or(f64::NAN, |d| f(d) as f64)
    }
    match name {
        "days_in_month" => |s| {
            with(s, |d| {
                let (y, m) = if d.month() == 12 {
                    (d.year() + 1, 1)
                } else {
                    (d.year(), d.month() + 1)
                };
                NaiveDate::from_ymd_opt(y, m, 1)
                    .and_then(|n| n.pred_opt())
                    .map_or(0, |n| n.day())
            })
        },
        "day_of_month" => |s| with(s, |d| d.day()),
        "day_of_week" => |s| with(s, |d| d.weekday().num_days_from_sunday()),
        "day_of_year" => |s| with(s, |d| d.ordinal()),
        "hour" => |s| with(s, |d| d.hour()),
        "minute" => |s| with(s, |d| d.minute()),
        "month" => |s| with(s, |d| d.month()),
        _ => |s| DateTime::from_timestamp(s, 0).map_or(f64::NAN, |d| d.year() as f64),
    }
}

/// The value of a string-literal argument.
fn string_arg(e: &Expr) -> Result<&str> {
    match unwrap_parens(e) {
        Expr::StringLiteral(s) => Ok(&s.val),
        _ => exec_err("expected a string literal argument"),
    }
}

/// Labels `absent` reports: the equality matchers of a selector argument, minus any
/// label that also has another matcher.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::default(),
    };
    let mut labels = Labels::default();
    let mut remove = Vec::new();
    for m in vs
        .matchers
        .matchers
        .iter()
        .filter(|m| m.name != METRIC_NAME)
    {
        if matches!(m.op, MatchOp::Equal) && labels.get(&m.name).is_none() {
            labels.set(&m.name, &m.value);
        } else {
            remove.push(m.name.as_str());
        }
    }
    for n in remove {
        labels.set(n, "");
    }
    labels
}

/// Classic-bucket `histogram_quantile` with Prometheus 2.42's coalescing and
/// monotonicity fix-up.
fn histogram_quantile(q: f64, v: Vec<Sample>, t: i64) -> Vec<Sample> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    for s in v {
        let Some(upper) = s.labels.get("le").and_then(|le| le.parse::<f64>().ok()) else {
            continue;
        };
        // Grouped by every label but `le`, the name included, as 2.42 does:
        // two names with the same other labels make a duplicate output.
        let sig = s.labels.signature(|n| n != "le");
        let i = *index.entry(sig).or_insert_with(|| {
            groups.push((
                s.labels.retain(|n| n != "le" && n != METRIC_NAME),
                Vec::new(),
            ));
            groups.len() - 1
        });
        groups[i].1.push((upper, s.v));
    }
    groups
        .into_iter()
        .map(|(labels, buckets)| Sample {
            labels,
            t,
            v: bucket_quantile(q, buckets),
        })
        .collect()
}

fn bucket_quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    match buckets.last() {
        Some((ub, _)) if *ub == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    // Coalesce buckets with the same upper bound.
    let mut merged: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (ub, c) in buckets {
        match merged.last_mut() {
            Some(last) if last.0 == ub => last.1 += c,
            _ => merged.push((ub, c)),
        }
    }
    // Force monotonic counts.
    let mut max = f64::NEG_INFINITY;
    for b in &mut merged {
        if b.1 > max {
            max = b.1;
        } else if b.1 < max {
            b.1 = max;
        }
    }
    let n = merged.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = merged[n - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    let b = merged[..n - 1].partition_point(|x| x.1 < rank);
    if b == n - 1 {
        return merged[n - 2].0;
    }
    if b == 0 && merged[0].0 <= 0.0 {
        return merged[0].0;
    }
    let (mut start, end, mut count) = (0.0, merged[b].0, merged[b].1);
    if b > 0 {
        start = merged[b - 1].0;
        count -= merged[b - 1].1;
        rank -= merged[b - 1].1;
    }
    start + (end - start) * (rank / count)
}

/// Functions over a range vector: one output per input series that yields a value.
fn range_function(ev: &mut Evaluator, name: &str, args: &[&Expr], t: i64) -> Result<Val> {
    let first = |i: usize| nth_arg(args, i, name);
    // Scalar arguments come first for quantile_over_time, after the range for the others.
    let (matrix_idx, scalars): (usize, Vec<f64>) = match name {
        "quantile_over_time" => (1, vec![ev.eval_scalar(first(0)?, t)?]),
        "predict_linear" => (0, vec![ev.eval_scalar(first(1)?, t)?]),
        "holt_winters" => (
            0,
            vec![ev.eval_scalar(first(1)?, t)?, ev.eval_scalar(first(2)?, t)?],
        ),
        _ => (0, Vec::new()),
    };
    let m = ev.eval_matrix(first(matrix_idx)?, t)?;
    if name == "holt_winters" {
        let (sf, tf) = (scalars[0], scalars[1]);
        if sf <= 0.0 || sf >= 1.0 {
            return exec_err(format!(
                "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"
            ));
        }
        if tf <= 0.0 || tf >= 1.0 {
            return exec_err(format!(
                "invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"
            ));
        }
    }
    let keep_name = name == "last_over_time";
    let mut out = Vec::with_capacity(m.series.len());
    for s in &m.series {
        let p = s.samples();
        let v = match name {
            "rate" => extrapolated_rate(&m, p, true, true),
            "increase" => extrapolated_rate(&m, p, true, false),
            "delta" => extrapolated_rate(&m, p, false, false),
            "irate" => instant_value(p, true),
            "idelta" => instant_value(p, false),
            "deriv" => (p.len() >= 2).then(|| linear_regression(p, p[0].0).0),
            "predict_linear" => (p.len() >= 2).then(|| {
                let (slope, intercept) = linear_regression(p, t);
                slope * scalars[0] + intercept
            }),
            "holt_winters" => holt_winters(p, scalars[0], scalars[1]),
            "avg_over_time" => Some(mean_over_time(p)),
            "count_over_time" => Some(p.len() as f64),
            "sum_over_time" => Some(sum_over_time(p)),
            "min_over_time" => Some(
                p.iter()
                    .fold(p[0].1, |m, x| if x.1 < m || m.is_nan() { x.1 } else { m }),
            ),
            "max_over_time" => Some(
                p.iter()
                    .fold(p[0].1, |m, x| if x.1 > m || m.is_nan() { x.1 } else { m }),
            ),
            "quantile_over_time" => Some(quantile(scalars[0], values(p))),
            "stddev_over_time" => Some(variance(p).sqrt()),
            "stdvar_over_time" => Some(variance(p)),
            "last_over_time" => p.last().map(|x| x.1),
            "present_over_time" => Some(1.0),
            "changes" => Some(
                p.windows(2)
                    .filter(|w| w[0].1 != w[1].1 && !(w[0].1.is_nan() && w[1].1.is_nan()))
                    .count() as f64,
            ),
            "resets" => Some(p.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64),
            _ => return exec_err(format!("unknown function {name}")),
        };
        if let Some(v) = v {
            let labels = if keep_name {
                s.labels.clone()
            } else {
                s.labels.without_name()
            };
            out.push(Sample { labels, t, v });
        }
    }
    Ok(Val::Vector(unique(out)?))
}

fn values(p: &[(i64, f64)]) -> Vec<f64> {
    p.iter().map(|x| x.1).collect()
}

/// One step of Neumaier's compensated sum, Prometheus 2.42's `kahanSumInc`:
/// the new sum and the new compensation term, which the caller adds at the end.
fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    // The larger magnitude loses the low bits, so it goes first.
    let lost = if sum.abs() >= inc.abs() {
        (sum - t) + inc
    } else {
        (inc - t) + sum
    };
    (t, c + lost)
}

/// `sum_over_time`: a compensated sum, the compensation dropped once the sum is infinite.
fn sum_over_time(p: &[(i64, f64)]) -> f64 {
    let (sum, c) = p
        .iter()
        .fold((0.0, 0.0), |(sum, c), &(_, v)| kahan_inc(v, sum, c));
    if sum.is_infinite() { sum } else { sum + c }
}

/// `avg_over_time`: 2.42's running mean (no overflow on large values), each
/// step added with compensation, and an infinite mean kept as it is.
fn mean_over_time(p: &[(i64, f64)]) -> f64 {
    let (mut mean, mut c, mut count) = (0f64, 0.0, 0.0);
    for &(_, v) in p {
        count += 1.0;
        if mean.is_infinite() && ((v.is_infinite() && (mean > 0.0) == (v > 0.0)) || v.is_finite()) {
            continue;
        }
        (mean, c) = kahan_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

/// Population variance as `stdvar_over_time`: Welford's algorithm with both
/// running sums compensated, as in 2.42.
fn variance(p: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in p {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// `rate`, `increase` and `delta`: Prometheus 2.42's `extrapolatedRate`.
fn extrapolated_rate(
    m: &RangeVal,
    p: &[(i64, f64)],
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (first, last) = (p[0], p[p.len() - 1]);
    let mut result = last.1 - first.1;
    if is_counter {
        let mut prev = 0.0;
        for &(_, v) in p {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    // Float arithmetic: timestamps may be anything, and i64 subtraction could overflow.
    let secs = |a: i64, b: i64| (a as f64 - b as f64) / 1000.0;
    let mut to_start = secs(first.0, m.start);
    let to_end = secs(m.end, last.0);
    let sampled = secs(last.0, first.0);
    let avg_between = sampled / (p.len() - 1) as f64;
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_between * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_between / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_between / 2.0
    };
    // One factor, divided by the range before it scales, as Prometheus
    // computes it: the other order differs in the last bit.
    let mut factor = interval / sampled;
    if is_rate {
        // Go's `Duration.Seconds`: whole seconds plus the rest in nanoseconds / 1e9.
        let range = m.end - m.start;
        factor /= (range / 1000) as f64 + ((range % 1000) * 1_000_000) as f64 / 1e9;
    }
    Some(result * factor)
}

/// `irate` and `idelta`: from the last two samples.
fn instant_value(p: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (prev, last) = (p[p.len() - 2], p[p.len() - 1]);
    let mut v = if is_rate && last.1 < prev.1 {
        last.1
    } else {
        last.1 - prev.1
    };
    if last.0 == prev.0 {
        return None;
    }
    if is_rate {
        v /= (last.0 as f64 - prev.0 as f64) / 1000.0;
    }
    Some(v)
}

/// Least-squares slope and intercept at `intercept_time` (ms), x in seconds;
/// the four running sums are compensated, as in 2.42.
fn linear_regression(p: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let init_y = p[0].1;
    if p.iter().all(|x| x.1 == init_y) {
        return if init_y.is_infinite() {
            (f64::NAN, f64::NAN)
        } else {
            (0.0, init_y)
        };
    }
    let mut n = 0.0;
    // (sum, compensation) of x, y, x*y and x*x.
    let mut sums = [(0.0, 0.0); 4];
    for &(ts, v) in p {
        n += 1.0;
        let x = (ts as f64 - intercept_time as f64) / 1e3;
        for (sum, inc) in sums.iter_mut().zip([x, v, x * v, x * x]) {
            *sum = kahan_inc(inc, sum.0, sum.1);
        }
    }
    let [sum_x, sum_y, sum_xy, sum_x2] = sums.map(|(sum, c)| sum + c);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    (slope, sum_y / n - slope * sum_x / n)
}

/// Double exponential smoothing (`holt_winters`).
fn holt_winters(p: &[(i64, f64)], sf: f64, tf: f64) -> Option<f64> {
    if p.len() < 2 {
        return None;
    }
    let (mut s0, mut s1, mut b) = (0.0, p[0].1, p[1].1 - p[0].1);
    for (i, &(_, v)) in p.iter().enumerate().skip(1) {
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let x = sf * v;
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Some(s1)
}
