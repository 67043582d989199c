//! Pull ingest: scraping Prometheus text-format and OpenMetrics endpoints on
//! an interval, like a Prometheus server with static targets: the format is
//! negotiated with Prometheus' `Accept` header and read by the response's
//! `Content-Type` (`exposition`). A body that does not parse fails the
//! scrape, as in Prometheus: nothing of it is stored and `up` is 0. Each
//! scrape also writes `up`,
//! `scrape_duration_seconds` and `scrape_samples_scraped` for the target, and
//! staleness markers for series that disappeared since the previous scrape
//! (all of them when the target is down; never for series the exposition
//! timestamps itself), so PromQL sees them end as it would in Prometheus. Strand scrapes its own metrics this way by default, read
//! in-process (`Source::Own`): its `/metrics` may need a token or TLS.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::config::ScrapeTarget;
use crate::ingest::exposition::{self, Exposition, Format};
use crate::model::{
    Label, METRIC_NAME_LABEL, MetricMetadata, MetricSample, STALE_NAN_BITS, SeriesSamples,
    canonical_labels,
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
            Source::Own(self_metrics) => Ok((self_metrics.render(), Format::Text)),
        };
        let parsed = fetched.and_then(|(text, format)| {
            exposition::parse(&text, format).map_err(|error| error.to_string())
        });
        let duration = started.elapsed().as_secs_f64();
        let (mut series, metadata, current, up) = match parsed {
            Ok(exposition) => {
                let (series, metadata, tracked) = convert(exposition, &target, now_ms);
                (series, metadata, tracked, 1.0)
            }
            Err(error) => {
                tracing::warn!(job = target.job, instance = target.address, %error, "ScrapeFailed");
                (Vec::new(), Vec::new(), HashSet::new(), 0.0)
            }
        };
        let scraped = series.len() as f64;
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

/// The target's exposition and the format its `Content-Type` declares.
async fn fetch(
    client: &reqwest::Client,
    target: &ScrapeTarget,
) -> Result<(String, Format), String> {
    let response = client
        .get(target.url())
        .header("Accept", exposition::ACCEPT)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let format = Format::of_content_type(
        response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok()),
    );
    let text = response.text().await.map_err(|e| e.to_string())?;
    Ok((text, format))
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
            clash.name = format!("exported_{}", clash.name).into();
        }
        labels.push(label.clone());
    }
    canonical_labels(labels)
}

/// Converts an exposition into series (one sample each, at the scrape time
/// unless the exposition gives one) and metadata, and names the series that
/// take part in staleness: those without a timestamp of their own.
fn convert(
    exposition: Exposition,
    target: &ScrapeTarget,
    now_ms: i64,
) -> (Vec<SeriesSamples>, Vec<MetricMetadata>, HashSet<Vec<Label>>) {
    let mut tracked = HashSet::new();
    let series = exposition
        .samples
        .into_iter()
        .map(|sample| {
            let mut labels: Vec<Label> = sample
                .labels
                .into_iter()
                .map(|(name, value)| Label::new(name, value))
                .collect();
            labels.push(Label::new(METRIC_NAME_LABEL, sample.name));
            let labels = target_labels(target, labels);
            if sample.timestamp_ms.is_none() {
                tracked.insert(labels.clone());
            }
            one_sample(labels, sample.timestamp_ms.unwrap_or(now_ms), sample.value)
        })
        .collect();
    let metadata = exposition
        .families
        .into_iter()
        .map(|family| MetricMetadata {
            metric: family.name,
            kind: family.kind,
            help: family.help,
            unit: family.unit,
        })
        .collect();
    (series, metadata, tracked)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::MetricKind;

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
requests_total{code=\"200\",job=\"inner\",path=\"/a,b\"} 7
# TYPE latency_seconds histogram
latency_seconds_bucket{le=\"0.5\"} 3
latency_seconds_bucket{le=\"+Inf\"} 4
latency_seconds_sum 1.25
latency_seconds_count 4
# TYPE temperature gauge
temperature -3.5 1700000000000
";
        let exposition = exposition::parse(text, Format::Text).unwrap();
        let (series, metadata, tracked) = convert(exposition, &target(), 1_800_000_000_000);
        assert_eq!(
            render(&series),
            [
                "__name__=latency_seconds_bucket,env=dev,instance=127.0.0.1:9100,job=shop,le=+Inf 4",
                "__name__=latency_seconds_bucket,env=dev,instance=127.0.0.1:9100,job=shop,le=0.5 3",
                "__name__=latency_seconds_count,env=dev,instance=127.0.0.1:9100,job=shop 4",
                "__name__=latency_seconds_sum,env=dev,instance=127.0.0.1:9100,job=shop 1.25",
                "__name__=requests_total,code=200,env=dev,exported_job=inner,instance=127.0.0.1:9100,job=shop,path=/a,b 7",
                "__name__=temperature,env=dev,instance=127.0.0.1:9100,job=shop -3.5",
            ]
        );
        let temperature = series
            .iter()
            .find(|s| s.metric_name() == "temperature")
            .unwrap();
        assert_eq!(temperature.samples[0].timestamp_ms, 1_700_000_000_000);
        // A series that brings its own timestamp never goes stale.
        assert_eq!(tracked.len(), 5);
        assert!(!tracked.contains(&temperature.labels));
        let kinds: Vec<(&str, MetricKind)> = metadata
            .iter()
            .map(|m| (m.metric.as_str(), m.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                ("requests_total", MetricKind::Counter),
                ("latency_seconds", MetricKind::Histogram),
                ("temperature", MetricKind::Gauge),
            ]
        );
        assert_eq!(metadata[0].help, "Requests served.");
    }
}
