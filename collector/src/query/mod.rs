//! Query semantics on top of the stores: what matches, in which order.
//! `traces`: Jaeger's search; `logs`: log search, histograms, facets, tail;
//! `metrics`: the metrics store as the PromQL evaluator's series source.

pub mod logs;
pub mod metrics;
pub mod traces;
