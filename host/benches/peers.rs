//! celery-operator beside KEDA v2.21.0 on one control plane, one Redis and the same burst,
//! printed in one table (`make bench-peers`; `cargo bench -p celery-operator --bench peers`).
//!
//! Each system scales a worker Deployment of its own (kwok's pods: nothing consumes the queue)
//! from a Celery queue in Redis, with a target of 10 messages per worker, from 0 up to 10:
//!
//! - celery-operator, as its release binary in a process of its own, reading every second (its
//!   default), then with Redis's keyspace events on (which wake it at the first message);
//! - KEDA at its fastest reasonable settings (pollingInterval 1 s, the HPA controller syncing
//!   every second, cooldown 0), then at its defaults (30 s, 15 s, 300 s). Its `redis` trigger
//!   reads one list, and Celery puts a queue's prioritised messages in sub-lists
//!   (`q\x06\x163`, `…6`, `…9`): to be fair, it gets one trigger per list, summed by
//!   `scalingModifiers`. A third KEDA, with the one trigger a user would write first, shows
//!   what it then misses.
//!
//! The burst: 50 messages, one LPUSH each, 20 at the default priority and 10 at each of 3, 6
//! and 9: 5 workers' worth. Per system and setting:
//!
//! - reaction: burst → the first new replica, and → 5 replicas, seen through a watch on the
//!   Deployment, over TRIALS trials (default 20) pushed at phases spread evenly over the
//!   polling interval, each from an empty queue and 0 replicas;
//! - the backlog it saw against the true one, with the burst held and 5 more messages
//!   delivered to a worker and not acknowledged (kombu's `unacked` hash): the operator's status,
//!   KEDA's external metric as the HPA reads it;
//! - scale-in: the queue emptied → 0 replicas, at the setting's own scale-down rules;
//! - API requests per trial (a scale-up and the scale-down after it; KEDA's between trials is
//!   the bench's, at its defaults), from the API server's audit log (watches aside; each
//!   system's parts have users of their own);
//! - at rest (an empty queue, 0 replicas) for REST seconds (60): CPU and API requests per
//!   minute, and memory: of the operator's process, and of KEDA's operator, metrics adapter and
//!   the HPA controller its 1 → N path needs (run in a controller manager of its own).
//!
//! KEDA is built on first use (hack/build-keda.sh, about 20 minutes, cached). A benchmark,
//! never a test: nothing here passes or fails on a timing.

#[path = "shared/measure.rs"]
mod measure;
#[path = "../tests/common/servers.rs"]
mod servers;
#[path = "shared/stage.rs"]
mod stage;
#[path = "../tests/cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use celery_operator::crd::Celery;
use celery_operator::policy::cli::percentiles;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use support::{ControlPlane, Env, eventually};

const WAIT: Duration = Duration::from_secs(900);
/// Celery's Redis transport: a queue's messages at priority p (other than 0) wait in the list
/// `<queue>\x06\x16<p>`.
const PRIORITY_SEP: &str = "\x06\x16";
const PRIORITIES: [&str; 3] = ["3", "6", "9"];
/// The burst, and the workers it is worth at 10 messages each.
const BURST: usize = 50;
const WORKERS: i32 = 5;
/// Messages delivered and not acknowledged while the burst is held.
const UNACKED: usize = 5;
const KEDA_USERS: [&str; 3] = ["keda-operator", "keda-adapter", "hpa-controller"];
const KEDA_PROCESSES: [&str; 3] = ["keda-operator", "keda-adapter", "hpa-controller-manager"];

fn main() {
    let trials = measure::env_number("TRIALS", 20);
    let stage::Stage { runtime, control_plane, redis: _redis, broker } = stage::stage();
    let port = broker.trim_start_matches("redis://127.0.0.1:").trim_end_matches("/0").to_string();
    let address = format!("127.0.0.1:{port}");
    runtime.block_on(async {
        let env = Env::connect(&control_plane).await;
        support::install(&env).await;
        control_plane.start_keda("1s").expect("KEDA starts beside the operator");
        let redis = redis::Client::open(broker.as_str()).expect("redis client");
        let mut conn = redis.get_multiplexed_async_connection().await.expect("redis connection");
        let mut rows = Vec::new();
        let bench = Bench { env: &env, cp: &control_plane, trials };

        // celery-operator: its release binary, in a process of its own.
        let ns = env.namespace("ours").await;
        let mut operator = tokio::process::Command::new(env!("CARGO_BIN_EXE_celery-operator"))
            .args(["run", "--namespace", &ns, "--listen", &format!("127.0.0.1:{}", servers::free_port())])
            .arg("--kubeconfig")
            .arg(control_plane.operator_kubeconfig())
            .arg("--policy-dir")
            .arg(support::repo_root().join("target/policies"))
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("the operator's binary starts");
        let ours = Processes { pids: vec![operator.id().expect("running").to_string()], users: vec![support::OPERATOR_USER] };
        let polled = Ours { name: "polled", ns: ns.clone(), address: address.clone(), keyspace: false };
        rows.push(polled.series(&bench, &ours, &mut conn, "celery-operator, defaults (reads every 1 s)").await);
        let woken = Ours { name: "woken", ns: ns.clone(), address: address.clone(), keyspace: true };
        rows.push(woken.series(&bench, &ours, &mut conn, "celery-operator, Redis keyspace events on").await);
        let _ = operator.kill().await;

        let keda = Processes::keda(&control_plane);
        let ns = env.namespace("keda").await;
        let fast = Keda { name: "fast", ns: ns.clone(), address: address.clone(), fast: true, fair: true };
        rows.push(fast.series(&bench, &keda, &mut conn, "KEDA fastest (poll 1 s, HPA sync 1 s)").await);
        let naive = Keda { name: "naive", ns: ns.clone(), address: address.clone(), fast: true, fair: false };
        rows.push(naive.held_only(&env, &mut conn, "KEDA fastest, one trigger on the queue key").await);
        control_plane.restart_hpa("15s").expect("the HPA controller restarts");
        // The HPA controller is a new process.
        let keda = Processes::keda(&control_plane);
        let defaults = Keda { name: "defaults", ns, address, fast: false, fair: true };
        rows.push(defaults.series(&bench, &keda, &mut conn, "KEDA defaults (poll 30 s, HPA sync 15 s)").await);

        print_table(&mut rows, trials);
    });
}

/// What every series runs against.
struct Bench<'a> {
    env: &'a Env,
    cp: &'a ControlPlane,
    trials: usize,
}

impl Bench<'_> {
    /// The reaction trials of a system scaling `worker` from `queue`, at phases spread over
    /// `interval`, each followed by `reset` (an empty queue and 0 replicas again); then the
    /// system at rest. The row holds their figures.
    #[allow(clippy::too_many_arguments)]
    async fn reactions(
        &self,
        p: &Processes,
        conn: &mut redis::aio::MultiplexedConnection,
        deployments: &Api<Deployment>,
        worker: &str,
        queue: &str,
        interval: Duration,
        label: &str,
        mut reset: impl AsyncFnMut(&mut redis::aio::MultiplexedConnection),
    ) -> Row {
        let mut row = Row { label: label.into(), ..Row::default() };
        let usage = Usage::open(p);
        for t in 0..self.trials {
            let (first, last) = trial(deployments, worker, conn, queue, phase(t, interval)).await;
            row.first.push(first);
            row.last.push(last);
            reset(conn).await;
        }
        let (_, requests, _) = usage.close(p, self.cp).await;
        row.requests_per_trial = Some(requests as f64 / self.trials.max(1) as f64);
        at_rest(p, self.cp, &mut row).await;
        row
    }
}

/// The processes and API users of one system.
struct Processes {
    pids: Vec<String>,
    users: Vec<&'static str>,
}

impl Processes {
    /// KEDA's operator, metrics adapter and HPA controller, as `start-keda` runs them.
    fn keda(cp: &ControlPlane) -> Self {
        let pids = KEDA_PROCESSES.iter().map(|c| cp.pid_of(c).expect("KEDA runs").to_string()).collect();
        Self { pids, users: KEDA_USERS.to_vec() }
    }

    fn cpu(&self) -> Duration {
        self.pids.iter().map(|p| measure::cpu_of(p)).sum()
    }
    fn rss_kib(&self) -> u64 {
        self.pids.iter().map(|p| measure::rss_kib_of(p)).sum()
    }
    fn requests(&self, cp: &ControlPlane, from: jiff::Timestamp, to: jiff::Timestamp) -> usize {
        cp.audited().iter().filter(|r| self.users.contains(&r.user.as_str()) && r.received >= from && r.received <= to).count()
    }
}

/// One row of the table.
#[derive(Default)]
struct Row {
    label: String,
    first: Vec<Duration>,
    last: Vec<Duration>,
    /// What it saw of the held burst, and how long the scale-in took.
    seen: Option<f64>,
    scale_in: Option<Duration>,
    scale_in_rule: String,
    /// API requests per trial (a scale-up and the scale-down after it).
    requests_per_trial: Option<f64>,
    /// At rest (an empty queue, 0 replicas) for [`rest`]: CPU and API requests per minute; and
    /// memory at the end.
    rest_cpu_per_minute: Option<Duration>,
    rest_requests_per_minute: Option<f64>,
    rss_kib: Option<u64>,
}

/// A window of a system's use of CPU and the API server, from its start to `close`.
struct Usage {
    cpu: Duration,
    at: Instant,
    since: jiff::Timestamp,
}

impl Usage {
    fn open(p: &Processes) -> Self {
        Self { cpu: p.cpu(), at: Instant::now(), since: jiff::Timestamp::now() }
    }

    /// CPU used, API requests made, and the window's length.
    async fn close(self, p: &Processes, cp: &ControlPlane) -> (Duration, usize, Duration) {
        let (cpu, took) = (p.cpu().saturating_sub(self.cpu), self.at.elapsed());
        let to = jiff::Timestamp::now();
        // The audit log is written as requests complete: let the last lines land.
        tokio::time::sleep(Duration::from_millis(500)).await;
        (cpu, p.requests(cp, self.since, to), took)
    }
}

/// How long a system is watched at rest: REST seconds, 60 by default.
fn rest() -> Duration {
    Duration::from_secs(measure::env_number("REST", 60) as u64)
}

/// The system at rest for [`rest`]: its CPU and API requests per minute, and its memory.
async fn at_rest(p: &Processes, cp: &ControlPlane, row: &mut Row) {
    let usage = Usage::open(p);
    tokio::time::sleep(rest()).await;
    let (cpu, requests, took) = usage.close(p, cp).await;
    let minutes = took.as_secs_f64() / 60.0;
    row.rest_cpu_per_minute = Some(cpu.div_f64(minutes));
    row.rest_requests_per_minute = Some(requests as f64 / minutes);
    row.rss_kib = Some(p.rss_kib());
}

fn lists(queue: &str) -> Vec<String> {
    std::iter::once(queue.to_string()).chain(PRIORITIES.iter().map(|p| format!("{queue}{PRIORITY_SEP}{p}"))).collect()
}

/// The burst, as a producer sends it: one LPUSH per message, 2 in 5 at the default priority.
async fn burst(conn: &mut redis::aio::MultiplexedConnection, queue: &str) {
    let lists = lists(queue);
    for i in 0..BURST {
        let list = match i % 5 {
            0 | 1 => &lists[0],
            n => &lists[n - 1],
        };
        let _: () = redis::cmd("LPUSH").arg(list).arg(format!("{{\"bench\": {i}}}")).query_async(conn).await.expect("LPUSH");
    }
}

/// Messages of `queue` delivered to a worker and not acknowledged, as kombu keeps them.
async fn unacked(conn: &mut redis::aio::MultiplexedConnection, queue: &str) {
    for i in 0..UNACKED {
        let tag = format!("{queue}-unacked-{i}");
        let entry = serde_json::json!([{"body": "", "properties": {"delivery_tag": tag}}, "", queue]).to_string();
        let _: () = redis::cmd("HSET").arg("unacked").arg(&tag).arg(entry).query_async(conn).await.expect("HSET");
        let _: () = redis::cmd("ZADD").arg("unacked_index").arg(0).arg(&tag).query_async(conn).await.expect("ZADD");
    }
}

async fn empty(conn: &mut redis::aio::MultiplexedConnection, queue: &str) {
    let _: () = redis::cmd("DEL").arg(lists(queue)).arg("unacked").arg("unacked_index").query_async(conn).await.expect("DEL");
}

async fn replicas(api: &Api<Deployment>, name: &str) -> Result<i32, String> {
    let d = api.get_opt(name).await.map_err(|e| e.to_string())?.ok_or("no Deployment yet")?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

async fn wait_replicas(api: &Api<Deployment>, name: &str, want: impl Fn(i32) -> bool) -> i32 {
    eventually(&format!("{name}'s replicas"), WAIT, || async {
        let got = replicas(api, name).await?;
        if want(got) { Ok(got) } else { Err(format!("{got}")) }
    })
    .await
}

/// One trial: the burst on `queue`, at `phase` of the interval; → the first new replica and
/// → [`WORKERS`], through a watch on `worker`.
async fn trial(
    deployments: &Api<Deployment>,
    worker: &str,
    conn: &mut redis::aio::MultiplexedConnection,
    queue: &str,
    phase: Duration,
) -> (Duration, Duration) {
    tokio::time::sleep(phase).await;
    let config = watcher::Config::default().fields(&format!("metadata.name={worker}"));
    let mut changes = watcher::watcher(deployments.clone(), config).boxed();
    while let Some(event) = changes.next().await {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            break;
        }
    }
    let pushed = Instant::now();
    burst(conn, queue).await;
    let mut first = None;
    let last = tokio::time::timeout(WAIT, async {
        loop {
            match changes.next().await {
                Some(Ok(watcher::Event::Apply(d))) => {
                    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    if replicas > 0 {
                        first.get_or_insert(pushed.elapsed());
                    }
                    if replicas >= WORKERS {
                        break pushed.elapsed();
                    }
                }
                Some(_) => {}
                None => panic!("the watch ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{worker} did not reach {WORKERS} replicas within {WAIT:?}"));
    (first.unwrap_or(last), last)
}

/// The golden ratio's multiples cover [0, 1) evenly for any number of trials.
fn phase(trial: usize, interval: Duration) -> Duration {
    interval.mul_f64((trial as f64 * 0.618_033_988_75).fract())
}

/// The held burst's scale-in: the queue emptied → 0 replicas.
async fn scale_in(
    deployments: &Api<Deployment>,
    worker: &str,
    conn: &mut redis::aio::MultiplexedConnection,
    queue: &str,
) -> Duration {
    let emptied = Instant::now();
    empty(conn, queue).await;
    wait_replicas(deployments, worker, |r| r == 0).await;
    emptied.elapsed()
}

struct Ours {
    name: &'static str,
    ns: String,
    /// Redis's `127.0.0.1:<port>`.
    address: String,
    /// Whether Redis publishes keyspace events (the bench owns this Redis and sets them).
    keyspace: bool,
}

impl Ours {
    fn yaml(&self, scale_down: &str) -> String {
        format!(
            "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {name}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: 'redis://{address}/0'}}
  workerSpec: {{numOfWorkers: 0, queues: {name}}}
  flowerSpec: {{enabled: false}}
  autoscaling:
    policy: queue-length
    settings: {{target: '10'}}
    minReplicas: 0
    maxReplicas: 10
{scale_down}",
            name = self.name,
            address = self.address,
        )
    }

    async fn series(&self, bench: &Bench<'_>, p: &Processes, conn: &mut redis::aio::MultiplexedConnection, label: &str) -> Row {
        let env = bench.env;
        let set = |flags: &'static str| redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg(flags).clone();
        let _: () = set(if self.keyspace { "Kl" } else { "" }).query_async(conn).await.expect("CONFIG SET");
        // Between trials the queue empties at once: a scale-down without a window resets them.
        let quick = "    scaleDown: {stabilizationWindowSeconds: 0, maxStepPercent: 100, periodSeconds: 0}\n";
        support::apply_yaml(&env.admin, &self.yaml(quick), Some(&self.ns)).await.expect("the Celery app applies");
        let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &self.ns);
        let worker = format!("{}-celery-worker", self.name);
        wait_replicas(&deployments, &worker, |r| r == 0).await;
        tokio::time::sleep(Duration::from_secs(3)).await;

        let reset = async |conn: &mut redis::aio::MultiplexedConnection| {
            empty(conn, self.name).await;
            wait_replicas(&deployments, &worker, |r| r == 0).await;
        };
        let mut row = bench.reactions(p, conn, &deployments, &worker, self.name, Duration::from_secs(1), label, reset).await;

        // Held, at the defaults' scale-down (without keyspace events), or the quickest.
        let (scale_down, rule) = if self.keyspace { (quick, "window 0") } else { ("", "window 60 s, 50 %/15 s") };
        // Applied again by its field manager: a scaleDown left out is back to its defaults.
        support::apply_yaml(&env.admin, &self.yaml(scale_down), Some(&self.ns)).await.expect("the Celery app applies");
        let celery: Api<Celery> = Api::namespaced(env.admin.clone(), &self.ns);
        burst(conn, self.name).await;
        unacked(conn, self.name).await;
        wait_replicas(&deployments, &worker, |r| r >= WORKERS).await;
        row.seen = Some(
            eventually("the held burst in the status", WAIT, || async {
                let c = celery.get(self.name).await.map_err(|e| e.to_string())?;
                let queues = c.status.and_then(|s| s.autoscaler).map(|a| a.queues).unwrap_or_default();
                let q = queues.iter().find(|q| q.name == self.name).ok_or("no queue status")?;
                let seen = q.backlog.unwrap_or(0) + q.reserved.unwrap_or(0);
                if seen as usize == BURST + UNACKED { Ok(seen as f64) } else { Err(format!("{q:?}")) }
            })
            .await,
        );
        row.scale_in = Some(scale_in(&deployments, &worker, conn, self.name).await);
        row.scale_in_rule = rule.into();
        let _: () = set("").query_async(conn).await.expect("CONFIG SET");
        celery.delete(self.name, &Default::default()).await.expect("deleted");
        row
    }
}

struct Keda {
    name: &'static str,
    ns: String,
    address: String,
    /// pollingInterval 1 s, cooldown 0, no HPA scale-down window (else KEDA's defaults).
    fast: bool,
    /// One trigger per priority list, summed (else one on the queue key).
    fair: bool,
}

impl Keda {
    fn worker(&self) -> String {
        format!("{}-worker", self.name)
    }

    /// The worker Deployment (the shape of the operator's, on kwok's node) and its ScaledObject.
    fn yaml(&self) -> String {
        let worker = self.worker();
        let trigger = |name: &str, list: &str| {
            format!(
                "  - type: redis\n    name: {name}\n    metadata: {{address: '{}', listName: {}, listLength: '10'}}\n",
                self.address,
                serde_json::to_string(list).expect("json")
            )
        };
        let lists = lists(self.name);
        let (triggers, modifiers) = if self.fair {
            let names = ["p0", "p3", "p6", "p9"];
            let triggers: String = names.iter().zip(&lists).map(|(n, l)| trigger(n, l)).collect();
            (
                triggers,
                format!("    scalingModifiers: {{formula: '{}', target: '10', metricType: AverageValue}}\n", names.join(" + ")),
            )
        } else {
            (trigger("p0", &lists[0]), String::new())
        };
        let settings = if self.fast { "  pollingInterval: 1\n  cooldownPeriod: 0\n".to_string() } else { String::new() };
        // The HPA's own default allows +4 pods (or +100 %) per 15 s, counted from the replicas
        // 15 s before: 0 → 1 (KEDA) → 4 → 5 would take 15 s more. Its fastest lets it jump.
        let behavior = if self.fast {
            "    horizontalPodAutoscalerConfig:\n      behavior:\n        scaleUp: {stabilizationWindowSeconds: 0, policies: [{type: Pods, value: 10, periodSeconds: 1}]}\n        scaleDown: {stabilizationWindowSeconds: 0}\n"
        } else {
            ""
        };
        format!(
            "
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {worker}}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: {worker}}}}}
  template:
    metadata: {{labels: {{app: {worker}}}}}
    spec:
      containers:
      - name: celery-worker
        image: example-image
        command: [celery, -A, 'app:celery_app', worker, -Q, {name}]
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: {name}}}
spec:
  scaleTargetRef: {{name: {worker}}}
{settings}  minReplicaCount: 0
  maxReplicaCount: 10
  advanced:
{behavior}{modifiers}  triggers:
{triggers}",
            name = self.name,
        )
        .replace("  advanced:\n  triggers:", "  triggers:")
    }

    async fn apply(&self, env: &Env) -> Api<Deployment> {
        support::apply_yaml(&env.admin, &self.yaml(), Some(&self.ns)).await.expect("KEDA's objects apply");
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(env.admin.clone(), &self.ns);
        eventually("KEDA's HPA", WAIT, || async {
            hpas.get_opt(&format!("keda-hpa-{}", self.name))
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .ok_or("none yet".to_string())
        })
        .await;
        Api::namespaced(env.admin.clone(), &self.ns)
    }

    /// Back to 0 replicas on an empty queue: at KEDA's defaults only its 300 s cooldown would
    /// get there, so the bench scales it down (KEDA and the HPA leave a target at 0 alone).
    async fn reset(&self, deployments: &Api<Deployment>, conn: &mut redis::aio::MultiplexedConnection) {
        empty(conn, self.name).await;
        let zero = serde_json::json!({"spec": {"replicas": 0}});
        deployments.patch(&self.worker(), &PatchParams::default(), &Patch::Merge(zero)).await.expect("scaled to 0");
        wait_replicas(deployments, &self.worker(), |r| r == 0).await;
    }

    async fn series(&self, bench: &Bench<'_>, p: &Processes, conn: &mut redis::aio::MultiplexedConnection, label: &str) -> Row {
        let deployments = self.apply(bench.env).await;
        let polling = Duration::from_secs(if self.fast { 1 } else { 30 });
        let reset = async |conn: &mut redis::aio::MultiplexedConnection| self.reset(&deployments, conn).await;
        let mut row = bench.reactions(p, conn, &deployments, &self.worker(), self.name, polling, label, reset).await;
        self.held(bench.env, &deployments, conn, &mut row).await;
        row
    }

    /// Only what it sees of the held burst, and its scale-in.
    async fn held_only(&self, env: &Env, conn: &mut redis::aio::MultiplexedConnection, label: &str) -> Row {
        let deployments = self.apply(env).await;
        let mut row = Row { label: label.into(), ..Row::default() };
        self.held(env, &deployments, conn, &mut row).await;
        row
    }

    async fn held(&self, env: &Env, deployments: &Api<Deployment>, conn: &mut redis::aio::MultiplexedConnection, row: &mut Row) {
        burst(conn, self.name).await;
        unacked(conn, self.name).await;
        wait_replicas(deployments, &self.worker(), |r| r > 0).await;
        let seen = eventually("KEDA's metric of the held burst", WAIT, || external_metric(&env.admin, &self.ns, self.name)).await;
        row.seen = Some(seen);
        // Let the HPA act on it before the queue empties.
        let settle = if self.fast { Duration::from_secs(5) } else { Duration::from_secs(35) };
        tokio::time::sleep(settle).await;
        row.scale_in = Some(scale_in(deployments, &self.worker(), conn, self.name).await);
        row.scale_in_rule = if self.fast { "cooldown 0, HPA window 0".into() } else { "cooldown 300 s, HPA window 300 s".into() };
        let so = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"));
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(env.admin.clone(), &self.ns, &so);
        api.delete(self.name, &Default::default()).await.expect("ScaledObject deleted");
    }
}

/// The value of the external metric KEDA's HPA for ScaledObject `name` reads, as the HPA reads
/// it (through the aggregator, from KEDA's adapter).
async fn external_metric(client: &Client, ns: &str, name: &str) -> Result<f64, String> {
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), ns)
        .get(&format!("keda-hpa-{name}"))
        .await
        .map_err(|e| e.to_string())?;
    let metric = hpa
        .spec
        .metrics
        .and_then(|m| m.into_iter().find_map(|m| m.external))
        .map(|e| e.metric.name)
        .ok_or("the HPA has no external metric")?;
    let path = format!(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/{metric}?labelSelector=scaledobject.keda.sh%2Fname%3D{name}"
    );
    let request = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    let list: serde_json::Value = client.request(request).await.map_err(|e| e.to_string())?;
    let value = list["items"][0]["value"].as_str().ok_or_else(|| format!("no value in {list}"))?;
    let value = celery_operator::quantity::parse(value).map_err(|e| format!("{value}: {e}"))?;
    if value > 0.0 { Ok(value) } else { Err("0 so far".into()) }
}

fn print_table(rows: &mut [Row], trials: usize) {
    let cell = |times: &mut Vec<Duration>| {
        if times.is_empty() {
            return ("–".to_string(), "–".to_string());
        }
        let (p50, _) = percentiles(times);
        let p95 = times.get(((times.len() - 1) as f64 * 0.95).round() as usize).copied().unwrap_or_default();
        (measure::fmt(p50), measure::fmt(p95))
    };
    let truth = BURST + UNACKED;
    println!();
    println!(
        "celery-operator and KEDA v2.21.0, one control plane, one Redis: a burst of {BURST} messages ({trials} trials) on a Celery queue \
         with priorities → {WORKERS} workers; held with {UNACKED} unacked: {truth} messages in all"
    );
    println!(
        "{:<46} {:>17} {:>17} {:>8} {:>34} {:>8} {:>17} {:>8}",
        "", "→ first replica", "→ 5 replicas", "backlog", "scale-in", "API req", "at rest, per min", "RSS"
    );
    println!(
        "{:<46} {:>8} {:>8} {:>8} {:>8} {:>8} {:>34} {:>8} {:>8} {:>8} {:>8}",
        "", "p50", "p95", "p50", "p95", "seen", "", "/trial", "CPU", "API req", ""
    );
    for row in rows {
        let (f50, f95) = cell(&mut row.first);
        let (l50, l95) = cell(&mut row.last);
        let seen = row.seen.map_or("–".into(), |s| format!("{s:.0}/{truth}"));
        let scale_in = row.scale_in.map_or("–".into(), |d| format!("{} ({})", measure::fmt(d), row.scale_in_rule));
        let per_trial = row.requests_per_trial.map_or("–".into(), |r| format!("{r:.1}"));
        let cpu = row.rest_cpu_per_minute.map_or("–".into(), measure::fmt);
        let rest = row.rest_requests_per_minute.map_or("–".into(), |r| format!("{r:.1}"));
        let rss = row.rss_kib.map_or("–".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
        println!(
            "{:<46} {f50:>8} {f95:>8} {l50:>8} {l95:>8} {seen:>8} {scale_in:>34} {per_trial:>8} {cpu:>8} {rest:>8} {rss:>8}",
            row.label
        );
    }
}
