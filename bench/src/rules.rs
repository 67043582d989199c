//! The `rules` benchmark: what rule evaluation costs. Loads `--series`
//! series (10 minutes of 15 s scrapes, over remote write), then starts
//! evaluating `--rules` generated rules (recording and alerting, over every
//! metric family of every job) in groups of 100 at `--interval`, and
//! reports, over `--intervals` intervals after two warm-up ones, the time
//! the groups took per interval (summed over groups, from
//! `strand_rule_group_last_duration_seconds`) and the CPU share of the
//! daemon (from `/proc/<pid>/stat`) while nothing but rules ran.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use crate::RulesArgs;
use crate::daemon::{self, Daemon, Scratch};
use crate::remote_write::{JOBS, SCRAPE_INTERVAL_MS, SeriesSet, Values};
use crate::report::{JsonObject, round};
use crate::stats::Summary;

const SEED: u64 = 20_261_205;
/// Scrapes of history per series: rate(...[5m]) has data to work on.
const HISTORY_ROUNDS: usize = 40;
const RULES_PER_GROUP: usize = 100;
/// Counter and gauge families the rules read (a sample of the catalog).
const COUNTERS: [&str; 8] = [
    "node_cpu_seconds_total",
    "node_network_receive_bytes_total",
    "node_disk_written_bytes_total",
    "http_requests_total",
    "http_request_duration_seconds_count",
    "node_context_switches_total",
    "process_cpu_seconds_total",
    "x",
];
const GAUGES: [&str; 6] = [
    "node_memory_MemAvailable_bytes",
    "node_load1",
    "node_filesystem_avail_bytes",
    "node_hwmon_temp_celsius",
    "go_goroutines",
    "process_open_fds",
];

/// The rule file: groups of [`RULES_PER_GROUP`] rules, each group over one
/// job, cycling through recording rules (rates by instance and by job, gauge
/// averages) and alerting rules (rate and gauge thresholds with `for` and
/// templated annotations).
fn rule_file(rules: usize, interval: Duration) -> String {
    let mut text = String::from("groups:\n");
    for n in 0..rules {
        let job = JOBS[(n / RULES_PER_GROUP) % JOBS.len()];
        if n % RULES_PER_GROUP == 0 {
            let _ = write!(
                text,
                "  - name: bench-{}\n    interval: {}s\n    rules:\n",
                n / RULES_PER_GROUP,
                interval.as_secs()
            );
        }
        let counter = COUNTERS[n % COUNTERS.len()];
        let gauge = GAUGES[n % GAUGES.len()];
        let _ = match n % 5 {
            0 => write!(
                text,
                "      - record: bench:{counter}:rate5m:{n}\n        expr: sum by (instance) (rate({counter}{{job=\"{job}\"}}[5m]))\n"
            ),
            1 => write!(
                text,
                "      - record: bench:{counter}:job_rate5m:{n}\n        expr: sum by (job) (rate({counter}{{job=\"{job}\"}}[5m]))\n"
            ),
            2 => write!(
                text,
                "      - record: bench:{gauge}:avg:{n}\n        expr: avg by (instance) ({gauge}{{job=\"{job}\"}})\n"
            ),
            3 => write!(
                text,
                "      - alert: BenchRateHigh{n}\n        expr: rate({counter}{{job=\"{job}\"}}[5m]) > 50\n        for: 1m\n        labels: {{severity: ticket}}\n        annotations: {{summary: '{{{{ $labels.instance }}}} at {{{{ humanize $value }}}}/s'}}\n"
            ),
            _ => write!(
                text,
                "      - alert: BenchGaugeHigh{n}\n        expr: {gauge}{{job=\"{job}\"}} > 1000\n        for: 5m\n        annotations: {{summary: '{{{{ $labels.instance }}}} is {{{{ $value }}}}'}}\n"
            ),
        };
    }
    text
}

/// Sum over groups of their last evaluation time, and the evaluation and
/// failure counts, from `/metrics`.
async fn rule_metrics(http: &reqwest::Client, base: &str) -> Result<(f64, f64, f64)> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut sums = (0.0, 0.0, 0.0);
    for line in text.lines() {
        let value = || {
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        if line.starts_with("strand_rule_group_last_duration_seconds{") {
            sums.0 += value();
        } else if line.starts_with("strand_rule_evaluations_total ") {
            sums.1 = value();
        } else if line.starts_with("strand_rule_evaluation_failures_total ") {
            sums.2 = value();
        }
    }
    Ok(sums)
}

pub async fn run(args: &RulesArgs) -> Result<String> {
    ensure!(
        args.rules >= 1 && args.intervals >= 1,
        "--rules and --intervals must be at least 1"
    );
    let scratch = Scratch::create(args.keep)?;
    let rules_path = scratch.data_dir().with_extension("rules.yml");
    std::fs::write(&rules_path, rule_file(args.rules, args.interval))?;
    let rules_arg = rules_path.display().to_string();

    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut series = SeriesSet::new(args.series, Values::Realistic, &mut rng);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let start_ms = now_ms - HISTORY_ROUNDS as i64 * SCRAPE_INTERVAL_MS;
    let shards = series.build_requests(1, 2_000, HISTORY_ROUNDS, start_ms, &mut rng)?;

    let daemon = Daemon::start_with(
        &args.strand,
        &scratch.data_dir(),
        &scratch.log(),
        &["--rules", &rules_arg, "--self-scrape-interval", "0s"],
    )
    .await?;
    let base = daemon.process.http_url();
    let pid = daemon.process.pid().context("the daemon's pid")?;
    let http = reqwest::Client::new();
    let loaded = Instant::now();
    let url = format!("{base}/api/v1/write");
    for payload in shards.iter().flatten() {
        crate::metrics::write(&http, &url, &payload.body).await?;
    }
    let load_seconds = loaded.elapsed().as_secs_f64();

    // Two warm-up intervals, then the measured ones.
    tokio::time::sleep(args.interval * 2).await;
    let (_, evaluations_before, _) = rule_metrics(&http, &base).await?;
    let cpu_before = daemon::cpu_seconds(pid)?;
    let measured = Instant::now();
    let mut per_interval = Vec::with_capacity(args.intervals);
    for _ in 0..args.intervals {
        tokio::time::sleep(args.interval).await;
        per_interval.push(rule_metrics(&http, &base).await?.0 * 1000.0);
    }
    let wall = measured.elapsed().as_secs_f64();
    let cpu = daemon::cpu_seconds(pid)? - cpu_before;
    let (_, evaluations_after, failures) = rule_metrics(&http, &base).await?;
    daemon.stop(Duration::from_secs(60)).await?;

    Ok(JsonObject::new()
        .field("benchmark", "rules")
        .field("rules", args.rules as u64)
        .field("groups", args.rules.div_ceil(RULES_PER_GROUP) as u64)
        .field("series", series.len() as u64)
        .field("interval_s", args.interval.as_secs())
        .field("load_s", round(load_seconds, 2))
        .summary("evaluation_ms_per_interval", Summary::of(per_interval))
        .field("rule_evaluations", evaluations_after - evaluations_before)
        .field("rule_failures", failures)
        .field("cpu_share_of_one_core", round(cpu / wall, 4))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_file_has_the_rules_asked_for_in_groups_of_a_hundred() {
        let text = rule_file(250, Duration::from_secs(15));
        assert_eq!(text.matches("\n  - name: ").count(), 3);
        let rules =
            text.matches("      - record: ").count() + text.matches("      - alert: ").count();
        assert_eq!(rules, 250);
        assert!(text.contains("interval: 15s"));
    }
}
