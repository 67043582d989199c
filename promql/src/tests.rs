//! Table tests ported from (and in the style of) Prometheus's `promql/testdata/*.test`,
//! all through one `check` helper, plus a no-panic property test.

use std::time::Duration;

use promql_parser::label::Matcher;
use promql_parser::parser::Expr;
use proptest::prelude::*;

use crate::{
    EvalError, Labels, Limits, LogField, STALE_NAN_BITS, Series, SeriesSource, Value, format_value,
};
use crate::{instant_query, range_query};

/// In-memory series, the test double for storage.
struct TestSource(Vec<Series>);

impl SeriesSource for TestSource {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> crate::Result<Vec<Series>> {
        Ok(self
            .0
            .iter()
            .filter(|s| {
                matchers
                    .iter()
                    .all(|m| m.is_match(s.labels.get(&m.name).unwrap_or("")))
            })
            .map(|s| Series {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= start && *t <= end)
                    .collect(),
            })
            .collect())
    }
}

/// Parses `5m`, `10s`, `1h`, `90` (ms) into milliseconds.
fn ms(d: &str) -> i64 {
    let (num, unit) = d.split_at(d.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(d.len()));
    let n: i64 = num.parse().unwrap();
    n * match unit {
        "" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        other => panic!("unit {other}"),
    }
}

/// Labels written as a selector, e.g. `up{job="a"}`, or `{}` for none.
fn labels(s: &str) -> Labels {
    if s == "{}" {
        return Labels::default();
    }
    let Ok(Expr::VectorSelector(vs)) = promql_parser::parser::parse(s) else {
        panic!("bad labels {s}")
    };
    let mut pairs: Vec<(String, String)> = vs
        .matchers
        .matchers
        .iter()
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    pairs.extend(vs.name.map(|n| ("__name__".to_owned(), n)));
    Labels::from(pairs)
}

/// Prometheus's `load <interval>` block: `selector v1 v2 a+bxN _ stale ...`.
fn load(interval: &str, text: &str) -> TestSource {
    let step = ms(interval);
    let mut series = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (sel, vals) = line.split_at(
            line.find('}')
                .map(|i| i + 1)
                .unwrap_or_else(|| line.find(' ').unwrap()),
        );
        let mut samples = Vec::new();
        let mut t = 0;
        for tok in vals.split_whitespace() {
            let mut push = |v: Option<f64>| {
                if let Some(v) = v {
                    samples.push((t, v));
                }
                t += step;
            };
            match tok {
                "_" => push(None),
                "stale" => push(Some(f64::from_bits(STALE_NAN_BITS))),
                _ if tok.contains('x') => {
                    let (head, n) = tok.rsplit_once('x').unwrap();
                    let split = head[1..].find(['+', '-']).unwrap() + 1;
                    let start: f64 = head[..split].parse().unwrap();
                    let incr: f64 = head[split..].parse().unwrap();
                    for i in 0..=n.parse::<i64>().unwrap() {
                        push(Some(start + incr * i as f64));
                    }
                }
                _ => push(Some(tok.parse().unwrap())),
            }
        }
        series.push(Series {
            labels: labels(sel.trim()),
            samples,
        });
    }
    TestSource(series)
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || ((a - b).abs() <= 1e-9 * a.abs().max(b.abs()))
}

/// Evaluates `query` at `time` and compares with `expected` (label selector, value),
/// as a set keyed by labels. A single `("scalar", v)` expects a scalar.
fn check(src: &dyn SeriesSource, query: &str, time: &str, expected: &[(&str, f64)]) {
    let got = instant_query(src, query, ms(time), &Limits::default())
        .unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut got: Vec<(Labels, f64)> = match got {
        Value::Scalar { v, .. } => vec![(labels("scalar"), v)],
        Value::Vector(v) => v.into_iter().map(|s| (s.labels, s.v)).collect(),
        other => panic!("{query}: unexpected {other:?}"),
    };
    let mut want: Vec<(Labels, f64)> = expected.iter().map(|(l, v)| (labels(l), *v)).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let fmt = |v: &[(Labels, f64)]| {
        v.iter()
            .map(|(l, x)| format!("{l} {}", format_value(*x)))
            .collect::<Vec<_>>()
    };
    assert!(
        got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(g, w)| g.0 == w.0 && same(g.1, w.1)),
        "{query} at {time}:\n got  {:?}\n want {:?}",
        fmt(&got),
        fmt(&want)
    );
}

/// Expects the query to fail with the given Prometheus `errorType`.
fn check_err(src: &dyn SeriesSource, query: &str, time: &str, error_type: &str) {
    match instant_query(src, query, ms(time), &Limits::default()) {
        Err(e) => assert_eq!(e.error_type(), error_type, "{query}: {e}"),
        Ok(v) => panic!("{query}: expected {error_type} error, got {v:?}"),
    }
}

fn http_requests() -> TestSource {
    load(
        "5m",
        r#"
        http_requests{job="api-server", instance="0", group="production"} 0+10x10
        http_requests{job="api-server", instance="1", group="production"} 0+20x10
        http_requests{job="api-server", instance="0", group="canary"} 0+30x10
        http_requests{job="api-server", instance="1", group="canary"} 0+40x10
        http_requests{job="app-server", instance="0", group="production"} 0+50x10
        http_requests{job="app-server", instance="1", group="production"} 0+60x10
        http_requests{job="app-server", instance="0", group="canary"} 0+70x10
        http_requests{job="app-server", instance="1", group="canary"} 0+80x10
        http_requests{job="api-server", instance="2", group="production"} NaN NaN NaN NaN NaN NaN NaN NaN NaN NaN NaN
        foo 3+0x10
        "#,
    )
}

#[test]
fn arithmetic_and_precedence() {
    let s = http_requests();
    check(
        &s,
        "SUM(http_requests{instance=~\"0|1\"}) BY (job) - COUNT(http_requests{instance=~\"0|1\"}) BY (job)",
        "50m",
        &[
            (r#"{job="api-server"}"#, 996.0),
            (r#"{job="app-server"}"#, 2596.0),
        ],
    );
    check(
        &s,
        "2 - SUM(http_requests{instance=~\"0|1\"}) BY (job)",
        "50m",
        &[
            (r#"{job="api-server"}"#, -998.0),
            (r#"{job="app-server"}"#, -2598.0),
        ],
    );
    check(
        &s,
        "1000 / SUM(http_requests{instance=~\"0|1\"}) BY (job)",
        "50m",
        &[
            (r#"{job="api-server"}"#, 1.0),
            (r#"{job="app-server"}"#, 0.38461538461538464),
        ],
    );
    check(
        &s,
        "SUM(http_requests{instance=~\"0|1\"}) BY (job) % 3",
        "50m",
        &[
            (r#"{job="api-server"}"#, 1.0),
            (r#"{job="app-server"}"#, 2.0),
        ],
    );
    check(
        &s,
        "SUM(http_requests{instance=~\"0|1\"}) BY (job) ^ 2",
        "50m",
        &[
            (r#"{job="api-server"}"#, 1e6),
            (r#"{job="app-server"}"#, 6_760_000.0),
        ],
    );
    check(
        &s,
        "- - - SUM(http_requests{instance=~\"0|1\"}) BY (job)",
        "50m",
        &[
            (r#"{job="api-server"}"#, -1000.0),
            (r#"{job="app-server"}"#, -2600.0),
        ],
    );
    check(
        &s,
        r#"-http_requests{job="api-server",instance="0",group="production"}"#,
        "50m",
        &[(
            r#"{job="api-server",instance="0",group="production"}"#,
            -100.0,
        )],
    );
    check(
        &s,
        r#"+http_requests{job="api-server",instance="0",group="production"}"#,
        "50m",
        &[(
            r#"http_requests{job="api-server",instance="0",group="production"}"#,
            100.0,
        )],
    );
    check(
        &s,
        r#"http_requests{group="canary", instance="0", job="api-server"} / 0"#,
        "50m",
        &[(
            r#"{group="canary", instance="0", job="api-server"}"#,
            f64::INFINITY,
        )],
    );
    check(&s, "2 * 3 ^ 2", "0m", &[("scalar", 18.0)]);
    check(&s, "-2 ^ 2", "0m", &[("scalar", -4.0)]);
    check(&s, "2 ^ 3 ^ 2", "0m", &[("scalar", 512.0)]);
    check(
        &s,
        "1 atan2 1",
        "0m",
        &[("scalar", std::f64::consts::FRAC_PI_4)],
    );
    check(&s, "-7 % 3", "0m", &[("scalar", -1.0)]);
    check(
        &s,
        "foo atan2 foo",
        "0m",
        &[("foo", std::f64::consts::FRAC_PI_4)],
    );
}

#[test]
fn comparisons() {
    let s = http_requests();
    check(
        &s,
        r#"http_requests{job="api-server"} > 250"#,
        "50m",
        &[
            (
                r#"http_requests{job="api-server", instance="0", group="canary"}"#,
                300.0,
            ),
            (
                r#"http_requests{job="api-server", instance="1", group="canary"}"#,
                400.0,
            ),
        ],
    );
    check(
        &s,
        r#"250 < http_requests{job="api-server"}"#,
        "50m",
        &[
            (
                r#"http_requests{job="api-server", instance="0", group="canary"}"#,
                300.0,
            ),
            (
                r#"http_requests{job="api-server", instance="1", group="canary"}"#,
                400.0,
            ),
        ],
    );
    check(
        &s,
        r#"http_requests{job="api-server"} > bool 250"#,
        "50m",
        &[
            (
                r#"{job="api-server", instance="0", group="production"}"#,
                0.0,
            ),
            (
                r#"{job="api-server", instance="1", group="production"}"#,
                0.0,
            ),
            (
                r#"{job="api-server", instance="2", group="production"}"#,
                0.0,
            ),
            (r#"{job="api-server", instance="0", group="canary"}"#, 1.0),
            (r#"{job="api-server", instance="1", group="canary"}"#, 1.0),
        ],
    );
    check(&s, "1 > bool 2", "0m", &[("scalar", 0.0)]);
    check(&s, "2 >= bool 2", "0m", &[("scalar", 1.0)]);
    // One-to-one matching removes the `ignoring` labels from the result, even when filtering.
    check(
        &s,
        r#"http_requests{group="canary"} == ignoring(group) http_requests{group="production"} * 3"#,
        "50m",
        &[(r#"http_requests{job="api-server", instance="0"}"#, 300.0)],
    );
    check(
        &s,
        r#"http_requests{group="canary"} != bool on(job, instance) http_requests{group="production"}"#,
        "50m",
        &[
            (r#"{job="api-server", instance="0"}"#, 1.0),
            (r#"{job="api-server", instance="1"}"#, 1.0),
            (r#"{job="app-server", instance="0"}"#, 1.0),
            (r#"{job="app-server", instance="1"}"#, 1.0),
        ],
    );
}

#[test]
fn set_operators() {
    let s = http_requests();
    check(
        &s,
        r#"http_requests{group="canary"} and http_requests{instance="0"}"#,
        "50m",
        &[
            (
                r#"http_requests{job="api-server", instance="0", group="canary"}"#,
                300.0,
            ),
            (
                r#"http_requests{job="app-server", instance="0", group="canary"}"#,
                700.0,
            ),
        ],
    );
    check(
        &s,
        r#"(http_requests{group="canary"} + 1) and http_requests{instance="0"}"#,
        "50m",
        &[
            (r#"{job="api-server", instance="0", group="canary"}"#, 301.0),
            (r#"{job="app-server", instance="0", group="canary"}"#, 701.0),
        ],
    );
    check(
        &s,
        r#"(http_requests{group="canary"} + 1) and on(instance, job) http_requests{instance="0", group="production"}"#,
        "50m",
        &[
            (r#"{job="api-server", instance="0", group="canary"}"#, 301.0),
            (r#"{job="app-server", instance="0", group="canary"}"#, 701.0),
        ],
    );
    check(
        &s,
        r#"http_requests{group="canary"} unless http_requests{instance="0"}"#,
        "50m",
        &[
            (
                r#"http_requests{job="api-server", instance="1", group="canary"}"#,
                400.0,
            ),
            (
                r#"http_requests{job="app-server", instance="1", group="canary"}"#,
                800.0,
            ),
        ],
    );
    check(
        &s,
        r#"http_requests{group="canary"} unless ignoring(group, instance) http_requests{instance="0", job="app-server"}"#,
        "50m",
        &[
            (
                r#"http_requests{job="api-server", instance="0", group="canary"}"#,
                300.0,
            ),
            (
                r#"http_requests{job="api-server", instance="1", group="canary"}"#,
                400.0,
            ),
        ],
    );
    check(
        &s,
        r#"http_requests{group="canary", job="app-server"} or http_requests{instance="1", job="app-server"}"#,
        "50m",
        &[
            (
                r#"http_requests{job="app-server", instance="0", group="canary"}"#,
                700.0,
            ),
            (
                r#"http_requests{job="app-server", instance="1", group="canary"}"#,
                800.0,
            ),
            (
                r#"http_requests{job="app-server", instance="1", group="production"}"#,
                600.0,
            ),
        ],
    );
    check(
        &s,
        r#"(http_requests{group="canary", job="app-server"} + 1) or on(instance) (http_requests{job="app-server"} * 2)"#,
        "50m",
        &[
            (r#"{job="app-server", instance="0", group="canary"}"#, 701.0),
            (r#"{job="app-server", instance="1", group="canary"}"#, 801.0),
        ],
    );
}

#[test]
fn vector_matching() {
    let s = load(
        "5m",
        r#"
        node_role{instance="abc",job="node",role="prometheus"} 1
        node_cpu{instance="abc",job="node",mode="idle"} 3
        node_cpu{instance="abc",job="node",mode="user"} 1
        node_cpu{instance="def",job="node",mode="idle"} 8
        node_cpu{instance="def",job="node",mode="user"} 2
        random{foo="bar"} 1
        threshold{instance="abc",job="node",target="a@b.com"} 0
        "#,
    );
    check(
        &s,
        "node_cpu * on(instance, job) group_left(role) node_role",
        "5m",
        &[
            (
                r#"{instance="abc",job="node",mode="idle",role="prometheus"}"#,
                3.0,
            ),
            (
                r#"{instance="abc",job="node",mode="user",role="prometheus"}"#,
                1.0,
            ),
        ],
    );
    check(
        &s,
        "node_cpu * on(instance) group_left(role) node_role",
        "5m",
        &[
            (
                r#"{instance="abc",job="node",mode="idle",role="prometheus"}"#,
                3.0,
            ),
            (
                r#"{instance="abc",job="node",mode="user",role="prometheus"}"#,
                1.0,
            ),
        ],
    );
    check(
        &s,
        "node_role * on(instance) group_right(role) node_cpu",
        "5m",
        &[
            (
                r#"{instance="abc",job="node",mode="idle",role="prometheus"}"#,
                3.0,
            ),
            (
                r#"{instance="abc",job="node",mode="user",role="prometheus"}"#,
                1.0,
            ),
        ],
    );
    check(
        &s,
        "node_cpu > on(job, instance) group_left(target) threshold",
        "5m",
        &[
            (
                r#"node_cpu{instance="abc",job="node",mode="idle",target="a@b.com"}"#,
                3.0,
            ),
            (
                r#"node_cpu{instance="abc",job="node",mode="user",target="a@b.com"}"#,
                1.0,
            ),
        ],
    );
    check(
        &s,
        "node_cpu / on(instance) group_left sum by (instance, job) (node_cpu)",
        "5m",
        &[
            (r#"{instance="abc",job="node",mode="idle"}"#, 0.75),
            (r#"{instance="abc",job="node",mode="user"}"#, 0.25),
            (r#"{instance="def",job="node",mode="idle"}"#, 0.8),
            (r#"{instance="def",job="node",mode="user"}"#, 0.2),
        ],
    );
    check(
        &s,
        "sum without (instance) (node_cpu) / on(job) group_left sum by (job) (node_cpu)",
        "5m",
        &[
            (r#"{job="node",mode="idle"}"#, 11.0 / 14.0),
            (r#"{job="node",mode="user"}"#, 3.0 / 14.0),
        ],
    );
    // The "one" side has duplicates: many-to-many.
    check_err(
        &s,
        "node_role * on(job) group_left node_cpu",
        "5m",
        "execution",
    );
    // One-to-one with duplicates on the left.
    check_err(&s, "node_cpu + on(instance) node_role", "5m", "execution");
    check_err(&s, "node_cpu + on(job) node_cpu", "5m", "execution");
    // Name dropped, no match between different label sets.
    check(&s, "node_cpu + random", "5m", &[]);
}

#[test]
fn aggregations() {
    let s = http_requests();
    let sel = r#"http_requests{instance=~"0|1"}"#;
    check(
        &s,
        &format!("sum without (instance) ({sel})"),
        "50m",
        &[
            (r#"{group="production", job="api-server"}"#, 300.0),
            (r#"{group="canary", job="api-server"}"#, 700.0),
            (r#"{group="production", job="app-server"}"#, 1100.0),
            (r#"{group="canary", job="app-server"}"#, 1500.0),
        ],
    );
    check(&s, &format!("avg({sel})"), "50m", &[("{}", 450.0)]);
    check(
        &s,
        &format!("count by (group) ({sel})"),
        "50m",
        &[
            (r#"{group="production"}"#, 4.0),
            (r#"{group="canary"}"#, 4.0),
        ],
    );
    check(&s, &format!("min({sel})"), "50m", &[("{}", 100.0)]);
    check(
        &s,
        &format!("max by (job) ({sel})"),
        "50m",
        &[
            (r#"{job="api-server"}"#, 400.0),
            (r#"{job="app-server"}"#, 800.0),
        ],
    );
    check(
        &s,
        &format!("stddev({sel})"),
        "50m",
        &[("{}", 229.128784747792)],
    );
    check(&s, &format!("stdvar({sel})"), "50m", &[("{}", 52500.0)]);
    check(
        &s,
        &format!("quantile(0.3, {sel})"),
        "50m",
        &[("{}", 310.0)],
    );
    check(
        &s,
        &format!("quantile(2, {sel})"),
        "50m",
        &[("{}", f64::INFINITY)],
    );
    check(
        &s,
        &format!("group by (job) ({sel})"),
        "50m",
        &[
            (r#"{job="api-server"}"#, 1.0),
            (r#"{job="app-server"}"#, 1.0),
        ],
    );
    check(
        &s,
        &format!("sum by (__name__) ({sel})"),
        "50m",
        &[("http_requests", 3600.0)],
    );
    // NaN propagates through sum but min/max skip it.
    check(
        &s,
        r#"sum(http_requests{job="api-server", group="production"})"#,
        "50m",
        &[("{}", f64::NAN)],
    );
    check(
        &s,
        r#"max(http_requests{job="api-server", group="production"})"#,
        "50m",
        &[("{}", 200.0)],
    );
    check(&s, "sum(nonexistent)", "50m", &[]);
}

#[test]
fn topk_bottomk() {
    let s = http_requests();
    check(
        &s,
        "topk(3, http_requests)",
        "50m",
        &[
            (
                r#"http_requests{group="canary", instance="1", job="app-server"}"#,
                800.0,
            ),
            (
                r#"http_requests{group="canary", instance="0", job="app-server"}"#,
                700.0,
            ),
            (
                r#"http_requests{group="production", instance="1", job="app-server"}"#,
                600.0,
            ),
        ],
    );
    check(
        &s,
        r#"topk((3), {__name__="http_requests"})"#,
        "50m",
        &[
            (
                r#"http_requests{group="canary", instance="1", job="app-server"}"#,
                800.0,
            ),
            (
                r#"http_requests{group="canary", instance="0", job="app-server"}"#,
                700.0,
            ),
            (
                r#"http_requests{group="production", instance="1", job="app-server"}"#,
                600.0,
            ),
        ],
    );
    check(
        &s,
        "bottomk(3, http_requests)",
        "50m",
        &[
            (
                r#"http_requests{group="production", instance="0", job="api-server"}"#,
                100.0,
            ),
            (
                r#"http_requests{group="production", instance="1", job="api-server"}"#,
                200.0,
            ),
            (
                r#"http_requests{group="canary", instance="0", job="api-server"}"#,
                300.0,
            ),
        ],
    );
    check(
        &s,
        "topk by (group) (1, http_requests)",
        "50m",
        &[
            (
                r#"http_requests{group="production", instance="1", job="app-server"}"#,
                600.0,
            ),
            (
                r#"http_requests{group="canary", instance="1", job="app-server"}"#,
                800.0,
            ),
        ],
    );
    check(
        &s,
        r#"topk(3, http_requests{job="api-server",group="production"})"#,
        "50m",
        &[
            (
                r#"http_requests{job="api-server", instance="1", group="production"}"#,
                200.0,
            ),
            (
                r#"http_requests{job="api-server", instance="0", group="production"}"#,
                100.0,
            ),
            (
                r#"http_requests{job="api-server", instance="2", group="production"}"#,
                f64::NAN,
            ),
        ],
    );
    check(
        &s,
        r#"bottomk(2, http_requests{job="api-server",group="production"})"#,
        "50m",
        &[
            (
                r#"http_requests{job="api-server", instance="0", group="production"}"#,
                100.0,
            ),
            (
                r#"http_requests{job="api-server", instance="1", group="production"}"#,
                200.0,
            ),
        ],
    );
    check(
        &s,
        r#"topk(scalar(foo) - 2, http_requests{group="canary"})"#,
        "50m",
        &[(
            r#"http_requests{group="canary", instance="1", job="app-server"}"#,
            800.0,
        )],
    );
    check(&s, "topk(0, http_requests)", "50m", &[]);
}

#[test]
fn count_values() {
    let s = load(
        "5m",
        r#"
        version{job="api-server", instance="0", group="production"} 6
        version{job="api-server", instance="1", group="production"} 6
        version{job="api-server", instance="0", group="canary"} 8
        version{job="api-server", instance="1", group="canary"} 8
        version{job="app-server", instance="0", group="production"} 6
        version{job="app-server", instance="1", group="production"} 6
        version{job="app-server", instance="0", group="canary"} 7
        version{job="app-server", instance="1", group="canary"} 7
        "#,
    );
    check(
        &s,
        r#"count_values("version", version)"#,
        "5m",
        &[
            (r#"{version="6"}"#, 4.0),
            (r#"{version="7"}"#, 2.0),
            (r#"{version="8"}"#, 2.0),
        ],
    );
    check(
        &s,
        r#"count_values without (instance) ("version", version)"#,
        "5m",
        &[
            (
                r#"{job="api-server", group="production", version="6"}"#,
                2.0,
            ),
            (r#"{job="api-server", group="canary", version="8"}"#, 2.0),
            (
                r#"{job="app-server", group="production", version="6"}"#,
                2.0,
            ),
            (r#"{job="app-server", group="canary", version="7"}"#, 2.0),
        ],
    );
    check(
        &s,
        r#"count_values by (job) ("job", version)"#,
        "5m",
        &[
            (r#"{job="6"}"#, 4.0),
            (r#"{job="7"}"#, 2.0),
            (r#"{job="8"}"#, 2.0),
        ],
    );
    check_err(
        &s,
        r#"count_values("invalid-name", version)"#,
        "5m",
        "execution",
    );
}

/// `rate` divides the extrapolation factor by the range before scaling, as
/// Prometheus does, so its answers match to the last bit: rule unit tests
/// compare exactly. 12 × (1.125 / 180) is 0.07500000000000001, where
/// 12 × 1.125 / 180 would be 0.075.
#[test]
fn rate_rounds_as_prometheus_does() {
    let s = load("30s", "c_total{job=\"a\"} 0+3x12");
    let Value::Vector(got) =
        instant_query(&s, "rate(c_total[3m])", ms("7m"), &Limits::default()).unwrap()
    else {
        panic!("not a vector")
    };
    assert_eq!(
        got[0].v.to_bits(),
        0.07500000000000001f64.to_bits(),
        "{}",
        got[0].v
    );
}

/// `atan2` is Go's `math.Atan2`, as in Prometheus: the C library's answer
/// for -17.125 atan2 10 is one bit away from Prometheus 2.42's.
#[test]
fn atan2_rounds_as_go_does() {
    let s = load("1m", "t 0");
    let Value::Scalar { v, .. } =
        instant_query(&s, "-17.125 atan2 10", ms("1m"), &Limits::default()).unwrap()
    else {
        panic!("not a scalar")
    };
    assert_eq!(v.to_bits(), (-1.0422681578915045f64).to_bits(), "{v}");
    assert_ne!(v.to_bits(), (-17.125f64).atan2(10.0).to_bits());
}

#[test]
fn rate_increase_delta() {
    let s = load(
        "5m",
        r#"
        http_requests{path="/foo"} 0+10x10
        http_requests{path="/bar"} 0+10x5 0+10x5
        "#,
    );
    check(
        &s,
        "increase(http_requests[50m])",
        "50m",
        &[(r#"{path="/foo"}"#, 100.0), (r#"{path="/bar"}"#, 90.0)],
    );
    check(
        &s,
        "increase(http_requests[100m])",
        "50m",
        &[(r#"{path="/foo"}"#, 100.0), (r#"{path="/bar"}"#, 90.0)],
    );
    // Extrapolation: samples at 45m and 50m in [43m, 50m].
    check(
        &s,
        r#"increase(http_requests{path="/foo"}[7m])"#,
        "50m",
        &[(r#"{path="/foo"}"#, 14.0)],
    );
    check(
        &s,
        r#"rate(http_requests{path="/foo"}[7m])"#,
        "50m",
        &[(r#"{path="/foo"}"#, 14.0 / 420.0)],
    );
    check(
        &s,
        r#"delta(http_requests{path="/foo"}[20m])"#,
        "50m",
        &[(r#"{path="/foo"}"#, 40.0)],
    );
    check(
        &s,
        r#"delta(http_requests{path="/bar"}[20m])"#,
        "50m",
        &[(r#"{path="/bar"}"#, 40.0)],
    );
    check(
        &s,
        r#"delta(http_requests{path="/bar"}[20m])"#,
        "35m",
        &[(r#"{path="/bar"}"#, -20.0)],
    );
    check(
        &s,
        "irate(http_requests[50m])",
        "50m",
        &[
            (r#"{path="/foo"}"#, 10.0 / 300.0),
            (r#"{path="/bar"}"#, 10.0 / 300.0),
        ],
    );
    check(
        &s,
        r#"idelta(http_requests{path="/bar"}[50m])"#,
        "30m",
        &[(r#"{path="/bar"}"#, -50.0)],
    );
    check(
        &s,
        r#"irate(http_requests{path="/bar"}[50m])"#,
        "30m",
        &[(r#"{path="/bar"}"#, 0.0)],
    );
    // A single sample gives no rate.
    check(&s, "rate(http_requests[5m])", "0m", &[]);

    let s = http_requests();
    check(
        &s,
        r#"rate(http_requests{instance="0"}[25m]) * 25 * 60"#,
        "50m",
        &[
            (
                r#"{group="production", instance="0", job="api-server"}"#,
                50.0,
            ),
            (r#"{group="canary", instance="0", job="api-server"}"#, 150.0),
            (
                r#"{group="production", instance="0", job="app-server"}"#,
                250.0,
            ),
            (r#"{group="canary", instance="0", job="app-server"}"#, 350.0),
        ],
    );
    check(
        &s,
        r#"rate(http_requests{group="canary", instance="1", job="app-server"}[50m])"#,
        "50m",
        &[(
            r#"{group="canary", instance="1", job="app-server"}"#,
            0.26666666666666666,
        )],
    );
    check(
        &s,
        r#"deriv(http_requests{group="canary", instance="1", job="app-server"}[50m])"#,
        "50m",
        &[(
            r#"{group="canary", instance="1", job="app-server"}"#,
            0.26666666666666666,
        )],
    );
}

#[test]
fn deriv_predict_holt_winters() {
    let s = load("5m", "testcounter_reset_middle 0+10x4 0+10x5");
    check(
        &s,
        "deriv(testcounter_reset_middle[100m])",
        "50m",
        &[("{}", 0.010606060606060607)],
    );
    check(
        &s,
        "predict_linear(testcounter_reset_middle[50m], 3600)",
        "50m",
        &[("{}", 76.81818181818181)],
    );
    check(
        &s,
        "holt_winters(testcounter_reset_middle[50m], 0.5, 0.5)",
        "50m",
        &[("{}", 43.3837890625)],
    );
    check_err(
        &s,
        "holt_winters(testcounter_reset_middle[50m], 1, 0.5)",
        "50m",
        "execution",
    );
}

#[test]
fn changes_resets() {
    let s = load(
        "5m",
        r#"
        http_requests{path="/foo"} 1 2 3 0 1 0 0 1 2 0
        http_requests{path="/bar"} 1 2 3 4 5 1 2 3 4 5
        http_requests{path="/biz"} 0 0 0 0 0 1 1 1 1 1
        "#,
    );
    let zero = [
        (r#"{path="/foo"}"#, 0.0),
        (r#"{path="/bar"}"#, 0.0),
        (r#"{path="/biz"}"#, 0.0),
    ];
    check(&s, "resets(http_requests[5m])", "50m", &zero);
    check(
        &s,
        "resets(http_requests[20m])",
        "50m",
        &[
            (r#"{path="/foo"}"#, 1.0),
            (r#"{path="/bar"}"#, 0.0),
            (r#"{path="/biz"}"#, 0.0),
        ],
    );
    check(
        &s,
        "resets(http_requests[30m])",
        "50m",
        &[
            (r#"{path="/foo"}"#, 2.0),
            (r#"{path="/bar"}"#, 1.0),
            (r#"{path="/biz"}"#, 0.0),
        ],
    );
    check(
        &s,
        "resets(http_requests[50m])",
        "50m",
        &[
            (r#"{path="/foo"}"#, 3.0),
            (r#"{path="/bar"}"#, 1.0),
            (r#"{path="/biz"}"#, 0.0),
        ],
    );
    check(&s, "changes(http_requests[5m])", "50m", &zero);
    check(
        &s,
        "changes(http_requests[20m])",
        "50m",
        &[
            (r#"{path="/foo"}"#, 3.0),
            (r#"{path="/bar"}"#, 3.0),
            (r#"{path="/biz"}"#, 0.0),
        ],
    );
    check(
        &s,
        "changes(http_requests[30m])",
        "50m",
        &[
            (r#"{path="/foo"}"#, 4.0),
            (r#"{path="/bar"}"#, 5.0),
            (r#"{path="/biz"}"#, 1.0),
        ],
    );
}

#[test]
fn over_time_functions() {
    let s = load("1m", r#"metric{job="1"} 0+1x1000"#);
    let l = r#"{job="1"}"#;
    check(&s, "avg_over_time(metric[2m])", "10m", &[(l, 9.0)]);
    check(&s, "min_over_time(metric[2m])", "10m", &[(l, 8.0)]);
    check(&s, "max_over_time(metric[2m])", "10m", &[(l, 10.0)]);
    check(&s, "sum_over_time(metric[2m])", "10m", &[(l, 27.0)]);
    check(&s, "count_over_time(metric[2m])", "10m", &[(l, 3.0)]);
    check(
        &s,
        "quantile_over_time(0.5, metric[2m])",
        "10m",
        &[(l, 9.0)],
    );
    check(
        &s,
        "quantile_over_time(0.75, metric[2m])",
        "10m",
        &[(l, 9.5)],
    );
    check(
        &s,
        "stddev_over_time(metric[2m])",
        "10m",
        &[(l, 0.816496580927726)],
    );
    check(&s, "stdvar_over_time(metric[2m])", "10m", &[(l, 2.0 / 3.0)]);
    check(
        &s,
        "last_over_time(metric[2m])",
        "10m",
        &[(r#"metric{job="1"}"#, 10.0)],
    );
    check(&s, "present_over_time(metric[2m])", "10m", &[(l, 1.0)]);
    check(&s, "absent_over_time(metric[2m])", "10m", &[]);
    check(
        &s,
        r#"absent_over_time(nonexistent{job="x"}[2m])"#,
        "10m",
        &[(r#"{job="x"}"#, 1.0)],
    );
}

/// Buckets are grouped by every label but `le`, the metric name included
/// (2.42's `BytesWithoutLabels`): two names with otherwise equal labels give
/// two results with one label set, which is an error, as in Prometheus.
#[test]
fn histogram_quantile_keeps_metric_names_apart() {
    let s = load(
        "5m",
        r#"
        a_bucket{le="1"} 0+1x10
        a_bucket{le="+Inf"} 0+2x10
        b_bucket{le="1"} 0+1x10
        b_bucket{le="+Inf"} 0+2x10
        "#,
    );
    check(
        &s,
        "histogram_quantile(0.5, a_bucket)",
        "50m",
        &[("{}", 1.0)],
    );
    check_err(
        &s,
        r#"histogram_quantile(0.5, {__name__=~"a_bucket|b_bucket"})"#,
        "50m",
        "execution",
    );
}

#[test]
fn histogram_quantile_classic() {
    let s = load(
        "5m",
        r#"
        testhistogram_bucket{le="0.1", start="positive"} 0+5x10
        testhistogram_bucket{le=".2", start="positive"} 0+7x10
        testhistogram_bucket{le="1e0", start="positive"} 0+11x10
        testhistogram_bucket{le="+Inf", start="positive"} 0+12x10
        testhistogram_bucket{le="-.2", start="negative"} 0+1x10
        testhistogram_bucket{le="-0.1", start="negative"} 0+2x10
        testhistogram_bucket{le="0.3", start="negative"} 0+2x10
        testhistogram_bucket{le="+Inf", start="negative"} 0+3x10
        nonmonotonic_bucket{le="0.1"} 0+10x10
        nonmonotonic_bucket{le="1"} 0+9x10
        nonmonotonic_bucket{le="10"} 0+8x10
        nonmonotonic_bucket{le="+Inf"} 0+11x10
        noinf_bucket{le="1"} 0+1x10
        "#,
    );
    check(
        &s,
        "histogram_quantile(0.2, testhistogram_bucket)",
        "50m",
        &[
            (r#"{start="positive"}"#, 0.048),
            (r#"{start="negative"}"#, -0.2),
        ],
    );
    check(
        &s,
        "histogram_quantile(0.5, rate(testhistogram_bucket[5m]))",
        "50m",
        &[
            (r#"{start="positive"}"#, 0.15),
            (r#"{start="negative"}"#, -0.15),
        ],
    );
    check(
        &s,
        "histogram_quantile(1, testhistogram_bucket)",
        "50m",
        &[
            (r#"{start="positive"}"#, 1.0),
            (r#"{start="negative"}"#, 0.3),
        ],
    );
    check(
        &s,
        "histogram_quantile(-1, testhistogram_bucket)",
        "50m",
        &[
            (r#"{start="positive"}"#, f64::NEG_INFINITY),
            (r#"{start="negative"}"#, f64::NEG_INFINITY),
        ],
    );
    // Counts 100, 90, 80, 110 are forced monotonic to 100, 100, 100, 110: rank 55 lands in the first bucket.
    check(
        &s,
        "histogram_quantile(0.5, nonmonotonic_bucket)",
        "50m",
        &[("{}", 0.055)],
    );
    check(
        &s,
        "histogram_quantile(0.99, nonmonotonic_bucket)",
        "50m",
        &[("{}", 10.0)],
    );
    check(
        &s,
        "histogram_quantile(0.5, noinf_bucket)",
        "50m",
        &[("{}", f64::NAN)],
    );
    // Both histograms merged by `le`; ".2" and "0.3" stay separate buckets: rank 7.5 lands in (0.3, 1].
    check(
        &s,
        "histogram_quantile(0.5, sum by (le) (rate(testhistogram_bucket[5m])))",
        "50m",
        &[("{}", 0.3875)],
    );
}

#[test]
fn math_and_clamp() {
    let s = load(
        "5m",
        r#"
        test_clamp{src="clamp-a"} -50
        test_clamp{src="clamp-b"} 0
        test_clamp{src="clamp-c"} 100
        "#,
    );
    let (a, b, c) = (
        r#"{src="clamp-a"}"#,
        r#"{src="clamp-b"}"#,
        r#"{src="clamp-c"}"#,
    );
    check(
        &s,
        "clamp(test_clamp, -25, 75)",
        "0m",
        &[(a, -25.0), (b, 0.0), (c, 75.0)],
    );
    check(
        &s,
        "clamp_max(test_clamp, 75)",
        "0m",
        &[(a, -50.0), (b, 0.0), (c, 75.0)],
    );
    check(
        &s,
        "clamp_min(test_clamp, -25)",
        "0m",
        &[(a, -25.0), (b, 0.0), (c, 100.0)],
    );
    check(&s, "clamp(test_clamp, 5, -5)", "0m", &[]);
    check(
        &s,
        "clamp(test_clamp, NaN, 0)",
        "0m",
        &[(a, f64::NAN), (b, f64::NAN), (c, f64::NAN)],
    );
    check(
        &s,
        "abs(test_clamp)",
        "0m",
        &[(a, 50.0), (b, 0.0), (c, 100.0)],
    );
    check(
        &s,
        "sgn(test_clamp)",
        "0m",
        &[(a, -1.0), (b, 0.0), (c, 1.0)],
    );
    check(
        &s,
        "sqrt(clamp_min(test_clamp, 0))",
        "0m",
        &[(a, 0.0), (b, 0.0), (c, 10.0)],
    );
    check(&s, "ln(vector(1))", "0m", &[("{}", 0.0)]);
    check(&s, "log2(vector(8))", "0m", &[("{}", 3.0)]);
    check(&s, "log10(vector(1000))", "0m", &[("{}", 3.0)]);
    check(&s, "exp(vector(0))", "0m", &[("{}", 1.0)]);
    check(&s, "ceil(vector(1.2))", "0m", &[("{}", 2.0)]);
    check(&s, "floor(vector(-1.2))", "0m", &[("{}", -2.0)]);
    check(&s, "round(vector(1.5))", "0m", &[("{}", 2.0)]);
    check(&s, "round(vector(-1.5))", "0m", &[("{}", -1.0)]);
    check(&s, "round(vector(7), 5)", "0m", &[("{}", 5.0)]);
    check(&s, "round(vector(0.123), 0.1)", "0m", &[("{}", 0.1)]);
    check(&s, "deg(vector(pi()))", "0m", &[("{}", 180.0)]);
    check(&s, "cos(vector(0))", "0m", &[("{}", 1.0)]);
}

#[test]
fn labels_functions() {
    let s = load(
        "5m",
        r#"
        testmetric{src="source-value-10",dst="original-destination-value"} 0
        testmetric{src="source-value-20",dst="original-destination-value"} 1
        joinmetric{src="a",src1="b",src2="c",dst="original-destination-value"} 0
        "#,
    );
    check(
        &s,
        r#"label_replace(testmetric, "dst", "destination-value-$1", "src", "source-value-(.*)")"#,
        "0m",
        &[
            (
                r#"testmetric{src="source-value-10",dst="destination-value-10"}"#,
                0.0,
            ),
            (
                r#"testmetric{src="source-value-20",dst="destination-value-20"}"#,
                1.0,
            ),
        ],
    );
    check(
        &s,
        r#"label_replace(testmetric, "dst", "destination-value-$1", "src", "value-(.*)")"#,
        "0m",
        &[
            (
                r#"testmetric{src="source-value-10",dst="original-destination-value"}"#,
                0.0,
            ),
            (
                r#"testmetric{src="source-value-20",dst="original-destination-value"}"#,
                1.0,
            ),
        ],
    );
    check(
        &s,
        r#"label_replace(testmetric, "dst", "$1-value-$2", "src", "(.*)-value-(.*)")"#,
        "0m",
        &[
            (
                r#"testmetric{src="source-value-10",dst="source-value-10"}"#,
                0.0,
            ),
            (
                r#"testmetric{src="source-value-20",dst="source-value-20"}"#,
                1.0,
            ),
        ],
    );
    check(
        &s,
        r#"label_replace(testmetric, "dst", "value-$1", "nonexistent-src", "(.*)")"#,
        "0m",
        &[
            (r#"testmetric{src="source-value-10",dst="value-"}"#, 0.0),
            (r#"testmetric{src="source-value-20",dst="value-"}"#, 1.0),
        ],
    );
    check(
        &s,
        r#"label_replace(testmetric, "dst", "", "dst", ".*")"#,
        "0m",
        &[
            (r#"testmetric{src="source-value-10"}"#, 0.0),
            (r#"testmetric{src="source-value-20"}"#, 1.0),
        ],
    );
    check(
        &s,
        r#"label_replace(testmetric, "dst", "${1}x", "src", "source-(value)-.*")"#,
        "0m",
        &[
            (r#"testmetric{src="source-value-10",dst="valuex"}"#, 0.0),
            (r#"testmetric{src="source-value-20",dst="valuex"}"#, 1.0),
        ],
    );
    check_err(
        &s,
        r#"label_replace(testmetric, "dst", "value-$1", "src", "(.*")"#,
        "0m",
        "execution",
    );
    check_err(
        &s,
        r#"label_replace(testmetric, "invalid-label-name", "", "src", "(.*)")"#,
        "0m",
        "execution",
    );
    check_err(
        &s,
        r#"label_replace(testmetric, "src", "", "", "")"#,
        "0m",
        "execution",
    );
    check(
        &s,
        r#"label_join(joinmetric, "dst", "-", "src", "src1", "src2")"#,
        "0m",
        &[(r#"joinmetric{src="a",src1="b",src2="c",dst="a-b-c"}"#, 0.0)],
    );
    check(
        &s,
        r#"label_join(joinmetric, "dst", ",", "nonexistent")"#,
        "0m",
        &[(r#"joinmetric{src="a",src1="b",src2="c"}"#, 0.0)],
    );
}

#[test]
fn time_and_misc_functions() {
    let s = load(
        "1m",
        r#"metric{job="1"} 0+1x1000
        metric{job="2"} 0+2x1000"#,
    );
    check(&s, "time()", "50m", &[("scalar", 3000.0)]);
    check(
        &s,
        r#"timestamp(metric{job="1"})"#,
        "630s",
        &[(r#"{job="1"}"#, 600.0)],
    );
    check(
        &s,
        r#"timestamp(metric{job="1"} + 1)"#,
        "630s",
        &[(r#"{job="1"}"#, 630.0)],
    );
    check(&s, "scalar(metric)", "10m", &[("scalar", f64::NAN)]);
    check(&s, r#"scalar(metric{job="2"})"#, "10m", &[("scalar", 20.0)]);
    check(&s, "vector(1)", "0m", &[("{}", 1.0)]);
    check(
        &s,
        r#"absent(nonexistent{job="x"})"#,
        "0m",
        &[(r#"{job="x"}"#, 1.0)],
    );
    check(
        &s,
        r#"absent(nonexistent{job="x", job="y"})"#,
        "0m",
        &[("{}", 1.0)],
    );
    check(
        &s,
        r#"absent(nonexistent{job="x", instance=~"y"})"#,
        "0m",
        &[(r#"{job="x"}"#, 1.0)],
    );
    check(&s, "absent(sum(nonexistent))", "0m", &[("{}", 1.0)]);
    check(&s, "absent(metric)", "0m", &[]);
    check(&s, "year()", "0m", &[("{}", 1970.0)]);
    check(&s, "day_of_week()", "0m", &[("{}", 4.0)]);
    check(
        &s,
        "days_in_month(vector(1454284800))",
        "0m",
        &[("{}", 29.0)],
    );
    check(&s, "day_of_month(vector(1454284800))", "0m", &[("{}", 1.0)]);
    check(&s, "month(vector(1454284800))", "0m", &[("{}", 2.0)]);
    check(&s, "day_of_year(vector(1454284800))", "0m", &[("{}", 32.0)]);
    check(
        &s,
        "hour(vector(1454284800 + 3600 * 5 + 120))",
        "0m",
        &[("{}", 5.0)],
    );
    check(
        &s,
        "minute(vector(1454284800 + 3600 * 5 + 120))",
        "0m",
        &[("{}", 2.0)],
    );
    check(
        &s,
        r#"hour(metric{job="2"} * 3600)"#,
        "2m",
        &[(r#"{job="2"}"#, 4.0)],
    );

    let order = |q: &str| match instant_query(&s, q, ms("10m"), &Limits::default()).unwrap() {
        Value::Vector(v) => v.iter().map(|s| s.v).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(order("sort_desc(metric)"), vec![20.0, 10.0]);
    assert_eq!(order("sort(metric)"), vec![10.0, 20.0]);
    assert_eq!(order("sort(-metric)"), vec![-20.0, -10.0]);
}

#[test]
fn offset_at_and_subqueries() {
    let s = load(
        "1m",
        r#"metric{job="1"} 0+1x1000
        metric{job="2"} 0+2x1000"#,
    );
    let (j1, j2) = (r#"metric{job="1"}"#, r#"metric{job="2"}"#);
    check(&s, "metric @ 100", "10m", &[(j1, 1.0), (j2, 2.0)]);
    check(&s, "metric offset 2m", "10m", &[(j1, 8.0), (j2, 16.0)]);
    check(&s, "metric offset -2m", "10m", &[(j1, 12.0), (j2, 24.0)]);
    check(&s, "metric @ 300 offset 1m", "10m", &[(j1, 4.0), (j2, 8.0)]);
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[2m] @ 120)"#,
        "10m",
        &[(r#"{job="1"}"#, 3.0)],
    );
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[2m] offset 5m)"#,
        "10m",
        &[(r#"{job="1"}"#, 3.0 + 4.0 + 5.0)],
    );
    check(&s, r#"metric{job="1"} @ start()"#, "10m", &[(j1, 10.0)]);
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[3m:1m])"#,
        "10m",
        &[(r#"{job="1"}"#, 34.0)],
    );
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[3m:1m])"#,
        "630s",
        &[(r#"{job="1"}"#, 27.0)],
    );
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[3m:])"#,
        "10m",
        &[(r#"{job="1"}"#, 34.0)],
    );
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[3m:1m] offset 1m)"#,
        "10m",
        &[(r#"{job="1"}"#, 30.0)],
    );
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[3m:1m] @ 300)"#,
        "10m",
        &[(r#"{job="1"}"#, 2.0 + 3.0 + 4.0 + 5.0)],
    );
    check(
        &s,
        r#"sum_over_time(metric{job="1"}[2m:30s])"#,
        "10m",
        &[(r#"{job="1"}"#, 8.0 + 8.0 + 9.0 + 9.0 + 10.0)],
    );
    check(
        &s,
        r#"max_over_time(rate(metric{job="1"}[2m])[4m:1m])"#,
        "10m",
        &[(r#"{job="1"}"#, 1.0 / 60.0)],
    );
    check(
        &s,
        r#"max_over_time(deriv(rate(metric{job="1"}[2m])[5m:1m])[10m:2m])"#,
        "30m",
        &[(r#"{job="1"}"#, 0.0)],
    );
    // Near the start of the series the first rates are extrapolated to zero, so they are lower.
    check(
        &s,
        r#"rate(metric{job="1"}[2m])"#,
        "1m",
        &[(r#"{job="1"}"#, 1.0 / 120.0)],
    );
    check(
        &s,
        "count_over_time(vector(time())[3m:1m])",
        "10m",
        &[("{}", 4.0)],
    );
    check_err(&s, "count_over_time((time())[3m:1m])", "10m", "bad_data");

    let v = instant_query(
        &s,
        r#"metric{job="1"}[2m:1m]"#,
        ms("10m"),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: labels(j1),
            samples: vec![(480_000, 8.0), (540_000, 9.0), (600_000, 10.0)]
        }])
    );
    let v = instant_query(&s, r#"metric{job="1"}[2m]"#, ms("10m"), &Limits::default()).unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: labels(j1),
            samples: vec![(480_000, 8.0), (540_000, 9.0), (600_000, 10.0)]
        }])
    );
}

#[test]
fn staleness_and_lookback() {
    let s = load("10s", "metric 0 1 stale 2\n lonely 5");
    check(&s, "metric", "10s", &[("metric", 1.0)]);
    check(&s, "metric", "15s", &[("metric", 1.0)]);
    check(&s, "metric", "20s", &[]);
    check(&s, "metric", "25s", &[]);
    check(&s, "metric", "30s", &[("metric", 2.0)]);
    check(&s, "count_over_time(metric[1s])", "20s", &[]);
    check(&s, "count_over_time(metric[10s])", "20s", &[("{}", 1.0)]);
    check(&s, "count_over_time(metric[1m])", "30s", &[("{}", 3.0)]);
    // Lookback is inclusive at 5m in 2.x.
    check(&s, "lonely", "5m", &[("lonely", 5.0)]);
    check(&s, "lonely", "300001", &[]);
    check(&s, "lonely", "0s", &[("lonely", 5.0)]);
}

#[test]
fn range_queries() {
    let s = load(
        "1m",
        r#"metric{job="1"} 0+1x10
        late{job="1"} _ _ 5 6"#,
    );
    let lim = Limits::default();
    let v = range_query(&s, r#"metric{job="1"}"#, 0, 180_000, 60_000, &lim).unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: labels(r#"metric{job="1"}"#),
            samples: vec![(0, 0.0), (60_000, 1.0), (120_000, 2.0), (180_000, 3.0)],
        }])
    );
    let v = range_query(&s, "time()", 0, 120_000, 60_000, &lim).unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: Labels::default(),
            samples: vec![(0, 0.0), (60_000, 60.0), (120_000, 120.0)]
        }])
    );
    // No padding before the series starts.
    let v = range_query(&s, "late", 0, 180_000, 60_000, &lim).unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: labels(r#"late{job="1"}"#),
            samples: vec![(120_000, 5.0), (180_000, 6.0)]
        }])
    );
    // @ end() is the range's end at every step.
    let v = range_query(&s, r#"metric @ end()"#, 0, 120_000, 60_000, &lim).unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: labels(r#"metric{job="1"}"#),
            samples: vec![(0, 2.0), (60_000, 2.0), (120_000, 2.0)]
        }])
    );
    let v = range_query(
        &s,
        r#"sum_over_time(metric[1m:1m])"#,
        60_000,
        120_000,
        60_000,
        &lim,
    )
    .unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: labels(r#"{job="1"}"#),
            samples: vec![(60_000, 1.0), (120_000, 3.0)]
        }])
    );

    let err = |q: &str, step: i64| {
        range_query(&s, q, 0, 120_000, step, &lim)
            .unwrap_err()
            .error_type()
    };
    assert_eq!(err("metric[5m]", 60_000), "bad_data");
    assert_eq!(err(r#""str""#, 60_000), "bad_data");
    assert_eq!(err("metric", 0), "bad_data");
    assert_eq!(err("metric +", 60_000), "bad_data");
}

#[test]
fn subqueries_in_range_queries_answer_as_instant_queries_at_each_step() {
    // A range query keeps each subquery's points for the steps after it;
    // every step must still read as an instant query at its time does.
    let s = load(
        "1m",
        r#"metric{job="1"} 0+1x40 7 3 9 1+2x20
        metric{job="2"} 5+3x30 _ _ 1+1x40"#,
    );
    let lim = Limits::default();
    for query in [
        "max_over_time(rate(metric[5m])[15m:1m])",
        "sum_over_time(sum by (job) (metric)[10m:2m] offset 5m)",
        "max_over_time(min_over_time(metric[3m:1m])[9m:2m])",
        "rate(sum(metric)[10m:30s])",
        "avg_over_time(metric[7m:1m] @ 1800)",
        "max_over_time(deriv(metric[4m])[6m:])",
    ] {
        let (start, end, step) = (600_000, 4_200_000, 90_000);
        let Value::Matrix(range) = range_query(&s, query, start, end, step, &lim).unwrap() else {
            panic!("{query}: a range query answers a matrix");
        };
        let mut from_instants: Vec<Series> = Vec::new();
        for t in (start..=end).step_by(step as usize) {
            let Value::Vector(samples) = instant_query(&s, query, t, &lim).unwrap() else {
                panic!("{query}: an instant vector");
            };
            for sample in samples {
                match from_instants.iter_mut().find(|s| s.labels == sample.labels) {
                    Some(series) => series.samples.push((t, sample.v)),
                    None => from_instants.push(Series {
                        labels: sample.labels,
                        samples: vec![(t, sample.v)],
                    }),
                }
            }
        }
        from_instants.sort_by(|a, b| a.labels.cmp(&b.labels));
        assert!(!range.is_empty(), "{query}: no series");
        assert_eq!(range, from_instants, "{query}");
    }
}

#[test]
fn a_subquery_that_reads_nothing_stops_at_its_deadline() {
    let s = TestSource(Vec::new());
    let lim = Limits {
        timeout: Duration::from_millis(50),
        ..Limits::default()
    };
    // 31.5 billion grid times of an inner expression that reads nothing.
    let endless = "count_over_time((vector(1) > 2)[1y:1ms])";
    let err = instant_query(&s, endless, 0, &lim).unwrap_err();
    assert_eq!(err.error_type(), "timeout");
    let err = range_query(&s, endless, 0, 60_000, 60_000, &lim).unwrap_err();
    assert_eq!(err.error_type(), "timeout");
}

#[test]
fn errors_and_limits() {
    let s = http_requests();
    check_err(&s, "sum(", "0m", "bad_data");
    check_err(&s, r#"{job=~".*"}"#, "0m", "bad_data");
    check_err(&s, "rate(http_requests)", "0m", "bad_data");
    check_err(&s, "1 > 2", "0m", "bad_data");
    check_err(&s, "nonexistent_function(http_requests)", "0m", "bad_data");
    let tiny = Limits {
        max_samples: 3,
        ..Limits::default()
    };
    let e = instant_query(&s, "http_requests", ms("50m"), &tiny).unwrap_err();
    assert!(matches!(e, EvalError::TooManySamples), "{e}");
    assert_eq!(e.error_type(), "execution");
    let none = Limits {
        timeout: Duration::ZERO,
        ..Limits::default()
    };
    let e = range_query(&s, "http_requests", 0, 3_000_000, 1000, &none).unwrap_err();
    assert!(matches!(e, EvalError::Timeout), "{e}");
    assert_eq!(e.error_type(), "timeout");

    struct Failing;
    impl SeriesSource for Failing {
        fn select(&self, _: &[Matcher], _: i64, _: i64) -> crate::Result<Vec<Series>> {
            Err(EvalError::Storage("disk on fire".into()))
        }
    }
    let e = instant_query(&Failing, "up", 0, &Limits::default()).unwrap_err();
    assert_eq!(e.error_type(), "internal");
    assert!(e.to_string().contains("disk on fire"));
}

/// Log records in memory, the test double for a log store: `(ms, service,
/// severity, message, order_id)`. A query is one word of the message
/// (empty: every record), or `service:<name>`; a field other than
/// `service` is refused as the log store refuses it.
struct LogSource(Vec<(i64, &'static str, &'static str, &'static str, &'static str)>);

impl SeriesSource for LogSource {
    fn select(&self, _: &[Matcher], _: i64, _: i64) -> crate::Result<Vec<Series>> {
        Ok(Vec::new())
    }

    fn count_logs(
        &self,
        query: &str,
        window_ms: i64,
        by: &[LogField],
        at_ms: i64,
    ) -> crate::Result<Vec<(Vec<String>, u64)>> {
        let wanted_service = match query.split_once(':') {
            None => None,
            Some(("service", name)) => Some(name),
            Some((field, _)) => {
                return Err(EvalError::Parse(format!("there is no field '{field}'")));
            }
        };
        let matches = |service: &str, body: &str| match wanted_service {
            Some(name) => service == name,
            None => query.is_empty() || body.split(' ').any(|w| w == query),
        };
        let mut groups: std::collections::BTreeMap<Vec<String>, u64> = Default::default();
        for &(t, service, severity, body, order) in &self.0 {
            if t > at_ms.saturating_sub(window_ms) && t <= at_ms && matches(service, body) {
                let values = by
                    .iter()
                    .map(|field| match field {
                        LogField::Service => service.to_string(),
                        LogField::Severity => severity.to_string(),
                        LogField::Attribute(key) if key == "order_id" => order.to_string(),
                        LogField::Attribute(_) => String::new(),
                    })
                    .collect();
                *groups.entry(values).or_default() += 1;
            }
        }
        Ok(groups.into_iter().collect())
    }
}

fn shop_logs() -> LogSource {
    LogSource(vec![
        (0, "payment", "error", "card declined", "1"),
        (60_000, "payment", "error", "card declined", "2"),
        (120_000, "payment", "error", "card declined", "2"),
        (180_000, "order", "error", "card declined", "3"),
        (240_000, "order", "info", "order created", ""),
        (300_000, "payment", "error", "card declined", "4"),
    ])
}

#[test]
fn count_logs_counts_per_window_and_group() {
    let s = shop_logs();
    // (t - window, t]: the record at t - window is out, the one at t in.
    check(&s, r#"count_logs("declined", "5m")"#, "5m", &[("{}", 4.0)]);
    check(&s, r#"count_logs("declined", "1m")"#, "2m", &[("{}", 1.0)]);
    // Nothing matches: 0 without grouping, nothing with it.
    check(&s, r#"count_logs("refunded", "1h")"#, "5m", &[("{}", 0.0)]);
    check(&s, r#"count_logs("refunded", "1h", "service")"#, "5m", &[]);
    check(
        &s,
        r#"count_logs("", "1h", "service", "severity")"#,
        "5m",
        &[
            (r#"{service="payment", severity="error"}"#, 4.0),
            (r#"{service="order", severity="error"}"#, 1.0),
            (r#"{service="order", severity="info"}"#, 1.0),
        ],
    );
    // An attribute's label name has `_` for the dot; a record without the
    // attribute has no such label.
    check(
        &s,
        r#"count_logs("", "4m", "attributes.order_id")"#,
        "4m",
        &[
            (r#"{attributes_order_id="2"}"#, 2.0),
            (r#"{attributes_order_id="3"}"#, 1.0),
            ("{}", 1.0),
        ],
    );
    // The function composes as any instant vector does.
    check(
        &s,
        r#"count_logs("declined", "5m", "service") > 2"#,
        "5m",
        &[(r#"{service="payment"}"#, 3.0)],
    );
    check(
        &s,
        r#"sum(count_logs("service:payment", "1m", "attributes.order_id"))"#,
        "2m",
        &[("{}", 1.0)],
    );
    let v = range_query(
        &s,
        r#"count_logs("declined", "2m")"#,
        0,
        300_000,
        60_000,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(
        v,
        Value::Matrix(vec![Series {
            labels: Labels::default(),
            samples: vec![
                (0, 1.0),
                (60_000, 2.0),
                (120_000, 2.0),
                (180_000, 2.0),
                (240_000, 1.0),
                (300_000, 1.0)
            ],
        }])
    );
}

#[test]
fn count_logs_arguments_are_checked_and_named() {
    let s = shop_logs();
    let message = |query: &str| match instant_query(&s, query, 0, &Limits::default()) {
        Err(e) => {
            assert_eq!(e.error_type(), "bad_data", "{query}: {e}");
            e.to_string()
        }
        Ok(v) => panic!("{query}: expected an error, got {v:?}"),
    };
    for (query, says) in [
        (
            r#"count_logs("declined")"#,
            "expected at least 2 argument(s)",
        ),
        (r#"count_logs(1, "5m")"#, "expected type string"),
        (r#"count_logs("declined", 5)"#, "expected type string"),
        (
            r#"count_logs("declined", "5m", service)"#,
            "expected type string",
        ),
        (
            r#"count_logs("declined", "5x")"#,
            "count_logs(): the window (argument 2) \"5x\" is not a duration",
        ),
        (r#"count_logs("declined", "0s")"#, "greater than 0"),
        (r#"count_logs("declined", "-5")"#, "a number without a unit"),
        (r#"count_logs("declined", "")"#, "argument 2"),
        (
            r#"count_logs("declined", "5m", "level")"#,
            "cannot group by \"level\" (argument 3): the fields are service, severity",
        ),
        (
            r#"count_logs("declined", "5m", "attributes.")"#,
            "argument 3",
        ),
        (
            r#"count_logs("declined", "5m", "resource.host")"#,
            "resource.host",
        ),
        (
            r#"count_logs("declined", "5m", "service", "attributes.a.b", "attributes.a_b")"#,
            "\"attributes.a_b\" (argument 5) and \"attributes.a.b\" (argument 4) would both be the label attributes_a_b",
        ),
        (
            r#"count_logs("declined", "5m", "service", "service")"#,
            "would both be the label service",
        ),
        (
            r#"count_logs("level:error", "5m")"#,
            "count_logs(): invalid log query (argument 1): there is no field 'level'",
        ),
    ] {
        let got = message(query);
        assert!(got.contains(says), "{query}: {got}");
    }
    // Arguments are checked before anything is evaluated, even where the
    // call is never reached.
    let got = message(r#"vector(1) < 0 and count_logs("declined", "5x")"#);
    assert!(got.contains("window"), "{got}");
    // Label names are always valid: every other character becomes `_`.
    assert_eq!(
        LogField::parse("attributes.http.status-code").map(|f| f.label_name()),
        Some("attributes_http_status_code".to_string())
    );
    assert_eq!(
        LogField::parse("attributes.é").unwrap().label_name(),
        "attributes__"
    );
}

#[test]
fn count_logs_needs_a_source_with_logs() {
    // A source without logs (the default) says so, as an execution error.
    let e = instant_query(
        &http_requests(),
        r#"count_logs("declined", "5m")"#,
        0,
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(e.error_type(), "execution");
    assert_eq!(e.to_string(), "count_logs needs a log store");
}

#[test]
fn value_helpers() {
    assert_eq!(format_value(f64::NAN), "NaN");
    assert_eq!(format_value(f64::INFINITY), "+Inf");
    assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
    assert_eq!(format_value(0.1), "0.1");
    assert_eq!(format_value(1e21), "1000000000000000000000");
    assert_eq!(format_value(1.5e-7), "0.00000015");
    assert_eq!(format_value(-2.0), "-2");
    assert!(crate::is_stale_nan(f64::from_bits(STALE_NAN_BITS)));
    assert!(!crate::is_stale_nan(f64::NAN));
    let l = Labels::from(vec![
        ("b".into(), "2".into()),
        ("a".into(), "1".into()),
        ("c".into(), String::new()),
    ]);
    assert_eq!(l.to_string(), r#"{a="1", b="2"}"#);
    assert_eq!(l.get("a"), Some("1"));
    assert_eq!(l.metric_name(), None);
}

/// Fragments that combine into mostly valid, sometimes odd, expressions.
fn expr_strategy() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "http_requests",
        "foo",
        "nonexistent",
        "1",
        "0",
        "-1.5",
        "NaN",
        "Inf",
        r#""str""#,
        r#"http_requests{job=~"api.*"}"#,
        "http_requests[5m]",
        "foo[1m:10s]",
        "http_requests offset -5m",
        "foo @ 100",
        "http_requests[5m] @ end()",
        "time()",
        "http_requests{instance!=\"0\"}[10m] offset 1m",
    ])
    .prop_map(str::to_owned);
    leaf.prop_recursive(4, 24, 3, |inner| {
        let ops = prop::sample::select(vec![
            "+",
            "-",
            "*",
            "/",
            "%",
            "^",
            "atan2",
            "==",
            "!=",
            ">",
            "<",
            ">=",
            "<= bool",
            "and",
            "or",
            "unless",
            "+ on(job)",
            "* ignoring(instance) group_left(group)",
            "/ on() group_right",
            "> bool",
        ]);
        let funcs = prop::sample::select(vec![
            "rate",
            "irate",
            "increase",
            "delta",
            "idelta",
            "deriv",
            "abs",
            "sum",
            "avg",
            "topk(2,",
            "bottomk(-1,",
            "quantile(0.5,",
            "count_values(\"x\",",
            "histogram_quantile(0.9,",
            "sort",
            "label_replace(",
            "absent",
            "changes",
            "resets",
            "scalar",
            "vector",
            "round",
            "clamp(",
            "sum_over_time",
            "quantile_over_time(2,",
            "holt_winters(",
            "predict_linear(",
            "timestamp",
            "day_of_week",
            "stddev by (job)",
            "count without (instance)",
            "group",
            "last_over_time",
        ]);
        prop_oneof![
            (inner.clone(), ops, inner.clone()).prop_map(|(a, o, b)| format!("{a} {o} {b}")),
            (funcs, inner.clone()).prop_map(|(f, a)| if f.ends_with(['(', ',']) {
                format!("{f} {a})")
            } else {
                format!("{f}({a})")
            }),
            inner.clone().prop_map(|a| format!("({a})[5m:1m]")),
            inner.prop_map(|a| format!("-({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_random_text(q in "\\PC{0,40}") {
        let s = http_requests();
        let _ = instant_query(&s, &q, 3_000_000, &Limits::default());
        let _ = range_query(&s, &q, 0, 600_000, 60_000, &Limits::default());
    }

    #[test]
    fn count_logs_never_panics_on_random_arguments(
        query in "[^\"\\\\]{0,12}",
        window in "[-+0-9.eE]{0,4}[a-z]{0,2}",
        field in "[^\"\\\\]{0,16}",
        t in i64::MIN..i64::MAX,
    ) {
        let q = format!(r#"count_logs("{query}", "{window}", "{field}")"#);
        let _ = instant_query(&shop_logs(), &q, t, &Limits::default());
    }

    #[test]
    fn never_panics_on_random_expressions(q in expr_strategy(), t in -1_000_000i64..4_000_000, step in -1i64..200_000) {
        let s = http_requests();
        let lim = Limits { max_samples: 200_000, ..Limits::default() };
        let _ = instant_query(&s, &q, t, &lim);
        let _ = range_query(&s, &q, t, t + 600_000, step, &lim);
    }

    #[test]
    fn seeking_from_a_hint_finds_what_bisection_finds(
        mut times in proptest::collection::vec(-50i64..50, 0..40),
        bounds in proptest::collection::vec(-60i64..60, 1..20),
        hint in 0usize..50,
    ) {
        times.sort_unstable();
        let data: Vec<(i64, f64)> = times.iter().map(|t| (*t, 0.0)).collect();
        let cursor = std::cell::Cell::new(hint);
        for bound in bounds {
            let expected = data.partition_point(|(t, _)| *t < bound);
            prop_assert_eq!(crate::eval::seek(&data, &cursor, |t| t < bound), expected);
            prop_assert_eq!(cursor.get(), expected);
        }
    }
}

#[test]
fn raw_strings_take_no_escapes() {
    let parsed = crate::parse(r#"up{instance=~`10\.0\.0\.1:.*`, job!="a`b"} # `comment`"#).unwrap();
    let Expr::VectorSelector(selector) = parsed else {
        panic!("not a selector: {parsed:?}")
    };
    let values: Vec<&str> = selector
        .matchers
        .matchers
        .iter()
        .map(|m| m.value.as_str())
        .collect();
    assert_eq!(values, [r"10\.0\.0\.1:.*", "a`b"]);
    assert!(crate::parse("up{job=`unterminated}").is_err());
}

#[test]
fn nesting_counts_brackets_and_operators_outside_strings_and_matchers() {
    assert_eq!(crate::nesting("sum(rate(up[5m]))"), (3, 0));
    assert_eq!(crate::nesting(r#"up{job=~"a|(b)", x!="\")"} - 1"#), (1, 1));
    assert_eq!(crate::nesting("((1))) + (2"), (2, 1));
    assert_eq!(crate::nesting("`((` * '((' / \"((\""), (0, 2));
    let deep = format!("{}1{}", "(".repeat(129), ")".repeat(129));
    let Err(EvalError::Parse(message)) = crate::parse(&deep) else {
        panic!("129 levels must be refused");
    };
    assert!(message.contains("too complex"), "{message}");
    assert!(crate::parse(&vec!["1"; 257].join("+")).is_ok());
    assert!(crate::parse(&vec!["1"; 258].join("+")).is_err());
}

/// A source that takes [`SeriesSource::select_steps`] at its word: of each
/// series only the newest sample at or before the first step and the
/// newest of each step after it, as a store may push down.
struct Downsampling(TestSource, std::cell::Cell<usize>);

impl SeriesSource for Downsampling {
    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> crate::Result<Vec<Series>> {
        self.0.select(matchers, start, end)
    }

    fn select_steps(
        &self,
        matchers: &[Matcher],
        start: i64,
        end: i64,
        steps: crate::Steps,
    ) -> crate::Result<Vec<Series>> {
        let bucket = |t: i64| {
            if t <= steps.first_ms {
                0
            } else {
                (t - steps.first_ms - 1) / steps.step_ms + 1
            }
        };
        let mut series = self.0.select(matchers, start, end)?;
        for one in &mut series {
            let samples = std::mem::take(&mut one.samples);
            for (i, sample) in samples.iter().enumerate() {
                if samples
                    .get(i + 1)
                    .is_none_or(|next| bucket(next.0) != bucket(sample.0))
                {
                    one.samples.push(*sample);
                } else {
                    self.1.set(self.1.get() + 1);
                }
            }
        }
        Ok(series)
    }
}

#[test]
fn selectors_read_at_steps_answer_the_same_from_their_newest_samples() {
    let data = r#"metric{job="1"} 0+1x40
        metric{job="2"} 5 _ 7 stale 9 10 _ _ _ _ 11 12 stale _ 13
        other{job="1"} 1+2x40"#;
    let full = load("15s", data);
    let downsampled = Downsampling(load("15s", data), Default::default());
    let lim = Limits::default();
    let queries = [
        "metric",
        "metric offset 1m",
        "metric @ 120",
        "sum by (job) (metric) + on(job) other",
        "timestamp(metric)",
        "metric > 5 and other",
        "rate(metric[1m]) + metric",
        "max_over_time(metric[2m:30s]) - metric",
        "absent(nothing) or metric",
    ];
    for query in queries {
        for (start, end, step) in [
            (0, 600_000, 60_000),
            (7_000, 500_000, 45_000),
            (0, 600_000, 10_000),
        ] {
            assert_eq!(
                range_query(&downsampled, query, start, end, step, &lim).unwrap(),
                range_query(&full, query, start, end, step, &lim).unwrap(),
                "{query} over [{start}, {end}] every {step}"
            );
        }
        for time in [0, 44_000, 150_000, 601_000] {
            assert_eq!(
                instant_query(&downsampled, query, time, &lim).unwrap(),
                instant_query(&full, query, time, &lim).unwrap(),
                "{query} at {time}"
            );
        }
    }
    assert!(
        downsampled.1.get() > 1_000,
        "{} samples left out",
        downsampled.1.get()
    );
}
