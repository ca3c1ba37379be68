//! The example app as real containers: Celery workers and Flower from `example-image:dev` on the
//! real node, managed by the in-cluster operator, against a Redis on the node's address.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use celery_operator::crd::Celery;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde::Deserialize;

use crate::operator::{install, ready};
use crate::servers::{Server, python, redis_server_at, redis_server_on};
use crate::support::{apply_yaml, eventually, repo_root};
use crate::{Node, TestCase, node_ip};

pub const TESTS: &[TestCase] = &[
    ("app::workers_and_flower_run_for_real_and_every_task_completes_once", |n| Box::pin(runs_for_real(n))),
    ("app::a_scale_down_lets_the_running_task_finish", |n| Box::pin(scale_down_finishes_the_task(n))),
    ("app::a_stuck_worker_is_restarted_and_a_broker_outage_restarts_none", |n| Box::pin(probes_act(n))),
    ("app::scale_in_removes_the_idle_workers_and_busy_ones_finish", |n| Box::pin(scale_in_idle_first(n))),
];

/// The Redis list the example app records each task's start and end in (EXAMPLE_TASK_LOG).
const TASK_LOG: &str = "example:task-log";

/// Redis on loopback (for the producer and the test) and on the node's address (for the pods).
pub fn redis() -> (Server, u16) {
    redis_server_on(&redis_addresses(), &[])
}

fn redis_addresses() -> String {
    format!("127.0.0.1 {}", node_ip())
}

/// A namespace, the broker Secret and Flower's basic-auth Secret, and a Celery resource.
async fn app(node: &Node, ns_prefix: &str, redis_port: u16, spec: &str) -> String {
    let ns = {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        format!("{ns_prefix}-{}", COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    };
    node.kubectl_ok(&["create", "namespace", &ns]);
    let broker = format!("redis://{}:{redis_port}/0", node_ip());
    node.kubectl_ok(&["-n", &ns, "create", "secret", "generic", "broker", &format!("--from-literal=url={broker}")]);
    node.kubectl_ok(&["-n", &ns, "create", "secret", "generic", "flower-auth", "--from-literal=auth=admin:s3cret-flower"]);
    apply_yaml(&node.admin, spec, Some(&ns)).await.expect("the Celery resource applies");
    ns
}

/// One line of the example app's task log.
#[derive(Debug, Deserialize)]
struct Recorded {
    event: String,
    id: String,
    task: String,
    worker: String,
    at: f64,
}

fn task_log(redis_port: u16) -> Vec<Recorded> {
    let out = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "--raw", "lrange", TASK_LOG, "0", "-1"])
        .output()
        .expect("runs redis-cli");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Starts and ends per task id.
fn runs(log: &[Recorded]) -> BTreeMap<&str, (u32, u32)> {
    let mut m: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
    for r in log {
        let e = m.entry(&r.id).or_default();
        match r.event.as_str() {
            "start" => e.0 += 1,
            "end" => e.1 += 1,
            _ => {}
        }
    }
    m
}

fn produce(redis_port: u16, args: &[&str]) {
    let status = Command::new(python())
        .current_dir(repo_root().join("example"))
        .env("CELERY_BROKER_URL", format!("redis://127.0.0.1:{redis_port}/0"))
        .arg("producer.py")
        .args(args)
        .status()
        .expect("runs the producer");
    assert!(status.success(), "producer failed: {status}");
}

pub async fn pods(node: &Node, ns: &str, component: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(node.admin.clone(), ns);
    let selector = format!("app.kubernetes.io/component={component}");
    api.list(&ListParams::default().labels(&selector)).await.map(|l| l.items).unwrap_or_default()
}

/// A Celery resource of the example app named `name`, on `example-image:dev`, its broker from the
/// `broker` Secret and every task recorded in [`TASK_LOG`]; `rest` is the YAML of the spec's other
/// fields, indented by two spaces.
fn resource(name: &str, rest: &str) -> String {
    format!(
        "apiVersion: celeryproject.org/v1alpha1\nkind: Celery\nmetadata:\n  name: {name}\nspec:\n  common:\n    appName: {name}\n    \
         celeryApp: app:celery_app\n    image: example-image:dev\n    env:\n      - {{name: EXAMPLE_TASK_LOG, value: \"{TASK_LOG}\"}}\n  \
         broker:\n    secretRef: {{name: broker, key: url}}\n{rest}"
    )
}

/// Waits until `ns` has `count` Ready pods of `component` (worker or flower), and returns them.
async fn ready_pods(node: &Node, ns: &str, component: &str, count: usize) -> Vec<Pod> {
    let what = format!("{count} {component} pods Ready");
    eventually(&what, Duration::from_secs(180), || async {
        let r: Vec<Pod> = pods(node, ns, component).await.into_iter().filter(ready).collect();
        if r.len() == count { Ok(r) } else { Err(format!("{} Ready", r.len())) }
    })
    .await
}

fn created(pod: &Pod) -> Option<jiff::Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn ready_since(pod: &Pod) -> Option<jiff::Timestamp> {
    let c = pod.status.as_ref()?.conditions.as_ref()?;
    c.iter().find(|c| c.type_ == "Ready" && c.status == "True")?.last_transition_time.as_ref().map(|t| t.0)
}

async fn runs_for_real(node: Arc<Node>) {
    install(&node).await;
    let (_redis, port) = redis();
    let applied = Instant::now();
    let spec = resource(
        "shop",
        r#"  workerSpec:
    concurrency: 2
  flowerSpec:
    replicas: 1
    basicAuth: {name: flower-auth, key: auth}
  autoscaling:
    policy: load
    minReplicas: 2
    maxReplicas: 3
    intervalSeconds: 5
"#,
    );
    let ns = app(&node, "real-app", port, &spec).await;

    // Real workers and a real Flower, Ready on the real node.
    let workers = ready_pods(&node, &ns, "worker", 2).await;
    for w in &workers {
        assert_eq!(w.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("real-0"));
    }
    let flower = ready_pods(&node, &ns, "flower", 1).await.remove(0);

    // Flower answers on its Service's port only with the Secret's credentials.
    let flower_ip = flower.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("Flower's pod IP");
    let curl = |auth: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]);
        if let Some(a) = auth {
            c.args(["-u", a]);
        }
        let out = c.arg(format!("http://{flower_ip}:5555/api/workers")).output().expect("runs curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(curl(None), "401", "Flower without credentials");
    assert_eq!(curl(Some("admin:s3cret-flower")), "200", "Flower with the Secret's credentials");

    // Tasks from the producer complete, each exactly once.
    let sent = 24;
    produce(port, &["--burst", &sent.to_string(), "--task", "sleep", "--duration", "2"]);
    let busy_seen = eventually("the autoscaler to read running tasks from Flower", Duration::from_secs(120), || {
        let node = node.clone();
        let ns = ns.clone();
        async move {
            let api: Api<Celery> = Api::namespaced(node.admin.clone(), &ns);
            let c = api.get("shop").await.map_err(|e| e.to_string())?;
            let a = c.status.as_ref().and_then(|s| s.autoscaler.clone()).ok_or("no autoscaler status")?;
            match a.active_tasks {
                Some(n) if n > 0 => Ok(n),
                other => Err(format!("activeTasks {other:?}")),
            }
        }
    })
    .await;
    let log = eventually("every task to end", Duration::from_secs(240), || async {
        let log = task_log(port);
        let ended = log.iter().filter(|r| r.event == "end").count();
        if ended >= sent { Ok(log) } else { Err(format!("{ended} of {sent} ended")) }
    })
    .await;
    let first_end = log.iter().filter(|r| r.event == "end").map(|r| r.at).fold(f64::INFINITY, f64::min);
    let per_task = runs(&log);
    assert_eq!(per_task.len(), sent, "every task sent ran: {per_task:?}");
    assert!(per_task.values().all(|&(s, e)| s == 1 && e == 1), "each ran once, to its end: {per_task:?}");
    // Celery names a worker after its host, the pod: the first two, and any the policy added.
    let names: std::collections::BTreeSet<_> = log.iter().map(|r| r.worker.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("celery@shop-celery-worker-")), "tasks ran on the app's worker pods: {names:?}");

    // Flower was reachable through its Service by name from the operator's pod: no warning.
    let events: Api<Event> = Api::namespaced(node.admin.clone(), &ns);
    let warnings: Vec<String> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| format!("{}: {}", e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect();
    assert!(warnings.iter().all(|w| !w.starts_with("FlowerUnavailable")), "warnings: {warnings:?}");

    // The figures.
    // The task log's times are seconds since the epoch.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64();
    let first_task_after_apply = first_end - (now - applied.elapsed().as_secs_f64());
    let starts: Vec<f64> =
        workers.iter().filter_map(|p| Some(ready_since(p)?.duration_since(created(p)?).as_secs_f64())).collect();
    eprintln!(
        "figures: first task completed {first_task_after_apply:.1} s after the apply (the producer sent its burst once both \
         workers were Ready); worker pod created -> Ready {starts:?} s; Flower read {busy_seen} running tasks"
    );
}

async fn scale_down_finishes_the_task(node: Arc<Node>) {
    install(&node).await;
    let (_redis, port) = redis();
    let spec = resource(
        "reports",
        r#"  workerSpec:
    numOfWorkers: 1
    concurrency: 1
    terminationGracePeriodSeconds: 120
  flowerSpec:
    enabled: false
"#,
    );
    let ns = app(&node, "real-drain", port, &spec).await;
    let worker = ready_pods(&node, &ns, "worker", 1).await.remove(0);
    let worker_name = worker.metadata.name.clone().expect("a name");

    // A 20-second task starts on the only worker...
    produce(port, &["--burst", "1", "--task", "report", "--duration", "20"]);
    eventually("the report to start", Duration::from_secs(60), || async {
        let log = task_log(port);
        if log.iter().any(|r| r.event == "start") { Ok(()) } else { Err("not started".into()) }
    })
    .await;

    // ...and the app is scaled to zero: the kubelet sends SIGTERM to the real worker.
    let api: Api<Celery> = Api::namespaced(node.admin.clone(), &ns);
    let patch = serde_json::json!({"spec": {"workerSpec": {"numOfWorkers": 0}}});
    api.patch("reports", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("scales to zero");
    let deployments: Api<Deployment> = Api::namespaced(node.admin.clone(), &ns);
    eventually("the worker Deployment at 0 replicas", Duration::from_secs(60), || async {
        let d = deployments.get("reports-celery-worker").await.map_err(|e| e.to_string())?;
        match d.spec.and_then(|s| s.replicas) {
            Some(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eventually("the worker pod gone", Duration::from_secs(150), || {
        let node = node.clone();
        let ns = ns.clone();
        async move {
            let left = pods(&node, &ns, "worker").await;
            if left.is_empty() { Ok(()) } else { Err(format!("{} pods left", left.len())) }
        }
    })
    .await;

    let log = task_log(port);
    let per_task = runs(&log);
    assert_eq!(per_task.len(), 1, "one task: {log:?}");
    assert!(per_task.values().all(|&(s, e)| s == 1 && e == 1), "it ran once, to its end, before the pod went: {log:?}");
    let end = log.iter().find(|r| r.event == "end").expect("an end");
    assert!(end.worker.ends_with(&format!("@{worker_name}")), "on the pod that was stopped: {end:?}");
    // Nothing went back to the queue to run again elsewhere.
    let out = Command::new("redis-cli").args(["-p", &port.to_string(), "llen", "celery"]).output().expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "the queue is empty");
}

/// The host PID of `pod`'s worker container's PID 1 (the `celery` process): the process in the
/// pod's cgroup that is PID 1 of its own PID namespace and runs Celery (not the pause process).
fn worker_main_process(pod: &Pod) -> Option<u32> {
    let uid = pod.metadata.uid.as_deref()?;
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).ok()?;
        let status = std::fs::read_to_string(entry.path().join("status")).ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let in_pod = cgroup.contains(&format!("pod{uid}")) || cgroup.contains(&format!("pod{}", uid.replace('-', "_")));
        let pid_one = status.lines().any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"));
        let celery = String::from_utf8_lossy(&cmdline).contains("celery");
        (in_pod && pid_one && celery).then_some(pid)
    })
}

fn restarts(pod: &Pod) -> i32 {
    pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

/// The worker probes (`reconcile::probes`) as the kubelet runs them: a worker whose main process
/// is stopped (stuck) is restarted; a broker outage longer than the liveness probe's failure
/// window takes the workers out of Ready and restarts none; when the broker is back they are
/// Ready again.
async fn probes_act(node: Arc<Node>) {
    install(&node).await;
    let (redis, port) = redis();
    let spec = resource(
        "probed",
        r#"  workerSpec:
    numOfWorkers: 2
    concurrency: 1
    terminationGracePeriodSeconds: 5
  flowerSpec:
    enabled: false
"#,
    );
    let ns = app(&node, "real-probes", port, &spec).await;
    let workers = ready_pods(&node, &ns, "worker", 2).await;
    let (stuck, waiting) = (&workers[0], &workers[1]);
    let name = |p: &Pod| p.metadata.name.clone().unwrap_or_default();
    let stuck_pid = worker_main_process(stuck).expect("the stuck-to-be worker's process on this machine");

    // The broker goes away, and one worker's main process stops (as if deadlocked).
    drop(redis);
    let status = Command::new("kill").args(["-STOP", &stuck_pid.to_string()]).status().expect("runs kill");
    assert!(status.success(), "kill -STOP {stuck_pid}");
    let outage = Instant::now();

    let api: Api<Pod> = Api::namespaced(node.admin.clone(), &ns);
    // The waiting worker is taken out of Ready, not restarted.
    eventually("the worker without its broker to be not Ready", Duration::from_secs(60), || async {
        let p = api.get(&name(waiting)).await.map_err(|e| e.to_string())?;
        if ready(&p) { Err("still Ready".into()) } else { Ok(()) }
    })
    .await;
    // The stuck one is restarted by its liveness probe (three failures, 20 s apart).
    eventually("the stuck worker to be restarted", Duration::from_secs(180), || async {
        let p = api.get(&name(stuck)).await.map_err(|e| e.to_string())?;
        if restarts(&p) > 0 { Ok(()) } else { Err("not restarted".into()) }
    })
    .await;
    // Longer than the liveness window (3 × 20 s) without a broker: the other is never restarted.
    while outage.elapsed() < Duration::from_secs(80) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let p = api.get(&name(waiting)).await.expect("the waiting worker");
    assert_eq!(restarts(&p), 0, "a broker outage of {:?} restarted {}", outage.elapsed(), name(waiting));
    let without_broker = outage.elapsed();

    // The broker comes back where it was: both are Ready again, the waiting one never restarted.
    let _redis = redis_server_at(&redis_addresses(), port, &[]);
    let back = ready_pods(&node, &ns, "worker", 2).await;
    let restarted: BTreeMap<String, i32> = back.iter().map(|p| (name(p), restarts(p))).collect();
    assert_eq!(restarted.get(&name(waiting)), Some(&0), "{restarted:?}");
    assert!(restarted.get(&name(stuck)).is_some_and(|&n| n >= 1), "{restarted:?}");
    eprintln!("figures: broker outage of {without_broker:.0?}: restarts {restarted:?}");
}

/// The worker pods of `ns` not being deleted, by name.
async fn live_workers(node: &Node, ns: &str) -> BTreeSet<String> {
    let all = pods(node, ns, "worker").await;
    all.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).filter_map(|p| p.metadata.name).collect()
}

/// The pods (`celery@<pod>`) that have started a task and not ended it, per the task log.
fn busy_pods(redis_port: u16) -> BTreeSet<String> {
    let log = task_log(redis_port);
    runs(&log)
        .into_iter()
        .filter(|(_, (starts, ends))| starts > ends)
        .filter_map(|(id, _)| log.iter().find(|r| r.id == id).map(|r| r.worker.trim_start_matches("celery@").to_string()))
        .collect()
}

async fn patch_autoscaling(node: &Node, ns: &str, name: &str, autoscaling: serde_json::Value) {
    let api: Api<Celery> = Api::namespaced(node.admin.clone(), ns);
    let patch = serde_json::json!({"spec": {"autoscaling": autoscaling}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("the resource is patched");
}

async fn autoscaler(node: &Node, ns: &str, name: &str) -> celery_operator::crd::AutoscalerStatus {
    let api: Api<Celery> = Api::namespaced(node.admin.clone(), ns);
    let c = api.get(name).await.expect("the Celery resource");
    c.status.and_then(|s| s.autoscaler).unwrap_or_default()
}

/// Issue 14's scenario with real containers: 4 workers, 2 of them running long tasks, the policy
/// asks for 2. The operator marks the idle pods (pod-deletion-cost), so those are the ones the
/// ReplicaSet controller deletes and the kubelet stops; the long tasks run to their end on the
/// pods that stay. Then, with `busyWorkers: Wait`, a scale to 1 waits for the shorter task and
/// takes its worker, and the longer task still ends where it runs. Every task ran once.
async fn scale_in_idle_first(node: Arc<Node>) {
    install(&node).await;
    let (_redis, port) = redis();
    let spec = resource(
        "batch",
        r#"  workerSpec:
    concurrency: 1
    terminationGracePeriodSeconds: 120
  flowerSpec:
    replicas: 1
  autoscaling:
    policy: queue-length
    settings: {target: "1"}
    minReplicas: 4
    maxReplicas: 4
    intervalSeconds: 2
    scaleDown: {stabilizationWindowSeconds: 0, maxStepPercent: 100, periodSeconds: 0}
"#,
    );
    let ns = app(&node, "real-scalein", port, &spec).await;
    let all: BTreeSet<String> = ready_pods(&node, &ns, "worker", 4).await.into_iter().filter_map(|p| p.metadata.name).collect();
    ready_pods(&node, &ns, "flower", 1).await;

    // A 30 s `sleep` and a 60 s `report`: two workers busy (each holds one message: prefetch 1).
    produce(port, &["--burst", "1", "--task", "sleep", "--duration", "30"]);
    produce(port, &["--burst", "1", "--task", "report", "--duration", "60"]);
    let busy = eventually("Flower to count the two tasks running", Duration::from_secs(60), || async {
        let running = autoscaler(&node, &ns, "batch").await.active_tasks;
        let busy = busy_pods(port);
        if running == Some(2) && busy.len() == 2 { Ok(busy) } else { Err(format!("activeTasks {running:?}, busy {busy:?}")) }
    })
    .await;
    let idle: BTreeSet<String> = all.difference(&busy).cloned().collect();

    // The policy asks for 2: the idle two go, for real.
    patch_autoscaling(&node, &ns, "batch", serde_json::json!({"minReplicas": 2, "maxReplicas": 2})).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left: BTreeSet<String> = live_workers(&node, &ns).await;
        if left.len() <= 2 {
            if left != busy {
                // What the operator saw and did, for the failure's diagnosis.
                let logs = node.kubectl().args(["-n", crate::operator::NAMESPACE, "logs", "deployment/celery-operator"]).output();
                let logs = logs
                    .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
                    .unwrap_or_default();
                let ours: Vec<&str> = logs.lines().filter(|l| l.contains(&ns) || !l.starts_with('{')).collect();
                let decision = autoscaler(&node, &ns, "batch").await.last_decision;
                let states: Vec<String> = pods(&node, &ns, "worker")
                    .await
                    .iter()
                    .map(|p| {
                        let cost =
                            p.metadata.annotations.as_ref().and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"));
                        format!(
                            "{:?} ready={} deleting={} cost={cost:?}",
                            p.metadata.name,
                            ready(p),
                            p.metadata.deletion_timestamp.is_some()
                        )
                    })
                    .collect();
                panic!(
                    "the workers left are {left:?}, the busy ones {busy:?}; pods {states:#?}; decision {decision:?}; the operator's log:\n{}",
                    ours.join("\n")
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "still {left:?} after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("the idle workers' pods gone", Duration::from_secs(120), || async {
        let names: BTreeSet<String> = pods(&node, &ns, "worker").await.into_iter().filter_map(|p| p.metadata.name).collect();
        if names == busy { Ok(()) } else { Err(format!("worker pods {names:?}, busy {busy:?}")) }
    })
    .await;
    let reason = autoscaler(&node, &ns, "batch").await.last_decision.map(|d| d.reason).unwrap_or_default();
    assert!(reason.contains("removing idle"), "{reason}");
    for pod in &idle {
        assert!(reason.contains(pod.as_str()), "the reason names {pod}: {reason}");
    }
    let log = task_log(port);
    assert!(log.iter().all(|r| busy.contains(r.worker.trim_start_matches("celery@"))), "tasks ran on the busy two only: {log:?}");

    // Wait: a scale to 1 takes the worker whose task ends first, when it ends.
    let short_worker = log
        .iter()
        .find(|r| r.event == "start" && r.task.ends_with(".sleep"))
        .map(|r| r.worker.trim_start_matches("celery@").to_string())
        .expect("the 30 s task started");
    let long_worker = busy.iter().find(|p| **p != short_worker).expect("the other busy worker").clone();
    patch_autoscaling(
        &node,
        &ns,
        "batch",
        serde_json::json!({"minReplicas": 1, "maxReplicas": 1, "scaleDown": {"busyWorkers": "Wait", "maxWaitSeconds": 600}}),
    )
    .await;
    let patched_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64();
    eventually("one worker pod left", Duration::from_secs(150), || async {
        let names = live_workers(&node, &ns).await;
        if names.len() == 1 { Ok(()) } else { Err(format!("{names:?}")) }
    })
    .await;
    assert_eq!(live_workers(&node, &ns).await, BTreeSet::from([long_worker.clone()]), "the worker of the longer task stays");
    let short_end = task_log(port)
        .iter()
        .find(|r| r.event == "end" && r.worker.ends_with(&format!("@{short_worker}")))
        .map(|r| r.at)
        .expect("the shorter task ended on its worker before the worker went");
    eprintln!(
        "figures: the scale to 1 (Wait) waited {:.1} s for {short_worker}'s task to end",
        (short_end - patched_at).max(0.0)
    );

    // The longer task ends where it ran; every task ran once, to its end; none went back.
    let log = eventually("both tasks ended", Duration::from_secs(120), || async {
        let log = task_log(port);
        if log.iter().filter(|r| r.event == "end").count() == 2 { Ok(log) } else { Err(format!("{log:?}")) }
    })
    .await;
    let per_task = runs(&log);
    assert_eq!(per_task.len(), 2, "{log:?}");
    assert!(per_task.values().all(|&(s, e)| s == 1 && e == 1), "each ran once, to its end: {log:?}");
    let out = Command::new("redis-cli").args(["-p", &port.to_string(), "llen", "celery"]).output().expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "the queue is empty");
    let left = pods(&node, &ns, "worker").await;
    for pod in &left {
        let cost = pod.metadata.annotations.clone().unwrap_or_default().remove("controller.kubernetes.io/pod-deletion-cost");
        assert_eq!(cost, None, "{:?} carries no mark at rest", pod.metadata.name);
    }
}
