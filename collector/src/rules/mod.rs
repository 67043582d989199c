//! Recording and alerting rules in Prometheus's rule-file format,
//! evaluated over Strand's metrics (and, through `count_logs`, its logs)
//! with Prometheus's semantics.
//!
//! `file` reads and checks rule files; `template` expands alert labels and
//! annotations; `group` evaluates one group, storage aside (what it reads
//! is a `SeriesSource`, what it writes goes to a sink); `manager` runs a
//! daemon's groups on its clock and reloads them; `notifier` delivers
//! alerts to Alertmanager; `unit_test` runs `promtool test rules` files
//! over `memory`, an in-memory series set.

mod file;
mod group;
mod manager;
mod memory;
mod notifier;
mod template;
mod unit_test;

pub use file::{
    GroupSpec, RuleFileError, RuleSpec, load_rule_files, parse_duration, parse_rule_file,
};
pub use group::{Alert, AlertState, AlertToSend, Group, Health, RuleContext, RuleStatus};
pub use manager::{
    AlertSink, GroupStatus, RuleEnvironment, RuleManager, SampleSink, SourceFactory,
};
pub use memory::MemorySeries;
pub use notifier::{Notifier, NotifierError};
pub use unit_test::{
    ComparedAlert, ComparedSample, LabelList, TestFileReport, UnitTestFailure, run_test_file,
};
