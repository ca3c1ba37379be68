//! Policies that are components of the `scaling-policy` world in `wit/policy.wit`.
//!
//! The component is checked at load (it must export `celery:autoscaler/policy@0.1.x` and import
//! only the host and window interfaces and WASI), linked once into an `InstancePre`, and
//! instantiated in a fresh `Store` for every call. WASI is linked because Rust std, C stdio and
//! some component toolchains import it even when a policy never uses it; its context is the
//! empty one of `sandbox`.
//!
//! A component that imports `window` gets the history as [`Columns`], built for the call only
//! when it does: the store holds them and each import copies one out.

use std::collections::BTreeMap;

use wasmtime::Store;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::engine::PolicyEngine;
use super::runner::CallLimits;
use super::sandbox::{self, GuestOutput, Limiter, LogLevel};
use super::{Decision, PolicyError, PolicyInput, truncate};

mod bindings {
    wasmtime::component::bindgen!({
        world: "scaling-policy",
        path: "../wit",
    });
}

use bindings::celery::autoscaler::types as wit;
use bindings::{ScalingPolicy, ScalingPolicyPre};

/// The interface a policy component exports, without version.
const POLICY_EXPORT: &str = "celery:autoscaler/policy";
const PACKAGE: &str = "celery:autoscaler";
/// The interface that hands the history window as columns (since 0.1.1), without version.
const WINDOW_IMPORT: &str = "celery:autoscaler/window";
/// Interfaces of WASI a component may import; the filesystem, sockets and HTTP are not among
/// them (no built-in needs them: build components without WASI, as `policies/` does).
const ALLOWED_WASI: &[&str] = &["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/"];

/// Per-call state of a component's store.
pub struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    output: GuestOutput,
    /// The window this call hands out (empty unless the component imports `window`).
    columns: Columns,
}

/// The history window as the `window` interface hands it: one list per quantity, one entry per
/// sample, oldest first, ending with the current sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    pub timestamps_ms: Vec<u64>,
    pub replicas: Vec<u32>,
    pub backlog: Vec<u64>,
    pub reserved: Vec<u64>,
    pub ready_pods: Vec<u32>,
    pub cpu_millis: Vec<u64>,
    pub memory_bytes: Vec<u64>,
    pub active_tasks: Vec<u32>,
}

impl Columns {
    /// Columns of `samples`; a figure a queue or pod does not report adds nothing to its sum.
    pub fn of<'a>(samples: impl Iterator<Item = &'a super::Sample>) -> Self {
        let n = samples.size_hint().0;
        let mut c = Self {
            timestamps_ms: Vec::with_capacity(n),
            replicas: Vec::with_capacity(n),
            backlog: Vec::with_capacity(n),
            reserved: Vec::with_capacity(n),
            ready_pods: Vec::with_capacity(n),
            cpu_millis: Vec::with_capacity(n),
            memory_bytes: Vec::with_capacity(n),
            active_tasks: Vec::with_capacity(n),
        };
        for s in samples {
            c.timestamps_ms.push(s.timestamp_ms);
            c.replicas.push(s.replicas);
            c.backlog.push(s.queues.iter().map(|q| q.backlog).fold(0, u64::saturating_add));
            c.reserved.push(s.queues.iter().filter_map(|q| q.reserved).fold(0, u64::saturating_add));
            c.ready_pods.push(s.pods.iter().filter(|p| p.ready).count().try_into().unwrap_or(u32::MAX));
            c.cpu_millis.push(s.pods.iter().filter_map(|p| p.cpu_millis).fold(0, u64::saturating_add));
            c.memory_bytes.push(s.pods.iter().filter_map(|p| p.memory_bytes).fold(0, u64::saturating_add));
            c.active_tasks.push(s.pods.iter().filter_map(|p| p.active_tasks).fold(0, u32::saturating_add));
        }
        c
    }
}

impl sandbox::Limited for ComponentState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
    fn limiter_ref(&self) -> &Limiter {
        &self.limiter
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl bindings::celery::autoscaler::host::Host for ComponentState {
    fn log(&mut self, level: wit::Level, message: String) {
        let level = match level {
            wit::Level::Debug => LogLevel::Debug,
            wit::Level::Info => LogLevel::Info,
            wit::Level::Warn => LogLevel::Warn,
            wit::Level::Error => LogLevel::Error,
        };
        self.output.log(level, &message);
    }
}

impl wit::Host for ComponentState {}

impl bindings::celery::autoscaler::window::Host for ComponentState {
    fn timestamps_ms(&mut self) -> Vec<u64> {
        self.columns.timestamps_ms.clone()
    }
    fn replicas(&mut self) -> Vec<u32> {
        self.columns.replicas.clone()
    }
    fn backlog(&mut self) -> Vec<u64> {
        self.columns.backlog.clone()
    }
    fn reserved(&mut self) -> Vec<u64> {
        self.columns.reserved.clone()
    }
    fn ready_pods(&mut self) -> Vec<u32> {
        self.columns.ready_pods.clone()
    }
    fn cpu_millis(&mut self) -> Vec<u64> {
        self.columns.cpu_millis.clone()
    }
    fn memory_bytes(&mut self) -> Vec<u64> {
        self.columns.memory_bytes.clone()
    }
    fn active_tasks(&mut self) -> Vec<u32> {
        self.columns.active_tasks.clone()
    }
}

/// A loaded, linked component policy.
pub struct ComponentPolicy {
    pre: ScalingPolicyPre<ComponentState>,
    /// Whether the component imports `window` (and so is handed the history as columns).
    reads_window: bool,
}

impl ComponentPolicy {
    /// Checks the component's interface and links it.
    pub fn new(engine: &PolicyEngine, policy: &str, component: &Component) -> Result<Self, PolicyError> {
        let reads_window = check_interface(engine, policy, component)?;
        let mut linker = Linker::<ComponentState>::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PolicyError::Engine(format!("linking WASI: {e:#}")))?;
        ScalingPolicy::add_to_linker::<ComponentState, HasSelf<ComponentState>>(&mut linker, |state| state)
            .map_err(|e| PolicyError::Engine(format!("linking the host interface: {e:#}")))?;
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| PolicyError::Invalid { policy: policy.to_string(), detail: format!("{e:#}") })?;
        let pre = ScalingPolicyPre::new(pre).map_err(|e| PolicyError::MissingExport {
            policy: policy.to_string(),
            export: format!("{POLICY_EXPORT}@0.1.x ({e:#})"),
        })?;
        Ok(Self { pre, reads_window })
    }

    /// Whether the component imports `window`: it reads the history as columns.
    pub fn reads_window(&self) -> bool {
        self.reads_window
    }

    /// One decision in a fresh instance: `history` goes into the input's records, `window`
    /// (then the current sample) into the columns, when the component imports them.
    #[allow(clippy::too_many_arguments)]
    pub fn decide(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        input: &PolicyInput,
        history: &[super::Sample],
        window: &[super::Sample],
    ) -> Result<Decision, PolicyError> {
        let wit_input = to_wit(input, history);
        let columns = if self.reads_window {
            Columns::of(window.iter().chain(std::iter::once(&input.current)))
        } else {
            Columns::default()
        };
        let answer = self.call(engine, policy, limits, input.current.timestamp_ms, columns, |store, instance| {
            instance.celery_autoscaler_policy().call_decide(store, &wit_input)
        })?;
        match answer {
            Ok(decision) => {
                let size = decision.reason.len();
                if size > limits.output_bytes {
                    return Err(PolicyError::AnswerTooLarge {
                        policy: policy.to_string(),
                        size: size as u64,
                        limit: limits.output_bytes as u64,
                    });
                }
                Ok(Decision { replicas: decision.replicas, reason: decision.reason })
            }
            Err(message) => {
                Err(PolicyError::Rejected { policy: policy.to_string(), message: truncate(&message, sandbox::LOG_LINE_MAX) })
            }
        }
    }

    /// Asks the policy whether `settings` are acceptable.
    pub fn validate_settings(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        settings: &BTreeMap<String, String>,
    ) -> Result<(), PolicyError> {
        let pairs: Vec<(String, String)> = settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let now = jiff::Timestamp::now().as_millisecond().max(0) as u64;
        let answer = self.call(engine, policy, limits, now, Columns::default(), |store, instance| {
            instance.celery_autoscaler_policy().call_validate_settings(store, &pairs)
        })?;
        answer.map_err(|message| PolicyError::InvalidSettings {
            policy: policy.to_string(),
            message: truncate(&message, sandbox::LOG_LINE_MAX),
        })
    }

    fn call<R>(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        sample_ms: u64,
        columns: Columns,
        body: impl FnOnce(&mut Store<ComponentState>, &ScalingPolicy) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        let output = GuestOutput::default();
        let state = ComponentState {
            wasi: sandbox::empty_wasi(sample_ms, &output).build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.memory_bytes),
            output: output.clone(),
            columns,
        };
        sandbox::run_bounded(engine, policy, limits, &output, state, |store| {
            let instance = self.pre.instantiate(&mut *store)?;
            body(store, &instance)
        })
    }
}

/// Refuses a component that does not speak this host's version or imports too much; says
/// whether it imports `window`.
fn check_interface(engine: &PolicyEngine, policy: &str, component: &Component) -> Result<bool, PolicyError> {
    let ty = component.component_type();
    let supported = format!("{PACKAGE}@0.1.x");
    let mut found_export = None;
    for (name, _) in ty.exports(engine.engine()) {
        if let Some(version) = versioned(name, POLICY_EXPORT) {
            found_export = Some(version.map(str::to_string));
        }
    }
    match found_export {
        None => {
            return Err(PolicyError::MissingExport { policy: policy.to_string(), export: format!("{POLICY_EXPORT}@0.1.x") });
        }
        Some(version) if !compatible(version.as_deref()) => {
            return Err(PolicyError::IncompatibleVersion {
                policy: policy.to_string(),
                found: format!("{PACKAGE}@{}", version.as_deref().unwrap_or("(unversioned)")),
                supported,
            });
        }
        Some(_) => {}
    }
    let mut reads_window = false;
    for (name, _) in ty.imports(engine.engine()) {
        if let Some((interface, version)) = ["celery:autoscaler/host", "celery:autoscaler/types", WINDOW_IMPORT]
            .into_iter()
            .find_map(|interface| versioned(name, interface).map(|version| (interface, version)))
        {
            reads_window |= interface == WINDOW_IMPORT;
            if !compatible(version) {
                return Err(PolicyError::IncompatibleVersion {
                    policy: policy.to_string(),
                    found: format!("{PACKAGE}@{}", version.unwrap_or("(unversioned)")),
                    supported,
                });
            }
            continue;
        }
        if ALLOWED_WASI.iter().any(|prefix| name.starts_with(prefix)) {
            continue;
        }
        return Err(PolicyError::ForbiddenImport { policy: policy.to_string(), import: name.to_string() });
    }
    Ok(reads_window)
}

/// `Some(version)` when `name` is `interface` or `interface@version`.
fn versioned<'a>(name: &'a str, interface: &str) -> Option<Option<&'a str>> {
    let rest = name.strip_prefix(interface)?;
    if rest.is_empty() {
        return Some(None);
    }
    rest.strip_prefix('@').map(Some)
}

fn compatible(version: Option<&str>) -> bool {
    version.is_some_and(|v| v.starts_with("0.1."))
}

/// The input as the component sees it, with `history` (the latest of `input.history` that the
/// policy reads) in place of the whole window.
fn to_wit(input: &PolicyInput, history: &[super::Sample]) -> wit::Input {
    wit::Input {
        app: input.app.clone(),
        current_replicas: input.current_replicas,
        min_replicas: input.min_replicas,
        max_replicas: input.max_replicas,
        concurrency: input.concurrency,
        current: sample(&input.current),
        history: history.iter().map(sample).collect(),
        settings: input.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

fn sample(sample: &super::Sample) -> wit::Sample {
    wit::Sample {
        timestamp_ms: sample.timestamp_ms,
        replicas: sample.replicas,
        queues: sample
            .queues
            .iter()
            .map(|q| wit::QueueSample { name: q.name.clone(), backlog: q.backlog, reserved: q.reserved, consumers: q.consumers })
            .collect(),
        pods: sample
            .pods
            .iter()
            .map(|p| wit::PodSample {
                name: p.name.clone(),
                ready: p.ready,
                cpu_millis: p.cpu_millis,
                cpu_request_millis: p.cpu_request_millis,
                memory_bytes: p.memory_bytes,
                memory_request_bytes: p.memory_request_bytes,
                active_tasks: p.active_tasks,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_minor() {
        assert_eq!(versioned("celery:autoscaler/policy@0.1.3", POLICY_EXPORT), Some(Some("0.1.3")));
        assert_eq!(versioned("celery:autoscaler/policy", POLICY_EXPORT), Some(None));
        assert_eq!(versioned("celery:autoscaler/policyx@0.1.0", POLICY_EXPORT), None);
        assert!(compatible(Some("0.1.9")));
        assert!(!compatible(Some("0.2.0")));
        assert!(!compatible(None));
    }

    #[test]
    fn columns_sum_what_was_measured_oldest_first() {
        use super::super::{PodSample, QueueSample, Sample};
        let queue = |backlog, reserved| QueueSample { name: "q".into(), backlog, reserved, consumers: None };
        let pod = |ready, cpu: Option<u64>, tasks: Option<u32>| PodSample {
            name: "p".into(),
            ready,
            cpu_millis: cpu,
            cpu_request_millis: Some(500),
            memory_bytes: cpu.map(|c| c * 1000),
            memory_request_bytes: None,
            active_tasks: tasks,
        };
        let older = Sample { timestamp_ms: 1_000, replicas: 2, queues: vec![queue(5, None), queue(7, Some(3))], pods: vec![] };
        let newer = Sample {
            timestamp_ms: 2_000,
            replicas: 3,
            queues: vec![queue(u64::MAX, Some(1)), queue(1, None)],
            pods: vec![pod(true, Some(100), Some(2)), pod(false, None, None), pod(true, Some(50), Some(4))],
        };
        let c = Columns::of([older, newer].iter());
        assert_eq!(c.timestamps_ms, [1_000, 2_000]);
        assert_eq!(c.replicas, [2, 3]);
        // A sum that would overflow holds at the maximum.
        assert_eq!(c.backlog, [12, u64::MAX]);
        assert_eq!(c.reserved, [3, 1]);
        assert_eq!(c.ready_pods, [0, 2]);
        assert_eq!(c.cpu_millis, [0, 150]);
        assert_eq!(c.memory_bytes, [0, 150_000]);
        assert_eq!(c.active_tasks, [0, 6]);
    }
}
