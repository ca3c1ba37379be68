//! The autoscaling loop on a real API server with a real Redis and the real Celery of
//! `example/`: a producer fills the queue, the operator scales the worker Deployment up, a local
//! Celery worker drains the queue, the operator scales down (to zero and back); the Python
//! operator's `scaleTargetRef` does the same unchanged; CPU use simulated by kwok reaches the
//! policy through metrics-server and `metrics.k8s.io`; a broken broker or policy holds the count;
//! tasks in progress reach the policy from a real Flower.
//!
//! The worker pods are kwok's simulated pods, so they run no Celery: the queue is drained by a
//! Celery worker this test starts on the host, against the same Redis.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use celery_operator::conditions::*;
use celery_operator::crd::{AutoscalerStatus, Celery};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::Harness;
use crate::lifecycle::{condition, create, deployment, events_of, wait_condition};
use crate::servers::{Server, free_port, python, redis_server, wait_for};
use crate::support::{WAIT, eventually, repo_root};

/// Every test: name, whether it needs the control plane to itself, body.
pub const TESTS: &[crate::TestCase] = &[
    ("queue_backlog_scales_workers_up_and_down", false, |h| Box::pin(queue_backlog_scales_workers_up_and_down(h))),
    ("seed_scale_target_ref_autoscales", false, |h| Box::pin(seed_scale_target_ref_autoscales(h))),
    ("cpu_utilisation_scales_through_the_metrics_api", false, |h| Box::pin(cpu_utilisation_scales_through_the_metrics_api(h))),
    ("broken_broker_or_policy_holds_replicas", false, |h| Box::pin(broken_broker_or_policy_holds_replicas(h))),
    ("flower_work_in_progress_reaches_the_policy", false, |h| Box::pin(flower_work_in_progress_reaches_the_policy(h))),
    ("a_schedule_raises_the_minimum_while_it_is_active", false, |h| {
        Box::pin(a_schedule_raises_the_minimum_while_it_is_active(h))
    }),
    ("annotations_pause_set_and_block_scaling_and_scale_up_is_limited", false, |h| {
        Box::pin(annotations_pause_set_and_block_scaling_and_scale_up_is_limited(h))
    }),
    ("a_shadow_policy_is_recorded_and_never_applied", false, |h| Box::pin(a_shadow_policy_is_recorded_and_never_applied(h))),
    ("several_policies_combine_by_first_max_and_min", false, |h| Box::pin(several_policies_combine_by_first_max_and_min(h))),
    ("a_message_on_an_empty_queue_is_acted_on_at_once_with_redis_keyspace_events", false, |h| {
        Box::pin(a_message_on_an_empty_queue_is_acted_on_at_once_with_redis_keyspace_events(h))
    }),
];

/// Scaling waits include the scale-down window and the metrics-server scrapes.
const SCALE_WAIT: Duration = Duration::from_secs(120);

async fn worker_replicas(client: &Client, ns: &str, deployment_name: &str) -> Result<i32, String> {
    let d = deployment(client, ns, deployment_name).await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

/// Waits until the worker Deployment asks for `want` replicas.
pub async fn wait_replicas(client: &Client, ns: &str, app: &str, want: i32, timeout: Duration) {
    let name = format!("{app}-celery-worker");
    eventually(&format!("{name} at {want} replicas"), timeout, || async {
        let got = worker_replicas(client, ns, &name).await?;
        let status = Api::<Celery>::namespaced(client.clone(), ns).get(app).await.map_err(|e| e.to_string())?.status;
        if got == want { Ok(()) } else { Err(format!("{got} replicas; status {status:?}")) }
    })
    .await
}

/// Waits until `app`'s `status.autoscaler` passes `check`: the status write follows the scale it
/// records, so a read right after [`wait_replicas`] can still see the one before.
async fn wait_autoscaler<T>(
    client: &Client,
    ns: &str,
    app: &str,
    what: &str,
    check: impl Fn(&AutoscalerStatus) -> Option<T>,
) -> T {
    eventually(what, WAIT, || async {
        let c = Api::<Celery>::namespaced(client.clone(), ns).get(app).await.map_err(|e| e.to_string())?;
        let auto = c.status.and_then(|s| s.autoscaler).ok_or("no autoscaler status")?;
        check(&auto).ok_or_else(|| format!("{auto:?}"))
    })
    .await
}

fn example_dir() -> PathBuf {
    repo_root().join("example")
}

/// Runs `example/producer.py --burst N` against `broker`.
fn produce(broker: &str, tasks: u32, duration: f64) {
    let status = Command::new(python())
        .current_dir(example_dir())
        .env("CELERY_BROKER_URL", broker)
        .args(["producer.py", "--burst", &tasks.to_string(), "--duration", &duration.to_string()])
        .status()
        .expect("runs the producer");
    assert!(status.success(), "producer failed: {status}");
}

/// A real Celery worker of the example app on the host, killed on drop.
struct LocalWorker(Child);

impl LocalWorker {
    fn start(broker: &str) -> Self {
        let child = Command::new(python())
            .current_dir(example_dir())
            .env("CELERY_BROKER_URL", broker)
            .args(["-m", "celery", "--app=app:celery_app", "worker", "--queues=celery", "--pool=threads", "--concurrency=8"])
            .args(["--loglevel=warning", "--without-heartbeat", "--without-mingle", "--without-gossip"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starts a Celery worker");
        Self(child)
    }
}

impl Drop for LocalWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn celery(client: &Client, ns: &str, name: &str) -> Celery {
    Api::<Celery>::namespaced(client.clone(), ns).get(name).await.expect("the Celery object")
}

/// Queue backlog scaling with the built-in `queue-length` policy, down to zero and back.
pub async fn queue_backlog_scales_workers_up_and_down(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("autoscale").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop}}
spec:
  common: {{appName: shop, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{queues: celery, concurrency: 2}}
  autoscaling:
    policy: queue-length
    settings: {{target: '10'}}
    minReplicas: 0
    maxReplicas: 5
    scaleDown: {{stabilizationWindowSeconds: 2, maxStepPercent: 100, periodSeconds: 0}}
"
    );
    create(&env.admin, &ns, &yaml).await.expect("created");
    wait_condition(&env.admin, &ns, "shop", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    // An empty queue with minReplicas 0: the one starting worker goes after the window.
    wait_replicas(&env.admin, &ns, "shop", 0, SCALE_WAIT).await;

    produce(&broker, 45, 0.1);
    wait_replicas(&env.admin, &ns, "shop", 5, SCALE_WAIT).await;
    // The event follows the scale it records.
    let scaled = eventually("a ScaledUp event", WAIT, || events_of(&env.admin, &ns, "shop", SCALED_UP)).await;
    assert!(scaled.iter().any(|e| e.contains("queue-length") && e.contains("messages")), "policy and reason given: {scaled:?}");
    let c = celery(&env.admin, &ns, "shop").await;
    let status = c.status.expect("status");
    let auto = status.autoscaler.expect("autoscaler status");
    assert_eq!(auto.last_decision.as_ref().map(|d| d.policy.as_str()), Some("queue-length"));
    assert!(auto.last_scale_time.is_some());

    let worker = LocalWorker::start(&broker);
    wait_replicas(&env.admin, &ns, "shop", 0, SCALE_WAIT).await;
    eventually("a ScaledDown event", WAIT, || events_of(&env.admin, &ns, "shop", SCALED_DOWN)).await;
    drop(worker);
    eventually("backlog 0 in status", WAIT, || async {
        let c = celery(&env.admin, &ns, "shop").await;
        match c.status.and_then(|s| s.queue_backlog) {
            Some(0) => Ok(()),
            other => Err(format!("queueBacklog {other:?}")),
        }
    })
    .await;

    // From zero, one message brings a worker back.
    produce(&broker, 1, 0.1);
    wait_replicas(&env.admin, &ns, "shop", 1, SCALE_WAIT).await;
    operator.stop().await;
}

/// A resource in the Python operator's format autoscales by its `scaleTargetRef`, with the
/// broker given the way Celery reads it, as `CELERY_BROKER_URL` in the environment.
pub async fn seed_scale_target_ref_autoscales(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("seedscale").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: seed}}
spec:
  common:
    appName: seed
    celeryApp: 'app:celery_app'
    image: example-image
    env: [{{name: CELERY_BROKER_URL, value: '{broker}'}}]
  workerSpec: {{numOfWorkers: 1, queues: celery, logLevel: info, concurrency: 2}}
  flowerSpec: {{replicas: 1}}
  scaleTargetRef:
  - kind: worker
    minReplicas: 1
    maxReplicas: 4
    metrics:
    - name: message_queue
      target: {{type: length, averageValue: '5'}}
"
    );
    create(&env.admin, &ns, &yaml).await.expect("created");
    wait_condition(&env.admin, &ns, "seed", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    produce(&broker, 12, 0.1);
    // ceil(12 / 5) = 3 workers.
    wait_replicas(&env.admin, &ns, "seed", 3, SCALE_WAIT).await;
    let c = celery(&env.admin, &ns, "seed").await;
    assert_eq!(c.status.as_ref().and_then(|s| s.policy.as_deref()), Some("queue-length"));
    operator.stop().await;
}

/// CPU use simulated by kwok, read through metrics-server, scales with `cpu-memory`.
pub async fn cpu_utilisation_scales_through_the_metrics_api(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("cpuscale").await;
    let operator = env.start_operator(&[&ns], None);
    // Each pod uses 400m of its 200m request: 200% against a 50% target.
    let yaml = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: cpu}
spec:
  common:
    appName: cpu
    celeryApp: 'app:celery_app'
    image: example-image
    podAnnotations: {kwok.x-k8s.io/usage-cpu: 400m, kwok.x-k8s.io/usage-memory: 10Mi}
  workerSpec: {resources: {requests: {cpu: 200m, memory: 64Mi}}}
  flowerSpec: {enabled: false}
  scaleTargetRef:
  - kind: worker
    minReplicas: 1
    maxReplicas: 3
    metrics:
    - name: cpu
      target: {type: Utilization, averageUtilization: 50}
";
    create(&env.admin, &ns, yaml).await.expect("created");
    wait_replicas(&env.admin, &ns, "cpu", 3, SCALE_WAIT).await;
    // NB: a sample may catch the metrics API unavailable (metrics-server scrapes, an aggregated API
    // coming back after the API server restart test): the loop then holds, and the status says
    // CPU is unknown. The CPU figure shows again with the next sample that has it.
    eventually("CPU from metrics.k8s.io in status", SCALE_WAIT, || async {
        let c = celery(&env.admin, &ns, "cpu").await;
        let auto = c.status.and_then(|s| s.autoscaler).ok_or("no autoscaler status")?;
        let by_policy = auto.last_decision.as_ref().is_some_and(|d| d.policy == "cpu-memory");
        if by_policy && auto.cpu_millis.is_some_and(|m| m >= 390) { Ok(()) } else { Err(format!("{auto:?}")) }
    })
    .await;
    // The metrics never scaled it below what they asked for.
    assert_eq!(worker_replicas(&env.admin, &ns, "cpu-celery-worker").await, Ok(3));
    operator.stop().await;
}

/// A dead broker and a trapping policy hold the count, say why, and warn once.
pub async fn broken_broker_or_policy_holds_replicas(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("failsafe").await;
    let operator = env.start_operator(&[&ns], None);
    let dead = format!("redis://127.0.0.1:{}/0", crate::servers::free_port());
    let yaml = |name: &str, broker: &str, policy: &str| {
        format!(
            "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {name}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{numOfWorkers: 3}}
  flowerSpec: {{enabled: false}}
  autoscaling: {{policy: {policy}, minReplicas: 1, maxReplicas: 5, settings: {{target: '10'}},
    scaleDown: {{stabilizationWindowSeconds: 0, periodSeconds: 0}}}}
"
        )
    };
    create(&env.admin, &ns, &yaml("deadbroker", &dead, "queue-length")).await.expect("created");
    let c = wait_condition(&env.admin, &ns, "deadbroker", SCALING_ACTIVE, "False", METRICS_UNAVAILABLE).await;
    let (_, _, message) = condition(&c, SCALING_ACTIVE).unwrap();
    assert!(message.contains("spec.broker") && message.contains("127.0.0.1"), "names the field and the broker: {message}");

    // With a fallback the count is raised to it, never lowered.
    let fallback = yaml("fallback", &dead, "queue-length")
        .replace("numOfWorkers: 3", "numOfWorkers: 2")
        .replace("minReplicas: 1,", "minReplicas: 1, fallbackReplicas: 4,");
    create(&env.admin, &ns, &fallback).await.expect("created");
    eventually("fallback raises 2 to 4", WAIT, || async {
        match worker_replicas(&env.admin, &ns, "fallback-celery-worker").await {
            Ok(4) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let raised = eventually("a ScaledUp event", WAIT, || events_of(&env.admin, &ns, "fallback", SCALED_UP)).await;
    assert!(raised.iter().any(|e| e.contains("fallbackReplicas 4")), "{raised:?}");

    let (_redis, port) = redis_server(&[]);
    let live = format!("redis://127.0.0.1:{port}/0");
    create(&env.admin, &ns, &yaml("trapping", &live, crate::support::TRAP_POLICY)).await.expect("created");
    let c = wait_condition(&env.admin, &ns, "trapping", SCALING_ACTIVE, "False", POLICY_FAILED).await;
    let (_, _, message) = condition(&c, SCALING_ACTIVE).unwrap();
    assert!(message.contains("trapped") && message.contains("boom"), "quotes the guest: {message}");

    // Let several more samples pass: the count must still be the starting 3, not the 0
    // an empty or unknown queue would otherwise mean.
    tokio::time::sleep(Duration::from_secs(4)).await;
    for app in ["deadbroker", "trapping"] {
        assert_eq!(worker_replicas(&env.admin, &ns, &format!("{app}-celery-worker")).await, Ok(3), "{app} held");
    }
    let warnings = events_of(&env.admin, &ns, "deadbroker", METRICS_UNAVAILABLE).await.expect("a Warning event");
    assert_eq!(warnings.len(), 1, "one event, not one per sample: {warnings:?}");
    events_of(&env.admin, &ns, "trapping", POLICY_FAILED).await.expect("a Warning event");
    operator.stop().await;
}

/// Flower of the example app on the host, with basic auth, killed on drop.
fn local_flower(broker: &str, port: u16, users: &str) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(python());
    command.env("CELERY_BROKER_URL", broker).env("PYTHONPATH", example_dir());
    command.args(["-m", "celery", "--app=app:celery_app", "flower", "--address=127.0.0.1"]);
    command.args([format!("--port={port}"), format!("--basic_auth={users}")]);
    let server = Server::spawn(command, dir);
    wait_for("flower", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    server
}

/// A Celery worker of the example app on the host under the node name a worker pod's own
/// Celery would have (`celery@<pod name>`), with heartbeats, which carry its running tasks.
fn worker_as_pod(broker: &str, pod: &str, concurrency: u32) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(python());
    command.env("CELERY_BROKER_URL", broker).env("PYTHONPATH", example_dir());
    command.args(["-m", "celery", "--app=app:celery_app", "worker", "--queues=celery", "--loglevel=info"]);
    command.args([format!("--hostname=celery@{pod}"), format!("--concurrency={concurrency}")]);
    Server::spawn(command, dir)
}

/// A resource that names no broker (its Celery config is in the image, as the Python operator
/// allowed) with the `load` policy: the backlog comes from Flower's API, and the tasks running
/// on a worker pod from Flower's worker gauges, so the policy counts running work as well as
/// waiting work. This Flower runs on the host, not as the app's Flower Service, so the app's
/// `flowerSpec.basicAuth` is not sent to it (credentials go to the app's own Flower only): the
/// `flowerUrl` carries its own.
pub async fn flower_work_in_progress_reaches_the_policy(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, redis_port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{redis_port}/0");
    let flower_port = free_port();
    let _flower = local_flower(&broker, flower_port, "admin:s3cret");
    let ns = env.namespace("flower").await;
    let operator = env.start_operator(&[&ns], None);
    let secret = "{apiVersion: v1, kind: Secret, metadata: {name: flower-auth}, stringData: {auth: 'admin:s3cret'}}";
    crate::support::apply_yaml(&env.admin, secret, Some(&ns)).await.expect("Secret created");
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: busy}}
spec:
  common: {{appName: busy, celeryApp: 'app:celery_app', image: example-image}}
  workerSpec: {{queues: celery, concurrency: 2}}
  flowerSpec: {{basicAuth: {{name: flower-auth, key: auth}}}}
  autoscaling:
    policy: load
    settings: {{targetUtilization: '1'}}
    minReplicas: 1
    maxReplicas: 6
    flowerUrl: 'http://admin:s3cret@127.0.0.1:{flower_port}'
"
    );
    create(&env.admin, &ns, &yaml).await.expect("created");
    // Flower measured the (empty) queue, or the loop would not be deciding.
    wait_condition(&env.admin, &ns, "busy", SCALING_ACTIVE, "True", POLICY_DECIDING).await;

    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), &ns);
    let pod = eventually("the worker pod", WAIT, || async {
        let list = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let names: Vec<String> =
            list.items.iter().filter_map(|p| p.metadata.name.clone()).filter(|n| n.starts_with("busy-celery-worker-")).collect();
        match names.as_slice() {
            [one] => Ok(one.clone()),
            other => Err(format!("worker pods {other:?}")),
        }
    })
    .await;
    let _worker = worker_as_pod(&broker, &pod, 2);
    // Two tasks run (the example app reserves no more than it runs), three wait:
    // ceil((2 + 3) / (2 × 100%)) = 3 workers. Without the running two it would be 2.
    produce(&broker, 5, 600.0);
    wait_replicas(&env.admin, &ns, "busy", 3, SCALE_WAIT).await;
    let c = eventually("the running tasks in status", WAIT, || async {
        let c = celery(&env.admin, &ns, "busy").await;
        let auto = c.status.as_ref().and_then(|s| s.autoscaler.as_ref());
        match auto.map(|a| (a.active_tasks, a.queues.first().and_then(|q| q.backlog))) {
            Some((Some(2), Some(3))) => Ok(c),
            other => Err(format!("(activeTasks, backlog) {other:?}")),
        }
    })
    .await;
    let decision = c.status.and_then(|s| s.autoscaler).and_then(|a| a.last_decision).expect("a decision");
    assert!(decision.reason.contains("2 tasks running + 3 waiting"), "the policy saw the running tasks: {}", decision.reason);
    assert!(events_of(&env.admin, &ns, "busy", FLOWER_UNAVAILABLE).await.is_err(), "Flower was readable throughout");
    operator.stop().await;
}

/// The app's policies decide (`ScalingActive` True) and nothing is `Degraded`.
fn assert_policies_decide(c: &Celery) {
    assert_eq!(condition(c, SCALING_ACTIVE).map(|(s, r, _)| (s, r)), Some(("True".into(), POLICY_DECIDING.into())));
    assert_eq!(condition(c, DEGRADED).map(|(s, _, _)| s), Some("False".into()));
}

/// A JSON merge patch of the app, as `kubectl patch --type merge` makes.
async fn merge_patch(client: &Client, ns: &str, name: &str, patch: serde_json::Value) {
    Api::<Celery>::namespaced(client.clone(), ns)
        .patch(name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("patching {ns}/{name} with {patch}: {e}"));
}

/// Sets (`Some`) or removes (`None`) annotations of the app, as a user with kubectl does.
async fn annotate(client: &Client, ns: &str, name: &str, pairs: &[(&str, Option<&str>)]) {
    let annotations: serde_json::Map<String, serde_json::Value> =
        pairs.iter().map(|(k, v)| (k.to_string(), v.map_or(serde_json::Value::Null, |v| v.into()))).collect();
    merge_patch(client, ns, name, serde_json::json!({"metadata": {"annotations": annotations}})).await;
}

/// The app `shop` on `broker`'s `celery` queue, `queue-length` at 10 messages per worker from 1 to
/// `max` workers, scaling down after 2 s, with `extra` lines at the end of its `autoscaling`.
fn shop_yaml(broker: &str, max: u32, extra: &str) -> String {
    shop_yaml_with(broker, max, QUEUE_LENGTH_10, &format!("{QUICK_DAMPING}{extra}"))
}

/// `queue-length` at 10 messages a worker, as the lines of an `autoscaling` section.
pub const QUEUE_LENGTH_10: &str = "    policy: queue-length\n    settings: {target: '10'}\n";
/// Scale-down damping short enough for a test.
pub const QUICK_DAMPING: &str = "    scaleDown: {stabilizationWindowSeconds: 2, maxStepPercent: 100, periodSeconds: 0}\n";

/// The `shop` app on `broker`, autoscaled between 1 and `max` workers by the `policies` lines
/// (`policy`/`settings`, or `policies`/`combine`), with `extra` lines in its `autoscaling`.
pub fn shop_yaml_with(broker: &str, max: u32, policies: &str, extra: &str) -> String {
    format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop}}
spec:
  common: {{appName: shop, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  flowerSpec: {{enabled: false}}
  workerSpec: {{queues: celery, numOfWorkers: 1}}
  autoscaling:
{policies}    minReplicas: 1
    maxReplicas: {max}
{extra}"
    )
}

/// Waits until the app's `ScalingActive` condition has `reason` and a message starting with
/// `message`.
async fn wait_scaling(client: &Client, ns: &str, reason: &str, message: &str) {
    eventually(&format!("ScalingActive {reason}: {message}"), WAIT, || async {
        let c = Api::<Celery>::namespaced(client.clone(), ns).get("shop").await.map_err(|e| e.to_string())?;
        match condition(&c, SCALING_ACTIVE) {
            Some((_, r, m)) if r == reason && m.starts_with(message) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The manual overrides, on the real control plane and a real Redis: `paused-replicas` sets
/// and holds a count, `autoscaling-paused` holds it, `paused-scale-out` blocks scaling up, each
/// shown in `ScalingActive` (reason `Paused`) and an event; removing them resumes. And
/// `scaleUp` lets in only so many workers a period, saying so in the decision.
async fn annotations_pause_set_and_block_scaling_and_scale_up_is_limited(h: Arc<Harness>) {
    use celery_operator::decide::overrides::*;
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("paused").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = shop_yaml(&broker, 8, "    scaleUp: {maxPods: 2, periodSeconds: 3600}\n");
    create(&env.admin, &ns, &yaml).await.expect("created");
    wait_condition(&env.admin, &ns, "shop", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    let redis = redis::Client::open(broker.as_str()).expect("redis client");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let push = |n: usize| (0..n).map(|i| format!("{{\"m\": {i}}}")).collect::<Vec<_>>();
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(60)).query_async(&mut conn).await.expect("LPUSH");

    // 60 messages want 6 workers; the period lets 2 in, and the decision says so.
    wait_replicas(&env.admin, &ns, "shop", 3, SCALE_WAIT).await;
    wait_autoscaler(&env.admin, &ns, "shop", "the scaleUp limit in the decision", |a| {
        let reason = &a.last_decision.as_ref()?.reason;
        (reason.contains("queue-length asked for 6, 2 ") && reason.ends_with(" this period (scaleUp)")).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(worker_replicas(&env.admin, &ns, "shop-celery-worker").await, Ok(3), "no more this period");

    // paused-replicas sets and holds a count.
    annotate(&env.admin, &ns, "shop", &[(PAUSED_REPLICAS_ANNOTATION, Some("5"))]).await;
    wait_replicas(&env.admin, &ns, "shop", 5, SCALE_WAIT).await;
    wait_scaling(&env.admin, &ns, PAUSED, "5 workers set by annotation celeryproject.org/paused-replicas").await;
    let paused = eventually("a Paused event", WAIT, || events_of(&env.admin, &ns, "shop", PAUSED)).await;
    assert!(paused.iter().any(|e| e.contains("paused-replicas")), "{paused:?}");

    // autoscaling-paused holds it, though the queue is now empty (the policy wants 1).
    annotate(&env.admin, &ns, "shop", &[(PAUSED_REPLICAS_ANNOTATION, None), (PAUSED_ANNOTATION, Some("true"))]).await;
    let _: () = redis::cmd("DEL").arg("celery").query_async(&mut conn).await.expect("DEL");
    wait_scaling(&env.admin, &ns, PAUSED, "5 workers held by annotation celeryproject.org/autoscaling-paused").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(worker_replicas(&env.admin, &ns, "shop-celery-worker").await, Ok(5), "held past the scale-down window");

    // paused-scale-out alone (and no scale-up limit left to hold anything): the empty queue
    // scales down, a backlog does not scale up.
    merge_patch(&env.admin, &ns, "shop", serde_json::json!({"spec": {"autoscaling": {"scaleUp": null}}})).await;
    annotate(&env.admin, &ns, "shop", &[(PAUSED_ANNOTATION, None), (PAUSED_SCALE_OUT_ANNOTATION, Some("true"))]).await;
    wait_replicas(&env.admin, &ns, "shop", 1, SCALE_WAIT).await;
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(30)).query_async(&mut conn).await.expect("LPUSH");
    eventually("the blocked scale-up in the decision", WAIT, || async {
        let c = Api::<Celery>::namespaced(env.admin.clone(), &ns).get("shop").await.map_err(|e| e.to_string())?;
        let reason = c.status.and_then(|s| s.autoscaler).and_then(|a| a.last_decision).map(|d| d.reason).unwrap_or_default();
        reason.starts_with("scaling up blocked by annotation celeryproject.org/paused-scale-out").then_some(()).ok_or(reason)
    })
    .await;
    assert_eq!(worker_replicas(&env.admin, &ns, "shop-celery-worker").await, Ok(1));

    // Removed: the policies decide again.
    annotate(&env.admin, &ns, "shop", &[(PAUSED_SCALE_OUT_ANNOTATION, None)]).await;
    wait_replicas(&env.admin, &ns, "shop", 3, SCALE_WAIT).await;
    wait_scaling(&env.admin, &ns, POLICY_DECIDING, "queue-length: ").await;
    operator.stop().await;
}

/// A schedule window that starts a few seconds after the app is created (a cron expression with
/// seconds, in UTC) raises the minimum while it lasts, shows in the status, and when it ends
/// the policy's own count comes back.
async fn a_schedule_raises_the_minimum_while_it_is_active(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("schedule").await;
    let operator = env.start_operator(&[&ns], None);
    // A whole second, as cron names it: the window opens at its start, not up to a second before
    // a start with a fraction (which once made the check below fail).
    let start =
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 10).expect("time").to_zoned(jiff::tz::TimeZone::UTC);
    let cron = format!("{} {} {} * * *", start.second(), start.minute(), start.hour());
    let yaml = shop_yaml(
        &broker,
        6,
        &format!("    schedules: [{{name: burst, cron: '{cron}', durationSeconds: 15, minReplicas: 3}}]\n"),
    );
    create(&env.admin, &ns, &yaml).await.expect("created");
    wait_condition(&env.admin, &ns, "shop", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    assert_eq!(worker_replicas(&env.admin, &ns, "shop-celery-worker").await, Ok(1), "before the window: the spec's minimum");
    wait_replicas(&env.admin, &ns, "shop", 3, SCALE_WAIT).await;
    assert!(jiff::Timestamp::now() >= start.timestamp(), "raised before the window started");
    wait_autoscaler(&env.admin, &ns, "shop", "burst among the active schedules", |a| {
        (a.active_schedules == ["burst"]).then_some(())
    })
    .await;
    wait_replicas(&env.admin, &ns, "shop", 1, SCALE_WAIT).await;
    assert!(
        jiff::Timestamp::now() >= start.timestamp().checked_add(jiff::SignedDuration::from_secs(15)).expect("time"),
        "lowered before the window ended"
    );
    operator.stop().await;
}

/// A shadow `steps` beside the real `queue-length` on a real Redis: its answer shows in the
/// status and the metric and never reaches the Deployment; a shadow that cannot run (no such
/// policy, or one that traps on every call) leaves the real decisions and the app's conditions
/// untouched.
async fn a_shadow_policy_is_recorded_and_never_applied(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("shadow").await;
    let listen = free_port();
    let operator = env.start_operator_serving(&[&ns], None, Some(([127, 0, 0, 1], listen).into()));
    let yaml = shop_yaml(&broker, 8, "    shadow: {policy: steps, settings: {steps: '0:1,10:5'}}\n");
    create(&env.admin, &ns, &yaml).await.expect("created");
    let redis = redis::Client::open(broker.as_str()).expect("redis client");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let messages: Vec<String> = (0..25).map(|i| format!("{{\"m\": {i}}}")).collect();
    let _: () = redis::cmd("LPUSH").arg("celery").arg(&messages).query_async(&mut conn).await.expect("LPUSH");
    wait_replicas(&env.admin, &ns, "shop", 3, SCALE_WAIT).await;
    let shadow = eventually("the shadow's answer in the status", WAIT, || async {
        let c = Api::<Celery>::namespaced(env.admin.clone(), &ns).get("shop").await.map_err(|e| e.to_string())?;
        let shadow = c.status.and_then(|s| s.autoscaler).and_then(|a| a.shadow).ok_or("no shadow status")?;
        if shadow.replicas == Some(5) { Ok(shadow) } else { Err(format!("{shadow:?}")) }
    })
    .await;
    assert_eq!(shadow.policy, "steps");
    assert_eq!(shadow.agreement_percent, Some(0), "it never agreed with 3: {shadow:?}");
    let metrics = crate::support::http_get(listen, "/metrics").await.expect("/metrics");
    assert!(metrics.contains("celery_operator_shadow_desired_workers{app=\"shadow-"), "{metrics}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(worker_replicas(&env.admin, &ns, "shop-celery-worker").await, Ok(3), "the shadow's 5 was never applied");

    // A shadow that cannot run: the real policy decides on, nothing turns Degraded.
    let patch = serde_json::json!({"spec": {"autoscaling": {"shadow": {"policy": "no-such-policy", "settings": null}}}});
    merge_patch(&env.admin, &ns, "shop", patch).await;
    let _: () = redis::cmd("LPUSH").arg("celery").arg(&messages).query_async(&mut conn).await.expect("LPUSH");
    wait_replicas(&env.admin, &ns, "shop", 5, SCALE_WAIT).await;
    // The Deployment can reach 5 before the status write that follows the decision lands.
    let (c, shadow) = eventually("the failing shadow in the status", WAIT, || async {
        let c = celery(&env.admin, &ns, "shop").await;
        let shadow = c.status.clone().and_then(|s| s.autoscaler).and_then(|a| a.shadow).ok_or("no shadow status")?;
        if shadow.policy == "no-such-policy" { Ok((c, shadow)) } else { Err(format!("{shadow:?}")) }
    })
    .await;
    assert_eq!(shadow.replicas, None, "{shadow:?}");
    assert!(shadow.reason.contains("no-such-policy"), "{shadow:?}");
    assert_policies_decide(&c);

    // A shadow that traps on every call: the real policy scales on, nothing turns Degraded.
    let trapping = serde_json::json!({"spec": {"autoscaling": {"shadow": {"policy": crate::support::TRAP_POLICY}}}});
    merge_patch(&env.admin, &ns, "shop", trapping).await;
    let _: () = redis::cmd("LPUSH").arg("celery").arg(&messages).query_async(&mut conn).await.expect("LPUSH");
    wait_replicas(&env.admin, &ns, "shop", 8, SCALE_WAIT).await;
    let shadow = wait_autoscaler(&env.admin, &ns, "shop", "the trapping shadow in the status", |a| {
        a.shadow.clone().filter(|s| s.policy == crate::support::TRAP_POLICY && s.reason.contains("trapped"))
    })
    .await;
    assert_eq!(shadow.replicas, None, "{shadow:?}");
    assert_policies_decide(&celery(&env.admin, &ns, "shop").await);
    operator.stop().await;
}

/// On a Redis whose owner publishes keyspace events, a burst landing on an empty queue is acted
/// on at once: with an interval of an hour, nothing but the push can bring the next decision
/// within the wait. A second burst while the queue holds the first wakes nothing: the next tick
/// will see it (the broker test covers waking again after an empty read).
async fn a_message_on_an_empty_queue_is_acted_on_at_once_with_redis_keyspace_events(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&["--notify-keyspace-events", "Kl"]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("wakeup").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = shop_yaml_with(&broker, 8, QUEUE_LENGTH_10, "    intervalSeconds: 3600\n");
    create(&env.admin, &ns, &yaml).await.expect("created");
    // The first tick has read the queue, empty.
    wait_condition(&env.admin, &ns, "shop", SCALING_ACTIVE, "True", POLICY_DECIDING).await;
    let redis = redis::Client::open(broker.as_str()).expect("redis client");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    // The follower subscribes just after that read.
    eventually("the operator following the queue's pushes", WAIT, || async {
        let mut conn = conn.clone();
        let (_, n): (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("__keyspace@0__:celery")
            .query_async(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        (n > 0).then_some(()).ok_or_else(|| "no subscriber".to_string())
    })
    .await;
    let push = |n: usize| (0..n).map(|i| format!("{{\"m\": {i}}}")).collect::<Vec<_>>();
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(25)).query_async(&mut conn).await.expect("LPUSH");
    wait_replicas(&env.admin, &ns, "shop", 3, SCALE_WAIT).await;
    wait_autoscaler(&env.admin, &ns, "shop", "the woken decision in the status", |a| {
        let reason = &a.last_decision.as_ref()?.reason;
        reason.contains("25").then_some(())
    })
    .await;

    // Not empty at the last read: more messages wait for the tick, an hour away.
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(30)).query_async(&mut conn).await.expect("LPUSH");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(worker_replicas(&env.admin, &ns, "shop-celery-worker").await, Ok(3), "woken by a push to a busy queue");
    operator.stop().await;
}

/// Several real built-ins through the real host on a real Redis: `First` passes over a
/// declining `steps` to `queue-length`, and `steps` decides once past its first step; `Max`
/// and `Min` take the larger and the smaller answer; with one policy failing (no module of
/// that name) the other may scale up but never down. Each decision names the winner and what
/// each policy proposed.
async fn several_policies_combine_by_first_max_and_min(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("combine").await;
    let operator = env.start_operator(&[&ns], None);
    let policies = "    combine: First
    policies:
    - {policy: steps, settings: {steps: '100:6', declineBelowFirst: 'true'}}
    - {policy: queue-length, settings: {target: '10'}}
";
    create(&env.admin, &ns, &shop_yaml_with(&broker, 8, policies, QUICK_DAMPING)).await.expect("created");
    let redis = redis::Client::open(broker.as_str()).expect("redis client");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let push = |n: usize| (0..n).map(|i| format!("{{\"m\": {i}}}")).collect::<Vec<_>>();
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(30)).query_async(&mut conn).await.expect("LPUSH");
    let reason_has = |want: &'static str| {
        move |a: &AutoscalerStatus| a.last_decision.as_ref().filter(|d| d.reason.contains(want)).map(|d| d.reason.clone())
    };

    // 30 messages: below steps' first step, it declines; queue-length decides 3.
    wait_replicas(&env.admin, &ns, "shop", 3, SCALE_WAIT).await;
    wait_autoscaler(&env.admin, &ns, "shop", "First past a decline", reason_has("[First: steps declined, queue-length 3 (won)]"))
        .await;
    // 130: steps is past its first step and, first in the list, decides 6 (queue-length: 13).
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(100)).query_async(&mut conn).await.expect("LPUSH");
    wait_replicas(&env.admin, &ns, "shop", 6, SCALE_WAIT).await;
    wait_autoscaler(&env.admin, &ns, "shop", "First: steps", reason_has("[First: steps 6 (won), queue-length 13]")).await;

    let set = |patch: serde_json::Value| merge_patch(&env.admin, &ns, "shop", patch);
    set(serde_json::json!({"spec": {"autoscaling": {"combine": "Max"}}})).await;
    wait_replicas(&env.admin, &ns, "shop", 8, SCALE_WAIT).await;
    wait_autoscaler(&env.admin, &ns, "shop", "Max", reason_has("[Max: steps 6, queue-length 13 (won)]")).await;
    set(serde_json::json!({"spec": {"autoscaling": {"combine": "Min"}}})).await;
    wait_replicas(&env.admin, &ns, "shop", 6, SCALE_WAIT).await;
    wait_autoscaler(&env.admin, &ns, "shop", "Min", reason_has("[Min: steps 6 (won), queue-length 13]")).await;

    // One policy fails: the other scales up on what is known...
    let failing = serde_json::json!({"spec": {"autoscaling": {"combine": "Max", "policies": [
        {"policy": "queue-length", "settings": {"target": "10"}},
        {"policy": "no-such-policy"},
    ]}}});
    set(failing).await;
    wait_replicas(&env.admin, &ns, "shop", 8, SCALE_WAIT).await;
    let up = wait_autoscaler(&env.admin, &ns, "shop", "up on the known", reason_has("no-such-policy failed]")).await;
    assert!(up.contains("scaled up on the signals known"), "{up}");
    wait_scaling(&env.admin, &ns, POLICY_FAILED, "spec.autoscaling.policies[1]").await;
    // ... and never down: an empty queue asks queue-length for 1, and 8 stay.
    let _: () = redis::cmd("DEL").arg("celery").query_async(&mut conn).await.expect("DEL");
    let held = wait_autoscaler(&env.admin, &ns, "shop", "held", reason_has("holding 8 workers")).await;
    assert!(held.contains("no-such-policy"), "{held}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(worker_replicas(&env.admin, &ns, "shop-celery-worker").await, Ok(8), "a failing policy never lets the count fall");
    operator.stop().await;
}
