//! Step 4 of a reconcile: write the children with server-side apply.
//!
//! Every child is applied with the field manager [`FIELD_MANAGER`] and `force`, so a hand edit
//! of a field the operator sets is undone on the next reconcile, and fields others set are
//! left alone. The one exception is the worker `replicas` when a scaling policy decides them:
//! that field belongs to the manager [`SCALER_MANAGER`], so the reconciler never fights the
//! autoscaler over it (see [`apply_pool`]). The API server's answers are returned, status
//! included, so the status step needs no extra reads.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conditions::{APPLY_REJECTED, NAME_CONFLICT};
use crate::crd::{Celery, WorkerGroup};
use crate::reconcile::adopt;
use crate::reconcile::build::{self, BuildError};
use crate::spec::names::{self, FIELD_MANAGER, SCALER_MANAGER};
use crate::spec::validate::Scaling;

/// The children as the API server holds them after the apply.
pub struct Applied {
    pub worker: Deployment,
    /// The groups' Deployments, in the order of `spec.workerGroups`.
    pub groups: Vec<Deployment>,
    pub beat: Option<Deployment>,
    pub flower: Option<Deployment>,
    pub flower_service: Option<String>,
}

/// Why applying the children failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server refused what the spec asks for. Retrying cannot help until the spec
    /// (or the conflicting object) changes. `reason` is a `Degraded` condition reason.
    #[error("{message}")]
    Rejected { reason: &'static str, message: String },

    /// A call failed for a reason that may pass (API server down, timeout, conflict).
    #[error("{action} {kind} {namespace}/{name}")]
    Api {
        action: &'static str,
        kind: String,
        namespace: String,
        name: String,
        /// Boxed: kube's error is large, and every `Result` of this module carries it.
        #[source]
        source: Box<kube::Error>,
    },

    #[error(transparent)]
    Build(#[from] BuildError),
}

/// The children as the controllers' watches last saw them (one store per watched namespace,
/// or one for all), so that a reconcile that changes nothing costs no request for them.
#[derive(Clone, Default)]
pub struct Cached {
    pub deployments: Vec<Store<Deployment>>,
    pub services: Vec<Store<Service>>,
    pub budgets: Vec<Store<PodDisruptionBudget>>,
    /// The worker groups' Deployments and PodDisruptionBudgets only, from watches of their own
    /// ([`names::GROUP_CHILD_SELECTOR`]): a reconcile looks among these for children of groups
    /// its spec no longer has. Among every cached Deployment that search was the operator's
    /// largest cost at 10,000 apps, since the periodic resync reconciles every app.
    pub group_deployments: Vec<Store<Deployment>>,
    pub group_budgets: Vec<Store<PodDisruptionBudget>>,
    /// Every HorizontalPodAutoscaler of the watched namespaces (not only the operator's: it
    /// makes none), to find one that scales a worker Deployment too.
    pub autoscalers: Vec<Store<HorizontalPodAutoscaler>>,
}

/// A HorizontalPodAutoscaler that scales a pool of workers of an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignAutoscaler {
    /// The pool: `None` for `workerSpec`'s workers, else the worker group.
    pub group: Option<String>,
    pub deployment: String,
    pub autoscaler: String,
}

impl Cached {
    /// The HorizontalPodAutoscalers (KEDA's ScaledObjects make one each) whose target is a
    /// worker Deployment of `celery`, by the HPA's name.
    pub fn foreign_autoscalers(&self, celery: &Celery) -> Vec<ForeignAutoscaler> {
        let Some(ns) = celery.namespace() else { return Vec::new() };
        let pools: Vec<(Option<String>, String)> = std::iter::once((None, names::worker_name(celery)))
            .chain(celery.spec.worker_groups.iter().map(|g| (Some(g.name.clone()), names::group_name(celery, &g.name))))
            .collect();
        let mut found: Vec<ForeignAutoscaler> = self
            .autoscalers
            .iter()
            .flat_map(|store| store.state())
            .filter(|hpa| hpa.namespace().as_deref() == Some(ns.as_str()))
            .filter_map(|hpa| {
                let target = &hpa.spec.scale_target_ref;
                let apps = target.api_version.as_deref().is_none_or(|v| v.split('/').next() == Some("apps"));
                if target.kind != "Deployment" || !apps {
                    return None;
                }
                let (group, deployment) = pools.iter().find(|(_, d)| *d == target.name)?;
                Some(ForeignAutoscaler { group: group.clone(), deployment: deployment.clone(), autoscaler: hpa.name_any() })
            })
            .collect();
        found.sort_by(|a, b| a.autoscaler.cmp(&b.autoscaler));
        found
    }

    fn find<K>(stores: &[Store<K>], name: &str, ns: &str) -> Option<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let key = ObjectRef::new(name).within(ns);
        stores.iter().find_map(|store| store.get(&key))
    }

    /// The names of the objects in `stores` that `celery` controls and that belong to a worker
    /// group its spec no longer has (by their group label).
    fn stale_groups<K>(stores: &[Store<K>], celery: &Celery) -> Vec<String>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let ns = celery.metadata.namespace.as_deref();
        let kept: std::collections::BTreeSet<&str> = celery.spec.worker_groups.iter().map(|g| g.name.as_str()).collect();
        // Every cached group child is looked at (kube's Store has no index by owner), in place
        // under the store's lock, cheapest test first.
        let mut stale: Vec<String> = stores
            .iter()
            .flat_map(|store| {
                store.state_filter(|o| {
                    o.labels().get(names::GROUP_LABEL).is_some_and(|g| !kept.contains(g.as_str()))
                        && o.meta().namespace.as_deref() == ns
                        && controlled_by(o, celery)
                })
            })
            .map(|o| o.name_any())
            .collect();
        stale.sort();
        stale
    }
}

/// Annotation on every child: a digest of what the reconciler last applied to it.
pub const APPLIED_ANNOTATION: &str = "celeryproject.org/applied-spec";

/// The writes the operator itself makes to a child, as (field manager, operation) in its
/// managed fields. NB: the operation counts too: a client whose User-Agent starts with
/// `celery-operator/` (a test's, or a user's script) records its edits under the manager
/// `celery-operator` with `Update`, and those are someone else's.
const OURS: [(&str, &str); 3] = [(FIELD_MANAGER, "Apply"), (SCALER_MANAGER, "Apply"), (ADOPTION_MANAGER, "Update")];

/// The children of `celery`, from `cached` without a request, when applying them would change
/// nothing: each child is in the cache, controlled by this app, was last applied from the
/// object the spec builds now (its [`APPLIED_ANNOTATION`]), and no one but the operator has
/// written it since (its managed fields, status aside); with a scaling policy the scaler
/// owns `replicas` within the bounds. Anything else, a child the cache does not hold
/// included (it may be someone else's, unlabelled), takes the full path of [`children`].
pub fn unchanged(cached: &Cached, celery: &Celery, scaling: &Scaling, groups: &[Scaling]) -> Option<Applied> {
    let ns = celery.namespace()?;
    let worker = pool_unchanged(cached, celery, None, scaling)?;
    let mut applied_groups = Vec::with_capacity(groups.len());
    for (group, scaling) in celery.spec.worker_groups.iter().zip(groups) {
        applied_groups.push(pool_unchanged(cached, celery, Some(group), scaling)?);
    }
    if !Cached::stale_groups(&cached.group_deployments, celery).is_empty()
        || !Cached::stale_groups(&cached.group_budgets, celery).is_empty()
    {
        return None;
    }
    let beat = Cached::find(&cached.deployments, &names::beat_name(celery), &ns);
    let beat = match (celery.spec.beat.as_ref().filter(|b| b.enabled), beat) {
        (Some(spec), Some(beat)) if as_applied(&*beat, &build::beat_deployment(celery, spec).ok()?, celery) => {
            Some((*beat).clone())
        }
        (None, None) => None,
        // To be applied, or (the cache holds one and the spec no longer asks) deleted.
        (None, Some(beat)) if !controlled_by(&*beat, celery) => None,
        _ => return None,
    };
    let flower_name = names::flower_name(celery);
    let flower = Cached::find(&cached.deployments, &flower_name, &ns);
    let service = Cached::find(&cached.services, &flower_name, &ns);
    if !celery.spec.flower_spec.enabled {
        // Flower's children, if the cache holds them, are to be deleted.
        return (flower.is_none() && service.is_none()).then_some(Applied {
            worker,
            groups: applied_groups,
            beat,
            flower: None,
            flower_service: None,
        });
    }
    let (flower, service) = (flower?, service?);
    let fresh = as_applied(&*flower, &build::flower_deployment(celery).ok()?, celery)
        && as_applied(&*service, &build::flower_service(celery).ok()?, celery);
    fresh.then(|| Applied {
        worker,
        groups: applied_groups,
        beat,
        flower: Some((*flower).clone()),
        flower_service: Some(service.name_any()),
    })
}

/// The Deployment of a pool of workers (`workerSpec`'s, or `group`'s) and its budget from the
/// cache, when applying them would change nothing (see [`unchanged`]).
fn pool_unchanged(cached: &Cached, celery: &Celery, group: Option<&WorkerGroup>, scaling: &Scaling) -> Option<Deployment> {
    let ns = celery.namespace()?;
    let name = pool_name(celery, group);
    let worker = Cached::find(&cached.deployments, &name, &ns)?;
    let desired_worker = match scaling.floor() {
        None => build_pool(celery, group, Some(scaling.initial_replicas(num_of_workers(celery, group)))).ok()?,
        Some(min_replicas) => {
            let replicas = worker.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if replicas < min_replicas || !replicas_kept(&worker, scaling) {
                return None;
            }
            build_pool(celery, group, None).ok()?
        }
    };
    if !as_applied(&*worker, &desired_worker, celery) {
        return None;
    }
    let budget = Cached::find(&cached.budgets, &name, &ns);
    match (build::worker_disruption_budget(celery, group).ok()?, budget) {
        (Some(desired), Some(budget)) if as_applied(&*budget, &desired, celery) => {}
        (None, None) => {}
        // To be applied, or (when the cache holds one and the spec no longer asks) deleted.
        _ => return None,
    }
    Some((*worker).clone())
}

/// The name of a pool's Deployment (and budget).
fn pool_name(celery: &Celery, group: Option<&WorkerGroup>) -> String {
    match group {
        None => names::worker_name(celery),
        Some(g) => names::group_name(celery, &g.name),
    }
}

fn num_of_workers(celery: &Celery, group: Option<&WorkerGroup>) -> i32 {
    group.map_or(celery.spec.worker_spec.num_of_workers, |g| g.num_of_workers)
}

fn build_pool(celery: &Celery, group: Option<&WorkerGroup>, replicas: Option<i32>) -> Result<Deployment, BuildError> {
    match group {
        None => build::worker_deployment(celery, replicas),
        Some(g) => build::group_deployment(celery, g, replicas),
    }
}

/// `existing` is controlled by `celery`, was last applied from `desired` and written since by
/// the operator only.
fn as_applied<K: Resource + Serialize>(existing: &K, desired: &K, celery: &Celery) -> bool {
    let stamped = existing.annotations().get(APPLIED_ANNOTATION).map(String::as_str);
    let foreign = existing.meta().managed_fields.iter().flatten().any(|entry| {
        let writer = (entry.manager.as_deref().unwrap_or_default(), entry.operation.as_deref().unwrap_or_default());
        entry.subresource.as_deref() != Some("status") && !OURS.contains(&writer)
    });
    controlled_by(existing, celery) && !foreign && stamped == Some(digest(desired).as_str())
}

/// A digest of an object as built (before the annotation is added): the same object always
/// gives the same digest, in any process.
fn digest<K: Serialize>(object: &K) -> String {
    use sha2::Digest;
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    let hash = sha2::Sha256::digest(&bytes);
    hash.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Applies every child of `celery` and removes Flower's when it is switched off.
///
/// Each child is read first: one whose name is already controlled by another object is left
/// alone and reported. NB: the API server would not catch this by itself, because every
/// Celery app applies with the same field manager, so a second app's apply would silently
/// replace the first app's owner reference and the two would take the object in turns.
pub async fn children(
    client: &Client,
    cached: &Cached,
    celery: &Celery,
    scaling: &Scaling,
    groups: &[Scaling],
) -> Result<Applied, ApplyError> {
    let ns = celery.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let flower_name = names::flower_name(celery);

    // All three are read at once, then written at once: a new app waits two round trips for
    // its children (the worker's scale, when a policy owns the count, a third). As before, a
    // worker whose name is taken stops the app, while a taken Flower name leaves the worker
    // applied.
    let worker_name = names::worker_name(celery);
    let (worker, flower, service) = tokio::join!(
        read_own(&deployments, &worker_name, celery),
        read_own(&deployments, &flower_name, celery),
        read_own(&services, &flower_name, celery),
    );
    let worker = worker?;
    let (flower, service) = match (flower, service) {
        (Ok(flower), Ok(service)) => (flower, service),
        (Err(e), _) | (_, Err(e)) => {
            apply_pool(&deployments, celery, None, scaling, worker).await?;
            return Err(e);
        }
    };
    // The budget, the groups and beat are written beside the worker, costing no extra round
    // trip in sequence.
    let worker = async {
        let (worker, (), groups, beat) = tokio::try_join!(
            apply_pool(&deployments, celery, None, scaling, worker),
            apply_budget(client, cached, celery, None),
            apply_groups(client, cached, celery, groups),
            apply_beat(&deployments, cached, celery),
        )?;
        Ok::<_, ApplyError>((worker, groups, beat))
    };
    let ((worker, groups, beat), flower, flower_service) = if celery.spec.flower_spec.enabled {
        let (flower_deployment, flower_service) = (build::flower_deployment(celery)?, build::flower_service(celery)?);
        let (worker, flower, service) = tokio::try_join!(
            worker,
            apply_deployment(&deployments, &flower_deployment, flower.as_ref()),
            apply(&services, &flower_service, FIELD_MANAGER),
        )?;
        (worker, Some(flower), Some(service.name_any()))
    } else {
        // Only what this app controls is deleted; an unowned object of that name is the user's.
        let delete_flower = async {
            match flower {
                Some(d) if controlled_by(&d, celery) => delete(&deployments, &flower_name, celery).await,
                _ => Ok(()),
            }
        };
        let delete_service = async {
            match service {
                Some(s) if controlled_by(&s, celery) => delete(&services, &flower_name, celery).await,
                _ => Ok(()),
            }
        };
        let (worker, (), ()) = tokio::try_join!(worker, delete_flower, delete_service)?;
        (worker, None, None)
    };
    Ok(Applied { worker, groups, beat, flower, flower_service })
}

/// Applies every group's Deployment and budget (side by side), and deletes those of groups the
/// spec no longer has: the ones this app controls, as the watch cache shows them.
async fn apply_groups(
    client: &Client,
    cached: &Cached,
    celery: &Celery,
    scalings: &[Scaling],
) -> Result<Vec<Deployment>, ApplyError> {
    let ns = celery.namespace().unwrap_or_default();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let applied = futures::future::try_join_all(celery.spec.worker_groups.iter().zip(scalings).map(|(group, scaling)| {
        let deployments = &deployments;
        async move {
            let name = names::group_name(celery, &group.name);
            let current = read_own(deployments, &name, celery).await?;
            let (deployment, ()) = tokio::try_join!(
                apply_pool(deployments, celery, Some(group), scaling, current),
                apply_budget(client, cached, celery, Some(group)),
            )?;
            Ok::<_, ApplyError>(deployment)
        }
    }));
    let stale_deployments = Cached::stale_groups(&cached.group_deployments, celery);
    let stale_budgets = Cached::stale_groups(&cached.group_budgets, celery);
    let removed = async {
        for name in &stale_deployments {
            tracing::info!(deployment = %format!("{ns}/{name}"), "removing the Deployment of a worker group the spec no longer has");
            delete(&deployments, name, celery).await?;
        }
        for name in &stale_budgets {
            delete(&budgets, name, celery).await?;
        }
        Ok::<_, ApplyError>(())
    };
    let (applied, ()) = tokio::try_join!(applied, removed)?;
    Ok(applied)
}

/// Applies the beat Deployment while `spec.beat` runs it, else deletes the one this app
/// controls (the watch cache decides, so an app without beat costs no request for it).
async fn apply_beat(api: &Api<Deployment>, cached: &Cached, celery: &Celery) -> Result<Option<Deployment>, ApplyError> {
    let ns = celery.namespace().unwrap_or_default();
    let name = names::beat_name(celery);
    match celery.spec.beat.as_ref().filter(|b| b.enabled) {
        Some(beat) => {
            let current = read_own(api, &name, celery).await?;
            apply_deployment(api, &build::beat_deployment(celery, beat)?, current.as_ref()).await.map(Some)
        }
        None => match Cached::find(&cached.deployments, &name, &ns) {
            Some(d) if controlled_by(&*d, celery) => delete(api, &name, celery).await.map(|()| None),
            _ => Ok(None),
        },
    }
}

/// Applies the workers' PodDisruptionBudget (`workerSpec`'s, or `group`'s) when the spec asks
/// for one (read first, like every child, for a name another object controls), else deletes
/// the one this app controls. NB: without a budget in the spec the watch cache decides, so an
/// app that never had one costs no request for it; a budget the cache has not seen yet
/// triggers a reconcile when it does.
async fn apply_budget(client: &Client, cached: &Cached, celery: &Celery, group: Option<&WorkerGroup>) -> Result<(), ApplyError> {
    let ns = celery.namespace().unwrap_or_default();
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    let name = pool_name(celery, group);
    match build::worker_disruption_budget(celery, group)? {
        Some(budget) => {
            read_own(&api, &name, celery).await?;
            apply(&api, &budget, FIELD_MANAGER).await.map(|_| ())
        }
        None => match Cached::find(&cached.budgets, &name, &ns) {
            Some(b) if controlled_by(&*b, celery) => delete(&api, &name, celery).await,
            _ => Ok(()),
        },
    }
}

fn controlled_by<K: Resource>(object: &K, celery: &Celery) -> bool {
    object.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == celery.meta().uid.as_ref())
}

/// Reads a child; fails with `NameConflict` when another object controls that name.
async fn read_own<K>(api: &Api<K>, name: &str, celery: &Celery) -> Result<Option<K>, ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let existing = api.get_opt(name).await.map_err(|source| api_error("read", &K::kind(&()), celery, name, source))?;
    let Some(existing) = existing else {
        return Ok(None);
    };
    let controller = existing.owner_references().iter().find(|o| o.controller == Some(true));
    match controller {
        Some(owner) if Some(&owner.uid) != celery.meta().uid.as_ref() => Err(ApplyError::Rejected {
            reason: NAME_CONFLICT,
            message: format!(
                "{} {}/{name} already exists and is controlled by {} {}; rename spec.common.appName or remove that {}",
                K::kind(&()),
                celery.namespace().unwrap_or_default(),
                owner.kind,
                owner.name,
                K::kind(&()),
            ),
        }),
        _ => Ok(Some(existing)),
    }
}

/// Applies the Deployment of a pool of workers (`workerSpec`'s, or `group`'s).
///
/// With a fixed count the reconciler owns `replicas`. With a scaling policy it leaves the
/// field out, and [`SCALER_MANAGER`] owns it instead: a new Deployment starts at
/// `numOfWorkers` clamped to the bounds, an existing one keeps its count unless it is below a
/// raised `minReplicas`. One above a lowered `maxReplicas` is left to the autoscaling loop,
/// which lowers it at its next sample choosing who goes (idle workers first, see
/// [`crate::decide::scalein`]): a scale-down here would let Kubernetes pick the victims.
/// NB: the scaler must own the field *before* the reconciler's apply drops it, or the API
/// server would reset it to its default of 1 and kill workers for a moment.
async fn apply_pool(
    api: &Api<Deployment>,
    celery: &Celery,
    group: Option<&WorkerGroup>,
    scaling: &Scaling,
    current: Option<Deployment>,
) -> Result<Deployment, ApplyError> {
    let name = pool_name(celery, group);
    let Some(min_replicas) = scaling.floor() else {
        let replicas = scaling.initial_replicas(num_of_workers(celery, group));
        return apply_deployment(api, &build_pool(celery, group, Some(replicas))?, current.as_ref()).await;
    };
    match current {
        None => {
            // Created with its first count, but stamped as the worker later reconciles build
            // (without `replicas`), so that the reconcile its creation triggers finds it as
            // applied and writes nothing (it re-applied all three children before).
            let initial = scaling.initial_replicas(num_of_workers(celery, group));
            let stamp = digest(&build_pool(celery, group, None)?);
            apply_stamped(api, &build_pool(celery, group, Some(initial))?, FIELD_MANAGER, Some(stamp)).await?;
            scale(api, celery, &name, initial).await
        }
        Some(existing) => {
            let replicas = existing.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let bounded = replicas.max(min_replicas);
            if bounded != replicas || !replicas_kept(&existing, scaling) {
                scale(api, celery, &name, bounded).await?;
            }
            apply_deployment(api, &build_pool(celery, group, None)?, Some(&existing)).await
        }
    }
}

/// Field manager of the patches that remove what the spec does not describe.
const ADOPTION_MANAGER: &str = "celery-operator-adoption";

/// Applies a child Deployment so that its pod template holds exactly what `desired` describes.
///
/// Server-side apply leaves list entries of other managers in place (see [`adopt`]). When
/// `existing` has any, the Deployment is paused, applied, rid of those entries and resumed,
/// so it rolls out once, straight to the desired template: a worker never runs beside the one
/// it replaces. A Deployment paused by someone else stays paused.
async fn apply_deployment(
    api: &Api<Deployment>,
    desired: &Deployment,
    existing: Option<&Deployment>,
) -> Result<Deployment, ApplyError> {
    let paused_by_us = existing.is_some_and(|d| paused_by(d, ADOPTION_MANAGER));
    if !paused_by_us && existing.is_none_or(|d| adopt::foreign_entries(d, desired).is_empty()) {
        return apply(api, desired, FIELD_MANAGER).await;
    }
    let name = desired.name_any();
    let ns = desired.namespace().unwrap_or_default();
    let paused_before = existing.and_then(|d| d.spec.as_ref()?.paused).unwrap_or(false) && !paused_by_us;
    if !paused_before && !paused_by_us {
        json_patch(api, &name, &ns, vec![serde_json::json!({"op": "add", "path": "/spec/paused", "value": true})]).await?;
    }
    let applied = apply(api, desired, FIELD_MANAGER).await?;
    let mut ops = adopt::removal_patch(&adopt::foreign_entries(&applied, desired));
    if !paused_before {
        ops.push(serde_json::json!({"op": "remove", "path": "/spec/paused"}));
    }
    if ops.is_empty() {
        return Ok(applied);
    }
    tracing::info!(deployment = %format!("{ns}/{name}"), removed = ops.len(), "removed from the pod template what the spec does not describe");
    json_patch(api, &name, &ns, ops).await
}

/// The keys of `f:spec` whose managers the operator reads ([`paused_by`], [`replicas_kept`]).
const SPEC_FIELDS_READ: [&str; 2] = ["f:replicas", "f:paused"];

/// Trims an object on its way into a cache to what the operator reads of its managedFields:
/// each entry's manager, operation and subresource, and of its field set only `f:spec`'s
/// `f:replicas` and `f:paused`. The field sets are most of a cached object's memory (a
/// Deployment's run to every field of its pod template, as JSON trees), and at 10,000 apps the
/// caches hold 10,000 Celery objects and their Deployments.
pub fn trim_for_cache<K: Resource>(object: &mut K) {
    for entry in object.meta_mut().managed_fields.iter_mut().flatten() {
        let Some(fields) = entry.fields_v1.as_mut() else { continue };
        let spec: serde_json::Map<String, serde_json::Value> = fields
            .0
            .get("f:spec")
            .and_then(serde_json::Value::as_object)
            .map(|spec| SPEC_FIELDS_READ.iter().filter_map(|key| Some((key.to_string(), spec.get(*key)?.clone()))).collect())
            .unwrap_or_default();
        fields.0 =
            if spec.is_empty() { serde_json::Value::Object(Default::default()) } else { serde_json::json!({ "f:spec": spec }) };
    }
}

fn paused_by(d: &Deployment, manager: &str) -> bool {
    d.spec.as_ref().and_then(|s| s.paused) == Some(true)
        && d.metadata.managed_fields.iter().flatten().any(|entry| {
            entry.manager.as_deref() == Some(manager)
                && entry.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:paused")).is_some())
        })
}

/// A JSON patch as [`ADOPTION_MANAGER`]. A failed `test` (the object changed meanwhile) is
/// worth a retry, not a `Degraded` condition.
async fn json_patch(api: &Api<Deployment>, name: &str, ns: &str, ops: Vec<serde_json::Value>) -> Result<Deployment, ApplyError> {
    let failed = |source| ApplyError::Api {
        action: "patch",
        kind: "Deployment".into(),
        namespace: ns.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(|e| failed(kube::Error::SerdeError(e)))?;
    let params = PatchParams { field_manager: Some(ADOPTION_MANAGER.into()), ..Default::default() };
    api.patch(name, &params, &Patch::Json::<()>(patch)).await.map_err(failed)
}

/// Writes the worker `replicas` as the scaler's field manager.
async fn scale(api: &Api<Deployment>, celery: &Celery, name: &str, replicas: i32) -> Result<Deployment, ApplyError> {
    api.patch(name, &PatchParams::apply(SCALER_MANAGER).force(), &Patch::Apply(names::scale_patch(name, replicas)))
        .await
        .map_err(|source| classify("scale", "Deployment", celery, name, source))
}

/// Whether `manager` holds `spec.replicas` of the Deployment.
/// Whether the count of `d` stays when the reconciler's apply leaves `replicas` out: the
/// scaler owns it, or (for a pool left to a HorizontalPodAutoscaler) anyone but the reconciler,
/// the HPA included: taking it back from the HPA after each of its scales would be a write per
/// reconcile for nothing.
fn replicas_kept(d: &Deployment, scaling: &Scaling) -> bool {
    match scaling {
        Scaling::External { .. } => {
            !manages_replicas(d, FIELD_MANAGER)
                && d.metadata.managed_fields.iter().flatten().any(|entry| {
                    entry.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
                })
        }
        _ => manages_replicas(d, SCALER_MANAGER),
    }
}

fn manages_replicas(d: &Deployment, manager: &str) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(manager)
            && entry.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
    })
}

async fn apply<K>(api: &Api<K>, object: &K, manager: &str) -> Result<K, ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    apply_stamped(api, object, manager, None).await
}

/// Applies `object` as `manager`; the reconciler's applies carry [`APPLIED_ANNOTATION`], the
/// digest of `object` unless `stamp` says otherwise.
async fn apply_stamped<K>(api: &Api<K>, object: &K, manager: &str, stamp: Option<String>) -> Result<K, ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let mut object = object.clone();
    if manager == FIELD_MANAGER {
        let stamp = stamp.unwrap_or_else(|| digest(&object));
        object.meta_mut().annotations.get_or_insert_default().insert(APPLIED_ANNOTATION.into(), stamp);
    }
    // Server-side apply needs apiVersion and kind in the body; k8s-openapi types omit them.
    let mut body = serde_json::to_value(&mut object).unwrap_or_default();
    body["apiVersion"] = K::api_version(&()).into();
    body["kind"] = K::kind(&()).into();
    api.patch(&name, &PatchParams::apply(manager).force(), &Patch::Apply(&body)).await.map_err(|source| {
        let ns = object.meta().namespace.clone().unwrap_or_default();
        classify_in("apply", &K::kind(&()), ns, &name, source)
    })
}

async fn delete<K>(api: &Api<K>, name: &str, celery: &Celery) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(api_error("delete", &K::kind(&()), celery, name, source)),
    }
}

fn api_error(action: &'static str, kind: &str, celery: &Celery, name: &str, source: kube::Error) -> ApplyError {
    ApplyError::Api {
        action,
        kind: kind.to_string(),
        namespace: celery.namespace().unwrap_or_default(),
        name: name.to_string(),
        source: Box::new(source),
    }
}

fn classify(action: &'static str, kind: &str, celery: &Celery, name: &str, source: kube::Error) -> ApplyError {
    classify_in(action, kind, celery.namespace().unwrap_or_default(), name, source)
}

/// Separates refusals that only a change of the spec can cure (422 Invalid) from failures
/// worth a retry.
fn classify_in(action: &'static str, kind: &str, namespace: String, name: &str, source: kube::Error) -> ApplyError {
    if let kube::Error::Api(status) = &source
        && status.code == 422
    {
        return ApplyError::Rejected {
            reason: APPLY_REJECTED,
            message: format!("the API server refused {kind} {namespace}/{name}: {}", status.message),
        };
    }
    ApplyError::Api { action, kind: kind.to_string(), namespace, name: name.to_string(), source: Box::new(source) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::validate::Scaling;

    /// A Deployment as the API server returns it: the reconciler's apply (the pod template),
    /// the scaler's (`replicas`) and someone's `kubectl rollout pause`.
    fn written() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w", "namespace": "ns", "managedFields": [
                {"manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {"f:selector": {}, "f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"worker\"}": {".": {}, "f:image": {}}}}}}
                }},
                {"manager": SCALER_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:replicas": {}}}},
                {"manager": "kubectl", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:paused": {}, "f:strategy": {}}}},
                {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:replicas": {}}}}
            ]},
            "spec": {"paused": true, "replicas": 3, "selector": {}, "template": {}}
        }))
        .expect("a Deployment")
    }

    #[test]
    fn a_trimmed_object_answers_every_question_the_operator_asks_of_its_managed_fields() {
        let full = written();
        let mut trimmed = full.clone();
        trim_for_cache(&mut trimmed);
        let scaled = Scaling::External { autoscaler: "h".into() };
        for d in [&full, &trimmed] {
            assert!(manages_replicas(d, SCALER_MANAGER) && !manages_replicas(d, FIELD_MANAGER));
            assert!(paused_by(d, "kubectl") && !paused_by(d, SCALER_MANAGER));
            assert!(replicas_kept(d, &scaled));
        }
        let kept: Vec<_> = trimmed.metadata.managed_fields.iter().flatten().map(|e| e.fields_v1.clone().unwrap().0).collect();
        assert_eq!(
            kept,
            [
                serde_json::json!({}),
                serde_json::json!({"f:spec": {"f:replicas": {}}}),
                serde_json::json!({"f:spec": {"f:paused": {}}}),
                serde_json::json!({}),
            ]
        );
        let writers = |d: &Deployment| -> Vec<_> {
            d.metadata
                .managed_fields
                .iter()
                .flatten()
                .map(|e| (e.manager.clone(), e.operation.clone(), e.subresource.clone()))
                .collect()
        };
        assert_eq!(writers(&trimmed), writers(&full), "who wrote what, and how, is kept");
    }
}
