//! Aggregation operators (`sum`, `avg`, `topk`, `count_values`, ...) with `by`/`without`
//! grouping, using the same arithmetic as Prometheus 2.42 so results match to the bit
//! where the order of inputs is the same.

use std::collections::HashMap;

use promql_parser::parser::token::{
    T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_GROUP, T_MAX, T_MIN, T_QUANTILE, T_STDDEV,
    T_STDVAR, T_SUM, T_TOPK, TokenId,
};
use promql_parser::parser::{AggregateExpr, LabelModifier};
use rustc_hash::FxHashMap;

use crate::error::{EvalError, Result, exec_err};
use crate::eval::{Evaluator, Val};
use crate::functions::{is_valid_label_name, quantile};
use crate::value::{Labels, METRIC_NAME, Sample, format_value};

/// Rejects aggregations that postdate Prometheus 2.42 (`limitk`, `limit_ratio`).
pub(crate) fn check_supported(a: &AggregateExpr) -> Result<()> {
    match a.op.id() {
        T_SUM | T_AVG | T_MIN | T_MAX | T_COUNT | T_STDDEV | T_STDVAR | T_TOPK | T_BOTTOMK
        | T_QUANTILE | T_COUNT_VALUES | T_GROUP => Ok(()),
        _ => Err(EvalError::Parse(format!(
            "aggregation {} is not supported",
            a.op
        ))),
    }
}

/// The parameter of the aggregation, evaluated at the current step.
enum Param {
    None,
    /// k of topk/bottomk.
    K(usize),
    Quantile(f64),
    /// Output label of count_values.
    Label(String),
}

/// Evaluates an aggregation at `t`.
pub(crate) fn eval(ev: &mut Evaluator, a: &AggregateExpr, t: i64) -> Result<Val> {
    let op = a.op.id();
    let param = match (op, &a.param) {
        (T_TOPK | T_BOTTOMK, Some(p)) => {
            let f = ev.eval_scalar(p, t)?;
            if !(f >= i64::MIN as f64 && f <= i64::MAX as f64) {
                return exec_err(format!("Scalar value {} overflows int64", format_value(f)));
            }
            // Truncation towards zero, as Go's int64(f).
            Param::K(if f < 1.0 { 0 } else { f as usize })
        }
        (T_QUANTILE, Some(p)) => Param::Quantile(ev.eval_scalar(p, t)?),
        (T_COUNT_VALUES, Some(p)) => match ev.eval(p, t)? {
            Val::String(s) if is_valid_label_name(&s) => Param::Label(s),
            Val::String(s) => return exec_err(format!("invalid label name {s:?}")),
            _ => return exec_err("count_values expects a string parameter"),
        },
        (T_TOPK | T_BOTTOMK | T_QUANTILE | T_COUNT_VALUES, None) => {
            return exec_err(format!("missing parameter for {}", a.op));
        }
        _ => Param::None,
    };
    let input = ev.eval_vector(&a.expr, t)?;
    if matches!(param, Param::K(0)) {
        return Ok(Val::Vector(Vec::new()));
    }
    let (without, mut grouping): (bool, Vec<String>) = match &a.modifier {
        None => (false, Vec::new()),
        Some(LabelModifier::Include(l)) => (false, l.labels.clone()),
        Some(LabelModifier::Exclude(l)) => (true, l.labels.clone()),
    };
    if let (Param::Label(l), false) = (&param, without) {
        grouping.push(l.clone());
    }
    let in_grouping = |n: &str| grouping.iter().any(|g| g == n);
    let keep = |n: &str| {
        if without {
            n != METRIC_NAME && !in_grouping(n)
        } else {
            in_grouping(n)
        }
    };

    // Groups in order of first appearance, each with its members in input
    // order; found by the hash of the grouping labels, and by their exact
    // signature only when two groups' hashes collide.
    let mut by_hash: FxHashMap<u64, usize> = FxHashMap::default();
    let mut collided: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
    for mut s in input {
        if let Param::Label(l) = &param {
            s.labels.set(l, &format_value(s.v));
        }
        let hash = s.labels.hash_selected(keep);
        let existing = by_hash.get(&hash).copied();
        let i = match existing {
            Some(i) if s.labels.selected_eq(keep, &groups[i].0) => i,
            Some(_) => {
                let next = groups.len();
                let i = *collided.entry(s.labels.signature(keep)).or_insert(next);
                if i == next {
                    groups.push((s.labels.retain(keep), Vec::new()));
                }
                i
            }
            None => {
                by_hash.insert(hash, groups.len());
                groups.push((s.labels.retain(keep), Vec::new()));
                groups.len() - 1
            }
        };
        groups[i].1.push(s);
    }

    let mut out = Vec::with_capacity(groups.len());
    for (labels, members) in groups {
        match (op, &param) {
            (T_TOPK | T_BOTTOMK, Param::K(k)) => out.extend(select_k(members, *k, op == T_TOPK)),
            (_, Param::Quantile(q)) => {
                let values: Vec<f64> = members.iter().map(|s| s.v).collect();
                out.push(Sample {
                    labels,
                    t,
                    v: quantile(*q, values),
                });
            }
            _ => {
                let values: Vec<f64> = members.iter().map(|s| s.v).collect();
                out.push(Sample {
                    labels,
                    t,
                    v: fold(op, &values)?,
                });
            }
        }
    }
    Ok(Val::Vector(out))
}

/// The k largest (topk) or smallest (bottomk) members, NaN ranking last and earlier
/// members winning ties, sorted best first.
fn select_k(mut members: Vec<Sample>, k: usize, top: bool) -> Vec<Sample> {
    members.sort_by(|a, b| {
        a.v.is_nan().cmp(&b.v.is_nan()).then_with(|| {
            let ord = a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal);
            if top { ord.reverse() } else { ord }
        })
    });
    members.truncate(k);
    members
}

/// Reduces one group's values (non-empty, in input order) for the simple aggregations.
fn fold(op: TokenId, values: &[f64]) -> Result<f64> {
    let first = values[0];
    Ok(match op {
        T_SUM => values.iter().sum(),
        T_COUNT | T_COUNT_VALUES => values.len() as f64,
        T_GROUP => 1.0,
        T_MIN => values
            .iter()
            .fold(first, |m, &v| if m > v || m.is_nan() { v } else { m }),
        T_MAX => values
            .iter()
            .fold(first, |m, &v| if m < v || m.is_nan() { v } else { m }),
        T_AVG => incremental_mean(values),
        T_STDVAR | T_STDDEV => {
            let (mut mean, mut m2) = (first, 0.0);
            for (i, &v) in values.iter().enumerate().skip(1) {
                let delta = v - mean;
                mean += delta / (i + 1) as f64;
                m2 += delta * (v - mean);
            }
            let var = m2 / values.len() as f64;
            if op == T_STDDEV { var.sqrt() } else { var }
        }
        _ => return exec_err(format!("unsupported aggregation {op}")),
    })
}

/// Prometheus 2.42's running mean of `avg` (no compensation, unlike `avg_over_time`), which avoids overflow
/// and keeps an infinite mean stable.
fn incremental_mean(values: &[f64]) -> f64 {
    let mut mean = 0.0;
    for (i, &v) in values.iter().enumerate() {
        let count = (i + 1) as f64;
        if i == 0 {
            mean = v;
            continue;
        }
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}
