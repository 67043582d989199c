//! Grafana's Loki data source against Strand: logs pushed through Loki's
//! push API (a real client — python-logging-loki from PyPI, in the
//! `target/py` venv scripts/test makes —, protobuf+snappy and JSON) arrive
//! once each; the requests Grafana's Loki data source sends (health check,
//! query, query_range, labels, label values, series, index/stats, volume,
//! as `pkg/tsdb/loki` and `public/app/plugins/datasource/loki` build them)
//! are answered in Loki's shapes; a table of LogQL queries over a fixed data
//! set gives the expected lines, numbers and errors; tail streams new
//! lines over a WebSocket; push and queries take the ingest and read tokens.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use prost::Message;
use serde_json::{Value, json};
use strand_testkit::{Strand, eventually};

use crate::auth::{INGEST, READ, TOKEN_FLAGS};

const SECOND: u64 = 1_000_000_000;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;

/// The fixed data set's lines, numbered from 1 in the table below; line
/// `k` is logged at `base + k` minutes.
const LINES: [&str; 12] = [
    r#"{"level":"info","msg":"order placed","order":1,"total":25.5,"latency_ms":120}"#,
    r#"{"level":"error","msg":"payment declined","order":2,"total":99.5,"latency_ms":340}"#,
    r#"{"level":"info","msg":"order placed","order":3,"total":10,"latency_ms":80}"#,
    r#"{"level":"warn","msg":"slow inventory","order":4,"total":42,"latency_ms":900}"#,
    r#"level=info msg="charge ok" amount=25.5 took=120ms"#,
    r#"level=error msg="card declined" amount=99.5 took=340ms"#,
    r#"level=info msg="charge ok" amount=10 took=80ms"#,
    "GET /api/cart 200 12ms",
    "POST /api/checkout 500 230ms",
    "GET /health 200 1ms",
    "reserved 3 items",
    "out of stock",
];

/// The fixed data set as one JSON push: checkout (JSON lines), payment
/// (logfmt), a gateway named only by `app` (Loki 3's service_name
/// fallback), and inventory with an OpenTelemetry-style
/// `deployment.environment` label and structured metadata.
pub(crate) fn data_set(base: u64) -> Value {
    let at = |k: u64| (base + k * MINUTE).to_string();
    let values = |from: usize, to: usize| -> Vec<Value> {
        (from..=to)
            .map(|k| json!([at(k as u64), LINES[k - 1]]))
            .collect()
    };
    json!({"streams": [
        {"stream": {"service_name": "checkout", "env": "prod", "team": "shop"}, "values": values(1, 4)},
        {"stream": {"service_name": "payment", "env": "prod"}, "values": values(5, 7)},
        {"stream": {"app": "gateway", "env": "staging"}, "values": values(8, 10)},
        {"stream": {"service_name": "inventory", "deployment.environment": "prod"}, "values": [
            [at(11), LINES[10], {"level": "debug", "sku": "A-1"}],
            [at(12), LINES[11], {"level": "warn", "sku": "B-2"}],
        ]},
    ]})
}

/// What a query of the table should give.
pub(crate) enum Expect {
    /// query_range, newest first: the lines by number.
    Lines(&'static [usize]),
    /// query_range with `direction=forward`.
    Forward(&'static [usize]),
    /// query_range with a `limit`.
    Limited(usize, &'static [usize]),
    /// query_range, lines rewritten by `line_format`, newest first.
    Formatted(&'static [&'static str]),
    /// Instant query at `base + 15m`: each series' labels
    /// (`name=value,...`, sorted) and value.
    Vector(&'static [(&'static str, f64)]),
    /// HTTP 400 in Loki's error shape, the message naming this.
    Error(&'static str),
}

use Expect::*;

/// The LogQL table: stream selectors over stream labels and OpenTelemetry
/// names, line filters, parsers, label filters, line_format, metric
/// queries, and errors naming the unsupported part.
pub(crate) const TABLE: &[(&str, Expect)] = &[
    (r#"{service_name="checkout"}"#, Lines(&[4, 3, 2, 1])),
    (
        r#"{service_name="checkout"} |= "order placed""#,
        Lines(&[3, 1]),
    ),
    (
        r#"{service_name="checkout"} != "order placed""#,
        Lines(&[4, 2]),
    ),
    (
        r#"{service_name="checkout"} |~ "declined|inventory""#,
        Lines(&[4, 2]),
    ),
    (
        r#"{service_name="checkout"} !~ "order (placed|x)""#,
        Lines(&[4, 2]),
    ),
    (r#"{env="prod"}"#, Lines(&[7, 6, 5, 4, 3, 2, 1])),
    (r#"{env=~"prod|staging"} |= "declined""#, Lines(&[6, 2])),
    (r#"{env!="prod", app="gateway"}"#, Lines(&[10, 9, 8])),
    (r#"{app=~"gate.*"} |= "POST""#, Lines(&[9])),
    (r#"{service_name="gateway"}"#, Lines(&[10, 9, 8])),
    (r#"{deployment_environment="prod"}"#, Lines(&[12, 11])),
    (
        r#"{service_name="checkout"} | json | level="error""#,
        Lines(&[2]),
    ),
    (
        r#"{service_name="checkout"} | json | latency_ms > 100"#,
        Lines(&[4, 2, 1]),
    ),
    (
        r#"{service_name="checkout"} | json | latency_ms >= 120 and total < 50"#,
        Lines(&[4, 1]),
    ),
    (
        r#"{service_name="checkout"} | json | order = 3 or level="warn""#,
        Lines(&[4, 3]),
    ),
    (
        r#"{service_name="checkout"} | json | msg=~"order.*""#,
        Lines(&[3, 1]),
    ),
    (
        r#"{service_name="checkout"} | json | msg!~"order.*""#,
        Lines(&[4, 2]),
    ),
    (
        r#"{service_name="checkout"} | json | line_format "{{.level}}: {{.msg}}""#,
        Formatted(&[
            "warn: slow inventory",
            "info: order placed",
            "error: payment declined",
            "info: order placed",
        ]),
    ),
    (
        r#"{service_name="payment"} | logfmt | took > 100ms"#,
        Lines(&[6, 5]),
    ),
    (
        r#"{service_name="payment"} | logfmt | amount <= 25.5 | line_format "{{.msg}} {{.amount}}""#,
        Formatted(&["charge ok 10", "charge ok 25.5"]),
    ),
    (
        r#"{service_name="payment"} | logfmt | level != "info""#,
        Lines(&[6]),
    ),
    (r#"{service_name="inventory"} | sku="B-2""#, Lines(&[12])),
    (
        r#"{service_name="inventory"} | detected_level="debug""#,
        Lines(&[11]),
    ),
    (
        r#"{service_name=~"checkout|payment"} |= "declined" | logfmt | msg="card declined""#,
        Lines(&[6]),
    ),
    (
        r#"{service_name="checkout"} | json | __error__="""#,
        Lines(&[4, 3, 2, 1]),
    ),
    (
        r#"{service_name="gateway"} | json | __error__="JSONParserErr""#,
        Lines(&[10, 9, 8]),
    ),
    (
        r#"{service_name="checkout"} | json | drop order, total | line_format "{{.order}}|{{.level}}""#,
        Formatted(&["|warn", "|info", "|error", "|info"]),
    ),
    (
        r#"{service_name="checkout"} | json | keep level | line_format "{{.msg}}{{.level}}""#,
        Formatted(&["warn", "info", "error", "info"]),
    ),
    (r#"{service_name="payment"}"#, Forward(&[5, 6, 7])),
    (r#"{env="prod"}"#, Limited(2, &[7, 6])),
    (r#"{service_name="nothing"}"#, Lines(&[])),
    (
        r#"count_over_time({service_name="checkout"}[15m])"#,
        Vector(&[("env=prod,service_name=checkout,team=shop", 4.0)]),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m]))"#,
        Vector(&[("", 7.0)]),
    ),
    (
        r#"sum by (service_name) (count_over_time({env=~".+"}[15m]))"#,
        Vector(&[
            ("service_name=checkout", 4.0),
            ("service_name=gateway", 3.0),
            ("service_name=payment", 3.0),
        ]),
    ),
    (
        r#"sum by (service_name) (rate({env="prod"}[15m]))"#,
        Vector(&[
            ("service_name=checkout", 4.0 / 900.0),
            ("service_name=payment", 3.0 / 900.0),
        ]),
    ),
    (
        r#"sum(bytes_over_time({service_name="gateway"}[15m]))"#,
        Vector(&[("", 69.0)]),
    ),
    (
        r#"sum(bytes_rate({service_name="gateway"}[15m]))"#,
        Vector(&[("", 69.0 / 900.0)]),
    ),
    (
        r#"count_over_time({service_name="checkout"} |= "order placed" [15m])"#,
        Vector(&[("env=prod,service_name=checkout,team=shop", 2.0)]),
    ),
    (
        r#"sum by (level) (count_over_time({service_name="checkout"} | json [15m]))"#,
        Vector(&[
            ("level=error", 1.0),
            ("level=info", 2.0),
            ("level=warn", 1.0),
        ]),
    ),
    (
        r#"sum(sum_over_time({service_name="checkout"} | json | unwrap latency_ms [15m]))"#,
        Vector(&[("", 1440.0)]),
    ),
    (
        r#"sum_over_time({service_name="checkout"} | json | unwrap latency_ms [15m]) by (service_name)"#,
        Vector(&[("service_name=checkout", 1440.0)]),
    ),
    (
        r#"avg_over_time({service_name="checkout"} | json | unwrap latency_ms [15m]) by (service_name)"#,
        Vector(&[("service_name=checkout", 360.0)]),
    ),
    (
        r#"max_over_time({service_name="checkout"} | json | unwrap latency_ms [15m]) by (service_name)"#,
        Vector(&[("service_name=checkout", 900.0)]),
    ),
    (
        r#"min_over_time({service_name="checkout"} | json | unwrap latency_ms [15m]) by (service_name)"#,
        Vector(&[("service_name=checkout", 80.0)]),
    ),
    (
        r#"quantile_over_time(0.5, {service_name="checkout"} | json | unwrap latency_ms [15m]) by (service_name)"#,
        Vector(&[("service_name=checkout", 230.0)]),
    ),
    (
        r#"quantile_over_time(0.99, {service_name="checkout"} | json | unwrap latency_ms [15m]) by (service_name)"#,
        Vector(&[("service_name=checkout", 883.2)]),
    ),
    (
        r#"quantile_over_time(0.9, {service_name="payment"} | logfmt | unwrap amount [15m]) by (service_name)"#,
        Vector(&[("service_name=payment", 84.7)]),
    ),
    (
        r#"sum by (service_name) (sum_over_time({service_name="payment"} | logfmt | unwrap amount [15m]))"#,
        Vector(&[("service_name=payment", 135.0)]),
    ),
    (
        r#"topk(1, sum by (service_name) (count_over_time({env=~".+"}[15m])))"#,
        Vector(&[("service_name=checkout", 4.0)]),
    ),
    (
        r#"bottomk(2, sum by (service_name) (count_over_time({env=~".+"}[15m])))"#,
        Vector(&[("service_name=gateway", 3.0), ("service_name=payment", 3.0)]),
    ),
    (
        r#"max(sum by (service_name) (count_over_time({env=~".+"}[15m])))"#,
        Vector(&[("", 4.0)]),
    ),
    (
        r#"min(sum by (service_name) (count_over_time({env=~".+"}[15m])))"#,
        Vector(&[("", 3.0)]),
    ),
    (
        r#"avg(sum by (service_name) (count_over_time({env=~".+"}[15m])))"#,
        Vector(&[("", 10.0 / 3.0)]),
    ),
    (
        r#"count(sum by (service_name) (count_over_time({env=~".+"}[15m])))"#,
        Vector(&[("", 3.0)]),
    ),
    (
        r#"sum without (team) (count_over_time({service_name="checkout"}[15m]))"#,
        Vector(&[("env=prod,service_name=checkout", 4.0)]),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m])) * 2"#,
        Vector(&[("", 14.0)]),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m])) / sum(count_over_time({env=~".+"}[15m]))"#,
        Vector(&[("", 0.7)]),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m])) - 1"#,
        Vector(&[("", 6.0)]),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m])) % 4"#,
        Vector(&[("", 3.0)]),
    ),
    ("vector(1)+vector(1)", Vector(&[("", 2.0)])),
    (
        r#"1 + sum(count_over_time({env="staging"}[15m]))"#,
        Vector(&[("", 4.0)]),
    ),
    (
        r#"sum by (service_name) (count_over_time({env=~".+"} |= "declined" [15m]))"#,
        Vector(&[
            ("service_name=checkout", 1.0),
            ("service_name=payment", 1.0),
        ]),
    ),
    (
        r#"sum(count_over_time({service_name="checkout"} | json | latency_ms > 200 [15m]))"#,
        Vector(&[("", 2.0)]),
    ),
    (
        r#"sum by (sku) (count_over_time({service_name="inventory"}[15m]))"#,
        Vector(&[("sku=A-1", 1.0), ("sku=B-2", 1.0)]),
    ),
    (
        r#"sum by (detected_level) (count_over_time({service_name="inventory"}[15m]))"#,
        Vector(&[("detected_level=debug", 1.0), ("detected_level=warn", 1.0)]),
    ),
    (
        r#"sum by (deployment_environment) (count_over_time({deployment_environment=~"p.*"}[15m]))"#,
        Vector(&[("deployment_environment=prod", 2.0)]),
    ),
    (
        r#"sum by (service_name) (count_over_time({env=~".+"} | logfmt | level="error" [15m]))"#,
        Vector(&[("service_name=payment", 1.0)]),
    ),
    (
        r#"sum by (service_name) (count_over_time({service_name=~"check.*|pay.*"}[15m]))"#,
        Vector(&[
            ("service_name=checkout", 4.0),
            ("service_name=payment", 3.0),
        ]),
    ),
    (
        r#"sum by (service_name) (rate({service_name="gateway"} | drop __error__ [15m]))"#,
        Vector(&[("service_name=gateway", 3.0 / 900.0)]),
    ),
    (
        r#"sum(count_over_time({service_name=~".+"}[15m]))"#,
        Vector(&[("", 12.0)]),
    ),
    (
        r#"sum by (detected_level) (count_over_time({service_name=~".+", service_name!="checkout"}[15m]))"#,
        Vector(&[
            ("", 6.0),
            ("detected_level=debug", 1.0),
            ("detected_level=warn", 1.0),
        ]),
    ),
    (
        r#"count_over_time({service_name="checkout"}[1m])"#,
        Vector(&[]),
    ),
    (
        r#"sum(count_over_time({service_name="nothing"}[15m]))"#,
        Vector(&[]),
    ),
    (
        r#"sum by (app) (count_over_time({app="gateway"} | json | __error__="" [15m]))"#,
        Vector(&[]),
    ),
    (
        r#"{service_name="checkout"} | pattern "<a> <b>""#,
        Error("`pattern` stage"),
    ),
    (
        r#"{service_name="checkout"} | regexp "(?P<x>.*)""#,
        Error("`regexp` stage"),
    ),
    (
        r#"{service_name="checkout"} | label_format a=b"#,
        Error("`label_format` stage"),
    ),
    (
        r#"{service_name="checkout"} | unpack"#,
        Error("`unpack` stage"),
    ),
    (
        r#"{service_name="checkout"} | decolorize"#,
        Error("`decolorize` stage"),
    ),
    (
        r#"stddev_over_time({service_name="checkout"} | json | unwrap latency_ms [15m])"#,
        Error("`stddev_over_time`"),
    ),
    (
        r#"absent_over_time({service_name="checkout"}[15m])"#,
        Error("`absent_over_time`"),
    ),
    (
        r#"count_over_time({service_name="checkout"}[15m] offset 1h)"#,
        Error("`offset` modifier"),
    ),
    (
        r#"{service_name="checkout"} | line_format "{{ .msg | ToUpper }}""#,
        Error("in line_format"),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m])) and vector(1)"#,
        Error("set operator `and`"),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m])) unless vector(1)"#,
        Error("set operator `unless`"),
    ),
    (
        r#"sum(count_over_time({env="prod"}[15m])) > 1"#,
        Error("comparison operators"),
    ),
    (
        r#"{service_name="checkout"} |= "x" or "y""#,
        Error("`or` between line filters"),
    ),
    (
        r#"max_over_time({service_name="checkout"} | json | unwrap duration(latency_ms) [15m])"#,
        Error("unwrap conversion functions"),
    ),
    (
        r#"{service_name="checkout"} | json | drop level="x""#,
        Error("drop with label matchers"),
    ),
    (
        r#"{service_name="checkout""#,
        Error("parse error at line 1, col 25"),
    ),
    (
        r#"{service_name=~".*"}"#,
        Error("at least one regexp or equality matcher"),
    ),
    (
        r#"sum_over_time({service_name="checkout"}[15m])"#,
        Error("sum_over_time without unwrap"),
    ),
    (
        r#"rate({service_name="checkout"} | json | unwrap latency_ms [15m])"#,
        Error("rate with unwrap"),
    ),
    (
        r#"{service_name="checkout"}[5m]"#,
        Error("needs a range function"),
    ),
    (
        r#"{service_name="checkout"} | nonsense"#,
        Error(r#"IDENTIFIER "nonsense""#),
    ),
    (
        r#"{service_name=~"("}"#,
        Error("invalid regular expression"),
    ),
];

/// `name=value,...` of a metric's labels, sorted (serde_json keeps them so).
fn label_text(metric: &Value) -> String {
    metric
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lines of a streams result, newest first (or oldest, forward).
fn lines_of(answer: &Value, forward: bool) -> Vec<(u64, String)> {
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["data"]["resultType"], "streams", "{answer}");
    let mut lines: Vec<(u64, String)> = answer["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|stream| {
            assert!(stream["stream"].is_object(), "{stream}");
            stream["values"].as_array().unwrap().clone()
        })
        .map(|value| {
            let time = value[0].as_str().expect("times are strings of nanoseconds");
            (
                time.parse().unwrap(),
                value[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    lines.sort_by_key(|(time, _)| *time);
    if !forward {
        lines.reverse();
    }
    lines
}

async fn post_json(daemon: &Strand, path: &str, body: &Value, token: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().post(daemon.url(path)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Pushes the data set and waits until all of it is searchable.
async fn daemon_with_data_set(dir: &std::path::Path) -> (Strand, u64) {
    let daemon = Strand::start(&dir.join("data"), &[]).await;
    let base = (strand_now() - 30 * MINUTE) / SECOND * SECOND;
    assert_eq!(
        post_json(&daemon, "/loki/api/v1/push", &data_set(base), None).await,
        204
    );
    let range = [
        (
            "query",
            r#"sum(count_over_time({service_name=~".+"}[15m]))"#.to_string(),
        ),
        ("time", (base + 15 * MINUTE).to_string()),
    ];
    eventually(Duration::from_secs(10), || async {
        let params: Vec<(&str, &str)> = range.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (_, answer) = daemon.get_json_query("/loki/api/v1/query", &params).await;
        (answer["data"]["result"][0]["value"][1] == "12").then_some(())
    })
    .await
    .expect("the twelve lines become searchable");
    (daemon, base)
}

fn strand_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logql_table_over_a_fixed_data_set() {
    assert!(TABLE.len() >= 60, "{} queries", TABLE.len());
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base) = daemon_with_data_set(dir.path()).await;
    let start = base.to_string();
    let end = (base + 15 * MINUTE).to_string();
    let mut failures = Vec::new();
    for (query, expect) in TABLE {
        let mut params = vec![
            ("query", *query),
            ("start", start.as_str()),
            ("end", end.as_str()),
        ];
        let limit;
        let (path, forward) = match expect {
            Vector(_) => {
                params = vec![("query", *query), ("time", end.as_str())];
                ("/loki/api/v1/query", false)
            }
            Forward(_) => {
                params.push(("direction", "forward"));
                ("/loki/api/v1/query_range", true)
            }
            Limited(n, _) => {
                limit = n.to_string();
                params.push(("limit", limit.as_str()));
                ("/loki/api/v1/query_range", false)
            }
            _ => ("/loki/api/v1/query_range", false),
        };
        let (status, answer) = daemon.get_json_query(path, &params).await;
        let problem = match expect {
            Lines(numbers) | Forward(numbers) | Limited(_, numbers) => {
                let wanted: Vec<&str> = numbers.iter().map(|k| LINES[k - 1]).collect();
                let got: Vec<String> = if status == 200 {
                    lines_of(&answer, forward)
                        .into_iter()
                        .map(|(_, l)| l)
                        .collect()
                } else {
                    vec![format!("HTTP {status}: {answer}")]
                };
                (got != wanted).then(|| format!("lines {got:?}, wanted {wanted:?}"))
            }
            Formatted(wanted) => {
                let got: Vec<String> = if status == 200 {
                    lines_of(&answer, false)
                        .into_iter()
                        .map(|(_, l)| l)
                        .collect()
                } else {
                    vec![format!("HTTP {status}: {answer}")]
                };
                (got != *wanted).then(|| format!("lines {got:?}, wanted {wanted:?}"))
            }
            Vector(wanted) => {
                if status != 200 || answer["data"]["resultType"] != "vector" {
                    Some(format!("HTTP {status}: {answer}"))
                } else {
                    let mut got: Vec<(String, f64)> = answer["data"]["result"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|sample| {
                            let value = &sample["value"];
                            assert_eq!(
                                value[0].as_f64().unwrap(),
                                (base + 15 * MINUTE) as f64 / 1e9,
                                "{answer}"
                            );
                            (
                                label_text(&sample["metric"]),
                                value[1].as_str().unwrap().parse::<f64>().unwrap(),
                            )
                        })
                        .collect();
                    got.sort_by(|a, b| a.0.cmp(&b.0));
                    let same = got.len() == wanted.len()
                        && got.iter().zip(wanted.iter()).all(|(g, w)| {
                            g.0 == w.0 && (g.1 - w.1).abs() <= 1e-9 * w.1.abs().max(1.0)
                        });
                    (!same).then(|| format!("vector {got:?}, wanted {wanted:?}"))
                }
            }
            Error(part) => {
                let message = answer["message"].as_str().unwrap_or("");
                let shaped = status == 400
                    && answer["status"] == "error"
                    && answer["code"] == 400
                    && message.contains(part);
                (!shaped).then(|| format!("HTTP {status} {answer}, wanted 400 naming {part:?}"))
            }
        };
        if let Some(problem) = problem {
            failures.push(format!("{query}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The requests of Grafana's Loki data source, as its backend
/// (`pkg/tsdb/loki`: `makeDataRequest`, the health check's
/// `vector(1)+vector(1)` instant query from 1s to 4s) and its language
/// provider (`labels`, `label/<name>/values`, `series` with `match[]`,
/// `index/stats`, `index/volume`) send them, each answer checked field by
/// field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_data_source_requests_get_loki_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, base) = daemon_with_data_set(dir.path()).await;
    let start = base.to_string();
    let end = (base + 15 * MINUTE).to_string();

    // Health check: instant query at the range's end, 4 s sent as
    // nanoseconds ("4000000000"); Loki reads a number of at most ten digits
    // as seconds, and Grafana checks only the value.
    let (status, health) = daemon
        .get_json_query(
            "/loki/api/v1/query",
            &[
                ("direction", "backward"),
                ("query", "vector(1)+vector(1)"),
                ("time", "4000000000"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "success");
    assert_eq!(health["data"]["resultType"], "vector");
    assert_eq!(
        health["data"]["result"],
        json!([{"metric": {}, "value": [4_000_000_000.0, "2"]}])
    );
    assert!(health["data"]["stats"]["summary"].is_object(), "{health}");

    // A logs query as Explore sends it (range, limit, step in ms).
    let (status, logs) = daemon
        .get_json_query(
            "/loki/api/v1/query_range",
            &[
                ("direction", "backward"),
                ("limit", "1000"),
                ("query", r#"{service_name="inventory"}"#),
                ("start", &start),
                ("end", &end),
                ("step", "1000ms"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{logs}");
    assert_eq!(logs["status"], "success");
    assert_eq!(logs["data"]["resultType"], "streams");
    let result = logs["data"]["result"].as_array().unwrap();
    assert_eq!(
        result.len(),
        2,
        "one stream per structured metadata: {logs}"
    );
    let newest = &result[0];
    assert_eq!(
        newest["stream"],
        json!({
            "deployment_environment": "prod",
            "detected_level": "warn",
            "level": "warn",
            "service_name": "inventory",
            "sku": "B-2",
        })
    );
    assert_eq!(
        newest["values"],
        json!([[(base + 12 * MINUTE).to_string(), "out of stock"]])
    );
    let summary = &logs["data"]["stats"]["summary"];
    assert_eq!(summary["totalEntriesReturned"], 2);
    // The index found the service's two records; only they were read.
    assert_eq!(summary["totalLinesProcessed"], 2, "{summary}");
    assert_eq!(
        summary["totalBytesProcessed"],
        LINES[10].len() + LINES[11].len(),
        "{summary}"
    );
    for field in [
        "bytesProcessedPerSecond",
        "linesProcessedPerSecond",
        "totalBytesProcessed",
        "totalLinesProcessed",
        "execTime",
    ] {
        assert!(summary[field].is_number(), "{field}: {summary}");
    }

    // `end` is exclusive for lines, as Loki's: the line logged at
    // exactly `end` is left out.
    let before_fourth = (base + 4 * MINUTE).to_string();
    let (_, ending) = daemon
        .get_json_query(
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{service_name="checkout"}"#),
                ("start", &start),
                ("end", &before_fourth),
            ],
        )
        .await;
    let texts: Vec<String> = lines_of(&ending, false)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(texts, [LINES[2], LINES[1], LINES[0]]);

    // The logs volume (supplementary query): a metric query_range.
    let (status, volume) = daemon
        .get_json_query(
            "/loki/api/v1/query_range",
            &[
                ("direction", "backward"),
                (
                    "query",
                    r#"sum by (level, detected_level) (count_over_time({service_name="inventory"} | drop __error__[60s]))"#,
                ),
                ("start", &start),
                ("end", &end),
                ("step", "60000ms"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{volume}");
    assert_eq!(volume["data"]["resultType"], "matrix");
    assert_eq!(volume["data"]["stats"]["summary"]["totalLinesProcessed"], 2);
    assert_eq!(
        volume["data"]["result"],
        json!([
            {"metric": {"detected_level": "debug", "level": "debug"},
             "values": [[(base + 11 * MINUTE) as f64 / 1e9, "1"]]},
            {"metric": {"detected_level": "warn", "level": "warn"},
             "values": [[(base + 12 * MINUTE) as f64 / 1e9, "1"]]},
        ])
    );

    // Labels, label values (with and without a selector), series.
    let (status, labels) = daemon
        .get_json_query("/loki/api/v1/labels", &[("start", &start), ("end", &end)])
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        labels,
        json!({"status": "success", "data": ["app", "deployment_environment", "env", "service_name", "team"]})
    );
    let (_, values) = daemon
        .get_json_query(
            "/loki/api/v1/label/service_name/values",
            &[("start", &start), ("end", &end)],
        )
        .await;
    assert_eq!(
        values,
        json!({"status": "success", "data": ["checkout", "gateway", "inventory", "payment"]})
    );
    let (_, values) = daemon
        .get_json_query(
            "/loki/api/v1/label/service_name/values",
            &[
                ("start", &start),
                ("end", &end),
                ("query", r#"{env="prod"}"#),
            ],
        )
        .await;
    assert_eq!(values["data"], json!(["checkout", "payment"]));
    let (status, series) = daemon
        .get_json_query(
            "/loki/api/v1/series",
            &[
                ("match[]", r#"{env="prod"}"#),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        series,
        json!({"status": "success", "data": [
            {"env": "prod", "service_name": "checkout", "team": "shop"},
            {"env": "prod", "service_name": "payment"},
        ]})
    );

    // index/stats, unwrapped as Loki answers it.
    let (status, stats) = daemon
        .get_json_query(
            "/loki/api/v1/index/stats",
            &[
                ("query", r#"{service_name="checkout"}"#),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await;
    assert_eq!(status, 200);
    let bytes: usize = LINES[..4].iter().map(|l| l.len()).sum();
    assert_eq!(stats["streams"], 1, "{stats}");
    assert_eq!(stats["entries"], 4, "{stats}");
    assert_eq!(stats["bytes"], bytes, "{stats}");
    assert!(stats["chunks"].as_u64().unwrap() >= 1, "{stats}");

    // index/volume as the volume panel asks for it.
    let (status, volume) = daemon
        .get_json_query(
            "/loki/api/v1/index/volume",
            &[
                ("query", r#"{service_name="checkout"}"#),
                ("start", &start),
                ("end", &end),
                ("limit", "5000"),
                ("aggregateBy", "series"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{volume}");
    assert_eq!(
        volume["data"],
        json!({"resultType": "vector", "result": [
            {"metric": {"service_name": "checkout"},
             "value": [(base + 15 * MINUTE) as f64 / 1e9, bytes.to_string()]}
        ], "stats": volume["data"]["stats"]})
    );

    // Errors Grafana shows: a log query as an instant query, a bad step.
    let (status, error) = daemon
        .get_json_query(
            "/loki/api/v1/query",
            &[("query", r#"{service_name="checkout"}"#), ("time", &end)],
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(error["status"], "error");
    assert!(
        error["message"].as_str().unwrap().contains("instant query"),
        "{error}"
    );
    let (status, error) = daemon
        .get_json_query(
            "/loki/api/v1/query_range",
            &[
                ("query", r#"count_over_time({service_name="checkout"}[1m])"#),
                ("start", "0"),
                ("end", &end),
                ("step", "1ms"),
            ],
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("maximum resolution"),
        "{error}"
    );
}

/// `logproto.PushRequest` and friends, as Promtail and Alloy encode them.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    streams: Vec<StreamAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StreamAdapter {
    #[prost(string, tag = "1")]
    labels: String,
    #[prost(message, repeated, tag = "2")]
    entries: Vec<EntryAdapter>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    timestamp: Option<ProtoTimestamp>,
    #[prost(string, tag = "2")]
    line: String,
    #[prost(message, repeated, tag = "3")]
    structured_metadata: Vec<LabelPair>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ProtoTimestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LabelPair {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// A protobuf push of `count` entries of the stream `labels`, one a second
/// up to `last` (unix nanoseconds), each with a `trace_id` as structured
/// metadata; not yet snappy-compressed.
pub(crate) fn protobuf_push(labels: &str, count: u64, last: u64) -> Vec<u8> {
    let entries: Vec<EntryAdapter> = (0..count)
        .map(|i| {
            let time = last - (count - 1 - i) * SECOND;
            EntryAdapter {
                timestamp: Some(ProtoTimestamp {
                    seconds: (time / SECOND) as i64,
                    nanos: (time % SECOND) as i32,
                }),
                line: format!("job {i} done"),
                structured_metadata: vec![LabelPair {
                    name: "trace_id".into(),
                    value: format!("t{i}"),
                }],
            }
        })
        .collect();
    PushRequest {
        streams: vec![StreamAdapter {
            labels: labels.into(),
            entries,
        }],
    }
    .encode_to_vec()
}

/// A snappy-compressed protobuf push with tokens: only the ingest token may
/// push, and the read token reads every record once, with its structured
/// metadata and level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_push_with_tokens_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = Strand::start(&dir.path().join("data"), &TOKEN_FLAGS).await;
    daemon.set_read_token(READ);
    let now = strand_now();
    let request = protobuf_push(
        r#"{job="batch", level="warn", cluster="eu-1"}"#,
        50,
        now - 11 * SECOND,
    );
    let body = snap::raw::Encoder::new().compress_vec(&request).unwrap();
    let push = |token: &'static str| {
        reqwest::Client::new()
            .post(daemon.url("/loki/api/v1/push"))
            .header("content-type", "application/x-protobuf")
            .bearer_auth(token)
            .body(body.clone())
            .send()
    };
    assert_eq!(push(READ).await.unwrap().status(), 403);
    assert_eq!(push(INGEST).await.unwrap().status(), 204);
    // A sender that says `Content-Encoding: snappy` is read the same way.
    let said = snap::raw::Encoder::new()
        .compress_vec(&protobuf_push(r#"{job="said"}"#, 1, now - 11 * SECOND))
        .unwrap();
    let status = reqwest::Client::new()
        .post(daemon.url("/loki/api/v1/push"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .bearer_auth(INGEST)
        .body(said)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    let unauthenticated = reqwest::get(daemon.url("/loki/api/v1/labels"))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    let start = (now - 120 * SECOND).to_string();
    let end = now.to_string();
    let lines = eventually(Duration::from_secs(10), || async {
        let (status, answer) = daemon
            .get_json_query(
                "/loki/api/v1/query_range",
                &[
                    (
                        "query",
                        r#"{service_name="batch", cluster="eu-1"} |= "done""#,
                    ),
                    ("start", &start),
                    ("end", &end),
                    ("limit", "1000"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        let lines = lines_of(&answer, true);
        (lines.len() >= 50).then_some((lines, answer))
    })
    .await
    .expect("the 50 entries become searchable");
    let (lines, answer) = lines;
    let texts: Vec<String> = lines.iter().map(|(_, l)| l.clone()).collect();
    let wanted: Vec<String> = (0..50).map(|i| format!("job {i} done")).collect();
    assert_eq!(texts, wanted, "each entry once, in time order");
    let stream = &answer["data"]["result"][0]["stream"];
    assert_eq!(stream["job"], "batch");
    let said = eventually(Duration::from_secs(10), || async {
        let (_, said) = daemon
            .get_json_query(
                "/loki/api/v1/query_range",
                &[
                    ("query", r#"{job="said"}"#),
                    ("start", &start),
                    ("end", &end),
                ],
            )
            .await;
        let lines = lines_of(&said, true);
        (!lines.is_empty()).then_some(lines)
    })
    .await
    .expect("the push that said Content-Encoding: snappy is stored");
    assert_eq!(said.len(), 1);
    assert_eq!(stream["level"], "warn");
    assert_eq!(stream["detected_level"], "warn");
    assert!(stream["trace_id"].as_str().unwrap().starts_with('t'));
}

/// The venv's Python with python-logging-loki, from `STRAND_TEST_PYTHON`
/// or scripts/test's `target/py`; missing, the test fails saying how to
/// get it.
fn python_with_logging_loki() -> PathBuf {
    let python = std::env::var_os("STRAND_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python")
        });
    let importable = Command::new(&python)
        .args(["-c", "import logging_loki"])
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        importable,
        "this test needs python-logging-loki at {}: python3 -m venv target/py && \
         target/py/bin/pip install 'python-logging-loki==0.3.1' (scripts/test installs \
         everything the tests need), or set STRAND_TEST_PYTHON",
        python.display()
    );
    python
}

/// python-logging-loki, unchanged, pushes 41 records one request each;
/// every one is found once, with the handler's labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_logging_loki_ships_every_record_once() {
    let python = python_with_logging_loki();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let started = strand_now();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures/loki_client.py");
    let url = daemon.url("");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args([&url, "40"])
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("the script prints JSON");
    assert_eq!(report, json!({"logged": 41, "failures": []}));

    let start = (started - 60 * SECOND).to_string();
    let end = (strand_now() + 60 * SECOND).to_string();
    let answer = eventually(Duration::from_secs(10), || async {
        let (_, answer) = daemon
            .get_json_query(
                "/loki/api/v1/query_range",
                &[
                    ("query", r#"{service_name="pyshop"}"#),
                    ("start", &start),
                    ("end", &end),
                    ("limit", "1000"),
                ],
            )
            .await;
        (lines_of(&answer, true).len() >= 41).then_some(answer)
    })
    .await
    .expect("the 41 records become searchable");
    let mut lines: Vec<String> = lines_of(&answer, true)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    lines.sort();
    let mut wanted: Vec<String> = (0..40).map(|i| format!("order {i} placed")).collect();
    wanted.push("payment failed for order 40".into());
    wanted.sort();
    assert_eq!(lines, wanted, "every record exactly once");

    let (_, errors) = daemon
        .get_json_query(
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{service_name="pyshop", severity="error"}"#),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await;
    let stream = &errors["data"]["result"][0]["stream"];
    assert_eq!(
        *stream,
        json!({"detected_level": "error", "env": "test", "logger": "pyshop.orders",
               "service_name": "pyshop", "severity": "error"})
    );
    let (_, count) = daemon
        .get_json_query(
            "/loki/api/v1/query",
            &[
                (
                    "query",
                    r#"sum by (severity) (count_over_time({service_name="pyshop"}[10m]))"#,
                ),
                ("time", &end),
            ],
        )
        .await;
    let counts: Vec<(Value, Value)> = count["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| (sample["metric"].clone(), sample["value"][1].clone()))
        .collect();
    assert_eq!(
        counts,
        [
            (json!({"severity": "error"}), json!("1")),
            (json!({"severity": "info"}), json!("40")),
        ]
    );
}

/// `tail` over a WebSocket, as Grafana's backend dials it (only `query`):
/// first the newest lines of the last hour, then lines pushed after it
/// opens, as `{"streams": [...]}` frames, only those the query selects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_new_lines_over_a_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let now = strand_now();
    let earlier = json!({"streams": [{"stream": {"service_name": "tailed"}, "values": [
        [(now - MINUTE).to_string(), "keep the old one"]]}]});
    assert_eq!(
        post_json(&daemon, "/loki/api/v1/push", &earlier, None).await,
        204
    );
    let (start, end) = ((now - HOUR).to_string(), (now + MINUTE).to_string());
    eventually(Duration::from_secs(10), || async {
        let (_, answer) = daemon
            .get_json_query(
                "/loki/api/v1/query_range",
                &[
                    ("query", r#"{service_name="tailed"}"#),
                    ("start", &start),
                    ("end", &end),
                ],
            )
            .await;
        (!lines_of(&answer, true).is_empty()).then_some(())
    })
    .await
    .expect("the earlier line is searchable");

    let url = daemon
        .url("/loki/api/v1/tail?query=")
        .replacen("http", "ws", 1)
        + &strand_testkit::urlencode(r#"{service_name="tailed"} |= "keep""#);
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("tail opens");
    let mut next_frame = async || -> Value {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within the deadline")
            .expect("the socket stays open")
            .expect("a message");
        serde_json::from_str(frame.to_text().unwrap()).unwrap()
    };
    assert_eq!(
        next_frame().await["streams"],
        json!([{"stream": {"service_name": "tailed"},
                "values": [[(now - MINUTE).to_string(), "keep the old one"]]}])
    );
    let push = json!({"streams": [
        {"stream": {"service_name": "tailed"}, "values": [
            [now.to_string(), "keep me"], [(now + 1).to_string(), "drop me"]]},
        {"stream": {"service_name": "other"}, "values": [[now.to_string(), "keep other"]]},
    ]});
    assert_eq!(
        post_json(&daemon, "/loki/api/v1/push", &push, None).await,
        204
    );
    assert_eq!(
        next_frame().await["streams"],
        json!([{"stream": {"service_name": "tailed"}, "values": [[now.to_string(), "keep me"]]}])
    );
}

/// OTLP logs answer Loki 3's label names: `service.name` is
/// `service_name`, resource attributes have `.` and `-` as `_`, record
/// attributes are structured metadata and the severity `detected_level`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_logs_answer_loki_label_names() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Strand::start(&dir.path().join("data"), &[]).await;
    let now = strand_now();
    let attribute = |key: &str, value: &str| json!({"key": key, "value": {"stringValue": value}});
    let export = json!({"resourceLogs": [{
        "resource": {"attributes": [
            attribute("service.name", "otelsvc"),
            attribute("deployment.environment", "prod"),
            attribute("k8s.pod-name", "p-1"),
        ]},
        "scopeLogs": [{"logRecords": [{
            "timeUnixNano": now.to_string(),
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b174",
            "severityNumber": 17,
            "severityText": "ERROR",
            "body": {"stringValue": "checkout failed"},
            "attributes": [attribute("http.route", "/cart")],
        }]}],
    }]});
    let status = reqwest::Client::new()
        .post(daemon.otlp_http_url("/v1/logs"))
        .json(&export)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let start = (now - MINUTE).to_string();
    let end = (now + MINUTE).to_string();
    let answer = eventually(Duration::from_secs(10), || async {
        let (_, answer) = daemon
            .get_json_query(
                "/loki/api/v1/query_range",
                &[
                    (
                        "query",
                        r#"{service_name="otelsvc", deployment_environment="prod", k8s_pod_name=~"p-.*"}"#,
                    ),
                    ("start", &start),
                    ("end", &end),
                ],
            )
            .await;
        (!answer["data"]["result"].as_array()?.is_empty()).then_some(answer)
    })
    .await
    .expect("the OTLP record is found by Loki label names");
    assert_eq!(
        answer["data"]["result"],
        json!([{
            "stream": {
                "deployment_environment": "prod",
                "detected_level": "error",
                "http_route": "/cart",
                "k8s_pod_name": "p-1",
                "service_name": "otelsvc",
                "span_id": "eee19b7ec3c1b174",
                "trace_id": "5b8efff798038103d269b633813fc60c",
            },
            "values": [[now.to_string(), "checkout failed"]],
        }])
    );
    let (_, labels) = daemon
        .get_json_query("/loki/api/v1/labels", &[("start", &start), ("end", &end)])
        .await;
    assert_eq!(
        labels["data"],
        json!(["deployment_environment", "k8s_pod_name", "service_name"])
    );
    // Grafana's trace-to-logs query (the Tempo section of the README).
    let (_, linked) = daemon
        .get_json_query(
            "/loki/api/v1/query_range",
            &[
                (
                    "query",
                    r#"{service_name="otelsvc"} | trace_id="5b8efff798038103d269b633813fc60c""#,
                ),
                ("start", &start),
                ("end", &end),
            ],
        )
        .await;
    assert_eq!(lines_of(&linked, false).len(), 1, "{linked}");
}
