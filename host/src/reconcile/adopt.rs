//! What a child Deployment holds that the spec does not describe, found so that [`super::apply`]
//! can remove it. Pure: the live object and the desired one in, JSON-patch removals out.
//!
//! Server-side apply only ever removes fields its own manager set before. A Deployment made by
//! someone else (the Python operator this project replaces, whose containers are named
//! `<appName>-celery-worker` and `<appName>-flower`, or a hand edit that added an environment
//! variable) keeps every list entry that manager added: after adoption the pod template would
//! run their worker beside ours. So the entries of the pod template's keyed lists that the
//! desired object does not have are removed explicitly: containers and init containers (by
//! name), volumes (by name), and in the containers the operator sets, `env` (by name),
//! `volumeMounts` (by mount path) and `ports` (by port and protocol).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, PodSpec};

/// One list entry to remove: its JSON pointer, and the key it must still have there (checked
/// by a JSON-patch `test`, so a concurrent change fails the patch instead of removing the
/// wrong entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub path: String,
    /// Pointer of the key field of the entry (`…/name`, `…/mountPath`, `…/containerPort`).
    pub key_path: String,
    pub key: serde_json::Value,
}

/// The entries of `live`'s pod template that `desired` does not have, in an order that can be
/// applied one after the other (inside containers first, higher indices of a list first).
pub fn foreign_entries(live: &Deployment, desired: &Deployment) -> Vec<Removal> {
    let (Some(live), Some(desired)) = (pod_spec(live), pod_spec(desired)) else {
        return Vec::new();
    };
    let base = "/spec/template/spec";
    let mut out = Vec::new();
    // Entries inside containers first: removing a whole container moves those after it.
    for (i, container) in live.containers.iter().enumerate() {
        if let Some(wanted) = desired.containers.iter().find(|c| c.name == container.name) {
            inside(&mut out, &format!("{base}/containers/{i}"), container, wanted);
        }
    }
    named(&mut out, &format!("{base}/containers"), &live.containers, &desired.containers, |c| c.name.clone());
    let no_init = Vec::new();
    named(
        &mut out,
        &format!("{base}/initContainers"),
        live.init_containers.as_ref().unwrap_or(&no_init),
        desired.init_containers.as_ref().unwrap_or(&no_init),
        |c| c.name.clone(),
    );
    let no_volumes = Vec::new();
    named(
        &mut out,
        &format!("{base}/volumes"),
        live.volumes.as_ref().unwrap_or(&no_volumes),
        desired.volumes.as_ref().unwrap_or(&no_volumes),
        |v| v.name.clone(),
    );
    out
}

fn pod_spec(d: &Deployment) -> Option<&PodSpec> {
    d.spec.as_ref()?.template.spec.as_ref()
}

/// Removals within one container the operator sets.
fn inside(out: &mut Vec<Removal>, path: &str, live: &Container, desired: &Container) {
    let none_env = Vec::new();
    named(out, &format!("{path}/env"), live.env.as_ref().unwrap_or(&none_env), desired.env.as_ref().unwrap_or(&none_env), |e| {
        e.name.clone()
    });
    let none_mounts = Vec::new();
    keyed(
        out,
        &format!("{path}/volumeMounts"),
        "mountPath",
        live.volume_mounts.as_ref().unwrap_or(&none_mounts),
        desired.volume_mounts.as_ref().unwrap_or(&none_mounts),
        |m| serde_json::Value::from(m.mount_path.clone()),
    );
    let none_ports = Vec::new();
    let port_key =
        |p: &k8s_openapi::api::core::v1::ContainerPort| (p.container_port, p.protocol.clone().unwrap_or_else(|| "TCP".into()));
    let live_ports = live.ports.as_ref().unwrap_or(&none_ports);
    let wanted_ports: Vec<_> = desired.ports.as_ref().unwrap_or(&none_ports).iter().map(port_key).collect();
    for (i, port) in live_ports.iter().enumerate().rev() {
        if !wanted_ports.contains(&port_key(port)) {
            out.push(Removal {
                path: format!("{path}/ports/{i}"),
                key_path: format!("{path}/ports/{i}/containerPort"),
                key: port.container_port.into(),
            });
        }
    }
}

fn named<T>(out: &mut Vec<Removal>, path: &str, live: &[T], desired: &[T], name: impl Fn(&T) -> String) {
    keyed(out, path, "name", live, desired, |item| serde_json::Value::from(name(item)));
}

/// Removals of the entries of `live` whose key `desired` lacks, from the last to the first.
fn keyed<T>(
    out: &mut Vec<Removal>,
    path: &str,
    key_field: &str,
    live: &[T],
    desired: &[T],
    key: impl Fn(&T) -> serde_json::Value,
) {
    let wanted: Vec<serde_json::Value> = desired.iter().map(&key).collect();
    for (i, item) in live.iter().enumerate().rev() {
        let k = key(item);
        if !wanted.contains(&k) {
            out.push(Removal { path: format!("{path}/{i}"), key_path: format!("{path}/{i}/{key_field}"), key: k });
        }
    }
}

/// The JSON patch removing `removals`, each guarded by a `test` of its key.
pub fn removal_patch(removals: &[Removal]) -> Vec<serde_json::Value> {
    removals
        .iter()
        .flat_map(|r| {
            [
                serde_json::json!({"op": "test", "path": r.key_path, "value": r.key}),
                serde_json::json!({"op": "remove", "path": r.path}),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker Deployment as the Python (Kopf) operator writes it
    /// (templates/deployments/celery_worker_deployment.yaml of celery/Celery-Kubernetes-Operator).
    const PYTHON_WORKER: &str = r#"
metadata: {name: shop-celery-worker, labels: {app: shop, celery: "true"}}
spec:
  minReadySeconds: 10
  replicas: 2
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      containers:
      - name: shop-celery-worker
        image: example-image
        imagePullPolicy: Never
        command: [celery]
        args: [--app=app:celery_app, worker, --queues=celery, --loglevel=info, --concurrency=2]
"#;

    fn deployment(yaml: &str) -> Deployment {
        serde_yaml::from_str(yaml).expect("test deployment parses")
    }

    fn ours() -> Deployment {
        let celery: crate::crd::Celery = serde_yaml::from_str(
            "apiVersion: celeryproject.org/v1alpha1\nkind: Celery\nmetadata: {name: shop, namespace: ns, uid: u1}\n\
             spec: {common: {appName: shop, celeryApp: 'app:celery_app', image: example-image}}",
        )
        .expect("test celery parses");
        crate::reconcile::build::worker_deployment(&celery, Some(2)).expect("builds")
    }

    #[test]
    fn the_python_operators_container_is_foreign_after_our_apply() {
        let mut live = deployment(PYTHON_WORKER);
        // What the API server holds after our server-side apply: both containers.
        let ours = ours();
        let our_container = ours.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone();
        live.spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers.push(our_container);
        let removals = foreign_entries(&live, &ours);
        assert_eq!(
            removals,
            [Removal {
                path: "/spec/template/spec/containers/0".into(),
                key_path: "/spec/template/spec/containers/0/name".into(),
                key: "shop-celery-worker".into(),
            }]
        );
        assert_eq!(removal_patch(&removals)[0]["op"], "test");
    }

    #[test]
    fn what_the_spec_describes_is_not_foreign() {
        assert!(foreign_entries(&ours(), &ours()).is_empty());
    }

    #[test]
    fn hand_added_env_mounts_volumes_and_sidecars_are_foreign_last_first() {
        let mut live = ours();
        let pod = live.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        let extra: PodSpec = serde_yaml::from_str(
            "containers: [{name: sidecar}]\nvolumes: [{name: scratch, emptyDir: {}}]\n\
             initContainers: [{name: init}]",
        )
        .unwrap();
        pod.containers.extend(extra.containers);
        pod.volumes = extra.volumes;
        pod.init_containers = extra.init_containers;
        let worker = &mut pod.containers[0];
        let env = worker.env.get_or_insert_with(Vec::new);
        let kept = env.len();
        env.push(serde_yaml::from_str("{name: DEBUG, value: '1'}").unwrap());
        env.push(serde_yaml::from_str("{name: TRACE, value: '1'}").unwrap());
        worker.volume_mounts = Some(vec![serde_yaml::from_str("{name: scratch, mountPath: /scratch}").unwrap()]);
        let paths: Vec<String> = foreign_entries(&live, &ours()).into_iter().map(|r| r.path).collect();
        assert_eq!(
            paths,
            [
                format!("/spec/template/spec/containers/0/env/{}", kept + 1),
                format!("/spec/template/spec/containers/0/env/{kept}"),
                "/spec/template/spec/containers/0/volumeMounts/0".into(),
                "/spec/template/spec/containers/1".into(),
                "/spec/template/spec/initContainers/0".into(),
                "/spec/template/spec/volumes/0".into(),
            ]
        );
    }
}
