//! Autoscaling: from a sample, through a policy, to a replica count.
//!
//! - [`cluster`]: what the API server says about the worker pods and Deployments, kept by
//!   watches (never polled per app), and their CPU and memory from `metrics.k8s.io`.
//! - [`progress`]: tasks in progress per worker pod from the app's Flower (optional), and the
//!   backlog through Flower for apps whose broker only Flower knows.
//! - [`reader`]: the broker and Flower of one app, read once for all its loops (one round trip
//!   for the queues of every worker group).
//! - [`sampler`]: one sample of one app (broker, pods) and its bounded history.
//! - [`scaler`]: the loop of one pool of workers (sample → policy → bounds → damping → scale →
//!   status), one task per autoscaled `workerSpec` or worker group, started by the reconciler
//!   and stopped when the app or the group goes.
//! - [`trace`]: each pool's recent ticks, in a ring bounded by time, served by `/trace` as the
//!   CSV `policy simulate` replays.

pub mod cluster;
pub mod progress;
pub mod reader;
pub mod sampler;
pub mod scaler;
pub mod trace;
