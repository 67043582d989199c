//! Delivery of alerts to Alertmanager, as Prometheus's notifier does it.
//!
//! [`Notifier::send`] queues an evaluation's alerts and returns at once: the
//! queue is bounded (`--alertmanager-queue`) and, when full, drops its
//! oldest alerts and counts them, so a slow or unreachable Alertmanager
//! never holds up rule evaluation nor grows memory. One task,
//! [`Notifier::run`], posts the queue in batches of at most [`MAX_BATCH`]
//! alerts to every configured Alertmanager at once (`POST
//! <url>/api/v2/alerts`). A batch no Alertmanager accepted is dropped and
//! counted, as Prometheus does: firing alerts are sent again every
//! `resend_delay`, and an Alertmanager that stops hearing of an alert
//! resolves it at its `endsAt` (the rule's `valid_until`).
//!
//! An alert goes out as Prometheus's `sendAlerts` makes it: `startsAt` is
//! when it fired, `endsAt` when it resolved or else until when it is
//! valid, the external labels are added (an alert's own label of the same
//! name wins) and `generatorURL` opens its expression in Strand's metrics
//! explorer.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;

use super::group::{AlertToSend, RuleContext};
use crate::config::{AlertmanagerSettings, Secret};
use crate::telemetry::SelfMetrics;

/// Most alerts in one request (Prometheus 2.42's `maxBatchSize`).
const MAX_BATCH: usize = 64;

/// Most characters of an Alertmanager's error answer kept for the log.
const MAX_ANSWER_CHARS: usize = 512;

/// Why the notifier could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NotifierError {
    /// An https Alertmanager needs CAs to check its certificate against.
    #[error("no CA bundle for https Alertmanagers (looked at {0}); set SSL_CERT_FILE")]
    NoCaBundle(String),
    /// The bundle exists but could not be read.
    #[error("reading the CA bundle {path}: {source}")]
    ReadCaBundle {
        path: String,
        source: std::io::Error,
    },
    /// The bundle is not what https needs.
    #[error("the CA bundle {path} is not PEM certificates: {source}")]
    BadCaBundle {
        path: String,
        source: reqwest::Error,
    },
    /// The TLS back end could not be set up.
    #[error("building the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Why one request to an Alertmanager failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    /// No answer: no connection, a timeout, a broken connection.
    #[error("{0}")]
    Request(String),
    /// An answer other than 2xx, with what the Alertmanager said.
    #[error("answered {status}: {answer}")]
    Refused {
        status: reqwest::StatusCode,
        answer: String,
    },
}

/// One alert as Alertmanager's v2 API takes it (`PostableAlert`): times
/// in RFC 3339 with milliseconds, UTC, as Prometheus sends them.
#[derive(Clone, Debug, PartialEq, Serialize)]
struct PostableAlert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
}

impl PostableAlert {
    fn new(sent: &AlertToSend, context: &RuleContext) -> PostableAlert {
        let alert = &sent.alert;
        let mut labels = alert.labels.clone();
        for (name, value) in &context.external_labels {
            labels.entry(name.clone()).or_insert_with(|| value.clone());
        }
        PostableAlert {
            labels,
            annotations: alert.annotations.clone(),
            starts_at: rfc3339(alert.fired_at_ms.unwrap_or(alert.active_at_ms)),
            ends_at: rfc3339(alert.resolved_at_ms.unwrap_or(alert.valid_until_ms)),
            generator_url: generator_url(&context.external_url, &sent.expr),
        }
    }
}

/// `ms` since the epoch as `2026-12-05T06:47:12.000Z`.
fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The UI's metrics explorer on `expr` (`#/metrics?query=...`), under
/// Strand's external URL.
fn generator_url(external_url: &str, expr: &str) -> String {
    let query = serde_urlencoded::to_string([("query", expr)]).unwrap_or_default();
    format!("{}/#/metrics?{query}", external_url.trim_end_matches('/'))
}

/// One Alertmanager to post to.
struct Alertmanager {
    /// `<url>/api/v2/alerts`, credentials included (reqwest sends them as
    /// basic auth).
    endpoint: reqwest::Url,
    /// The endpoint without credentials: the `alertmanager` label and what
    /// logs name.
    name: String,
}

impl Alertmanager {
    fn new(base: &reqwest::Url) -> Alertmanager {
        let mut endpoint = base.clone();
        let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
        endpoint.set_path(&path);
        let mut shown = endpoint.clone();
        // Only fails for URLs without a host, which the config refuses.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        Alertmanager {
            endpoint,
            name: shown.to_string(),
        }
    }
}

/// The alert queue and the Alertmanagers it is delivered to.
pub struct Notifier {
    queue: Mutex<VecDeque<PostableAlert>>,
    capacity: usize,
    /// Woken by `send`; holds one wake-up while `run` is busy.
    more: Notify,
    alertmanagers: Vec<Alertmanager>,
    client: reqwest::Client,
    timeout: Duration,
    bearer_token: Option<Secret>,
    context: RuleContext,
    metrics: SelfMetrics,
}

impl Notifier {
    /// A notifier for `settings`' Alertmanagers that labels and links
    /// alerts with `context`'s external labels and URL. https needs a CA
    /// bundle: `SSL_CERT_FILE`, or the system's.
    pub fn new(
        settings: &AlertmanagerSettings,
        context: &RuleContext,
        metrics: SelfMetrics,
    ) -> Result<Arc<Notifier>, NotifierError> {
        let mut client =
            reqwest::Client::builder().user_agent(concat!("Strand/", env!("CARGO_PKG_VERSION")));
        if settings.urls.iter().any(|url| url.scheme() == "https") {
            for certificate in system_roots()? {
                client = client.add_root_certificate(certificate);
            }
        }
        let client = client.build().map_err(NotifierError::Client)?;
        let alertmanagers: Vec<Alertmanager> =
            settings.urls.iter().map(Alertmanager::new).collect();
        for alertmanager in &alertmanagers {
            // Every Alertmanager has its series from the start, at 0.
            metrics
                .notifications_sent
                .with_label_values(&[&alertmanager.name]);
            metrics
                .notifications_errors
                .with_label_values(&[&alertmanager.name]);
        }
        metrics
            .notifications_alertmanagers
            .set(alertmanagers.len() as i64);
        metrics
            .notifications_queue_capacity
            .set(settings.queue_capacity as i64);
        Ok(Arc::new(Notifier {
            queue: Mutex::new(VecDeque::new()),
            capacity: settings.queue_capacity.max(1),
            more: Notify::new(),
            alertmanagers,
            client,
            timeout: settings.timeout,
            bearer_token: settings.bearer_token.clone(),
            context: context.clone(),
            metrics,
        }))
    }

    /// Queues `alerts` for delivery and returns at once. When the queue
    /// would hold more than its capacity, its oldest alerts are dropped
    /// and counted.
    pub fn send(&self, alerts: Vec<AlertToSend>) {
        if alerts.is_empty() {
            return;
        }
        let mut postable: Vec<PostableAlert> = alerts
            .iter()
            .map(|alert| PostableAlert::new(alert, &self.context))
            .collect();
        let mut dropped = 0;
        if postable.len() > self.capacity {
            dropped += postable.len() - self.capacity;
            postable.drain(..postable.len() - self.capacity);
        }
        {
            let mut queue = self.queue.lock().expect("not poisoned");
            let over = (queue.len() + postable.len()).saturating_sub(self.capacity);
            queue.drain(..over);
            dropped += over;
            queue.extend(postable);
            self.metrics
                .notifications_queue_length
                .set(queue.len() as i64);
        }
        if dropped > 0 {
            self.metrics.notifications_dropped.inc_by(dropped as u64);
            tracing::warn!(
                dropped,
                capacity = self.capacity,
                "NotificationQueueFull: the oldest alerts were dropped"
            );
        }
        self.more.notify_one();
    }

    /// Takes up to [`MAX_BATCH`] of the oldest queued alerts.
    fn next_batch(&self) -> Vec<PostableAlert> {
        let mut queue = self.queue.lock().expect("not poisoned");
        let size = queue.len().min(MAX_BATCH);
        let batch: Vec<PostableAlert> = queue.drain(..size).collect();
        self.metrics
            .notifications_queue_length
            .set(queue.len() as i64);
        batch
    }

    /// Delivers queued alerts until `stop` resolves; what is still queued
    /// then is dropped and counted.
    pub async fn run(self: Arc<Self>, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        'deliver: loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = self.more.notified() => {}
            }
            loop {
                let batch = self.next_batch();
                if batch.is_empty() {
                    break;
                }
                let delivered = tokio::select! {
                    _ = &mut stop => {
                        self.metrics.notifications_dropped.inc_by(batch.len() as u64);
                        break 'deliver;
                    }
                    delivered = self.send_all(&batch) => delivered,
                };
                if !delivered {
                    self.metrics
                        .notifications_dropped
                        .inc_by(batch.len() as u64);
                }
            }
        }
        let left = {
            let mut queue = self.queue.lock().expect("not poisoned");
            std::mem::take(&mut *queue).len()
        };
        self.metrics.notifications_queue_length.set(0);
        if left > 0 {
            self.metrics.notifications_dropped.inc_by(left as u64);
            tracing::warn!(dropped = left, "NotificationsDroppedAtShutdown");
        }
    }

    /// Posts `batch` to every Alertmanager at once; true when at least one
    /// accepted it (Prometheus's `sendAll`).
    async fn send_all(&self, batch: &[PostableAlert]) -> bool {
        let body = match serde_json::to_vec(batch) {
            Ok(body) => bytes::Bytes::from(body),
            Err(error) => {
                tracing::error!(%error, "NotificationEncodingFailed");
                return false;
            }
        };
        let mut posts = tokio::task::JoinSet::new();
        for (index, alertmanager) in self.alertmanagers.iter().enumerate() {
            let mut request = self
                .client
                .post(alertmanager.endpoint.clone())
                .timeout(self.timeout)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if let Some(token) = &self.bearer_token {
                request = request.bearer_auth(token.expose());
            }
            posts.spawn(async move { (index, post(request).await) });
        }
        let count = batch.len() as u64;
        let mut delivered = false;
        while let Some(joined) = posts.join_next().await {
            let Ok((index, result)) = joined else {
                continue;
            };
            let name = &self.alertmanagers[index].name;
            match result {
                Ok(()) => {
                    delivered = true;
                    self.metrics
                        .notifications_sent
                        .with_label_values(&[name])
                        .inc_by(count);
                }
                Err(error) => {
                    self.metrics
                        .notifications_errors
                        .with_label_values(&[name])
                        .inc_by(count);
                    tracing::error!(alertmanager = %name, count, %error, "NotificationSendFailed");
                }
            }
        }
        delivered
    }
}

/// Sends one request; any 2xx answer is success.
async fn post(request: reqwest::RequestBuilder) -> Result<(), DeliveryError> {
    let response = request
        .send()
        .await
        .map_err(|error| DeliveryError::Request(crate::telemetry::error_chain(&error)))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let answer = response.text().await.unwrap_or_default();
    Err(DeliveryError::Refused {
        status,
        answer: answer.trim().chars().take(MAX_ANSWER_CHARS).collect(),
    })
}

/// The CA certificates of `SSL_CERT_FILE` or the system's bundle.
fn system_roots() -> Result<Vec<reqwest::Certificate>, NotifierError> {
    let path = crate::tls::system_ca_bundle().map_err(NotifierError::NoCaBundle)?;
    let path = path.display().to_string();
    let pem = std::fs::read(&path).map_err(|source| NotifierError::ReadCaBundle {
        path: path.clone(),
        source,
    })?;
    reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| NotifierError::BadCaBundle {
        path: path.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{Alert, AlertState};

    fn settings(urls: &[&str], queue_capacity: usize) -> AlertmanagerSettings {
        AlertmanagerSettings {
            urls: urls
                .iter()
                .map(|u| reqwest::Url::parse(u).unwrap())
                .collect(),
            timeout: Duration::from_secs(10),
            queue_capacity,
            bearer_token: Some(Secret::new("t")),
        }
    }

    fn alert(name: &str, fired_at_ms: i64, resolved_at_ms: Option<i64>) -> AlertToSend {
        AlertToSend {
            expr: "sum(rate(errors_total[5m])) > 0.1".into(),
            alert: Alert {
                labels: BTreeMap::from([
                    ("alertname".into(), name.into()),
                    ("env".into(), "staging".into()),
                ]),
                annotations: BTreeMap::from([("summary".into(), "errors & more".into())]),
                state: if resolved_at_ms.is_some() {
                    AlertState::Inactive
                } else {
                    AlertState::Firing
                },
                value: 0.5,
                active_at_ms: fired_at_ms - 60_000,
                fired_at_ms: Some(fired_at_ms),
                resolved_at_ms,
                last_sent_at_ms: Some(fired_at_ms),
                valid_until_ms: fired_at_ms + 240_000,
                keep_firing_since_ms: None,
            },
        }
    }

    fn context() -> RuleContext {
        RuleContext {
            external_labels: BTreeMap::from([
                ("cluster".into(), "eu-1".into()),
                ("env".into(), "prod".into()),
            ]),
            external_url: "http://strand.example:7070/".into(),
            ..RuleContext::default()
        }
    }

    fn notifier(capacity: usize) -> (Arc<Notifier>, SelfMetrics) {
        let metrics = SelfMetrics::new();
        let notifier = Notifier::new(
            &settings(&["http://am:9093"], capacity),
            &context(),
            metrics.clone(),
        )
        .unwrap();
        (notifier, metrics)
    }

    fn names(batch: &[PostableAlert]) -> Vec<&str> {
        batch
            .iter()
            .map(|a| a.labels["alertname"].as_str())
            .collect()
    }

    #[test]
    fn payload_is_prometheus_v2_shape() {
        // 2026-12-05T06:47:12.345Z
        let fired = 1_796_453_232_345;
        let firing = PostableAlert::new(&alert("HighErrors", fired, None), &context());
        let json = serde_json::to_value(&firing).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "labels": {"alertname": "HighErrors", "cluster": "eu-1", "env": "staging"},
                "annotations": {"summary": "errors & more"},
                "startsAt": "2026-12-05T06:47:12.345Z",
                "endsAt": "2026-12-05T06:51:12.345Z",
                "generatorURL": "http://strand.example:7070/#/metrics?query=sum%28rate%28errors_total%5B5m%5D%29%29+%3E+0.1",
            })
        );
        let resolved = PostableAlert::new(
            &alert("HighErrors", fired, Some(fired + 90_000)),
            &context(),
        );
        assert_eq!(resolved.starts_at, "2026-12-05T06:47:12.345Z");
        assert_eq!(resolved.ends_at, "2026-12-05T06:48:42.345Z");
    }

    #[test]
    fn alertmanager_endpoints_keep_prefixes_and_hide_credentials() {
        let am =
            Alertmanager::new(&reqwest::Url::parse("https://u:p%40ss@am.example/prefix/").unwrap());
        assert_eq!(
            am.endpoint.as_str(),
            "https://u:p%40ss@am.example/prefix/api/v2/alerts"
        );
        assert_eq!(am.name, "https://am.example/prefix/api/v2/alerts");
        let am = Alertmanager::new(&reqwest::Url::parse("http://am:9093").unwrap());
        assert_eq!(am.name, "http://am:9093/api/v2/alerts");
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_them() {
        let (notifier, metrics) = notifier(3);
        notifier.send(vec![alert("a", 1000, None), alert("b", 1000, None)]);
        notifier.send(vec![alert("c", 1000, None), alert("d", 1000, None)]);
        assert_eq!(metrics.notifications_dropped.get(), 1);
        assert_eq!(metrics.notifications_queue_length.get(), 3);
        // A batch larger than the whole queue keeps its newest alerts.
        notifier.send(
            (0..5)
                .map(|i| alert(&format!("n{i}"), 1000, None))
                .collect(),
        );
        assert_eq!(metrics.notifications_dropped.get(), 1 + 2 + 3);
        assert_eq!(names(&notifier.next_batch()), ["n2", "n3", "n4"]);
        assert_eq!(metrics.notifications_queue_length.get(), 0);
        assert_eq!(metrics.notifications_queue_capacity.get(), 3);
        assert_eq!(metrics.notifications_alertmanagers.get(), 1);
    }

    #[test]
    fn batches_hold_at_most_64_alerts_oldest_first() {
        let (notifier, metrics) = notifier(10_000);
        notifier.send(
            (0..150)
                .map(|i| alert(&format!("a{i}"), 1000, None))
                .collect(),
        );
        let sizes: Vec<usize> = std::iter::from_fn(|| Some(notifier.next_batch()))
            .take_while(|batch| !batch.is_empty())
            .map(|batch| {
                assert!(batch.len() <= MAX_BATCH);
                batch.len()
            })
            .collect();
        assert_eq!(sizes, [64, 64, 22]);
        assert_eq!(metrics.notifications_dropped.get(), 0);
        notifier.send(vec![alert("x", 1000, None), alert("y", 1000, None)]);
        assert_eq!(names(&notifier.next_batch()), ["x", "y"]);
    }
}
