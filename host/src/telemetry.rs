//! Logs and Prometheus metrics of the operator.
//!
//! Logs go through `tracing`, as text or JSON, with the level taken from `RUST_LOG` (default
//! `info`). Metrics share the prefix `celery_operator_` and are served on `/metrics` by
//! [`crate::server`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global `tracing` subscriber.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: escape codes in a file or a log collector are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second init (tests start several operators in one process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// An error with its causes, `outer: inner: innermost`, for one log field.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabel {
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    app: String,
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    app: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabel {
    app: String,
    cause: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn policy_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_005, 4.0, 10))
}

/// The operator's Prometheus metrics.
pub struct Metrics {
    registry: Registry,
    reconciliations: Family<ResultLabel, Counter>,
    reconcile_seconds: Histogram,
    leader: Gauge<i64, AtomicI64>,
    queue_backlog: Family<QueueLabel, Gauge<i64, AtomicI64>>,
    desired_workers: Family<AppLabel, Gauge<i64, AtomicI64>>,
    decisions: Family<DecisionLabel, Counter>,
    failures: Family<FailureLabel, Counter>,
    /// By policy, not app: 13 series an app made `/metrics` 17 MiB at 10,000 apps.
    policy_seconds: HistogramFamily<PolicyLabel>,
    cycle_seconds: Histogram,
    watch_errors: Family<NamespaceLabel, Counter>,
    shadow_desired: Family<AppLabel, Gauge<i64, AtomicI64>>,
    scaling_active: Family<AppLabel, Gauge<i64, AtomicI64>>,
    scaling_paused: Family<AppLabel, Gauge<i64, AtomicI64>>,
    overruns: Family<AppLabel, Counter>,
    wakeups: Family<AppLabel, Counter>,
    status_writes_pending: Gauge<i64, AtomicI64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

const DIRECTIONS: [&str; 3] = ["up", "down", "hold"];
const CAUSES: [&str; 3] = ["metrics", "policy", "scale"];

/// Why an autoscaling sample ended without a decision, for `autoscaler_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureCause {
    Metrics,
    Policy,
    Scale,
}

/// One app's decision series: see [`Metrics::decider`].
pub struct Decider {
    /// Decisions up, down and hold.
    directions: [Counter; 3],
    desired: Gauge<i64, AtomicI64>,
}

impl Decider {
    /// A decision: `from` workers before, `to` after.
    pub fn decided(&self, from: u32, to: u32) {
        let direction = match to.cmp(&from) {
            std::cmp::Ordering::Greater => 0,
            std::cmp::Ordering::Less => 1,
            std::cmp::Ordering::Equal => 2,
        };
        self.directions[direction].inc();
        self.desired.set(i64::from(to));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("celery_operator");
        let reconciliations = Family::<ResultLabel, Counter>::default();
        registry.register("reconciliations", "Reconciliations of Celery apps, by result", reconciliations.clone());
        let reconcile_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register("reconcile_duration_seconds", "Time one reconciliation took", reconcile_seconds.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader Lease and reconciles", leader.clone());
        let queue_backlog = Family::default();
        registry.register("queue_backlog", "Messages waiting in a worker queue at the last sample", queue_backlog.clone());
        let desired_workers = Family::default();
        registry.register("desired_workers", "Worker replicas the autoscaler set last", desired_workers.clone());
        let decisions = Family::default();
        registry.register("scaling_decisions", "Autoscaling decisions, by direction (up, down, hold)", decisions.clone());
        let failures = Family::default();
        registry.register(
            "autoscaler_failures",
            "Samples that ended without a decision, by cause (metrics, policy, scale)",
            failures.clone(),
        );
        let policy_seconds: HistogramFamily<PolicyLabel> = Family::new_with_constructor(policy_histogram);
        registry.register(
            "policy_duration_seconds",
            "Time one decision of a policy took (all apps), instantiation included",
            policy_seconds.clone(),
        );
        let cycle_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "autoscaler_cycle_duration_seconds",
            "Time one autoscaling cycle of one app took: broker read, policy, scale and status",
            cycle_seconds.clone(),
        );
        let watch_errors = Family::default();
        registry.register(
            "watch_errors",
            "Failed watches of Celery apps and their children, by watched namespace ((all) for every namespace)",
            watch_errors.clone(),
        );
        let shadow_desired = Family::default();
        registry.register(
            "shadow_desired_workers",
            "Worker replicas the shadow policy (spec.autoscaling.shadow) would have set, never applied",
            shadow_desired.clone(),
        );
        let scaling_active = Family::default();
        registry.register(
            "scaling_active",
            "1 while the app's policies decide its workers (ScalingActive True), 0 while the count is held or overridden",
            scaling_active.clone(),
        );
        let scaling_paused = Family::default();
        registry.register(
            "scaling_paused",
            "1 while an annotation overrides the app's autoscaling (celeryproject.org/autoscaling-paused and the like)",
            scaling_paused.clone(),
        );
        let overruns = Family::default();
        registry.register(
            "autoscaler_overruns",
            "Autoscaling cycles that took longer than the app's interval, so that its next sample came late",
            overruns.clone(),
        );
        let wakeups = Family::default();
        registry.register(
            "autoscaler_wakeups",
            "Decisions made at once because a message landed on queues the last read found empty (Redis keyspace events)",
            wakeups.clone(),
        );
        let status_writes_pending = Gauge::default();
        registry.register(
            "status_writes_pending",
            "Autoscaler status parts posted and not yet sent to the API server (one per pool at most: a newer post replaces the waiting one)",
            status_writes_pending.clone(),
        );
        Self {
            status_writes_pending,
            wakeups,
            watch_errors,
            shadow_desired,
            scaling_active,
            scaling_paused,
            overruns,
            registry,
            reconciliations,
            reconcile_seconds,
            leader,
            queue_backlog,
            desired_workers,
            decisions,
            failures,
            policy_seconds,
            cycle_seconds,
        }
    }
}

impl Metrics {
    /// The gauge of status writes waiting, which the autoscaler's outbox keeps.
    pub fn status_writes_pending(&self) -> Gauge<i64, AtomicI64> {
        self.status_writes_pending.clone()
    }

    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciliations.get_or_create(&ResultLabel { result }).inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn observe_queue(&self, app: &str, queue: &str, backlog: Option<u64>) {
        let label = QueueLabel { app: app.to_string(), queue: queue.to_string() };
        match backlog {
            Some(n) => {
                self.queue_backlog.get_or_create(&label).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            // Unknown is no figure at all, not a stale one.
            None => {
                self.queue_backlog.remove(&label);
            }
        }
    }

    pub fn observe_policy(&self, policy: &str, took: Duration) {
        self.policy_seconds.get_or_create(&PolicyLabel { policy: policy.to_string() }).observe(took.as_secs_f64());
    }

    /// The decision metrics of `app`, to keep: an autoscaling loop counts a decision every
    /// tick, and looking its series up by label each time (strings built, hashed, compared)
    /// was a tenth of a tick's CPU at 10,000 apps. Until [`forget_app`](Self::forget_app).
    pub fn decider(&self, app: &str) -> Decider {
        let counter = |direction| self.decisions.get_or_create(&DecisionLabel { app: app.to_string(), direction }).clone();
        Decider {
            directions: [counter(DIRECTIONS[0]), counter(DIRECTIONS[1]), counter(DIRECTIONS[2])],
            desired: self.desired_workers.get_or_create(&AppLabel { app: app.to_string() }).clone(),
        }
    }

    pub fn observe_failure(&self, app: &str, cause: FailureCause) {
        let cause = match cause {
            FailureCause::Metrics => CAUSES[0],
            FailureCause::Policy => CAUSES[1],
            FailureCause::Scale => CAUSES[2],
        };
        self.failures.get_or_create(&FailureLabel { app: app.to_string(), cause }).inc();
    }

    /// A push to an empty queue woke the loop of `app` before its tick.
    pub fn observe_wakeup(&self, app: &str) {
        self.wakeups.get_or_create(&AppLabel { app: app.to_string() }).inc();
    }

    /// The app's `ScalingActive` (true while its policies decide), and whether an annotation
    /// overrides it. The first call also makes its counters present (at 0), so that a rate
    /// over them is 0 rather than absent.
    pub fn observe_health(&self, app: &str, active: bool, paused: bool) {
        let label = AppLabel { app: app.to_string() };
        self.scaling_active.get_or_create(&label).set(i64::from(active));
        self.scaling_paused.get_or_create(&label).set(i64::from(paused));
        let _ = self.overruns.get_or_create(&label);
        let _ = self.wakeups.get_or_create(&label);
        for cause in CAUSES {
            let _ = self.failures.get_or_create(&FailureLabel { app: app.to_string(), cause });
        }
    }

    /// A cycle of `app` took longer than its interval.
    pub fn observe_overrun(&self, app: &str) {
        self.overruns.get_or_create(&AppLabel { app: app.to_string() }).inc();
    }

    pub fn observe_shadow(&self, app: &str, replicas: Option<u32>) {
        let label = AppLabel { app: app.to_string() };
        match replicas {
            Some(n) => {
                self.shadow_desired.get_or_create(&label).set(i64::from(n));
            }
            None => {
                self.shadow_desired.remove(&label);
            }
        }
    }

    pub fn observe_cycle(&self, took: Duration) {
        self.cycle_seconds.observe(took.as_secs_f64());
    }

    /// A watched namespace, whose watch errors count from 0.
    pub fn watch_namespace(&self, namespace: &str) {
        let _ = self.watch_errors.get_or_create(&NamespaceLabel { namespace: namespace.to_string() });
    }

    pub fn observe_watch_error(&self, namespace: &str) {
        self.watch_errors.get_or_create(&NamespaceLabel { namespace: namespace.to_string() }).inc();
    }

    /// Drops every series of an app that is no longer autoscaled, so the families do not grow
    /// with every app ever seen.
    pub fn forget_app(&self, app: &str, queues: &[String]) {
        for queue in queues {
            self.queue_backlog.remove(&QueueLabel { app: app.to_string(), queue: queue.clone() });
        }
        self.desired_workers.remove(&AppLabel { app: app.to_string() });
        self.shadow_desired.remove(&AppLabel { app: app.to_string() });
        self.scaling_active.remove(&AppLabel { app: app.to_string() });
        self.scaling_paused.remove(&AppLabel { app: app.to_string() });
        self.overruns.remove(&AppLabel { app: app.to_string() });
        self.wakeups.remove(&AppLabel { app: app.to_string() });
        for direction in DIRECTIONS {
            self.decisions.remove(&DecisionLabel { app: app.to_string(), direction });
        }
        for cause in CAUSES {
            self.failures.remove(&FailureLabel { app: app.to_string(), cause });
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forgotten_app_leaves_no_series_behind() {
        let m = Metrics::default();
        m.observe_queue("ns/a", "celery", Some(3));
        let a = m.decider("ns/a");
        a.decided(1, 2);
        a.decided(2, 2);
        m.observe_failure("ns/a", FailureCause::Metrics);
        m.observe_policy("queue-length", Duration::from_micros(20));
        m.decider("ns/b").decided(1, 1);
        assert!(m.encode().contains("app=\"ns/a\""));
        m.forget_app("ns/a", &["celery".to_string()]);
        let text = m.encode();
        assert!(!text.contains("app=\"ns/a\""), "series of ns/a remain:\n{text}");
        assert!(text.contains("app=\"ns/b\""), "other apps keep theirs");
    }
}
