//! The life of a Celery app on a real API server: create, update, heal, delete, bad input,
//! an API server restart, and two operator replicas.

use std::sync::Arc;
use std::time::Duration;

use celery_operator::conditions::*;
use celery_operator::crd::Celery;
use celery_operator::leader::LeaseConfig;
use celery_operator::spec::names::SCALER_MANAGER;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use crate::Harness;
use crate::servers::free_port;
use crate::support::{WAIT, apply_yaml_with, eventually, http_get, repo_root};

/// Every test: name, whether it needs the control plane to itself, body.
pub const TESTS: &[crate::TestCase] = &[
    ("seed_resource_creates_children_and_becomes_ready", false, |h| {
        Box::pin(seed_resource_creates_children_and_becomes_ready(h))
    }),
    ("update_rolls_out_and_leaves_scaled_replicas_alone", false, |h| {
        Box::pin(update_rolls_out_and_leaves_scaled_replicas_alone(h))
    }),
    ("deleted_or_edited_children_are_restored", false, |h| Box::pin(deleted_or_edited_children_are_restored(h))),
    ("deleting_the_celery_removes_its_children", false, |h| Box::pin(deleting_the_celery_removes_its_children(h))),
    ("schema_rejects_what_it_can", false, |h| Box::pin(schema_rejects_what_it_can(h))),
    ("invalid_spec_is_reported_in_status_and_events", false, |h| Box::pin(invalid_spec_is_reported_in_status_and_events(h))),
    ("a_policy_that_cannot_be_used_is_reported", false, |h| Box::pin(a_policy_that_cannot_be_used_is_reported(h))),
    ("name_conflict_is_reported", false, |h| Box::pin(name_conflict_is_reported(h))),
    ("python_operator_children_are_adopted_in_place", false, |h| Box::pin(python_operator_children_are_adopted_in_place(h))),
    ("flower_can_be_switched_off", false, |h| Box::pin(flower_can_be_switched_off(h))),
    ("only_the_lease_holder_reconciles", false, |h| Box::pin(only_the_lease_holder_reconciles(h))),
    ("the_leader_keeps_its_lease_while_its_other_requests_are_stuck", false, |h| {
        Box::pin(the_leader_keeps_its_lease_while_its_other_requests_are_stuck(h))
    }),
    ("the_leader_keeps_its_lease_while_its_runtime_is_saturated", true, |h| {
        Box::pin(the_leader_keeps_its_lease_while_its_runtime_is_saturated(h))
    }),
    ("lease_requests_have_the_leader_election_priority", false, |h| {
        Box::pin(lease_requests_have_the_leader_election_priority(h))
    }),
    ("the_binary_serves_health_metrics_and_json_logs", false, |h| Box::pin(the_binary_serves_health_metrics_and_json_logs(h))),
    ("deploy_manifests_are_accepted_by_the_api_server", false, |h| Box::pin(deploy_manifests_are_accepted_by_the_api_server(h))),
    ("operator_survives_an_api_server_restart", true, |h| Box::pin(operator_survives_an_api_server_restart(h))),
    ("a_crd_installed_with_the_operator_is_waited_for_without_an_error", false, |h| {
        Box::pin(a_crd_installed_with_the_operator_is_waited_for_without_an_error(h))
    }),
];

/// A resource written for the Python operator, verbatim.
fn seed_yaml(name: &str) -> String {
    format!(
        r#"
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata:
  name: {name}
spec:
  common:
    appName: {name}
    celeryApp: app:celery_app
    image: example-image
  workerSpec:
    numOfWorkers: 2
    queues: celery
    logLevel: info
    concurrency: 2
    maxTasksPerChild: 100
    resources:
      requests: {{cpu: "100m", memory: "64Mi"}}
      limits: {{cpu: "200m", memory: "128Mi"}}
  flowerSpec:
    replicas: 1
    resources:
      requests: {{cpu: "100m", memory: "64Mi"}}
      limits: {{cpu: "200m", memory: "128Mi"}}
  scaleTargetRef:
  - kind: worker
    minReplicas: 2
    maxReplicas: 5
    metrics:
    - name: message_queue
      target: {{type: length, averageValue: 50}}
"#
    )
}

pub(crate) fn minimal_yaml(name: &str, app: &str) -> String {
    format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {app}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: 'redis://redis:6379/0'}}
"
    )
}

pub(crate) async fn create(client: &Client, ns: &str, yaml: &str) -> Result<Celery, kube::Error> {
    let celery: Celery = serde_yaml::from_str(yaml).expect("test YAML is a Celery");
    Api::<Celery>::namespaced(client.clone(), ns).create(&PostParams::default(), &celery).await
}

pub(crate) async fn deployment(client: &Client, ns: &str, name: &str) -> Result<Deployment, String> {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("Deployment {name} does not exist"))
}

pub(crate) fn condition(c: &Celery, type_: &str) -> Option<(String, String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.clone(), x.reason.clone(), x.message.clone()))
}

/// Waits for a condition of the Celery object to have `status` and `reason`; returns it.
pub(crate) async fn wait_condition(client: &Client, ns: &str, name: &str, type_: &str, status: &str, reason: &str) -> Celery {
    let api: Api<Celery> = Api::namespaced(client.clone(), ns);
    eventually(&format!("{type_}={status} ({reason}) on Celery {ns}/{name}"), WAIT, || async {
        let c = api.get(name).await.map_err(|e| e.to_string())?;
        match condition(&c, type_) {
            Some((s, r, _)) if s == status && r == reason => Ok(c),
            other => Err(format!("{type_} is {other:?}, status {:?}", c.status)),
        }
    })
    .await
}

fn worker_container(d: &Deployment) -> &k8s_openapi::api::core::v1::Container {
    &d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
}

async fn seed_resource_creates_children_and_becomes_ready(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("seed").await;
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &seed_yaml("celery-crd-example")).await.expect("seed resource accepted verbatim");

    let worker =
        eventually("the worker Deployment", WAIT, || deployment(&env.admin, &ns, "celery-crd-example-celery-worker")).await;
    let container = worker_container(&worker);
    assert_eq!(container.command.as_deref(), Some(&["celery".to_string()][..]));
    assert_eq!(
        container.args.as_deref().unwrap()[..5],
        ["--app=app:celery_app", "worker", "--queues=celery", "--loglevel=info", "--concurrency=2"]
    );
    assert_eq!(worker.spec.as_ref().unwrap().replicas, Some(2), "numOfWorkers within [min, max]");
    let owner = &worker.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.controller), ("Celery", "celery-crd-example", Some(true)));

    // Applied right after the worker's: wait rather than race it.
    let flower = eventually("the Flower Deployment", WAIT, || deployment(&env.admin, &ns, "celery-crd-example-flower")).await;
    assert_eq!(worker_container(&flower).ports.as_ref().unwrap()[0].container_port, 5555);
    let services = Api::<Service>::namespaced(env.admin.clone(), &ns);
    let svc = eventually("the Flower Service", WAIT, || async {
        services.get("celery-crd-example-flower").await.map_err(|e| e.to_string())
    })
    .await;
    let spec = svc.spec.unwrap();
    assert_eq!(spec.type_.as_deref(), Some("NodePort"));
    assert_eq!(spec.ports.unwrap()[0].port, 5555);
    assert_eq!(spec.selector.unwrap()["run"], "celery-crd-example-flower");

    // kwok runs the pods on its simulated node and marks them ready.
    let c = wait_condition(&env.admin, &ns, "celery-crd-example", READY, "True", ALL_REPLICAS_READY).await;
    let status = c.status.unwrap();
    assert_eq!(status.workers.as_ref().map(|w| (w.desired, w.ready)), Some((2, 2)));
    assert_eq!(status.flower.as_ref().map(|f| f.ready), Some(1));
    assert_eq!(status.policy.as_deref(), Some("queue-length"));
    assert_eq!(status.flower_service.as_deref(), Some("celery-crd-example-flower"));
    assert_eq!(status.observed_generation, c.metadata.generation);
    assert_eq!(condition_reason(&status, PROGRESSING), ROLLOUT_COMPLETE);

    let events = eventually("a Ready event", WAIT, || events_of(&env.admin, &ns, "celery-crd-example", ALL_REPLICAS_READY)).await;
    assert_eq!(events.len(), 1, "one event per transition, not per reconcile: {events:?}");
    operator.stop().await;
}

fn condition_reason(status: &celery_operator::crd::CeleryStatus, type_: &str) -> String {
    status.conditions.iter().find(|c| c.type_ == type_).map(|c| c.reason.clone()).unwrap_or_default()
}

pub(crate) async fn events_of(client: &Client, ns: &str, name: &str, reason: &str) -> Result<Vec<String>, String> {
    let events = Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await.map_err(|e| e.to_string())?;
    let found: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| format!("{:?} {:?}", e.type_, e.note))
        .collect();
    if found.is_empty() { Err(format!("no {reason} event among {} events", events.items.len())) } else { Ok(found) }
}

async fn update_rolls_out_and_leaves_scaled_replicas_alone(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("update").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop}
spec:
  common: {appName: shop, celeryApp: shop.celery, image: shop:1, env: [{name: A, value: one}]}
  workerSpec: {numOfWorkers: 2, concurrency: 2}
  autoscaling: {policy: queue-length, minReplicas: 1, maxReplicas: 6, settings: {target: '10'}}
";
    create(&env.admin, &ns, yaml).await.expect("created");
    let name = "shop-celery-worker";
    // Two workers, and the field in the autoscaler's hands (the reconciler hands it over just
    // after creating the Deployment): a scale before that would be raced.
    eventually("2 replicas to start with, owned by the autoscaler", WAIT, || async {
        let d = deployment(&env.admin, &ns, name).await?;
        let scaler_owns = d.metadata.managed_fields.iter().flatten().any(|m| {
            m.manager.as_deref() == Some(SCALER_MANAGER)
                && m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
        });
        (d.spec.unwrap().replicas == Some(2) && scaler_owns).then_some(()).ok_or("not yet".to_string())
    })
    .await;

    // The autoscaler decides 4 workers.
    let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &ns);
    let scale = |n: i32| serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name}, "spec": {"replicas": n}});
    deployments
        .patch(name, &PatchParams::apply(SCALER_MANAGER).force(), &Patch::Apply(scale(4)))
        .await
        .expect("scale as the autoscaler");

    // A user changes the image, the concurrency and an env value.
    let celery: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
    let patch = serde_json::json!({"spec": {"common": {"image": "shop:2", "env": [{"name": "A", "value": "two"}]}, "workerSpec": {"concurrency": 3}}});
    celery.patch("shop", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("spec updated");
    let d = eventually("the new template", WAIT, || async {
        let d = deployment(&env.admin, &ns, name).await?;
        let c = worker_container(&d);
        let ok = c.image.as_deref() == Some("shop:2")
            && c.args.as_ref().unwrap().contains(&"--concurrency=3".to_string())
            && c.env.as_ref().unwrap().iter().any(|e| e.name == "A" && e.value.as_deref() == Some("two"));
        if ok { Ok(d) } else { Err(format!("container is {c:?}")) }
    })
    .await;
    assert_eq!(d.spec.unwrap().replicas, Some(4), "the reconciler does not fight the autoscaler");
    wait_condition(&env.admin, &ns, "shop", READY, "True", ALL_REPLICAS_READY).await;

    // Lowering the bound below the current count clamps it (the autoscaling loop does, at once,
    // also while it cannot read the queues: this app names no broker).
    celery
        .patch("shop", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"autoscaling": {"maxReplicas": 3}}})))
        .await
        .expect("bound lowered");
    eventually("replicas clamped to 3", WAIT, || async {
        let d = deployment(&env.admin, &ns, name).await?;
        let r = d.spec.unwrap().replicas;
        (r == Some(3)).then_some(()).ok_or(format!("replicas {r:?}"))
    })
    .await;

    // Switching autoscaling off hands replicas back to numOfWorkers.
    celery
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"autoscaling": {"enabled": false}, "workerSpec": {"numOfWorkers": 5}}})),
        )
        .await
        .expect("autoscaling off");
    eventually("replicas = numOfWorkers", WAIT, || async {
        let d = deployment(&env.admin, &ns, name).await?;
        let r = d.spec.unwrap().replicas;
        (r == Some(5)).then_some(()).ok_or(format!("replicas {r:?}"))
    })
    .await;
    let c = wait_condition(&env.admin, &ns, "shop", READY, "True", ALL_REPLICAS_READY).await;
    assert_eq!(c.status.unwrap().policy.as_deref(), Some("none"));
    operator.stop().await;
}

async fn deleted_or_edited_children_are_restored(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("heal").await;
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &minimal_yaml("heal", "heal")).await.expect("created");
    let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &ns);
    let services: Api<Service> = Api::namespaced(env.admin.clone(), &ns);
    let first = eventually("the worker", WAIT, || deployment(&env.admin, &ns, "heal-celery-worker")).await;

    deployments.delete("heal-celery-worker", &DeleteParams::foreground()).await.expect("deleted by hand");
    eventually("a new worker Deployment", WAIT, || async {
        let d = deployment(&env.admin, &ns, "heal-celery-worker").await?;
        (d.uid() != first.uid() && d.metadata.deletion_timestamp.is_none()).then_some(()).ok_or("still the old one".to_string())
    })
    .await;

    services.delete("heal-flower", &DeleteParams::default()).await.expect("service deleted by hand");
    eventually("the Flower Service back", WAIT, || async {
        services.get_opt("heal-flower").await.map_err(|e| e.to_string())?.map(|_| ()).ok_or("absent".to_string())
    })
    .await;

    // Someone edits the image with kubectl.
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "worker", "image": "hacked:1"}]}}}});
    deployments.patch("heal-celery-worker", &PatchParams::default(), &Patch::Strategic(&edit)).await.expect("edited by hand");
    eventually("the image restored", WAIT, || async {
        let d = deployment(&env.admin, &ns, "heal-celery-worker").await?;
        let image = worker_container(&d).image.clone();
        (image.as_deref() == Some("example-image")).then_some(()).ok_or(format!("image {image:?}"))
    })
    .await;
    operator.stop().await;
}

async fn deleting_the_celery_removes_its_children(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("delete").await;
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &minimal_yaml("gone", "gone")).await.expect("created");
    eventually("the worker", WAIT, || deployment(&env.admin, &ns, "gone-celery-worker")).await;
    eventually("the flower", WAIT, || deployment(&env.admin, &ns, "gone-flower")).await;

    Api::<Celery>::namespaced(env.admin.clone(), &ns).delete("gone", &DeleteParams::default()).await.expect("deleted");
    let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &ns);
    let services: Api<Service> = Api::namespaced(env.admin.clone(), &ns);
    eventually("no children left", WAIT, || async {
        let d = deployments.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let s = services.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let left: Vec<String> = d.items.iter().map(|x| x.name_any()).chain(s.items.iter().map(|x| x.name_any())).collect();
        left.is_empty().then_some(()).ok_or(format!("left: {left:?}"))
    })
    .await;
    operator.stop().await;
}

async fn schema_rejects_what_it_can(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("schema").await;
    let cases = [
        (
            "min above max",
            seed_yaml("bounds").replace("minReplicas: 2", "minReplicas: 9"),
            "minReplicas must not exceed maxReplicas",
        ),
        ("app name not a DNS label", minimal_yaml("upper", "Bad_Name"), "spec.common.appName"),
        (
            "queue metric without a value",
            seed_yaml("novalue").replace("{type: length, averageValue: 50}", "{type: length}"),
            "message_queue needs target.averageValue",
        ),
        (
            "broker both inline and from a secret",
            minimal_yaml("twice", "twice")
                .replace("{url: 'redis://redis:6379/0'}", "{url: 'redis://r', secretRef: {name: s, key: k}}"),
            "give exactly one of url and secretRef",
        ),
    ];
    for (what, yaml, expected) in cases {
        let err = create(&env.admin, &ns, &yaml).await.expect_err(what);
        let kube::Error::Api(status) = &err else { panic!("{what}: unexpected error {err}") };
        assert_eq!(status.code, 422, "{what}: {status:?}");
        assert!(status.message.contains(expected), "{what}: {}", status.message);
    }
}

async fn invalid_spec_is_reported_in_status_and_events(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("invalid").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = minimal_yaml("bad", "bad") + "  workerSpec: {resources: {requests: {cpu: lots}}}\n";
    create(&env.admin, &ns, &yaml).await.expect("the schema cannot judge quantities, so it accepts");

    let c = wait_condition(&env.admin, &ns, "bad", DEGRADED, "True", INVALID_SPEC).await;
    let (_, _, message) = condition(&c, DEGRADED).unwrap();
    assert!(message.contains("spec.workerSpec.resources.requests.cpu"), "{message}");
    assert!(message.contains("lots"), "{message}");
    assert_eq!(condition(&c, READY).map(|r| r.0), Some("False".into()));
    let events = eventually("a Warning event", WAIT, || events_of(&env.admin, &ns, "bad", INVALID_SPEC)).await;
    assert!(events[0].contains("Warning"), "{events:?}");
    assert!(deployment(&env.admin, &ns, "bad-celery-worker").await.is_err(), "nothing is built from an invalid spec");

    // Fixing the field heals the app.
    let fix = serde_json::json!({"spec": {"workerSpec": {"resources": {"requests": {"cpu": "250m"}}}}});
    Api::<Celery>::namespaced(env.admin.clone(), &ns)
        .patch("bad", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("fixed");
    wait_condition(&env.admin, &ns, "bad", READY, "True", ALL_REPLICAS_READY).await;
    let c = wait_condition(&env.admin, &ns, "bad", DEGRADED, "False", AS_EXPECTED).await;
    assert_eq!(c.status.unwrap().observed_generation, c.metadata.generation);
    operator.stop().await;
}

async fn name_conflict_is_reported(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("conflict").await;
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &minimal_yaml("first", "shared")).await.expect("first");
    eventually("the first app's worker", WAIT, || deployment(&env.admin, &ns, "shared-celery-worker")).await;
    create(&env.admin, &ns, &minimal_yaml("second", "shared")).await.expect("second");

    let c = wait_condition(&env.admin, &ns, "second", DEGRADED, "True", NAME_CONFLICT).await;
    let (_, _, message) = condition(&c, DEGRADED).unwrap();
    assert!(message.contains("shared-celery-worker") && message.contains("appName"), "{message}");
    let worker = deployment(&env.admin, &ns, "shared-celery-worker").await.unwrap();
    assert_eq!(worker.owner_references()[0].name, "first", "the first app keeps its worker");
    wait_condition(&env.admin, &ns, "first", READY, "True", ALL_REPLICAS_READY).await;

    // Deleting the app that holds the names heals the second without an edit of it.
    Api::<Celery>::namespaced(env.admin.clone(), &ns).delete("first", &DeleteParams::foreground()).await.expect("deleted");
    eventually("the second app to take the names over", Duration::from_secs(120), || async {
        let worker = deployment(&env.admin, &ns, "shared-celery-worker").await?;
        let owner = worker.owner_references().first().map(|o| o.name.clone());
        (owner.as_deref() == Some("second")).then_some(()).ok_or(format!("owned by {owner:?}"))
    })
    .await;
    wait_condition(&env.admin, &ns, "second", DEGRADED, "False", AS_EXPECTED).await;
    operator.stop().await;
}

/// The worker and Flower Deployments and the Service exactly as the Python (Kopf) operator
/// writes them (`templates/` of celery/Celery-Kubernetes-Operator): container names
/// `<appName>-celery-worker` and `<appName>-flower`.
fn python_operator_children(app: &str, owner: Option<(&str, &str)>) -> String {
    let owner = owner.map_or(String::new(), |(name, uid)| {
        format!(
            "  ownerReferences: [{{apiVersion: celeryproject.org/v1alpha1, kind: Celery, name: {name}, uid: {uid}, \
             controller: true, blockOwnerDeletion: true}}]\n"
        )
    });
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}-celery-worker
  labels: {{app: {app}, celery: "true"}}
{owner}spec:
  minReadySeconds: 10
  replicas: 2
  selector: {{matchLabels: {{app: {app}}}}}
  strategy: {{type: RollingUpdate, rollingUpdate: {{maxSurge: 20%, maxUnavailable: 0%}}}}
  template:
    metadata: {{labels: {{app: {app}}}}}
    spec:
      containers:
      - name: {app}-celery-worker
        image: example-image
        imagePullPolicy: Never
        command: ["celery"]
        args: ["--app=app:celery_app", "worker", "--queues=celery", "--loglevel=info", "--concurrency=2"]
        resources: {{limits: {{cpu: 200m, memory: 128Mi}}, requests: {{cpu: 100m, memory: 64Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}-flower
  labels: {{app: {app}-flower}}
{owner}spec:
  minReadySeconds: 10
  replicas: 1
  selector: {{matchLabels: {{run: {app}-flower}}}}
  template:
    metadata: {{labels: {{run: {app}-flower}}}}
    spec:
      containers:
      - name: {app}-flower
        image: example-image
        ports: [{{containerPort: 5555}}]
        args: ["--app=app:celery_app"]
        command: ["flower"]
        imagePullPolicy: Never
      restartPolicy: Always
      terminationGracePeriodSeconds: 30
---
apiVersion: v1
kind: Service
metadata:
  name: {app}-flower
  labels: {{app: {app}-flower}}
{owner}spec:
  type: NodePort
  ports: [{{port: 5555, protocol: TCP}}]
  selector: {{run: {app}-flower}}
"#
    )
}

/// Children the Python operator made, with and without its owner reference, are adopted in
/// place: afterwards each pod template holds exactly the containers this operator describes
/// (one worker, not the old one beside it), and no Deployment is left paused.
async fn python_operator_children_are_adopted_in_place(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("adopt").await;

    // Without an owner reference: made before the resource.
    crate::support::apply_yaml(&env.admin, &python_operator_children("loose", None), Some(&ns)).await.expect("old children");
    // With one: the resource first (no operator running yet), then its children.
    let owned = create(&env.admin, &ns, &seed_yaml("owned")).await.expect("created");
    let uid = owned.metadata.uid.clone().expect("uid");
    crate::support::apply_yaml(&env.admin, &python_operator_children("owned", Some(("owned", &uid))), Some(&ns))
        .await
        .expect("old children");
    create(&env.admin, &ns, &seed_yaml("loose")).await.expect("created");

    let operator = env.start_operator(&[&ns], None);
    for app in ["loose", "owned"] {
        for (child, container) in [("celery-worker", "worker"), ("flower", "flower")] {
            let name = format!("{app}-{child}");
            eventually(&format!("{name} to hold exactly our container"), WAIT, || async {
                let d = deployment(&env.admin, &ns, &name).await?;
                let spec = d.spec.as_ref().ok_or("no spec")?;
                let names: Vec<&str> = spec
                    .template
                    .spec
                    .as_ref()
                    .map(|p| p.containers.iter().map(|c| c.name.as_str()).collect())
                    .unwrap_or_default();
                let paused = spec.paused.unwrap_or(false);
                let owner = d.owner_references().first().map(|o| o.name.as_str()) == Some(app);
                (names == [container] && !paused && owner)
                    .then_some(())
                    .ok_or(format!("containers {names:?}, paused {paused}, owner {owner}"))
            })
            .await;
        }
        wait_condition(&env.admin, &ns, app, READY, "True", ALL_REPLICAS_READY).await;
        let worker = deployment(&env.admin, &ns, &format!("{app}-celery-worker")).await.unwrap();
        let args = worker_container(&worker).args.clone().unwrap_or_default();
        assert!(args.iter().any(|a| a == "--concurrency=2"), "the seed spec's worker runs: {args:?}");
    }
    operator.stop().await;
}

async fn flower_can_be_switched_off(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("flower").await;
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &minimal_yaml("mon", "mon")).await.expect("created");
    eventually("flower", WAIT, || deployment(&env.admin, &ns, "mon-flower")).await;

    Api::<Celery>::namespaced(env.admin.clone(), &ns)
        .patch("mon", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"flowerSpec": {"enabled": false}}})))
        .await
        .expect("flower off");
    let services: Api<Service> = Api::namespaced(env.admin.clone(), &ns);
    eventually("flower removed", WAIT, || async {
        let d = deployment(&env.admin, &ns, "mon-flower").await.is_ok();
        let s = services.get_opt("mon-flower").await.map_err(|e| e.to_string())?.is_some();
        (!d && !s).then_some(()).ok_or(format!("deployment left: {d}, service left: {s}"))
    })
    .await;
    let c = wait_condition(&env.admin, &ns, "mon", READY, "True", ALL_REPLICAS_READY).await;
    let status = c.status.unwrap();
    assert_eq!((status.flower, status.flower_service), (None, None));
    assert!(deployment(&env.admin, &ns, "mon-celery-worker").await.is_ok(), "workers stay");
    operator.stop().await;
}

async fn only_the_lease_holder_reconciles(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("leader").await;
    let lease = |identity: &str| LeaseConfig::new("celery-operator", format!("test-{ns}"), identity, Duration::from_secs(4));
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "celery-operator");
    let holder = || async {
        let l = leases.get_opt(&format!("test-{ns}")).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(l.and_then(|l| l.spec?.holder_identity))
    };

    let a = env.start_operator(&[&ns], Some(lease("replica-a")));
    eventually("replica-a to lead", WAIT, || async {
        (holder().await? == Some("replica-a".into())).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    let b = env.start_operator(&[&ns], Some(lease("replica-b")));
    create(&env.admin, &ns, &minimal_yaml("ha", "ha")).await.expect("created");
    eventually("the worker", WAIT, || deployment(&env.admin, &ns, "ha-celery-worker")).await;
    // Several renewals later, b is still waiting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(holder().await.unwrap().as_deref(), Some("replica-a"), "the standby must not take over a live leader");

    // The leader stops and releases the Lease; the standby takes over and reconciles.
    a.stop().await;
    eventually("replica-b to lead", WAIT, || async {
        (holder().await? == Some("replica-b".into())).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    Api::<Deployment>::namespaced(env.admin.clone(), &ns)
        .delete("ha-celery-worker", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually("the worker restored by replica-b", WAIT, || async {
        let d = deployment(&env.admin, &ns, "ha-celery-worker").await?;
        d.metadata.deletion_timestamp.is_none().then_some(()).ok_or("being deleted".to_string())
    })
    .await;
    b.stop().await;
}

async fn operator_survives_an_api_server_restart(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("restart").await;
    let operator = env.start_operator(&[&ns], None);
    create(&env.admin, &ns, &minimal_yaml("before", "before")).await.expect("created");
    wait_condition(&env.admin, &ns, "before", READY, "True", ALL_REPLICAS_READY).await;

    h.control_plane.restart_apiserver().expect("API server restarted");

    // The operator reconnects: a new app is built and a deleted child restored.
    let after = eventually("the API server to accept writes", WAIT, || async {
        create(&env.admin, &ns, &minimal_yaml("after", "after")).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(after.name_any(), "after");
    wait_condition(&env.admin, &ns, "after", READY, "True", ALL_REPLICAS_READY).await;
    Api::<Deployment>::namespaced(env.admin.clone(), &ns)
        .delete("before-celery-worker", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually("the worker of the first app restored", WAIT, || async {
        let d = deployment(&env.admin, &ns, "before-celery-worker").await?;
        d.metadata.deletion_timestamp.is_none().then_some(()).ok_or("being deleted".to_string())
    })
    .await;
    operator.stop().await;
}

/// `celery-operator run`, the real binary, as the operator's ServiceAccount.
async fn the_binary_serves_health_metrics_and_json_logs(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("binary").await;
    let port = free_port();
    let lease = format!("test-{ns}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_celery-operator"))
        .args(["run", "--log-format", "json", "--namespace", &ns, "--lease-name", &lease, "--lease-namespace", "celery-operator"])
        .arg("--kubeconfig")
        .arg(h.control_plane.operator_kubeconfig())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");

    eventually("/healthz and /readyz", WAIT, || async {
        let health = http_get(port, "/healthz").await?;
        let ready = http_get(port, "/readyz").await?;
        (health.starts_with("HTTP/1.1 200") && ready.starts_with("HTTP/1.1 200"))
            .then_some(())
            .ok_or(format!("healthz: {health:.40}, readyz: {ready:.40}"))
    })
    .await;
    create(&env.admin, &ns, &minimal_yaml("bin", "bin")).await.expect("created");
    wait_condition(&env.admin, &ns, "bin", READY, "True", ALL_REPLICAS_READY).await;
    let metrics = http_get(port, "/metrics").await.expect("/metrics answers");
    assert!(metrics.contains("celery_operator_reconciliations_total{result=\"ok\"}"), "{metrics}");
    assert!(metrics.contains("celery_operator_leader 1"), "{metrics}");
    assert!(metrics.contains("celery_operator_reconcile_duration_seconds_bucket"), "{metrics}");

    // SIGTERM: a clean exit that hands the Lease back.
    let pid = child.id().expect("running") as i32;
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits after SIGTERM").expect("wait");
    assert!(status.success(), "exit status {status}");
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).await.unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty());
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "celery-operator");
    let holder = leases.get(&lease).await.expect("lease").spec.and_then(|s| s.holder_identity);
    assert_eq!(holder, None, "the Lease is released on shutdown");
}

/// deploy/flowschema.yaml puts the operator's Lease requests, and only those, in the API
/// server's `leader-election` priority level: the API server names the level of every request
/// it served in a response header, checked here for the operator's own user.
/// `client`, except that every request waits while `held` is true before it is sent: an
/// operator whose own requests queue up (10,000 loops starting at once queued thousands of
/// status writes in one client, and the renewals waited behind them for 10 s).
fn holdable(client: Client, held: tokio::sync::watch::Receiver<bool>) -> Client {
    use http::{Request, Response};
    use kube::client::Body;
    let namespace = client.default_namespace().to_owned();
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let (client, mut held) = (client.clone(), held.clone());
            tokio::spawn(async move {
                let _ = held.wait_for(|held| !*held).await;
                match client.send(request).await {
                    Ok(response) => reply.send_response(response),
                    Err(e) => reply.send_error(e),
                }
            });
        }
    });
    Client::new(service, namespace)
}

/// The Lease is renewed apart from everything else the operator sends: with its other requests
/// held for three Lease durations, the leader keeps the Lease and a standby never takes it.
/// (Renewed through the same client, the renewals wait with the rest, the Lease expires on the
/// server and the standby takes over.)
async fn the_leader_keeps_its_lease_while_its_other_requests_are_stuck(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("starved").await;
    let name = format!("test-{ns}");
    let lease = |identity: &str| LeaseConfig::new("celery-operator", name.clone(), identity, Duration::from_secs(4));
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "celery-operator");
    let spec = || async {
        let l = leases.get_opt(&name).await.map_err(|e| e.to_string())?;
        l.and_then(|l| l.spec).ok_or_else(|| "no Lease yet".to_string())
    };

    let (hold, held) = tokio::sync::watch::channel(false);
    let a = env.start_operator_with(
        &[&ns],
        Some(lease("replica-a")),
        None,
        holdable(env.operator.clone(), held),
        Some({
            let client = env.operator.clone();
            Arc::new(move || client.clone())
        }),
    );
    eventually("replica-a to lead", WAIT, || async {
        let s = spec().await?;
        (s.holder_identity.as_deref() == Some("replica-a")).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    let b = env.start_operator(&[&ns], Some(lease("replica-b")));
    // The leader reconciles with the client that is about to be held.
    create(&env.admin, &ns, &minimal_yaml("starved", "starved")).await.expect("created");
    eventually("the worker", WAIT, || deployment(&env.admin, &ns, "starved-celery-worker")).await;
    let before = spec().await.unwrap();

    hold.send_replace(true);
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = spec().await.unwrap();
        assert_eq!(now.holder_identity.as_deref(), Some("replica-a"), "the standby took over a leader whose renewals were held");
    }
    let after = spec().await.unwrap();
    assert_eq!(after.lease_transitions, before.lease_transitions, "the Lease changed hands meanwhile");
    assert!(after.renew_time > before.renew_time, "renewed while the rest was held: {before:?} → {after:?}");

    hold.send_replace(false);
    a.stop().await;
    b.stop().await;
}

/// The Lease is renewed on a thread and a runtime of its own: with every worker thread of the
/// operator's runtime busy for three Lease durations (as 10,000 loops keep them), the renewals
/// go on. (Renewed by a task of that runtime, they stop until a worker is free, and the Lease
/// lapses.) Exclusive: it blocks the runtime every test shares.
async fn the_leader_keeps_its_lease_while_its_runtime_is_saturated(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("saturated").await;
    let name = format!("test-{ns}");
    let lease = LeaseConfig::new("celery-operator", name.clone(), "replica-a", Duration::from_secs(4));
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "celery-operator");
    // As the binary does: the Lease's client built on the campaign's thread.
    let config = celery_operator::operator::config_as(Some(&h.control_plane.operator_kubeconfig()), None).await.unwrap();
    let a = env.start_operator_with(
        &[&ns],
        Some(lease),
        None,
        env.operator.clone(),
        Some(Arc::new(move || celery_operator::operator::client_from(config.clone()).expect("a client"))),
    );
    eventually("replica-a to lead", WAIT, || async {
        let holder = leases.get_opt(&name).await.map_err(|e| e.to_string())?.and_then(|l| l.spec?.holder_identity);
        (holder.as_deref() == Some("replica-a")).then_some(()).ok_or("not yet".to_string())
    })
    .await;

    // The Lease is watched from a thread and a runtime of its own meanwhile: this test's
    // runtime is about to stop.
    let kubeconfig = h.control_plane.admin_kubeconfig();
    let lease_name = name.clone();
    let watcher = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async move {
            let admin = celery_operator::operator::client(Some(&kubeconfig)).await.expect("admin client");
            let leases: Api<Lease> = Api::namespaced(admin, "celery-operator");
            let mut renewals = std::collections::BTreeSet::new();
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let spec = leases.get(&lease_name).await.expect("the Lease").spec.expect("a spec");
                assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
                renewals.insert(format!("{:?}", spec.renew_time));
            }
            renewals
        })
    });
    // Every worker of the runtime blocked for 12 s: three Lease durations.
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    let blockers: Vec<_> =
        (0..workers * 2).map(|_| tokio::spawn(async { std::thread::sleep(Duration::from_secs(12)) })).collect();
    let renewals = tokio::task::spawn_blocking(move || watcher.join()).await.unwrap().expect("the Lease watcher");
    for blocker in blockers {
        blocker.await.unwrap();
    }
    assert!(renewals.len() >= 3, "the Lease was renewed {} times in 12 s with the runtime busy: {renewals:?}", renewals.len());
    a.stop().await;
}

async fn lease_requests_have_the_leader_election_priority(h: Arc<Harness>) {
    use k8s_openapi::api::flowcontrol::v1::PriorityLevelConfiguration;
    let env = &h.env;
    let level = |name: &'static str| async move {
        Api::<PriorityLevelConfiguration>::all(env.admin.clone())
            .get(name)
            .await
            .expect("priority level")
            .metadata
            .uid
            .expect("uid")
    };
    let served_at = |path: String| async move {
        let request = http::Request::get(path).body(Vec::new()).expect("request");
        let response = env.operator.send(request.map(Into::into)).await.expect("the API server answers");
        let uid = response.headers().get("X-Kubernetes-PF-PriorityLevel-UID").expect("APF names the level");
        uid.to_str().expect("ASCII").to_string()
    };
    let (election, elsewhere) = (level("leader-election").await, level("workload-low").await);
    let lease = served_at("/apis/coordination.k8s.io/v1/namespaces/celery-operator/leases/celery-operator".into()).await;
    assert_eq!(lease, election, "the operator's Lease requests are in the leader-election level");
    let apps = served_at("/apis/celeryproject.org/v1alpha1/celery?limit=1".into()).await;
    assert_eq!(apps, elsewhere, "its other requests stay with other service accounts' (workload-low)");
}

/// What `kubectl apply -k deploy/` installs, and every example, Redis and RabbitMQ manifest, pass the real
/// API server's validation and admission (a server-side dry run, so nothing is created).
async fn deploy_manifests_are_accepted_by_the_api_server(h: Arc<Harness>) {
    let env = &h.env;
    let rendered = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join("deploy"))
        .output()
        .expect("kubectl runs (the README's quick start uses it)");
    assert!(rendered.status.success(), "kubectl kustomize deploy/: {}", String::from_utf8_lossy(&rendered.stderr));
    let rendered = String::from_utf8(rendered.stdout).unwrap();
    for kind in
        ["CustomResourceDefinition", "ClusterRole", "ServiceAccount", "Deployment", "Namespace", "RoleBinding", "FlowSchema"]
    {
        assert!(rendered.contains(&format!("kind: {kind}")), "kustomization lacks a {kind}");
    }
    apply_yaml_with(&env.admin, &rendered, None, true).await.expect("deploy/ kustomization");

    let ns = env.namespace("manifests").await;
    let mut files: Vec<std::path::PathBuf> =
        ["deploy/redis.yaml", "deploy/rabbitmq.yaml", "deploy/example-celery.yaml", "deploy/networkpolicy.yaml"]
            .iter()
            .map(|f| repo_root().join(f))
            .collect();
    let examples = std::fs::read_dir(repo_root().join("example")).expect("example/").filter_map(Result::ok).map(|e| e.path());
    files.extend(examples.filter(|p| p.extension().is_some_and(|x| x == "yaml")));
    assert!(files.len() >= 9, "the example resources are found: {files:?}");
    for file in files {
        let yaml = std::fs::read_to_string(&file).unwrap();
        apply_yaml_with(&env.admin, &yaml, Some(&ns), true).await.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
}

/// An unknown policy or settings a policy rejects are reported, naming the field; the rest of
/// the spec is still rolled out, and a fix clears the condition.
async fn a_policy_that_cannot_be_used_is_reported(h: Arc<Harness>) {
    let env = &h.env;
    let ns = env.namespace("policy").await;
    let operator = env.start_operator(&[&ns], None);
    let yaml = |name: &str, autoscaling: &str| minimal_yaml(name, name) + &format!("  autoscaling: {autoscaling}\n");

    create(&env.admin, &ns, &yaml("typo", "{policy: queue-length, maxReplicas: 5, settings: {trget: '10'}}"))
        .await
        .expect("created");
    let c = wait_condition(&env.admin, &ns, "typo", DEGRADED, "True", INVALID_SETTINGS).await;
    let (_, _, message) = condition(&c, DEGRADED).unwrap();
    assert!(message.contains("spec.autoscaling") && message.contains("setting target"), "{message}");
    eventually("the workers despite the bad setting", WAIT, || deployment(&env.admin, &ns, "typo-celery-worker")).await;
    events_of(&env.admin, &ns, "typo", INVALID_SETTINGS).await.expect("a Warning event");

    create(&env.admin, &ns, &yaml("nosuch", "{policy: no-such-policy, maxReplicas: 5}")).await.expect("created");
    let c = wait_condition(&env.admin, &ns, "nosuch", DEGRADED, "True", INVALID_POLICY).await;
    let (_, _, message) = condition(&c, DEGRADED).unwrap();
    assert!(message.contains("no-such-policy") && message.contains("queue-length"), "lists the known ones: {message}");

    let fix = serde_json::json!({"spec": {"autoscaling": {"settings": {"trget": null, "target": "10"}}}});
    Api::<Celery>::namespaced(env.admin.clone(), &ns)
        .patch("typo", &PatchParams::default(), &Patch::Merge(&fix))
        .await
        .expect("fixed");
    wait_condition(&env.admin, &ns, "typo", DEGRADED, "False", AS_EXPECTED).await;
    operator.stop().await;
}

/// A resource of its own for [`a_crd_installed_with_the_operator_is_waited_for_without_an_error`]:
/// deleting and creating the `Celery` CRD would disturb every other test.
#[derive(kube::CustomResource, Clone, Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[kube(group = "wait.celeryproject.org", version = "v1", kind = "Gadget", namespaced)]
struct GadgetSpec {}

/// `kubectl apply -k deploy` creates the CRD and the operator together, and the API server
/// serves a new CRD a moment after it is created: the operator's wait for it warns once and
/// starts as soon as it is served, with no error in its log; a CRD still missing after the
/// grace is an error at every try. (The real-node tier once caught the operator logging an
/// error on that ordinary install.)
async fn a_crd_installed_with_the_operator_is_waited_for_without_an_error(h: Arc<Harness>) {
    use celery_operator::controller::wait_for_crd;
    use celery_operator::scope::Scope;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::CustomResourceExt;

    let env = &h.env;
    let scope = Scope { namespaces: vec![env.namespace("crd-wait").await] };
    let logged = |level: &str| {
        let logs = crate::captured_logs();
        logs.lines().filter(|l| l.contains("gadgets.wait.celeryproject.org") && l.contains(level)).count()
    };
    let wait = |grace: Duration| {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (client, scope) = (env.admin.clone(), scope.clone());
        let waiting = tokio::spawn(async move { wait_for_crd::<Gadget>(&client, &scope, grace, &mut stopped).await });
        (stop, waiting)
    };

    // Past its grace (none here): an error at every try, until shut down.
    let (stop, waiting) = wait(Duration::ZERO);
    eventually("errors for the missing CRD", WAIT, || async {
        let errors = logged(" ERROR ");
        (errors >= 2).then_some(()).ok_or(format!("{errors} errors"))
    })
    .await;
    stop.send(true).expect("the wait listens");
    tokio::time::timeout(WAIT, waiting).await.expect("a shut-down wait returns").expect("joined");
    assert_eq!(logged(" WARN "), 0, "no warning past the grace");

    // Within its grace (longer than this test): one warning, then it returns once served.
    let errors = logged(" ERROR ");
    let (_stop, waiting) = wait(Duration::from_secs(3600));
    eventually("a warning for the missing CRD", WAIT, || async {
        (logged(" WARN ") == 1).then_some(()).ok_or("no warning yet".to_string())
    })
    .await;
    assert!(!waiting.is_finished(), "still waiting while the CRD is missing");
    let crds: Api<CustomResourceDefinition> = Api::all(env.admin.clone());
    crds.create(&PostParams::default(), &Gadget::crd()).await.expect("CRD created");
    tokio::time::timeout(WAIT, waiting).await.expect("returns once the CRD is served").expect("joined");
    assert_eq!(logged(" ERROR "), errors, "no error within the grace:\n{}", crate::captured_logs());
    assert_eq!(logged(" WARN "), 1, "one warning, not one a try");
    assert_eq!(logged("the API server serves gadgets"), 1, "says when it is served");
    crds.delete(&Gadget::crd().name_any(), &DeleteParams::default()).await.expect("CRD deleted");
}
