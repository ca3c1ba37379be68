//! What the autoscaler knows from the API server: the worker pods (readiness, requests) and
//! worker Deployments (`replicas`) of every app, kept current by two watches, and the pods'
//! CPU and memory from `metrics.k8s.io`, listed once per refresh for all apps together.
//!
//! Nothing here is read per app from the API server: an app's loop looks its pods and its
//! Deployment up in memory, indexed by app, so a sample costs the same with 1 or 1,000 apps.
//! A figure that is not known (no metrics API, a pod not scraped yet, a failed list) is
//! `None`, never 0.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{FutureExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::decide::scalein;
use crate::leader::Leadership;
use crate::policy::PodSample;
use crate::quantity;
use crate::scope::Scope;

/// Pods and Deployments of workers: the children's labels plus the worker component.
pub const WORKER_SELECTOR: &str = "app.kubernetes.io/managed-by=celery-operator,app.kubernetes.io/component=worker";
/// The pool of workers a worker pod belongs to ([`pool_key`](crate::spec::names::pool_key)): its app, and its group
/// if it has one.
fn pool_of(pod: &Pod) -> Option<String> {
    let labels = pod.labels();
    let app = labels.get(INSTANCE_LABEL)?;
    Some(crate::spec::names::pool_key(app, labels.get(crate::spec::names::GROUP_LABEL).map(String::as_str)))
}

/// The label naming the Celery object a child belongs to.
const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// `(namespace, name)`.
type Key = (String, String);

/// A worker pod as far as scaling is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    pub name: String,
    pub ready: bool,
    pub cpu_request_millis: Option<u64>,
    pub memory_request_bytes: Option<u64>,
    /// Creation time in milliseconds (0 when the API server gave none).
    pub created_ms: i64,
    /// Being deleted (it has a deletion timestamp).
    pub terminating: bool,
    /// Carries the autoscaler's deletion-cost mark ([`scalein::MARK`]).
    pub marked: bool,
}

/// CPU and memory of one pod, summed over its containers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// The in-memory view, shared by every app's loop.
#[derive(Default)]
pub struct ClusterView {
    /// (namespace, Celery name) → pod name → state.
    pods: RwLock<HashMap<Key, BTreeMap<String, PodState>>>,
    /// (namespace, pod) → the app it was indexed under, so a delete finds it.
    pod_apps: RwLock<HashMap<Key, Key>>,
    /// (namespace, Deployment name) → `spec.replicas`.
    replicas: RwLock<HashMap<Key, u32>>,
    /// (namespace, pod) → usage at the last refresh; empty while the metrics API is unknown.
    usage: RwLock<HashMap<Key, Usage>>,
}

impl ClusterView {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// `spec.replicas` of a worker Deployment, or `None` when it does not exist (yet).
    pub fn worker_replicas(&self, namespace: &str, deployment: &str) -> Option<u32> {
        let replicas = self.replicas.read().expect("replicas lock");
        replicas.get(&(namespace.to_string(), deployment.to_string())).copied()
    }

    /// Records the count the autoscaler just wrote, before the watch reports it, so the next
    /// sample does not act on the old one.
    pub fn set_worker_replicas(&self, namespace: &str, deployment: &str, replicas: u32) {
        let mut map = self.replicas.write().expect("replicas lock");
        map.insert((namespace.to_string(), deployment.to_string()), replicas);
    }

    /// The worker pods of one pool (an app, or `app/group`: [`names::pool_key`](crate::spec::names::pool_key)), with their CPU and memory where known, sorted by name.
    pub fn pods(&self, namespace: &str, app: &str) -> Vec<PodSample> {
        let pods = self.pods.read().expect("pods lock");
        let Some(own) = pods.get(&(namespace.to_string(), app.to_string())) else {
            return Vec::new();
        };
        let usage = self.usage.read().expect("usage lock");
        own.values()
            .map(|p| {
                let used = usage.get(&(namespace.to_string(), p.name.clone()));
                PodSample {
                    name: p.name.clone(),
                    ready: p.ready,
                    cpu_millis: used.map(|u| u.cpu_millis),
                    cpu_request_millis: p.cpu_request_millis,
                    memory_bytes: used.map(|u| u.memory_bytes),
                    memory_request_bytes: p.memory_request_bytes,
                    active_tasks: None,
                }
            })
            .collect()
    }

    /// The worker pods of one pool (as for [`pods`](Self::pods)) as the API server last showed them, sorted by name.
    pub fn pod_states(&self, namespace: &str, app: &str) -> Vec<PodState> {
        let pods = self.pods.read().expect("pods lock");
        pods.get(&(namespace.to_string(), app.to_string())).map(|own| own.values().cloned().collect()).unwrap_or_default()
    }

    fn apply_pod(&self, pod: &Pod) {
        let (Some(ns), Some(app)) = (pod.namespace(), pool_of(pod)) else {
            return;
        };
        let state = pod_state(pod);
        let pod_key = (ns.clone(), state.name.clone());
        let app_key = (ns, app);
        let mut pods = self.pods.write().expect("pods lock");
        let mut pod_apps = self.pod_apps.write().expect("pod index lock");
        if let Some(old) = pod_apps.insert(pod_key.clone(), app_key.clone())
            && old != app_key
        {
            remove_pod(&mut pods, &old, &pod_key.1);
        }
        pods.entry(app_key).or_default().insert(state.name.clone(), state);
    }

    fn delete_pod(&self, pod: &Pod) {
        let pod_key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut pods = self.pods.write().expect("pods lock");
        if let Some(app) = self.pod_apps.write().expect("pod index lock").remove(&pod_key) {
            remove_pod(&mut pods, &app, &pod_key.1);
        }
    }

    /// Replaces the pods of `namespace` (of every namespace with `None`) by a relist of it;
    /// the other namespaces' watches keep theirs.
    fn replace_pods(&self, namespace: Option<&str>, all: Vec<Pod>) {
        let mut pods = self.pods.write().expect("pods lock");
        let mut pod_apps = self.pod_apps.write().expect("pod index lock");
        pods.retain(|(ns, _), _| !within(namespace, ns));
        pod_apps.retain(|(ns, _), _| !within(namespace, ns));
        for pod in &all {
            let (Some(ns), Some(app)) = (pod.namespace(), pool_of(pod)) else {
                continue;
            };
            let state = pod_state(pod);
            pod_apps.insert((ns.clone(), state.name.clone()), (ns.clone(), app.clone()));
            pods.entry((ns, app)).or_default().insert(state.name.clone(), state);
        }
    }

    fn apply_deployment(&self, d: &Deployment) {
        let key = (d.namespace().unwrap_or_default(), d.name_any());
        self.replicas.write().expect("replicas lock").insert(key, deployment_replicas(d));
    }

    fn delete_deployment(&self, d: &Deployment) {
        let key = (d.namespace().unwrap_or_default(), d.name_any());
        self.replicas.write().expect("replicas lock").remove(&key);
    }

    /// Like [`replace_pods`](Self::replace_pods), for the worker Deployments.
    fn replace_deployments(&self, namespace: Option<&str>, all: Vec<Deployment>) {
        let mut replicas = self.replicas.write().expect("replicas lock");
        replicas.retain(|(ns, _), _| !within(namespace, ns));
        replicas.extend(all.iter().map(|d| ((d.namespace().unwrap_or_default(), d.name_any()), deployment_replicas(d))));
    }

    /// Keeps the pods and Deployments of `scope` current until the returned future is dropped,
    /// and their CPU and memory while `leadership` holds (only a leader's loops read them).
    pub async fn watch(self: Arc<Self>, client: Client, scope: Scope, leadership: Arc<Leadership>) {
        let config = watcher::Config::default().labels(WORKER_SELECTOR);
        let mut streams = Vec::new();
        let namespaces: Vec<Option<String>> =
            if scope.namespaces.is_empty() { vec![None] } else { scope.namespaces.iter().cloned().map(Some).collect() };
        for (api, ns) in scope.apis::<Pod>(&client).into_iter().zip(&namespaces) {
            streams.push(follow(Arc::clone(&self), api, ns.clone(), config.clone()).boxed());
        }
        for (api, ns) in scope.apis::<Deployment>(&client).into_iter().zip(&namespaces) {
            streams.push(follow(Arc::clone(&self), api, ns.clone(), config.clone()).boxed());
        }
        streams.push(Arc::clone(&self).poll_usage(client, scope, leadership).boxed());
        futures::future::join_all(streams).await;
    }

    /// Lists the worker pods' metrics every `USAGE_REFRESH`. NB: metrics-server refreshes its
    /// figures every 10-60 s (its `--metric-resolution`); listing more often than that only
    /// re-reads the same figures, listing less often adds delay, so the refresh is kept below
    /// the smallest resolution. A failed list empties the figures: stale CPU is not evidence.
    async fn poll_usage(self: Arc<Self>, client: Client, scope: Scope, leadership: Arc<Leadership>) {
        let resource = ApiResource {
            group: "metrics.k8s.io".into(),
            version: "v1beta1".into(),
            api_version: "metrics.k8s.io/v1beta1".into(),
            kind: "PodMetrics".into(),
            plural: "pods".into(),
        };
        let apis: Vec<Api<DynamicObject>> = if scope.namespaces.is_empty() {
            vec![Api::all_with(client.clone(), &resource)]
        } else {
            scope.namespaces.iter().map(|ns| Api::namespaced_with(client.clone(), ns, &resource)).collect()
        };
        let mut failing = false;
        let mut tick = tokio::time::interval(USAGE_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !leadership.holds() {
                // A standby lists nothing it does not use; a new leader's first list follows
                // within a refresh, and until then CPU and memory are unknown (never 0).
                self.usage.write().expect("usage lock").clear();
                continue;
            }
            let mut usage = HashMap::new();
            let mut error = None;
            for api in &apis {
                match api.list(&ListParams::default().labels(WORKER_SELECTOR)).await {
                    Ok(list) => {
                        for item in &list.items {
                            if let Some(u) = pod_usage(item) {
                                usage.insert((item.namespace().unwrap_or_default(), item.name_any()), u);
                            }
                        }
                    }
                    Err(e) => error = Some(e),
                }
            }
            match (&error, failing) {
                (Some(e), false) => warn!(
                    error = %crate::telemetry::chain(e),
                    "cannot read pod CPU and memory from metrics.k8s.io (is metrics-server installed?); CPU and memory are unknown until it answers"
                ),
                (None, true) => info!("pod CPU and memory are read from metrics.k8s.io again"),
                _ => {}
            }
            failing = error.is_some();
            *self.usage.write().expect("usage lock") = if failing { HashMap::new() } else { usage };
        }
    }
}

/// How often pod metrics are listed.
pub const USAGE_REFRESH: Duration = Duration::from_secs(5);

/// A watched kind and how the view keeps it.
trait Indexed: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static {
    fn apply(view: &ClusterView, object: &Self);
    fn delete(view: &ClusterView, object: &Self);
    /// Replaces everything of this kind in `namespace` (all with `None`) after a (re)list.
    fn replace(view: &ClusterView, namespace: Option<&str>, all: Vec<Self>);
}

impl Indexed for Pod {
    fn apply(view: &ClusterView, pod: &Self) {
        view.apply_pod(pod);
    }
    fn delete(view: &ClusterView, pod: &Self) {
        view.delete_pod(pod);
    }
    fn replace(view: &ClusterView, namespace: Option<&str>, all: Vec<Self>) {
        view.replace_pods(namespace, all);
    }
}

impl Indexed for Deployment {
    fn apply(view: &ClusterView, d: &Self) {
        view.apply_deployment(d);
    }
    fn delete(view: &ClusterView, d: &Self) {
        view.delete_deployment(d);
    }
    fn replace(view: &ClusterView, namespace: Option<&str>, all: Vec<Self>) {
        view.replace_deployments(namespace, all);
    }
}

/// Feeds a watch of `api` (of `namespace`, or all) into the view forever, backing off on
/// errors (the watcher resumes by itself). A relist is buffered and swapped in whole, so a
/// sample never sees half of it, and it replaces only what this watch covers. The first list
/// is also applied page by page as it comes: with nothing to keep consistent yet, a loop
/// need not wait for the last of 10,000 Deployments to find its own.
async fn follow<K: Indexed>(view: Arc<ClusterView>, api: Api<K>, namespace: Option<String>, config: watcher::Config) {
    feed(&view, watcher::watcher(api, config).default_backoff(), namespace.as_deref()).await;
}

/// [`follow`]'s work on a stream of watch events, until it ends.
async fn feed<K: Indexed>(
    view: &ClusterView,
    stream: impl futures::Stream<Item = Result<Event<K>, watcher::Error>>,
    namespace: Option<&str>,
) {
    futures::pin_mut!(stream);
    let mut buffer = Vec::new();
    let mut listed = false;
    loop {
        match stream.try_next().await {
            Ok(Some(Event::Apply(object))) => K::apply(view, &object),
            Ok(Some(Event::Delete(object))) => K::delete(view, &object),
            Ok(Some(Event::Init)) => buffer.clear(),
            Ok(Some(Event::InitApply(object))) => {
                if !listed {
                    K::apply(view, &object);
                }
                buffer.push(object);
            }
            Ok(Some(Event::InitDone)) => {
                K::replace(view, namespace, std::mem::take(&mut buffer));
                listed = true;
            }
            Ok(None) => return,
            Err(error) => warn!(
                kind = %K::kind(&()),
                namespace = namespace.unwrap_or("(all)"),
                error = %crate::telemetry::chain(&error),
                "watch of worker pods or Deployments failed; retrying"
            ),
        }
    }
}

/// Whether an entry of namespace `ns` is covered by a watch of `namespace` (`None`: all).
fn within(namespace: Option<&str>, ns: &str) -> bool {
    namespace.is_none_or(|n| n == ns)
}

fn remove_pod(pods: &mut HashMap<Key, BTreeMap<String, PodState>>, app: &Key, pod: &str) {
    if let Some(own) = pods.get_mut(app) {
        own.remove(pod);
        if own.is_empty() {
            pods.remove(app);
        }
    }
}

fn deployment_replicas(d: &Deployment) -> u32 {
    // The API server defaults an absent `replicas` to 1.
    let n = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    u32::try_from(n).unwrap_or(0)
}

/// Readiness and summed requests of a pod. A pod being deleted is not ready: it is draining.
pub fn pod_state(pod: &Pod) -> PodState {
    let ready = pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let request = |resource: &str, scale: f64| -> Option<u64> {
        let mut total = 0.0;
        for c in containers {
            let q = c.resources.as_ref()?.requests.as_ref()?.get(resource)?;
            total += quantity::parse(&q.0).ok()?;
        }
        (!containers.is_empty()).then(|| (total * scale).round() as u64)
    };
    PodState {
        name: pod.name_any(),
        ready,
        cpu_request_millis: request("cpu", 1000.0),
        memory_request_bytes: request("memory", 1.0),
        created_ms: pod.metadata.creation_timestamp.as_ref().map_or(0, |t| t.0.as_millisecond()),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        marked: pod.annotations().get(scalein::DELETION_COST).is_some_and(|v| v == scalein::MARK),
    }
}

/// CPU (millicores) and memory (bytes) of a `PodMetrics` object, summed over its containers.
pub fn pod_usage(metrics: &DynamicObject) -> Option<Usage> {
    let containers = metrics.data.get("containers")?.as_array()?;
    let mut cpu = 0.0;
    let mut memory = 0.0;
    for c in containers {
        let usage = c.get("usage")?;
        cpu += quantity::parse(usage.get("cpu")?.as_str()?).ok()?;
        memory += quantity::parse(usage.get("memory")?.as_str()?).ok()?;
    }
    Some(Usage { cpu_millis: (cpu * 1000.0).round() as u64, memory_bytes: memory.round() as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("test pod parses")
    }

    const POD: &str = "
metadata:
  name: shop-celery-worker-abc
  namespace: shop
  labels: {app.kubernetes.io/instance: shop}
spec:
  containers:
  - name: worker
    resources: {requests: {cpu: 250m, memory: 128Mi}}
  - name: sidecar
    resources: {requests: {cpu: '1', memory: 1Gi}}
status:
  conditions: [{type: Ready, status: 'True'}]
";

    #[test]
    fn pod_state_sums_requests_and_reads_readiness() {
        let state = pod_state(&pod(POD));
        assert_eq!(state.cpu_request_millis, Some(1250));
        assert_eq!(state.memory_request_bytes, Some((128 << 20) + (1 << 30)));
        assert!(state.ready);
        let unready = pod(&POD.replace("status: 'True'", "status: 'False'"));
        assert!(!pod_state(&unready).ready);
    }

    #[test]
    fn a_container_without_a_request_makes_the_request_unknown() {
        let p = pod(&POD.replace("resources: {requests: {cpu: '1', memory: 1Gi}}", "resources: {}"));
        assert_eq!(pod_state(&p).cpu_request_millis, None);
    }

    #[test]
    fn pod_usage_sums_containers() {
        let m: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
            "metadata": {"name": "p", "namespace": "n"},
            "timestamp": "2026-11-30T00:00:00Z", "window": "10s",
            "containers": [
                {"name": "a", "usage": {"cpu": "249999874n", "memory": "100Mi"}},
                {"name": "b", "usage": {"cpu": "1m", "memory": "1Mi"}}
            ]
        }))
        .unwrap();
        assert_eq!(pod_usage(&m), Some(Usage { cpu_millis: 251, memory_bytes: 101 << 20 }));
    }

    #[test]
    fn the_view_indexes_pods_by_app_and_forgets_deleted_ones() {
        let view = ClusterView::default();
        let p = pod(POD);
        view.apply_pod(&p);
        let mut other = pod(POD);
        other.metadata.name = Some("other-celery-worker-x".into());
        other.metadata.labels = Some(BTreeMap::from([(INSTANCE_LABEL.to_string(), "other".to_string())]));
        view.apply_pod(&other);
        let pods = view.pods("shop", "shop");
        assert_eq!(pods.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["shop-celery-worker-abc"]);
        assert_eq!(pods[0].cpu_millis, None, "no metrics yet: unknown, not 0");
        view.usage
            .write()
            .unwrap()
            .insert(("shop".into(), "shop-celery-worker-abc".into()), Usage { cpu_millis: 5, memory_bytes: 6 });
        assert_eq!(view.pods("shop", "shop")[0].cpu_millis, Some(5));
        view.delete_pod(&p);
        assert!(view.pods("shop", "shop").is_empty());
        assert_eq!(view.pods("shop", "other").len(), 1);
        view.replace_pods(None, vec![p]);
        assert_eq!(view.pods("shop", "shop").len(), 1);
        assert!(view.pods("shop", "other").is_empty(), "a relist drops what it does not list");
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_others() {
        let view = ClusterView::default();
        let in_ns = |ns: &str| {
            let mut p = pod(POD);
            p.metadata.namespace = Some(ns.into());
            p
        };
        let deployment = |ns: &str, replicas: i32| -> Deployment {
            serde_yaml::from_str(&format!(
                "metadata: {{name: shop-celery-worker, namespace: {ns}}}\nspec: {{replicas: {replicas}, selector: {{}}, template: {{}}}}"
            ))
            .expect("test deployment parses")
        };
        view.replace_pods(Some("a"), vec![in_ns("a")]);
        view.replace_pods(Some("b"), vec![in_ns("b")]);
        view.replace_deployments(Some("a"), vec![deployment("a", 2)]);
        view.replace_deployments(Some("b"), vec![deployment("b", 3)]);
        // a relists and finds nothing: only a's entries go.
        view.replace_pods(Some("a"), Vec::new());
        view.replace_deployments(Some("a"), Vec::new());
        assert!(view.pods("a", "shop").is_empty());
        assert_eq!(view.pods("b", "shop").len(), 1, "b's pods survive a's relist");
        assert_eq!(view.worker_replicas("a", "shop-celery-worker"), None);
        assert_eq!(view.worker_replicas("b", "shop-celery-worker"), Some(3), "b's replicas survive a's relist");
        view.delete_pod(&in_ns("b"));
        assert!(view.pods("b", "shop").is_empty(), "the pod index of b survived too");
    }

    fn deployment(name: &str, replicas: i32) -> Deployment {
        serde_yaml::from_str(&format!(
            "metadata: {{name: {name}, namespace: shop}}\nspec: {{replicas: {replicas}, selector: {{}}, template: {{}}}}"
        ))
        .expect("test Deployment parses")
    }

    /// Lets `feed` take what was sent.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_first_list_is_seen_page_by_page_and_a_relist_only_whole() {
        let view = ClusterView::new();
        let (events, stream) = futures::channel::mpsc::unbounded::<Result<Event<Deployment>, watcher::Error>>();
        let feeding = {
            let view = Arc::clone(&view);
            tokio::spawn(async move { feed(&view, stream, None).await })
        };
        let send = |event| events.unbounded_send(Ok(event)).expect("feed listens");
        send(Event::Init);
        send(Event::InitApply(deployment("a", 2)));
        settle().await;
        assert_eq!(view.worker_replicas("shop", "a"), Some(2), "the first list's first page, before the list ends");
        send(Event::InitApply(deployment("b", 3)));
        send(Event::InitDone);
        settle().await;
        assert_eq!((view.worker_replicas("shop", "a"), view.worker_replicas("shop", "b")), (Some(2), Some(3)));
        // A relist (a watch that expired): the view keeps what it had until the list is whole.
        send(Event::Init);
        send(Event::InitApply(deployment("b", 4)));
        send(Event::InitApply(deployment("c", 1)));
        settle().await;
        assert_eq!(
            (view.worker_replicas("shop", "a"), view.worker_replicas("shop", "b"), view.worker_replicas("shop", "c")),
            (Some(2), Some(3), None),
            "half a relist is not shown"
        );
        send(Event::InitDone);
        settle().await;
        assert_eq!(
            (view.worker_replicas("shop", "a"), view.worker_replicas("shop", "b"), view.worker_replicas("shop", "c")),
            (None, Some(4), Some(1)),
            "the relist replaced the view: a is gone"
        );
        drop(events);
        feeding.await.expect("feed ends with its stream");
    }
}
