//! Tier 2: the exact API calls of the apply step, against a mocked API server (`tower-test`).
//!
//! What matters here is order, which a real API server hides: when a scaling policy takes the
//! worker `replicas` over, the scaler's field manager must own the field *before* the
//! reconciler's apply drops it, or the API server resets it to 1 for a moment.

use celery_operator::crd::Celery;
use celery_operator::reconcile::apply;
use celery_operator::spec::names::{FIELD_MANAGER, SCALER_MANAGER};
use celery_operator::spec::validate;
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn celery(autoscaling: &str) -> Celery {
    let mut c: Celery = serde_yaml::from_str(&format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop, namespace: prod, uid: 1234}}
spec:
  common: {{appName: shop, celeryApp: app, image: shop:1}}
  workerSpec: {{numOfWorkers: 2}}
  {autoscaling}
"
    ))
    .unwrap();
    c.metadata.uid = Some("1234".into());
    c
}

/// The worker Deployment as the API server would hold it.
fn existing_worker(replicas: i32, scaler_owns_replicas: bool) -> Value {
    let mut managed = vec![json!({"manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:spec": {"f:template": {}}}})];
    if scaler_owns_replicas {
        managed.push(json!({"manager": SCALER_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}}}));
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop-celery-worker", "namespace": "prod", "managedFields": managed,
            "ownerReferences": [{"apiVersion": "celeryproject.org/v1alpha1", "kind": "Celery", "name": "shop", "uid": "1234", "controller": true}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "shop"}}, "template": {}}
    })
}

fn not_found() -> Response<Body> {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"});
    Response::builder().status(StatusCode::NOT_FOUND).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap()
}

fn ok(body: &Value) -> Response<Body> {
    Response::builder().body(Body::from(serde_json::to_vec(body).unwrap())).unwrap()
}

/// One call as the mock saw it: method, path with query, and JSON body.
struct Call {
    method: Method,
    uri: String,
    body: Value,
}

/// Answers every request with `answer` until the client is done; returns the calls in order.
async fn serve(mut handle: Handle, answer: impl Fn(&Call) -> Response<Body>) -> Vec<Call> {
    let mut calls = Vec::new();
    while let Some((request, respond)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let call = Call {
            method: parts.method,
            uri: parts.uri.to_string(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        };
        respond.send_response(answer(&call));
        calls.push(call);
    }
    calls
}

/// Echoes an applied object back, or serves `worker` for a GET of the worker; 404 otherwise.
fn api_server(worker: Option<Value>) -> impl Fn(&Call) -> Response<Body> {
    move |call| match (&call.method, &worker) {
        (&Method::GET, Some(w)) if call.uri.contains("/deployments/shop-celery-worker") => ok(w),
        (&Method::GET, _) => not_found(),
        (&Method::PATCH, Some(w)) if call.body.get("kind").is_some() && call.body["metadata"].get("labels").is_none() => {
            let mut w = w.clone();
            w["spec"]["replicas"] = call.body["spec"]["replicas"].clone();
            ok(&w)
        }
        _ => ok(&call.body),
    }
}

async fn run(celery: Celery, worker: Option<Value>) -> Vec<Call> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let server = tokio::spawn(serve(handle, api_server(worker)));
    let scaling = validate::validate(&celery.spec).unwrap();
    apply::children(&client, &apply::Cached::default(), &celery, &scaling, &[]).await.expect("apply succeeds");
    drop(client);
    server.await.unwrap()
}

fn summary(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            let path = c.uri.split('?').next().unwrap_or_default().rsplit('/').take(2).collect::<Vec<_>>();
            let manager = c.uri.split("fieldManager=").nth(1).map(|m| m.split('&').next().unwrap_or(m));
            format!("{} {}/{} {}", c.method, path[1], path[0], manager.unwrap_or("-"))
        })
        .collect()
}

/// The calls on the worker Deployment, in the order the API server received them. NB: the
/// three children are read, then written, concurrently: only each child's own calls have an
/// order to check.
fn worker_calls(calls: &[Call]) -> Vec<&Call> {
    calls.iter().filter(|c| c.uri.split('?').next().unwrap_or_default().ends_with("/deployments/shop-celery-worker")).collect()
}

/// Every child is read before any is written.
fn reads_come_first(calls: &[Call]) {
    let first_write = calls.iter().position(|c| c.method != Method::GET).unwrap_or(calls.len());
    assert!(calls[first_write..].iter().all(|c| c.method != Method::GET), "{:?}", summary(calls));
}

#[tokio::test]
async fn the_scaler_takes_replicas_before_the_reconciler_lets_go() {
    let c = celery("autoscaling: {policy: queue-length, minReplicas: 1, maxReplicas: 6}");
    let calls = run(c, Some(existing_worker(9, false))).await;
    let mut all = summary(&calls);
    all.sort();
    assert_eq!(
        all,
        [
            "GET deployments/shop-celery-worker -",
            "GET deployments/shop-flower -",
            "GET services/shop-flower -",
            "PATCH deployments/shop-celery-worker celery-operator",
            "PATCH deployments/shop-celery-worker celery-operator-autoscaler",
            "PATCH deployments/shop-flower celery-operator",
            "PATCH services/shop-flower celery-operator",
        ]
    );
    reads_come_first(&calls);
    let worker = worker_calls(&calls);
    assert_eq!(worker.len(), 3, "a read, the scale, the apply");
    assert!(worker[1].uri.contains("fieldManager=celery-operator-autoscaler"), "the scaler writes first");
    // NB: not lowered to the maximum here: that is the autoscaling loop's, which chooses who goes.
    assert_eq!(worker[1].body["spec"], json!({"replicas": 9}), "the count handed to the scaler as it is");
    assert!(worker[1].uri.contains("force=true"));
    assert!(worker[2].body["spec"].get("replicas").is_none(), "the reconciler leaves replicas to the scaler");
    assert_eq!(worker[2].body["spec"]["template"]["spec"]["containers"][0]["image"], "shop:1");
}

#[tokio::test]
async fn a_scaled_count_within_bounds_is_left_alone() {
    let c = celery("autoscaling: {policy: queue-length, minReplicas: 1, maxReplicas: 6}");
    let calls = run(c, Some(existing_worker(4, true))).await;
    let managers: Vec<_> = summary(&calls).into_iter().filter(|s| s.contains("autoscaler")).collect();
    assert!(managers.is_empty(), "no scale write: {managers:?}");
}

#[tokio::test]
async fn a_new_app_starts_at_num_of_workers_within_bounds() {
    let c = celery("autoscaling: {policy: queue-length, minReplicas: 3, maxReplicas: 6}");
    let calls = run(c, None).await;
    reads_come_first(&calls);
    let worker = worker_calls(&calls);
    let s: Vec<String> = summary(&calls).into_iter().filter(|c| c.contains("shop-celery-worker")).collect();
    assert_eq!(
        s,
        [
            "GET deployments/shop-celery-worker -",
            "PATCH deployments/shop-celery-worker celery-operator",
            "PATCH deployments/shop-celery-worker celery-operator-autoscaler",
        ]
    );
    assert_eq!(worker[1].body["spec"]["replicas"], 3, "numOfWorkers 2 raised to minReplicas 3");
    assert_eq!(worker[2].body["spec"]["replicas"], 3, "the scaler co-owns the count from the start");
}

#[tokio::test]
async fn a_fixed_count_is_applied_by_the_reconciler_alone() {
    let calls = run(celery(""), None).await;
    let s = summary(&calls);
    assert!(!s.iter().any(|c| c.contains("autoscaler")), "{s:?}");
    let worker = worker_calls(&calls);
    assert_eq!(worker.len(), 2, "a read and the apply: {s:?}");
    assert_eq!(worker[1].body["spec"]["replicas"], 2);
}

#[tokio::test]
async fn a_new_app_writes_its_three_children_at_once() {
    // Two round trips to all three children (reads, then writes): Flower's do not wait for the
    // worker's apply and scale, which take two more.
    let c = celery("autoscaling: {policy: queue-length, minReplicas: 1, maxReplicas: 6}");
    let calls = run(c, None).await;
    let s = summary(&calls);
    let at = |call: &str| s.iter().position(|c| c == call).unwrap_or_else(|| panic!("no {call} in {s:?}"));
    let scale = at("PATCH deployments/shop-celery-worker celery-operator-autoscaler");
    assert!(at("PATCH deployments/shop-flower celery-operator") < scale, "{s:?}");
    assert!(at("PATCH services/shop-flower celery-operator") < scale, "{s:?}");
}

/// An applied body as the API server would then hold it, written by `managers`.
fn stored<K: serde::de::DeserializeOwned>(body: &Value, managers: &[&str]) -> K {
    let mut object = body.clone();
    object["metadata"]["managedFields"] = managers
        .iter()
        .map(
            |m| json!({"manager": m, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}}),
        )
        .collect();
    serde_json::from_value(object).unwrap()
}

fn store<K>(objects: Vec<K>) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let (reader, mut writer) = kube::runtime::reflector::store();
    for object in objects {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(object));
    }
    reader
}

#[tokio::test]
async fn the_reconcile_a_new_app_triggers_finds_its_children_as_applied() {
    // A new app's creation wakes its reconciler again (its children appear in the watches): that
    // reconcile must find the children just written as applied, or it reads and writes all three
    // again.
    let c = celery("autoscaling: {policy: queue-length, minReplicas: 1, maxReplicas: 6}");
    let calls = run(c.clone(), None).await;
    let body = |path: &str| {
        let manager = |call: &Call| call.uri.split("fieldManager=").nth(1).and_then(|m| m.split('&').next()).map(str::to_owned);
        let call = calls.iter().find(|call| {
            call.method == Method::PATCH
                && call.uri.split('?').next().unwrap_or_default().ends_with(path)
                && manager(call).as_deref() == Some(FIELD_MANAGER)
        });
        call.unwrap_or_else(|| panic!("no apply of {path}: {:?}", summary(&calls))).body.clone()
    };
    let worker = stored(&body("/deployments/shop-celery-worker"), &[FIELD_MANAGER, SCALER_MANAGER]);
    let flower = stored(&body("/deployments/shop-flower"), &[FIELD_MANAGER]);
    let service = stored(&body("/services/shop-flower"), &[FIELD_MANAGER]);
    let cached = apply::Cached {
        deployments: vec![store(vec![worker, flower])],
        services: vec![store(vec![service])],
        budgets: vec![store(Vec::new())],
        autoscalers: vec![store(Vec::new())],
        group_deployments: vec![store(Vec::new())],
        group_budgets: vec![store(Vec::new())],
    };
    let scaling = validate::validate(&c.spec).unwrap();
    assert!(apply::unchanged(&cached, &c, &scaling, &[]).is_some(), "the children just created are re-applied");
}
