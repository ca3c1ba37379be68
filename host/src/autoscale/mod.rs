//! Autoscaling: from a sample, through a policy, to a replica count.
//!
//! - [`stabilize`]: the pure arithmetic the host applies to every policy answer: the bounds of
//!   the resource, the scale-down stabilisation window and gradual steps down. No I/O, so it
//!   is tested as values and shared by the loop and `celery-operator policy simulate`.
//! - [`cluster`]: what the API server says about the worker pods and Deployments, kept by
//!   watches (never polled per app), and their CPU and memory from `metrics.k8s.io`.
//! - [`progress`]: tasks in progress per worker pod from the app's Flower (optional), and the
//!   backlog through Flower for apps whose broker only Flower knows.
//! - [`sampler`]: one sample of one app (broker, pods) and its bounded history.
//! - [`scaler`]: the loop of one app (sample → policy → bounds → damping → scale → status),
//!   one task per autoscaled app, started by the reconciler and stopped when the app goes.

pub mod cluster;
pub mod progress;
pub mod sampler;
pub mod scaler;
pub mod stabilize;

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
        }
    }
}
