//! What a Celery app costs the API server once nothing changes: its reconciles follow its
//! spec and children, not the autoscaler's status writes, and a steady autoscaled app is
//! written at most once every two minutes and read not at all. Counted from the API server's
//! audit log of the operator's requests (a count over a window, whatever the machine's speed).

use std::sync::Arc;
use std::time::Duration;

use crate::Harness;
use crate::lifecycle::{create, deployment};
use crate::servers::{free_port, redis_server};
use crate::support::{OPERATOR_USER, WAIT, eventually, http_get};

/// Every test: name, whether it needs the control plane to itself, body.
pub const TESTS: &[crate::TestCase] = &[
    ("a_steady_app_writes_almost_nothing", false, |h| Box::pin(a_steady_app_writes_almost_nothing(h))),
    ("a_reconcile_that_changes_nothing_writes_no_child", false, |h| {
        Box::pin(a_reconcile_that_changes_nothing_writes_no_child(h))
    }),
];

/// An autoscaled app with a flat backlog, watched for 40 s once settled: no apply of its
/// children (the autoscaler's status writes reconciled it every few seconds before) and at
/// most one status write (the slow refresh).
async fn a_steady_app_writes_almost_nothing(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let ns = env.namespace("steady").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop}}
spec:
  common: {{appName: shop, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: 'redis://127.0.0.1:{port}/0'}}
  autoscaling: {{policy: queue-length, settings: {{target: '10'}}, minReplicas: 1, maxReplicas: 5}}
"
    );
    create(&env.admin, &ns, &yaml).await.expect("created");
    // NB: twice the usual wait: with the whole suite beside it on two cores, the pods' readiness
    // and the first decision have been seen to take most of a minute.
    eventually("the app ready with its first decision", WAIT * 2, || async {
        deployment(&env.admin, &ns, "shop-celery-worker").await?;
        let c = kube::Api::<celery_operator::crd::Celery>::namespaced(env.admin.clone(), &ns)
            .get("shop")
            .await
            .map_err(|e| e.to_string())?;
        let status = c.status.unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        let decided = status.autoscaler.and_then(|a| a.last_decision).is_some();
        (ready && decided).then_some(()).ok_or("settling".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let from = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(40)).await;
    let writes: Vec<_> =
        h.control_plane.audited_writes().into_iter().filter(|w| w.namespace == ns && w.received > from).collect();
    let children: Vec<_> = writes.iter().filter(|w| matches!(w.resource.as_str(), "deployments" | "services")).collect();
    let statuses = writes.iter().filter(|w| w.resource == "celery").count();
    assert!(children.is_empty(), "children were applied though nothing changed: {children:#?}");
    assert!(statuses <= 1, "{statuses} status writes in 40 s of a steady app: {writes:#?}");
    // Nor read: the app and its children come from the watches' caches.
    let reads: Vec<_> = h
        .control_plane
        .audited()
        .into_iter()
        .filter(|r| r.user == OPERATOR_USER && r.namespace == ns && r.received > from)
        .filter(|r| r.verb == "get" && matches!(r.resource.as_str(), "celery" | "deployments" | "services"))
        .collect();
    assert!(reads.is_empty(), "a steady app's objects were read: {reads:#?}");
    operator.stop().await;
}

/// `celery_operator_reconciliations_total{result="ok"}` of the operator serving on `port`.
async fn reconciles(port: u16) -> Result<f64, String> {
    let text = http_get(port, "/metrics").await?;
    text.lines()
        .find(|l| l.starts_with("celery_operator_reconciliations_total{result=\"ok\"}"))
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        .ok_or_else(|| "no reconcile counted yet".to_string())
}

/// A change of a child's status (here: a condition written by hand, as the Deployment
/// controller writes them while pods come and go) reconciles the app, and that reconcile
/// finds its children in the watches' cache as last applied: it reads and writes none of
/// them. Before, every such reconcile read the three children and applied them again.
async fn a_reconcile_that_changes_nothing_writes_no_child(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("unchanged").await;
    let port = free_port();
    let operator = env.start_operator_serving(&[&ns], None, Some(([127, 0, 0, 1], port).into()));
    let yaml = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: quiet}
spec:
  common: {appName: quiet, celeryApp: 'app:celery_app', image: example-image}
  workerSpec: {numOfWorkers: 2}
";
    create(&env.admin, &ns, yaml).await.expect("created");
    eventually("the app ready", WAIT, || async {
        let c = kube::Api::<celery_operator::crd::Celery>::namespaced(env.admin.clone(), &ns)
            .get("quiet")
            .await
            .map_err(|e| e.to_string())?;
        let status = c.status.unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(()).ok_or_else(|| format!("not ready: {:?}", status.conditions))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let from = jiff::Timestamp::now();
    let before = reconciles(port).await.expect("reconciles counted");
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(env.admin.clone(), &ns);
    for i in 0..3 {
        let status = serde_json::json!({"status": {"conditions": [{
            "type": "Touched", "status": "True", "reason": "ByTheTest", "message": format!("touch {i}"),
        }]}});
        deployments
            .patch_status("quiet-celery-worker", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&status))
            .await
            .expect("status patched");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eventually("the touches reconciled", WAIT, || async {
        let now = reconciles(port).await?;
        (now >= before + 1.0).then_some(()).ok_or(format!("{now} reconciles, {before} before"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes: Vec<_> =
        h.control_plane.audited_writes().into_iter().filter(|w| w.namespace == ns && w.received > from).collect();
    let children: Vec<_> = writes.iter().filter(|w| matches!(w.resource.as_str(), "deployments" | "services")).collect();
    assert!(children.is_empty(), "a reconcile that changed nothing wrote children: {children:#?}");
    operator.stop().await;
}
