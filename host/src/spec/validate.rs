//! Step 2 of a reconcile: judge what the schema could not, and work out the scaling in effect.
//!
//! The API server already enforces types, ranges and the CEL rules of the CRD. This step
//! checks what needs code (resource quantities, reserved labels, one worker autoscaling entry)
//! and resolves `autoscaling` / `scaleTargetRef` into one [`Scaling`]. A failure is a
//! [`SpecError`] naming the field, which becomes a `Degraded` condition and a Warning event;
//! it never stops the operator. Pure: no client, tested from inline YAML.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::{Autoscaling, CelerySpec, MetricName, PodParts, ScaleKind};
use crate::quantity;
use crate::spec::Tuning;
use crate::spec::names::{self, RESERVED_POD_LABELS};

/// A problem with a field of the spec that only the operator can judge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the offending field, e.g. `spec.workerSpec.resources.requests.cpu`.
    pub field: String,
    /// What is wrong with it and what is expected.
    pub message: String,
}

impl SpecError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// How the worker replica count is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scaling {
    /// A fixed count (`workerSpec.numOfWorkers`).
    Fixed { replicas: i32 },
    /// Scaling policies within bounds; with several policies the largest answer wins.
    Policies { policies: Vec<PolicyRef>, min_replicas: i32, max_replicas: i32, tuning: Box<Tuning> },
    /// Left to a HorizontalPodAutoscaler (named) that scales the Deployment too: the operator
    /// writes no count and runs no loop for it, whatever the spec says (see
    /// [`crate::conditions::CONFLICTING_AUTOSCALER`]).
    External { autoscaler: String },
}

/// A scaling policy module and the settings handed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRef {
    pub name: String,
    pub settings: BTreeMap<String, String>,
    /// The spec field the policy and its settings come from, for messages.
    pub field: String,
}

/// Built-in policy names that seed-style `scaleTargetRef` metrics map onto.
pub const QUEUE_LENGTH_POLICY: &str = "queue-length";
pub const CPU_MEMORY_POLICY: &str = "cpu-memory";

impl Scaling {
    /// The name shown in status and `kubectl get`: `none`, a policy, or `a+b`.
    pub fn policy_label(&self) -> String {
        match self {
            Scaling::Fixed { .. } => "none".into(),
            Scaling::Policies { policies, .. } => policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join("+"),
            Scaling::External { autoscaler } => format!("hpa/{autoscaler}"),
        }
    }

    /// The replica count to start a new worker Deployment with.
    pub fn initial_replicas(&self, num_of_workers: i32) -> i32 {
        match *self {
            Scaling::Fixed { replicas } => replicas,
            Scaling::Policies { min_replicas, max_replicas, .. } => num_of_workers.clamp(min_replicas, max_replicas),
            Scaling::External { .. } => num_of_workers,
        }
    }

    /// The lowest count the reconciler keeps a pool at while another manager owns `replicas`
    /// (`None`: the reconciler owns it, a fixed count).
    pub fn floor(&self) -> Option<i32> {
        match *self {
            Scaling::Fixed { .. } => None,
            Scaling::Policies { min_replicas, .. } => Some(min_replicas),
            Scaling::External { .. } => Some(0),
        }
    }
}

/// Checks a spec and resolves its scaling.
pub fn validate(spec: &CelerySpec) -> Result<Scaling, SpecError> {
    check_resources("spec.workerSpec.resources", spec.worker_spec.resources.as_ref())?;
    check_resources("spec.flowerSpec.resources", spec.flower_spec.resources.as_ref())?;
    for key in spec.common.pod_labels.keys() {
        if RESERVED_POD_LABELS.contains(&key.as_str()) {
            return Err(SpecError::new(
                format!("spec.common.podLabels.{key}"),
                "this label is set by the operator to select the pods; choose another key",
            ));
        }
    }
    check_env(spec)?;
    check_urls(spec)?;
    check_worker_args("spec.workerSpec", &spec.worker_spec)?;
    check_extra_args("spec.flowerSpec.extraArgs", &spec.flower_spec.extra_args, FLOWER_OPTIONS)?;
    if let Some(beat) = &spec.beat {
        check_resources("spec.beat.resources", beat.resources.as_ref())?;
        check_extra_args("spec.beat.extraArgs", &beat.extra_args, BEAT_OPTIONS)?;
    }
    groups(spec)?;
    check_pod_parts(spec)?;
    scaling(spec)
}

/// One kind of pod of the app, as its volumes and containers are checked.
struct PodKind<'a> {
    /// What the messages call its pods.
    what: String,
    /// The field of its own volumes and containers (`spec.workerGroups[1]`), if it has any.
    field: Option<String>,
    own: Option<&'a PodParts>,
    /// The operator's container in it.
    container: &'static str,
    /// The volume (and its mount path) the operator adds to it, if any.
    operator_volume: Option<(&'static str, &'static str)>,
}

/// The volumes, mounts and extra containers of every pod the app runs, after merging
/// `common`'s with each pod's own: no extra container takes the name of the operator's or of
/// another one, every mount names a volume of that pod, and none takes the operator's volume.
fn check_pod_parts(spec: &CelerySpec) -> Result<(), SpecError> {
    let mut kinds = vec![PodKind {
        what: "the worker pods of workerSpec".into(),
        field: Some("spec.workerSpec".into()),
        own: Some(&spec.worker_spec.pod),
        container: names::WORKER_CONTAINER,
        operator_volume: None,
    }];
    for (i, group) in spec.worker_groups.iter().enumerate() {
        kinds.push(PodKind {
            what: format!("the pods of worker group {}", group.name),
            field: Some(format!("spec.workerGroups[{i}]")),
            own: Some(&group.pod),
            container: names::WORKER_CONTAINER,
            operator_volume: None,
        });
    }
    if let Some(beat) = spec.beat.as_ref().filter(|b| b.enabled) {
        kinds.push(PodKind {
            what: "the beat pod".into(),
            field: Some("spec.beat".into()),
            own: Some(&beat.pod),
            container: names::BEAT_CONTAINER,
            operator_volume: beat.scheduler.is_none().then_some((names::BEAT_VOLUME, names::BEAT_SCHEDULE_DIR)),
        });
    }
    if spec.flower_spec.enabled {
        kinds.push(PodKind {
            what: "the Flower pods".into(),
            field: None,
            own: None,
            container: names::FLOWER_CONTAINER,
            operator_volume: None,
        });
    }
    for kind in &kinds {
        check_pod_kind(&spec.common.pod, kind)?;
    }
    Ok(())
}

/// The entries of one list after merging (see `build::merged_parts`), each with its field.
fn merged<'a, T>(common: &'a [T], own: Option<(&str, &'a [T])>, list: &str, key: impl Fn(&T) -> &String) -> Vec<(String, &'a T)> {
    let own_list = own.map_or(&[][..], |(_, o)| o);
    let own_field = |i: usize| format!("{}.{list}[{i}]", own.map_or("", |(f, _)| f));
    let mut out: Vec<(String, &T)> = common
        .iter()
        .enumerate()
        .map(|(i, c)| match own_list.iter().position(|o| key(o) == key(c)) {
            Some(j) => (own_field(j), &own_list[j]),
            None => (format!("spec.common.{list}[{i}]"), c),
        })
        .collect();
    for (j, o) in own_list.iter().enumerate() {
        if !common.iter().any(|c| key(c) == key(o)) {
            out.push((own_field(j), o));
        }
    }
    out
}

fn check_pod_kind(common: &PodParts, kind: &PodKind) -> Result<(), SpecError> {
    let own: Option<(&str, &PodParts)> = kind.own.map(|parts| (kind.field.as_deref().unwrap_or(""), parts));
    let volumes = merged(&common.volumes, own.map(|(f, p)| (f, &p.volumes[..])), "volumes", |v| &v.name);
    let mounts = merged(&common.volume_mounts, own.map(|(f, p)| (f, &p.volume_mounts[..])), "volumeMounts", |m| &m.mount_path);
    let inits = merged(&common.init_containers, own.map(|(f, p)| (f, &p.init_containers[..])), "initContainers", |c| &c.name);
    let sidecars = merged(&common.containers, own.map(|(f, p)| (f, &p.containers[..])), "containers", |c| &c.name);

    let where_volumes = match &kind.field {
        Some(field) => format!("spec.common.volumes or {field}.volumes"),
        None => "spec.common.volumes".into(),
    };
    if let Some((volume, path)) = kind.operator_volume {
        if let Some((field, _)) = volumes.iter().find(|(_, v)| v.name == volume) {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!("{volume:?} is the volume the operator mounts at {path} in {}; choose another name", kind.what),
            ));
        }
        if let Some((field, _)) = mounts.iter().find(|(_, m)| m.mount_path.trim_end_matches('/') == path) {
            return Err(SpecError::new(
                format!("{field}.mountPath"),
                format!("{path} is where the operator mounts beat's schedule in {}; mount elsewhere", kind.what),
            ));
        }
    }
    let known = |name: &str| volumes.iter().any(|(_, v)| v.name == name) || kind.operator_volume.is_some_and(|(v, _)| v == name);
    let container_mounts = mounts.iter().map(|(field, m)| (field.clone(), &m.name));
    let extra_mounts = inits.iter().chain(&sidecars).flat_map(|(field, c)| {
        c.volume_mounts.iter().flatten().enumerate().map(move |(k, m)| (format!("{field}.volumeMounts[{k}]"), &m.name))
    });
    for (field, name) in container_mounts.chain(extra_mounts) {
        if !known(name) {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!("there is no volume {name:?} in {} (volumes come from {where_volumes})", kind.what),
            ));
        }
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (field, container) in inits.iter().chain(&sidecars) {
        if container.name == kind.container {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!(
                    "{:?} is the name of the operator's container in {}; give this container another name",
                    container.name, kind.what
                ),
            ));
        }
        if let Some(first) = seen.insert(&container.name, field) {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!("{first} has the same name in {}; container names are unique in a pod", kind.what),
            ));
        }
    }
    Ok(())
}

/// The longest name of a group's Deployment: the names of the children are DNS labels (a
/// pod's hostname, which Celery names its worker after, is cut to 63 characters).
const MAX_DEPLOYMENT_NAME: usize = 63;

/// Checks `spec.workerGroups` and resolves how each group scales, in the spec's order.
pub fn groups(spec: &CelerySpec) -> Result<Vec<Scaling>, SpecError> {
    let mut seen = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(spec.worker_groups.len());
    for (i, group) in spec.worker_groups.iter().enumerate() {
        let field = format!("spec.workerGroups[{i}]");
        if let Some(first) = seen.insert(group.name.as_str(), i) {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!("{:?} is also the name of spec.workerGroups[{first}]; group names are unique", group.name),
            ));
        }
        let deployment = format!("{}-celery-worker-{}", spec.common.app_name, group.name);
        if deployment.len() > MAX_DEPLOYMENT_NAME {
            return Err(SpecError::new(
                format!("{field}.name"),
                format!(
                    "the group's Deployment {deployment} would be {} characters, over {MAX_DEPLOYMENT_NAME}; shorten the group \
                     name or spec.common.appName",
                    deployment.len()
                ),
            ));
        }
        if group.queues.split(',').all(|q| q.trim().is_empty()) {
            return Err(SpecError::new(format!("{field}.queues"), "a group consumes at least one queue"));
        }
        check_resources(&format!("{field}.resources"), group.resources.as_ref())?;
        check_worker_args(&field, &group.worker_spec())?;
        out.push(match group.autoscaling.as_ref().filter(|a| a.enabled) {
            Some(a) => policies(a, &format!("{field}.autoscaling"))?,
            None => Scaling::Fixed { replicas: group.num_of_workers },
        });
    }
    Ok(out)
}

/// The extra arguments of a pool of workers (`spec.workerSpec` or a group, at `field`).
fn check_worker_args(field: &str, w: &crate::crd::WorkerSpec) -> Result<(), SpecError> {
    let args_field = format!("{field}.extraArgs");
    check_extra_args(&args_field, &w.extra_args, WORKER_OPTIONS).map_err(|mut e| {
        e.message = e.message.replace(POOL_FIELD, field);
        e
    })?;
    // NB: `--pool` in extraArgs predates the `pool` field and stays welcome without it.
    if w.pool.is_some() {
        let pool = SetOption { long: "--pool", short: Some('P'), by: "{pool}.pool", instead: FROM_THE_FIELD };
        check_extra_args(&args_field, &w.extra_args, &[pool]).map_err(|mut e| {
            e.message = e.message.replace(POOL_FIELD, field);
            e
        })?;
    }
    Ok(())
}

/// Environment names must be unique: the API server merges the list by name, so a duplicate
/// would silently drop one of the values.
fn check_env(spec: &CelerySpec) -> Result<(), SpecError> {
    let generated = names::generated_env_names(spec);
    let mut seen = std::collections::BTreeSet::new();
    for (i, var) in spec.common.env.iter().enumerate() {
        let field = format!("spec.common.env[{i}]");
        if generated.contains(&var.name.as_str()) {
            return Err(SpecError::new(
                field,
                format!(
                    "{} is already set from the spec (broker, resultBackend or flowerSpec.basicAuth); keep one of the two",
                    var.name
                ),
            ));
        }
        if !seen.insert(var.name.as_str()) {
            return Err(SpecError::new(field, format!("{} is listed twice", var.name)));
        }
    }
    Ok(())
}

/// An option the operator itself puts on a command line (see [`build`]), and where its value
/// comes from.
struct SetOption {
    long: &'static str,
    short: Option<char>,
    /// What sets it, for the message.
    by: &'static str,
    /// What to do instead, for the message.
    instead: &'static str,
}

/// The long options (without `--`) the operator puts on the worker's and on Flower's command
/// lines, which `extraArgs` may not repeat.
pub fn options_set_by_the_spec() -> [Vec<&'static str>; 2] {
    [WORKER_OPTIONS, FLOWER_OPTIONS].map(|table| table.iter().map(|o| o.long.trim_start_matches('-')).collect())
}

const FROM_THE_FIELD: &str = "remove it from extraArgs and change that field instead";
const APP: SetOption = SetOption { long: "--app", short: Some('A'), by: "spec.common.celeryApp", instead: FROM_THE_FIELD };

/// The options of `celery --app=… worker …` ([`build::worker_deployment`]). `--max-tasks-per-child`
/// is refused even while `maxTasksPerChild` is unset: the field is the one place for it.
/// `{pool}` in a `by` stands for the pool of workers at fault: `spec.workerSpec` or a group.
const WORKER_OPTIONS: &[SetOption] = &[
    APP,
    SetOption { long: "--queues", short: Some('Q'), by: "{pool}.queues", instead: FROM_THE_FIELD },
    SetOption { long: "--loglevel", short: Some('l'), by: "{pool}.logLevel", instead: FROM_THE_FIELD },
    SetOption { long: "--concurrency", short: Some('c'), by: "{pool}.concurrency", instead: FROM_THE_FIELD },
    SetOption { long: "--max-tasks-per-child", short: None, by: "{pool}.maxTasksPerChild", instead: FROM_THE_FIELD },
];
const POOL_FIELD: &str = "{pool}";

/// The options of `celery --app=… beat …` ([`build::beat_deployment`]).
const BEAT_OPTIONS: &[SetOption] = &[
    APP,
    SetOption { long: "--loglevel", short: Some('l'), by: "spec.beat.logLevel", instead: FROM_THE_FIELD },
    SetOption { long: "--schedule", short: Some('s'), by: "spec.beat.schedule", instead: FROM_THE_FIELD },
    SetOption { long: "--scheduler", short: Some('S'), by: "spec.beat.scheduler", instead: FROM_THE_FIELD },
];

/// The options of `celery --app=… flower …` ([`build::flower_deployment`]).
const FLOWER_OPTIONS: &[SetOption] = &[
    APP,
    SetOption {
        long: "--port",
        short: None,
        by: "the operator (Flower listens on 5555, where its Service and readiness probe point)",
        instead: "remove it from extraArgs; spec.flowerSpec.service.port sets the Service's port",
    },
];

/// Celery (click) and Flower (tornado) take the last of a repeated option, and extra arguments
/// come last, so one repeating an option the operator sets would silently override the field
/// it comes from. Recognised as `--x=v`, `--x v`, `-X v` and `-Xv`; after `--` nothing is an
/// option.
fn check_extra_args(field: &str, args: &[String], options: &[SetOption]) -> Result<(), SpecError> {
    for (i, arg) in args.iter().enumerate() {
        if arg == "--" {
            break;
        }
        let long = |o: &&SetOption| arg.strip_prefix(o.long).is_some_and(|rest| rest.is_empty() || rest.starts_with('='));
        let short = |o: &&SetOption| {
            let rest = arg.strip_prefix('-').filter(|rest| !rest.starts_with('-'));
            o.short.is_some_and(|c| rest.is_some_and(|rest| rest.starts_with(c)))
        };
        let (name, option) = if let Some(o) = options.iter().find(long) {
            (o.long.to_string(), o)
        } else if let Some(o) = options.iter().find(short) {
            (format!("-{} ({})", o.short.unwrap_or_default(), o.long), o)
        } else {
            continue;
        };
        return Err(SpecError::new(format!("{field}[{i}]"), format!("{name} is set by {}; {}", option.by, option.instead)));
    }
    Ok(())
}

/// What a connection string of the spec is, for Celery: the two differ in what they accept.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlKind {
    /// kombu's `transport://…`, or several of them separated by `;` (failover).
    Broker,
    /// A URL as for the broker, or a backend alias or class path without `://` (`rpc`,
    /// `django-db`, `proj.backends:MyBackend`), which Celery also takes.
    ResultBackend,
}

/// The broker and result backend URLs given inline, in `spec.broker`, `spec.resultBackend` or
/// `spec.common.env`. They reach every pod as they are, so a malformed one is refused here
/// rather than found by Celery at start-up (or, for the broker, only if the app is autoscaled).
/// A URL in a Secret is not seen by the reconciler and is not checked.
fn check_urls(spec: &CelerySpec) -> Result<(), SpecError> {
    if let Some(url) = spec.broker.as_ref().and_then(|b| b.url.as_deref()) {
        check_url("spec.broker.url", url, UrlKind::Broker)?;
    }
    if let Some(url) = spec.result_backend.as_ref().and_then(|b| b.url.as_deref()) {
        check_url("spec.resultBackend.url", url, UrlKind::ResultBackend)?;
    }
    for (i, var) in spec.common.env.iter().enumerate() {
        let kind = match var.name.as_str() {
            names::BROKER_ENV => UrlKind::Broker,
            names::RESULT_BACKEND_ENV => UrlKind::ResultBackend,
            _ => continue,
        };
        if let Some(value) = &var.value {
            check_url(&format!("spec.common.env[{i}].value"), value, kind)?;
        }
    }
    Ok(())
}

fn check_url(field: &str, value: &str, kind: UrlKind) -> Result<(), SpecError> {
    let not_a_url = |cause: &str, part: &str| {
        SpecError::new(
            field,
            format!(
                "not a URL ({cause}): {}; expected one such as redis://redis:6379/0 or amqp://user:password@rabbitmq:5672//",
                quoted(part)
            ),
        )
    };
    // NB: kombu splits a failover list on `;` before parsing; an entry after the first may be a
    // bare `host:port` of the first one's transport (Celery's memcached backend lists hosts so).
    for (i, part) in value.split(';').enumerate() {
        if !part.contains("://") {
            if i > 0 {
                continue;
            }
            let backend_alias = !part.is_empty()
                && part.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:+".contains(c))
                && !value.contains(';');
            if kind == UrlKind::ResultBackend && backend_alias {
                return Ok(());
            }
            return Err(not_a_url("no transport:// at the start", part));
        }
        url::Url::parse(part).map_err(|e| not_a_url(&e.to_string(), part))?;
    }
    Ok(())
}

/// A value as a message may show it: without the credentials (which come before an `@`) and
/// at most [`QUOTED_CHARS`] characters long, so a pasted blob does not fill the condition.
fn quoted(value: &str) -> String {
    const QUOTED_CHARS: usize = 64;
    let shown = crate::redact::redact_unparsed(value);
    // NB: `redact_unparsed` hides what comes between `scheme://` and the last `@`; a value
    // with an `@` it could not place (no `://` before it) is not shown at all.
    if value.contains('@') && !shown.contains("://***@") {
        return "(not shown: it may hold a password)".into();
    }
    let mut chars = shown.chars();
    let head: String = chars.by_ref().take(QUOTED_CHARS).collect();
    let more = if chars.next().is_some() { "…" } else { "" };
    format!("`{head}{more}`")
}

fn check_resources(field: &str, resources: Option<&ResourceRequirements>) -> Result<(), SpecError> {
    let Some(resources) = resources else {
        return Ok(());
    };
    let parse_all = |kind: &str, map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        map.into_iter()
            .flatten()
            .map(|(name, q)| {
                quantity::parse(&q.0)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| SpecError::new(format!("{field}.{kind}.{name}"), e.to_string()))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()
    };
    let requests = parse_all("requests", resources.requests.as_ref())?;
    let limits = parse_all("limits", resources.limits.as_ref())?;
    for (name, request) in &requests {
        if let Some(limit) = limits.get(name)
            && request > limit
        {
            return Err(SpecError::new(
                format!("{field}.requests.{name}"),
                format!("the request exceeds the limit ({field}.limits.{name}); a pod could never be admitted"),
            ));
        }
    }
    Ok(())
}

/// The scaling an `autoscaling` section at `field` asks for.
fn policies(a: &Autoscaling, field: &str) -> Result<Scaling, SpecError> {
    let policies = match (a.policy.is_empty(), a.policies.is_empty()) {
        (false, true) => vec![PolicyRef { name: a.policy.clone(), settings: a.settings.clone(), field: field.into() }],
        (true, false) if a.settings.is_empty() => a
            .policies
            .iter()
            .enumerate()
            .map(|(i, p)| PolicyRef {
                name: p.policy.clone(),
                settings: p.settings.clone(),
                field: format!("{field}.policies[{i}]"),
            })
            .collect(),
        (true, false) => {
            return Err(SpecError::new(
                format!("{field}.settings"),
                "settings belong to one policy: with policies, give each entry its own settings",
            ));
        }
        (false, false) => {
            return Err(SpecError::new(format!("{field}.policies"), "give policy (one policy) or policies (several), not both"));
        }
        (true, true) => {
            return Err(SpecError::new(
                format!("{field}.policy"),
                "required: name a scaling policy (or list several in policies)",
            ));
        }
    };
    Ok(Scaling::Policies {
        policies,
        min_replicas: a.min_replicas,
        max_replicas: a.max_replicas,
        tuning: Box::new(tuning(a, field)?),
    })
}

fn scaling(spec: &CelerySpec) -> Result<Scaling, SpecError> {
    if let Some(a) = spec.autoscaling.as_ref().filter(|a| a.enabled) {
        return policies(a, "spec.autoscaling");
    }
    if spec.autoscaling.is_some() {
        return Ok(Scaling::Fixed { replicas: spec.worker_spec.num_of_workers });
    }

    let mut workers = spec.scale_target_ref.iter().enumerate().filter(|(_, t)| t.kind == ScaleKind::Worker);
    let Some((index, target)) = workers.next() else {
        return Ok(Scaling::Fixed { replicas: spec.worker_spec.num_of_workers });
    };
    if let Some((second, _)) = workers.next() {
        return Err(SpecError::new(
            format!("spec.scaleTargetRef[{second}]"),
            format!("a second worker entry; merge it into spec.scaleTargetRef[{index}]"),
        ));
    }
    let field = format!("spec.scaleTargetRef[{index}]");
    if target.metrics.is_empty() {
        return Err(SpecError::new(format!("{field}.metrics"), "no metric to scale on; add message_queue, cpu or memory"));
    }

    let mut queue = None;
    let mut resource = BTreeMap::new();
    for (i, metric) in target.metrics.iter().enumerate() {
        let metric_field = format!("{field}.metrics[{i}]");
        let duplicate = || SpecError::new(metric_field.clone(), "this metric is listed twice");
        match metric.name {
            MetricName::MessageQueue => {
                let value_field = format!("{metric_field}.target.averageValue");
                let value = match &metric.target.average_value {
                    None => return Err(SpecError::new(value_field, "required for message_queue")),
                    Some(IntOrString::Int(n)) => f64::from(*n),
                    Some(IntOrString::String(s)) => {
                        quantity::parse(s).map_err(|e| SpecError::new(value_field.clone(), e.to_string()))?
                    }
                };
                if value < 1.0 {
                    return Err(SpecError::new(value_field, "must be at least 1 message per worker"));
                }
                let value = value.ceil() as i64;
                if queue.replace(value).is_some() {
                    return Err(duplicate());
                }
            }
            MetricName::Cpu | MetricName::Memory => {
                let key = if metric.name == MetricName::Cpu { "cpu" } else { "memory" };
                let value = metric.target.average_utilization.ok_or_else(|| {
                    SpecError::new(format!("{metric_field}.target.averageUtilization"), format!("required for {key}"))
                })?;
                if resource.insert(key.to_string(), value.to_string()).is_some() {
                    return Err(duplicate());
                }
            }
        }
    }

    let mut policies = Vec::new();
    if let Some(per_worker) = queue {
        policies.push(PolicyRef {
            name: QUEUE_LENGTH_POLICY.into(),
            settings: BTreeMap::from([("target".to_string(), per_worker.to_string())]),
            field: format!("{field}.metrics"),
        });
    }
    if !resource.is_empty() {
        policies.push(PolicyRef { name: CPU_MEMORY_POLICY.into(), settings: resource, field: format!("{field}.metrics") });
    }
    Ok(Scaling::Policies {
        policies,
        min_replicas: target.min_replicas.unwrap_or(1),
        max_replicas: target.max_replicas,
        tuning: Box::default(),
    })
}

/// The loop's timing and damping from `spec.autoscaling`. The schema bounds the numbers; what
/// is left is the memory quantity.
fn tuning(a: &Autoscaling, field: &str) -> Result<Tuning, SpecError> {
    let policy_memory = match &a.policy_memory {
        None => None,
        Some(text) => {
            let field = format!("{field}.policyMemory");
            let bytes = quantity::parse(text).map_err(|e| SpecError::new(&field, e.to_string()))?;
            if bytes < f64::from(1u32 << 20) {
                return Err(SpecError::new(&field, "a policy needs at least 1Mi"));
            }
            Some(bytes as u64)
        }
    };
    if let Some(url) = &a.flower_url {
        let field = format!("{field}.flowerUrl");
        let parsed = url::Url::parse(url).map_err(|e| SpecError::new(&field, format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
            return Err(SpecError::new(&field, "give an http:// or https:// URL with a host, e.g. http://flower:5555"));
        }
    }
    let secs = |n: i32| std::time::Duration::from_secs(u64::try_from(n).unwrap_or(0));
    let mut schedules = Vec::with_capacity(a.schedules.len());
    for (i, s) in a.schedules.iter().enumerate() {
        let window = crate::decide::schedule::Window {
            name: s.name.clone(),
            cron: s.cron.clone(),
            time_zone: s.time_zone.clone(),
            duration: std::time::Duration::from_secs(u64::try_from(s.duration_seconds).unwrap_or(1)),
            min: s.min_replicas.and_then(|n| u32::try_from(n).ok()),
            max: s.max_replicas.and_then(|n| u32::try_from(n).ok()),
        };
        window.parse().map_err(|(key, message)| SpecError::new(format!("{field}.schedules[{i}].{key}"), message))?;
        schedules.push(window);
    }
    Ok(Tuning {
        interval: secs(a.interval_seconds.max(1)),
        stabilization: secs(a.scale_down.stabilization_window_seconds),
        step_percent: u32::try_from(a.scale_down.max_step_percent.clamp(1, 100)).unwrap_or(100),
        step_period: secs(a.scale_down.period_seconds),
        fallback: a.fallback_replicas.and_then(|n| u32::try_from(n).ok()),
        policy_memory,
        busy_workers: a.scale_down.busy_workers,
        max_wait: secs(a.scale_down.max_wait_seconds),
        drain: a.scale_down.drain_busy_workers,
        scale_up: a.scale_up.as_ref().map(|up| crate::decide::stabilize::UpLimit {
            max_pods: up.max_pods.and_then(|n| u32::try_from(n).ok()),
            max_percent: up.max_percent.and_then(|n| u32::try_from(n).ok()),
            period: secs(up.period_seconds.max(1)),
        }),
        schedules,
        combine: a.combine,
        shadow: a.shadow.as_ref().map(|s| PolicyRef {
            name: s.policy.clone(),
            settings: s.settings.clone(),
            field: format!("{field}.shadow"),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::Celery;

    fn spec(yaml: &str) -> CelerySpec {
        let celery: Celery = serde_yaml::from_str(yaml).expect("test YAML parses");
        celery.spec
    }

    const BASE: &str = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: demo, namespace: default}
spec:
  common: {appName: demo, celeryApp: 'app:celery_app', image: example}
";

    #[test]
    fn each_group_scales_on_its_own() {
        let s = spec(&format!(
            "{BASE}
  autoscaling: {{policy: queue-length, maxReplicas: 4}}
  workerGroups:
  - {{name: fixed, queues: a, numOfWorkers: 3}}
  - {{name: scaled, queues: b, autoscaling: {{policy: load, minReplicas: 0, maxReplicas: 9, scaleDown: {{busyWorkers: Wait}}}}}}
  - {{name: off, queues: c, numOfWorkers: 2, autoscaling: {{enabled: false, policy: load, maxReplicas: 9}}}}
"
        ));
        let groups = groups(&s).unwrap();
        assert_eq!(groups[0], Scaling::Fixed { replicas: 3 });
        let Scaling::Policies { policies, min_replicas: 0, max_replicas: 9, tuning } = &groups[1] else {
            panic!("{:?}", groups[1]);
        };
        assert_eq!((policies[0].name.as_str(), policies[0].field.as_str()), ("load", "spec.workerGroups[1].autoscaling"));
        assert_eq!(tuning.busy_workers, crate::crd::BusyWorkers::Wait);
        assert_eq!(groups[2], Scaling::Fixed { replicas: 2 });
    }

    #[test]
    fn fixed_replicas_by_default() {
        assert_eq!(validate(&spec(BASE)).unwrap(), Scaling::Fixed { replicas: 1 });
    }

    #[test]
    fn seed_scale_target_ref_maps_to_builtin_policies() {
        let s = spec(&format!(
            "{BASE}
  scaleTargetRef:
  - kind: worker
    minReplicas: 2
    maxReplicas: 8
    metrics:
    - name: message_queue
      target: {{type: length, averageValue: \"50\"}}
    - name: cpu
      target: {{type: Utilization, averageUtilization: 70}}
  - kind: flower
    minReplicas: 1
    maxReplicas: 1
"
        ));
        let scaling = validate(&s).unwrap();
        assert_eq!(scaling.policy_label(), "queue-length+cpu-memory");
        let Scaling::Policies { policies, min_replicas, max_replicas, .. } = scaling else { panic!("expected policies") };
        assert_eq!((min_replicas, max_replicas), (2, 8));
        assert_eq!(policies[0].settings["target"], "50");
        assert_eq!(policies[1].settings["cpu"], "70");
    }

    #[test]
    fn autoscaling_tuning_defaults_match_the_loop_and_can_be_set() {
        let tuning_of = |yaml: &str| match validate(&spec(&format!("{BASE}{yaml}"))) {
            Ok(Scaling::Policies { tuning, .. }) => Ok(*tuning),
            Ok(other) => panic!("expected policies, got {other:?}"),
            Err(e) => Err(e),
        };
        let defaults = tuning_of("\n  autoscaling: {policy: steps, maxReplicas: 3}\n").unwrap();
        assert_eq!(defaults, Tuning::default(), "the CRD defaults and Tuning::default agree");
        let set = tuning_of(
            "\n  autoscaling: {policy: steps, maxReplicas: 3, intervalSeconds: 5, fallbackReplicas: 2, policyMemory: 16Mi,\n    scaleDown: {stabilizationWindowSeconds: 0, maxStepPercent: 100, periodSeconds: 0}}\n",
        )
        .unwrap();
        assert_eq!(set.interval, std::time::Duration::from_secs(5));
        assert_eq!((set.fallback, set.policy_memory, set.step_percent), (Some(2), Some(16 << 20), 100));
        assert_eq!(set.stabilization, std::time::Duration::ZERO);
        assert_eq!(set.scale_up, None, "no scale-up limit unless asked for");
        let limited = tuning_of("\n  autoscaling: {policy: steps, maxReplicas: 30, scaleUp: {maxPercent: 50}}\n").unwrap();
        let want = crate::decide::stabilize::UpLimit {
            max_pods: None,
            max_percent: Some(50),
            period: std::time::Duration::from_secs(60),
        };
        assert_eq!(limited.scale_up, Some(want));
        let error = tuning_of("\n  autoscaling: {policy: steps, maxReplicas: 3, policyMemory: 12k}\n").unwrap_err();
        assert_eq!(error.field, "spec.autoscaling.policyMemory");
        let error = tuning_of("\n  autoscaling: {policy: steps, maxReplicas: 3, policyMemory: lots}\n").unwrap_err();
        assert_eq!(error.field, "spec.autoscaling.policyMemory");
        for bad in ["flower:5555", "ftp://flower", "http://"] {
            let error =
                tuning_of(&format!("\n  autoscaling: {{policy: load, maxReplicas: 3, flowerUrl: '{bad}'}}\n")).unwrap_err();
            assert_eq!(error.field, "spec.autoscaling.flowerUrl", "{bad}");
        }
        tuning_of("\n  autoscaling: {policy: load, maxReplicas: 3, flowerUrl: 'http://monitor:5555/flower'}\n").expect("valid");
    }

    #[test]
    fn autoscaling_section_wins_over_scale_target_ref() {
        let s = spec(&format!(
            "{BASE}
  autoscaling: {{policy: drain-time, minReplicas: 0, maxReplicas: 20, settings: {{seconds: '60'}}}}
  scaleTargetRef:
  - kind: worker
    maxReplicas: 3
    metrics: [{{name: memory, target: {{averageUtilization: 80}}}}]
"
        ));
        let scaling = validate(&s).unwrap();
        assert_eq!(scaling.policy_label(), "drain-time");
        assert_eq!(scaling.initial_replicas(1), 1);
        assert_eq!(scaling.initial_replicas(50), 20);
    }

    #[test]
    fn disabled_autoscaling_is_fixed() {
        let s = spec(&format!(
            "{BASE}
  workerSpec: {{numOfWorkers: 4}}
  autoscaling: {{enabled: false, policy: queue-length, maxReplicas: 9}}
"
        ));
        assert_eq!(validate(&s).unwrap(), Scaling::Fixed { replicas: 4 });
    }

    /// A URL the pods cannot use is refused whether or not the app is autoscaled, naming the
    /// field; the message puts the cause first, never shows the credentials and quotes at most
    /// a short prefix of the value.
    #[rstest::rstest]
    #[case::broker_words("broker: {url: 'this is not a url'}", "spec.broker.url")]
    #[case::broker_port("broker: {url: 'redis://:s3cret@redis:port/0'}", "spec.broker.url")]
    #[case::broker_no_scheme("broker: {url: 'user:s3cret@redis'}", "spec.broker.url")]
    #[case::broker_failover_entry("broker: {url: 'amqp://a//;amqp://u:s3cret@b:x//'}", "spec.broker.url")]
    #[case::backend("resultBackend: {url: 'this is not a url'}", "spec.resultBackend.url")]
    #[case::backend_port("resultBackend: {url: 'redis://u:s3cret@r:6379x/1'}", "spec.resultBackend.url")]
    #[case::env_broker(
        "common: {appName: demo, celeryApp: a, image: i, env: [{name: A, value: x}, {name: CELERY_BROKER_URL, value: 'not a url'}]}",
        "spec.common.env[1].value"
    )]
    #[case::env_backend(
        "common: {appName: demo, celeryApp: a, image: i, env: [{name: CELERY_RESULT_BACKEND, value: 'redis://:s3cret@r:x'}]}",
        "spec.common.env[0].value"
    )]
    fn a_url_that_is_not_one_is_refused_with_a_fixed_count(#[case] extra: &str, #[case] field: &str) {
        let mut yaml = BASE.to_string();
        if extra.contains("common:") {
            yaml = yaml.replace("  common: {appName: demo, celeryApp: 'app:celery_app', image: example}\n", "");
        }
        yaml.push_str(&format!("  workerSpec: {{numOfWorkers: 3}}\n  {extra}\n"));
        let err = validate(&spec(&yaml)).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.starts_with("not a URL ("), "the cause first: {err}");
        assert!(!err.message.contains("s3cret"), "no password in messages: {err}");
    }

    #[test]
    fn a_long_bad_url_is_quoted_short() {
        let host = "h".repeat(10_000);
        let s = spec(&format!("{BASE}  broker: {{url: 'redis://user:s3cret@{host} x:6379/0'}}\n"));
        let err = validate(&s).unwrap_err();
        assert_eq!(err.field, "spec.broker.url");
        assert!(err.message.len() < 300, "{} characters: {err}", err.message.len());
        assert!(err.message.contains("redis://***@hhh") && err.message.contains('…'), "{err}");
        assert!(!err.message.contains("s3cret"), "{err}");
    }

    #[rstest::rstest]
    #[case::redis("broker: {url: 'redis://:p%40ss@redis:6379/0'}")]
    #[case::amqp_failover("broker: {url: 'amqp://guest@rabbit1//;amqp://guest@rabbit2//'}")]
    #[case::socket("broker: {url: 'redis+socket:///run/redis.sock'}")]
    #[case::memory("broker: {url: 'memory://'}")]
    #[case::sqs("broker: {url: 'sqs://'}")]
    #[case::backend_alias("resultBackend: {url: django-db}")]
    #[case::backend_rpc("resultBackend: {url: 'rpc://'}")]
    #[case::backend_db("resultBackend: {url: 'db+postgresql://u:p@db/celery'}")]
    #[case::backend_memcached_hosts("resultBackend: {url: 'cache+memcached://10.0.0.1:11211;10.0.0.2:11211/'}")]
    #[case::env_from_secret(
        "common: {appName: demo, celeryApp: a, image: i, env: [{name: CELERY_BROKER_URL, valueFrom: {secretKeyRef: {name: s, key: k}}}]}"
    )]
    fn urls_celery_takes_are_accepted(#[case] extra: &str) {
        let mut yaml = BASE.to_string();
        if extra.contains("common:") {
            yaml = yaml.replace("  common: {appName: demo, celeryApp: 'app:celery_app', image: example}\n", "");
        }
        yaml.push_str(&format!("  {extra}\n"));
        validate(&spec(&yaml)).expect("valid");
    }

    /// Celery takes the last of a repeated option, so an extra argument repeating one the
    /// operator sets would silently override a field of the spec.
    #[rstest::rstest]
    #[case::app(
        "workerSpec: {extraArgs: ['--app=other']}",
        "spec.workerSpec.extraArgs[0]",
        "--app is set by spec.common.celeryApp"
    )]
    #[case::app_short(
        "workerSpec: {extraArgs: ['-Ofair', '-A', other]}",
        "spec.workerSpec.extraArgs[1]",
        "-A (--app) is set by spec.common.celeryApp"
    )]
    #[case::app_short_attached("workerSpec: {extraArgs: ['-Aother']}", "spec.workerSpec.extraArgs[0]", "-A (--app) is set by")]
    #[case::queues(
        "workerSpec: {extraArgs: ['--queues', 'a,b']}",
        "spec.workerSpec.extraArgs[0]",
        "--queues is set by spec.workerSpec.queues"
    )]
    #[case::queues_short("workerSpec: {extraArgs: ['-Qa,b']}", "spec.workerSpec.extraArgs[0]", "-Q (--queues) is set by")]
    #[case::concurrency(
        "workerSpec: {extraArgs: ['-E', '--concurrency=8']}",
        "spec.workerSpec.extraArgs[1]",
        "--concurrency is set by spec.workerSpec.concurrency"
    )]
    #[case::concurrency_short(
        "workerSpec: {extraArgs: ['-c', '8']}",
        "spec.workerSpec.extraArgs[0]",
        "-c (--concurrency) is set by"
    )]
    #[case::loglevel(
        "workerSpec: {extraArgs: ['--loglevel', debug]}",
        "spec.workerSpec.extraArgs[0]",
        "--loglevel is set by spec.workerSpec.logLevel"
    )]
    #[case::loglevel_short("workerSpec: {extraArgs: ['-ldebug']}", "spec.workerSpec.extraArgs[0]", "-l (--loglevel) is set by")]
    #[case::max_tasks(
        "workerSpec: {extraArgs: ['--max-tasks-per-child=10']}",
        "spec.workerSpec.extraArgs[0]",
        "--max-tasks-per-child is set by spec.workerSpec.maxTasksPerChild"
    )]
    #[case::flower_port(
        "flowerSpec: {extraArgs: ['--port=8080']}",
        "spec.flowerSpec.extraArgs[0]",
        "--port is set by the operator"
    )]
    #[case::flower_port_separate(
        "flowerSpec: {extraArgs: ['--persistent=True', '--port', '8080']}",
        "spec.flowerSpec.extraArgs[1]",
        "--port is set by"
    )]
    #[case::flower_app(
        "flowerSpec: {extraArgs: ['-A', x]}",
        "spec.flowerSpec.extraArgs[0]",
        "-A (--app) is set by spec.common.celeryApp"
    )]
    #[case::group_queues(
        "workerGroups: [{name: a, queues: a}, {name: b, queues: b, extraArgs: ['-Q', c]}]",
        "spec.workerGroups[1].extraArgs[0]",
        "-Q (--queues) is set by spec.workerGroups[1].queues"
    )]
    #[case::pool_field_and_arg(
        "workerSpec: {pool: threads, extraArgs: ['--pool=solo']}",
        "spec.workerSpec.extraArgs[0]",
        "--pool is set by spec.workerSpec.pool"
    )]
    #[case::beat_schedule(
        "beat: {extraArgs: ['-s', '/tmp/x']}",
        "spec.beat.extraArgs[0]",
        "-s (--schedule) is set by spec.beat.schedule"
    )]
    fn extra_args_may_not_repeat_what_the_spec_sets(#[case] extra: &str, #[case] field: &str, #[case] message: &str) {
        let err = validate(&spec(&format!("{BASE}  {extra}\n"))).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.starts_with(message), "{err}");
    }

    #[test]
    fn other_extra_args_are_welcome() {
        let s = spec(&format!(
            "{BASE}  workerSpec: {{extraArgs: ['-Ofair', '--prefetch-multiplier=1', '-P', threads, '--apple', '--', '-c']}}
  flowerSpec: {{extraArgs: ['--persistent=True', '--url_prefix=flower', '--address=0.0.0.0']}}\n"
        ));
        validate(&s).expect("valid");
    }

    #[rstest::rstest]
    #[case::bad_cpu("workerSpec: {resources: {requests: {cpu: lots}}}", "spec.workerSpec.resources.requests.cpu")]
    #[case::request_over_limit(
        "flowerSpec: {resources: {requests: {memory: 2Gi}, limits: {memory: 1Gi}}}",
        "spec.flowerSpec.resources.requests.memory"
    )]
    #[case::reserved_label("common: {appName: demo, celeryApp: a, image: i, podLabels: {app: x}}", "spec.common.podLabels.app")]
    #[case::two_worker_targets(
        "scaleTargetRef: [{kind: worker, maxReplicas: 2, metrics: [{name: cpu, target: {averageUtilization: 5}}]}, {kind: worker, maxReplicas: 3}]",
        "spec.scaleTargetRef[1]"
    )]
    #[case::env_collides_with_broker(
        "broker: {url: 'redis://r'}\n  common: {appName: demo, celeryApp: a, image: i, env: [{name: CELERY_BROKER_URL, value: x}]}",
        "spec.common.env[0]"
    )]
    #[case::env_twice(
        "common: {appName: demo, celeryApp: a, image: i, env: [{name: A, value: x}, {name: A, value: y}]}",
        "spec.common.env[1]"
    )]
    #[case::queue_value_zero(
        "scaleTargetRef: [{kind: worker, maxReplicas: 2, metrics: [{name: message_queue, target: {averageValue: 0}}]}]",
        "spec.scaleTargetRef[0].metrics[0].target.averageValue"
    )]
    #[case::queue_value_not_a_number(
        "scaleTargetRef: [{kind: worker, maxReplicas: 2, metrics: [{name: message_queue, target: {averageValue: many}}]}]",
        "spec.scaleTargetRef[0].metrics[0].target.averageValue"
    )]
    #[case::no_metrics("scaleTargetRef: [{kind: worker, maxReplicas: 2}]", "spec.scaleTargetRef[0].metrics")]
    #[case::duplicate_metric(
        "scaleTargetRef: [{kind: worker, maxReplicas: 2, metrics: [{name: cpu, target: {averageUtilization: 5}}, {name: cpu, target: {averageUtilization: 6}}]}]",
        "spec.scaleTargetRef[0].metrics[1]"
    )]
    #[case::queue_without_value(
        "scaleTargetRef: [{kind: worker, maxReplicas: 2, metrics: [{name: message_queue, target: {type: length}}]}]",
        "spec.scaleTargetRef[0].metrics[0].target.averageValue"
    )]
    #[case::group_name_twice(
        "workerGroups: [{name: a, queues: x}, {name: b, queues: y}, {name: a, queues: z}]",
        "spec.workerGroups[2].name"
    )]
    #[case::group_deployment_too_long(
        "workerGroups: [{name: a-very-long-group-name-that-goes-on-and-on-and-on, queues: x}]",
        "spec.workerGroups[0].name"
    )]
    #[case::group_resources(
        "workerGroups: [{name: a, queues: x}, {name: b, queues: y, resources: {requests: {cpu: lots}}}]",
        "spec.workerGroups[1].resources.requests.cpu"
    )]
    #[case::group_policy_memory(
        "workerGroups: [{name: a, queues: x, autoscaling: {policy: queue-length, maxReplicas: 3, policyMemory: 10Ki}}]",
        "spec.workerGroups[0].autoscaling.policyMemory"
    )]
    #[case::beat_resources("beat: {resources: {limits: {memory: lots}}}", "spec.beat.resources.limits.memory")]
    #[case::schedule_with_numbered_days(
        "autoscaling: {policy: steps, maxReplicas: 3, schedules: [{name: office, cron: '0 9 * * 1-5', durationSeconds: 60, minReplicas: 2}]}",
        "spec.autoscaling.schedules[0].cron"
    )]
    #[case::schedule_time_zone(
        "workerGroups: [{name: a, queues: x, autoscaling: {policy: steps, maxReplicas: 3, schedules: [{name: n, cron: '@daily', durationSeconds: 60, maxReplicas: 1}, {name: o, cron: '@daily', durationSeconds: 60, minReplicas: 2, timeZone: Paris}]}}]",
        "spec.workerGroups[0].autoscaling.schedules[1].timeZone"
    )]
    #[case::sidecar_named_like_the_worker(
        "common: {appName: demo, celeryApp: app, image: i, containers: [{name: proxy, image: p}, {name: worker, image: p}]}",
        "spec.common.containers[1].name"
    )]
    #[case::sidecar_named_like_flower(
        "common: {appName: demo, celeryApp: app, image: i, initContainers: [{name: flower, image: p}]}",
        "spec.common.initContainers[0].name"
    )]
    #[case::group_sidecar_named_like_the_worker(
        "workerGroups: [{name: a, queues: x, containers: [{name: worker, image: p}]}]",
        "spec.workerGroups[0].containers[0].name"
    )]
    #[case::mount_of_a_missing_volume(
        "workerGroups: [{name: a, queues: x}, {name: b, queues: y, volumeMounts: [{name: cfg, mountPath: /etc/app}]}]",
        "spec.workerGroups[1].volumeMounts[0].name"
    )]
    #[case::a_groups_volume_is_not_anothers(
        "workerGroups: [{name: a, queues: x, volumes: [{name: cfg, emptyDir: {}}]}, {name: b, queues: y, volumeMounts: [{name: cfg, mountPath: /etc/app}]}]",
        "spec.workerGroups[1].volumeMounts[0].name"
    )]
    #[case::sidecar_mount_of_a_missing_volume(
        "workerSpec: {containers: [{name: proxy, image: p, volumeMounts: [{name: nope, mountPath: /x}]}]}",
        "spec.workerSpec.containers[0].volumeMounts[0].name"
    )]
    #[case::init_and_sidecar_of_one_name(
        "workerSpec: {initContainers: [{name: a, image: i}], containers: [{name: a, image: i}]}",
        "spec.workerSpec.containers[0].name"
    )]
    #[case::beats_own_volume("beat: {volumes: [{name: beat-schedule, emptyDir: {}}]}", "spec.beat.volumes[0].name")]
    #[case::beats_own_mount_path(
        "beat: {volumes: [{name: v, emptyDir: {}}], volumeMounts: [{name: v, mountPath: /var/lib/celery-beat/}]}",
        "spec.beat.volumeMounts[0].mountPath"
    )]
    fn names_the_field_at_fault(#[case] extra: &str, #[case] field: &str) {
        let mut yaml = BASE.to_string();
        if extra.contains("common:") {
            yaml = yaml.replace("  common: {appName: demo, celeryApp: 'app:celery_app', image: example}\n", "");
        }
        yaml.push_str("  ");
        yaml.push_str(extra);
        yaml.push('\n');
        let err = validate(&spec(&yaml)).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn volumes_and_containers_merge_with_commons() {
        let mut yaml = BASE.replace(
            "  common: {appName: demo, celeryApp: 'app:celery_app', image: example}\n",
            "  common: {appName: demo, celeryApp: app, image: i, volumes: [{name: cfg, configMap: {name: c}}], volumeMounts: [{name: cfg, mountPath: /etc/app}], containers: [{name: proxy, image: p}]}\n",
        );
        // A group mounts common's volume, replaces its sidecar and adds its own volume; beat
        // with the file scheduler keeps its schedule volume beside them; a Flower sidecar named
        // `beat` is no clash (only the beat pod's container is called so).
        yaml.push_str(
            "  workerGroups: [{name: a, queues: x, volumes: [{name: tmp, emptyDir: {}}], volumeMounts: [{name: tmp, mountPath: /tmp}], containers: [{name: proxy, image: p2, volumeMounts: [{name: cfg, mountPath: /cfg}]}]}]\n  beat: {volumeMounts: [{name: cfg, mountPath: /etc/beat}]}\n  flowerSpec: {enabled: false}\n",
        );
        validate(&spec(&yaml)).expect("valid");
        let with_beat_sidecar =
            yaml.replace("beat: {volumeMounts", "beat: {containers: [{name: flower, image: f}], volumeMounts");
        validate(&spec(&with_beat_sidecar)).expect("flower is off: its name is free in the beat pod");
    }
}
