//! Strand's integration tests, one module per area, in one binary: each test
//! binary links the whole daemon, so there is only this one.
//!
//! Most tests run the daemon in this process ([`strand_testkit::Strand::start`]);
//! those that `kill -9` it or read its log run the real binary
//! ([`strand_testkit::Strand::spawn`]). `support` holds what only these tests
//! need: the Prometheus API client, remote write, the shop's telemetry as a
//! fixture.

mod alerting;
mod auth;
mod bad_input;
mod clickhouse;
mod corruption;
mod count_logs;
mod crash;
mod dashboards;
mod derived_metrics;
mod disk_full;
mod durability;
mod elasticsearch;
mod formats;
mod fuzz;
mod grafana_prometheus;
mod grafana_traces;
mod logs;
mod loki;
mod metrics;
mod otel_collector;
mod overload;
mod promql_diff;
mod query_limits;
mod retention;
mod rules;
mod rules_cli;
mod rules_diff;
mod scrape;
mod snapshot;
mod support;
mod tls;
mod traces;
mod ui;
mod ui_alerts;
mod ui_auth;
mod ui_dashboards;
mod ui_global;
mod ui_logs;
mod ui_map;
mod ui_metrics;
mod ui_newcomer;
mod ui_trace_view;
mod ui_traces;
