//! The names the operator gives and recognises: its children, their labels, the environment it
//! sets, and the field managers it writes as. Shared by the reconciler, which creates the
//! children, and the autoscaler, which finds and scales them.

use crate::crd::{Celery, CelerySpec};

/// Value of `app.kubernetes.io/managed-by` on every child; the operator watches by it.
pub const MANAGED_BY: &str = "celery-operator";
/// Label selector matching every child of any Celery app.
pub const CHILD_SELECTOR: &str = "app.kubernetes.io/managed-by=celery-operator";
/// Label selector matching the children of worker groups: those with a [`GROUP_LABEL`].
pub const GROUP_CHILD_SELECTOR: &str = "app.kubernetes.io/managed-by=celery-operator,celeryproject.org/worker-group";

/// Pod labels a user may not set: the operator selects pods by them.
pub const RESERVED_POD_LABELS: &[&str] = &[
    "app",
    "run",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    COMPONENT_LABEL,
    GROUP_LABEL,
];

/// Every child's component (`worker`, `flower`, `beat`), on the objects and on the pods of the
/// children that came after the Python operator's (on its children's pods the labels stay as
/// they were: a new pod label would restart every worker when the operator is upgraded).
pub const COMPONENT_LABEL: &str = "celeryproject.org/component";
/// The worker group of a group's Deployment and pods (`spec.workerGroups[].name`).
pub const GROUP_LABEL: &str = "celeryproject.org/worker-group";

/// Environment variables the operator sets from the spec.
/// The operator's container in each kind of pod; extra containers may not take these names.
pub const WORKER_CONTAINER: &str = "worker";
pub const BEAT_CONTAINER: &str = "beat";
pub const FLOWER_CONTAINER: &str = "flower";

/// Where beat's file scheduler keeps its state, and the volume the operator mounts there.
pub const BEAT_SCHEDULE_DIR: &str = "/var/lib/celery-beat";
pub const BEAT_VOLUME: &str = "beat-schedule";

pub const BROKER_ENV: &str = "CELERY_BROKER_URL";
pub const RESULT_BACKEND_ENV: &str = "CELERY_RESULT_BACKEND";
pub const FLOWER_AUTH_ENV: &str = "FLOWER_BASIC_AUTH";

/// Name of the worker Deployment.
pub fn worker_name(celery: &Celery) -> String {
    format!("{}-celery-worker", celery.spec.common.app_name)
}

/// Name of a worker group's Deployment.
pub fn group_name(celery: &Celery, group: &str) -> String {
    format!("{}-celery-worker-{group}", celery.spec.common.app_name)
}

/// Name of the beat Deployment.
pub fn beat_name(celery: &Celery) -> String {
    format!("{}-celery-beat", celery.spec.common.app_name)
}

/// The key of a pool of workers in the autoscaler's view of the pods: the app (the Celery
/// object's name) for `workerSpec`'s workers, `<app>/<group>` for a group's. A slash never
/// appears in a name, so the two never meet.
pub fn pool_key(app: &str, group: Option<&str>) -> String {
    match group {
        None => app.to_string(),
        Some(g) => format!("{app}/{g}"),
    }
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

/// Field manager of a worker group's autoscaler status (`status.workerGroups[name]`): one per
/// group, since a server-side apply removes what its manager wrote before and left out.
pub fn group_scaler_manager(group: &str) -> String {
    format!("{SCALER_MANAGER}.{group}")
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn the_group_selector_is_the_child_selector_and_the_group_label() {
        assert_eq!(super::GROUP_CHILD_SELECTOR, format!("{},{}", super::CHILD_SELECTOR, super::GROUP_LABEL));
    }
}
