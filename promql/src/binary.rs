//! Binary operators: arithmetic, comparisons (filtering and `bool`), set operators and
//! vector matching (`on`/`ignoring`, `group_left`/`group_right`), as in Prometheus 2.42.

use std::collections::HashSet;

use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MOD,
    T_MUL, T_NEQ, T_POW, T_SUB, TokenId,
};
use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};
use rustc_hash::FxHashMap;

use crate::error::{EvalError, Result, exec_err};
use crate::eval::{Evaluator, Val};
use crate::gomath;
use crate::value::{Labels, METRIC_NAME, Sample};

/// Rejects modifiers that postdate Prometheus 2.42 (fill values).
pub(crate) fn check_supported(b: &BinaryExpr) -> Result<()> {
    match &b.modifier {
        Some(m) if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() => {
            Err(EvalError::Parse("fill modifiers are not supported".into()))
        }
        _ => Ok(()),
    }
}

/// How two vectors are matched, flattened from the parser's optional modifier.
struct Matching<'a> {
    card: &'a VectorMatchCardinality,
    /// `on(...)` rather than `ignoring(...)`.
    on: bool,
    labels: &'a [String],
    return_bool: bool,
}

impl Matching<'_> {
    /// Whether label `name` takes part in matching.
    fn matches_on(&self, name: &str) -> bool {
        if self.on {
            self.labels.iter().any(|m| m == name)
        } else {
            name != METRIC_NAME && !self.labels.iter().any(|m| m == name)
        }
    }

    /// Hash of the labels `l` is matched on: groups are found by it, and
    /// told apart by [`Matching::same_group`] when hashes collide.
    fn group_hash(&self, l: &Labels) -> u64 {
        l.hash_selected(|n| self.matches_on(n))
    }

    fn same_group(&self, a: &Labels, b: &Labels) -> bool {
        a.same_selection(b, |n| self.matches_on(n))
    }
}

/// Samples grouped by the labels they are matched on.
struct Groups<'s> {
    by_hash: FxHashMap<u64, Vec<(usize, &'s Sample)>>,
}

impl<'s> Groups<'s> {
    fn new() -> Groups<'s> {
        Groups {
            by_hash: FxHashMap::default(),
        }
    }

    /// The sample (and its index) already in `s`'s group, if any.
    fn find(&self, m: &Matching, s: &Sample) -> Option<(usize, &'s Sample)> {
        self.by_hash
            .get(&m.group_hash(&s.labels))?
            .iter()
            .find(|(_, other)| m.same_group(&s.labels, &other.labels))
            .copied()
    }

    /// Adds `s` as its group's sample unless the group has one; returns the
    /// one it has.
    fn insert(&mut self, m: &Matching, i: usize, s: &'s Sample) -> Option<&'s Sample> {
        let bucket = self.by_hash.entry(m.group_hash(&s.labels)).or_default();
        if let Some((_, existing)) = bucket
            .iter()
            .find(|(_, other)| m.same_group(&s.labels, &other.labels))
        {
            return Some(existing);
        }
        bucket.push((i, s));
        None
    }

    fn of(m: &Matching, samples: &'s [Sample]) -> Groups<'s> {
        let mut groups = Groups::new();
        for (i, s) in samples.iter().enumerate() {
            groups.insert(m, i, s);
        }
        groups
    }
}

/// Evaluates a binary expression at `t`.
pub(crate) fn eval(ev: &mut Evaluator, b: &BinaryExpr, t: i64) -> Result<Val> {
    const ONE_TO_ONE: VectorMatchCardinality = VectorMatchCardinality::OneToOne;
    let op = b.op.id();
    let (card, matching) = match &b.modifier {
        Some(m) => (&m.card, m.matching.as_ref()),
        None => (&ONE_TO_ONE, None),
    };
    let m = Matching {
        card,
        on: matches!(matching, Some(LabelModifier::Include(_))),
        labels: matching
            .map(|l| l.labels().labels.as_slice())
            .unwrap_or_default(),
        return_bool: b.return_bool(),
    };
    let lhs = ev.eval(&b.lhs, t)?;
    let rhs = ev.eval(&b.rhs, t)?;
    Ok(match (lhs, rhs) {
        (Val::Scalar(l), Val::Scalar(r)) => {
            let (v, keep) = elem_binop(op, l, r)?;
            Val::Scalar(if is_comparison(op) {
                bool_to_f64(keep)
            } else {
                v
            })
        }
        (Val::Vector(l), Val::Scalar(r)) => {
            Val::Vector(vector_scalar(op, l, r, false, m.return_bool)?)
        }
        (Val::Scalar(l), Val::Vector(r)) => {
            Val::Vector(vector_scalar(op, r, l, true, m.return_bool)?)
        }
        (Val::Vector(l), Val::Vector(r)) => Val::Vector(match op {
            T_LAND => and(l, r, &m),
            T_LOR => or(l, r, &m),
            T_LUNLESS => unless(l, r, &m),
            _ => vector_vector(op, l, r, &m)?,
        }),
        (l, r) => {
            return exec_err(format!(
                "binary expression must contain only scalar and instant vector types, got {} and {}",
                l.type_name(),
                r.type_name()
            ));
        }
    })
}

fn is_comparison(op: TokenId) -> bool {
    matches!(op, T_EQLC | T_NEQ | T_GTR | T_LSS | T_GTE | T_LTE)
}

/// Operators whose result loses the metric name. `atan2` is not among them in 2.42.
fn drops_name(op: TokenId) -> bool {
    matches!(op, T_ADD | T_SUB | T_MUL | T_DIV | T_POW | T_MOD)
}

fn bool_to_f64(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Applies `op` to two numbers: the value and, for comparisons, whether it holds.
fn elem_binop(op: TokenId, l: f64, r: f64) -> Result<(f64, bool)> {
    Ok(match op {
        T_ADD => (l + r, true),
        T_SUB => (l - r, true),
        T_MUL => (l * r, true),
        T_DIV => (l / r, true),
        T_POW => (gomath::pow(l, r), true),
        T_MOD => (l % r, true),
        T_ATAN2 => (gomath::atan2(l, r), true),
        T_EQLC => (l, l == r),
        T_NEQ => (l, l != r),
        T_GTR => (l, l > r),
        T_LSS => (l, l < r),
        T_GTE => (l, l >= r),
        T_LTE => (l, l <= r),
        _ => return exec_err(format!("operator {op} not allowed here")),
    })
}

/// Vector-scalar operation; `swapped` when the scalar was on the left.
fn vector_scalar(
    op: TokenId,
    vec: Vec<Sample>,
    s: f64,
    swapped: bool,
    return_bool: bool,
) -> Result<Vec<Sample>> {
    let mut out = Vec::with_capacity(vec.len());
    for mut el in vec {
        let (l, r) = if swapped { (s, el.v) } else { (el.v, s) };
        let (mut v, mut keep) = elem_binop(op, l, r)?;
        // A comparison keeps the vector element's value even when it is on the right.
        if is_comparison(op) && swapped {
            v = r;
        }
        if return_bool {
            v = bool_to_f64(keep);
            keep = true;
        }
        if keep {
            el.v = v;
            if drops_name(op) || return_bool {
                el.labels = el.labels.without_name();
            }
            out.push(el);
        }
    }
    Ok(out)
}

fn vector_vector(
    op: TokenId,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    m: &Matching,
) -> Result<Vec<Sample>> {
    let (include, one_to_many) = match m.card {
        VectorMatchCardinality::OneToOne => (&[][..], false),
        VectorMatchCardinality::ManyToOne(l) => (l.labels.as_slice(), false),
        VectorMatchCardinality::OneToMany(l) => (l.labels.as_slice(), true),
        VectorMatchCardinality::ManyToMany => {
            return exec_err("many-to-many only allowed for set operators");
        }
    };
    // `many` is the side whose labels the result keeps; `one` must be unique per group.
    let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
    let mut one_groups = Groups::new();
    for (i, s) in one.iter().enumerate() {
        if let Some(dup) = one_groups.insert(m, i, s) {
            let side = if one_to_many { "left" } else { "right" };
            let group = s.labels.retain(|n| m.matches_on(n));
            return exec_err(format!(
                "found duplicate series for the match group {group} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                s.labels, dup.labels
            ));
        }
    }
    let one_to_one = matches!(m.card, VectorMatchCardinality::OneToOne);
    // Results per group, the group named by the index of its `one` sample.
    let mut matched: FxHashMap<usize, HashSet<Labels>> = FxHashMap::default();
    let mut out = Vec::new();
    for ms in &many {
        let Some((group, os)) = one_groups.find(m, ms) else {
            continue;
        };
        let (l, r) = if one_to_many {
            (os.v, ms.v)
        } else {
            (ms.v, os.v)
        };
        let (mut v, keep) = elem_binop(op, l, r)?;
        if m.return_bool {
            v = bool_to_f64(keep);
        } else if !keep {
            continue;
        }
        let mut labels = result_labels(&ms.labels, &os.labels, op, m, one_to_one, include);
        if m.return_bool {
            labels = labels.without_name();
        }
        let inserted = matched.entry(group).or_default();
        if one_to_one {
            if !inserted.is_empty() {
                return exec_err(
                    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                );
            }
        } else if inserted.contains(&labels) {
            return exec_err(
                "multiple matches for labels: grouping labels must ensure unique results",
            );
        }
        inserted.insert(labels.clone());
        out.push(Sample { labels, t: ms.t, v });
    }
    Ok(out)
}

/// Labels of a vector-vector result, following Prometheus's `resultMetric`.
fn result_labels(
    many: &Labels,
    one: &Labels,
    op: TokenId,
    m: &Matching,
    one_to_one: bool,
    include: &[String],
) -> Labels {
    let mut l = if drops_name(op) {
        many.without_name()
    } else {
        many.clone()
    };
    if one_to_one {
        l = if m.on {
            l.retain(|n| m.labels.iter().any(|x| x == n))
        } else {
            l.retain(|n| !m.labels.iter().any(|x| x == n))
        };
    }
    for name in include {
        l.set(name, one.get(name).unwrap_or(""));
    }
    l
}

fn and(lhs: Vec<Sample>, rhs: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    let right = Groups::of(m, &rhs);
    lhs.into_iter()
        .filter(|s| right.find(m, s).is_some())
        .collect()
}

fn or(mut lhs: Vec<Sample>, rhs: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    let left = Groups::of(m, &lhs);
    let extra: Vec<Sample> = rhs
        .into_iter()
        .filter(|s| left.find(m, s).is_none())
        .collect();
    lhs.extend(extra);
    lhs
}

fn unless(lhs: Vec<Sample>, rhs: Vec<Sample>, m: &Matching) -> Vec<Sample> {
    let right = Groups::of(m, &rhs);
    lhs.into_iter()
        .filter(|s| right.find(m, s).is_none())
        .collect()
}
