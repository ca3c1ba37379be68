//! The controller: watches `Celery` objects and the Deployments, Services and
//! PodDisruptionBudgets they own, and runs [`crate::reconcile::reconcile`] whenever one of them
//! changes.
//!
//! Children are watched through the `app.kubernetes.io/managed-by=celery-operator` label, so
//! the operator caches only its own objects. HorizontalPodAutoscalers are watched too (all of
//! them: they are not the operator's), so one that targets a worker Deployment reconciles its
//! app, which then leaves that Deployment's replicas to it (`ConflictingAutoscaler`). With a list of namespaces it runs one controller
//! per namespace (and needs only namespaced permissions there); without, one for the cluster.

use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::ListParams;
use kube::runtime::controller::Error as ControllerError;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{Controller, WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, error, info, warn};

use crate::autoscale::cluster::ClusterView;
use crate::autoscale::scaler::Autoscaler;
use crate::crd::Celery;
use crate::leader::Leadership;
use crate::policy::check::PolicyCheck;
use crate::reconcile::{self, Context, apply};
use crate::scope::Scope;
use crate::spec::names::{CHILD_SELECTOR, GROUP_CHILD_SELECTOR};
use crate::telemetry::{self, Metrics};

/// Backoff of the watches after an error. NB: the three watches of a controller share one
/// backoff, so after an API server restart their errors (refused connections, then 410 Gone
/// for every stale resourceVersion) compound; kube's default, capped at 30 s plus jitter, left
/// the operator blind for close to a minute. Capping it at 5 s keeps the reaction fast.
fn watch_backoff() -> CappedBackoff {
    CappedBackoff::new(Duration::from_millis(250), Duration::from_secs(5))
}

/// Doubling delays from `min` up to `max`, starting over after a success.
struct CappedBackoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl CappedBackoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        Some(delay)
    }
}

impl Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// How long a CRD the API server does not serve is taken for one being installed: `kubectl
/// apply -k deploy` creates the CRD and the operator's Deployment together, and the API server
/// serves a new CRD only a moment after creating it (seconds, when it is busy). Until then the
/// wait says so once as a warning; after it, as an error at every try, since somebody has to
/// install the CRD.
pub const CRD_GRACE: Duration = Duration::from_secs(30);

/// Waits until the API server serves `K` (the `Celery` resource) in every namespace of
/// `scope`, saying clearly what is missing meanwhile: a warning during `grace`, errors after
/// it. Tries again after 0.5 s, doubling up to 5 s. Returns when it is served or when
/// `shutdown` fires.
pub async fn wait_for_crd<K>(client: &Client, scope: &Scope, grace: Duration, shutdown: &mut watch::Receiver<bool>)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let resource = format!("{}.{}", K::plural(&()), K::group(&()));
    let started = tokio::time::Instant::now();
    let mut delays = CappedBackoff::new(Duration::from_millis(500), Duration::from_secs(5));
    // Whether the wait has said the CRD is missing (or the list failed): then it says when it is served.
    let mut said_missing = false;
    loop {
        let mut missing = None;
        for api in scope.apis::<K>(client) {
            if let Err(e) = api.list_metadata(&ListParams::default().limit(1)).await {
                missing = Some(e);
                break;
            }
        }
        match missing {
            None => {
                if said_missing {
                    info!("the API server serves {resource}");
                }
                return;
            }
            Some(kube::Error::Api(s)) if s.code == 404 && started.elapsed() < grace => {
                if !std::mem::replace(&mut said_missing, true) {
                    warn!("the API server does not serve {resource} yet; waiting for its CRD (kubectl apply -f deploy/crd.yaml)")
                }
            }
            Some(kube::Error::Api(s)) if s.code == 404 => {
                said_missing = true;
                error!("the API server does not serve {resource}; install the CRD: kubectl apply -f deploy/crd.yaml")
            }
            Some(e) => {
                said_missing = true;
                warn!(error = %telemetry::chain(&e), "cannot list {resource} yet")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// The app whose worker Deployment `hpa` targets, found through the Deployment's controller
/// (only the operator's Deployments are cached).
fn app_scaled_by(deployments: &Store<Deployment>, hpa: &HorizontalPodAutoscaler) -> Option<ObjectRef<Celery>> {
    let target = &hpa.spec.scale_target_ref;
    if target.kind != "Deployment" {
        return None;
    }
    let ns = hpa.namespace()?;
    let deployment = deployments.get(&ObjectRef::new(&target.name).within(&ns))?;
    let owner = deployment.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "Celery")?;
    Some(ObjectRef::new(&owner.name).within(&ns))
}

/// What the process keeps across leader terms, handed to each term's controllers.
pub struct Kept {
    pub metrics: Arc<Metrics>,
    /// Every pool's recent ticks, for `/trace`.
    pub traces: Arc<crate::autoscale::trace::Traces>,
    /// The worker pods and Deployments, watched by standbys too: a new leader's loops find
    /// theirs at once instead of after a list of every Deployment (see `operator`).
    pub cluster: Arc<ClusterView>,
}

/// The child caches of one watched namespace (or of all): see [`apply::Cached`].
struct Caches {
    deployments: Store<Deployment>,
    services: Store<Service>,
    budgets: Store<PodDisruptionBudget>,
    autoscalers: Store<HorizontalPodAutoscaler>,
    group_deployments: Store<Deployment>,
    group_budgets: Store<PodDisruptionBudget>,
}

/// Runs the controllers until `shutdown` turns true, then lets running reconciles finish.
/// With a policy runtime, the autoscaling loops run alongside on `kept.cluster`, and end with
/// the controllers (when this future completes or is dropped on lost leadership).
pub async fn run(
    client: Client,
    scope: Scope,
    kept: &Kept,
    policies: Option<Arc<PolicyCheck>>,
    leadership: Arc<Leadership>,
    shutdown: watch::Receiver<bool>,
) {
    let Kept { metrics, traces, cluster } = kept;
    let children = watcher::Config::default().labels(CHILD_SELECTOR);
    let group_children = watcher::Config::default().labels(GROUP_CHILD_SELECTOR);
    let celery_apis = scope.apis::<Celery>(&client);
    let deployment_apis = scope.apis::<Deployment>(&client);
    let service_apis = scope.apis::<Service>(&client);
    let budget_apis = scope.apis::<PodDisruptionBudget>(&client);
    let autoscaler_apis = scope.apis::<HorizontalPodAutoscaler>(&client);

    let controllers = celery_apis
        .into_iter()
        .zip(deployment_apis)
        .zip(service_apis)
        .zip(budget_apis)
        .zip(autoscaler_apis)
        .map(|((((celery, deployments), services), budgets), autoscalers)| {
            // The worker groups' children once more, alone: see `Cached::group_deployments`.
            // Their watches trigger nothing (the watches above do) and end with the controller.
            let (group_deployment_cache, writer) = reflector::store();
            let group_deployments = watcher::watcher(deployments.clone(), group_children.clone())
                .backoff(watch_backoff())
                .modify(apply::trim_for_cache)
                .reflect(writer);
            let (group_budget_cache, writer) = reflector::store();
            let group_budgets = watcher::watcher(budgets.clone(), group_children.clone())
                .backoff(watch_backoff())
                .modify(apply::trim_for_cache)
                .reflect(writer);
            let group_watches =
                futures::stream::select(group_deployments.map_ok(|_| ()), group_budgets.map_ok(|_| ())).for_each(|event| {
                    if let Err(error) = event {
                        warn!(error = %telemetry::chain(&error), "watch of worker groups' children failed; retrying");
                    }
                    futures::future::ready(())
                });
            // The cache sees every change (the loops and the status step read it); a reconcile
            // is triggered by a change of the spec (generation), not by a status write, the
            // autoscaler's every few seconds included. Children's changes and the periodic
            // resync still trigger one.
            let (reader, writer) = reflector::store();
            // Each object is trimmed on its way in (`apply::trim_for_cache`): its managedFields'
            // field sets are most of its memory, and the operator reads little of them.
            let apps = watcher::watcher(celery, watcher::Config::default())
                .backoff(watch_backoff())
                .modify(apply::trim_for_cache)
                .reflect(writer)
                .applied_objects()
                .predicate_filter(predicates::generation, Default::default());
            // The children are cached too: a reconcile that would change nothing reads them
            // from here and writes nothing (see `apply::unchanged`).
            let (deployment_cache, writer) = reflector::store();
            let deployments = watcher::watcher(deployments, children.clone())
                .backoff(watch_backoff())
                .modify(apply::trim_for_cache)
                .reflect(writer);
            let (service_cache, writer) = reflector::store();
            let services = watcher::watcher(services, children.clone())
                .backoff(watch_backoff())
                .modify(apply::trim_for_cache)
                .reflect(writer);
            let (budget_cache, writer) = reflector::store();
            let budgets = watcher::watcher(budgets, children.clone())
                .backoff(watch_backoff())
                .modify(apply::trim_for_cache)
                .reflect(writer);
            let (autoscaler_cache, writer) = reflector::store();
            let autoscalers = watcher::watcher(autoscalers, watcher::Config::default())
                .backoff(watch_backoff())
                .modify(apply::trim_for_cache)
                .reflect(writer);
            let targets = deployment_cache.clone();
            let controller = Controller::for_stream(apps, reader)
                .owns_stream(deployments.touched_objects())
                .owns_stream(services.touched_objects())
                .owns_stream(budgets.touched_objects())
                .watches_stream(autoscalers.touched_objects(), move |hpa| app_scaled_by(&targets, &hpa))
                .trigger_backoff(watch_backoff());
            let caches = Caches {
                deployments: deployment_cache,
                services: service_cache,
                budgets: budget_cache,
                autoscalers: autoscaler_cache,
                group_deployments: group_deployment_cache,
                group_budgets: group_budget_cache,
            };
            ((controller, group_watches), caches)
        })
        .unzip::<_, _, Vec<_>, Vec<_>>();
    let (controllers, caches) = controllers;
    let (controllers, group_watches): (Vec<_>, Vec<_>) = controllers.into_iter().unzip();
    let cached = apply::Cached {
        deployments: caches.iter().map(|c| c.deployments.clone()).collect(),
        services: caches.iter().map(|c| c.services.clone()).collect(),
        budgets: caches.iter().map(|c| c.budgets.clone()).collect(),
        autoscalers: caches.iter().map(|c| c.autoscalers.clone()).collect(),
        group_deployments: caches.iter().map(|c| c.group_deployments.clone()).collect(),
        group_budgets: caches.iter().map(|c| c.group_budgets.clone()).collect(),
    };

    // The reconciler hands each app's validated scaling to the autoscaler, one way.
    let (handoff, handoffs) = mpsc::unbounded_channel();
    let autoscaler = policies.clone().map(|policies| {
        let stores = controllers.iter().map(Controller::store).collect();
        Autoscaler::new(client.clone(), metrics.clone(), policies, cluster.clone(), stores, leadership.clone(), traces.clone())
    });
    let handoff = autoscaler.is_some().then_some(handoff);
    let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), policies, handoff, cached, leadership));

    let namespaces: Vec<String> = if scope.namespaces.is_empty() { vec!["(all)".into()] } else { scope.namespaces.clone() };
    let running = controllers.into_iter().zip(group_watches).zip(namespaces).map(|((controller, group_watches), namespace)| {
        let mut stop = shutdown.clone();
        let metrics = metrics.clone();
        // At 0 from the start, so that a rate over it (an alert) exists before the first error.
        metrics.watch_namespace(&namespace);
        let controller = controller
            .graceful_shutdown_on(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
            .for_each(move |result| {
                match result {
                    Ok((object, _)) => debug!(app = %object, "reconcile done"),
                    // error_policy has logged it.
                    Err(ControllerError::ReconcilerFailed(..)) => {}
                    // A watch that fails (Forbidden, a gone API server) leaves the operator
                    // blind: say so where an operator of the operator looks.
                    Err(ControllerError::QueueError(e)) => {
                        metrics.observe_watch_error(&namespace);
                        warn!(%namespace, error = %telemetry::chain(&e), "watch of Celery apps or their children failed; retrying");
                    }
                    Err(e) => debug!(%namespace, error = %telemetry::chain(&e), "controller event"),
                }
                futures::future::ready(())
            });
        async move {
            // The group watches never end by themselves: they stop with the controller.
            tokio::select! {
                () = controller => {}
                () = group_watches => {}
            }
        }
    });
    info!(namespaces = ?scope.namespaces, "watching Celery apps");
    let controllers = futures::future::join_all(running);
    match autoscaler {
        Some(autoscaler) => {
            // The view and the loops never end by themselves: they stop with the controllers.
            // A task of their own: polled beside the controllers in one task, the hand-offs
            // waited while the reconciles used up the task's cooperative budget, and after a
            // failover at 10,000 apps no loop started before the last app had reconciled, 36 s
            // after the new leader began.
            let mut loops = AbortOnDropHandle::new(tokio::spawn(autoscaler.run(handoffs)));
            tokio::select! {
                _ = controllers => {}
                _ = &mut loops => {}
            }
        }
        None => {
            controllers.await;
        }
    }
}
