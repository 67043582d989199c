//! The resource of a request: `service.*` attributes become `job` and
//! `instance` on every series, the others one `target_info` series.

use std::collections::BTreeSet;

use opentelemetry_proto::tonic::common::v1 as otlp_common;

use super::Output;
use super::naming::{any_value_string, attribute_labels};
use crate::model::{Label, METRIC_NAME_LABEL, MetricKind, canonical_labels};

const TARGET_INFO: &str = "target_info";
const SERVICE_NAME: &str = "service.name";
const SERVICE_NAMESPACE: &str = "service.namespace";
const SERVICE_INSTANCE_ID: &str = "service.instance.id";

/// The identifying labels of a resource and the rest, for `target_info`.
pub(super) struct ResourceLabels {
    /// `job` and `instance`, when the resource says them.
    pub(super) identity: Vec<Label>,
    info: Vec<Label>,
}

impl ResourceLabels {
    pub(super) fn new(attributes: Vec<otlp_common::KeyValue>) -> ResourceLabels {
        let (mut name, mut namespace, mut instance) = (None, None, None);
        let mut rest = Vec::with_capacity(attributes.len());
        for kv in attributes {
            let slot = match kv.key.as_str() {
                SERVICE_NAME => &mut name,
                SERVICE_NAMESPACE => &mut namespace,
                SERVICE_INSTANCE_ID => &mut instance,
                _ => {
                    rest.push(kv);
                    continue;
                }
            };
            *slot = kv
                .value
                .and_then(any_value_string)
                .filter(|v| !v.is_empty());
        }
        let mut identity = Vec::with_capacity(2);
        if let Some(name) = name {
            let job = match namespace {
                Some(namespace) => format!("{namespace}/{name}"),
                None => name,
            };
            identity.push(Label::new("job", job));
        }
        if let Some(instance) = instance {
            identity.push(Label::new("instance", instance));
        }
        ResourceLabels {
            identity,
            info: attribute_labels(rest),
        }
    }

    /// One `target_info` sample (value 1) at each time a point of this resource
    /// was accepted, so joins on `job`/`instance` find it at every such time.
    /// Like Prometheus, none without other attributes (nothing to say) or
    /// without `job`/`instance` (nothing to join on).
    pub(super) fn emit_target_info(&self, out: &mut Output, times: &BTreeSet<i64>) {
        if self.info.is_empty() || self.identity.is_empty() || times.is_empty() {
            return;
        }
        let mut labels = self.info.clone();
        labels.extend(self.identity.iter().cloned());
        labels.push(Label::new(METRIC_NAME_LABEL, TARGET_INFO));
        let labels = canonical_labels(labels);
        for &time in times {
            out.push(labels.clone(), time, 1.0);
        }
        out.metadata(
            TARGET_INFO,
            MetricKind::Gauge,
            "Target metadata".to_string(),
            "",
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::ingest::otlp_metrics::tests::check;

    #[test]
    fn resource_becomes_job_instance_and_target_info() {
        check(
            r#"{"resourceMetrics":[{"resource":{"attributes":[
                {"key":"service.name","value":{"stringValue":"checkout"}},
                {"key":"service.namespace","value":{"stringValue":"shop"}},
                {"key":"service.instance.id","value":{"stringValue":"pod-1"}},
                {"key":"host.name","value":{"stringValue":"h1"}},
                {"key":"k8s.pod.uid","value":{"stringValue":"abc"}}]},
              "scopeMetrics":[{"scope":{"name":"io.opentelemetry.http","version":"1.2"},"metrics":[
                {"name":"up","gauge":{"dataPoints":[
                  {"timeUnixNano":"1000000000","asInt":"1",
                   "attributes":[{"key":"job","value":{"stringValue":"overridden"}}]},
                  {"timeUnixNano":"2000000000","asInt":"1",
                   "attributes":[{"key":"job","value":{"stringValue":"overridden"}}]}]}}]}]},
              {"resource":{"attributes":[{"key":"host.name","value":{"stringValue":"no-service"}}]},
               "scopeMetrics":[{"metrics":[{"name":"up","gauge":{"dataPoints":[
                  {"timeUnixNano":"1000000000","asInt":"0"}]}}]}]}]}"#,
            r#"
up{instance="pod-1",job="shop/checkout",otel_scope_name="io.opentelemetry.http",otel_scope_version="1.2"} 1000:1 2000:1
target_info{host_name="h1",instance="pod-1",job="shop/checkout",k8s_pod_uid="abc"} 1000:1 2000:1
up{} 1000:0
# up gauge unit="" help=""
# target_info gauge unit="" help="Target metadata""#,
        );
    }
}
