//! The Alerts view in headless Chromium: the nav badge counts firing
//! alerts, the view lists firing and pending alerts (labels, annotations)
//! before the rules per group (a broken rule shows its error), filters by
//! text and state, and each alert links to where an SRE goes next: the
//! trace search of its service, the logs a `count_logs` rule counts, and
//! its expression in the metrics explorer. The parsing of `count_logs` out
//! of an expression is also checked on its corners through a page
//! evaluation.

use std::time::Duration;

use serde_json::{Value, json};
use strand_testkit::browser::{
    Client, click, click_shown, goto, in_browser, select, shown, snapshot, type_into, wait_for,
};
use strand_testkit::{Strand, eventually};

use crate::rules::{keep_writing, write_rules};
use crate::support::now_ms;
use crate::support::remote_write::{request, series, write_ok};
use crate::support::shop_fixture::send_everything;

/// `TestDown` fires on `test_up` (job `a` is 0), `TestDownLong` waits an
/// hour on the same, `PaymentErrors` fires on the shop's failed payment
/// (span metrics, with a `service_name` label), `CardDeclines` on its
/// "card declined" log line (`count_logs`, with a `service` label), `Broken` fails at each
/// evaluation (two series on each side of a one-to-one match) and
/// `KeepsFiring` fires once job `c` is 0 and keeps firing after it is not.
const RULES: &str = r#"
groups:
  - name: shop
    interval: 1s
    rules:
      - record: job:test_up:sum
        expr: sum by (job) (test_up)
      - alert: TestDown
        expr: test_up == 0
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.job }} is down"
          description: "test_up of job {{ $labels.job }} is {{ $value }}"
      - alert: TestDownLong
        expr: test_up == 0
        for: 1h
      - alert: Broken
        expr: test_up * on() test_up
      - alert: KeepsFiring
        expr: test_up{job="c"} == 0
        keep_firing_for: 1h
  - name: traces
    interval: 1s
    rules:
      - alert: PaymentErrors
        expr: sum by (service_name) (traces_span_metrics_calls_total{status_code="STATUS_CODE_ERROR"}) > 0
        annotations:
          summary: "{{ $labels.service_name }} fails requests"
  - name: logs
    interval: 1s
    rules:
      - alert: CardDeclines
        expr: count_logs("declined", "1h", "service") > 0
        annotations:
          summary: "{{ $labels.service }} declines cards"
"#;

/// The alert cards in the order shown.
const CARDS: &str = "return [...document.querySelectorAll('.alert-card')].map(c => ({
        name: c.querySelector('.alert-name').innerText,
        state: c.querySelector('.state-chip').innerText,
        labels: [...c.querySelectorAll('.label-chip')].map(l => l.innerText),
        summary: c.querySelector('.summary')?.innerText || '' }))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_view_shows_firing_alerts_and_rule_errors_and_follows_their_links() {
    let dir = tempfile::tempdir().unwrap();
    let rules = write_rules(dir.path(), RULES);
    let daemon = Strand::start(
        &dir.path().join("data"),
        &["--rules", &rules, "--derived-metrics-interval", "1s"],
    )
    .await;
    let writer = keep_writing(&daemon);
    let sent = send_everything(&daemon).await;
    wait_firing(&daemon, 3).await;
    let empty = Strand::start(&dir.path().join("empty"), &[]).await;
    let (base, empty_base) = (daemon.url("/"), empty.url("/"));
    let daemon = &daemon;
    in_browser("ui-alerts", |client| async move {
        // The nav badge counts the firing alerts from any view.
        goto(&client, &format!("{base}#/traces")).await?;
        wait_for(
            &client,
            "nav badge",
            "const b = document.querySelector('[data-nav=alerts] .nav-badge');
             return b && !b.hidden ? { text: b.innerText, label: b.parentElement.getAttribute('aria-label') } : null",
            |v| v["text"] == "3" && v["label"] == "Alerts, 3 firing alerts",
        )
        .await?;

        // Firing alerts first, then the pending one; labels as chips
        // (alertname is the title), the summary prominent.
        click_shown(&client, "[data-nav=alerts]").await?;
        let firing = |v: &Value| {
            v.as_array().is_some_and(|cards| {
                cards.len() == 4
                    && cards[3]["name"] == "TestDownLong"
                    && cards[3]["state"] == "pending"
                    && cards.iter().any(|c| {
                        *c == json!({ "name": "TestDown", "state": "firing",
                            "labels": ["job=a", "severity=page"], "summary": "a is down" })
                    })
                    && cards.iter().any(|c| {
                        *c == json!({ "name": "PaymentErrors", "state": "firing",
                            "labels": ["service_name=payment"], "summary": "payment fails requests" })
                    })
            })
        };
        wait_for(&client, "alerts", CARDS, firing).await?;
        snapshot(&client, "alerts").await;
        let description = client
            .execute(
                "return [...document.querySelectorAll('.alert-card')]
                   .find(c => c.querySelector('.alert-name').innerText === 'TestDown')
                   .querySelector('.description').innerText",
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        if description != "test_up of job a is 0" {
            return Err(format!("description: {description}"));
        }

        // The rules per group: the broken one says why, in red.
        wait_for(
            &client,
            "rules",
            "const error = document.querySelector('.rule[data-name=Broken] .rule-error');
             const probe = document.body.appendChild(document.createElement('span'));
             probe.style.color = 'var(--error)';
             const red = getComputedStyle(probe).color;
             probe.remove();
             return { groups: [...document.querySelectorAll('.rule-group h2')].map(g => g.innerText),
                      rules: [...document.querySelectorAll('.rule')].map(r => r.dataset.name),
                      error: error?.innerText || '',
                      red: !!error && getComputedStyle(error).color === red }",
            |v| {
                v["groups"] == json!(["shop", "traces", "logs"])
                    && v["rules"]
                        == json!(["job:test_up:sum", "TestDown", "TestDownLong", "Broken", "KeepsFiring", "PaymentErrors", "CardDeclines"])
                    && v["error"].as_str().is_some_and(|e| e.contains("many-to-many"))
                    && v["red"] == true
            },
        )
        .await?;

        // Filters: text over names and labels, and the state.
        type_into(&client, ".alerts-filter input[name=filter]", "service_name=payment").await?;
        wait_for(&client, "text filter", CARDS, |v| {
            v.as_array().is_some_and(|c| c.len() == 1 && c[0]["name"] == "PaymentErrors")
        })
        .await?;
        type_into(&client, ".alerts-filter input[name=filter]", "").await?;
        select(&client, ".alerts-filter select[name=state]", "pending").await?;
        wait_for(&client, "state filter", CARDS, |v| {
            v.as_array().is_some_and(|c| c.len() == 1 && c[0]["name"] == "TestDownLong")
        })
        .await?;
        select(&client, ".alerts-filter select[name=state]", "").await?;
        wait_for(&client, "all alerts again", CARDS, firing).await?;

        // The span-metric alert opens the trace search of its service,
        // errors only, where the failed shop trace is.
        follow(&client, "PaymentErrors", "to-traces").await?;
        let id = sent.trace_id.clone();
        wait_for(
            &client,
            "the payment service's traces",
            "return { hash: location.hash, service: document.querySelector('#service')?.value,
                      tags: document.querySelector('input[name=tags]')?.value,
                      traces: [...document.querySelectorAll('.trace-item')].map(t => t.dataset.traceId) }",
            |v| {
                v["hash"].as_str().is_some_and(|h| h.starts_with("#/traces?") && h.contains("window="))
                    && v["service"] == "payment"
                    && v["tags"] == "error=true"
                    && v["traces"] == json!([id])
            },
        )
        .await?;

        // The log-based alert opens the log explorer on the log query it
        // counts, narrowed to its service, where the declined card is.
        client.back().await.map_err(|e| e.to_string())?;
        wait_for(&client, "alerts after going back", CARDS, firing).await?;
        follow(&client, "CardDeclines", "to-logs").await?;
        wait_for(
            &client,
            "the logs the rule counts",
            "return { hash: location.hash,
                      q: new URLSearchParams(location.hash.split('?')[1] || '').get('q'),
                      rows: [...document.querySelectorAll('.log-row')].map(r => r.innerText) }",
            |v| {
                v["hash"].as_str().is_some_and(|h| h.starts_with("#/logs?") && h.contains("window="))
                    && v["q"] == "(declined) AND service:\"payment\""
                    && v["rows"].as_array().is_some_and(|rows| {
                        rows.len() == 1 && rows[0].as_str().is_some_and(|r| r.contains("uitoken card declined"))
                    })
            },
        )
        .await?;

        // The expression opens in the metrics explorer, over a window
        // starting before the alert went active.
        client.back().await.map_err(|e| e.to_string())?;
        wait_for(&client, "alerts after going back", CARDS, firing).await?;
        follow(&client, "TestDown", "to-metrics").await?;
        wait_for(
            &client,
            "the expression in the metrics explorer",
            "return { hash: location.hash, query: document.querySelector('textarea.query')?.value,
                      rows: document.querySelectorAll('.series-table tr').length }",
            |v| {
                v["hash"].as_str().is_some_and(|h| h.starts_with("#/metrics?") && h.contains("window="))
                    && v["query"] == "test_up == 0"
                    && v["rows"].as_u64() >= Some(2)
            },
        )
        .await?;

        // The log link's query comes out of a count_logs expression.
        let parsed = client
            .execute_async(
                r#"const done = arguments[arguments.length - 1];
                   import('/ui/alerts.js').then(m => done([
                     m.countLogsQuery('count_logs("severity:error AND declined", "5m", "service") > 5'),
                     m.countLogsQuery('sum(count_logs( "\\"card declined\\" OR timeout" ,"10m"))'),
                     m.countLogsQuery("count_logs('it\\'s', '1m') or count_logs('second', '1m')"),
                     m.countLogsQuery('count_logs(`service:pay*`, `15m`)'),
                     m.countLogsQuery('rate(logs_total[5m]) > 1'),
                     m.countLogsQuery('count_logs(severity, "5m")'),
                     m.logQuery({ query: 'count_logs("declined OR timeout", "5m", "service") > 5' },
                                { labels: { service: 'payment "eu"' } }),
                   ]));"#,
                vec![],
            )
            .await
            .map_err(|e| e.to_string())?;
        let expected = json!([
            { "query": "severity:error AND declined", "window": "5m" },
            { "query": "\"card declined\" OR timeout", "window": "10m" },
            { "query": "it's", "window": "1m" },
            { "query": "service:pay*", "window": "15m" },
            null,
            null,
            { "query": "(declined OR timeout) AND service:\"payment \\\"eu\\\"\"", "window": "5m" },
        ]);
        if parsed != expected {
            return Err(format!("countLogsQuery: {parsed}, expected {expected}"));
        }

        // Two more alerts fire (job c is down): the badge follows on the
        // next refresh.
        let job_c = |value| request(vec![series("test_up", &[("job", "c")], &[(now_ms(), value)])]);
        write_ok(daemon, &job_c(0.0)).await;
        wait_firing(daemon, 5).await;
        click(&client, "#refresh-now").await?;
        wait_for(
            &client,
            "nav badge after a refresh",
            "return document.querySelector('[data-nav=alerts] .nav-badge').innerText",
            |v| v == "5",
        )
        .await?;

        // Job c is back: KeepsFiring keeps firing, and says since when.
        write_ok(daemon, &job_c(1.0)).await;
        wait_firing(daemon, 4).await;
        goto(&client, &format!("{base}#/alerts")).await?;
        wait_for(
            &client,
            "kept firing",
            "return [...document.querySelectorAll('.alert-card')]
                .map(c => [c.querySelector('.alert-name').innerText, c.querySelector('.kept')?.innerText || ''])",
            |v| {
                v.as_array().is_some_and(|cards| {
                    cards.iter().any(|c| {
                        c[0] == "KeepsFiring"
                            && c[1].as_str().is_some_and(|t| t.starts_with("kept firing since 20"))
                    })
                })
            },
        )
        .await?;

        // Without rules: how to load them.
        goto(&client, &format!("{empty_base}#/alerts")).await?;
        wait_for(
            &client,
            "empty state",
            "return document.querySelector('#view .state')?.innerText || ''",
            |v| v.as_str().is_some_and(|t| t.contains("--rules") && t.contains("Alerting")),
        )
        .await?;
        shown(&client, "[data-nav=alerts] .nav-badge[hidden]").await?;
        Ok(())
    })
    .await;
    writer.abort();
}

/// Waits until `count` alerts fire, as the API says.
async fn wait_firing(daemon: &Strand, count: usize) {
    let seen = eventually(Duration::from_secs(30), || async {
        let (_, body) = daemon.get_json("/api/v1/alerts").await;
        let alerts = body["data"]["alerts"].as_array()?;
        (alerts.iter().filter(|a| a["state"] == "firing").count() == count).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{count} alerts never fired:\n{}",
        daemon.log()
    );
}

/// Clicks the link of class `link` on the alert card named `alert`.
async fn follow(client: &Client, alert: &str, link: &str) -> Result<(), String> {
    let clicked = client
        .execute(
            "const card = [...document.querySelectorAll('.alert-card')]
               .find(c => c.querySelector('.alert-name').innerText === arguments[0]);
             const a = card && card.querySelector('a.' + arguments[1]);
             if (a) a.click();
             return !!a",
            vec![alert.into(), link.into()],
        )
        .await
        .map_err(|e| e.to_string())?;
    if clicked != true {
        return Err(format!("no {link} link on the {alert} alert"));
    }
    Ok(())
}
