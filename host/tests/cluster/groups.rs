//! A whole Celery deployment in one resource: worker groups beside `workerSpec`, and beat.
//!
//! Beat runs for real: while the beat pod (a kwok pod) exists, the test runs a real
//! `celery beat` of the example app on the host for it, and stops it (SIGTERM) when the pod is
//! deleted, as the kubelet would. Its periodic task goes to a queue that one group consumes, and
//! that group's pod has a real Celery worker (`tests/common/fleet.rs`), so the test sees the
//! periodic tasks executed. Through a rollout of beat it counts the beat pods and processes
//! alive at once: never two.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Harness;
use crate::fleet::{Fleet, task_log};
use crate::lifecycle::{create, deployment, wait_condition};
use crate::servers::{Server, python, redis_server};
use crate::support::{WAIT, apply_yaml, eventually, repo_root};
use celery_operator::conditions::*;
use celery_operator::crd::Celery;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};

pub const TESTS: &[crate::TestCase] = &[
    ("worker_groups_and_beat_run_the_whole_app", false, |h| Box::pin(whole_app(h))),
    ("an_invalid_worker_group_is_refused_naming_the_field", false, |h| Box::pin(invalid_groups(h))),
    ("each_worker_group_scales_on_its_own_queues", false, |h| Box::pin(groups_scale_apart(h))),
    ("kubectl_scale_sets_the_default_workers_unless_a_policy_decides", false, |h| Box::pin(kubectl_scale(h))),
    ("an_hpa_on_a_worker_deployment_is_named_and_left_its_replicas", false, |h| Box::pin(foreign_hpa(h))),
];

/// The test's app, `shop`.
async fn shop(client: &Client, ns: &str) -> Result<Celery, String> {
    Api::<Celery>::namespaced(client.clone(), ns).get("shop").await.map_err(|e| e.to_string())
}

/// Waits until the Deployment `name` no longer exists.
async fn wait_gone(client: &Client, ns: &str, name: &str) {
    eventually(&format!("Deployment {name} gone"), WAIT, || async {
        match deployment(client, ns, name).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still there".to_string()),
        }
    })
    .await
}

/// The live (not deleting) pods of `ns` matching `selector`, by name.
async fn live_pods(client: &Client, ns: &str, selector: &str) -> BTreeSet<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default();
    list.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none()).filter_map(|p| p.metadata.name).collect()
}

async fn wait_pods(client: &Client, ns: &str, selector: &str, count: usize) -> BTreeSet<String> {
    eventually(&format!("{count} pods with {selector}"), WAIT, || async {
        let pods = live_pods(client, ns, selector).await;
        if pods.len() == count { Ok(pods) } else { Err(format!("{pods:?}")) }
    })
    .await
}

async fn patch_spec(client: &Client, ns: &str, name: &str, spec: serde_json::Value) -> Result<Celery, kube::Error> {
    let api: Api<Celery> = Api::namespaced(client.clone(), ns);
    api.patch(name, &PatchParams::default(), &Patch::Merge(&serde_json::json!({ "spec": spec }))).await
}

/// Real `celery beat` processes for the beat pods of `ns`: one per live pod, stopped with
/// SIGTERM when its pod is deleted. Counts the most beat pods (deleting ones included) and
/// processes that existed at once.
struct Beats {
    running: Mutex<BTreeMap<String, Server>>,
    most_pods: AtomicUsize,
    most_processes: AtomicUsize,
    started: Mutex<Vec<String>>,
}

impl Beats {
    fn follow(client: Client, ns: String, app: String, broker: String) -> Arc<Self> {
        let beats = Arc::new(Self {
            running: Mutex::default(),
            most_pods: AtomicUsize::new(0),
            most_processes: AtomicUsize::new(0),
            started: Mutex::default(),
        });
        let follower = Arc::clone(&beats);
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let selector = format!("app.kubernetes.io/instance={app},celeryproject.org/component=beat");
            while Arc::strong_count(&follower) > 1 {
                if let Ok(list) = api.list(&ListParams::default().labels(&selector)).await {
                    follower.most_pods.fetch_max(list.items.len(), Ordering::Relaxed);
                    let live: BTreeSet<String> = list
                        .items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    follower.sync(&live, &broker);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        beats
    }

    fn sync(&self, live: &BTreeSet<String>, broker: &str) {
        let mut running = self.running.lock().unwrap();
        running.retain(|pod, server| {
            let keep = live.contains(pod);
            if !keep {
                server.signal("TERM");
            }
            keep
        });
        let new: Vec<&String> = live.iter().filter(|p| !running.contains_key(*p)).collect();
        for pod in new {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut command = Command::new(python());
            command.env("CELERY_BROKER_URL", broker).env("PYTHONPATH", repo_root().join("example"));
            command.env("EXAMPLE_BEAT_SECONDS", "1").env("EXAMPLE_BEAT_QUEUE", "ticks");
            command.args(["-m", "celery", "--app=app:celery_app", "beat", "--loglevel=info", "--max-interval=1"]);
            command.arg(format!("--schedule={}", dir.path().join("celerybeat-schedule").display()));
            running.insert(pod.clone(), Server::spawn(command, dir));
            self.started.lock().unwrap().push(pod.clone());
        }
        self.most_processes.fetch_max(running.len(), Ordering::Relaxed);
    }
}

/// Ticks (the example app's periodic task) that ran to their end.
fn ticks(redis_port: u16) -> usize {
    task_log(redis_port).iter().filter(|r| r.task == "app.tick" && r.event == "end").count()
}

async fn wait_ticks(redis_port: u16, at_least: usize) {
    eventually(&format!("{at_least} periodic tasks executed"), WAIT, || async {
        let n = ticks(redis_port);
        if n >= at_least { Ok(()) } else { Err(format!("{n} executed")) }
    })
    .await
}

/// `workerSpec` and two groups, each its own Deployment and pods; beat sends a periodic task
/// that the `periodic` group's real worker executes; beat rolls out with never two at once;
/// removing a group removes only its Deployment; switching beat off removes it.
async fn whole_app(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, redis_port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{redis_port}/0");
    let ns = env.namespace("groups").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop}}
spec:
  common: {{appName: shop, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  flowerSpec: {{enabled: false}}
  workerSpec: {{queues: celery, numOfWorkers: 1}}
  workerGroups:
  - {{name: periodic, queues: ticks, numOfWorkers: 1, concurrency: 1}}
  - {{name: spare, queues: spare, numOfWorkers: 2, pool: threads, concurrency: 8}}
  beat: {{}}
"
    );
    create(&env.admin, &ns, &yaml).await.expect("created");
    let default_pods = wait_pods(&env.admin, &ns, "app=shop", 1).await;
    let periodic = wait_pods(&env.admin, &ns, "celeryproject.org/worker-group=periodic", 1).await;
    wait_pods(&env.admin, &ns, "celeryproject.org/worker-group=spare", 2).await;
    assert!(default_pods.is_disjoint(&periodic), "the default pool's selector does not take a group's pods");
    for name in ["shop-celery-worker", "shop-celery-worker-periodic", "shop-celery-worker-spare", "shop-celery-beat"] {
        deployment(&env.admin, &ns, name).await.expect("a Deployment per pool, and beat");
    }
    let spare = deployment(&env.admin, &ns, "shop-celery-worker-spare").await.expect("spare");
    let args = spare.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].args.clone().unwrap_or_default());
    assert!(args.is_some_and(|a| a.contains(&"--pool=threads".into()) && a.contains(&"--queues=spare".into())));

    // The status: app totals, each group, beat.
    let c = wait_condition(&env.admin, &ns, "shop", READY, "True", ALL_REPLICAS_READY).await;
    let status = c.status.expect("a status");
    assert_eq!(status.workers.map(|w| w.desired), Some(4), "the app's total");
    let groups: Vec<(String, Option<i32>)> =
        status.worker_groups.iter().map(|g| (g.name.clone(), g.workers.as_ref().map(|w| w.desired))).collect();
    assert_eq!(groups, [("periodic".to_string(), Some(1)), ("spare".to_string(), Some(2))]);
    assert!(status.worker_groups.iter().all(|g| g.policy.as_deref() == Some("none")));
    let c = eventually("beat Ready in the status", WAIT, || async {
        let c = shop(&env.admin, &ns).await?;
        match c.status.as_ref().and_then(|s| s.beat.clone()) {
            Some(b) if b.ready && b.last_restart.is_some() => Ok(c),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let first_start = c.status.and_then(|s| s.beat).and_then(|b| b.last_restart).expect("a start time");

    // Real beat and a real worker of the `periodic` group: the periodic task runs.
    let periodic: Vec<String> = periodic.into_iter().collect();
    let _fleet = Fleet::start_on(&broker, &periodic, "ticks", env.admin.clone(), ns.clone(), None);
    let beats = Beats::follow(env.admin.clone(), ns.clone(), "shop".into(), broker.clone());
    wait_ticks(redis_port, 3).await;
    let on = task_log(redis_port).into_iter().filter(|r| r.task == "app.tick").map(|r| r.worker).collect::<BTreeSet<_>>();
    assert_eq!(on, BTreeSet::from([format!("celery@{}", periodic[0])]), "ticks run on the periodic group's worker");

    // A change of beat's spec rolls it out with Recreate: the old beat is gone before the new
    // one starts, and the ticks go on.
    let beat_pod = wait_pods(&env.admin, &ns, "celeryproject.org/component=beat", 1).await;
    patch_spec(&env.admin, &ns, "shop", serde_json::json!({"beat": {"logLevel": "debug"}})).await.expect("patched");
    eventually("a new beat pod", WAIT, || async {
        let now = live_pods(&env.admin, &ns, "celeryproject.org/component=beat").await;
        if now.len() == 1 && now.is_disjoint(&beat_pod) { Ok(()) } else { Err(format!("{now:?}")) }
    })
    .await;
    let before = ticks(redis_port);
    wait_ticks(redis_port, before + 3).await;
    assert_eq!(beats.most_pods.load(Ordering::Relaxed), 1, "never two beat pods, also during the rollout");
    assert_eq!(beats.most_processes.load(Ordering::Relaxed), 1, "never two beats running");
    assert_eq!(beats.started.lock().unwrap().len(), 2, "one beat, then its replacement");
    eventually("beat's restart in the status", WAIT, || async {
        let c = shop(&env.admin, &ns).await?;
        match c.status.and_then(|s| s.beat).and_then(|b| b.last_restart) {
            Some(t) if t != first_start => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Removing a group removes its Deployment and pods, and leaves the others as they were.
    let periodic_before = deployment(&env.admin, &ns, "shop-celery-worker-periodic").await.expect("periodic");
    patch_spec(
        &env.admin,
        &ns,
        "shop",
        serde_json::json!({"workerGroups": [{"name": "periodic", "queues": "ticks", "numOfWorkers": 1, "concurrency": 1}]}),
    )
    .await
    .expect("patched");
    wait_gone(&env.admin, &ns, "shop-celery-worker-spare").await;
    wait_pods(&env.admin, &ns, "celeryproject.org/worker-group=spare", 0).await;
    let periodic_after = deployment(&env.admin, &ns, "shop-celery-worker-periodic").await.expect("periodic");
    assert_eq!(periodic_after.metadata.generation, periodic_before.metadata.generation, "the other group is untouched");
    eventually("the status without the spare group", WAIT, || async {
        let c = shop(&env.admin, &ns).await?;
        let s = c.status.unwrap_or_default();
        let names: Vec<String> = s.worker_groups.iter().map(|g| g.name.clone()).collect();
        match (names.as_slice(), s.workers.map(|w| w.desired)) {
            ([only], Some(2)) if only == "periodic" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Beat off: its Deployment goes.
    patch_spec(&env.admin, &ns, "shop", serde_json::json!({"beat": {"enabled": false}})).await.expect("patched");
    wait_gone(&env.admin, &ns, "shop-celery-beat").await;
    operator.stop().await;
}

/// Two groups of one name are refused by the API server (the list is keyed by name), a group
/// without queues too; a group whose Deployment name would be too long is refused by the
/// operator, naming the field.
async fn invalid_groups(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("badgroups").await;
    let operator = env.start_operator(&[&ns], None);
    let base = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop}
spec:
  common: {appName: shop, celeryApp: 'app:celery_app', image: example-image}
  flowerSpec: {enabled: false}
";
    let twice = format!("{base}  workerGroups: [{{name: a, queues: x}}, {{name: a, queues: y}}]\n");
    let refused = create(&env.admin, &ns, &twice).await.expect_err("a duplicate group name is refused");
    assert!(refused.to_string().contains("spec.workerGroups[1]"), "{refused}");
    let no_queue = format!("{base}  workerGroups: [{{name: a, queues: x}}, {{name: b}}]\n");
    // Sent as YAML, untyped: the operator's own types would not even hold it.
    let refused = apply_yaml(&env.admin, &no_queue, Some(&ns)).await.expect_err("a group without queues is refused");
    assert!(refused.contains("spec.workerGroups[1].queues"), "{refused}");

    let long = format!("{base}  workerGroups: [{{name: a, queues: x}}, {{name: {}, queues: y}}]\n", "g".repeat(40));
    let long = long.replace("appName: shop", &format!("appName: {}", "s".repeat(20)));
    create(&env.admin, &ns, &long).await.expect("the schema cannot judge the length of a name built from two");
    let c = wait_condition(&env.admin, &ns, "shop", DEGRADED, "True", INVALID_SPEC).await;
    let message = c.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == DEGRADED).map(|c| c.message);
    assert!(message.as_deref().is_some_and(|m| m.starts_with("spec.workerGroups[1].name:")), "{message:?}");
    operator.stop().await;
}

fn replicas_of(d: &k8s_openapi::api::apps::v1::Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

async fn wait_replicas(client: &Client, ns: &str, name: &str, want: i32) {
    eventually(&format!("{name} at {want} replicas"), WAIT, || async {
        let got = replicas_of(&deployment(client, ns, name).await?);
        if got == want { Ok(()) } else { Err(format!("{got} replicas")) }
    })
    .await
}

/// Three autoscaled pools on one Redis, each on its own queue: a burst on the `reports` queue
/// scales only the `reports` group; `workerSpec`'s workers and the `hooks` group hold. Each
/// group's status shows its own queues and decision, and the events name the group. A group
/// whose autoscaling is switched off gets its fixed count, and its autoscaler status goes.
async fn groups_scale_apart(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, redis_port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{redis_port}/0");
    let ns = env.namespace("groupscale").await;
    let operator = env.start_operator(&[&ns], None);
    let scaling = "{policy: queue-length, settings: {target: '5'}, minReplicas: 1, maxReplicas: 4, \
                   scaleDown: {stabilizationWindowSeconds: 0, maxStepPercent: 100, periodSeconds: 0}}";
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop}}
spec:
  common: {{appName: shop, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  flowerSpec: {{enabled: false}}
  workerSpec: {{queues: celery}}
  autoscaling: {scaling}
  workerGroups:
  - {{name: reports, queues: reports, autoscaling: {scaling}}}
  - {{name: hooks, queues: hooks, autoscaling: {scaling}}}
"
    );
    create(&env.admin, &ns, &yaml).await.expect("created");
    wait_condition(&env.admin, &ns, "shop", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    let status = eventually("every group's autoscaler status", WAIT, || async {
        let c = shop(&env.admin, &ns).await?;
        let s = c.status.unwrap_or_default();
        if s.worker_groups.len() == 2 && s.worker_groups.iter().all(|g| g.autoscaler.is_some()) {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    let queues = |g: &celery_operator::crd::GroupStatus| -> Vec<String> {
        g.autoscaler.iter().flat_map(|a| a.queues.iter().map(|q| q.name.clone())).collect()
    };
    assert_eq!(queues(&status.worker_groups[0]), ["reports"]);
    assert_eq!(queues(&status.worker_groups[1]), ["hooks"]);
    let own: Vec<String> = status.autoscaler.iter().flat_map(|a| a.queues.iter().map(|q| q.name.clone())).collect();
    assert_eq!(own, ["celery"], "workerSpec's loop reads its own queue");
    assert_eq!(status.worker_groups[0].policy.as_deref(), Some("queue-length"));

    // 20 reports at 5 per worker: the reports group goes to 4, the others stay at 1.
    let sent = Command::new(python())
        .current_dir(repo_root().join("example"))
        .env("CELERY_BROKER_URL", &broker)
        .args(["producer.py", "--burst", "20", "--queue", "reports", "--duration", "0.1"])
        .status()
        .expect("runs the producer");
    assert!(sent.success());
    wait_replicas(&env.admin, &ns, "shop-celery-worker-reports", 4).await;
    let c = eventually("the reports group's decision in its status", WAIT, || async {
        let c = shop(&env.admin, &ns).await?;
        let reports = c.status.as_ref().and_then(|s| s.worker_groups.iter().find(|g| g.name == "reports").cloned());
        let decided = reports.and_then(|g| g.autoscaler).and_then(|a| a.last_decision).map(|d| d.replicas);
        if decided == Some(4) { Ok(c) } else { Err(format!("{decided:?}")) }
    })
    .await;
    let status = c.status.expect("a status");
    let hooks = status.worker_groups.iter().find(|g| g.name == "hooks").and_then(|g| g.autoscaler.clone()).expect("hooks");
    assert_eq!(hooks.queues.iter().map(|q| (q.name.as_str(), q.backlog)).collect::<Vec<_>>(), [("hooks", Some(0))]);
    assert_eq!(replicas_of(&deployment(&env.admin, &ns, "shop-celery-worker").await.expect("default")), 1);
    assert_eq!(replicas_of(&deployment(&env.admin, &ns, "shop-celery-worker-hooks").await.expect("hooks")), 1);
    // The reconciler writes the totals after the Deployment's change reaches its watch.
    eventually("the app's total of 6 workers", WAIT, || async {
        let total = shop(&env.admin, &ns).await?.status.and_then(|s| s.workers).map(|w| w.desired);
        if total == Some(6) { Ok(()) } else { Err(format!("{total:?}")) }
    })
    .await;
    let events = eventually("a ScaledUp event", WAIT, || crate::lifecycle::events_of(&env.admin, &ns, "shop", SCALED_UP)).await;
    assert!(events.iter().all(|e| e.contains("\"worker group reports: 1 → ")), "{events:?}");

    // The reports group's autoscaling off: its fixed count, and its autoscaler status cleared.
    let groups = serde_json::json!([
        {"name": "reports", "queues": "reports", "numOfWorkers": 2},
        {"name": "hooks", "queues": "hooks", "autoscaling": {"policy": "queue-length", "settings": {"target": "5"}, "maxReplicas": 4}},
    ]);
    patch_spec(&env.admin, &ns, "shop", serde_json::json!({"workerGroups": groups})).await.expect("patched");
    wait_replicas(&env.admin, &ns, "shop-celery-worker-reports", 2).await;
    eventually("the reports group without autoscaler status", WAIT, || async {
        let c = shop(&env.admin, &ns).await?;
        let s = c.status.unwrap_or_default();
        let reports = s.worker_groups.iter().find(|g| g.name == "reports").cloned();
        let hooks = s.worker_groups.iter().find(|g| g.name == "hooks").cloned();
        match (reports, hooks) {
            (Some(r), Some(h)) if r.autoscaler.is_none() && r.policy.as_deref() == Some("none") && h.autoscaler.is_some() => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    operator.stop().await;
}

/// `kubectl scale celery NAME --replicas N` sets `workerSpec.numOfWorkers` (the scale
/// subresource) and the workers follow; with a policy deciding the count it is refused, saying
/// why; switching the policy on with a new starting count in one edit is allowed.
async fn kubectl_scale(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("kscale").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop}
spec:
  common: {appName: shop, celeryApp: 'app:celery_app', image: example-image}
  flowerSpec: {enabled: false}
  workerSpec: {numOfWorkers: 1}
";
    create(&env.admin, &ns, yaml).await.expect("created");
    wait_replicas(&env.admin, &ns, "shop-celery-worker", 1).await;
    let kubectl = |args: &[&str]| {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(h.control_plane.admin_kubeconfig())
            .args(["-n", &ns])
            .args(args)
            .output()
            .expect("runs kubectl")
    };
    let out = kubectl(&["scale", "celery/shop", "--replicas=3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_replicas(&env.admin, &ns, "shop-celery-worker", 3).await;
    let c = Api::<Celery>::namespaced(env.admin.clone(), &ns).get("shop").await.expect("the app");
    assert_eq!(c.spec.worker_spec.num_of_workers, 3);
    eventually("the scale subresource's status count", WAIT, || async {
        let out = kubectl(&["get", "celery/shop", "--subresource=scale", "-o", "jsonpath={.status.replicas}"]);
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        if got == "3" { Ok(()) } else { Err(got) }
    })
    .await;

    // A policy on, with a new starting count, in one edit: allowed.
    let autoscaled = serde_json::json!({
        "workerSpec": {"numOfWorkers": 2},
        "autoscaling": {"policy": "queue-length", "minReplicas": 1, "maxReplicas": 4},
    });
    patch_spec(&env.admin, &ns, "shop", autoscaled).await.expect("switching the policy on with a starting count");
    // While it decides, kubectl scale is refused, and says why.
    let out = kubectl(&["scale", "celery/shop", "--replicas=4"]);
    assert!(!out.status.success(), "kubectl scale of an autoscaled app succeeded");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("has no effect while a scaling policy decides"), "{said}");
    operator.stop().await;
}

/// A HorizontalPodAutoscaler a user put on a group's Deployment (as KEDA's ScaledObject makes
/// one): the app turns Degraded naming it and the group, the group's status shows it as the
/// policy, and the reconciler stops writing that Deployment's count, so a count the HPA sets
/// (written here through the scale subresource, as the HPA controller does; none runs here)
/// survives the next reconcile. Deleting the HPA hands the count back to the spec. The other
/// pool keeps its count throughout.
async fn foreign_hpa(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("hpa").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop}
spec:
  common: {appName: shop, celeryApp: 'app:celery_app', image: example-image}
  flowerSpec: {enabled: false}
  workerSpec: {numOfWorkers: 2}
  workerGroups: [{name: hooks, queues: webhooks, numOfWorkers: 1}]
";
    create(&env.admin, &ns, yaml).await.expect("created");
    wait_condition(&env.admin, &ns, "shop", READY, "True", ALL_REPLICAS_READY).await;
    let hpa = "
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: hooks-by-cpu}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: shop-celery-worker-hooks}
  minReplicas: 1
  maxReplicas: 5
  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}]
";
    apply_yaml(&env.admin, hpa, Some(&ns)).await.expect("HPA created");
    let c = wait_condition(&env.admin, &ns, "shop", DEGRADED, "True", CONFLICTING_AUTOSCALER).await;
    let status = c.status.unwrap_or_default();
    let message = status.conditions.iter().find(|c| c.type_ == DEGRADED).map(|c| c.message.clone()).unwrap_or_default();
    assert!(
        message.starts_with(
            "HorizontalPodAutoscaler hooks-by-cpu scales Deployment shop-celery-worker-hooks (worker group hooks): two autoscalers"
        ),
        "{message}"
    );
    let group = status.worker_groups.iter().find(|g| g.name == "hooks").expect("the group's status");
    assert_eq!(group.policy.as_deref(), Some("hpa/hooks-by-cpu"));

    // The HPA's count stays through a reconcile (a spec change), which rolls both pools out.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(env.admin.clone(), &ns);
    let scale = serde_json::json!({"spec": {"replicas": 3}});
    deployments
        .patch_scale("shop-celery-worker-hooks", &PatchParams::default(), &Patch::Merge(&scale))
        .await
        .expect("scaled as an HPA does");
    let changed = patch_spec(&env.admin, &ns, "shop", serde_json::json!({"common": {"podAnnotations": {"touched": "1"}}}))
        .await
        .expect("spec changed");
    let generation = changed.metadata.generation;
    eventually("the change reconciled", WAIT, || async {
        let c = shop(&env.admin, &ns).await?;
        let seen = c.status.and_then(|s| s.observed_generation);
        if seen == generation { Ok(()) } else { Err(format!("observed {seen:?}, generation {generation:?}")) }
    })
    .await;
    let hooks = deployment(&env.admin, &ns, "shop-celery-worker-hooks").await.expect("the group's Deployment");
    let annotated = hooks.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.as_ref());
    assert!(annotated.is_some_and(|a| a.get("touched").is_some()), "the group's pods still follow the spec");
    assert_eq!(replicas_of(&hooks), 3, "the reconciler wrote the HPA's count back");
    assert_eq!(replicas_of(&deployment(&env.admin, &ns, "shop-celery-worker").await.expect("workerSpec's")), 2);

    // Without the HPA the spec decides again.
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> = Api::namespaced(env.admin.clone(), &ns);
    hpas.delete("hooks-by-cpu", &Default::default()).await.expect("HPA deleted");
    wait_condition(&env.admin, &ns, "shop", DEGRADED, "False", AS_EXPECTED).await;
    wait_replicas(&env.admin, &ns, "shop-celery-worker-hooks", 1).await;
    operator.stop().await;
}
