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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::cluster::{ClusterView, PodState};
use super::progress::{self, View};
use super::reader::{self, AppReader};
use super::sampler;
use super::trace::{self, Traces};
use crate::conditions::*;
use crate::crd::{AutoscalerStatus, BusyWorkers, Celery, DecisionStatus, ScaleInStatus};
use crate::decide::stabilize::Damper;
use crate::decide::{self, Answer, Bounds, Choice, Health, overrides, scalein, schedule};
use crate::leader::Leadership;
use crate::metrics::{BrokerOptions, QueueStats, control};
use crate::policy::check::PolicyCheck;
use crate::policy::{CallLimits, HISTORY, PolicyInput, Sample};
use crate::report::outbox::{Outbox, Outgoing, Urgency};
use crate::report::{self, Writer};
use crate::spec::names::{self, SCALER_MANAGER};
use crate::spec::validate::{CPU_MEMORY_POLICY, PolicyRef};
use crate::spec::{Handoff, Plan, Tuning};
use crate::telemetry::{Decider, FailureCause, Metrics};

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
/// Writes a second, all pools together, that only follow moving figures: past 100 pools the
/// pause between two such writes of one pool grows with their number.
const FOLLOW_WRITES_PER_SECOND: f64 = 50.0;
/// Writes a second, all pools together, that only refresh figures standing still (or a hold
/// that repeats itself): past 1,200 pools the refresh grows with their number.
const REFRESH_WRITES_PER_SECOND: f64 = 10.0;
/// How long the worker Deployment may be missing before the loop reports it.
const MISSING_GRACE: Duration = Duration::from_secs(30);
/// After a decision woken by a push to an empty queue, how soon the loop reads again: a burst
/// lands over some milliseconds, and the read it woke saw only its first messages; the rest
/// would otherwise wait for the next tick.
const WAKE_FOLLOW_UP: Duration = Duration::from_millis(100);
/// While the worker Deployment is missing, how soon the loop looks again, whatever its
/// interval: the watch usually brings a Deployment just created within moments, and an app
/// with an hour's interval should not wait an hour for its first decision.
const MISSING_RECHECK: Duration = Duration::from_secs(1);
/// How often the set of loops is checked against the controllers' caches for deleted apps.
const SWEEP: Duration = Duration::from_secs(2);
/// How long the loop waits for the pod watch to show the deletion costs it wrote.
const MARK_SEEN: Duration = Duration::from_secs(2);
/// The action of the autoscaler's events.
const ACTION: &str = "Autoscale";

/// The pauses between status writes that record no decision, scale or condition change, for
/// `pools` autoscaled pools: (following moving figures, refreshing still ones, refreshing a
/// hold). Writes that record a change are never delayed: they scale with changes, these with
/// nothing, so however many pools there are, these make at most 60 writes a second.
fn status_pace(pools: usize) -> (Duration, Duration, Duration) {
    let spread = |floor: Duration, per_second: f64| floor.max(Duration::from_secs_f64(pools as f64 / per_second));
    (
        spread(STATUS_REFRESH_MOVING, FOLLOW_WRITES_PER_SECOND),
        spread(STATUS_REFRESH, REFRESH_WRITES_PER_SECOND),
        spread(STATUS_REFRESH_HELD, REFRESH_WRITES_PER_SECOND),
    )
}

/// The loops of every autoscaled app, and the hand-offs that start, change and stop them.
pub struct Autoscaler {
    shared: Arc<Shared>,
    /// The controllers' caches of Celery objects (one per watched namespace, or one in all):
    /// read only to notice deleted apps.
    apps: Vec<Store<Celery>>,
    loops: HashMap<LoopKey, Running>,
    /// The pools of each app that have a loop (or had one not pruned yet).
    pools_of: HashMap<ObjectRef<Celery>, BTreeSet<Option<String>>>,
    /// Loops told to stop, still clearing what they wrote: a loop started again for the same
    /// pool waits for its predecessor, so the clearing cannot land after its first status.
    retiring: HashMap<LoopKey, JoinHandle<()>>,
    /// The broker and Flower of each app (of the UID given), shared by the app's loops; it
    /// goes with the last of them.
    readers: HashMap<ObjectRef<Celery>, (String, Weak<Mutex<AppReader>>)>,
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
    /// The loops' status writes, which they post and do not wait for.
    outbox: Arc<Outbox>,
    metrics: Arc<Metrics>,
    policies: Arc<PolicyCheck>,
    cluster: Arc<ClusterView>,
    broker: BrokerOptions,
    /// Every scale is made only while this replica's term lasts.
    leadership: Arc<Leadership>,
    /// The controllers' caches of Celery objects: a loop reads its app's annotations (manual
    /// overrides) from here each tick, since changing them is no new generation to hand off.
    apps: Vec<Store<Celery>>,
    /// Every pool's recent ticks, for `/trace`.
    traces: Arc<Traces>,
    /// How many pools have a loop, which paces their status refreshes ([`status_pace`]).
    pools: AtomicUsize,
}

impl Autoscaler {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        policies: Arc<PolicyCheck>,
        cluster: Arc<ClusterView>,
        apps: Vec<Store<Celery>>,
        leadership: Arc<Leadership>,
        traces: Arc<Traces>,
    ) -> Self {
        let shared = Shared {
            writer: Writer::new(client.clone(), SCALER_MANAGER, leadership.clone()),
            outbox: Outbox::new(metrics.status_writes_pending()),
            client,
            metrics,
            policies,
            cluster,
            broker: BrokerOptions::default(),
            leadership,
            apps: apps.clone(),
            traces,
            pools: AtomicUsize::new(0),
        };
        Self {
            shared: Arc::new(shared),
            apps,
            loops: HashMap::new(),
            pools_of: HashMap::new(),
            retiring: HashMap::new(),
            readers: HashMap::new(),
        }
    }

    /// Takes the reconciler's hand-offs until it drops its end (or this future is dropped),
    /// and prunes the loops of deleted apps meanwhile.
    pub async fn run(mut self, mut handoffs: mpsc::UnboundedReceiver<Handoff>) {
        let _senders = self.shared.outbox.start();
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
        // Every pool that has a loop, has had one (its status part), or gets one now. Looked
        // up in the app's own index, not found among every loop: a hand-off must not cost
        // more with 10,000 apps than with one (this scan, and pruning every loop, were 3% of
        // the operator's CPU at 10,000 apps, resyncs handing each app over every 5 minutes).
        let mut pools: BTreeSet<Option<String>> = self.pools_of.get(&app).cloned().unwrap_or_default();
        pools.insert(None);
        pools.extend(plans.iter().map(|p| p.pool.group.clone()));
        if let Some(status) = &celery.status {
            pools.extend(status.worker_groups.iter().filter(|g| g.autoscaler.is_some()).map(|g| Some(g.name.clone())));
        }
        for group in pools {
            let plan = plans.iter().find(|p| p.pool.group == group).cloned();
            self.take_pool((app.clone(), group), &uid, &celery, plan);
        }
        self.shared.pools.store(self.loops.len(), Ordering::Relaxed);
    }

    /// Starts, changes or stops the loop of one pool.
    fn take_pool(&mut self, key: LoopKey, uid: &str, celery: &Arc<Celery>, plan: Option<Arc<Plan>>) {
        // A loop that ended (its app gone, or retired) takes no plan: forget it.
        if self.loops.get(&key).is_some_and(|running| running.task.is_finished()) {
            self.loops.remove(&key);
        }
        if self.retiring.get(&key).is_some_and(JoinHandle::is_finished) {
            self.retiring.remove(&key);
        }
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
                let reader = self.reader(&key.0, uid, celery);
                let (tx, rx) = watch::channel(Some(plan));
                let predecessor = self.retiring.remove(&key);
                let task = tokio::spawn(run(Arc::clone(&self.shared), rx, predecessor, reader, Arc::clone(celery)));
                self.pools_of.entry(key.0.clone()).or_default().insert(key.1.clone());
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

    /// The reader the loops of the app share: the one they have, or a new one.
    fn reader(&mut self, app: &ObjectRef<Celery>, uid: &str, celery: &Celery) -> Arc<Mutex<AppReader>> {
        if let Some((of, reader)) = self.readers.get(app)
            && of == uid
            && let Some(reader) = reader.upgrade()
        {
            return reader;
        }
        let reader = Arc::new(Mutex::new(AppReader::new(self.shared.client.clone(), celery, self.shared.broker.clone())));
        self.readers.insert(app.clone(), (uid.to_string(), Arc::downgrade(&reader)));
        reader
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
        self.shared.pools.store(self.loops.len(), Ordering::Relaxed);
    }

    /// Forgets the loops that ended (every [`SWEEP`], and for one pool when it is handed over).
    fn prune(&mut self) {
        self.loops.retain(|_, running| !running.task.is_finished());
        self.retiring.retain(|_, task| !task.is_finished());
        self.readers.retain(|_, (_, reader)| reader.strong_count() > 0);
        let loops = &self.loops;
        self.pools_of.retain(|app, pools| {
            pools.retain(|group| loops.contains_key(&(app.clone(), group.clone())));
            !pools.is_empty()
        });
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
/// app's previous loop, has finished retiring. The app's loops share `reader`. `handed` is
/// the object as handed over, status included: read once, for what an earlier loop wrote.
async fn run(
    shared: Arc<Shared>,
    mut plans: watch::Receiver<Option<Arc<Plan>>>,
    predecessor: Option<JoinHandle<()>>,
    reader: Arc<Mutex<AppReader>>,
    handed: Arc<Celery>,
) {
    if let Some(predecessor) = predecessor {
        let _ = predecessor.await;
    }
    shared.policies.loaded().await;
    let Some(plan) = plans.borrow_and_update().clone() else { return };
    let mut app = AppLoop::new(&shared, &plan, &handed, reader).await;
    // What the loop wrote before is read from it once; the plan keeps no status.
    drop(handed);
    app.trace = Some(shared.traces.ring(app.trace_setup()));
    let mut ticker = pacer(app.tuning.interval);
    let mut pushes = app.reader.lock().await.pushes();
    loop {
        // A tick, or a push to queues the last read found empty (see reader's docs): that one
        // is acted on at once, with a new read.
        let (tick, woken) = tokio::select! {
            tick = ticker.tick() => (tick.into_std(), false),
            Ok(()) = pushes.changed() => (Instant::now(), true),
            changed = plans.changed() => {
                if changed.is_err() {
                    debug!(app = %app.label, "the app is gone; its autoscaler stops");
                    app.forget(&shared).await;
                    return;
                }
                let Some(plan) = plans.borrow_and_update().clone() else {
                    app.retire(&shared).await;
                    return;
                };
                app.reconfigure(&plan).await;
                app.trace = Some(shared.traces.ring(app.trace_setup()));
                // A changed spec is acted on at once (and at its own pace from then on), even
                // while the broker's backoff runs.
                ticker = pacer(app.tuning.interval);
                continue;
            }
        };
        if woken {
            debug!(app = %app.label, "a message landed on an empty queue: deciding now");
            shared.metrics.observe_wakeup(&app.label);
        }
        let started = Instant::now();
        // Boxed: a tick's state (its policy call, scale and status futures) is kilobytes, and
        // held inline it would sit in every loop's task between ticks too (7 KiB a loop).
        Box::pin(app.tick(&shared, tick)).await;
        let took = started.elapsed();
        shared.metrics.observe_cycle(took);
        if took > app.tuning.interval {
            shared.metrics.observe_overrun(&app.label);
        }
        let next =
            next_wake(app.epoch, app.tuning.interval, Instant::now(), app.resting_until(), app.missing_since.is_some(), woken);
        ticker.reset_at(tokio::time::Instant::from_std(next));
    }
}

/// When a loop ticks next: at the app's phase, so its loops read the broker together; not
/// before `resting_until` (the broker's backoff: nothing could be decided before it is tried
/// again); within [`MISSING_RECHECK`] while the worker Deployment is `missing` (the tick that
/// found it missing decided nothing); and within [`WAKE_FOLLOW_UP`] after a tick `woken` by a
/// push, for the rest of the burst.
fn next_wake(
    epoch: Instant,
    interval: Duration,
    now: Instant,
    resting_until: Option<Instant>,
    missing: bool,
    woken: bool,
) -> Instant {
    let next = reader::next_tick(epoch, interval, now);
    if missing {
        return next.min(now + MISSING_RECHECK);
    }
    let next = if woken { next.min(now + WAKE_FOLLOW_UP) } else { next };
    resting_until.map_or(next, |at| at.max(next))
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
    /// Where its part of the status is posted: `workerSpec`'s written by the shared writer, a
    /// group's (`status.workerGroups[group].autoscaler`) as the group's own field manager.
    outgoing: Outgoing,
    /// The Deployment it scales.
    worker: String,
    queues: Vec<String>,
    policies: Vec<PolicyRef>,
    /// The bounds in effect this tick: the spec's, or an active schedule's.
    min: u32,
    max: u32,
    /// The spec's bounds, and its schedules that change them.
    spec_min: u32,
    spec_max: u32,
    schedules: Vec<schedule::Parsed>,
    concurrency: u32,
    tuning: Tuning,
    damper: Damper,
    /// Whether any policy needs the queues (all but the CPU/memory one).
    needs_broker: bool,
    /// The app's broker and Flower, shared with its other loops.
    reader: Arc<Mutex<AppReader>>,
    /// The phase of the app's ticks (see [`reader::next_tick`]).
    epoch: Instant,
    /// While a failed broker read's backoff runs: when it is tried again.
    retry_at: Option<Instant>,
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
    /// A scale-down still under way (waiting for busy workers), as the status shows it.
    scale_in: Option<Pending>,
    /// Worker pods told to stop taking tasks (`drainBusyWorkers`) and not told to resume.
    draining: BTreeSet<String>,
    /// The shadow policy's answer this tick (its name, and its replicas and reason or why it
    /// failed), and whether it matched the applied count at each sample of the last hour.
    shadow_answer: Option<(String, ShadowAnswer)>,
    shadow_agreement: std::collections::VecDeque<(u64, bool)>,
    /// The pool's recent ticks, shared with `/trace`.
    trace: Option<Arc<std::sync::Mutex<trace::Trace>>>,
    /// Its decision series, from its first decision on.
    decider: Option<Decider>,
    /// Its key in the controllers' caches, where its annotations are read every tick.
    store_key: ObjectRef<Celery>,
}

/// What the shadow policy answered: the replicas it would set and its reason, or why it failed.
type ShadowAnswer = Result<(u32, String), String>;

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

impl AppLoop {
    /// The loop of `plan`, resuming from what `handed` (the object as handed over, with its
    /// status) says an earlier loop wrote.
    async fn new(shared: &Shared, plan: &Plan, handed: &Celery, reader: Arc<Mutex<AppReader>>) -> Self {
        let celery = &plan.celery;
        let namespace = celery.namespace().unwrap_or_default();
        let name = celery.name_any();
        let group = plan.pool.group.clone();
        let status = handed.status.as_ref();
        // What the pool's loop wrote before (this process's or an earlier one's).
        let written = match &group {
            None => status.and_then(|s| s.autoscaler.as_ref()),
            Some(g) => status.and_then(|s| s.worker_groups.iter().find(|w| &w.name == g)).and_then(|w| w.autoscaler.as_ref()),
        };
        let tuning = plan.tuning.clone();
        let epoch = reader.lock().await.epoch();
        let label = match &group {
            None => format!("{namespace}/{name}"),
            Some(g) => format!("{namespace}/{name}/{g}"),
        };
        let writer = status_writer(&shared.writer, group.as_deref()).unwrap_or_else(|| shared.writer.clone());
        let mut app = Self {
            celery: Arc::clone(celery),
            reference: celery.object_ref(&()),
            outgoing: shared.outbox.slot(writer, label.clone()),
            label,
            namespace,
            pool_key: names::pool_key(&name, group.as_deref()),
            group,
            worker: String::new(),
            queues: Vec::new(),
            policies: Vec::new(),
            min: 0,
            max: 0,
            spec_min: 0,
            spec_max: 0,
            schedules: Vec::new(),
            concurrency: 1,
            damper: Damper::new(tuning.stabilization, tuning.step_percent, tuning.step_period),
            tuning,
            needs_broker: true,
            epoch,
            reader,
            retry_at: None,
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
            scale_in: written.and_then(|a| a.scale_in.as_ref()).map(|p| Pending {
                goal: u32::try_from(p.replicas).unwrap_or(0),
                since: p.since.0,
                waiting_for: p.waiting_for.clone(),
            }),
            draining: written.and_then(|a| a.scale_in.as_ref()).map(|p| p.draining.iter().cloned().collect()).unwrap_or_default(),
            shadow_answer: None,
            shadow_agreement: std::collections::VecDeque::new(),
            trace: None,
            decider: None,
            store_key: ObjectRef::from_obj(&**celery),
        };
        if app.group.is_some() {
            // A group's loop writes no condition: `ScalingActive` is `workerSpec`'s.
            app.condition.clear();
        }
        app.reconfigure(plan).await;
        info!(app = %app.label, policy = %app.policy_label(), "autoscaling starts");
        app
    }

    /// Takes a newer plan: what the spec changed, keeping the history, the damping's past
    /// and (when the broker did not change) the connection.
    async fn reconfigure(&mut self, plan: &Plan) {
        let celery = &plan.celery;
        self.celery = Arc::clone(celery);
        self.reference = celery.object_ref(&());
        self.worker.clone_from(&plan.pool.deployment);
        self.queues.clone_from(&plan.pool.queues);
        self.needs_broker = plan.policies.iter().any(|p| p.name != CPU_MEMORY_POLICY);
        self.policies.clone_from(&plan.policies);
        self.spec_min = u32::try_from(plan.min_replicas).unwrap_or(0);
        self.spec_max = u32::try_from(plan.max_replicas).unwrap_or(0);
        (self.min, self.max) = (self.spec_min, self.spec_max);
        // Checked by validation: a window that does not parse cannot be here.
        self.schedules = plan.tuning.schedules.iter().filter_map(|w| w.parse().ok()).collect();
        self.concurrency = plan.pool.concurrency;
        let tuning = &plan.tuning;
        if self.tuning != *tuning {
            self.damper.retune(tuning.stabilization, tuning.step_percent, tuning.step_period);
            self.tuning = tuning.clone();
        }
        self.damper.set_scale_up(tuning.scale_up);
        let mut reader = self.reader.lock().await;
        reader.follow(celery);
        reader.want(self.group.as_deref(), self.needs_broker.then_some(&self.queues[..]));
    }

    /// When every policy of the app needs the queues and the broker (or Flower standing in
    /// for it) is in its backoff: the time of the next try, before which a tick would only
    /// hold the count again.
    fn resting_until(&self) -> Option<Instant> {
        let all_need_the_broker = self.policies.iter().all(|p| p.name != CPU_MEMORY_POLICY);
        let at = self.retry_at?;
        (all_need_the_broker && !self.policies.is_empty() && at > Instant::now()).then_some(at)
    }

    /// What the pool runs with, heading its trace.
    fn trace_setup(&self) -> trace::Setup {
        trace::Setup {
            label: self.label.clone(),
            policies: self
                .policies
                .iter()
                .map(|p| (p.name.clone(), p.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
                .collect(),
            combine: self.tuning.combine.to_string(),
            min: self.spec_min,
            max: self.spec_max,
            concurrency: self.concurrency,
            interval: self.tuning.interval,
            stabilization: self.tuning.stabilization,
            step_percent: self.tuning.step_percent,
            step_period: self.tuning.step_period,
        }
    }

    fn policy_label(&self) -> String {
        self.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join("+")
    }

    /// One sample, decision and (maybe) scale, for the tick due at `tick` (or woken then by a
    /// push: see [`run`]); it takes the broker's figures from a read made since.
    async fn tick(&mut self, shared: &Shared, tick: Instant) {
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

        // One read for the app's loops: the first of them to get here reads the queues of all.
        let (queues, change, flower) = {
            let mut reader = self.reader.lock().await;
            let queues =
                if self.needs_broker { Some(reader.queues(&self.queues, tick, self.tuning.interval).await) } else { None };
            self.retry_at = reader.retry_at();
            let change = reader.refresh_flower().await;
            (queues, change, reader.flower())
        };
        match change {
            // Of the app's Flower, whichever loop read it: the event names no group.
            Some(progress::Change::Failed(message)) => {
                warn!(app = %self.label, %message, "Flower cannot be read: the policy sees no tasks in progress");
                shared.writer.event(&self.reference, EventType::Warning, FLOWER_UNAVAILABLE, &message, ACTION).await;
            }
            Some(progress::Change::Recovered) => info!(app = %self.label, "Flower can be read again"),
            None => {}
        }
        let mut pods = shared.cluster.pods(&self.namespace, &self.pool_key);
        flower.fill(&mut pods);
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
        let effective = schedule::bounds(now, self.spec_min, self.spec_max, &self.schedules);
        (self.min, self.max) = (effective.min, effective.max);
        status.active_schedules = effective.active;
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

        let measured = trace::Measured::of(&sample, broker_failure.is_some());
        let answers = self.ask(shared, sample, broker_failure.as_deref()).await;
        let bounds = Bounds { min: self.min, max: self.max, fallback: self.tuning.fallback };
        let policies = self.policy_label();
        let decision = decide::decide(now_ms, current, &answers, &mut self.damper, bounds, self.tuning.combine, &policies);
        let decision = self.overridden(shared, current, decision);
        if decision.held && !decision.health.ok() {
            let cause = if decision.health.reason == POLICY_FAILED { FailureCause::Policy } else { FailureCause::Metrics };
            shared.metrics.observe_failure(&self.label, cause);
        }
        let decide::Decision { target, health, mut reason, proposed, policy, held, recommended } = decision;
        let waiting_before = self.scale_in.as_ref().map(|p| p.waiting_for.clone());
        let (target, note) = self.scale_in(shared, &flower, now, current, target, held, recommended).await;
        if !note.is_empty() {
            reason = format!("{reason}; {note}");
        }
        self.decider.get_or_insert_with(|| shared.metrics.decider(&self.label)).decided(current, target);
        status.shadow = self.shadow_status(shared, now_ms, target);

        let mut changed = self.last_decision.as_ref().map(|d| d.replicas) != Some(target as i32)
            || waiting_before != self.scale_in.as_ref().map(|p| p.waiting_for.clone());
        if target != current {
            match self.scale(shared, current, target, &format!("{policy}: {reason}")).await {
                Ok(()) => {
                    self.last_scale_time = Some(Time(now));
                    // A count an annotation set is not the policies' scale-up.
                    if health.reason != PAUSED {
                        self.damper.scaled_up(now_ms, target.saturating_sub(current));
                    }
                    changed = true;
                }
                Err(message) => {
                    shared.metrics.observe_failure(&self.label, FailureCause::Scale);
                    self.conclude_with(shared, &mut status, Health { reason: SCALE_FAILED, message }, true).await;
                    return;
                }
            }
        }
        if let Some(ring) = &self.trace {
            let health_changed = self.health.as_ref().is_none_or(|h| h.reason != health.reason);
            let shadow = status.shadow.as_ref().and_then(|s| s.replicas).and_then(|n| u32::try_from(n).ok());
            ring.lock().expect("trace lock").record(measured, target, shadow, health_changed, format_args!("{policy}: {reason}"));
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

    /// The shadow policy's answer for the status and its metric, with how often it matched the
    /// applied count (`target`) over the last hour.
    fn shadow_status(&mut self, shared: &Shared, now_ms: u64, target: u32) -> Option<crate::crd::ShadowStatus> {
        const HOUR_MS: u64 = 3_600_000;
        let Some((policy, answer)) = self.shadow_answer.take() else {
            self.shadow_agreement.clear();
            return None;
        };
        while self.shadow_agreement.front().is_some_and(|(at, _)| now_ms.saturating_sub(*at) >= HOUR_MS) {
            self.shadow_agreement.pop_front();
        }
        let (replicas, reason) = match answer {
            Ok((replicas, reason)) => {
                self.shadow_agreement.push_back((now_ms, replicas == target));
                (Some(replicas), reason)
            }
            Err(why) => (None, why),
        };
        shared.metrics.observe_shadow(&self.label, replicas);
        let agreed = self.shadow_agreement.iter().filter(|(_, same)| *same).count();
        let samples = self.shadow_agreement.len();
        Some(crate::crd::ShadowStatus {
            policy,
            replicas: replicas.map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
            reason: crate::policy::truncate(&reason, 512),
            agreement_percent: (samples > 0).then(|| i32::try_from(agreed * 100 / samples).unwrap_or(100)),
        })
    }

    /// `decision` as the app's override annotations allow it (see [`overrides`]), read from the
    /// controllers' cache. While the count is held the damping starts afresh, so that when the
    /// hold ends it resumes from the held count (no step down before a whole window).
    fn overridden(&mut self, shared: &Shared, current: u32, decision: decide::Decision) -> decide::Decision {
        let key = &self.store_key;
        let cached = shared.apps.iter().find_map(|s| s.get(key)).filter(|c| c.metadata.uid == self.celery.metadata.uid);
        let annotations = cached.as_deref().unwrap_or(&*self.celery).annotations();
        match overrides::Override::from_annotations(annotations) {
            Ok(o) if o.is_none() => decision,
            Ok(o) => {
                if o.holds() {
                    self.damper.forget();
                }
                o.apply(current, decision)
            }
            Err(message) => decide::Decision {
                target: current,
                reason: format!("holding {current} workers: {message}"),
                health: Health { reason: INVALID_SPEC, message },
                proposed: None,
                held: true,
                recommended: None,
                ..decision
            },
        }
    }

    /// Carries out the decided `target` as far as the workers allow, and returns the count to
    /// write with what was chosen (see [`scalein`]). A lower count marks the workers that must
    /// go before it is written; with `busyWorkers: Wait` the busy ones are kept until they are
    /// idle or `maxWaitSeconds` has passed. Marks left from a scale-down that did not happen
    /// are cleared, so a steady app costs no pod writes.
    #[allow(clippy::too_many_arguments)]
    async fn scale_in(
        &mut self,
        shared: &Shared,
        flower: &View,
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
                load: flower.load(&p.name),
                draining: self.draining.contains(&p.name),
            })
            .collect();
        if goal >= current {
            self.scale_in = None;
            let stale = scalein::steady(&workers);
            self.mark(shared, &[], &stale).await;
            self.drain(BTreeSet::new(), &pods).await;
            return (goal, String::new());
        }
        let figures = match flower.figures() {
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
        self.drain(want, &pods).await;
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
    async fn drain(&mut self, want: BTreeSet<String>, pods: &[PodState]) {
        let alive = |name: &String| pods.iter().any(|p| &p.name == name && !p.terminating);
        let stop: Vec<String> = want.difference(&self.draining).cloned().collect();
        let resume: Vec<String> = self.draining.difference(&want).filter(|n| alive(n)).cloned().collect();
        // A drained pod that is gone needs nothing more.
        self.draining.retain(|n| want.contains(n) || alive(n));
        if stop.is_empty() && resume.is_empty() {
            return;
        }
        let mut reader = self.reader.lock().await;
        let broker = match reader.broker().await {
            Ok(broker) => broker,
            Err(error) => {
                warn!(app = %self.label, %error, "cannot tell workers to stop or resume taking tasks");
                return;
            }
        };
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
    async fn ask(&mut self, shared: &Shared, sample: Sample, broker_failure: Option<&str>) -> Vec<Answer> {
        self.shadow_answer = None;
        let mut input = self.input.take().unwrap_or_else(|| PolicyInput {
            app: String::new(),
            current_replicas: 0,
            min_replicas: 0,
            max_replicas: 0,
            concurrency: 1,
            current: sample_placeholder(),
            history: Vec::new(),
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
        // The history kept is the longest any of the app's policies reads: a policy that reads
        // none (`"history": 0`) costs no samples, and the calls need not cut a copy of the input.
        let mut read = 0;
        for policy in &mut self.policies {
            let failed =
                |reason, message: String| Answer::Failed { policy: policy.name.clone(), health: Health { reason, message } };
            if let Some(message) = broker_failure
                && policy.name != CPU_MEMORY_POLICY
            {
                answers.push(failed(METRICS_UNAVAILABLE, message.to_string()));
                continue;
            }
            let loaded = match shared.policies.registry().resolve(&policy.name) {
                Ok(loaded) => loaded,
                Err(e) => {
                    // Unknown until it loads: keep the whole window for it.
                    read = HISTORY;
                    answers.push(failed(POLICY_FAILED, format!("{}: {e}", policy.field)));
                    continue;
                }
            };
            read = read.max(loaded.reads());
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
                Ok((verdict, took)) if verdict.declined.is_some() => {
                    shared.metrics.observe_policy(&policy.name, took);
                    Answer::Declined { policy: policy.name.clone(), reason: verdict.declined.unwrap_or_default() }
                }
                Ok((verdict, took)) => {
                    shared.metrics.observe_policy(&policy.name, took);
                    Answer::Decided(Choice {
                        bounded: verdict.decision.replicas,
                        proposed: verdict.proposed,
                        reason: verdict.decision.reason,
                        policy: policy.name.clone(),
                    })
                }
                Err(e) => failed(POLICY_FAILED, format!("{}: {e}", policy.name)),
            });
        }
        self.shadow_answer = match &self.tuning.shadow {
            None => None,
            Some(shadow) if broker_failure.is_some() && shadow.name != CPU_MEMORY_POLICY => {
                Some((shadow.name.clone(), Err(broker_failure.unwrap_or_default().to_string())))
            }
            // On a copy of the input: whatever the shadow does, the real policies' history stays.
            Some(shadow) => {
                let (read_by_shadow, answer) = ask_shadow(shared, shadow, &input, limits.clone()).await;
                read = read.max(read_by_shadow);
                Some((shadow.name.clone(), answer))
            }
        };
        let finished = std::mem::replace(&mut input.current, sample_placeholder());
        if broker_failure.is_none() {
            sampler::remember(&mut input.history, finished, read);
        }
        self.input = Some(input);
        answers
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
        // NB: Kubernetes' event recorder folds an event into an earlier one of the same action
        // and reason (a series, which keeps the first note): naming the counts in the action
        // keeps each different scale's reason visible.
        let action = format!("{ACTION} {}{from}→{to}", self.group_prefix());
        shared.writer.event(&self.reference, EventType::Normal, event_reason, &note, &action).await;
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
            // Both gauges follow the reason: set when it changes (and at the first tick).
            shared.metrics.observe_health(&self.label, health.ok(), health.reason == PAUSED);
            if health.ok() {
                if self.health.is_some() {
                    self.event(shared, EventType::Normal, POLICY_DECIDING, &health.message).await;
                }
            } else if health.reason == PAUSED {
                info!(app = %self.label, message = %health.message, "autoscaling overridden by an annotation");
                self.event(shared, EventType::Normal, PAUSED, &health.message).await;
            } else {
                warn!(app = %self.label, reason = health.reason, message = %health.message, "autoscaling holds the replica count");
                self.event(shared, EventType::Warning, health.reason, &health.message).await;
            }
        }
        if self.outgoing.take_failure() {
            // The last post was refused: what it said is not in the status, so it is due again.
            self.last_status = None;
            self.written_health = None;
        }
        let since = self.last_status.map(|at| at.elapsed());
        let (following, refresh, refresh_held) = status_pace(shared.pools.load(Ordering::Relaxed));
        let refresh = if health.ok() { refresh } else { refresh_held };
        let due = since.is_none_or(|t| t >= refresh);
        let backlog = sampler::total_backlog(status);
        let moved = since.is_none_or(|t| t >= following)
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
        let body = match &self.group {
            Some(group) => report::status::group_autoscaler_part(group, status),
            None => report::status::autoscaler_part(backlog, status, &condition),
        };
        // What is posted counts as written from now: a write the API server refuses is
        // reported back (see the start of this function), and posted again.
        let urgency = if changed || transition || reworded { Urgency::Change } else { Urgency::Refresh };
        self.outgoing.post(&self.celery, body, urgency);
        self.last_status = Some(Instant::now());
        self.written_backlog = backlog;
        self.written_active = status.active_tasks;
        if self.group.is_none() {
            self.condition = vec![condition];
        }
        self.written_health = Some(health);
    }

    /// The app is no longer autoscaled: remove what the autoscaler wrote in its status.
    async fn retire(self, shared: &Shared) {
        info!(app = %self.label, "autoscaling stops");
        self.forget(shared).await;
        self.outgoing.clear(&self.celery).await;
    }

    /// Drops the loop's metrics, and its queues from the app's reads.
    async fn forget(&self, shared: &Shared) {
        shared.metrics.forget_app(&self.label, &self.queues);
        shared.traces.forget(&self.label);
        self.reader.lock().await.want(self.group.as_deref(), None);
    }
}

/// The shadow policy's answer on a copy of `input` with its own settings: the replicas it
/// would set (within the bounds) and its reason, or why it failed; and how much history it reads.
async fn ask_shadow(
    shared: &Shared,
    shadow: &PolicyRef,
    input: &PolicyInput,
    limits: CallLimits,
) -> (usize, Result<(u32, String), String>) {
    let loaded = match shared.policies.registry().resolve(&shadow.name) {
        Ok(loaded) => loaded,
        Err(e) => return (HISTORY, Err(format!("{}: {e}", shadow.field))),
    };
    let read = loaded.reads();
    let mut copy = input.clone();
    copy.settings.clone_from(&shadow.settings);
    let (_, outcome) = shared.policies.runner().decide_lending(loaded, copy, Some(limits)).await;
    let answer = match outcome {
        Ok((verdict, _)) if verdict.declined.is_some() => {
            Err(format!("{} declined: {}", shadow.name, verdict.declined.unwrap_or_default()))
        }
        Ok((verdict, _)) => Ok((verdict.decision.replicas, verdict.decision.reason)),
        Err(e) => Err(format!("{}: {e}", shadow.name)),
    };
    (read, answer)
}

/// An empty sample, standing in for the current one between two ticks (allocates nothing).
fn sample_placeholder() -> Sample {
    Sample { timestamp_ms: 0, replicas: 0, queues: Vec::new(), pods: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_refreshes_spread_as_pools_grow_and_stay_within_their_budget() {
        let secs = |d: Duration| d.as_secs_f64();
        // Up to 100 pools: every 2 s while figures move, every 2 (5, held) minutes otherwise.
        for pools in [0, 1, 22, 100] {
            assert_eq!(status_pace(pools), (STATUS_REFRESH_MOVING, STATUS_REFRESH, STATUS_REFRESH_HELD), "{pools} pools");
        }
        let (following, refresh, held) = status_pace(1_000);
        assert_eq!((secs(following), refresh, held), (20.0, STATUS_REFRESH, STATUS_REFRESH_HELD));
        let (following, refresh, held) = status_pace(10_000);
        assert_eq!((secs(following), secs(refresh), secs(held)), (200.0, 1_000.0, 1_000.0));
        // Whatever the number, those writes stay within their budget, all pools together.
        for pools in [1usize, 50, 100, 101, 999, 1_200, 5_000, 10_000, 100_000] {
            let (following, refresh, held) = status_pace(pools);
            let rate = |pause: Duration| pools as f64 / secs(pause);
            assert!(rate(following) <= FOLLOW_WRITES_PER_SECOND + 1e-9, "{pools} pools follow at {}", rate(following));
            assert!(rate(refresh).max(rate(held)) <= REFRESH_WRITES_PER_SECOND + 1e-9, "{pools} pools refresh too often");
        }
    }

    /// The CI run that found it: the first tick came before the watch showed the Deployment
    /// the reconciler had just created, and with an hour's interval the next tick (the first
    /// decision) was an hour away.
    #[test]
    fn a_tick_that_found_no_deployment_looks_again_within_a_second_whatever_the_interval() {
        let epoch = Instant::now();
        let now = epoch + Duration::from_millis(10);
        let hour = Duration::from_secs(3600);
        assert_eq!(next_wake(epoch, hour, now, None, false, false), epoch + hour);
        assert_eq!(next_wake(epoch, hour, now, None, true, false), now + MISSING_RECHECK);
        // Even while the broker rests: the Deployment's absence is what to report on time.
        assert_eq!(next_wake(epoch, hour, now, Some(now + hour * 2), true, false), now + MISSING_RECHECK);
        // A short interval keeps its phase.
        let second = Duration::from_millis(500);
        assert_eq!(next_wake(epoch, second, now, None, true, false), epoch + second);
        // The broker's backoff delays a tick that found the Deployment.
        assert_eq!(next_wake(epoch, second, now, Some(now + hour), false, false), now + hour);
    }

    /// The read a push woke saw the burst's first messages: the loop reads again moments later
    /// for the rest, not at its next tick; a later tick keeps its phase.
    #[test]
    fn a_woken_tick_reads_again_soon_for_the_rest_of_the_burst() {
        let epoch = Instant::now();
        let now = epoch + Duration::from_millis(10);
        let second = Duration::from_secs(1);
        assert_eq!(next_wake(epoch, second, now, None, false, true), now + WAKE_FOLLOW_UP);
        assert_eq!(next_wake(epoch, second, now, None, false, false), epoch + second);
        // A tick due sooner than the follow-up stays where it was.
        let late = epoch + Duration::from_millis(950);
        assert_eq!(next_wake(epoch, second, late, None, false, true), epoch + second);
        // A broker in its backoff is not read again sooner for it.
        assert_eq!(next_wake(epoch, second, now, Some(now + second * 5), false, true), now + second * 5);
    }
}
