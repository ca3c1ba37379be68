//! Faults production brings, staged on the real control plane: an API server outage longer
//! than the Lease, a leader frozen while a standby takes over, an operator killed in the middle
//! of a scale-down, relists across several watched namespaces, an app deleted and created again
//! under its name, autoscaling switched off while the operator was down, and resources that try
//! to get a Secret out of the operator. Each checks that nothing is lost or leaked.

use std::sync::Arc;
use std::time::Duration;

use celery_operator::conditions::*;
use celery_operator::crd::Celery;
use celery_operator::leader::LeaseConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

use crate::Harness;
use crate::lifecycle::{create, deployment, minimal_yaml};
use crate::servers::{free_port, redis_server};
use crate::support::{WAIT, eventually, http_get};

/// Every test: name, whether it needs the control plane to itself, body.
pub const TESTS: &[crate::TestCase] = &[
    ("an_api_outage_longer_than_the_lease_heals_without_help", true, |h| {
        Box::pin(an_api_outage_longer_than_the_lease_heals_without_help(h))
    }),
    ("a_frozen_leader_writes_nothing_after_its_term", false, |h| Box::pin(a_frozen_leader_writes_nothing_after_its_term(h))),
    ("a_restart_mid_scale_down_keeps_the_step_period", false, |h| Box::pin(a_restart_mid_scale_down_keeps_the_step_period(h))),
    ("relists_keep_every_watched_namespace_scaling", true, |h| Box::pin(relists_keep_every_watched_namespace_scaling(h))),
    ("an_app_created_again_under_its_name_gets_its_own_loop", false, |h| {
        Box::pin(an_app_created_again_under_its_name_gets_its_own_loop(h))
    }),
    ("autoscaling_switched_off_while_stopped_clears_its_status", false, |h| {
        Box::pin(autoscaling_switched_off_while_stopped_clears_its_status(h))
    }),
    ("no_secret_leaves_for_status_events_metrics_or_another_host", false, |h| {
        Box::pin(no_secret_leaves_for_status_events_metrics_or_another_host(h))
    }),
];

/// An autoscaled app on `broker`'s `celery` queue: `queue-length` with target 10 per worker.
fn autoscaled_yaml(name: &str, broker: &str, max: u32, scale_down: &str) -> String {
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
    settings: {{target: '10'}}
    minReplicas: 1
    maxReplicas: {max}
    scaleDown: {scale_down}
"
    )
}

/// Sets the backlog of `queue` on the Redis at `port` to exactly `n` messages.
async fn set_backlog(port: u16, queue: &str, n: usize) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("redis client");
    let mut c = client.get_multiplexed_async_connection().await.expect("redis connection");
    let _: () = redis::cmd("DEL").arg(queue).query_async(&mut c).await.expect("DEL");
    if n > 0 {
        let _: () = redis::cmd("RPUSH").arg(queue).arg(vec!["{}"; n]).query_async(&mut c).await.expect("RPUSH");
    }
}

async fn replicas(client: &Client, ns: &str, app: &str) -> Result<i32, String> {
    let d = deployment(client, ns, &format!("{app}-celery-worker")).await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

async fn wait_replicas(client: &Client, ns: &str, app: &str, want: i32) {
    eventually(&format!("{ns}/{app} at {want} workers"), Duration::from_secs(90), || async {
        let got = replicas(client, ns, app).await?;
        (got == want).then_some(()).ok_or(format!("{got} workers"))
    })
    .await;
}

/// One replica, a 5 s Lease, the API server gone for 20 s: the operator loses its term, waits
/// for the API server, wins the Lease again and reconciles a new app with no human action,
/// while `/healthz` stays truthful.
async fn an_api_outage_longer_than_the_lease_heals_without_help(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("outage").await;
    let port = free_port();
    let lease = LeaseConfig::new("celery-operator", format!("test-{ns}"), "only-replica", Duration::from_secs(5));
    let operator = env.start_operator_serving(&[&ns], Some(lease), Some(([127, 0, 0, 1], port).into()));
    create(&env.admin, &ns, &minimal_yaml("before", "before")).await.expect("created");
    eventually("the first app's worker", WAIT, || deployment(&env.admin, &ns, "before-celery-worker")).await;

    h.control_plane.stop_apiserver().expect("API server stopped");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let metrics = http_get(port, "/metrics").await.expect("/metrics answers during the outage");
    assert!(metrics.contains("celery_operator_leader 0"), "a replica without a term says so: {metrics}");
    h.control_plane.start_apiserver().expect("API server back");

    let created = eventually("the API server to accept writes", WAIT, || async {
        create(&env.admin, &ns, &minimal_yaml("after", "after")).await.map_err(|e| e.to_string())
    })
    .await;
    assert!(created.metadata.uid.is_some());
    eventually("the new app's worker, made by the operator on its own", Duration::from_secs(90), || {
        deployment(&env.admin, &ns, "after-celery-worker")
    })
    .await;
    let health = http_get(port, "/healthz").await.expect("/healthz answers");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(!operator.finished(), "the operator campaigns again rather than stopping");
    let metrics = eventually("the leader gauge back at 1", WAIT, || async {
        let m = http_get(port, "/metrics").await?;
        m.contains("celery_operator_leader 1").then_some(m).ok_or("not leading".to_string())
    })
    .await;
    assert!(
        metrics.contains(&format!("celery_operator_watch_errors_total{{namespace=\"{ns}\"}}")),
        "the failed watches were counted: {metrics}"
    );
    operator.stop().await;
}

/// A replica of the real binary.
struct Replica {
    child: tokio::process::Child,
    identity: String,
}

impl Replica {
    fn start(h: &Harness, ns: &str, identity: &str, lease_seconds: u64) -> Self {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_celery-operator"))
            .args(["run", "--namespace", ns, "--lease-name", &format!("test-{ns}"), "--lease-namespace", "celery-operator"])
            .args(["--lease-seconds", &lease_seconds.to_string(), "--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--kubeconfig")
            .arg(h.control_plane.operator_kubeconfig())
            .arg("--policy-dir")
            .arg(crate::support::repo_root().join("target/policies"))
            .env("POD_NAME", identity)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        Self { child, identity: identity.into() }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

async fn lease_holder(client: &Client, ns: &str) -> Result<Option<String>, String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "celery-operator");
    let lease = leases.get_opt(&format!("test-{ns}")).await.map_err(|e| e.to_string())?;
    Ok(lease.and_then(|l| l.spec?.holder_identity))
}

/// Two replicas of the binary, a 6 s Lease (a 4 s term). The leader is frozen with SIGSTOP,
/// the standby takes over and scales the app, then the old leader is thawed: the API server's
/// audit log shows no write by it after its term ended.
async fn a_frozen_leader_writes_nothing_after_its_term(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let ns = env.namespace("frozen").await;
    let a = Replica::start(&h, &ns, &format!("{ns}-replica-a"), 6);
    eventually("replica a to lead", WAIT, || async {
        (lease_holder(&env.admin, &ns).await? == Some(a.identity.clone())).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    let b = Replica::start(&h, &ns, &format!("{ns}-replica-b"), 6);
    let broker = format!("redis://127.0.0.1:{port}/0");
    create(&env.admin, &ns, &autoscaled_yaml("shop", &broker, 6, "{stabilizationWindowSeconds: 0}")).await.expect("created");
    set_backlog(port, "celery", 20).await;
    wait_replicas(&env.admin, &ns, "shop", 2).await;
    // Freeze the leader between writes, not in the middle of one: a request it had started
    // before the freeze would reach the API server only after the thaw, and no client can
    // call that back. With nothing changing, a leader writes nothing but its Lease renewals
    // for a minute.
    eventually("replica a idle for 3 s", WAIT, || async {
        let last = h
            .control_plane
            .audited_writes()
            .into_iter()
            .filter(|w| w.user_agent.contains(&a.identity) && w.resource != "leases")
            .map(|w| w.received)
            .max();
        let quiet = last.is_some_and(|at| jiff::Timestamp::now().as_millisecond() - at.as_millisecond() > 3000);
        quiet.then_some(()).ok_or(format!("last write at {last:?}"))
    })
    .await;

    a.signal("STOP");
    let frozen = jiff::Timestamp::now();
    eventually("replica b to take over", WAIT, || async {
        (lease_holder(&env.admin, &ns).await? == Some(b.identity.clone())).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    // Work for both: b scales up, and a, once thawed, would too if it still thought it led.
    set_backlog(port, "celery", 50).await;
    wait_replicas(&env.admin, &ns, "shop", 5).await;
    a.signal("CONT");
    // Time for the thawed replica to act on what it missed, were it allowed to.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let term_end = frozen + jiff::SignedDuration::from_secs(4);
    let writes = h.control_plane.audited_writes();
    let late: Vec<_> = writes.iter().filter(|w| w.user_agent.contains(&a.identity) && w.received > term_end).collect();
    assert!(late.is_empty(), "the old leader wrote after its term ended at {term_end}: {late:#?}");
    assert!(
        writes.iter().any(|w| w.user_agent.contains(&b.identity) && w.resource == "deployments" && w.received > term_end),
        "the audit log shows the new leader's scaling (so the check above can see a replica's writes)"
    );
    assert_eq!(lease_holder(&env.admin, &ns).await.unwrap(), Some(b.identity.clone()), "b keeps the Lease");
    drop((a, b));
}

/// A scale-down step, then the operator killed and started again at once: the next step waits
/// for `periodSeconds` after the recorded one, as it would have without the restart.
async fn a_restart_mid_scale_down_keeps_the_step_period(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("restart-down").await;
    let operator = env.start_operator(&[&ns], None);
    let scale_down = "{stabilizationWindowSeconds: 0, maxStepPercent: 50, periodSeconds: 40}";
    create(&env.admin, &ns, &autoscaled_yaml("shop", &broker, 8, scale_down)).await.expect("created");
    set_backlog(port, "celery", 80).await;
    wait_replicas(&env.admin, &ns, "shop", 8).await;
    set_backlog(port, "celery", 0).await;
    wait_replicas(&env.admin, &ns, "shop", 4).await;
    let stepped = std::time::Instant::now();

    operator.kill();
    let operator = env.start_operator(&[&ns], None);
    // The new operator samples every second; 20 s is well inside the 40 s period.
    while stepped.elapsed() < Duration::from_secs(20) {
        let now = replicas(&env.admin, &ns, "shop").await.expect("the worker Deployment");
        assert_eq!(now, 4, "a restarted operator stepped down again {:?} after the last step", stepped.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And the scale-down does go on once the period is over.
    wait_replicas(&env.admin, &ns, "shop", 2).await;
    operator.stop().await;
}

/// One operator watching three namespaces, an app in each; the API server restarts, so every
/// watch relists: each app scales on its own backlog afterwards.
async fn relists_keep_every_watched_namespace_scaling(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let mut namespaces = Vec::new();
    for i in 0..3 {
        namespaces.push(env.namespace(&format!("relist{i}")).await);
    }
    let refs: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let operator = env.start_operator(&refs, None);
    for (i, ns) in namespaces.iter().enumerate() {
        let broker = format!("redis://127.0.0.1:{port}/{i}");
        create(&env.admin, ns, &autoscaled_yaml("shop", &broker, 5, "{stabilizationWindowSeconds: 0}")).await.expect("created");
        eventually("the worker", WAIT, || deployment(&env.admin, ns, "shop-celery-worker")).await;
    }
    h.control_plane.restart_apiserver().expect("API server restarted");
    for i in 0..namespaces.len() {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/{i}")).expect("redis");
        let mut c = client.get_multiplexed_async_connection().await.expect("connection");
        let _: () = redis::cmd("RPUSH").arg("celery").arg(vec!["{}"; 10 * (i + 2)]).query_async(&mut c).await.expect("RPUSH");
    }
    for (i, ns) in namespaces.iter().enumerate() {
        wait_replicas(&env.admin, ns, "shop", i as i32 + 2).await;
    }
    operator.stop().await;
}

/// An autoscaled app deleted and created again at once under the same name, with other bounds:
/// the new object is scaled by its own spec, not by the loop of the one before.
async fn an_app_created_again_under_its_name_gets_its_own_loop(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("recreate").await;
    let operator = env.start_operator(&[&ns], None);
    let api: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
    create(&env.admin, &ns, &autoscaled_yaml("shop", &broker, 5, "{stabilizationWindowSeconds: 0}")).await.expect("created");
    set_backlog(port, "celery", 20).await;
    wait_replicas(&env.admin, &ns, "shop", 2).await;

    api.delete("shop", &DeleteParams::default()).await.expect("deleted");
    eventually("the old object gone", WAIT, || async {
        api.get_opt("shop").await.map_err(|e| e.to_string())?.map_or(Ok(()), |_| Err("still there".into()))
    })
    .await;
    let again = create(&env.admin, &ns, &autoscaled_yaml("shop", &broker, 3, "{stabilizationWindowSeconds: 0}"))
        .await
        .expect("created again");
    set_backlog(port, "celery", 100).await;
    wait_replicas(&env.admin, &ns, "shop", 3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replicas(&env.admin, &ns, "shop").await.unwrap(), 3, "the new object's maxReplicas holds");
    let status = api.get("shop").await.expect("the app").status.expect("a status");
    let decision = status.autoscaler.and_then(|a| a.last_decision).expect("the new object's loop decided");
    assert!(decision.reason.contains("maxReplicas 3"), "{decision:?}");
    assert_eq!(api.get("shop").await.unwrap().metadata.uid, again.metadata.uid);
    operator.stop().await;
}

/// Autoscaling removed from the spec while no operator ran: the next operator clears what the
/// autoscaler had written in the status.
async fn autoscaling_switched_off_while_stopped_clears_its_status(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("switched-off").await;
    let api: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &autoscaled_yaml("shop", &broker, 5, "{stabilizationWindowSeconds: 0}")).await.expect("created");
    eventually("the autoscaler's status", WAIT, || async {
        let c = api.get("shop").await.map_err(|e| e.to_string())?;
        c.status.and_then(|s| s.autoscaler).map(|_| ()).ok_or("no autoscaler status yet".to_string())
    })
    .await;
    operator.stop().await;

    let patch = serde_json::json!({"spec": {"autoscaling": null, "workerSpec": {"numOfWorkers": 2}}});
    api.patch("shop", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("autoscaling removed");
    let operator = env.start_operator(&[&ns], None);
    eventually("the autoscaler's status cleared", WAIT, || async {
        let status = api.get("shop").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        let scaling = status.conditions.iter().any(|c| c.type_ == SCALING_ACTIVE);
        (status.autoscaler.is_none() && status.queue_backlog.is_none() && !scaling).then_some(()).ok_or(format!("{status:?}"))
    })
    .await;
    wait_replicas(&env.admin, &ns, "shop", 2).await;
    operator.stop().await;
}

/// A plain password and a URL with credentials in Secrets, a `flowerUrl` pointing at a
/// listener of this test with the app's Flower credentials, and a management API on another
/// host: no Secret value reaches the status, the events, the operator's metrics or logs, or the
/// foreign listener.
async fn no_secret_leaves_for_status_events_metrics_or_another_host(h: Arc<Harness>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = &h.env;
    let ns = env.namespace("secrets").await;
    let nonce = format!("{:x}", jiff::Timestamp::now().as_nanosecond());
    let password = format!("hunter2-{nonce}");
    let url_password = format!("pw-{nonce}");
    let flower_password = format!("flower-{nonce}");
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), &ns);
    let secret = |name: &str, key: &str, value: &str| -> Secret {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "stringData": {key: value}})).unwrap()
    };
    for s in [
        secret("plain", "url", &password),
        secret("with-credentials", "url", &format!("amqp://celery:{url_password}@127.0.0.1:1//")),
        secret("flower-auth", "auth", &format!("admin:{flower_password}")),
    ] {
        secrets.create(&PostParams::default(), &s).await.expect("secret");
    }

    // A foreign "Flower" that records what it is sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let foreign = listener.local_addr().unwrap().port();
    let received = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = received.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let mut buffer = vec![0u8; 8192];
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            let _ = stream.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        }
    });

    let metrics_port = free_port();
    let operator = env.start_operator_serving(&[&ns], None, Some(([127, 0, 0, 1], metrics_port).into()));
    let app = |name: &str, broker_secret: &str, extra: &str| {
        format!(
            "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {name}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{secretRef: {{name: {broker_secret}, key: url}}{extra}}}
  flowerSpec: {{basicAuth: {{name: flower-auth, key: auth}}}}
  autoscaling: {{policy: load, maxReplicas: 3, flowerUrl: 'http://127.0.0.1:{foreign}'}}
"
        )
    };
    create(&env.admin, &ns, &app("plain", "plain", "")).await.expect("created");
    create(&env.admin, &ns, &app("elsewhere", "with-credentials", ", managementUrl: 'http://127.0.0.2:1'"))
        .await
        .expect("created");
    let api: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
    for name in ["plain", "elsewhere"] {
        eventually(&format!("{name}: autoscaling reports its broker problem"), WAIT, || async {
            let c = api.get(name).await.map_err(|e| e.to_string())?;
            let scaling = c.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == SCALING_ACTIVE).cloned());
            scaling.filter(|c| c.status == "False").map(|_| ()).ok_or(format!("{:?}", c.status))
        })
        .await;
    }
    eventually("the foreign Flower to be asked", WAIT, || async {
        (!received.lock().unwrap().is_empty()).then_some(()).ok_or("no request yet".to_string())
    })
    .await;
    // A few more cycles of retries and events.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let statuses: Vec<String> = futures::future::join_all(["plain", "elsewhere"].map(|n| api.get(n)))
        .await
        .into_iter()
        .map(|c| serde_json::to_string(&c.expect("the app").status).unwrap())
        .collect();
    let plain = statuses[0].clone();
    assert!(plain.contains("does not hold a URL") && plain.contains("plain"), "the cause is named: {plain}");
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(env.admin.clone(), &ns)
        .list(&Default::default())
        .await
        .expect("events");
    let events: Vec<String> = events.items.iter().map(|e| e.note.clone().unwrap_or_default()).collect();
    let metrics = http_get(metrics_port, "/metrics").await.expect("metrics");
    let logs = crate::captured_logs();
    let foreign_saw = received.lock().unwrap().clone();
    let basic = |user: &str, pass: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    };
    for secret in [password.clone(), url_password.clone(), flower_password.clone(), basic("admin", &flower_password)] {
        for (place, text) in [
            ("a status", statuses.join("\n")),
            ("an event", events.join("\n")),
            ("/metrics", metrics.clone()),
            ("the operator's log", logs.clone()),
            ("the foreign listener", foreign_saw.clone()),
        ] {
            assert!(!text.contains(&secret), "{place} holds a Secret value ({secret}):\n{text}");
        }
    }
    assert!(!foreign_saw.to_ascii_lowercase().contains("authorization:"), "credentials went to a foreign host:\n{foreign_saw}");
    server.abort();
    operator.stop().await;
}
