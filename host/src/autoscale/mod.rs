//! Autoscaling: from a sample, through a policy, to a replica count.
//!
//! - [`stabilize`]: the pure arithmetic the host applies to every policy answer: the bounds of
//!   the resource and a scale-down stabilisation window. No I/O, so it is tested as values and
//!   shared by the autoscaling loop and `celery-operator policy simulate`.

pub mod stabilize;
