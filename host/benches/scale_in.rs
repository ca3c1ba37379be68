//! Scale-in, measured: which workers a scale-down removes, with the operator's choice (idle
//! first, from Flower's per-worker figures) beside Kubernetes' own (the same operator with no
//! per-worker figures: no Flower, so it marks nothing), in one run, rounds alternating.
//!
//! Each round: `WORKERS` (6) worker pods (kwok) with a real Celery worker each on the host
//! (`tests/common/fleet.rs`), `BUSY` (3) of them running a `TASK`-second (30) task, and the
//! policy's answer lowered to `WORKERS - BUSY`. A deleted pod's worker gets SIGTERM and, after
//! `GRACE` (10) seconds, SIGKILL, as the kubelet does with a `terminationGracePeriodSeconds`
//! shorter than the task: a busy worker removed is a task cut short and (with `task_acks_late`)
//! run again from the start elsewhere, after Redis's visibility timeout (an hour by default).
//! Printed per mode: tasks interrupted, task-seconds of work
//! lost (redone), seconds from the lower answer to the last removed worker gone, idle
//! worker-seconds paid for from the lower answer until every task has ended, and the pod writes
//! (deletion-cost marks) the operator made per scale-in, from the API server's audit log; then a
//! minute at rest, counted the same way.
//!
//! `cargo bench -p celery-operator --bench scale_in` (`ROUNDS`, default 2 per mode). A benchmark,
//! never a test: its figures are printed, not asserted.

#[path = "../tests/common/fleet.rs"]
mod fleet;
#[path = "../tests/common/servers.rs"]
mod servers;
#[path = "../tests/cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use celery_operator::crd::Celery;
use fleet::{Fleet, epoch, produce, runs, task_log};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use support::{ControlPlane, Env, eventually};

const WORKERS: u32 = 6;
const BUSY: u32 = 3;
const TASK: u32 = 30;
const GRACE: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(300);

/// One round's figures.
#[derive(Debug, Default, Clone)]
struct Round {
    interrupted: u32,
    lost_seconds: f64,
    to_last_gone: f64,
    idle_seconds: f64,
    pod_writes: usize,
}

fn main() {
    let rounds: u32 = std::env::var("ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let built = std::process::Command::new(support::repo_root().join("policies/build.sh")).status();
    assert!(built.is_ok_and(|s| s.success()), "policies/build.sh failed");
    support::keep_lookups_on_loopback();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let control_plane = ControlPlane::start().expect("control plane");
    runtime.block_on(async {
        let env = Env::connect(&control_plane).await;
        support::install(&env).await;
        let mut results: BTreeMap<&str, Vec<Round>> = BTreeMap::new();
        for i in 0..rounds {
            for marks in [true, false] {
                let round = round(&env, &control_plane, i, marks).await;
                eprintln!("round {i} {}: {round:?}", label(marks));
                results.entry(label(marks)).or_default().push(round);
            }
        }
        let steady = at_rest(&env, &control_plane).await;

        println!(
            "\nscale-in of {WORKERS} → {} workers, {BUSY} running a {TASK} s task, grace {} s, {rounds} rounds each",
            WORKERS - BUSY,
            GRACE.as_secs()
        );
        println!("| per scale-in (mean, min–max) | Kubernetes' choice (no marks) | celery-operator (idle first) |");
        println!("|---|---|---|");
        let row = |name: &str, f: fn(&Round) -> f64, digits: usize| {
            let cell = |label: &str| {
                let values: Vec<f64> = results[label].iter().map(f).collect();
                let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
                let (min, max) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
                format!("{mean:.digits$} ({min:.digits$}–{max:.digits$})")
            };
            println!("| {name} | {} | {} |", cell(label(false)), cell(label(true)));
        };
        row("tasks interrupted", |r| f64::from(r.interrupted), 1);
        row("task-seconds lost (redone)", |r| r.lost_seconds, 1);
        row("s from the lower answer to the last removed worker gone", |r| r.to_last_gone, 1);
        row("idle worker-seconds paid until every task ended", |r| r.idle_seconds, 1);
        row("pod writes (deletion-cost marks)", |r| r.pod_writes as f64, 1);
        println!("| pod writes per minute at rest | – | {steady} |");
    });
}

fn label(marks: bool) -> &'static str {
    if marks { "marks" } else { "kubernetes" }
}

/// One scale-in, with the operator's marks (a Flower) or without (none).
async fn round(env: &Env, control_plane: &ControlPlane, i: u32, marks: bool) -> Round {
    let (_redis, port) = servers::redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let flower_port = servers::free_port();
    let _flower = marks.then(|| fleet::flower(&broker, flower_port));
    let ns = env.namespace(&format!("scalein-{}-{i}", label(marks))).await;
    let operator = env.start_operator(&[&ns], None);
    let figures = if marks { format!("    flowerUrl: 'http://127.0.0.1:{flower_port}'\n") } else { String::new() };
    let flower_spec = if marks { "" } else { "  flowerSpec: {enabled: false}\n" };
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: bench}}
spec:
  common: {{appName: bench, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{queues: celery, concurrency: 1}}
{flower_spec}  autoscaling:
    policy: queue-length
    settings: {{target: '1'}}
    minReplicas: {WORKERS}
    maxReplicas: {WORKERS}
{figures}    scaleDown: {{stabilizationWindowSeconds: 0, maxStepPercent: 100, periodSeconds: 0}}
"
    );
    let celery: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
    let app: Celery = serde_yaml::from_str(&yaml).expect("a Celery");
    celery.create(&PostParams::default(), &app).await.expect("created");
    let pods = eventually("the worker pods", WAIT, || async {
        let names = live_pods(&env.admin, &ns).await;
        if names.len() == WORKERS as usize { Ok(names) } else { Err(format!("{names:?}")) }
    })
    .await;
    let fleet = Fleet::start(&broker, &pods, env.admin.clone(), ns.clone(), Some(GRACE));
    produce(&broker, "report", BUSY, TASK);
    eventually("the long tasks running", WAIT, || async {
        let started = runs(&task_log(port)).len();
        if started == BUSY as usize { Ok(()) } else { Err(format!("{started} started")) }
    })
    .await;
    if marks {
        // Flower has heard the busy workers' heartbeats (every 2 s).
        eventually("Flower's figures in the status", WAIT, || async {
            let c = celery.get("bench").await.map_err(|e| e.to_string())?;
            let active = c.status.and_then(|s| s.autoscaler).and_then(|a| a.active_tasks);
            if active == Some(i64::from(BUSY)) { Ok(()) } else { Err(format!("{active:?}")) }
        })
        .await;
    } else {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let lowered = epoch();
    let since = jiff::Timestamp::now();
    let patch = serde_json::json!({ "spec": { "autoscaling": { "minReplicas": WORKERS - BUSY } } });
    celery.patch("bench", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patched");
    let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &ns);
    eventually("the scale-down written", WAIT, || async {
        let d = deployments.get("bench-celery-worker").await.map_err(|e| e.to_string())?;
        let replicas = d.spec.and_then(|s| s.replicas);
        if replicas == Some((WORKERS - BUSY) as i32) { Ok(()) } else { Err(format!("{replicas:?}")) }
    })
    .await;
    // NB: a task whose worker was killed is not waited for: with Redis its message stays unacked
    // until the transport's visibility_timeout (an hour by default) before it runs again.
    let done = eventually("every removed worker gone and every task ended or cut short", WAIT, || async {
        let stops = fleet.stops();
        let gone = stops.len() == BUSY as usize && stops.values().all(|s| s.exited.is_some());
        let runs = runs(&task_log(port));
        let cut = |pod: &String| stops.get(pod).is_some_and(|s| s.exited.is_some());
        let settled = runs.len() == BUSY as usize && runs.values().all(|r| r.ends >= 1 || cut(&r.pod));
        if gone && settled { Ok(epoch()) } else { Err(format!("stops {stops:?}, runs {runs:?}")) }
    })
    .await;

    let stops = fleet.stops();
    let log = task_log(port);
    // Runs per (task, worker): a start without an end on that worker was cut short.
    let mut open: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut busy: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &log {
        let pod = r.worker.trim_start_matches("celery@").to_string();
        match r.event.as_str() {
            "start" => {
                open.insert((r.id.clone(), pod), r.at);
            }
            "end" => {
                if let Some(start) = open.remove(&(r.id.clone(), pod.clone())) {
                    busy.entry(pod).or_default().push((start, r.at));
                }
            }
            _ => {}
        }
    }
    let mut result = Round::default();
    for ((_, pod), start) in &open {
        let cut = stops.get(pod).and_then(|s| s.exited).unwrap_or(done);
        result.interrupted += 1;
        result.lost_seconds += cut - start;
        busy.entry(pod.clone()).or_default().push((*start, cut));
    }
    result.to_last_gone = stops.values().filter_map(|s| s.exited).fold(lowered, f64::max) - lowered;
    for pod in &pods {
        let until = stops.get(pod).and_then(|s| s.exited).unwrap_or(done);
        let alive = (until - lowered).max(0.0);
        let worked: f64 =
            busy.get(pod).map_or(0.0, |spans| spans.iter().map(|(a, b)| (b.min(until) - a.max(lowered)).max(0.0)).sum());
        result.idle_seconds += (alive - worked).max(0.0);
    }
    result.pod_writes = control_plane
        .audited_writes()
        .iter()
        .filter(|w| w.namespace == ns && w.resource == "pods" && w.received >= since)
        .count();
    operator.stop().await;
    result
}

/// The worker pods of `ns` not being deleted.
async fn live_pods(client: &Client, ns: &str) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = "app.kubernetes.io/component=worker";
    let list = api.list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default();
    list.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).filter_map(|p| p.metadata.name).collect()
}

/// Pod writes by the operator in a minute at rest: an app of 3 idle workers at its minimum,
/// read by Flower, deciding every second.
async fn at_rest(env: &Env, control_plane: &ControlPlane) -> usize {
    let (_redis, port) = servers::redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let flower_port = servers::free_port();
    let _flower = fleet::flower(&broker, flower_port);
    let ns = env.namespace("scalein-rest").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: rest}}
spec:
  common: {{appName: rest, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  autoscaling:
    policy: queue-length
    minReplicas: 3
    maxReplicas: 6
    flowerUrl: 'http://127.0.0.1:{flower_port}'
"
    );
    let celery: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
    celery.create(&PostParams::default(), &serde_yaml::from_str(&yaml).expect("a Celery")).await.expect("created");
    let pods = eventually("3 worker pods", WAIT, || async {
        let names = live_pods(&env.admin, &ns).await;
        if names.len() == 3 { Ok(names) } else { Err(format!("{names:?}")) }
    })
    .await;
    let _fleet = Fleet::start(&broker, &pods, env.admin.clone(), ns.clone(), Some(GRACE));
    tokio::time::sleep(Duration::from_secs(15)).await;
    let since = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let writes = control_plane
        .audited_writes()
        .iter()
        .filter(|w| w.namespace == ns && w.resource == "pods" && w.received >= since)
        .count();
    operator.stop().await;
    writes
}
