//! celery-operator: runs Celery applications on Kubernetes and scales their workers with
//! policies compiled to WebAssembly.
//!
//! - [`crd`]: the `Celery` API types, the source of `deploy/crd.yaml`.
//! - [`reconcile`]: one reconcile of one app, as steps: validate → check policies → build →
//!   apply → status.
//! - [`controller`]: the watches that trigger reconciles.
//! - [`operator`]: `celery-operator run`, wiring controller, leader election and endpoints.
//! - [`leader`], [`server`], [`telemetry`]: Lease election, HTTP endpoints, logs and metrics.
//! - [`conditions`]: condition types and reasons; [`quantity`]: resource quantities.
//! - [`policy`]: the WebAssembly policy runtime and registry.
//! - [`autoscale`]: the autoscaling loop of each autoscaled app (sample → policy → bounds →
//!   damping → scale), the watched view of worker pods it samples, and the pure bounds and
//!   stabilisation of policy answers.
//! - [`metrics`]: what the brokers report about the queues (Redis, RabbitMQ).
//! - [`cli`]: the command line.

pub mod autoscale;
pub mod cli;
pub mod conditions;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod policy;
pub mod quantity;
pub mod reconcile;
pub mod server;
pub mod telemetry;
