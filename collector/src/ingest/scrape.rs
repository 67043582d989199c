//! Pull ingest: scraping Prometheus text-format endpoints on an interval, like
//! a Prometheus server with static targets. Each scrape also writes `up`,
//! `scrape_duration_seconds` and `scrape_samples_scraped` for the target, and
//! staleness markers for series that disappeared since the previous scrape
//! (all of them when the target is down), so PromQL sees them end as it would
//! in Prometheus. Strand scrapes its own metrics this way by default, read
//! in-process (`Source::Own`): its `/metrics` may need a token or TLS.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use prometheus_parse::{Scrape, Value};

use crate::config::ScrapeTarget;
use crate::model::{
    Label, METRIC_NAME_LABEL, MetricKind, MetricMetadata, MetricSample, STALE_NAN_BITS,
    SeriesSamples, canonical_labels,
};
use crate::pipeline::Pipeline;
use crate::telemetry::SelfMetrics;

/// Where a target's exposition comes from.
pub enum Source {
    /// Its `/metrics` endpoint, over HTTP.
    Http,
    /// Strand's own metrics, rendered in-process.
    Own(Box<SelfMetrics>),
}

impl ScrapeTarget {
    fn url(&self) -> String {
        format!("http://{}{}", self.address, self.path)
    }
}

/// Scrapes `target` from `source` until `stop` resolves.
pub async fn run(
    pipeline: Arc<Pipeline>,
    target: ScrapeTarget,
    source: Source,
    stop: impl std::future::Future<Output = ()>,
) {
    let client = match reqwest::Client::builder().timeout(target.timeout).build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, job = target.job, "ScrapeClientError");
            return;
        }
    };
    tokio::pin!(stop);
    let mut ticks = tokio::time::interval(target.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: HashSet<Vec<Label>> = HashSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let now_ms = (crate::model::now_unix_nano() / 1_000_000) as i64;
        let fetched = match &source {
            Source::Http => fetch(&client, &target).await,
            Source::Own(self_metrics) => Ok(self_metrics.render()),
        };
        let duration = started.elapsed().as_secs_f64();
        let (mut series, metadata, up) = match fetched {
            Ok(text) => {
                let (series, metadata) = convert(&text, &target, now_ms);
                (series, metadata, 1.0)
            }
            Err(error) => {
                tracing::debug!(job = target.job, instance = target.address, %error, "ScrapeFailed");
                (Vec::new(), Vec::new(), 0.0)
            }
        };
        let scraped = series.len() as f64;
        let current: HashSet<Vec<Label>> = series.iter().map(|s| s.labels.clone()).collect();
        let stale = f64::from_bits(STALE_NAN_BITS);
        series.extend(
            previous
                .difference(&current)
                .map(|labels| one_sample(labels.clone(), now_ms, stale)),
        );
        previous = current;
        for (name, value) in [
            ("up", up),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", scraped),
        ] {
            series.push(one_sample(
                target_labels(&target, vec![Label::new(METRIC_NAME_LABEL, name)]),
                now_ms,
                value,
            ));
        }
        match pipeline.accept_samples(series, metadata, "scrape").await {
            Ok(rejections) => {
                if let Some(reason) = rejections.first_error {
                    tracing::debug!(
                        job = target.job,
                        rejected = rejections.rejected,
                        reason,
                        "ScrapeSamplesRejected"
                    );
                }
            }
            Err(error) => tracing::warn!(job = target.job, %error, "ScrapeNotStored"),
        }
    }
}

async fn fetch(client: &reqwest::Client, target: &ScrapeTarget) -> Result<String, String> {
    let response = client
        .get(target.url())
        .header("Accept", "text/plain;version=0.0.4")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    response.text().await.map_err(|e| e.to_string())
}

fn one_sample(labels: Vec<Label>, timestamp_ms: i64, value: f64) -> SeriesSamples {
    SeriesSamples {
        labels,
        samples: vec![MetricSample {
            timestamp_ms,
            value,
        }],
    }
}

/// Adds the target's labels; labels of the scraped series that clash with
/// them are kept as `exported_<name>`, as Prometheus does without
/// `honor_labels`.
fn target_labels(target: &ScrapeTarget, mut labels: Vec<Label>) -> Vec<Label> {
    let own = [
        Label::new("job", target.job.clone()),
        Label::new("instance", target.address.clone()),
    ];
    for label in own.iter().chain(&target.labels) {
        if let Some(clash) = labels.iter_mut().find(|l| l.name == label.name) {
            clash.name = format!("exported_{}", clash.name);
        }
        labels.push(label.clone());
    }
    canonical_labels(labels)
}

/// Converts an exposition into series (one sample each, at the scrape time
/// unless the exposition gives one) and metadata.
fn convert(
    text: &str,
    target: &ScrapeTarget,
    now_ms: i64,
) -> (Vec<SeriesSamples>, Vec<MetricMetadata>) {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let Ok(scrape) = Scrape::parse_at(
        lines,
        chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default(),
    ) else {
        return (Vec::new(), Vec::new());
    };
    let mut series = Vec::with_capacity(scrape.samples.len());
    let mut kinds: Vec<(String, MetricKind)> = Vec::new();
    for sample in scrape.samples {
        let t = sample.timestamp.timestamp_millis();
        let base: Vec<Label> = sample
            .labels
            .iter()
            .map(|(name, value)| Label::new(name.clone(), value.clone()))
            .collect();
        let mut push = |name: String, extra: Option<Label>, value: f64| {
            let mut labels = base.clone();
            labels.push(Label::new(METRIC_NAME_LABEL, name));
            labels.extend(extra);
            series.push(one_sample(target_labels(target, labels), t, value));
        };
        match sample.value {
            Value::Counter(v) => {
                kinds.push((sample.metric.clone(), MetricKind::Counter));
                push(sample.metric, None, v);
            }
            Value::Gauge(v) => {
                kinds.push((sample.metric.clone(), MetricKind::Gauge));
                push(sample.metric, None, v);
            }
            Value::Untyped(v) => push(sample.metric, None, v),
            Value::Histogram(buckets) => {
                kinds.push((sample.metric.clone(), MetricKind::Histogram));
                for bucket in buckets {
                    push(
                        format!("{}_bucket", sample.metric),
                        Some(Label::new(
                            "le",
                            strand_promql::format_value(bucket.less_than),
                        )),
                        bucket.count,
                    );
                }
            }
            Value::Summary(quantiles) => {
                kinds.push((sample.metric.clone(), MetricKind::Summary));
                for quantile in quantiles {
                    push(
                        sample.metric.clone(),
                        Some(Label::new(
                            "quantile",
                            strand_promql::format_value(quantile.quantile),
                        )),
                        quantile.count,
                    );
                }
            }
        }
    }
    kinds.sort_by(|a, b| a.0.cmp(&b.0));
    kinds.dedup_by(|a, b| a.0 == b.0);
    let metadata = kinds
        .into_iter()
        .map(|(metric, kind)| MetricMetadata {
            help: scrape.docs.get(&metric).cloned().unwrap_or_default(),
            metric,
            kind,
            unit: String::new(),
        })
        .collect();
    (series, metadata)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn target() -> ScrapeTarget {
        ScrapeTarget {
            job: "shop".into(),
            address: "127.0.0.1:9100".into(),
            path: "/metrics".into(),
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            labels: vec![Label::new("env", "dev")],
        }
    }

    fn render(series: &[SeriesSamples]) -> Vec<String> {
        let mut out: Vec<String> = series
            .iter()
            .map(|s| {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect();
                format!("{} {}", labels.join(","), s.samples[0].value)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn exposition_becomes_labelled_series_and_metadata() {
        let text = "\
# HELP requests_total Requests served.
# TYPE requests_total counter
requests_total{code=\"200\",job=\"inner\"} 7
# TYPE latency_seconds histogram
latency_seconds_bucket{le=\"0.5\"} 3
latency_seconds_bucket{le=\"+Inf\"} 4
latency_seconds_sum 1.25
latency_seconds_count 4
# TYPE temperature gauge
temperature -3.5 1700000000000
";
        let (series, metadata) = convert(text, &target(), 1_800_000_000_000);
        assert_eq!(
            render(&series),
            [
                "__name__=latency_seconds_bucket,env=dev,instance=127.0.0.1:9100,job=shop,le=+Inf 4",
                "__name__=latency_seconds_bucket,env=dev,instance=127.0.0.1:9100,job=shop,le=0.5 3",
                "__name__=latency_seconds_count,env=dev,instance=127.0.0.1:9100,job=shop 4",
                "__name__=latency_seconds_sum,env=dev,instance=127.0.0.1:9100,job=shop 1.25",
                "__name__=requests_total,code=200,env=dev,exported_job=inner,instance=127.0.0.1:9100,job=shop 7",
                "__name__=temperature,env=dev,instance=127.0.0.1:9100,job=shop -3.5",
            ]
        );
        let temperature = series
            .iter()
            .find(|s| s.metric_name() == "temperature")
            .unwrap();
        assert_eq!(temperature.samples[0].timestamp_ms, 1_700_000_000_000);
        let kinds: Vec<(&str, MetricKind)> = metadata
            .iter()
            .map(|m| (m.metric.as_str(), m.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("latency_seconds", MetricKind::Histogram),
                ("requests_total", MetricKind::Counter),
                ("temperature", MetricKind::Gauge),
            ]
        );
        assert_eq!(metadata[1].help, "Requests served.");
    }

    #[test]
    fn garbage_yields_nothing_and_never_panics() {
        for text in [
            "",
            "}{",
            "# TYPE x histogram\nx_bucket{le=\"abc\"} 1",
            "x{a=\"b\" 1",
            "\u{0}",
        ] {
            let _ = convert(text, &target(), 0);
        }
    }
}
