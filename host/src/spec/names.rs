//! The names the operator gives and recognises: its children, their labels, the environment it
//! sets, and the field managers it writes as. Shared by the reconciler, which creates the
//! children, and the autoscaler, which finds and scales them.

use crate::crd::{Celery, CelerySpec};

/// Value of `app.kubernetes.io/managed-by` on every child; the operator watches by it.
pub const MANAGED_BY: &str = "celery-operator";
/// Label selector matching every child of any Celery app.
pub const CHILD_SELECTOR: &str = "app.kubernetes.io/managed-by=celery-operator";

/// Pod labels a user may not set: the operator selects pods by them.
pub const RESERVED_POD_LABELS: &[&str] = &[
    "app",
    "run",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
];

/// Environment variables the operator sets from the spec.
pub const BROKER_ENV: &str = "CELERY_BROKER_URL";
pub const RESULT_BACKEND_ENV: &str = "CELERY_RESULT_BACKEND";
pub const FLOWER_AUTH_ENV: &str = "FLOWER_BASIC_AUTH";

/// Name of the worker Deployment.
pub fn worker_name(celery: &Celery) -> String {
    format!("{}-celery-worker", celery.spec.common.app_name)
}

/// Name of the Flower Deployment and Service.
pub fn flower_name(celery: &Celery) -> String {
    format!("{}-flower", celery.spec.common.app_name)
}

/// The server-side apply body that sets a worker Deployment's `replicas` and nothing else:
/// applied as [`SCALER_MANAGER`], by the reconciler for a new Deployment and by the loop.
pub fn scale_patch(deployment: &str, replicas: i32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": deployment },
        "spec": { "replicas": replicas },
    })
}

/// Field manager of everything the reconciler writes.
pub const FIELD_MANAGER: &str = "celery-operator";
/// Field manager of the worker `replicas` while a scaling policy decides them.
pub const SCALER_MANAGER: &str = "celery-operator-autoscaler";

/// Names of the environment variables the operator itself adds to the worker and Flower
/// containers, so validation can refuse a user variable that would collide with one.
pub fn generated_env_names(celery_spec: &CelerySpec) -> Vec<&'static str> {
    let mut names = Vec::new();
    if celery_spec.broker.is_some() {
        names.push(BROKER_ENV);
    }
    if celery_spec.result_backend.is_some() {
        names.push(RESULT_BACKEND_ENV);
    }
    if celery_spec.flower_spec.basic_auth.is_some() {
        names.push(FLOWER_AUTH_ENV);
    }
    names
}
