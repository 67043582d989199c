//! Query semantics on top of the stores: what matches, in which order.
//! `traces`: Jaeger's search; `logs`: log search, histograms, facets, tail;
//! `logql`: LogQL (Grafana's Loki data source) over the log store;
//! `metrics`: the metrics store as the PromQL evaluator's series source.
//! `pool`: the threads queries run on, bounded and below ingest's priority.

pub mod logql;
pub mod logs;
pub mod metrics;
pub mod pool;
pub mod traces;
