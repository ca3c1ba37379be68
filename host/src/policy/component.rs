//! Policies that are components of the `scaling-policy` world in `wit/policy.wit`.
//!
//! The component is checked at load (it must export `celery:autoscaler/policy@0.1.x` and import
//! only the host interface and WASI), linked once into an `InstancePre`, and instantiated in a
//! fresh `Store` for every call. WASI is linked because Rust std, C stdio and some component
//! toolchains import it even when a policy never uses it; its context is the empty one of
//! `sandbox`.

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
/// Interfaces of WASI a component may import; the filesystem, sockets and HTTP are not among
/// them (no built-in needs them: build components without WASI, as `policies/` does).
const ALLOWED_WASI: &[&str] = &["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/"];

/// Per-call state of a component's store.
pub struct ComponentState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    output: GuestOutput,
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

/// A loaded, linked component policy.
pub struct ComponentPolicy {
    pre: ScalingPolicyPre<ComponentState>,
}

impl ComponentPolicy {
    /// Checks the component's interface and links it.
    pub fn new(engine: &PolicyEngine, policy: &str, component: &Component) -> Result<Self, PolicyError> {
        check_interface(engine, policy, component)?;
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
        Ok(Self { pre })
    }

    /// One decision in a fresh instance.
    pub fn decide(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        input: &PolicyInput,
        history: &[super::Sample],
    ) -> Result<Decision, PolicyError> {
        let wit_input = to_wit(input, history);
        let answer = self.call(engine, policy, limits, input.current.timestamp_ms, |store, instance| {
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
        let answer = self.call(engine, policy, limits, now, |store, instance| {
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
        body: impl FnOnce(&mut Store<ComponentState>, &ScalingPolicy) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        let output = GuestOutput::default();
        let state = ComponentState {
            wasi: sandbox::empty_wasi(sample_ms, &output).build(),
            table: ResourceTable::new(),
            limiter: Limiter::new(limits.memory_bytes),
            output: output.clone(),
        };
        sandbox::run_bounded(engine, policy, limits, &output, state, |store| {
            let instance = self.pre.instantiate(&mut *store)?;
            body(store, &instance)
        })
    }
}

/// Refuses a component that does not speak this host's version or imports too much.
fn check_interface(engine: &PolicyEngine, policy: &str, component: &Component) -> Result<(), PolicyError> {
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
    for (name, _) in ty.imports(engine.engine()) {
        if let Some(version) =
            ["celery:autoscaler/host", "celery:autoscaler/types"].iter().find_map(|interface| versioned(name, interface))
        {
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
    Ok(())
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
}
