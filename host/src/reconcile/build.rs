//! Step 3 of a reconcile: the children of a Celery app, built as plain values.
//!
//! The worker Deployment `<appName>-celery-worker`, the Flower Deployment `<appName>-flower`
//! and the Flower Service `<appName>-flower` (and, when asked for, the workers'
//! PodDisruptionBudget `<appName>-celery-worker`), with the names, selectors and command lines of
//! the Python operator this project replaces, so a migrating user finds the same objects.
//! Everything here is a pure function of the `Celery` object: no client, tested from YAML.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource, PodSpec,
    PodTemplateSpec, Probe, SecretKeySelector, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{Beat, Celery, FLOWER_PORT, PodParts, SecretKeyRef, WorkerGroup, WorkerSpec};
use crate::spec::names::*;

use super::probes;

/// Why a child cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the Celery object has no uid or name yet, so children cannot point at it")]
    NoOwnerReference,
}

/// The worker Deployment. `replicas` is `None` when a scaling policy owns the count: leaving
/// the field out of the applied object is what keeps the reconciler from fighting the
/// autoscaler over it.
pub fn worker_deployment(celery: &Celery, replicas: Option<i32>) -> Result<Deployment, BuildError> {
    pool_deployment(celery, &celery.spec.worker_spec, None, replicas)
}

/// A worker group's Deployment `<appName>-celery-worker-<group>`; `replicas` as for
/// [`worker_deployment`].
pub fn group_deployment(celery: &Celery, group: &WorkerGroup, replicas: Option<i32>) -> Result<Deployment, BuildError> {
    pool_deployment(celery, &group.worker_spec(), Some(group), replicas)
}

/// The Deployment of a pool of workers: `workerSpec`'s (`group` is `None`) or a group's.
///
/// NB: `workerSpec`'s keeps the Python operator's selector (`app: <appName>`): a Deployment
/// selector is immutable, so changing it would break adopting the Deployments that operator
/// made. A group's pods therefore never carry that label (the default pool's Deployment would
/// count them as its own); they are selected by the app and the group instead.
fn pool_deployment(
    celery: &Celery,
    w: &WorkerSpec,
    group: Option<&WorkerGroup>,
    replicas: Option<i32>,
) -> Result<Deployment, BuildError> {
    let spec = &celery.spec;
    let mut args = vec![
        format!("--app={}", spec.common.celery_app),
        "worker".into(),
        format!("--queues={}", w.queues),
        format!("--loglevel={}", w.log_level),
        format!("--concurrency={}", w.concurrency),
    ];
    if let Some(pool) = w.pool {
        args.push(format!("--pool={}", pool.as_str()));
    }
    if let Some(n) = w.max_tasks_per_child {
        args.push(format!("--max-tasks-per-child={n}"));
    }
    args.extend(w.extra_args.iter().cloned());

    let container = Container {
        name: WORKER_CONTAINER.into(),
        liveness_probe: w.liveness_probe.clone().or_else(|| probes::worker_liveness(&args)),
        readiness_probe: Some(w.readiness_probe.clone().unwrap_or_else(probes::worker_readiness)),
        command: Some(vec!["celery".into()]),
        args: Some(args),
        resources: w.resources.clone(),
        ..app_container(celery, Vec::new())
    };
    let mut pod = pod_spec(celery, container);
    add_parts(&mut pod, merged_parts(&spec.common.pod, Some(&w.pod)));
    pod.termination_grace_period_seconds = Some(w.termination_grace_period_seconds);

    let mut labels = child_labels(celery, "worker");
    let (name, selector, mut meta_labels) = match group {
        None => {
            labels.insert("app".into(), spec.common.app_name.clone());
            labels.insert("celery".into(), "true".into());
            let selector = BTreeMap::from([("app".to_string(), spec.common.app_name.clone())]);
            (worker_name(celery), selector, labels.clone())
        }
        Some(g) => {
            labels.insert(COMPONENT_LABEL.into(), "worker".into());
            labels.insert(GROUP_LABEL.into(), g.name.clone());
            let selector = BTreeMap::from([
                ("app.kubernetes.io/instance".to_string(), celery.name_any()),
                (GROUP_LABEL.to_string(), g.name.clone()),
            ]);
            if let Some(n) = &g.node_selector {
                pod.node_selector = (!n.is_empty()).then(|| n.clone());
            }
            if let Some(t) = &g.tolerations {
                pod.tolerations = (!t.is_empty()).then(|| t.clone());
            }
            if let Some(a) = &g.affinity {
                pod.affinity = Some(a.clone());
            }
            (group_name(celery, &g.name), selector, labels.clone())
        }
    };
    meta_labels.insert(COMPONENT_LABEL.into(), "worker".into());
    Ok(Deployment {
        metadata: child_meta(celery, name, meta_labels)?,
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            // Surge instead of taking a worker away: running tasks are not cut short by a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: pod_template(celery, labels, pod),
            ..Default::default()
        }),
        status: None,
    })
}

/// The beat Deployment `<appName>-celery-beat`: one pod, replaced with `Recreate` (the old pod
/// is gone before the new one starts), so two beats never send the same periodic task.
pub fn beat_deployment(celery: &Celery, beat: &Beat) -> Result<Deployment, BuildError> {
    let spec = &celery.spec;
    let mut args = vec![format!("--app={}", spec.common.celery_app), "beat".into(), format!("--loglevel={}", beat.log_level)];
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    match &beat.scheduler {
        Some(class) => args.push(format!("--scheduler={class}")),
        None => {
            args.push(format!("--schedule={BEAT_SCHEDULE_DIR}/celerybeat-schedule"));
            mounts.push(VolumeMount { name: BEAT_VOLUME.into(), mount_path: BEAT_SCHEDULE_DIR.into(), ..Default::default() });
            let claim = beat.schedule.as_ref().and_then(|s| s.persistent_volume_claim.clone());
            volumes.push(Volume {
                name: BEAT_VOLUME.into(),
                empty_dir: claim.is_none().then(EmptyDirVolumeSource::default),
                persistent_volume_claim: claim
                    .map(|claim_name| PersistentVolumeClaimVolumeSource { claim_name, read_only: None }),
                ..Default::default()
            });
        }
    }
    args.extend(beat.extra_args.iter().cloned());
    let container = Container {
        name: BEAT_CONTAINER.into(),
        command: Some(vec!["celery".into()]),
        args: Some(args),
        resources: beat.resources.clone(),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..app_container(celery, Vec::new())
    };
    let mut pod = pod_spec(celery, container);
    pod.volumes = (!volumes.is_empty()).then_some(volumes);
    add_parts(&mut pod, merged_parts(&spec.common.pod, Some(&beat.pod)));

    let name = beat_name(celery);
    let mut labels = child_labels(celery, "beat");
    labels.insert(COMPONENT_LABEL.into(), "beat".into());
    let selector = BTreeMap::from([
        ("app.kubernetes.io/instance".to_string(), celery.name_any()),
        (COMPONENT_LABEL.to_string(), "beat".to_string()),
    ]);
    Ok(Deployment {
        metadata: child_meta(celery, name, labels.clone())?,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            strategy: Some(DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None }),
            template: pod_template(celery, labels, pod),
            ..Default::default()
        }),
        status: None,
    })
}

/// The Flower Deployment.
pub fn flower_deployment(celery: &Celery) -> Result<Deployment, BuildError> {
    let spec = &celery.spec;
    let f = &spec.flower_spec;
    let name = flower_name(celery);
    let selector = BTreeMap::from([("run".to_string(), name.clone())]);
    let mut args = vec![format!("--app={}", spec.common.celery_app), "flower".into(), format!("--port={FLOWER_PORT}")];
    args.extend(f.extra_args.iter().cloned());
    let extra_env = f.basic_auth.iter().map(|auth| secret_env(FLOWER_AUTH_ENV, &auth.name, &auth.key)).collect();

    let container = Container {
        name: FLOWER_CONTAINER.into(),
        // NB: Flower 1.0 dropped its own `flower` executable; `celery flower` is the same
        // program the Python operator's `flower --app=...` started.
        command: Some(vec!["celery".into()]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: FLOWER_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: f.resources.clone(),
        // A TCP check: Flower's HTTP endpoints sit behind basic auth when it is on.
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(FLOWER_PORT), host: None }),
            period_seconds: Some(10),
            ..Default::default()
        }),
        ..app_container(celery, extra_env)
    };
    let mut pod = pod_spec(celery, container);
    add_parts(&mut pod, merged_parts(&spec.common.pod, None));

    let mut labels = child_labels(celery, "flower");
    labels.insert("run".into(), name.clone());
    let mut meta_labels = labels.clone();
    meta_labels.insert("app".into(), name.clone());
    meta_labels.insert(COMPONENT_LABEL.into(), "flower".into());
    Ok(Deployment {
        metadata: child_meta(celery, name, meta_labels)?,
        spec: Some(DeploymentSpec {
            replicas: Some(f.replicas),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            template: pod_template(celery, labels, pod),
            ..Default::default()
        }),
        status: None,
    })
}

/// The Service in front of Flower.
pub fn flower_service(celery: &Celery) -> Result<Service, BuildError> {
    let f = &celery.spec.flower_spec;
    let name = flower_name(celery);
    let mut labels = child_labels(celery, "flower");
    labels.insert("app".into(), name.clone());
    labels.insert(COMPONENT_LABEL.into(), "flower".into());
    let mut metadata = child_meta(celery, name.clone(), labels)?;
    if !f.service.annotations.is_empty() {
        metadata.annotations = Some(f.service.annotations.clone());
    }
    Ok(Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(f.service.type_.as_str().into()),
            selector: Some(BTreeMap::from([("run".to_string(), name)])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: f.service.port,
                target_port: Some(IntOrString::Int(FLOWER_PORT)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The worker pods' PodDisruptionBudget, when `workerSpec.disruptionBudget` asks for one (a
/// group's, with `group`), named like their Deployment. It selects the pool's pods by the labels
/// only they carry: this app's instance, component worker, and the group (`workerSpec`'s pods
/// have no group label).
pub fn worker_disruption_budget(celery: &Celery, group: Option<&WorkerGroup>) -> Result<Option<PodDisruptionBudget>, BuildError> {
    let budget = match group {
        None => celery.spec.worker_spec.disruption_budget.as_ref(),
        Some(g) => g.disruption_budget.as_ref(),
    };
    let Some(budget) = budget else {
        return Ok(None);
    };
    let mut labels = child_labels(celery, "worker");
    let mut selector: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "app.kubernetes.io/instance" | "app.kubernetes.io/component"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(COMPONENT_LABEL.into(), "worker".into());
    let (name, expressions) = match group {
        None => {
            let not_a_group = LabelSelectorRequirement { key: GROUP_LABEL.into(), operator: "DoesNotExist".into(), values: None };
            (worker_name(celery), Some(vec![not_a_group]))
        }
        Some(g) => {
            selector.insert(GROUP_LABEL.into(), g.name.clone());
            labels.insert(GROUP_LABEL.into(), g.name.clone());
            (group_name(celery, &g.name), None)
        }
    };
    Ok(Some(PodDisruptionBudget {
        metadata: child_meta(celery, name, labels)?,
        spec: Some(PodDisruptionBudgetSpec {
            min_available: budget.min_available.clone(),
            max_unavailable: budget.max_unavailable.clone(),
            selector: Some(LabelSelector { match_labels: Some(selector), match_expressions: expressions }),
            ..Default::default()
        }),
        status: None,
    }))
}

/// Labels on every child and its pods (besides the Python operator's selector labels).
fn child_labels(celery: &Celery, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "celery".to_string()),
        ("app.kubernetes.io/instance".to_string(), celery.name_any()),
        ("app.kubernetes.io/component".to_string(), component.to_string()),
        ("app.kubernetes.io/managed-by".to_string(), MANAGED_BY.to_string()),
    ])
}

fn child_meta(celery: &Celery, name: String, labels: BTreeMap<String, String>) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: celery.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(celery)?]),
        ..Default::default()
    })
}

/// A controller owner reference: the garbage collector deletes the children with the app.
fn owner_reference(celery: &Celery) -> Result<OwnerReference, BuildError> {
    celery.controller_owner_ref(&()).ok_or(BuildError::NoOwnerReference)
}

fn pod_template(celery: &Celery, mut labels: BTreeMap<String, String>, spec: PodSpec) -> PodTemplateSpec {
    let common = &celery.spec.common;
    for (k, v) in &common.pod_labels {
        labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: (!common.pod_annotations.is_empty()).then(|| common.pod_annotations.clone()),
            ..Default::default()
        }),
        spec: Some(spec),
    }
}

fn pod_spec(celery: &Celery, container: Container) -> PodSpec {
    let c = &celery.spec.common;
    PodSpec {
        containers: vec![container],
        service_account_name: c.service_account_name.clone(),
        node_selector: (!c.node_selector.is_empty()).then(|| c.node_selector.clone()),
        tolerations: (!c.tolerations.is_empty()).then(|| c.tolerations.clone()),
        affinity: c.affinity.clone(),
        image_pull_secrets: (!c.image_pull_secrets.is_empty()).then(|| c.image_pull_secrets.clone()),
        security_context: c.pod_security_context.clone(),
        ..Default::default()
    }
}

/// `common`'s volumes, mounts and extra containers with those of one kind of pod (`own`)
/// merged in: an entry of `own` replaces `common`'s of the same name (a mount, of the same
/// path) where it stood, the others follow `common`'s.
pub fn merged_parts(common: &PodParts, own: Option<&PodParts>) -> PodParts {
    let Some(own) = own else { return common.clone() };
    PodParts {
        volumes: merge_by(&common.volumes, &own.volumes, |v| &v.name),
        volume_mounts: merge_by(&common.volume_mounts, &own.volume_mounts, |m| &m.mount_path),
        init_containers: merge_by(&common.init_containers, &own.init_containers, |c| &c.name),
        containers: merge_by(&common.containers, &own.containers, |c| &c.name),
    }
}

/// `base`, each entry replaced by the one of `over` with the same key, then the rest of `over`.
pub fn merge_by<T: Clone>(base: &[T], over: &[T], key: impl Fn(&T) -> &String) -> Vec<T> {
    let mut merged: Vec<T> = base.iter().map(|b| over.iter().find(|o| key(o) == key(b)).unwrap_or(b).clone()).collect();
    merged.extend(over.iter().filter(|o| !base.iter().any(|b| key(b) == key(o))).cloned());
    merged
}

/// Adds the user's volumes, mounts and containers to a pod whose first container is the
/// operator's: the mounts go to it, the extra containers after it (so `kubectl logs` and
/// `kubectl exec` still default to Celery's). Nothing is added when there is nothing to add:
/// a spec without them builds exactly the pods it built before.
fn add_parts(pod: &mut PodSpec, parts: PodParts) {
    let PodParts { volumes, volume_mounts, init_containers, containers } = parts;
    if !volume_mounts.is_empty() {
        pod.containers[0].volume_mounts.get_or_insert_with(Vec::new).extend(volume_mounts);
    }
    if !volumes.is_empty() {
        pod.volumes.get_or_insert_with(Vec::new).extend(volumes);
    }
    if !init_containers.is_empty() {
        pod.init_containers = Some(init_containers);
    }
    pod.containers.extend(containers);
}

/// The parts of a container the worker and Flower share: image, environment, security.
fn app_container(celery: &Celery, extra_env: Vec<EnvVar>) -> Container {
    let spec = &celery.spec;
    let c = &spec.common;
    let broker = spec.broker.as_ref().map(|b| url_env(BROKER_ENV, b.url.as_ref(), b.secret_ref.as_ref()));
    let backend = spec.result_backend.as_ref().map(|b| url_env(RESULT_BACKEND_ENV, b.url.as_ref(), b.secret_ref.as_ref()));
    let mut env: Vec<EnvVar> = broker.into_iter().chain(backend).collect();
    env.extend(extra_env);
    env.extend(c.env.iter().cloned());
    Container {
        image: Some(c.image.clone()),
        image_pull_policy: c.image_pull_policy.map(|p| p.as_str().to_string()),
        env: (!env.is_empty()).then_some(env),
        env_from: (!c.env_from.is_empty()).then(|| c.env_from.clone()),
        security_context: c.security_context.clone(),
        ..Default::default()
    }
}

fn url_env(name: &str, url: Option<&String>, secret: Option<&SecretKeyRef>) -> EnvVar {
    match secret {
        Some(secret) => secret_env(name, &secret.name, &secret.key),
        None => EnvVar { name: name.into(), value: url.cloned(), value_from: None },
    }
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: None }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn celery(yaml: &str) -> Celery {
        let mut c: Celery = serde_yaml::from_str(yaml).expect("test YAML parses");
        c.metadata.uid = Some("0000-uid".into());
        c
    }

    /// A resource written for the Python operator, verbatim.
    const SEED: &str = r#"
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata:
  name: celery-crd-example
  namespace: default
spec:
  common:
    appName: celery-crd-example
    celeryApp: app:celery_app
    image: example-image
  workerSpec:
    numOfWorkers: 2
    queues: celery,priority
    logLevel: info
    concurrency: 2
    maxTasksPerChild: 100
    resources:
      requests: {cpu: "100m", memory: "64Mi"}
      limits: {cpu: "200m", memory: "128Mi"}
  flowerSpec:
    replicas: 1
    resources:
      requests: {cpu: "100m", memory: "64Mi"}
      limits: {cpu: "200m", memory: "128Mi"}
  scaleTargetRef:
  - kind: worker
    minReplicas: 2
    maxReplicas: 5
    metrics:
    - name: message_queue
      target: {type: length, averageValue: 50}
"#;

    #[test]
    fn seed_resource_builds_the_python_operators_children() {
        let c = celery(SEED);
        let worker = worker_deployment(&c, Some(2)).unwrap();
        assert_eq!(worker.metadata.name.as_deref(), Some("celery-crd-example-celery-worker"));
        let spec = worker.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.selector.match_labels.as_ref().unwrap()["app"], "celery-crd-example");
        let pod = spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.command.as_deref(), Some(&["celery".to_string()][..]));
        assert_eq!(
            container.args.as_deref().unwrap(),
            [
                "--app=app:celery_app",
                "worker",
                "--queues=celery,priority",
                "--loglevel=info",
                "--concurrency=2",
                "--max-tasks-per-child=100"
            ]
        );
        let requests = container.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
        let owner = &worker.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("Celery", Some(true)));

        let flower = flower_deployment(&c).unwrap();
        assert_eq!(flower.metadata.name.as_deref(), Some("celery-crd-example-flower"));
        let fspec = flower.spec.as_ref().unwrap();
        assert_eq!(fspec.selector.match_labels.as_ref().unwrap()["run"], "celery-crd-example-flower");
        let fc = &fspec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(fc.args.as_deref().unwrap()[..2], ["--app=app:celery_app", "flower"]);
        assert_eq!(fc.ports.as_ref().unwrap()[0].container_port, 5555);

        let svc = flower_service(&c).unwrap();
        let sspec = svc.spec.unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("celery-crd-example-flower"));
        assert_eq!(sspec.type_.as_deref(), Some("NodePort"));
        assert_eq!(sspec.selector.unwrap()["run"], "celery-crd-example-flower");
        assert_eq!(sspec.ports.unwrap()[0].port, 5555);
    }

    #[test]
    fn full_featured_resource_reaches_the_pods() {
        let c = celery(
            r#"
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop, namespace: prod}
spec:
  common:
    appName: shop
    celeryApp: shop.celery
    image: registry.example/shop:1.2
    imagePullPolicy: IfNotPresent
    imagePullSecrets: [{name: regcred}]
    env: [{name: DJANGO_SETTINGS_MODULE, value: shop.settings}]
    envFrom: [{configMapRef: {name: shop-config}}]
    serviceAccountName: shop
    nodeSelector: {pool: workers}
    tolerations: [{key: dedicated, operator: Equal, value: celery, effect: NoSchedule}]
    podLabels: {team: payments}
    podAnnotations: {prometheus.io/scrape: "true"}
    podSecurityContext: {runAsNonRoot: true, runAsUser: 1000}
    securityContext: {readOnlyRootFilesystem: true}
  broker:
    secretRef: {name: shop-broker, key: url}
  resultBackend:
    url: redis://redis:6379/1
  workerSpec:
    extraArgs: ["-Ofair", "--prefetch-multiplier=1"]
    terminationGracePeriodSeconds: 3600
  flowerSpec:
    service: {type: ClusterIP, port: 80, annotations: {a: b}}
    basicAuth: {name: flower-auth, key: auth}
  autoscaling:
    policy: queue-length
    minReplicas: 0
    maxReplicas: 10
"#,
        );
        let worker = worker_deployment(&c, None).unwrap();
        let spec = worker.spec.unwrap();
        assert_eq!(spec.replicas, None, "the autoscaler owns replicas");
        let template = spec.template;
        let labels = template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(labels["app"], "shop");
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("shop"));
        assert_eq!(pod.node_selector.unwrap()["pool"], "workers");
        assert_eq!(pod.tolerations.unwrap().len(), 1);
        assert_eq!(pod.image_pull_secrets.unwrap()[0].name, "regcred");
        assert_eq!(pod.security_context.unwrap().run_as_user, Some(1000));
        assert_eq!(pod.termination_grace_period_seconds, Some(3600));
        let container = &pod.containers[0];
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert!(container.args.as_ref().unwrap().ends_with(&["-Ofair".into(), "--prefetch-multiplier=1".into()]));
        let env = container.env.as_ref().unwrap();
        let broker = env.iter().find(|e| e.name == BROKER_ENV).unwrap();
        let secret = broker.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
        assert_eq!((secret.name.as_str(), secret.key.as_str()), ("shop-broker", "url"));
        assert_eq!(broker.value, None, "no credentials in the spec");
        let backend = env.iter().find(|e| e.name == RESULT_BACKEND_ENV).unwrap();
        assert_eq!(backend.value.as_deref(), Some("redis://redis:6379/1"));
        assert!(env.iter().any(|e| e.name == "DJANGO_SETTINGS_MODULE"));
        assert!(!env.iter().any(|e| e.name == FLOWER_AUTH_ENV), "flower auth stays in flower");
        assert_eq!(container.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));

        let flower = flower_deployment(&c).unwrap();
        let fc = &flower.spec.unwrap().template.spec.unwrap().containers[0];
        assert!(fc.env.as_ref().unwrap().iter().any(|e| e.name == FLOWER_AUTH_ENV));
        let svc = flower_service(&c).unwrap();
        assert_eq!(svc.metadata.annotations.unwrap()["a"], "b");
        let sspec = svc.spec.unwrap();
        assert_eq!(sspec.type_.as_deref(), Some("ClusterIP"));
        let port = &sspec.ports.unwrap()[0];
        assert_eq!((port.port, port.target_port.clone()), (80, Some(IntOrString::Int(5555))));
    }

    #[test]
    fn workers_get_the_operators_probes_unless_the_spec_replaces_them() {
        let worker = |c: &Celery| worker_deployment(c, None).unwrap().spec.unwrap().template.spec.unwrap().containers.remove(0);
        let seed = worker(&celery(SEED));
        assert_eq!(seed.liveness_probe, probes::worker_liveness(&[]));
        assert_eq!(seed.readiness_probe, Some(probes::worker_readiness()));

        let own = SEED.replace(
            "    maxTasksPerChild: 100\n",
            "    maxTasksPerChild: 100\n    extraArgs: [\"--pool=solo\"]\n    readinessProbe: {tcpSocket: {port: 8000}}\n",
        );
        let own = worker(&celery(&own));
        assert_eq!(own.liveness_probe, None, "the solo pool runs tasks on the thread the liveness probe watches");
        let tcp = own.readiness_probe.and_then(|p| p.tcp_socket).expect("the spec's readiness probe");
        assert_eq!(tcp.port, IntOrString::Int(8000));
    }

    #[test]
    fn a_disruption_budget_covers_the_worker_pods_only_when_asked_for() {
        assert_eq!(worker_disruption_budget(&celery(SEED), None).unwrap(), None);
        let with = SEED
            .replace("    maxTasksPerChild: 100\n", "    maxTasksPerChild: 100\n    disruptionBudget: {maxUnavailable: '25%'}\n");
        let pdb = worker_disruption_budget(&celery(&with), None).unwrap().expect("a budget");
        let worker = worker_deployment(&celery(&with), None).unwrap();
        assert_eq!(pdb.metadata.name, worker.metadata.name);
        assert_eq!(pdb.metadata.owner_references, worker.metadata.owner_references);
        let spec = pdb.spec.unwrap();
        assert_eq!((spec.max_unavailable, spec.min_available), (Some(IntOrString::String("25%".into())), None));
        // Its selector matches the worker pods and not Flower's.
        let selector = spec.selector.and_then(|s| s.match_labels).unwrap();
        let pod_labels = |d: Deployment| d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        let (workers, flower) = (pod_labels(worker), pod_labels(flower_deployment(&celery(&with)).unwrap()));
        assert!(selector.iter().all(|(k, v)| workers.get(k) == Some(v)), "{selector:?} ⊂ {workers:?}");
        assert!(selector.iter().any(|(k, v)| flower.get(k) != Some(v)), "{selector:?} ⊄ {flower:?}");
    }

    #[test]
    fn a_celery_without_uid_cannot_own_children() {
        let mut c = celery(SEED);
        c.metadata.uid = None;
        assert!(matches!(worker_deployment(&c, Some(1)), Err(BuildError::NoOwnerReference)));
    }

    /// Every option the builder puts on a command line is one extra arguments may not repeat.
    #[test]
    fn the_refused_options_are_those_the_command_lines_set() {
        let mut c = celery(SEED);
        c.spec.worker_spec.max_tasks_per_child = Some(5);
        let args = |d: Deployment| -> Vec<String> {
            let pod = d.spec.and_then(|s| s.template.spec).expect("a pod");
            pod.containers[0].args.clone().unwrap_or_default()
        };
        let worker = args(worker_deployment(&c, Some(1)).unwrap());
        let flower = args(flower_deployment(&c).unwrap());
        let [worker_refused, flower_refused] = crate::spec::validate::options_set_by_the_spec();
        for (built, refused) in [(worker, worker_refused), (flower, flower_refused)] {
            let set: Vec<&str> =
                built.iter().filter_map(|a| a.strip_prefix("--")).map(|a| a.split('=').next().unwrap()).collect();
            assert_eq!(set, refused, "the command line {built:?}");
        }
    }
    const GROUPS: &str = r#"
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop, namespace: prod}
spec:
  common:
    appName: shop
    celeryApp: shop.celery
    image: shop:1
    nodeSelector: {pool: general}
  workerSpec: {queues: celery}
  workerGroups:
  - name: reports
    queues: reports
    concurrency: 1
    pool: solo
    nodeSelector: {pool: big-memory}
    disruptionBudget: {minAvailable: 1}
  - name: hooks
    queues: webhooks,callbacks
    pool: gevent
    concurrency: 100
  beat: {}
"#;

    fn labels(d: &Deployment) -> BTreeMap<String, String> {
        d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap()
    }

    #[test]
    fn a_group_is_a_deployment_of_its_own_that_the_default_pool_does_not_select() {
        let c = celery(GROUPS);
        let default = worker_deployment(&c, Some(1)).unwrap();
        let reports = group_deployment(&c, &c.spec.worker_groups[0], Some(1)).unwrap();
        let hooks = group_deployment(&c, &c.spec.worker_groups[1], None).unwrap();
        assert_eq!(reports.metadata.name.as_deref(), Some("shop-celery-worker-reports"));
        assert_eq!(hooks.metadata.name.as_deref(), Some("shop-celery-worker-hooks"));
        assert_eq!(hooks.spec.as_ref().unwrap().replicas, None);
        // Each Deployment's selector matches its own pods and none of the others'.
        let pools = [&default, &reports, &hooks];
        for (i, d) in pools.iter().enumerate() {
            let selector = d.spec.as_ref().unwrap().selector.match_labels.clone().unwrap();
            for (j, other) in pools.iter().enumerate() {
                let matches = selector.iter().all(|(k, v)| labels(other).get(k) == Some(v));
                assert_eq!(matches, i == j, "{:?} selects {:?}", d.metadata.name, other.metadata.name);
            }
        }
        let group_labels = labels(&reports);
        assert_eq!(group_labels[GROUP_LABEL], "reports");
        assert_eq!(group_labels[COMPONENT_LABEL], "worker");
        assert_eq!(group_labels["app.kubernetes.io/component"], "worker");
        assert_eq!(reports.metadata.labels.as_ref().unwrap()[GROUP_LABEL], "reports");
        let pod = reports.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["pool"], "big-memory", "the group's placement replaces common's");
        let args = pod.containers[0].args.clone().unwrap();
        assert!(args.contains(&"--queues=reports".into()) && args.contains(&"--pool=solo".into()), "{args:?}");
        assert_eq!(pod.containers[0].liveness_probe, None, "no liveness probe with the solo pool");
        let hooks_pod = hooks.spec.unwrap().template.spec.unwrap();
        assert_eq!(hooks_pod.node_selector.unwrap()["pool"], "general", "common's placement without the group's");
        assert!(hooks_pod.containers[0].args.as_ref().unwrap().contains(&"--pool=gevent".into()));
    }

    /// The Python operator's children keep their pod templates: a new pod label would restart
    /// every worker when the operator is upgraded.
    #[test]
    fn the_default_pools_pods_carry_no_new_label() {
        let c = celery(SEED);
        let pod_labels = labels(&worker_deployment(&c, Some(1)).unwrap());
        assert!(!pod_labels.contains_key(COMPONENT_LABEL) && !pod_labels.contains_key(GROUP_LABEL), "{pod_labels:?}");
        let flower_labels = labels(&flower_deployment(&c).unwrap());
        assert!(!flower_labels.contains_key(COMPONENT_LABEL), "{flower_labels:?}");
        // The objects themselves carry the component.
        let worker = worker_deployment(&c, Some(1)).unwrap();
        assert_eq!(worker.metadata.labels.unwrap()[COMPONENT_LABEL], "worker");
        assert_eq!(flower_deployment(&c).unwrap().metadata.labels.unwrap()[COMPONENT_LABEL], "flower");
    }

    #[test]
    fn budgets_cover_their_own_pool_only() {
        let c =
            celery(&GROUPS.replace(
                "  workerSpec: {queues: celery}",
                "  workerSpec: {queues: celery, disruptionBudget: {maxUnavailable: 1}}",
            ));
        let default = worker_disruption_budget(&c, None).unwrap().unwrap().spec.unwrap().selector.unwrap();
        let group = worker_disruption_budget(&c, Some(&c.spec.worker_groups[0])).unwrap().unwrap();
        assert_eq!(group.metadata.name.as_deref(), Some("shop-celery-worker-reports"));
        let group = group.spec.unwrap().selector.unwrap();
        assert_eq!(worker_disruption_budget(&c, Some(&c.spec.worker_groups[1])).unwrap(), None);
        let selects = |s: &LabelSelector, pod: &BTreeMap<String, String>| {
            s.match_labels.iter().flatten().all(|(k, v)| pod.get(k) == Some(v))
                && s.match_expressions.iter().flatten().all(|e| e.operator == "DoesNotExist" && !pod.contains_key(&e.key))
        };
        let default_pods = labels(&worker_deployment(&c, None).unwrap());
        let reports_pods = labels(&group_deployment(&c, &c.spec.worker_groups[0], None).unwrap());
        let hooks_pods = labels(&group_deployment(&c, &c.spec.worker_groups[1], None).unwrap());
        assert!(selects(&default, &default_pods) && !selects(&default, &reports_pods) && !selects(&default, &hooks_pods));
        assert!(selects(&group, &reports_pods) && !selects(&group, &default_pods) && !selects(&group, &hooks_pods));
    }

    #[test]
    fn beat_is_one_pod_replaced_with_recreate_and_keeps_its_schedule_on_a_volume() {
        let c = celery(GROUPS);
        let beat = beat_deployment(&c, c.spec.beat.as_ref().unwrap()).unwrap();
        assert_eq!(beat.metadata.name.as_deref(), Some("shop-celery-beat"));
        let spec = beat.spec.clone().unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.strategy.unwrap().type_.as_deref(), Some("Recreate"));
        assert_eq!(labels(&beat)[COMPONENT_LABEL], "beat");
        let pod = spec.template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(
            container.args.as_deref().unwrap(),
            ["--app=shop.celery", "beat", "--loglevel=info", "--schedule=/var/lib/celery-beat/celerybeat-schedule"]
        );
        assert_eq!(container.volume_mounts.as_ref().unwrap()[0].mount_path, BEAT_SCHEDULE_DIR);
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert!(volume.empty_dir.is_some() && volume.persistent_volume_claim.is_none());
        // No worker Deployment selects the beat pod, nor beat's a worker.
        let beat_selector = spec.selector.match_labels.unwrap();
        for worker in [worker_deployment(&c, None).unwrap(), group_deployment(&c, &c.spec.worker_groups[0], None).unwrap()] {
            assert!(!beat_selector.iter().all(|(k, v)| labels(&worker).get(k) == Some(v)));
            let selector = worker.spec.unwrap().selector.match_labels.unwrap();
            assert!(!selector.iter().all(|(k, v)| labels(&beat).get(k) == Some(v)));
        }

        let claim = celery(&GROUPS.replace("  beat: {}", "  beat: {schedule: {persistentVolumeClaim: beat-state}}"));
        let pod = beat_deployment(&claim, claim.spec.beat.as_ref().unwrap()).unwrap().spec.unwrap().template.spec.unwrap();
        let volume = &pod.volumes.as_ref().unwrap()[0];
        assert_eq!(volume.persistent_volume_claim.as_ref().unwrap().claim_name, "beat-state");
        assert!(volume.empty_dir.is_none());

        let class = celery(&GROUPS.replace("  beat: {}", "  beat: {scheduler: 'redbeat.RedBeatScheduler'}"));
        let pod = beat_deployment(&class, class.spec.beat.as_ref().unwrap()).unwrap().spec.unwrap().template.spec.unwrap();
        assert!(pod.volumes.is_none() && pod.containers[0].volume_mounts.is_none());
        assert!(pod.containers[0].args.as_ref().unwrap().contains(&"--scheduler=redbeat.RedBeatScheduler".into()));
    }

    #[test]
    fn volumes_mounts_and_sidecars_reach_each_pod_merged_with_commons() {
        let yaml = GROUPS
            .replace(
                "    nodeSelector: {pool: general}\n",
                "    nodeSelector: {pool: general}\n    volumes: [{name: cfg, configMap: {name: shop-config}}]\n    volumeMounts: [{name: cfg, mountPath: /etc/shop}]\n    initContainers: [{name: migrate, image: shop:1}]\n    containers: [{name: proxy, image: proxy:1}]\n",
            )
            .replace(
                "    disruptionBudget: {minAvailable: 1}\n",
                "    disruptionBudget: {minAvailable: 1}\n    volumes: [{name: cfg, secret: {secretName: reports-config}}, {name: scratch, emptyDir: {}}]\n    volumeMounts: [{name: scratch, mountPath: /scratch}]\n    containers: [{name: proxy, image: proxy:2}, {name: shipper, image: logs:1}]\n",
            );
        let c = celery(&yaml);
        let pod = |d: Deployment| d.spec.unwrap().template.spec.unwrap();
        let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        let mounts =
            |c: &Container| c.volume_mounts.iter().flatten().map(|m| format!("{}:{}", m.name, m.mount_path)).collect::<Vec<_>>();

        // workerSpec's pods: common's, with the operator's container first.
        let default = pod(worker_deployment(&c, None).unwrap());
        assert_eq!(names(&default.containers), ["worker", "proxy"]);
        assert_eq!(names(default.init_containers.as_deref().unwrap()), ["migrate"]);
        assert_eq!(mounts(&default.containers[0]), ["cfg:/etc/shop"]);
        assert_eq!(default.volumes.as_ref().unwrap()[0].config_map.as_ref().unwrap().name, "shop-config");

        // The reports group replaces common's `cfg` and `proxy` in place and adds its own.
        let reports = pod(group_deployment(&c, &c.spec.worker_groups[0], None).unwrap());
        assert_eq!(names(&reports.containers), ["worker", "proxy", "shipper"]);
        assert_eq!(reports.containers[1].image.as_deref(), Some("proxy:2"));
        assert_eq!(mounts(&reports.containers[0]), ["cfg:/etc/shop", "scratch:/scratch"]);
        let volumes = reports.volumes.unwrap();
        assert_eq!(volumes.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["cfg", "scratch"]);
        assert_eq!(volumes[0].secret.as_ref().unwrap().secret_name.as_deref(), Some("reports-config"));

        // Beat keeps its schedule volume first; Flower gets common's.
        let beat = pod(beat_deployment(&c, c.spec.beat.as_ref().unwrap()).unwrap());
        assert_eq!(mounts(&beat.containers[0]), [format!("{BEAT_VOLUME}:{BEAT_SCHEDULE_DIR}"), "cfg:/etc/shop".into()]);
        assert_eq!(beat.volumes.unwrap().iter().map(|v| v.name.clone()).collect::<Vec<_>>(), [BEAT_VOLUME, "cfg"]);
        let flower = pod(flower_deployment(&c).unwrap());
        assert_eq!(names(&flower.containers), ["flower", "proxy"]);
        assert_eq!(mounts(&flower.containers[0]), ["cfg:/etc/shop"]);

        // Without them, nothing is added (a spec's pods are those it built before).
        let plain = pod(group_deployment(&celery(GROUPS), &celery(GROUPS).spec.worker_groups[1], None).unwrap());
        assert!(plain.volumes.is_none() && plain.init_containers.is_none() && plain.containers.len() == 1);
        assert!(plain.containers[0].volume_mounts.is_none());
    }
}
