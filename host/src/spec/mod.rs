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

use crate::crd::Celery;
use validate::{PolicyRef, Scaling};

/// What one autoscaling loop runs on: the app as the reconciler saw it and the scaling it
/// validated from that spec.
#[derive(Debug)]
pub struct Plan {
    /// The object as reconciled (its spec, generation and the status it had then).
    pub celery: Arc<Celery>,
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

/// One hand-off from the reconciler to the autoscaler, after a reconcile of `celery`: the app
/// is autoscaled by `plan` from now on or, with `None`, no longer (a fixed count, or a spec
/// that failed validation).
#[derive(Debug)]
pub struct Handoff {
    pub celery: Arc<Celery>,
    pub plan: Option<Arc<Plan>>,
}

impl Handoff {
    /// The hand-off for `celery` reconciled with `scaling` (`None`: the spec is invalid).
    pub fn new(celery: Arc<Celery>, scaling: Option<&Scaling>) -> Self {
        let plan = match scaling {
            Some(Scaling::Policies { policies, min_replicas, max_replicas, tuning }) => Some(Arc::new(Plan {
                celery: Arc::clone(&celery),
                policies: policies.clone(),
                min_replicas: *min_replicas,
                max_replicas: *max_replicas,
                tuning: tuning.clone(),
            })),
            _ => None,
        };
        Self { celery, plan }
    }
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
        }
    }
}
