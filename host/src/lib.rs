//! celery-operator: runs Celery applications on Kubernetes and scales their workers with
//! policies compiled to WebAssembly.
//!
//! Data flows one way through the modules, each using only those listed before it:
//!
//! 1. [`crd`] (the `Celery` API types, the source of `deploy/crd.yaml`), [`conditions`]
//!    (condition types and reasons), [`quantity`] (resource quantities), [`redact`]
//!    (credentials kept out of messages), [`scope`] (the namespaces watched), [`telemetry`]
//!    (logs and metrics), [`leader`] (Lease election and the write gate).
//! 2. The decision core, pure: [`spec`] (what a spec means: validation, the names of the
//!    children, the plan handed to the autoscaler) and [`decide`] (bounds, combining,
//!    damping: one tick's replica count).
//! 3. Services: [`policy`] (the WebAssembly policy runtime and registry), [`metrics`] (what
//!    brokers and Flower report about the queues), [`report`] (the one writer of status and
//!    events).
//! 4. The two actors: [`reconcile`] (one reconcile of one app: validate → check policies →
//!    build → apply → hand off → status) and [`autoscale`] (the loop of each autoscaled app:
//!    sample → policy → decide → scale → status), joined only by the one-way hand-off.
//! 5. [`controller`] (the watches that trigger reconciles, and the autoscaler beside them),
//!    [`server`] (HTTP endpoints), [`operator`] (`celery-operator run`: controllers, leader
//!    election, endpoints), [`kubectl`] (`celery-operator trace` and the kubectl plugin) and
//!    [`cli`] (the command line).

pub mod autoscale;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod decide;
pub mod kubectl;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod quantity;
pub mod reconcile;
pub mod redact;
pub mod report;
pub mod scope;
pub mod server;
pub mod spec;
pub mod telemetry;
