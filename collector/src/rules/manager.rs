//! The rules of a running daemon: the groups of the `--rules` files, each
//! evaluated by its own task on its own grid, reloaded as a whole on
//! SIGHUP or `POST /-/reload` (a file that does not load keeps the
//! previous rules running), and their state for the API and the UI.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strand_promql::{Limits, SeriesSource};
use tokio::task::JoinHandle;

use super::file::{RuleFileError, load_rule_files};
use super::group::{AlertToSend, Group, RuleContext, RuleStatus};
use crate::hangup::Hangups;
use crate::model::SeriesSamples;
use crate::telemetry::SelfMetrics;

/// Where groups read: a new source per evaluation (the metrics and log
/// stores behind the query limits).
pub type SourceFactory = Arc<dyn Fn() -> Box<dyn SeriesSource> + Send + Sync>;
/// Where groups write recorded series and alert series; returns once they
/// are durable (or failed, which is logged).
pub type SampleSink = Arc<dyn Fn(Vec<SeriesSamples>) -> Result<(), String> + Send + Sync>;
/// Where alerts due for delivery go.
pub type AlertSink = Arc<dyn Fn(Vec<AlertToSend>) + Send + Sync>;

/// A group as the API shows it.
#[derive(Clone, Debug)]
pub struct GroupStatus {
    pub name: String,
    pub file: String,
    pub interval: Duration,
    pub limit: usize,
    pub last_evaluation_ms: Option<i64>,
    pub evaluation_time: Duration,
    pub rules: Vec<RuleStatus>,
}

/// What groups need from the daemon.
pub struct RuleEnvironment {
    pub context: RuleContext,
    pub limits: Limits,
    pub source: SourceFactory,
    pub write: SampleSink,
    pub notify: AlertSink,
    pub metrics: SelfMetrics,
}

struct Running {
    group: Arc<Mutex<Group>>,
    task: JoinHandle<()>,
}

/// The loaded rule groups and their evaluation tasks.
pub struct RuleManager {
    patterns: Vec<String>,
    environment: Arc<RuleEnvironment>,
    running: Mutex<Vec<Running>>,
}

impl RuleManager {
    /// Loads the files `patterns` name and starts evaluating them; a file
    /// that does not load is an error (the daemon does not start).
    pub fn start(
        patterns: Vec<String>,
        environment: RuleEnvironment,
    ) -> Result<Arc<RuleManager>, RuleFileError> {
        let manager = Arc::new(RuleManager {
            patterns,
            environment: Arc::new(environment),
            running: Mutex::new(Vec::new()),
        });
        manager.load(true)?;
        Ok(manager)
    }

    /// Reads the files again and replaces the groups, keeping the alerts
    /// and state of rules that did not change. On an error the previous
    /// groups keep running.
    pub fn reload(&self) -> Result<(), RuleFileError> {
        let result = self.load(false);
        let metrics = &self.environment.metrics;
        metrics
            .rule_reloads
            .with_label_values(&[if result.is_ok() { "success" } else { "failure" }])
            .inc();
        match &result {
            Ok(()) => tracing::info!(groups = self.groups().len(), "RulesReloaded"),
            Err(error) => {
                tracing::error!(%error, "RulesReloadFailed: the previous rules keep running")
            }
        }
        result
    }

    fn load(&self, at_start: bool) -> Result<(), RuleFileError> {
        let specs = load_rule_files(&self.patterns)?;
        let mut running = self.running.lock().expect("not poisoned");
        let mut old: Vec<Running> = std::mem::take(&mut *running);
        for spec in specs {
            let mut group = Group::new(spec, self.environment.context.clone(), at_start);
            if let Some(at) = old.iter().position(|r| {
                let g = r.group.lock().expect("not poisoned");
                g.spec().name == group.spec().name && g.spec().file == group.spec().file
            }) {
                let previous = old.swap_remove(at);
                previous.task.abort();
                let previous_group = std::mem::replace(
                    &mut *previous.group.lock().expect("not poisoned"),
                    Group::new(
                        group.spec().clone(),
                        self.environment.context.clone(),
                        false,
                    ),
                );
                group.take_state_from(previous_group);
            }
            let group = Arc::new(Mutex::new(group));
            let task = tokio::spawn(run_group(group.clone(), self.environment.clone()));
            running.push(Running { group, task });
        }
        for gone in old {
            gone.task.abort();
        }
        Ok(())
    }

    /// Every group with its rules' state, in file order.
    pub fn groups(&self) -> Vec<GroupStatus> {
        let running = self.running.lock().expect("not poisoned");
        running
            .iter()
            .map(|r| {
                let group = r.group.lock().expect("not poisoned");
                let spec = group.spec();
                GroupStatus {
                    name: spec.name.clone(),
                    file: spec.file.clone(),
                    interval: group.interval(),
                    limit: spec.limit,
                    last_evaluation_ms: group.last_evaluation_ms(),
                    evaluation_time: group.evaluation_time(),
                    rules: group.rules(),
                }
            })
            .collect()
    }

    /// Reloads on every SIGHUP until `stopped`, then stops every group's
    /// evaluation.
    pub async fn reload_on_hangup(self: Arc<Self>, stopped: impl Future<Output = ()>) {
        let mut hangups = Hangups::listen("the rule files");
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                () = &mut stopped => break,
                () = hangups.next() => {
                    let manager = self.clone();
                    let _ = tokio::task::spawn_blocking(move || manager.reload()).await;
                }
            }
        }
        for running in self.running.lock().expect("not poisoned").drain(..) {
            running.task.abort();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Sleeps until the wall-clock time `at_ms`.
async fn sleep_until(at_ms: i64) {
    let wait = at_ms - now_ms();
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
}

/// One group's loop, as Prometheus's `Group.run`: the first evaluation at
/// the next point of the group's grid, then one per interval; evaluations
/// missed (a slow evaluation, a suspended process) are skipped and
/// counted, never replayed.
async fn run_group(group: Arc<Mutex<Group>>, environment: Arc<RuleEnvironment>) {
    let (interval_ms, name) = {
        let g = group.lock().expect("not poisoned");
        (
            g.interval().as_millis().max(1) as i64,
            g.spec().name.clone(),
        )
    };
    let mut eval_ts = {
        let g = group.lock().expect("not poisoned");
        g.eval_timestamp(now_ms()) + interval_ms
    };
    let mut evaluations = 0u64;
    loop {
        sleep_until(eval_ts).await;
        let group = group.clone();
        let environment_for_eval = environment.clone();
        let restore_now = evaluations == 1;
        let evaluated = tokio::task::spawn_blocking(move || {
            evaluate_once(&group, &environment_for_eval, eval_ts, restore_now)
        })
        .await;
        if evaluated.is_err() {
            tracing::error!(group = %name, "RuleGroupEvaluationPanicked");
        }
        evaluations += 1;
        let now = now_ms();
        let missed = (now - eval_ts) / interval_ms - 1;
        if missed > 0 {
            environment
                .metrics
                .rule_group_iterations_missed
                .with_label_values(&[&name])
                .inc_by(missed as u64);
        }
        eval_ts += interval_ms * (missed.max(0) + 1);
    }
}

fn evaluate_once(
    group: &Mutex<Group>,
    environment: &RuleEnvironment,
    ts_ms: i64,
    restore_now: bool,
) {
    let mut group = group.lock().expect("not poisoned");
    let name = group.spec().name.clone();
    let source = (environment.source)();
    let mut write = |samples: Vec<SeriesSamples>| {
        if let Err(error) = (environment.write)(samples) {
            environment.metrics.rule_write_failures.inc();
            tracing::warn!(group = %name, %error, "RuleSamplesNotWritten");
        }
    };
    let to_send = group.evaluate(source.as_ref(), ts_ms, &environment.limits, &mut write);
    let metrics = &environment.metrics;
    metrics
        .rule_evaluations
        .inc_by(group.spec().rules.len() as u64);
    for (rule, error) in group.failures() {
        metrics.rule_evaluation_failures.inc();
        tracing::warn!(group = %name, %rule, %error, "RuleEvaluationFailed");
    }
    metrics
        .rule_group_last_duration
        .with_label_values(&[&name])
        .set(group.evaluation_time().as_secs_f64());
    if restore_now && group.should_restore() {
        group.restore_for_state(source.as_ref(), now_ms());
    }
    drop(group);
    if !to_send.is_empty() {
        (environment.notify)(to_send);
    }
}
