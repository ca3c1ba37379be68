//! What a `Celery` spec means, worked out once and handed on: the first layer above the API
//! types ([`crate::crd`]), below everything that acts on an app.
//!
//! - [`validate`]: judges what the schema could not and resolves the scaling in effect
//!   ([`Scaling`](validate::Scaling)). Pure.
//! - [`names`]: the names of the children, their labels and the field managers.
//! - [`Plan`] and [`Handoff`]: what the reconciler hands an app's autoscaling loop after it
//!   validated the spec and applied the children. The hand-off is one way: the loop never
//!   reads or validates the spec itself.

pub mod names;
pub mod validate;

use std::sync::Arc;

use kube::ResourceExt;

use crate::crd::Celery;
use validate::{PolicyRef, Scaling};

/// What one autoscaling loop runs on: the app as the reconciler saw it, the pool of workers the
/// loop scales, and the scaling it validated from that spec.
#[derive(Debug)]
pub struct Plan {
    /// The object as reconciled, without its status and managed fields ([`thin`]): its
    /// identity, annotations, generation and spec. The loop keeps its plan for the app's life,
    /// and the whole object would be a second copy of every app beside the controller's cache
    /// (which replaces its own at every status write).
    pub celery: Arc<Celery>,
    pub pool: PoolRef,
    pub policies: Vec<PolicyRef>,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub tuning: Tuning,
}

impl Plan {
    /// The generation of the spec this plan was validated from.
    pub fn generation(&self) -> Option<i64> {
        self.celery.metadata.generation
    }
}

/// The pool of workers a loop scales: `workerSpec`'s (`group` is `None`) or a worker group's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRef {
    pub group: Option<String>,
    /// Its Deployment.
    pub deployment: String,
    /// The queues it consumes.
    pub queues: Vec<String>,
    /// Tasks one of its workers runs at once.
    pub concurrency: u32,
}

impl PoolRef {
    /// `workerSpec`'s pool.
    pub fn default_pool(celery: &Celery) -> Self {
        let w = &celery.spec.worker_spec;
        Self {
            group: None,
            deployment: names::worker_name(celery),
            queues: split_queues(&w.queues),
            concurrency: u32::try_from(w.concurrency).unwrap_or(1),
        }
    }

    /// The pool of the group `name`, if the spec has it.
    pub fn group(celery: &Celery, name: &str) -> Option<Self> {
        let g = celery.spec.worker_groups.iter().find(|g| g.name == name)?;
        Some(Self {
            group: Some(g.name.clone()),
            deployment: names::group_name(celery, &g.name),
            queues: split_queues(&g.queues),
            concurrency: u32::try_from(g.concurrency).unwrap_or(1),
        })
    }
}

fn split_queues(queues: &str) -> Vec<String> {
    queues.split(',').map(str::trim).filter(|q| !q.is_empty()).map(String::from).collect()
}

/// One hand-off from the reconciler to the autoscaler, after a reconcile of `celery`: the
/// pools of the app that a policy scales from now on, one plan each (`workerSpec`'s first,
/// then the groups'); a pool without a plan (a fixed count, or a spec that failed validation)
/// is no longer autoscaled.
#[derive(Debug)]
pub struct Handoff {
    pub celery: Arc<Celery>,
    pub plans: Vec<Arc<Plan>>,
}

impl Handoff {
    /// The hand-off for `celery` reconciled with `scaling` for `workerSpec` and `groups` for
    /// its groups, in the spec's order (`None`: the spec is invalid).
    pub fn new(celery: Arc<Celery>, scaling: Option<(&Scaling, &[Scaling])>) -> Self {
        let Some((scaling, groups)) = scaling else {
            return Self { celery, plans: Vec::new() };
        };
        let thin = Arc::new(thin(&celery));
        let pools = std::iter::once((Some(PoolRef::default_pool(&celery)), scaling))
            .chain(celery.spec.worker_groups.iter().zip(groups).map(|(g, scaling)| (PoolRef::group(&celery, &g.name), scaling)));
        let plans = pools
            .filter_map(|(pool, scaling)| match scaling {
                Scaling::Policies { policies, min_replicas, max_replicas, tuning } => Some(Arc::new(Plan {
                    celery: Arc::clone(&thin),
                    pool: pool?,
                    policies: policies.clone(),
                    min_replicas: *min_replicas,
                    max_replicas: *max_replicas,
                    tuning: Tuning::clone(tuning),
                })),
                Scaling::Fixed { .. } | Scaling::External { .. } => None,
            })
            .collect();
        Self { celery, plans }
    }
}

/// What a plan keeps of `celery`: all but its status and managed fields.
fn thin(celery: &Celery) -> Celery {
    let meta = &celery.metadata;
    let mut thin = Celery::new(&celery.name_any(), celery.spec.clone());
    thin.metadata = kube::api::ObjectMeta {
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        generation: meta.generation,
        resource_version: meta.resource_version.clone(),
        annotations: meta.annotations.clone(),
        ..thin.metadata
    };
    thin
}

/// The reconciler's end of the hand-off.
pub type HandoffSender = tokio::sync::mpsc::UnboundedSender<Handoff>;

use std::time::Duration;

/// The loop's timing and damping of one app, from `spec.autoscaling` (defaults for the
/// Python operator's `scaleTargetRef`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// Time between two samples and decisions.
    pub interval: Duration,
    /// A lower count is applied only when it was the highest recommended within this window.
    pub stabilization: Duration,
    /// At most this percentage of the current workers (and at least one) goes in one step.
    pub step_percent: u32,
    /// Time between two scale-down steps.
    pub step_period: Duration,
    /// Replicas to raise to while metrics are unknown or the policy fails.
    pub fallback: Option<u32>,
    /// Memory of one policy call, in bytes; `None` for the runner's default.
    pub policy_memory: Option<u64>,
    /// What a scale-down does with busy workers.
    pub busy_workers: crate::crd::BusyWorkers,
    /// The longest a scale-down waits for busy workers (`busyWorkers: Wait`).
    pub max_wait: Duration,
    /// Busy workers waited for are told to stop taking tasks.
    pub drain: bool,
    /// How fast workers may be added; `None`: at once.
    pub scale_up: Option<crate::decide::stabilize::UpLimit>,
    /// Time windows of other bounds, checked (they parse).
    pub schedules: Vec<crate::decide::schedule::Window>,
    /// How the answers of several policies become one.
    pub combine: crate::crd::Combine,
    /// A policy asked beside the real ones, never applied.
    pub shadow: Option<crate::spec::validate::PolicyRef>,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            stabilization: Duration::from_secs(60),
            step_percent: 50,
            step_period: Duration::from_secs(15),
            fallback: None,
            policy_memory: None,
            busy_workers: crate::crd::BusyWorkers::Terminate,
            max_wait: Duration::from_secs(1800),
            drain: false,
            scale_up: None,
            schedules: Vec::new(),
            combine: crate::crd::Combine::Max,
            shadow: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_off_plans_each_autoscaled_pool() {
        let mut celery: Celery = serde_yaml::from_str(
            "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop, namespace: prod}
spec:
  common: {appName: web, celeryApp: app, image: i}
  workerSpec: {queues: celery}
  workerGroups:
  - {name: fixed, queues: a, numOfWorkers: 2}
  - {name: scaled, queues: 'b, c', concurrency: 4, autoscaling: {policy: load, maxReplicas: 5}}
",
        )
        .unwrap();
        celery.metadata.uid = Some("uid".into());
        let celery = Arc::new(celery);
        let scaling = validate::validate(&celery.spec).unwrap();
        let groups = validate::groups(&celery.spec).unwrap();
        let handoff = Handoff::new(Arc::clone(&celery), Some((&scaling, &groups)));
        // workerSpec's count is fixed, one group is too: one loop, the scaled group's.
        assert_eq!(handoff.plans.len(), 1);
        let plan = &handoff.plans[0];
        let want = PoolRef {
            group: Some("scaled".into()),
            deployment: "web-celery-worker-scaled".into(),
            queues: vec!["b".into(), "c".into()],
            concurrency: 4,
        };
        assert_eq!(plan.pool, want);
        assert_eq!((plan.min_replicas, plan.max_replicas), (1, 5));
        // A pool left to a HorizontalPodAutoscaler has no loop, whatever its spec says.
        let mut left = groups.clone();
        left[1] = validate::Scaling::External { autoscaler: "keda-hpa-scaled".into() };
        assert!(Handoff::new(Arc::clone(&celery), Some((&scaling, &left))).plans.is_empty());
        assert_eq!(left[1].policy_label(), "hpa/keda-hpa-scaled");
        assert!(Handoff::new(celery, None).plans.is_empty(), "an invalid spec stops every loop");
    }
}
