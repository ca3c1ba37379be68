//! The autoscaling loops: one task per autoscaled pool of workers (an app's `workerSpec`, or
//! one of its worker groups), every `intervalSeconds`:
//! sample (broker, pods) → policy → [decision](crate::decide) → write `replicas` when it
//! changes → status, events and metrics.
//!
//! The hand-off is one way. The reconciler validates the spec and hands each app's [`Plan`]
//! to the [`Autoscaler`] ([`Handoff`]); the autoscaler passes it to the app's loop over a
//! `watch` channel keyed by the object's UID, so the loop never reads or validates the spec
//! itself. Loops live in one set, pruned when they end, when their app is deleted (the
//! controllers' caches no longer hold it) and when another object takes its name. Loops are
//! independent tasks: a slow broker or a hanging policy delays only its own app (broker reads
//! have a timeout, policy calls a deadline). The loops end with the [`Autoscaler`], which the
//! controller drops when it stops or loses leadership.
//!
//! Fail safe: when a figure is unknown or the policy fails, the replica count is held (or
//! raised to `fallbackReplicas`), `ScalingActive` turns False with the cause, and one Warning
//! event says so. Missing data never scales an app down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::cluster::{ClusterView, PodState};
use super::progress::{self, Progress};
use super::sampler;
use crate::conditions::*;
use crate::crd::{
    AutoscalerStatus, BusyWorkers, Celery, CelerySpec, DecisionStatus, ScaleInStatus, SecretKeyRef, TransportOptions,
};
use crate::decide::stabilize::Damper;
use crate::decide::{self, Bounds, Choice, Health, scalein};
use crate::leader::Leadership;
use crate::metrics::{self, Broker, BrokerError, BrokerOptions, QueueStats, RedisLayout, control};
use crate::policy::check::PolicyCheck;
use crate::policy::{CallLimits, HISTORY, PolicyInput, Sample};
use crate::report::{self, Writer};
use crate::spec::names::{self, SCALER_MANAGER};
use crate::spec::validate::{CPU_MEMORY_POLICY, PolicyRef};
use crate::spec::{Handoff, Plan, Tuning};
use crate::telemetry::{FailureCause, Metrics};

/// The status is written at once when a decision, a scale or the condition changes, and
/// otherwise at most this often, so an app whose figures stand still costs one write every two
/// minutes (the API cost goal is at most one a minute, the operator's Lease included), and
/// 1,000 apps sampled every second do not write 1,000 statuses a second.
const STATUS_REFRESH: Duration = Duration::from_secs(120);
/// An app whose count is held (its broker, Flower or policy failing) for the same cause as its
/// status already says is written this often: a hold that repeats the last one changed
/// nothing, and 100 apps on a dead broker should not cost 100 writes a minute.
const STATUS_REFRESH_HELD: Duration = Duration::from_secs(300);
/// While the backlog moves (see [`sampler::backlog_moved`]) the status follows it this often.
const STATUS_REFRESH_MOVING: Duration = Duration::from_secs(2);
/// How long the worker Deployment may be missing before the loop reports it.
const MISSING_GRACE: Duration = Duration::from_secs(30);
/// The longest pause between two reads of a broker (or Flower) that does not answer.
const BROKER_RETRY_MAX: Duration = Duration::from_secs(60);
/// A Secret holding the broker URL is read again at most this often after a failed read.
const SECRET_RETRY: Duration = Duration::from_secs(10);
/// How often the set of loops is checked against the controllers' caches for deleted apps.
const SWEEP: Duration = Duration::from_secs(2);
/// How long the loop waits for the pod watch to show the deletion costs it wrote.
const MARK_SEEN: Duration = Duration::from_secs(2);
/// The action of the autoscaler's events.
const ACTION: &str = "Autoscale";

/// The loops of every autoscaled app, and the hand-offs that start, change and stop them.
pub struct Autoscaler {
    shared: Arc<Shared>,
    /// The controllers' caches of Celery objects (one per watched namespace, or one in all):
    /// read only to notice deleted apps.
    apps: Vec<Store<Celery>>,
    loops: HashMap<LoopKey, Running>,
    /// Loops told to stop, still clearing what they wrote: a loop started again for the same
    /// pool waits for its predecessor, so the clearing cannot land after its first status.
    retiring: HashMap<LoopKey, JoinHandle<()>>,
}

/// One loop's pool: the app, and the worker group (`None` for `workerSpec`'s workers).
type LoopKey = (ObjectRef<Celery>, Option<String>);

/// One running loop: the object it serves, the plan it runs on, its task.
struct Running {
    uid: String,
    plan: watch::Sender<Option<Arc<Plan>>>,
    task: JoinHandle<()>,
}

/// What every loop uses.
struct Shared {
    client: Client,
    /// Writes the autoscaler's part of the status and its events.
    writer: Writer,
    metrics: Arc<Metrics>,
    policies: Arc<PolicyCheck>,
    cluster: Arc<ClusterView>,
    broker: BrokerOptions,
    /// Every scale is made only while this replica's term lasts.
    leadership: Arc<Leadership>,
}

impl Autoscaler {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        policies: Arc<PolicyCheck>,
        cluster: Arc<ClusterView>,
        apps: Vec<Store<Celery>>,
        leadership: Arc<Leadership>,
    ) -> Self {
        let shared = Shared {
            writer: Writer::new(client.clone(), SCALER_MANAGER, leadership.clone()),
            client,
            metrics,
            policies,
            cluster,
            broker: BrokerOptions::default(),
            leadership,
        };
        Self { shared: Arc::new(shared), apps, loops: HashMap::new(), retiring: HashMap::new() }
    }

    /// Takes the reconciler's hand-offs until it drops its end (or this future is dropped),
    /// and prunes the loops of deleted apps meanwhile.
    pub async fn run(mut self, mut handoffs: mpsc::UnboundedReceiver<Handoff>) {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                handoff = handoffs.recv() => match handoff {
                    Some(handoff) => self.take(handoff),
                    None => return,
                },
                _ = sweep.tick() => self.sweep(),
            }
        }
    }

    /// Starts, changes or stops the loops of one app's pools.
    fn take(&mut self, Handoff { celery, plans }: Handoff) {
        let app = ObjectRef::from_obj(&*celery);
        let uid = celery.uid().unwrap_or_default();
        self.prune();
        // Every pool that has a loop, has had one (its status part), or gets one now.
        let mut pools: BTreeSet<Option<String>> =
            self.loops.keys().filter(|(a, _)| *a == app).map(|(_, group)| group.clone()).collect();
        pools.insert(None);
        pools.extend(plans.iter().map(|p| p.pool.group.clone()));
        if let Some(status) = &celery.status {
            pools.extend(status.worker_groups.iter().filter(|g| g.autoscaler.is_some()).map(|g| Some(g.name.clone())));
        }
        for group in pools {
            let plan = plans.iter().find(|p| p.pool.group == group).cloned();
            self.take_pool((app.clone(), group), &uid, &celery, plan);
        }
    }

    /// Starts, changes or stops the loop of one pool.
    fn take_pool(&mut self, key: LoopKey, uid: &str, celery: &Arc<Celery>, plan: Option<Arc<Plan>>) {
        if let Some(running) = self.loops.get(&key) {
            if running.uid != uid {
                // The loop of an earlier object of this name: it must not act on this one.
                if let Some(earlier) = self.loops.remove(&key) {
                    earlier.task.abort();
                }
            } else if let Some(plan) = plan {
                // A resync hands the same generation again: the loop keeps its pace.
                running.plan.send_if_modified(|current| {
                    let newer = current.as_ref().map(|c| c.generation()) != Some(plan.generation());
                    if newer {
                        *current = Some(plan);
                    }
                    newer
                });
                return;
            } else {
                // The loop clears what it wrote and ends.
                if let Some(running) = self.loops.remove(&key) {
                    running.plan.send_replace(None);
                    self.retiring.insert(key, running.task);
                }
                return;
            }
        }
        match plan {
            Some(plan) => {
                let (tx, rx) = watch::channel(Some(plan));
                let predecessor = self.retiring.remove(&key);
                let task = tokio::spawn(run(Arc::clone(&self.shared), rx, predecessor));
                self.loops.insert(key, Running { uid: uid.to_string(), plan: tx, task });
            }
            None if written_by_a_loop(celery, key.1.as_deref()) && !self.retiring.contains_key(&key) => {
                // Autoscaling was switched off (or the spec broke) while no loop ran to clear it.
                let shared = Arc::clone(&self.shared);
                let celery = Arc::clone(celery);
                let writer = status_writer(&shared.writer, key.1.as_deref());
                self.retiring.insert(
                    key,
                    tokio::spawn(async move {
                        match writer {
                            Some(group) => group.clear(&celery).await,
                            None => shared.writer.clear(&celery).await,
                        }
                    }),
                );
            }
            None => {}
        }
    }

    /// Ends the loops whose app no cache holds any more (deleted, or replaced by an object of
    /// another UID that is not autoscaled): dropping a loop's sender tells it its app is gone.
    fn sweep(&mut self) {
        let apps = &self.apps;
        let cached = |key: &ObjectRef<Celery>, uid: &str| {
            apps.iter().find_map(|store| store.get(key)).is_some_and(|c| c.uid().as_deref() == Some(uid))
        };
        self.loops.retain(|(key, _), running| cached(key, &running.uid));
        self.prune();
    }

    /// Forgets the loops that ended.
    fn prune(&mut self) {
        self.loops.retain(|_, running| !running.task.is_finished());
        self.retiring.retain(|_, task| !task.is_finished());
    }
}

impl Drop for Autoscaler {
    fn drop(&mut self) {
        for running in self.loops.values() {
            running.task.abort();
        }
        for task in self.retiring.values() {
            task.abort();
        }
    }
}

/// Whether the status of `celery` holds what the loop of `group` (`workerSpec`'s with `None`)
/// writes.
fn written_by_a_loop(celery: &Celery, group: Option<&str>) -> bool {
    match group {
        None => report::status::has_autoscaler_part(celery.status.as_ref()),
        Some(g) => celery.status.as_ref().is_some_and(|s| s.worker_groups.iter().any(|w| w.name == g && w.autoscaler.is_some())),
    }
}

/// The writer of a group's status part (its own field manager), `None` for `workerSpec`'s.
fn status_writer(writer: &Writer, group: Option<&str>) -> Option<Writer> {
    group.map(|g| writer.with_manager(names::group_scaler_manager(g)))
}

/// The loop of one pool, until its plan is withdrawn (`None`: it retires and clears what it
/// wrote) or its sender is dropped (the app is gone). It starts once `predecessor`, the
/// app's previous loop, has finished retiring.
async fn run(shared: Arc<Shared>, mut plans: watch::Receiver<Option<Arc<Plan>>>, predecessor: Option<JoinHandle<()>>) {
    if let Some(predecessor) = predecessor {
        let _ = predecessor.await;
    }
    shared.policies.loaded().await;
    let Some(plan) = plans.borrow_and_update().clone() else { return };
    let mut app = AppLoop::new(&plan);
    app.group_writer = status_writer(&shared.writer, app.group.as_deref());
    let mut ticker = pacer(app.tuning.interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let started = Instant::now();
                app.tick(&shared).await;
                shared.metrics.observe_cycle(started.elapsed());
                if let Some(at) = app.resting_until() {
                    // Nothing can be decided before the broker is tried again: no tick till then.
                    ticker.reset_at(tokio::time::Instant::from_std(at));
                }
            }
            changed = plans.changed() => {
                if changed.is_err() {
                    debug!(app = %app.label, "the app is gone; its autoscaler stops");
                    app.forget_metrics(&shared);
                    return;
                }
                let Some(plan) = plans.borrow_and_update().clone() else {
                    app.retire(&shared).await;
                    return;
                };
                app.reconfigure(&plan);
                // A changed spec is acted on at once (and at its own pace from then on), even
                // while the broker's backoff runs.
                ticker = pacer(app.tuning.interval);
            }
        }
    }
}

/// Ticks every `interval`, the first at once; a tick that overran delays the next.
fn pacer(interval: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// The state of one app's loop.
struct AppLoop {
    /// The object as last handed over: events refer to it, and its generation is observed.
    celery: Arc<Celery>,
    /// The object's reference, which every event names.
    reference: ObjectReference,
    /// `namespace/name` (`namespace/name/group` for a group), for logs, metrics and the policy
    /// input.
    label: String,
    namespace: String,
    /// The worker group it scales; `None` for `workerSpec`'s workers.
    group: Option<String>,
    /// Its pods' key in the cluster view ([`names::pool_key`]).
    pool_key: String,
    /// Writes a group's part of the status (`status.workerGroups[group].autoscaler`) as the
    /// group's own field manager; `None` for `workerSpec`'s, which the shared writer writes.
    group_writer: Option<Writer>,
    /// The Deployment it scales.
    worker: String,
    queues: Vec<String>,
    policies: Vec<PolicyRef>,
    min: u32,
    max: u32,
    concurrency: u32,
    tuning: Tuning,
    damper: Damper,
    /// Whether any policy needs the queues (all but the CPU/memory one).
    needs_broker: bool,
    broker: Option<Broker>,
    broker_source: Option<BrokerSource>,
    /// When the broker Secret was last read, and why that read failed if it did.
    last_secret_read: Option<(Instant, Option<String>)>,
    /// Tasks in progress from the app's Flower, if it has one.
    progress: Progress,
    /// The input lent to every policy call, history included.
    input: Option<PolicyInput>,
    health: Option<Health>,
    last_decision: Option<DecisionStatus>,
    last_scale_time: Option<Time>,
    last_status: Option<Instant>,
    /// `ScalingActive` as last written, whose transition time holds while its status does.
    condition: Vec<Condition>,
    /// The health the status shows.
    written_health: Option<Health>,
    /// The total backlog the status shows.
    written_backlog: Option<i64>,
    /// The tasks in progress the status shows.
    written_active: Option<i64>,
    /// Since when the worker Deployment is missing from the cluster view.
    missing_since: Option<Instant>,
    /// After a failed broker read: when to try again, the pause, and the failure.
    broker_retry: Option<Retry>,
    /// A scale-down still under way (waiting for busy workers), as the status shows it.
    scale_in: Option<Pending>,
    /// Worker pods told to stop taking tasks (`drainBusyWorkers`) and not told to resume.
    draining: BTreeSet<String>,
}

/// A scale-down that has not reached its count yet (`busyWorkers: Wait`).
#[derive(Clone, Debug, PartialEq)]
struct Pending {
    goal: u32,
    /// When it started waiting: `maxWaitSeconds` counts from here, across operator restarts
    /// (it is read back from the status).
    since: jiff::Timestamp,
    /// The busy workers waited for, as the status lists them.
    waiting_for: Vec<String>,
}

/// The backoff of an unreachable broker (or Flower standing in for one): the pause doubles
/// from the sampling interval up to [`BROKER_RETRY_MAX`], with a tenth of jitter so that many
/// apps on one dead broker do not knock together, and resets on the first good read.
#[derive(Clone, Debug)]
struct Retry {
    at: Instant,
    pause: Duration,
    error: String,
}

impl Retry {
    /// The failure, and how it is retried. NB: not the pause of the moment, which doubles
    /// five times in the first two minutes: a message that stays the same is not written again.
    fn describe(&self) -> String {
        format!("{} (tried again after a pause that doubles up to {}s)", self.error, BROKER_RETRY_MAX.as_secs())
    }
}

impl AppLoop {
    fn new(plan: &Plan) -> Self {
        let celery = &plan.celery;
        let namespace = celery.namespace().unwrap_or_default();
        let name = celery.name_any();
        let group = plan.pool.group.clone();
        let status = celery.status.as_ref();
        // What the pool's loop wrote before (this process's or an earlier one's).
        let written = match &group {
            None => status.and_then(|s| s.autoscaler.as_ref()),
            Some(g) => status.and_then(|s| s.worker_groups.iter().find(|w| &w.name == g)).and_then(|w| w.autoscaler.as_ref()),
        };
        let tuning = plan.tuning.clone();
        let mut app = Self {
            celery: Arc::clone(celery),
            reference: celery.object_ref(&()),
            label: match &group {
                None => format!("{namespace}/{name}"),
                Some(g) => format!("{namespace}/{name}/{g}"),
            },
            namespace,
            pool_key: names::pool_key(&name, group.as_deref()),
            group_writer: None,
            group,
            worker: String::new(),
            queues: Vec::new(),
            policies: Vec::new(),
            min: 0,
            max: 0,
            concurrency: 1,
            damper: Damper::new(tuning.stabilization, tuning.step_percent, tuning.step_period),
            tuning,
            needs_broker: true,
            broker: None,
            broker_source: None,
            last_secret_read: None,
            progress: Progress::default(),
            input: None,
            health: None,
            last_decision: None,
            last_scale_time: written.and_then(|a| a.last_scale_time.clone()),
            last_status: None,
            written_health: None,
            condition: status
                .map(|s| s.conditions.iter().filter(|c| c.type_ == SCALING_ACTIVE).cloned().collect())
                .unwrap_or_default(),
            written_backlog: None,
            written_active: None,
            missing_since: None,
            broker_retry: None,
            scale_in: written.and_then(|a| a.scale_in.as_ref()).map(|p| Pending {
                goal: u32::try_from(p.replicas).unwrap_or(0),
                since: p.since.0,
                waiting_for: p.waiting_for.clone(),
            }),
            draining: written.and_then(|a| a.scale_in.as_ref()).map(|p| p.draining.iter().cloned().collect()).unwrap_or_default(),
        };
        if app.group.is_some() {
            // A group's loop writes no condition: `ScalingActive` is `workerSpec`'s.
            app.condition.clear();
        }
        app.reconfigure(plan);
        info!(app = %app.label, policy = %app.policy_label(), "autoscaling starts");
        app
    }

    /// Takes a newer plan: what the spec changed, keeping the history, the damping's past
    /// and (when the broker did not change) the connection.
    fn reconfigure(&mut self, plan: &Plan) {
        let celery = &plan.celery;
        let spec = &celery.spec;
        self.celery = Arc::clone(celery);
        self.reference = celery.object_ref(&());
        self.worker.clone_from(&plan.pool.deployment);
        self.queues.clone_from(&plan.pool.queues);
        self.needs_broker = plan.policies.iter().any(|p| p.name != CPU_MEMORY_POLICY);
        self.policies.clone_from(&plan.policies);
        self.min = u32::try_from(plan.min_replicas).unwrap_or(0);
        self.max = u32::try_from(plan.max_replicas).unwrap_or(0);
        self.concurrency = plan.pool.concurrency;
        let tuning = &plan.tuning;
        if self.tuning != *tuning {
            self.damper.retune(tuning.stabilization, tuning.step_percent, tuning.step_period);
            self.tuning = tuning.clone();
        }
        let source = broker_source(spec);
        if self.broker_source != source {
            self.broker_source = source;
            self.broker = None;
            self.last_secret_read = None;
            self.broker_retry = None;
        }
        self.progress.reconfigure(progress::source(celery));
    }

    /// When every policy of the app needs the queues and the broker (or Flower standing in
    /// for it) is in its backoff: the time of the next try, before which a tick would only
    /// hold the count again.
    fn resting_until(&self) -> Option<Instant> {
        let all_need_the_broker = self.policies.iter().all(|p| p.name != CPU_MEMORY_POLICY);
        let retry = self.broker_retry.as_ref()?;
        (all_need_the_broker && !self.policies.is_empty() && retry.at > Instant::now()).then_some(retry.at)
    }

    fn policy_label(&self) -> String {
        self.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join("+")
    }

    /// One sample, decision and (maybe) scale.
    async fn tick(&mut self, shared: &Shared) {
        let now = jiff::Timestamp::now();
        let now_ms = u64::try_from(now.as_millisecond()).unwrap_or(0);
        let Some(current) = shared.cluster.worker_replicas(&self.namespace, &self.worker) else {
            // The reconciler creates it just before the loop starts, and the watch brings it
            // within moments: only a lasting absence is worth a condition.
            let since = *self.missing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= MISSING_GRACE {
                let message = format!("the worker Deployment {} does not exist", self.worker);
                self.conclude(shared, Health { reason: SCALE_FAILED, message }, false).await;
            }
            return;
        };
        self.missing_since = None;

        let queues = if self.needs_broker { Some(self.read_broker_or_wait(shared).await) } else { None };
        let namespace = &self.namespace;
        match self.progress.refresh(async |secret| read_secret(&shared.client, namespace, secret).await).await {
            Some(progress::Change::Failed(message)) => {
                warn!(app = %self.label, %message, "Flower cannot be read: the policy sees no tasks in progress");
                self.event(shared, EventType::Warning, FLOWER_UNAVAILABLE, &message).await;
            }
            Some(progress::Change::Recovered) => info!(app = %self.label, "Flower can be read again"),
            None => {}
        }
        let mut pods = shared.cluster.pods(&self.namespace, &self.pool_key);
        self.progress.fill(&mut pods);
        // Borrowed, not copied: the sample below reads the same figures.
        let unknown: Vec<QueueStats>;
        let measured: &[QueueStats] = match &queues {
            Some(Ok(stats)) => stats,
            Some(Err(_)) => {
                unknown = self.queues.iter().map(QueueStats::unknown).collect();
                &unknown
            }
            None => &[],
        };
        for q in measured {
            shared.metrics.observe_queue(&self.label, &q.name, q.backlog);
        }
        let mut status = sampler::measured_status(Time(now), measured, &pods);
        // A broker that cannot be read fails the policies that need it, and only those.
        let without_queues = |pods| Sample { timestamp_ms: now_ms, replicas: current, queues: Vec::new(), pods };
        let (sample, broker_failure) = match queues {
            Some(Err(message)) => (without_queues(pods), Some(message)),
            Some(Ok(stats)) => match sampler::sample(now_ms, current, Some(&stats), Vec::new()) {
                Ok(with_queues) => (Sample { pods, ..with_queues }, None),
                Err(message) => (without_queues(pods), Some(message)),
            },
            None => (without_queues(pods), None),
        };
        if !self.damper.is_seeded() {
            let last_scale_ms = self.last_scale_time.as_ref().and_then(|t| u64::try_from(t.0.as_millisecond()).ok());
            self.damper.seed(now_ms, current, last_scale_ms);
        }

        let answers = self.ask(shared, sample, broker_failure.as_deref()).await;
        let bounds = Bounds { min: self.min, max: self.max, fallback: self.tuning.fallback };
        let policies = self.policy_label();
        let decision = decide::decide(now_ms, current, &answers, &mut self.damper, bounds, &policies);
        if decision.held {
            let cause = if decision.health.reason == POLICY_FAILED { FailureCause::Policy } else { FailureCause::Metrics };
            shared.metrics.observe_failure(&self.label, cause);
        }
        let decide::Decision { target, health, mut reason, proposed, policy, held, recommended } = decision;
        let waiting_before = self.scale_in.as_ref().map(|p| p.waiting_for.clone());
        let (target, note) = self.scale_in(shared, now, current, target, held, recommended).await;
        if !note.is_empty() {
            reason = format!("{reason}; {note}");
        }
        shared.metrics.observe_decision(&self.label, current, target);

        let mut changed = self.last_decision.as_ref().map(|d| d.replicas) != Some(target as i32)
            || waiting_before != self.scale_in.as_ref().map(|p| p.waiting_for.clone());
        if target != current {
            match self.scale(shared, current, target, &format!("{policy}: {reason}")).await {
                Ok(()) => {
                    self.last_scale_time = Some(Time(now));
                    changed = true;
                }
                Err(message) => {
                    shared.metrics.observe_failure(&self.label, FailureCause::Scale);
                    self.conclude_with(shared, &mut status, Health { reason: SCALE_FAILED, message }, true).await;
                    return;
                }
            }
        }
        self.last_decision = Some(DecisionStatus {
            time: Time(now),
            policy,
            proposed: proposed.map_or(target as i32, |p| i32::try_from(p).unwrap_or(i32::MAX)),
            replicas: target as i32,
            reason: crate::policy::truncate(&reason, 512),
        });
        self.conclude_with(shared, &mut status, health, changed).await;
    }

    /// Carries out the decided `target` as far as the workers allow, and returns the count to
    /// write with what was chosen (see [`scalein`]). A lower count marks the workers that must
    /// go before it is written; with `busyWorkers: Wait` the busy ones are kept until they are
    /// idle or `maxWaitSeconds` has passed. Marks left from a scale-down that did not happen
    /// are cleared, so a steady app costs no pod writes.
    async fn scale_in(
        &mut self,
        shared: &Shared,
        now: jiff::Timestamp,
        current: u32,
        target: u32,
        held: bool,
        recommended: Option<u32>,
    ) -> (u32, String) {
        let goal = match (target.cmp(&current), self.scale_in.as_mut()) {
            (std::cmp::Ordering::Greater, _) => {
                self.scale_in = None;
                target
            }
            (std::cmp::Ordering::Less, Some(pending)) => {
                pending.goal = target;
                target
            }
            (std::cmp::Ordering::Less, None) => {
                self.scale_in = Some(Pending { goal: target, since: now, waiting_for: Vec::new() });
                target
            }
            // Missing data never scales down: a waiting scale-down holds, too.
            (std::cmp::Ordering::Equal, Some(_)) if held => current,
            (std::cmp::Ordering::Equal, Some(pending)) => {
                // The load came back: the policy now wants more than the goal.
                pending.goal = pending.goal.max(recommended.unwrap_or(current));
                if pending.goal >= current {
                    info!(app = %self.label, "the scale-down waiting for busy workers is called off: the policy wants {current} again");
                    self.scale_in = None;
                }
                current.min(self.scale_in.as_ref().map_or(current, |p| p.goal))
            }
            (std::cmp::Ordering::Equal, None) => current,
        };
        let pods = shared.cluster.pod_states(&self.namespace, &self.pool_key);
        let workers: Vec<scalein::Worker> = pods
            .iter()
            .map(|p| scalein::Worker {
                name: p.name.clone(),
                ready: p.ready,
                terminating: p.terminating,
                created_ms: p.created_ms,
                marked: p.marked,
                load: self.progress.load(&p.name),
                draining: self.draining.contains(&p.name),
            })
            .collect();
        if goal >= current {
            self.scale_in = None;
            let stale = scalein::steady(&workers);
            self.mark(shared, &[], &stale).await;
            self.drain(shared, BTreeSet::new(), &pods).await;
            return (goal, String::new());
        }
        let figures = self.progress.figures();
        let figures = match &figures {
            Ok(()) => scalein::Figures::Known,
            Err(why) => scalein::Figures::Unknown(why),
        };
        let since = self.scale_in.as_ref().map_or(now, |p| p.since);
        let over = now.duration_since(since).unsigned_abs() >= self.tuning.max_wait;
        let mode = scalein::Mode::of(self.tuning.busy_workers, over);
        let plan = scalein::plan(current, goal, &workers, figures, mode);
        // Drained: the workers waited for, and those drained before that go now (a worker
        // about to get SIGTERM is not told to take tasks again).
        let want: BTreeSet<String> = if self.tuning.drain && self.tuning.busy_workers == BusyWorkers::Wait {
            let going = plan.mark.iter().filter(|name| self.draining.contains(*name));
            plan.waiting.iter().map(|(name, _)| name).chain(going).cloned().collect()
        } else {
            BTreeSet::new()
        };
        self.drain(shared, want, &pods).await;
        let new_marks: Vec<String> =
            plan.mark.iter().filter(|name| !pods.iter().any(|p| &p.name == *name && p.marked)).cloned().collect();
        self.mark(shared, &new_marks, &plan.unmark).await;
        if plan.waiting.is_empty() {
            self.scale_in = None;
        } else if let Some(pending) = self.scale_in.as_mut() {
            pending.waiting_for = plan
                .waiting
                .iter()
                .map(|(name, n)| match figures {
                    scalein::Figures::Known => format!("{name} ({})", scalein::running(*n)),
                    scalein::Figures::Unknown(_) => format!("{name} (tasks unknown)"),
                })
                .collect();
        }
        (plan.replicas, plan.note)
    }

    /// Tells the workers of `want` to stop taking tasks and the others it told so before (whose
    /// pods still run) to take them again, through the app's broker, one command per worker
    /// queue. A command that cannot be sent is logged and tried again at the next tick.
    async fn drain(&mut self, shared: &Shared, want: BTreeSet<String>, pods: &[PodState]) {
        let alive = |name: &String| pods.iter().any(|p| &p.name == name && !p.terminating);
        let stop: Vec<String> = want.difference(&self.draining).cloned().collect();
        let resume: Vec<String> = self.draining.difference(&want).filter(|n| alive(n)).cloned().collect();
        // A drained pod that is gone needs nothing more.
        self.draining.retain(|n| want.contains(n) || alive(n));
        if stop.is_empty() && resume.is_empty() {
            return;
        }
        if self.broker.is_none() {
            match self.connect(shared).await {
                Ok(broker) => self.broker = Some(broker),
                Err(error) => {
                    warn!(app = %self.label, %error, "cannot tell workers to stop or resume taking tasks");
                    return;
                }
            }
        }
        let broker = self.broker.as_ref().expect("connected above");
        for (names, stopping) in [(stop, true), (resume, false)] {
            if names.is_empty() {
                continue;
            }
            let destination: Vec<String> = names.iter().map(|n| format!("celery@{n}")).collect();
            let mut sent = true;
            for queue in &self.queues {
                let command = if stopping {
                    control::Command::cancel_consumer(queue, destination.clone())
                } else {
                    control::Command::add_consumer(queue, destination.clone())
                };
                match broker.control(&command).await {
                    Ok(heard) => {
                        info!(app = %self.label, workers = ?names, queue, method = command.method, heard, "remote control sent")
                    }
                    Err(error) => {
                        warn!(app = %self.label, workers = ?names, method = command.method, error = %crate::telemetry::chain(&error), "cannot send a remote-control command; tried again at the next sample");
                        sent = false;
                    }
                }
            }
            if sent {
                for name in names {
                    if stopping {
                        self.draining.insert(name);
                    } else {
                        self.draining.remove(&name);
                    }
                }
            }
        }
    }

    /// Gives `mark` the autoscaler's deletion cost and takes it from `unmark`, then waits (a
    /// moment at most) until the pod watch shows the marks, so the ReplicaSet controller, which
    /// watches the same pods, has them when the count falls. Written by the autoscaler's field
    /// manager; a failed write is logged and the scale goes on: the marks only order removals.
    async fn mark(&self, shared: &Shared, mark: &[String], unmark: &[String]) {
        if (mark.is_empty() && unmark.is_empty()) || !shared.leadership.holds() {
            return;
        }
        let api: Api<Pod> = Api::namespaced(shared.client.clone(), &self.namespace);
        let params = PatchParams::apply(SCALER_MANAGER).force();
        for (names, on) in [(mark, true), (unmark, false)] {
            for name in names {
                let annotations =
                    if on { serde_json::json!({ scalein::DELETION_COST: scalein::MARK }) } else { serde_json::json!({}) };
                let body = serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": { "name": name, "annotations": annotations },
                });
                match api.patch(name, &params, &Patch::Apply(body)).await {
                    Ok(_) => debug!(app = %self.label, pod = %name, marked = on, "deletion cost written"),
                    // A pod deleted meanwhile needs no mark.
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(error) => {
                        warn!(app = %self.label, pod = %name, error = %crate::telemetry::chain(&error), "cannot write the pod's deletion cost; Kubernetes may remove another worker")
                    }
                }
            }
        }
        let deadline = Instant::now() + MARK_SEEN;
        while Instant::now() < deadline {
            let pods = shared.cluster.pod_states(&self.namespace, &self.pool_key);
            let shows = |name: &String, on: bool| pods.iter().find(|p| &p.name == name).is_none_or(|p| p.marked == on);
            if mark.iter().all(|n| shows(n, true)) && unmark.iter().all(|n| shows(n, false)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        debug!(app = %self.label, "the pod watch has not shown the deletion costs yet; scaling anyway");
    }

    /// Asks every policy for its answer, in the order of the spec. A policy that needs the
    /// queues fails with `broker_failure` when the broker could not be read; the others are
    /// asked all the same. The sample joins the history only when it is whole.
    async fn ask(&mut self, shared: &Shared, sample: Sample, broker_failure: Option<&str>) -> Vec<Result<Choice, Health>> {
        let mut input = self.input.take().unwrap_or_else(|| PolicyInput {
            app: String::new(),
            current_replicas: 0,
            min_replicas: 0,
            max_replicas: 0,
            concurrency: 1,
            current: sample_placeholder(),
            history: Vec::with_capacity(HISTORY + 1),
            settings: BTreeMap::new(),
        });
        if input.app != self.label {
            input.app.clone_from(&self.label);
        }
        input.current_replicas = sample.replicas;
        input.min_replicas = self.min;
        input.max_replicas = self.max;
        input.concurrency = self.concurrency;
        input.current = sample;

        let runner = shared.policies.runner();
        let limits = CallLimits {
            memory_bytes: self.tuning.policy_memory.unwrap_or(runner.limits().memory_bytes),
            ..runner.limits().clone()
        }
        .within(shared.policies.registry().engine());
        let mut answers = Vec::with_capacity(self.policies.len());
        for policy in &mut self.policies {
            let failed = |reason, message: String| Err(Health { reason, message });
            if let Some(message) = broker_failure
                && policy.name != CPU_MEMORY_POLICY
            {
                answers.push(failed(METRICS_UNAVAILABLE, message.to_string()));
                continue;
            }
            let loaded = match shared.policies.registry().resolve(&policy.name) {
                Ok(loaded) => loaded,
                Err(e) => {
                    answers.push(failed(POLICY_FAILED, format!("{}: {e}", policy.field)));
                    continue;
                }
            };
            // Lent, not copied: the settings go in and come back out with the input.
            std::mem::swap(&mut input.settings, &mut policy.settings);
            let (back, outcome) = runner.decide_lending(loaded, input, Some(limits.clone())).await;
            let Some(mut back) = back else {
                let message = outcome.err().map_or_else(|| "the policy call was lost".into(), |e| e.to_string());
                // The input went down with the call; the history starts over.
                answers.push(failed(POLICY_FAILED, format!("{}: {message}", policy.name)));
                return answers;
            };
            std::mem::swap(&mut back.settings, &mut policy.settings);
            input = back;
            answers.push(match outcome {
                Ok((verdict, took)) => {
                    shared.metrics.observe_policy(&self.label, took);
                    Ok(Choice {
                        bounded: verdict.decision.replicas,
                        proposed: verdict.proposed,
                        reason: verdict.decision.reason,
                        policy: policy.name.clone(),
                    })
                }
                Err(e) => failed(POLICY_FAILED, format!("{}: {e}", policy.name)),
            });
        }
        let finished = std::mem::replace(&mut input.current, sample_placeholder());
        if broker_failure.is_none() {
            sampler::remember(&mut input.history, finished);
        }
        self.input = Some(input);
        answers
    }

    /// [`read_broker`](Self::read_broker), unless a failed read's backoff is still running: then
    /// the last failure, without a request.
    async fn read_broker_or_wait(&mut self, shared: &Shared) -> Result<Vec<QueueStats>, String> {
        if let Some(retry) = self.broker_retry.as_ref().filter(|r| Instant::now() < r.at) {
            return Err(retry.describe());
        }
        match self.read_broker(shared).await {
            Ok(stats) => {
                self.broker_retry = None;
                Ok(stats)
            }
            Err(error) => {
                let pause = next_pause(self.broker_retry.as_ref().map(|r| r.pause), self.tuning.interval);
                let jitter = pause.mul_f64(jitter_fraction() / 10.0);
                let retry = Retry { at: Instant::now() + pause + jitter, pause, error };
                let message = retry.describe();
                self.broker_retry = Some(retry);
                Err(message)
            }
        }
    }

    /// The queues as the broker reports them, or why not.
    async fn read_broker(&mut self, shared: &Shared) -> Result<Vec<QueueStats>, String> {
        if self.broker_source.is_none() && self.progress.source().is_some() {
            // As the Python operator did: Flower knows the broker from the app's own config.
            let namespace = &self.namespace;
            return self.progress.queues(&self.queues, async |secret| read_secret(&shared.client, namespace, secret).await).await;
        }
        if self.broker.is_none() {
            self.broker = Some(self.connect(shared).await?);
        }
        let broker = self.broker.as_ref().expect("connected above");
        match broker.queues(&self.queues).await {
            Ok(stats) => Ok(stats),
            Err(error) => {
                // New credentials may have been put in the Secret: read it again next time.
                if matches!(error, BrokerError::Unauthorized { .. }) && self.broker_from_secret() {
                    self.broker = None;
                }
                let field = self.broker_source.as_ref().map_or("spec.broker", |s| s.field.as_str());
                Err(format!("{field}: {}", crate::telemetry::chain(&error)))
            }
        }
    }

    fn broker_from_secret(&self) -> bool {
        self.broker_source.as_ref().is_some_and(|b| b.secret.is_some())
    }

    async fn connect(&mut self, shared: &Shared) -> Result<Broker, String> {
        let Some(source) = &self.broker_source else {
            return Err("spec.broker is not set (nor CELERY_BROKER_URL in spec.common.env) and Flower is off, so the queue \
                 backlog cannot be measured; set spec.broker.url or spec.broker.secretRef"
                .into());
        };
        let field = &source.field;
        let url = match (&source.url, &source.secret) {
            (_, Some(secret)) => {
                if let Some((at, Some(error))) = &self.last_secret_read
                    && at.elapsed() < SECRET_RETRY
                {
                    return Err(format!("{field}: {error} (read again every {}s)", SECRET_RETRY.as_secs()));
                }
                let read = read_secret(&shared.client, &self.namespace, secret).await;
                self.last_secret_read = Some((Instant::now(), read.as_ref().err().cloned()));
                let url = read.map_err(|e| format!("{field}: {e}"))?;
                // NB: a Secret's value is never quoted back, even when it is not a URL at all:
                // it may be a bare password put in the wrong key.
                if let Err(error) = url::Url::parse(&url) {
                    return Err(format!(
                        "{field}: key {} of Secret {} does not hold a URL ({error}); the value is not shown",
                        secret.key, secret.name
                    ));
                }
                url
            }
            (Some(url), None) => url.clone(),
            (None, None) => return Err(format!("{field}: give url or secretRef")),
        };
        let url = metrics::in_namespace(&url, &self.namespace);
        if let Some(why) = metrics::forbidden_destination(&url) {
            return Err(format!("{field}: {why}"));
        }
        if let Some(why) = source.management_url.as_deref().and_then(metrics::forbidden_destination) {
            return Err(format!("spec.broker.managementUrl: {why}"));
        }
        let options = BrokerOptions {
            redis: RedisLayout::with(source.transport_options.as_ref()),
            management_url: source.management_url.as_deref().map(|m| metrics::in_namespace(m, &self.namespace)),
            ..shared.broker.clone()
        };
        metrics::connect(&url, &options).map_err(|e| format!("{field}: {e}"))
    }

    /// Writes the replica count as the scaler, and records why.
    async fn scale(&self, shared: &Shared, from: u32, to: u32, reason: &str) -> Result<(), String> {
        if !shared.leadership.holds() {
            return Err("this replica's leader term has ended; it no longer scales".into());
        }
        let api: Api<Deployment> = Api::namespaced(shared.client.clone(), &self.namespace);
        let replicas = i32::try_from(to).unwrap_or(i32::MAX);
        let patch = Patch::Apply(names::scale_patch(&self.worker, replicas));
        if let Err(error) = api.patch(&self.worker, &PatchParams::apply(SCALER_MANAGER).force(), &patch).await {
            let why = match &error {
                kube::Error::Api(status) => status.message.clone(),
                other => crate::telemetry::chain(other),
            };
            return Err(format!("cannot scale Deployment {}/{}: {why}", self.namespace, self.worker));
        }
        shared.cluster.set_worker_replicas(&self.namespace, &self.worker, to);
        let event_reason = if to > from { SCALED_UP } else { SCALED_DOWN };
        info!(app = %self.label, from, to, %reason, "scaled the workers");
        let note = format!("{}{from} → {to} workers: {reason}", self.group_prefix());
        shared.writer.event(&self.reference, EventType::Normal, event_reason, &note, ACTION).await;
        Ok(())
    }

    /// `worker group <name>: ` before what an event says of a group, nothing for `workerSpec`.
    fn group_prefix(&self) -> String {
        self.group.as_ref().map(|g| format!("worker group {g}: ")).unwrap_or_default()
    }

    /// Publishes an event about the app, naming the group when the loop scales one.
    async fn event(&self, shared: &Shared, type_: EventType, reason: &str, note: &str) {
        let note = format!("{}{note}", self.group_prefix());
        shared.writer.event(&self.reference, type_, reason, &note, ACTION).await;
    }

    async fn conclude(&mut self, shared: &Shared, health: Health, changed: bool) {
        let mut status = AutoscalerStatus::default();
        self.conclude_with(shared, &mut status, health, changed).await;
    }

    /// Publishes a change of health as one event, and writes the status when something
    /// changed or the last write is old.
    async fn conclude_with(&mut self, shared: &Shared, status: &mut AutoscalerStatus, health: Health, changed: bool) {
        let transition = self.health.as_ref().is_none_or(|h| h.reason != health.reason);
        if transition {
            if health.ok() {
                if self.health.is_some() {
                    self.event(shared, EventType::Normal, POLICY_DECIDING, &health.message).await;
                }
            } else {
                warn!(app = %self.label, reason = health.reason, message = %health.message, "autoscaling holds the replica count");
                self.event(shared, EventType::Warning, health.reason, &health.message).await;
            }
        }
        let since = self.last_status.map(|at| at.elapsed());
        let refresh = if health.ok() { STATUS_REFRESH } else { STATUS_REFRESH_HELD };
        let due = since.is_none_or(|t| t >= refresh);
        let backlog = sampler::total_backlog(status);
        let moved = since.is_none_or(|t| t >= STATUS_REFRESH_MOVING)
            && (sampler::backlog_moved(self.written_backlog, backlog) || self.written_active != status.active_tasks);
        // A held app's message says what fails and how often it is tried: shown when it changes.
        let reworded = !health.ok() && self.written_health.as_ref().is_none_or(|h| h.message != health.message);
        self.health = Some(health.clone());
        if !(changed || transition || due || moved || reworded) || !shared.leadership.holds() {
            return;
        }
        status.last_decision = self.last_decision.clone();
        status.last_scale_time = self.last_scale_time.clone();
        status.scale_in = self.scale_in.as_ref().filter(|p| !p.waiting_for.is_empty()).map(|p| ScaleInStatus {
            replicas: i32::try_from(p.goal).unwrap_or(i32::MAX),
            since: Time(p.since),
            waiting_for: p.waiting_for.clone(),
            draining: self.draining.iter().cloned().collect(),
        });
        let now = Time(jiff::Timestamp::now());
        let condition = report::status::scaling_condition(&self.condition, &health, self.celery.metadata.generation, &now);
        let (body, writer) = match (&self.group, &self.group_writer) {
            (Some(group), Some(writer)) => (report::status::group_autoscaler_part(group, status), writer),
            _ => (report::status::autoscaler_part(backlog, status, &condition), &shared.writer),
        };
        match writer.status(&self.celery, &body).await {
            Ok(()) => {
                self.last_status = Some(Instant::now());
                self.written_backlog = backlog;
                self.written_active = status.active_tasks;
                if self.group.is_none() {
                    self.condition = vec![condition];
                }
                self.written_health = Some(health);
            }
            Err(error) => {
                warn!(app = %self.label, error = %crate::telemetry::chain(&error), "cannot write the autoscaler status")
            }
        }
    }

    /// The app is no longer autoscaled: remove what the autoscaler wrote in its status.
    async fn retire(self, shared: &Shared) {
        info!(app = %self.label, "autoscaling stops");
        self.forget_metrics(shared);
        self.group_writer.as_ref().unwrap_or(&shared.writer).clear(&self.celery).await;
    }

    fn forget_metrics(&self, shared: &Shared) {
        shared.metrics.forget_app(&self.label, &self.queues);
    }
}

/// Where the loop finds the broker: `spec.broker`, or else a `CELERY_BROKER_URL` set in
/// `spec.common.env` (inline or from a Secret), which Celery in the pods reads just the same.
#[derive(Clone, Debug, PartialEq)]
struct BrokerSource {
    url: Option<String>,
    secret: Option<SecretKeyRef>,
    /// The spec field it comes from, for messages.
    field: String,
    transport_options: Option<TransportOptions>,
    management_url: Option<String>,
}

fn broker_source(spec: &CelerySpec) -> Option<BrokerSource> {
    if let Some(b) = &spec.broker {
        return Some(BrokerSource {
            url: b.url.clone(),
            secret: b.secret_ref.clone(),
            field: "spec.broker".into(),
            transport_options: b.transport_options.clone(),
            management_url: b.management_url.clone(),
        });
    }
    let var = spec.common.env.iter().find(|v| v.name == names::BROKER_ENV)?;
    let secret = var
        .value_from
        .as_ref()
        .and_then(|f| f.secret_key_ref.as_ref())
        .map(|s| SecretKeyRef { name: s.name.clone(), key: s.key.clone() });
    Some(BrokerSource {
        url: var.value.clone(),
        secret,
        field: format!("spec.common.env[{}]", names::BROKER_ENV),
        transport_options: None,
        management_url: None,
    })
}

/// The value of one key of a Secret in `namespace`, trimmed. The error says which of the three
/// it is: no such Secret, no such key, or not allowed to read it; never the value.
async fn read_secret(client: &Client, namespace: &str, secret: &SecretKeyRef) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = match api.get_opt(&secret.name).await {
        Ok(found) => found,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Err(format!(
                "the operator may not read Secret {namespace}/{} (forbidden: is {namespace} a namespace the operator's RBAC covers?)",
                secret.name
            ));
        }
        Err(e) => return Err(format!("cannot read Secret {}: {}", secret.name, crate::telemetry::chain(&e))),
    };
    let Some(found) = found else {
        return Err(format!("there is no Secret {} in namespace {namespace}", secret.name));
    };
    let mut data = found.data.unwrap_or_default();
    let Some(data) = data.remove(&secret.key) else {
        // Key names are not secret; they help spot a typo.
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        let keys = if keys.is_empty() { "none".into() } else { keys.join(", ") };
        return Err(format!("Secret {} has no key {} (its keys: {keys})", secret.name, secret.key));
    };
    let text = String::from_utf8(data.0).map_err(|_| format!("key {} of Secret {} is not UTF-8", secret.key, secret.name))?;
    Ok(text.trim().to_string())
}

/// The pause after a failed broker read: twice the interval after the first failure, then
/// doubling, up to [`BROKER_RETRY_MAX`].
fn next_pause(previous: Option<Duration>, interval: Duration) -> Duration {
    previous.map_or(interval * 2, |p| p * 2).min(BROKER_RETRY_MAX)
}

/// A number in [0, 1) that differs between calls and processes (std's randomly keyed hasher;
/// jitter needs no better randomness).
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// An empty sample, standing in for the current one between two ticks (allocates nothing).
fn sample_placeholder() -> Sample {
    Sample { timestamp_ms: 0, replicas: 0, queues: Vec::new(), pods: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec from YAML; without a `common` of its own it gets a minimal one.
    fn spec(yaml: &str) -> CelerySpec {
        let base = if yaml.contains("common:") { "" } else { "common: {appName: a, celeryApp: 'app:celery_app', image: i}\n" };
        serde_yaml::from_str(&format!("{base}{yaml}")).expect("test spec parses")
    }

    #[test]
    fn an_unreachable_broker_is_tried_less_and_less_often() {
        let mut pauses = Vec::new();
        let mut pause = None;
        for _ in 0..8 {
            let next = next_pause(pause, Duration::from_secs(1));
            pauses.push(next.as_secs());
            pause = Some(next);
        }
        assert_eq!(pauses, [2, 4, 8, 16, 32, 60, 60, 60]);
        let j = jitter_fraction();
        assert!((0.0..1.0).contains(&j));
    }

    #[test]
    fn the_broker_comes_from_spec_broker_then_from_the_env_celery_reads() {
        let s = spec("broker: {url: 'redis://r/0', transportOptions: {globalKeyprefix: 'p:'}}");
        let b = broker_source(&s).expect("from spec.broker");
        assert_eq!((b.url.as_deref(), b.field.as_str()), (Some("redis://r/0"), "spec.broker"));
        assert!(b.transport_options.is_some());

        let s = spec("common: {appName: a, celeryApp: x, image: i, env: [{name: CELERY_BROKER_URL, value: 'amqp://mq//'}]}");
        let b = broker_source(&s).expect("from the env");
        assert_eq!((b.url.as_deref(), b.field.as_str()), (Some("amqp://mq//"), "spec.common.env[CELERY_BROKER_URL]"));

        let s = spec(
            "common: {appName: a, celeryApp: x, image: i, env: [{name: CELERY_BROKER_URL, valueFrom: {secretKeyRef: {name: s, key: k}}}]}",
        );
        assert_eq!(broker_source(&s).and_then(|b| b.secret), Some(SecretKeyRef { name: "s".into(), key: "k".into() }));

        assert_eq!(broker_source(&spec("")), None);
    }
}
