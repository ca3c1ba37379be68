//! The `Celery` custom resource (`celeryproject.org/v1alpha1`): the API a user writes.
//!
//! The types here are the single source of the CRD: `celery-operator crd` prints the schema
//! derived from them and `deploy/crd.yaml` is that output. Every field carries a doc comment,
//! which becomes its description, so `kubectl explain celery.spec...` teaches the API.
//!
//! The spec keeps the shape of the Python (Kopf) operator this project replaces (`common`,
//! `workerSpec`, `flowerSpec`, `scaleTargetRef`) so its resources are accepted verbatim, and
//! adds optional fields for what production users need. What the schema can check (types,
//! ranges, cross-field CEL rules) is checked by the API server at admission; the rest is judged
//! in [`crate::spec::validate`]. This module holds plain data: no I/O.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext, Probe, ResourceRequirements,
    SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a Celery application: its workers, its Flower monitor and how the workers
/// are scaled.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "celeryproject.org",
    version = "v1alpha1",
    kind = "Celery",
    plural = "celery",
    singular = "celery",
    shortname = "cel",
    shortname = "capp",
    namespaced,
    status = "CeleryStatus",
    printcolumn = r#"{"name":"Desired","type":"integer","description":"Worker replicas wanted","jsonPath":".status.workers.desired"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","description":"Worker replicas ready","jsonPath":".status.workers.ready"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","description":"Scaling policy in effect","jsonPath":".status.policy"}"#,
    printcolumn = r#"{"name":"Backlog","type":"integer","description":"Messages waiting in the worker queues at the last sample","jsonPath":".status.queueBacklog"}"#,
    printcolumn = r#"{"name":"Status","type":"string","description":"Reason of the Ready condition","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    scale(spec_replicas_path = ".spec.workerSpec.numOfWorkers", status_replicas_path = ".status.replicas")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kubernetes_formats_only)]
#[x_kube(validation = Rule::new(HAND_SCALED_RULE).message(HAND_SCALED_MESSAGE))]
pub struct CelerySpec {
    /// Settings shared by the worker and Flower pods: the application, its image and where it
    /// runs.
    pub common: Common,

    /// The Celery worker Deployment, named `<appName>-celery-worker`.
    #[serde(default)]
    pub worker_spec: WorkerSpec,

    /// The Flower monitor: a Deployment and a Service, both named `<appName>-flower`.
    #[serde(default)]
    pub flower_spec: FlowerSpec,

    /// The broker the application uses, passed to every container as `CELERY_BROKER_URL`
    /// (the variable Celery reads). Omit it when the image configures the broker itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<Broker>,

    /// The result backend, passed to every container as `CELERY_RESULT_BACKEND`. Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_backend: Option<ResultBackend>,

    /// Autoscaling of the workers by a scaling policy (a WebAssembly module chosen by name).
    /// Takes precedence over `scaleTargetRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Autoscaling in the form of the Python operator this project replaces. A `worker` entry
    /// selects the built-in policy matching its metrics: `message_queue` (target type `length`,
    /// `averageValue` messages per worker) selects `queue-length`; `cpu` and `memory`
    /// (`averageUtilization` percent of requests) select `cpu-memory`. Ignored when
    /// `autoscaling` is set. Flower is not autoscaled: a `flower` entry is accepted and has no
    /// effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub scale_target_ref: Vec<ScaleTarget>,

    /// More pools of workers of the same app, each a Deployment
    /// `<appName>-celery-worker-<name>` with its own queues, command line, resources, placement
    /// and autoscaling. `workerSpec` stays the pool it always was (`<appName>-celery-worker`).
    /// Group names are unique; removing a group deletes its Deployment, and renaming one is a
    /// removal and an addition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_WORKER_GROUPS), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub worker_groups: Vec<WorkerGroup>,

    /// Celery beat, the scheduler of periodic tasks: a Deployment `<appName>-celery-beat` of
    /// exactly one pod, replaced with the `Recreate` strategy so that two beats never run at
    /// once (two would send every periodic task twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beat: Option<Beat>,
}

/// `kubectl scale celery` (the scale subresource writes `workerSpec.numOfWorkers`) and any
/// other change of `numOfWorkers` are refused while a scaling policy decides the count, before
/// and after the change: it would do nothing. Enabling autoscaling with a new starting count in
/// one edit stays allowed.
/// In CEL: not (autoscaled before and after: `autoscaling` on, or without it a worker entry in
/// `scaleTargetRef`), or `numOfWorkers` (1 by default) unchanged.
const HAND_SCALED_RULE: &str = concat!(
    "!((has(oldSelf.autoscaling) ? (!has(oldSelf.autoscaling.enabled) || oldSelf.autoscaling.enabled) : (has(oldSelf.scaleTargetRef) && oldSelf.scaleTargetRef.exists(t, t.kind == 'worker')))\n",
    "  && (has(self.autoscaling) ? (!has(self.autoscaling.enabled) || self.autoscaling.enabled) : (has(self.scaleTargetRef) && self.scaleTargetRef.exists(t, t.kind == 'worker'))))\n",
    "|| (has(self.workerSpec) && has(self.workerSpec.numOfWorkers) ? self.workerSpec.numOfWorkers : 1)\n",
    "   == (has(oldSelf.workerSpec) && has(oldSelf.workerSpec.numOfWorkers) ? oldSelf.workerSpec.numOfWorkers : 1)"
);
const HAND_SCALED_MESSAGE: &str = "workerSpec.numOfWorkers (what kubectl scale sets) has no effect while a scaling policy decides the \
     worker count: change spec.autoscaling's minReplicas/maxReplicas, or set its enabled to false, instead";

/// Most worker groups of one app: each is a Deployment and, when autoscaled, a policy call per
/// interval.
pub const MAX_WORKER_GROUPS: u32 = 20;

/// Settings shared by the worker and Flower pods.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Common {
    /// Name prefix of the children: `<appName>-celery-worker` and `<appName>-flower`. A DNS
    /// label of at most 49 characters, so that every child name stays a valid DNS label.
    #[schemars(length(min = 1, max = 49), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub app_name: String,

    /// The Celery application instance, as given to `celery --app`, e.g. `app:celery_app` or
    /// `proj.celery`.
    #[schemars(length(min = 1))]
    pub celery_app: String,

    /// Container image holding the application code, Celery and (for Flower) `flower`.
    #[schemars(length(min = 1))]
    pub image: String,

    /// Image pull policy of the containers: `Always`, `Never` or `IfNotPresent`. Defaults as
    /// Kubernetes does (`Always` for `:latest`, else `IfNotPresent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = kubernetes_type)]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Extra environment variables for every container (Celery settings, credentials from
    /// Secrets, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = kubernetes_type)]
    pub env: Vec<EnvVar>,

    /// ConfigMaps and Secrets whose keys become environment variables of every container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = kubernetes_type)]
    pub env_from: Vec<EnvFromSource>,

    /// Service account the pods run as. Defaults to the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Node labels a node must carry to run the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Tolerations of the pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(transform = kubernetes_type)]
    pub tolerations: Vec<Toleration>,

    /// Affinity rules of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub affinity: Option<Affinity>,

    /// Extra labels on the pods. They cannot replace the labels the operator selects pods by.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Pod-level security context (user, group, fsGroup, seccomp profile, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub pod_security_context: Option<PodSecurityContext>,

    /// Container-level security context of every container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub security_context: Option<SecurityContext>,

    /// Volumes, mounts and extra containers of every pod of the app (workers, beat, Flower).
    #[serde(flatten)]
    pub pod: PodParts,
}

/// Volumes, mounts and extra containers of pods. In `common` they go to every pod of the app;
/// in `workerSpec`, a worker group or `beat`, to that one's pods, merged with `common`'s by name
/// (mounts by their path): an entry named like one of `common`'s replaces it there.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodParts {
    /// Volumes of the pods (ConfigMaps, Secrets, `emptyDir`s, claims, ...), for the mounts of
    /// `volumeMounts` and of the extra containers, as in a Pod's `spec.volumes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        transform = kubernetes_type,
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub volumes: Vec<Volume>,

    /// Mounts of those volumes into the operator's container of the pods (`worker`, `beat`,
    /// `flower`). Each names a volume of `volumes` (here or in `common`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        transform = kubernetes_type,
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["mountPath"])
    )]
    pub volume_mounts: Vec<VolumeMount>,

    /// Containers run before the operator's container starts (migrations, fetching
    /// configuration), and native sidecars (`restartPolicy: Always`), as in a Pod's
    /// `spec.initContainers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        transform = kubernetes_type,
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub init_containers: Vec<Container>,

    /// Containers run beside the operator's (sidecars: a proxy, a log shipper, ...), after it in
    /// the pod. None may take the name of the operator's container (`worker`, `beat`, `flower`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        transform = kubernetes_type,
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"])
    )]
    pub containers: Vec<Container>,
}

/// Image pull policy of a container.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    /// Pull on every start.
    Always,
    /// Never pull; the image must be on the node.
    Never,
    /// Pull when the node does not have the image.
    IfNotPresent,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::Never => "Never",
            Self::IfNotPresent => "IfNotPresent",
        }
    }
}

/// Most worker replicas a count of the spec may name (`numOfWorkers`, the autoscaling bounds,
/// `fallbackReplicas`, `scaleTargetRef`). A ceiling against typos, not a capacity plan: it
/// keeps `numOfWorkers: 2147483647` from becoming a Deployment of two billion pods, and it
/// is well above what one Celery app sensibly runs from one resource — every worker holds
/// broker connections and takes part in gossip and heartbeats, so a thousand pods already
/// load the broker more than the work usually justifies; shard such an app into several
/// resources (by queue) instead.
pub const MAX_WORKER_REPLICAS: i32 = 1000;

/// Most Flower replicas. Flower is a monitor, not a worker: each replica keeps its own view
/// of the cluster's events in memory and the Service spreads requests across them, so more
/// replicas add neither capacity nor a shared view. One is the norm, two or three give
/// availability; ten leaves room for that and still catches a typo.
pub const MAX_FLOWER_REPLICAS: i32 = 10;

/// The Celery worker Deployment.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Worker replicas when autoscaling is off; the starting count when it is on (kept within
    /// its bounds).
    #[serde(default = "default_workers")]
    #[schemars(range(min = 0, max = MAX_WORKER_REPLICAS))]
    pub num_of_workers: i32,

    /// Queues the workers consume, comma-separated, passed as `--queues`.
    #[serde(default = "default_queues")]
    #[schemars(length(min = 1), regex(pattern = r"^[^,\s]+(,[^,\s]+)*$"))]
    pub queues: String,

    /// Worker log level, passed as `--loglevel`: debug, info, warning, error or critical.
    #[serde(default = "default_log_level")]
    #[schemars(regex(pattern = r"^(?i)(debug|info|warning|warn|error|critical|fatal)$"))]
    pub log_level: String,

    /// Processes (or threads) per worker pod, passed as `--concurrency`. Scaling policies use
    /// it as the capacity of one worker.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1))]
    pub concurrency: i32,

    /// The execution pool, passed as `--pool`: `prefork` (Celery's default), `threads`,
    /// `gevent`, `eventlet` or `solo`. Without it the command line has no `--pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,

    /// Tasks a pool process runs before it is replaced, passed as `--max-tasks-per-child`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tasks_per_child: Option<i32>,

    /// Compute resources of the worker container (`requests`/`limits` of `cpu`, `memory`, ...).
    /// CPU-based scaling needs a CPU request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub resources: Option<ResourceRequirements>,

    /// Extra arguments appended to the worker command line, e.g. `["-Ofair", "--prefetch-multiplier=1"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,

    /// Seconds a worker pod gets to stop. On SIGTERM Celery stops taking tasks and finishes the
    /// ones it runs (warm shutdown), so this should exceed your longest task.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: i64,

    /// Replaces the worker container's liveness probe. The default reads `/proc` only: the
    /// worker's main thread ran in the last 10 s (a stuck worker is restarted, one waiting for
    /// its broker is not); there is none for the `solo` pool, whose tasks block that thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub liveness_probe: Option<Probe>,

    /// Replaces the worker container's readiness probe. The default reads `/proc` only: the
    /// worker holds an open TCP connection (to its broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub readiness_probe: Option<Probe>,

    /// A PodDisruptionBudget `<appName>-celery-worker` for the worker pods, so that a node drain
    /// or a cluster upgrade evicts no more workers at once than the app can spare. Removing it
    /// removes the budget. It limits evictions only: the autoscaler's scale-downs are not
    /// evictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,

    /// Volumes, mounts and extra containers of the worker pods, merged with `common`'s.
    #[serde(flatten)]
    pub pod: PodParts,
}

/// How many worker pods a voluntary disruption must leave, or may take.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minAvailable) != has(self.maxUnavailable)").message("give exactly one of minAvailable and maxUnavailable"))]
pub struct DisruptionBudget {
    /// Worker pods that must stay available: a count or a percentage (`"50%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<IntOrString>,
    /// Worker pods that may be unavailable at once: a count or a percentage (`"25%"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// One more pool of workers of the app (`spec.workerGroups[]`). Fields left out take the
/// defaults of `workerSpec`'s; placement fields left out take `common`'s.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroup {
    /// The group's name, a DNS label: its Deployment is `<appName>-celery-worker-<name>` and its
    /// pods carry the label `celeryproject.org/worker-group: <name>`.
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// Queues this group's workers consume, comma-separated, passed as `--queues`. Required. A
    /// queue may be consumed by several groups: each group's policy then sees that queue's whole
    /// backlog.
    #[schemars(length(min = 1), regex(pattern = r"^[^,\s]+(,[^,\s]+)*$"))]
    pub queues: String,

    /// Worker replicas when autoscaling is off; the starting count when it is on.
    #[serde(default = "default_workers")]
    #[schemars(range(min = 0, max = MAX_WORKER_REPLICAS))]
    pub num_of_workers: i32,

    /// Processes, threads or greenlets per worker pod, passed as `--concurrency`.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1))]
    pub concurrency: i32,

    /// The execution pool, passed as `--pool`: `prefork` (Celery's default), `threads`,
    /// `gevent`, `eventlet` or `solo`. `gevent` and `eventlet` need those packages in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<Pool>,

    /// Worker log level, passed as `--loglevel`.
    #[serde(default = "default_log_level")]
    #[schemars(regex(pattern = r"^(?i)(debug|info|warning|warn|error|critical|fatal)$"))]
    pub log_level: String,

    /// Tasks a pool process runs before it is replaced, passed as `--max-tasks-per-child`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_tasks_per_child: Option<i32>,

    /// Compute resources of this group's worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub resources: Option<ResourceRequirements>,

    /// Extra arguments appended to this group's worker command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,

    /// Seconds a worker pod of this group gets to finish its running tasks when it stops.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: i64,

    /// Replaces the worker container's liveness probe (see `workerSpec.livenessProbe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub liveness_probe: Option<Probe>,

    /// Replaces the worker container's readiness probe (see `workerSpec.readinessProbe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub readiness_probe: Option<Probe>,

    /// A PodDisruptionBudget for this group's pods, named like its Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption_budget: Option<DisruptionBudget>,

    /// Replaces `common.nodeSelector` for this group's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Replaces `common.tolerations` for this group's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub tolerations: Option<Vec<Toleration>>,

    /// Replaces `common.affinity` for this group's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub affinity: Option<Affinity>,

    /// Autoscaling of this group by a scaling policy, as `spec.autoscaling` does it for
    /// `workerSpec`: its own policy, settings, bounds and scale-down damping, fed this group's
    /// queues and pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Volumes, mounts and extra containers of this group's pods, merged with `common`'s.
    #[serde(flatten)]
    pub pod: PodParts,
}

impl WorkerGroup {
    /// The group's worker settings in `workerSpec`'s shape, which the builder takes.
    pub fn worker_spec(&self) -> WorkerSpec {
        WorkerSpec {
            num_of_workers: self.num_of_workers,
            queues: self.queues.clone(),
            log_level: self.log_level.clone(),
            concurrency: self.concurrency,
            pool: self.pool,
            max_tasks_per_child: self.max_tasks_per_child,
            resources: self.resources.clone(),
            extra_args: self.extra_args.clone(),
            termination_grace_period_seconds: self.termination_grace_period_seconds,
            liveness_probe: self.liveness_probe.clone(),
            readiness_probe: self.readiness_probe.clone(),
            disruption_budget: self.disruption_budget.clone(),
            pod: self.pod.clone(),
        }
    }
}

/// Celery's execution pools (`--pool`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// Child processes (Celery's default): CPU-bound work.
    Prefork,
    /// Threads: I/O-bound work without extra packages.
    Threads,
    /// Greenlets (the `gevent` package): many concurrent I/O-bound tasks.
    Gevent,
    /// Greenlets (the `eventlet` package).
    Eventlet,
    /// The worker's own thread, one task at a time.
    Solo,
}

impl Pool {
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Prefork => "prefork",
            Pool::Threads => "threads",
            Pool::Gevent => "gevent",
            Pool::Eventlet => "eventlet",
            Pool::Solo => "solo",
        }
    }
}

/// Celery beat (`spec.beat`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.scheduler) || !has(self.schedule)").message("give scheduler or schedule, not both: a scheduler class keeps the schedule itself"))]
pub struct Beat {
    /// Whether beat runs. Switching it off deletes its Deployment.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// A scheduler class that keeps the schedule itself, passed as `--scheduler`, e.g.
    /// `django_celery_beat.schedulers:DatabaseScheduler` or `redbeat.RedBeatScheduler`. Without
    /// it Celery's file scheduler keeps its state in `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub scheduler: Option<String>,

    /// Where the file scheduler keeps its state (`celerybeat-schedule`, the time each periodic
    /// task last ran): a volume mounted at `/var/lib/celery-beat`, an `emptyDir` unless a
    /// PersistentVolumeClaim is named. With an `emptyDir` a restarted beat starts afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<BeatSchedule>,

    /// Compute resources of the beat container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub resources: Option<ResourceRequirements>,

    /// Extra arguments appended to the beat command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,

    /// Beat's log level, passed as `--loglevel`.
    #[serde(default = "default_log_level")]
    #[schemars(regex(pattern = r"^(?i)(debug|info|warning|warn|error|critical|fatal)$"))]
    pub log_level: String,

    /// Volumes, mounts and extra containers of the beat pod, merged with `common`'s.
    #[serde(flatten)]
    pub pod: PodParts,
}

/// The volume of the file scheduler's state.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BeatSchedule {
    /// A PersistentVolumeClaim (in the app's namespace) to keep the schedule across restarts;
    /// an `emptyDir` without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
}

impl Default for WorkerSpec {
    fn default() -> Self {
        Self {
            num_of_workers: default_workers(),
            queues: default_queues(),
            log_level: default_log_level(),
            concurrency: default_concurrency(),
            pool: None,
            max_tasks_per_child: None,
            resources: None,
            extra_args: Vec::new(),
            termination_grace_period_seconds: default_grace(),
            liveness_probe: None,
            readiness_probe: None,
            disruption_budget: None,
            pod: PodParts::default(),
        }
    }
}

fn default_workers() -> i32 {
    1
}
fn default_queues() -> String {
    "celery".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_concurrency() -> i32 {
    1
}
fn default_grace() -> i64 {
    300
}

/// The Flower monitor.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowerSpec {
    /// Whether to run Flower. When switched off, its Deployment and Service are removed.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Flower replicas.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = MAX_FLOWER_REPLICAS))]
    pub replicas: i32,

    /// Compute resources of the Flower container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = kubernetes_type)]
    pub resources: Option<ResourceRequirements>,

    /// The Service in front of Flower.
    #[serde(default)]
    pub service: FlowerService,

    /// Protect Flower with HTTP basic auth: the Secret key holds `user:password` (several
    /// pairs separated by commas), passed to Flower as `FLOWER_BASIC_AUTH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<SecretKeyRef>,

    /// Extra arguments appended to the Flower command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

impl Default for FlowerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            replicas: 1,
            resources: None,
            service: FlowerService::default(),
            basic_auth: None,
            extra_args: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_one() -> i32 {
    1
}

/// The Service exposing Flower.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FlowerService {
    /// Service type: `NodePort` (the default, as in the Python operator), `ClusterIP` or
    /// `LoadBalancer`.
    #[serde(rename = "type", default = "default_service_type")]
    pub type_: ServiceType,

    /// Port of the Service. Flower itself listens on 5555.
    #[serde(default = "default_flower_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Extra annotations on the Service (load balancer settings, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for FlowerService {
    fn default() -> Self {
        Self { type_: default_service_type(), port: default_flower_port(), annotations: BTreeMap::new() }
    }
}

fn default_service_type() -> ServiceType {
    ServiceType::NodePort
}
fn default_flower_port() -> i32 {
    FLOWER_PORT
}

/// The port Flower listens on inside its pod.
pub const FLOWER_PORT: i32 = 5555;

/// Kubernetes Service type.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A connection URL, given inline or read from a Secret. Give exactly one of the two.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.secretRef)").message("give exactly one of url and secretRef"))]
pub struct Broker {
    /// The URL, e.g. `redis://redis:6379/0` or `amqp://guest@rabbitmq//`. Prefer `secretRef`
    /// when it holds a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// A key of a Secret in the resource's namespace holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,

    /// For a Redis broker: how the app lays out its queues, when it changes kombu's defaults in
    /// `broker_transport_options`. The autoscaler reads the backlog where Celery writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_options: Option<TransportOptions>,

    /// For a RabbitMQ broker: the management API the autoscaler reads queue lengths from, e.g.
    /// `http://rabbitmq:15672`. Defaults to the AMQP host on port 15672 (15671 for `amqps://`)
    /// with the URL's credentials; credentials given here take precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub management_url: Option<String>,
}

/// The result backend's URL, given inline or read from a Secret. Give exactly one of the two.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.secretRef)").message("give exactly one of url and secretRef"))]
pub struct ResultBackend {
    /// The URL, e.g. `redis://redis:6379/1`. Prefer `secretRef` when it holds a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// A key of a Secret in the resource's namespace holding the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
}

/// kombu's Redis transport options that decide where a queue's messages are.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TransportOptions {
    /// `global_keyprefix`: a prefix of every key. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global_keyprefix: Option<String>,
    /// `sep`: between a queue name and its priority. Default `\x06\x16`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sep: Option<String>,
    /// `priority_steps`: the priorities that get a list of their own. Default `[0, 3, 6, 9]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub priority_steps: Option<Vec<u32>>,
    /// `unacked_key`: the hash of reserved messages. Default `unacked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unacked_key: Option<String>,
}

/// A key of a Secret in the resource's namespace.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
}

/// Autoscaling of the workers by a scaling policy.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
#[x_kube(validation = Rule::new("has(self.policy) != has(self.policies)").message("give policy (one policy) or policies (several), not both"))]
pub struct Autoscaling {
    /// Whether the policy drives the worker replicas. When false, `numOfWorkers` does.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Name of the scaling policy module: a built-in (`queue-length`, `cpu-memory`, `load`,
    /// `drain-time`, `steps`) or a module installed in the operator's policy directory.
    /// Shorthand for a `policies` list of one; give one or the other.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?(@sha256:[0-9a-f]{64})?$"))]
    pub policy: String,

    /// Settings handed to the policy as string pairs; their meaning is the policy's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,

    /// Several policies, each with its own settings, asked every interval in this order; their
    /// answers are combined as `combine` says. A policy whose signal fails (a broker that cannot
    /// be read) or that fails itself leaves the others to scale up on what is known; scaling
    /// down waits until every policy answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 10))]
    pub policies: Vec<PolicySelection>,

    /// How the answers of several policies become one: `Max` (the largest, as the Kubernetes
    /// HPA does over its metrics), `Min` (the smallest), or `First` (the first policy in the
    /// list that does not decline; see the policy-writing guide).
    #[serde(default)]
    pub combine: Combine,

    /// Fewest worker replicas. 0 allows scaling to zero when the queues are empty.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = MAX_WORKER_REPLICAS))]
    pub min_replicas: i32,

    /// Most worker replicas.
    #[schemars(range(min = 1, max = MAX_WORKER_REPLICAS))]
    pub max_replicas: i32,

    /// Seconds between two samples of the broker (and two policy decisions). CPU and memory
    /// are refreshed as often as the metrics API refreshes them, whatever this says.
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,

    /// How scaling down is damped.
    #[serde(default)]
    pub scale_down: ScaleDown,

    /// How fast workers are added. Without it a scale-up is applied at once, whatever its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScaleUp>,

    /// Worker replicas to run while the metrics are unknown or the policy fails. The count is
    /// only ever raised to it, never lowered: missing data never scales an app down. Without
    /// it the current count is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_WORKER_REPLICAS))]
    pub fallback_replicas: Option<i32>,

    /// Memory one policy call may use, as a quantity (`16Mi`, `64Mi`). Defaults to 64Mi; the
    /// operator caps it at 256Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_memory: Option<String>,

    /// Where the autoscaler reads Flower: the tasks each worker has in progress (handed to
    /// the policy) and, when neither `spec.broker` nor `CELERY_BROKER_URL` in `spec.common.env`
    /// names the broker, the queue backlog. Defaults to the Flower Service of this resource
    /// while `flowerSpec` runs Flower. Credentials come from the URL, else from the first pair
    /// of `flowerSpec.basicAuth` (Flower's API needs them for the backlog; its metrics do not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flower_url: Option<String>,

    /// Time windows that override `minReplicas`/`maxReplicas` while they are active (office
    /// hours, a nightly batch, a known Monday peak). Overlapping windows take the largest
    /// minimum and the largest maximum; a window that leaves a bound out keeps this section's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub schedules: Vec<ScalingSchedule>,

    /// A policy evaluated every interval on the same input as the real one, whose answer is
    /// recorded (`status.autoscaler.shadow`, the metric `celery_operator_shadow_desired_workers`)
    /// and never applied: try a new or custom policy on production traffic at no risk, then
    /// promote it. A shadow that fails affects nothing but its own status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<PolicySelection>,
}

/// A policy and its settings: an entry of `spec.autoscaling.policies`, or the shadow policy.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicySelection {
    /// Name of the policy module, as `spec.autoscaling.policy` takes it.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?(@sha256:[0-9a-f]{64})?$"))]
    pub policy: String,

    /// Settings handed to it, as string pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

/// How the answers of `spec.autoscaling.policies` are combined.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Combine {
    /// The largest answer wins.
    #[default]
    Max,
    /// The smallest answer wins.
    Min,
    /// The first policy, in the list's order, that answers rather than declines.
    First,
}

impl std::fmt::Display for Combine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Combine::Max => "Max",
            Combine::Min => "Min",
            Combine::First => "First",
        })
    }
}

/// A time window of other bounds (`spec.autoscaling.schedules[]`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.minReplicas) || has(self.maxReplicas)").message("give minReplicas, maxReplicas or both"))]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct ScalingSchedule {
    /// The window's name, shown in the status while it is active.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,

    /// When the window starts: five fields (minute hour day-of-month month day-of-week, e.g.
    /// `0 9 * * Mon-Fri`), six with seconds first, or a nickname (`@daily`, `@weekly`). Days of
    /// the week are given by name: cron dialects number them differently.
    #[schemars(length(min = 1, max = 200))]
    pub cron: String,

    /// How long the window lasts from each start, in seconds.
    #[schemars(range(min = 1, max = 2_678_400))]
    pub duration_seconds: i64,

    /// The IANA time zone the cron expression is read in (`Europe/Paris`, `America/New_York`),
    /// daylight saving time included.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 100))]
    pub time_zone: String,

    /// Fewest worker replicas while the window is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_WORKER_REPLICAS))]
    pub min_replicas: Option<i32>,

    /// Most worker replicas while the window is active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_WORKER_REPLICAS))]
    pub max_replicas: Option<i32>,
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_interval() -> i32 {
    1
}

/// Limits on adding workers, as the Kubernetes HPA's `behavior.scaleUp` policies: for workers
/// that hit a database or a rate-limited API. With both limits the larger allowance applies
/// (the HPA's default `selectPolicy: Max`).
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maxPods) || has(self.maxPercent)").message("give maxPods, maxPercent or both"))]
pub struct ScaleUp {
    /// At most this many workers added within `periodSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_WORKER_REPLICAS))]
    pub max_pods: Option<i32>,

    /// At most this percentage of the workers running at the start of the period added within
    /// it (at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_percent: Option<i32>,

    /// The period the limits count over, in seconds.
    #[serde(default = "default_scale_up_period")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
}

fn default_scale_up_period() -> i32 {
    60
}

/// Damping of scale-down decisions, as the Kubernetes HPA does it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDown {
    /// Seconds a lower replica count must be recommended before it is applied: the count
    /// applied is the highest the policy recommended within this window.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,

    /// At most this percentage of the current workers (and at least one) is removed in one
    /// step.
    #[serde(default = "default_step_percent")]
    #[schemars(range(min = 1, max = 100))]
    pub max_step_percent: i32,

    /// Seconds between two scale-down steps.
    #[serde(default = "default_step_period")]
    #[schemars(range(min = 0, max = 3600))]
    pub period_seconds: i32,

    /// What a scale-down does with workers that are running tasks. Idle workers always go
    /// first (when Flower tells which are idle). `Terminate` lowers the count at once: a busy
    /// worker that must go gets Celery's warm shutdown and finishes its running tasks within
    /// `workerSpec.terminationGracePeriodSeconds`. `Wait` removes only idle (or not Ready)
    /// workers, and the busy ones once they are idle, for at most `maxWaitSeconds`.
    #[serde(default)]
    pub busy_workers: BusyWorkers,

    /// With `busyWorkers: Wait`, the longest a scale-down waits for busy workers; then they are
    /// removed as with `Terminate`.
    #[serde(default = "default_max_wait")]
    #[schemars(range(min = 0, max = 86400))]
    pub max_wait_seconds: i32,

    /// With `busyWorkers: Wait`, ask each busy worker the scale-down waits for to stop taking
    /// new tasks (Celery's `cancel_consumer`, sent through the app's broker), so it finishes
    /// what it holds and becomes idle instead of picking up more; if the scale-down is called
    /// off, it is asked to consume again (`add_consumer`).
    #[serde(default)]
    pub drain_busy_workers: bool,
}

/// What a scale-down does with busy workers.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BusyWorkers {
    /// Lower the count at once; busy workers finish their tasks in their grace period.
    #[default]
    Terminate,
    /// Keep busy workers until they are idle, up to `maxWaitSeconds`.
    Wait,
}

impl Default for ScaleDown {
    fn default() -> Self {
        Self {
            stabilization_window_seconds: default_stabilization(),
            max_step_percent: default_step_percent(),
            period_seconds: default_step_period(),
            busy_workers: BusyWorkers::default(),
            max_wait_seconds: default_max_wait(),
            drain_busy_workers: false,
        }
    }
}

fn default_stabilization() -> i32 {
    60
}
fn default_step_percent() -> i32 {
    50
}
fn default_step_period() -> i32 {
    15
}
fn default_max_wait() -> i32 {
    1800
}

/// One entry of the Python operator's `scaleTargetRef`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("minReplicas must not exceed maxReplicas"))]
pub struct ScaleTarget {
    /// What to scale: `worker` or `flower`.
    pub kind: ScaleKind,

    /// Fewest replicas. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_WORKER_REPLICAS))]
    pub min_replicas: Option<i32>,

    /// Most replicas.
    #[schemars(range(min = 1, max = MAX_WORKER_REPLICAS))]
    pub max_replicas: i32,

    /// Metrics that drive the replica count; with several, the largest count wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub metrics: Vec<ScaleMetric>,
}

/// What a `scaleTargetRef` entry scales.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ScaleKind {
    /// The Celery workers.
    Worker,
    /// Flower (accepted for compatibility; Flower is not autoscaled).
    Flower,
}

/// A metric of a `scaleTargetRef` entry.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.name != 'message_queue' || has(self.target.averageValue)").message("message_queue needs target.averageValue (messages per worker)"))]
#[x_kube(validation = Rule::new("self.name == 'message_queue' || has(self.target.averageUtilization)").message("cpu and memory need target.averageUtilization (percent of requests)"))]
pub struct ScaleMetric {
    /// `message_queue` (queue backlog), `cpu` or `memory`.
    pub name: MetricName,
    /// The value to keep the metric at.
    pub target: MetricTarget,
}

/// A metric name of a `scaleTargetRef` entry.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricName {
    /// Messages waiting in the worker queues.
    #[serde(rename = "message_queue")]
    MessageQueue,
    /// CPU use of the worker pods against their requests.
    #[serde(rename = "cpu")]
    Cpu,
    /// Memory use of the worker pods against their requests.
    #[serde(rename = "memory")]
    Memory,
}

/// Target of a `scaleTargetRef` metric.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricTarget {
    /// `length` for `message_queue`, `Utilization` for `cpu` and `memory` (informational; the
    /// metric name decides).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,

    /// For `message_queue`: messages per worker to aim for, a positive number (`50` or `"50"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub average_value: Option<IntOrString>,

    /// For `cpu` and `memory`: percent of the pods' requests to aim for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub average_utilization: Option<i32>,
}

/// Observed state of a Celery application, written by the operator.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kubernetes_formats_only)]
pub struct CeleryStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing` and `Degraded`, following Kubernetes API conventions, and
    /// `ScalingActive` while a scaling policy drives the workers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Replica counts of the worker Deployments together (`workerSpec`'s and every group's):
    /// the app's totals, which `kubectl get celery` shows. Each group's own are in
    /// `workerGroups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<ReplicaStatus>,

    /// Replicas of `workerSpec`'s Deployment, as its status counts them: what `kubectl scale
    /// celery` and `kubectl get --subresource=scale` read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Each of `spec.workerGroups`: its replica counts, its policy and what its autoscaler
    /// measured and decided last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub worker_groups: Vec<GroupStatus>,

    /// Celery beat (absent when it is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beat: Option<BeatStatus>,

    /// Replica counts of the Flower Deployment (absent when Flower is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flower: Option<ReplicaStatus>,

    /// Name of the Service in front of Flower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flower_service: Option<String>,

    /// The scaling policy in effect, or `none` when the replica count is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,

    /// Messages waiting in the worker queues at the last autoscaling sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_backlog: Option<i64>,

    /// What the autoscaler measured and decided last (absent while the count is fixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// One worker group as the operator last saw it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GroupStatus {
    /// The group's name (`spec.workerGroups[].name`).
    pub name: String,

    /// Replica counts of the group's Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<ReplicaStatus>,

    /// The group's scaling policy, or `none` when its count is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,

    /// What the group's autoscaler measured (its queues, its pods) and decided last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaler: Option<AutoscalerStatus>,
}

/// Celery beat as the operator last saw it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BeatStatus {
    /// Whether the beat pod is Ready.
    pub ready: bool,

    /// When the beat pod last started (a new pod, or its container restarted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<Time>,
}

/// What the autoscaler measured and decided last.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalerStatus {
    /// When the last sample was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_time: Option<Time>,

    /// The worker queues at the last sample; a figure the broker could not give is absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<QueueStatus>,

    /// CPU used by the worker pods together, in millicores, as the metrics API reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<i64>,

    /// Memory used by the worker pods together, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,

    /// Worker pods that had CPU and memory figures, out of `pods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_with_metrics: Option<i32>,

    /// Worker pods at the last sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<i32>,

    /// Tasks in progress on the worker pods together, as Flower reports them; absent without
    /// Flower.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_tasks: Option<i64>,

    /// The last answer of the scaling policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision: Option<DecisionStatus>,

    /// When the autoscaler last changed the worker replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// A scale-down still under way: it waits for busy workers (`busyWorkers: Wait`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in: Option<ScaleInStatus>,

    /// The schedules (`spec.autoscaling.schedules`) whose bounds were in effect at the sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_schedules: Vec<String>,

    /// What the shadow policy (`spec.autoscaling.shadow`) would have done at the sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStatus>,
}

/// The shadow policy's last answer, never applied.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStatus {
    /// The shadow policy's name.
    pub policy: String,
    /// Worker replicas it would have set (within the bounds); absent when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Its reason, or why it failed.
    pub reason: String,
    /// Percentage of the samples of the last hour at which it answered what was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement_percent: Option<i32>,
}

/// A scale-down that waits for busy workers.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleInStatus {
    /// The worker count it goes to.
    pub replicas: i32,
    /// When it started waiting; after `maxWaitSeconds` the busy workers are removed anyway.
    pub since: Time,
    /// The workers it waits for, with their tasks (`worker-abc (2 tasks running)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,

    /// The worker pods told to stop taking tasks (`drainBusyWorkers`); told to take them again
    /// if the scale-down is called off, by this operator or the next one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining: Vec<String>,
}

/// One worker queue at the last sample.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Queue name.
    pub name: String,
    /// Messages waiting for a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<i64>,
    /// Messages delivered to a worker and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<i64>,
}

/// A decision of the scaling policy and what the host made of it.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionStatus {
    /// When it was made.
    pub time: Time,
    /// The policy that decided (with several, the one that asked for the most workers).
    pub policy: String,
    /// Replicas the policy asked for.
    pub proposed: i32,
    /// Replicas after `minReplicas`/`maxReplicas` and scale-down damping.
    pub replicas: i32,
    /// The policy's reason, and what the host changed.
    pub reason: String,
}

/// Replica counts of a child Deployment.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Replicas the Deployment asks for.
    pub desired: i32,
    /// Replicas whose pods are ready.
    pub ready: i32,
    /// Replicas running the current pod template.
    pub updated: i32,
}

/// A schemars transform that drops every `format` the API server does not know, on a schema
/// and all it contains. schemars names the width of every Rust number (`uint32`, `uint8`,
/// `uint`, …), and each one Kubernetes does not know makes every `kubectl apply` of the CRD
/// print `Warning: unrecognized format`. The bounds a format implies are kept: schemars also
/// writes `minimum: 0` for unsigned types, which the API server enforces.
///
/// NB: this runs on the schemas of [`CelerySpec`] and [`CeleryStatus`] as their derive builds
/// them, before kube's transforms: a nullable field's `type` is still `[T, "null"]` here.
fn kubernetes_formats_only(schema: &mut schemars::Schema) {
    if let Some(map) = schema.as_object_mut()
        && let Some(format) = map.get("format").and_then(|f| f.as_str())
    {
        let type_ = match map.get("type") {
            Some(serde_json::Value::String(t)) => Some(t.as_str()),
            Some(serde_json::Value::Array(types)) => {
                let mut not_null = types.iter().filter_map(|t| t.as_str()).filter(|t| *t != "null");
                match (not_null.next(), not_null.next()) {
                    (Some(t), None) => Some(t),
                    _ => Some("several types"),
                }
            }
            _ => None,
        };
        if !kubernetes_knows_format(type_, format) {
            map.remove("format");
        }
    }
    schemars::transform::transform_subschemas(&mut kubernetes_formats_only, schema);
}

/// The schema of a field of one of Kubernetes' own types (a Container, a Volume, an Affinity,
/// ...) without the descriptions of its inner fields, which `kubectl explain pod.spec` gives.
/// NB: with them the CRD outgrew what `kubectl apply` (client-side) can store of it in its
/// annotation, 256 KiB; without them it is a fraction of that. The field's own description stays.
fn kubernetes_type(schema: &mut schemars::Schema) {
    fn strip(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("description");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    if let Some(map) = schema.as_object_mut() {
        map.values_mut().for_each(strip);
    }
}

/// Whether the API server knows `format` on a schema of `type_`: what `GetUnrecognizedFormats`
/// of apiextensions-apiserver (`pkg/apiserver/validation/formats.go`) accepts without a
/// warning. Integers take `int32` and `int64`, numbers `float` and `double`, strings and
/// untyped schemas the string formats below (compared without dashes, as go-openapi does);
/// other types none. Formats newer API servers added (`k8s-short-name`, `k8s-long-name`,
/// `quantity`) are left out, so the CRD applies without warnings on older ones too.
fn kubernetes_knows_format(type_: Option<&str>, format: &str) -> bool {
    const STRING_FORMATS: &[&str] = &[
        "bsonobjectid",
        "uri",
        "email",
        "hostname",
        "ipv4",
        "ipv6",
        "cidr",
        "mac",
        "uuid",
        "uuid3",
        "uuid4",
        "uuid5",
        "isbn",
        "isbn10",
        "isbn13",
        "creditcard",
        "ssn",
        "hexcolor",
        "rgbcolor",
        "byte",
        "password",
        "date",
        "duration",
        "datetime",
    ];
    match type_ {
        Some("integer") => matches!(format, "int32" | "int64"),
        Some("number") => matches!(format, "float" | "double"),
        None | Some("string") => STRING_FORMATS.contains(&format.replace('-', "").as_str()),
        Some(_) => false,
    }
}

/// The CRD as YAML, exactly as `deploy/crd.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&Celery::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields of Kubernetes' own types, which Kubernetes documents (`kubectl explain pod.spec`):
    /// below them the schema keeps no descriptions ([`kubernetes_type`]), and the README's
    /// reference names the field, not its inner ones.
    const KUBERNETES_TYPES: &[&str] = &[
        "resources",
        "env",
        "envFrom",
        "imagePullSecrets",
        "tolerations",
        "affinity",
        "podSecurityContext",
        "securityContext",
        "livenessProbe",
        "readinessProbe",
        "volumes",
        "volumeMounts",
        "initContainers",
        "containers",
    ];

    /// `deploy/crd.yaml` and the Helm chart's copy are generated; a change of the types must
    /// regenerate them (`make crd`).
    #[test]
    fn deploy_crd_matches_the_types() {
        for file in ["deploy/crd.yaml", "deploy/helm/celery-operator/crds/celery.yaml"] {
            let path = format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"));
            let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(committed == crd_yaml().unwrap(), "{file} is stale: run `make crd` and commit it");
        }
    }

    /// `kubectl apply` (client-side, as the quick start does it) keeps the whole object in an
    /// annotation, and the API server refuses annotations over 256 KiB.
    #[test]
    fn the_crd_fits_in_kubectl_applys_annotation() {
        let json = serde_json::to_string(&Celery::crd()).unwrap();
        assert!(json.len() < 256 * 1024 * 9 / 10, "the CRD is {} bytes of JSON, too close to 256 KiB", json.len());
    }

    /// `kubectl explain` teaches the API only if every field says what it is.
    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (name, prop) in props {
                    let here = format!("{path}.{name}");
                    if prop.get("description").is_none() {
                        missing.push(here.clone());
                    }
                    if !KUBERNETES_TYPES.contains(&name.as_str()) {
                        walk(&here, prop, missing);
                    }
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(inner) = schema.get(key).filter(|v| v.is_object()) {
                    walk(path, inner, missing);
                }
            }
        }
        let crd = serde_json::to_value(Celery::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("celery.spec", &schema["properties"]["spec"], &mut missing);
        walk("celery.status", &schema["properties"]["status"], &mut missing);
        assert!(missing.is_empty(), "fields without a description: {missing:#?}");
    }

    /// A typo in a replica count (`2147483647`) must not become a Deployment of two billion
    /// pods: the API server refuses every count above its ceiling.
    #[test]
    fn replica_counts_have_a_ceiling() {
        let crd = serde_json::to_value(Celery::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let field = |path: &str| {
            path.split('.').fold(spec, |schema, name| match name.strip_suffix("[]") {
                Some(array) => &schema["properties"][array]["items"],
                None => &schema["properties"][name],
            })
        };
        for (path, ceiling) in [
            ("workerSpec.numOfWorkers", 1000),
            ("autoscaling.minReplicas", 1000),
            ("autoscaling.maxReplicas", 1000),
            ("autoscaling.fallbackReplicas", 1000),
            ("scaleTargetRef[].minReplicas", 1000),
            ("scaleTargetRef[].maxReplicas", 1000),
            ("flowerSpec.replicas", 10),
        ] {
            let schema = field(path);
            assert_eq!(schema["type"], "integer", "spec.{path} is found: {schema}");
            assert_eq!(schema["maximum"].as_f64(), Some(f64::from(ceiling)), "spec.{path}: {schema}");
        }
    }

    /// A format the API server does not know (`uint32` from a `u32` field) makes every
    /// `kubectl apply` of the CRD print `Warning: unrecognized format`.
    #[test]
    fn every_format_is_one_kubernetes_knows() {
        fn walk(path: &str, value: &serde_json::Value, unknown: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(format) = map.get("format").and_then(|f| f.as_str())
                        && !kubernetes_knows_format(map.get("type").and_then(|t| t.as_str()), format)
                    {
                        unknown.push(format!("{path}: {format} ({:?})", map.get("type")));
                    }
                    for (key, inner) in map {
                        walk(&format!("{path}.{key}"), inner, unknown);
                    }
                }
                serde_json::Value::Array(items) => {
                    for (i, inner) in items.iter().enumerate() {
                        walk(&format!("{path}[{i}]"), inner, unknown);
                    }
                }
                _ => {}
            }
        }
        assert!(kubernetes_knows_format(Some("string"), "date-time") && !kubernetes_knows_format(Some("integer"), "uint32"));
        assert!(!kubernetes_knows_format(Some("string"), "int32") && !kubernetes_knows_format(Some("boolean"), "byte"));
        let crd = serde_json::to_value(Celery::crd()).unwrap();
        let mut unknown = Vec::new();
        walk("crd", &crd, &mut unknown);
        assert!(unknown.is_empty(), "formats the API server does not know: {unknown:#?}");
    }

    #[test]
    fn names_and_printer_columns() {
        let crd = Celery::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("celery.celeryproject.org"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["cel".to_string(), "capp".to_string()]));
        let columns: Vec<_> = crd.spec.versions[0].additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Desired", "Ready", "Policy", "Backlog", "Status", "Age"]);
        assert!(crd.spec.versions[0].subresources.as_ref().unwrap().status.is_some());
    }

    /// The README's field reference covers every field of the spec the operator defines
    /// (fields of Kubernetes types, like `resources`, are documented by Kubernetes).
    #[test]
    fn readme_reference_covers_every_spec_field() {
        fn walk(path: &str, schema: &serde_json::Value, out: &mut Vec<String>) {
            let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
                return;
            };
            for (name, prop) in props {
                let is_array = prop.get("type").and_then(|t| t.as_str()) == Some("array");
                let inner = if is_array { &prop["items"] } else { prop };
                let leaf = inner.get("properties").is_none() || KUBERNETES_TYPES.contains(&name.as_str());
                if leaf {
                    out.push(format!("{path}.{name}"));
                } else {
                    walk(&format!("{path}.{name}{}", if is_array { "[]" } else { "" }), inner, out);
                }
            }
        }
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let crd = serde_json::to_value(Celery::crd()).unwrap();
        let mut fields = Vec::new();
        walk("spec", &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"], &mut fields);
        assert!(fields.len() > 40, "walked {fields:?}");
        let documented = |field: &String| {
            readme.contains(&format!("`{field}`"))
                || field.rsplit_once('.').is_some_and(|(parent, leaf)| {
                    readme.lines().any(|l| l.contains(&format!("`{parent}`")) && l.contains(&format!("`{leaf}`")))
                })
        };
        let missing: Vec<_> = fields.iter().filter(|f| !documented(f)).collect();
        assert!(missing.is_empty(), "README.md's reference lacks: {missing:#?}");
    }
}
