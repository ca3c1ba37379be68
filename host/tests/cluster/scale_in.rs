//! Scale-in with real Celery: every worker pod (a kwok pod) has a real Celery worker of the
//! example app on the host under the pod's node name (`celery@<pod>`), read by a real Flower,
//! and the worker whose pod the ReplicaSet controller deletes gets SIGTERM, as the kubelet
//! would send it: Celery's warm shutdown. The example app records every task's start and end in
//! Redis, so the tests tell which worker ran what and that every task ran to its end once.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::Harness;
use crate::fleet::{Fleet, busy_pods, flower, produce, runs, task_log};
use crate::lifecycle::{create, deployment, events_of, wait_condition};
use crate::servers::{free_port, python, redis_server};
use crate::support::{WAIT, eventually, repo_root};
use celery_operator::conditions::*;
use celery_operator::crd::Celery;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Client;
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams};

pub const TESTS: &[crate::TestCase] = &[
    ("scale_in_takes_idle_workers_first_and_busy_ones_finish", false, |h| Box::pin(idle_first(h))),
    ("scale_in_waits_for_busy_workers_within_max_wait", false, |h| Box::pin(waits_for_busy(h))),
    ("disruption_budget_limits_evictions_and_goes_with_the_field", false, |h| Box::pin(disruption_budget(h))),
];

const LONG: Duration = Duration::from_secs(120);

async fn worker_pods(client: &Client, ns: &str, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app.kubernetes.io/instance={app},app.kubernetes.io/component=worker");
    let list = api.list(&ListParams::default().labels(&selector)).await.map(|l| l.items).unwrap_or_default();
    list.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect()
}

async fn wait_pods(client: &Client, ns: &str, app: &str, count: usize) -> Vec<String> {
    eventually(&format!("{count} worker pods"), WAIT, || async {
        let names: Vec<String> = worker_pods(client, ns, app).await.into_iter().filter_map(|p| p.metadata.name).collect();
        if names.len() == count { Ok(names) } else { Err(format!("{names:?}")) }
    })
    .await
}

async fn replicas(client: &Client, ns: &str, app: &str) -> i32 {
    let d = deployment(client, ns, &format!("{app}-celery-worker")).await.expect("the worker Deployment");
    d.spec.and_then(|s| s.replicas).unwrap_or(1)
}

async fn celery(client: &Client, ns: &str, name: &str) -> Celery {
    Api::<Celery>::namespaced(client.clone(), ns).get(name).await.expect("the Celery object")
}

async fn patch_autoscaling(client: &Client, ns: &str, name: &str, autoscaling: serde_json::Value) {
    let api: Api<Celery> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({ "spec": { "autoscaling": autoscaling } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("the resource is patched");
}

/// Waits until Flower (through the status) counts `n` tasks running on the workers.
async fn wait_active(client: &Client, ns: &str, app: &str, n: i64) {
    eventually(&format!("{n} tasks running"), WAIT, || async {
        let c = celery(client, ns, app).await;
        let active = c.status.and_then(|s| s.autoscaler).and_then(|a| a.active_tasks);
        if active == Some(n) { Ok(()) } else { Err(format!("activeTasks {active:?}")) }
    })
    .await
}

/// Every task started once and ended once.
fn every_task_ran_once(redis_port: u16, sent: usize) {
    let runs = runs(&task_log(redis_port));
    assert_eq!(runs.len(), sent, "every task sent started: {runs:?}");
    for (id, run) in &runs {
        assert_eq!((run.starts, run.ends), (1, 1), "task {id} on {} started and ended once", run.pod);
    }
}

/// The queues `celery@<pod>` consumes from, as `celery inspect active_queues` reports them.
fn active_queues(broker: &str, pod: &str) -> Option<Vec<String>> {
    let out = Command::new(python())
        .current_dir(repo_root().join("example"))
        .env("CELERY_BROKER_URL", broker)
        .args(["-m", "celery", "--app=app:celery_app", "inspect", "active_queues", "-j", "--timeout=3"])
        .arg(format!("--destination=celery@{pod}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    let queues = json.get(format!("celery@{pod}"))?.as_array()?;
    Some(queues.iter().filter_map(|q| q["name"].as_str().map(String::from)).collect())
}

async fn wait_queues(broker: &str, pod: &str, want: &[&str]) {
    eventually(&format!("celery@{pod} consuming from {want:?}"), WAIT, || async {
        let (broker, pod) = (broker.to_string(), pod.to_string());
        let got = tokio::task::spawn_blocking(move || active_queues(&broker, &pod)).await.ok().flatten();
        if got.as_deref().is_some_and(|q| q == want) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await
}

/// A resource of the example app: 4 workers whatever the queue (`minReplicas: 4`), Flower on
/// the host, scale-downs applied at once, `extra` in `scaleDown`.
fn resource(name: &str, broker: &str, flower_port: u16, extra: &str) -> String {
    format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {name}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{queues: celery, concurrency: 1}}
  autoscaling:
    policy: queue-length
    settings: {{target: '1'}}
    minReplicas: 4
    maxReplicas: 4
    flowerUrl: 'http://127.0.0.1:{flower_port}'
    scaleDown: {{stabilizationWindowSeconds: 0, maxStepPercent: 100, periodSeconds: 0{extra}}}
"
    )
}

/// 4 workers, 2 running long tasks, the policy asks for 2: the two idle pods are the ones
/// deleted, the long tasks run to their end on the workers that stay, and no pod keeps a mark.
/// Then, with Flower down, the operator marks nothing and says that Kubernetes chose.
async fn idle_first(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, redis_port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{redis_port}/0");
    let flower_port = free_port();
    let flower = flower(&broker, flower_port);
    let ns = env.namespace("scalein").await;
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &resource("idle", &broker, flower_port, "")).await.expect("created");
    wait_condition(&env.admin, &ns, "idle", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    let pods = wait_pods(&env.admin, &ns, "idle", 4).await;
    let fleet = Fleet::start(&broker, &pods, env.admin.clone(), ns.clone(), None);

    produce(&broker, "report", 2, 40);
    wait_active(&env.admin, &ns, "idle", 2).await;
    let busy = busy_pods(redis_port);
    assert_eq!(busy.len(), 2, "two workers run a long task each: {busy:?}");
    let idle: BTreeSet<String> = pods.iter().filter(|p| !busy.contains(*p)).cloned().collect();

    // Both bounds: a lowered maxReplicas is carried out by the loop, which chooses who goes.
    patch_autoscaling(&env.admin, &ns, "idle", serde_json::json!({ "minReplicas": 2, "maxReplicas": 2 })).await;
    let left = wait_pods(&env.admin, &ns, "idle", 2).await;
    assert_eq!(left.into_iter().collect::<BTreeSet<_>>(), busy, "the busy workers stay");
    eventually("the idle workers terminated", WAIT, || async {
        if fleet.terminated() == idle { Ok(()) } else { Err(format!("terminated {:?}", fleet.terminated())) }
    })
    .await;
    let reason = eventually("the scale-down's decision in the status", WAIT, || async {
        let c = celery(&env.admin, &ns, "idle").await;
        let reason = c.status.and_then(|s| s.autoscaler).and_then(|a| a.last_decision).map(|d| d.reason).unwrap_or_default();
        if reason.contains("removing idle") { Ok(reason) } else { Err(reason) }
    })
    .await;
    for pod in &idle {
        assert!(reason.contains(pod.as_str()), "the reason names {pod}: {reason}");
    }
    let event = events_of(&env.admin, &ns, "idle", SCALED_DOWN).await.expect("a ScaledDown event");
    assert!(event.iter().any(|e| e.contains("4 → 2") && e.contains("removing idle")), "{event:?}");

    // The long tasks end on the workers that stayed; nothing ran twice.
    eventually("the long tasks ended", LONG, || async {
        let open = busy_pods(redis_port);
        if open.is_empty() { Ok(()) } else { Err(format!("running on {open:?}")) }
    })
    .await;
    every_task_ran_once(redis_port, 2);
    // Nobody is marked at rest.
    for pod in worker_pods(&env.admin, &ns, "idle").await {
        let cost = pod.metadata.annotations.unwrap_or_default().remove("controller.kubernetes.io/pod-deletion-cost");
        assert_eq!(cost, None, "{:?} carries no mark", pod.metadata.name);
    }

    // Flower goes: the next scale-down is Kubernetes' choice, and the reason says so.
    drop(flower);
    eventually("FlowerUnavailable", WAIT, || events_of(&env.admin, &ns, "idle", FLOWER_UNAVAILABLE)).await;
    patch_autoscaling(&env.admin, &ns, "idle", serde_json::json!({ "minReplicas": 1 })).await;
    wait_pods(&env.admin, &ns, "idle", 1).await;
    // The status write follows the scale: the pods can be down to 1 before it lands (CI read
    // the previous decision's reason once).
    eventually("the decision without Flower in the status", WAIT, || async {
        let c = celery(&env.admin, &ns, "idle").await;
        let reason = c.status.and_then(|s| s.autoscaler).and_then(|a| a.last_decision).map(|d| d.reason).unwrap_or_default();
        let said = reason.contains("no per-worker figures") && reason.contains("Kubernetes chooses which workers go");
        if said { Ok(()) } else { Err(reason) }
    })
    .await;
    assert_eq!(replicas(&env.admin, &ns, "idle").await, 1);
    operator.stop().await;
}

/// `busyWorkers: Wait` with all 4 workers busy: the count stays at 4, the status says whom it
/// waits for, and those two stop taking tasks (`drainBusyWorkers`). It steps down as tasks end,
/// taking the workers that became idle, and a drained worker that stays consumes again. Then
/// `maxWaitSeconds` bounds a wait: the busy worker is removed, and its warm shutdown still
/// finishes the task.
async fn waits_for_busy(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, redis_port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{redis_port}/0");
    let flower_port = free_port();
    let _flower = flower(&broker, flower_port);
    let ns = env.namespace("scalewait").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = resource("patient", &broker, flower_port, ", busyWorkers: Wait, maxWaitSeconds: 3600, drainBusyWorkers: true");
    create(&env.admin, &ns, &yaml).await.expect("created");
    wait_condition(&env.admin, &ns, "patient", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    let pods = wait_pods(&env.admin, &ns, "patient", 4).await;
    let fleet = Fleet::start(&broker, &pods, env.admin.clone(), ns.clone(), None);

    // Tasks of different lengths: the workers become idle one pair at a time.
    produce(&broker, "report", 2, 15);
    produce(&broker, "report", 2, 600);
    wait_active(&env.admin, &ns, "patient", 4).await;
    patch_autoscaling(&env.admin, &ns, "patient", serde_json::json!({ "minReplicas": 2 })).await;
    let waiting = eventually("the scale-down waits, its busy workers told to stop taking tasks", WAIT, || async {
        let c = celery(&env.admin, &ns, "patient").await;
        let auto = c.status.and_then(|s| s.autoscaler).unwrap_or_default();
        match (&auto.scale_in, &auto.last_decision) {
            (Some(s), Some(d)) if s.replicas == 2 && s.draining.len() == 2 => {
                Ok((s.waiting_for.clone(), d.reason.clone(), s.draining.clone()))
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // While it waits, all four still run: none was cut short.
    let still = replicas(&env.admin, &ns, "patient").await;
    let (waiting_for, reason, draining) = waiting;
    assert_eq!(waiting_for.len(), 2, "{waiting_for:?}");
    // The two waited for no longer consume (Celery's cancel_consumer), the other two do.
    for pod in &pods {
        let want: &[&str] = if draining.contains(pod) { &[] } else { &["celery"] };
        wait_queues(&broker, pod, want).await;
    }
    assert!(waiting_for.iter().all(|w| w.ends_with("(1 task running)")), "{waiting_for:?}");
    assert!(reason.contains("4 → 2: waiting for"), "{reason}");
    if still == 4 {
        assert!(fleet.terminated().is_empty(), "no worker went while all were busy");
    }

    // The 15 s tasks end: their two workers (now idle) are the ones removed.
    let short: BTreeSet<String> = eventually("the short tasks ended", LONG, || async {
        let runs = runs(&task_log(redis_port));
        let ended: BTreeSet<String> = runs.values().filter(|r| r.ends == 1).map(|r| r.pod.clone()).collect();
        if ended.len() == 2 { Ok(ended) } else { Err(format!("{runs:?}")) }
    })
    .await;
    let left: BTreeSet<String> = wait_pods(&env.admin, &ns, "patient", 2).await.into_iter().collect();
    assert!(left.is_disjoint(&short), "the idle ones went: left {left:?}, idle {short:?}");
    eventually("the scale-down is over", WAIT, || async {
        let c = celery(&env.admin, &ns, "patient").await;
        match c.status.and_then(|s| s.autoscaler).and_then(|a| a.scale_in) {
            None => Ok(()),
            Some(s) => Err(format!("{s:?}")),
        }
    })
    .await;
    // A worker told to stop that stays (the idle ones went instead) consumes again.
    for pod in &left {
        wait_queues(&broker, pod, &["celery"]).await;
    }

    // Both remaining workers run a 600 s task; a wait of at most 3 s removes one anyway, and its
    // warm shutdown is what the test then stops (the task ran on, it was not killed).
    patch_autoscaling(&env.admin, &ns, "patient", serde_json::json!({ "minReplicas": 1, "scaleDown": { "maxWaitSeconds": 3 } }))
        .await;
    let gone = eventually("one busy worker removed after maxWaitSeconds", WAIT, || async {
        let now: BTreeSet<String> =
            worker_pods(&env.admin, &ns, "patient").await.into_iter().filter_map(|p| p.metadata.name).collect();
        let gone: Vec<String> = left.difference(&now).cloned().collect();
        if gone.len() == 1 && now.len() == 1 { Ok(gone[0].clone()) } else { Err(format!("{now:?}")) }
    })
    .await;
    // NB: from the operator's log line of that scale: the last decision may have been replaced
    // by a later sample before the watch showed the new count, and Kubernetes folds a second
    // ScaledDown event of the app into the first one's series (its note is the first's).
    let logged = crate::captured_logs();
    let scaled = logged.lines().filter(|l| l.contains(&format!("app={ns}/patient")) && l.contains("scaled the workers"));
    assert!(scaled.clone().any(|l| l.contains("maxWaitSeconds passed") && l.contains(&gone)), "{:?}", scaled.collect::<Vec<_>>());
    // Celery's warm shutdown keeps the task running (the kubelet would kill it after the grace
    // period; here nobody does): it has not ended, and it did not start again elsewhere.
    eventually("SIGTERM sent to the removed worker", WAIT, || async {
        if fleet.terminated().contains(&gone) { Ok(()) } else { Err("not yet".to_string()) }
    })
    .await;
    let runs = runs(&task_log(redis_port));
    assert_eq!(runs.len(), 4, "no task was started twice: {runs:?}");
    assert!(runs.values().all(|r| r.starts == 1), "{runs:?}");
    operator.stop().await;
}

/// `workerSpec.disruptionBudget`: the budget exists while the field does, and the eviction API
/// (what `kubectl drain` uses) refuses to take a worker it does not allow; without the field
/// the budget is gone and the same eviction goes through.
async fn disruption_budget(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("budget").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: guarded}
spec:
  common: {appName: guarded, celeryApp: 'app:celery_app', image: example-image}
  workerSpec: {numOfWorkers: 2, disruptionBudget: {maxUnavailable: 0}}
";
    create(&env.admin, &ns, yaml).await.expect("created");
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(env.admin.clone(), &ns);
    let budget = eventually("the budget", WAIT, || async {
        budgets.get_opt("guarded-celery-worker").await.map_err(|e| e.to_string())?.ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert!(budget.metadata.owner_references.unwrap_or_default().iter().any(|o| o.kind == "Celery" && o.name == "guarded"));
    let pods = wait_pods(&env.admin, &ns, "guarded", 2).await;
    let api: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    // The disruption controller counts the healthy pods first; until then evictions are refused too.
    eventually("the budget counted the workers", WAIT, || async {
        let b = budgets.get("guarded-celery-worker").await.map_err(|e| e.to_string())?;
        match b.status.as_ref().map(|s| (s.current_healthy, s.disruptions_allowed)) {
            Some((Some(2), Some(0))) => Ok(()),
            other => {
                let pods: Vec<_> = api.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
                let pods: Vec<_> = pods
                    .iter()
                    .map(|p| {
                        (p.metadata.name.clone(), p.metadata.labels.clone(), p.status.as_ref().and_then(|s| s.conditions.clone()))
                    })
                    .collect();
                Err(format!("(healthy, allowed) {other:?}; budget {:?}; pods {pods:?}", b.status))
            }
        }
    })
    .await;
    match api.evict(&pods[0], &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(status.message.contains("disruption budget"), "{}", status.message);
        }
        other => panic!("the eviction of {} went through: {other:?}", pods[0]),
    }

    let celeries: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
    let patch = serde_json::json!({ "spec": { "workerSpec": { "disruptionBudget": null } } });
    celeries.patch("guarded", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patched");
    eventually("the budget removed", WAIT, || async {
        match budgets.get_opt("guarded-celery-worker").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;
    api.evict(&pods[0], &EvictParams::default()).await.expect("evicted without a budget");
    operator.stop().await;
}
