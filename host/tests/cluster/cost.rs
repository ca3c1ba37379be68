//! What a Celery app costs the API server once nothing changes: its reconciles follow its
//! spec and children, not the autoscaler's status writes, and a steady autoscaled app is
//! written at most once a minute. Counted from the API server's audit log of the operator's
//! writes (a count over a window, whatever the machine's speed).

use std::sync::Arc;
use std::time::Duration;

use crate::Harness;
use crate::lifecycle::{create, deployment};
use crate::servers::redis_server;
use crate::support::{WAIT, eventually};

/// Every test: name, whether it needs the control plane to itself, body.
pub const TESTS: &[crate::TestCase] =
    &[("a_steady_app_writes_almost_nothing", false, |h| Box::pin(a_steady_app_writes_almost_nothing(h)))];

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
    eventually("the app ready with its first decision", WAIT, || async {
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
    operator.stop().await;
}
