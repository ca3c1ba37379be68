//! Condition types and reasons of `Celery.status.conditions`, in one place so that status,
//! events, tests and the README agree. Reasons are PascalCase, as API conventions ask.

/// The app runs as declared: children exist and their replicas are ready. False, with the
/// `Degraded` reason, while the spec cannot be acted on in full (an unusable policy).
pub const READY: &str = "Ready";
/// A change is being rolled out to the children.
pub const PROGRESSING: &str = "Progressing";
/// A scaling policy decides the worker replicas from fresh metrics. Written by the autoscaler.
pub const SCALING_ACTIVE: &str = "ScalingActive";
/// Something needs a person: the spec is invalid, the API server refused a child, a rollout
/// is stuck.
pub const DEGRADED: &str = "Degraded";

/// Every child exists and all replicas are ready.
pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
/// Fewer worker replicas are ready than desired.
pub const WORKERS_NOT_READY: &str = "WorkersNotReady";
/// Fewer Flower replicas are ready than desired.
pub const FLOWER_NOT_READY: &str = "FlowerNotReady";
/// The beat pod is not ready.
pub const BEAT_NOT_READY: &str = "BeatNotReady";
/// A child Deployment is rolling out a new template or scaling.
pub const ROLLING_OUT: &str = "RollingOut";
/// The children run the current spec.
pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
/// Nothing is wrong.
pub const AS_EXPECTED: &str = "AsExpected";
/// A field of the spec is invalid; the message names it. Fix the resource.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// The API server refused a child built from the spec; the message quotes it.
pub const APPLY_REJECTED: &str = "ApplyRejected";
/// A child's name is taken by an object another controller owns.
pub const NAME_CONFLICT: &str = "NameConflict";
/// A child Deployment exceeded its progress deadline (image pull errors, crash loops, quota).
pub const ROLLOUT_STUCK: &str = "RolloutStuck";
/// A HorizontalPodAutoscaler (one of KEDA's too) scales a worker Deployment of the app: two
/// autoscalers would fight over its replicas, so the operator leaves them to it; the message
/// names it.
pub const CONFLICTING_AUTOSCALER: &str = "ConflictingAutoscaler";
/// The selected scaling policy is unknown, does not load, or is built for another contract.
pub const INVALID_POLICY: &str = "InvalidPolicy";
/// The selected scaling policy rejected its settings; the message quotes it.
pub const INVALID_SETTINGS: &str = "InvalidSettings";

/// An annotation on the resource overrides the autoscaler (`celeryproject.org/autoscaling-paused`,
/// `paused-replicas`, `paused-scale-in`, `paused-scale-out`); the message names it.
pub const PAUSED: &str = "Paused";
/// The autoscaler sampled the app and the policy answered.
pub const POLICY_DECIDING: &str = "PolicyDeciding";
/// A figure the policy needs could not be measured (broker down, wrong credentials, timeout);
/// the replica count is held.
pub const METRICS_UNAVAILABLE: &str = "MetricsUnavailable";
/// The policy failed (trap, timeout, memory limit, invalid answer); the replica count is held.
pub const POLICY_FAILED: &str = "PolicyFailed";
/// The worker Deployment does not exist yet, or the replica count could not be written.
pub const SCALE_FAILED: &str = "ScaleFailed";

/// Event reasons of the autoscaler.
pub const SCALED_UP: &str = "ScaledUp";
pub const SCALED_DOWN: &str = "ScaledDown";
/// Flower could not be read: the policy sees no tasks in progress until it can (a Warning
/// event, not a condition; the loop goes on without those figures).
pub const FLOWER_UNAVAILABLE: &str = "FlowerUnavailable";
