//! The scaling-policy runtime: WebAssembly policies run in a sandbox by wasmtime.
//!
//! A policy is a component implementing `wit/policy.wit` or a core module speaking the JSON ABI
//! of `wit/CORE-ABI.md`. Both decode into the plain types of this file, whose JSON form is
//! exactly the core ABI's JSON (and the input file of `celery-operator policy eval`).
//!
//! - [`engine`]: the one wasmtime `Engine` of the process, its limits and epoch ticker.
//! - [`cache`]: compiled artifacts on disk, keyed by module digest and engine compatibility.
//! - [`sandbox`]: what a guest may touch: the empty WASI context, the memory limiter, traps.
//! - [`component`] and [`core_module`]: the two ways in.
//! - [`loader`]: bytes → a checked, compiled [`LoadedPolicy`].
//! - [`runner`]: bounded calls off the async runtime, with the host's clamping.
//! - [`registry`]: policy names → modules, built-ins plus a watched directory.
//! - [`simulate`] and [`cli`]: the `celery-operator policy …` tools for policy authors.
//!
//! This module touches no Kubernetes API: the autoscaling loop feeds it samples.

pub mod cache;
pub mod check;
pub mod cli;
pub mod component;
pub mod core_module;
pub mod engine;
pub mod loader;
pub mod registry;
pub mod runner;
pub mod sandbox;
pub mod simulate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use engine::{EngineSettings, PolicyEngine};
pub use loader::{Interface, LoadStats, LoadedPolicy, Metadata, Source};
pub use registry::{PolicyInfo, Registry, RegistrySettings};
pub use runner::{CallLimits, PolicyRunner, Verdict};

/// The component package version this host implements; components must export
/// `celery:autoscaler/policy@0.1.x`.
pub const WIT_VERSION: &str = "0.1.1";
/// The core-module JSON ABI version this host implements.
pub const CORE_ABI_VERSION: i32 = 1;

/// Samples a policy sees besides the current one, oldest first. At the default interval of
/// one second, a minute of history: enough for a rate, small enough to copy into a guest.
pub const HISTORY: usize = 60;

/// What a policy decides from (the WIT `input` record).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInput {
    /// `namespace/name` of the Celery resource.
    pub app: String,
    pub current_replicas: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
    /// Tasks one worker pod runs at once.
    pub concurrency: u32,
    pub current: Sample,
    /// Earlier samples, oldest first.
    #[serde(default)]
    pub history: Vec<Sample>,
    /// The policy's settings as string pairs; an object in JSON.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// Everything measured about an app at one instant.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Unix time of the measurement in milliseconds.
    pub timestamp_ms: u64,
    pub replicas: u32,
    #[serde(default)]
    pub queues: Vec<QueueSample>,
    #[serde(default)]
    pub pods: Vec<PodSample>,
}

/// One Celery queue as the broker reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueSample {
    pub name: String,
    /// Messages ready: the backlog.
    pub backlog: u64,
    #[serde(default)]
    pub reserved: Option<u64>,
    #[serde(default)]
    pub consumers: Option<u32>,
}

/// One worker pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSample {
    pub name: String,
    pub ready: bool,
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    pub cpu_request_millis: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub memory_request_bytes: Option<u64>,
    #[serde(default)]
    pub active_tasks: Option<u32>,
}

/// A policy's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Desired worker replicas.
    pub replicas: u32,
    /// Why, in one short sentence.
    pub reason: String,
}

/// The start of the reason of a policy that declines to decide (`wit/policy.wit`, "Declining").
pub const DECLINE_PREFIX: &str = "decline:";

impl Decision {
    /// Why the policy declined, when its reason says it does: it has no opinion this time
    /// (`combine: First` asks the next policy; with `Max`/`Min` it does not vote). The
    /// convention keeps modules built before it valid: their reasons never start so.
    pub fn declined(&self) -> Option<&str> {
        self.reason.strip_prefix(DECLINE_PREFIX).map(str::trim)
    }
}

/// Everything that can go wrong with a policy, naming the policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy}: trapped: {message}")]
    Trap { policy: String, message: String },
    #[error("policy {policy}: no answer within {limit:?}; the call was stopped")]
    Timeout { policy: String, limit: Duration },
    #[error("policy {policy}: exceeded its memory limit of {limit} bytes")]
    MemoryLimit { policy: String, limit: u64 },
    #[error("policy {policy}: invalid answer: {detail}")]
    InvalidAnswer { policy: String, detail: String },
    #[error("policy {policy}: its answer of {size} bytes exceeds the limit of {limit} bytes")]
    AnswerTooLarge { policy: String, size: u64, limit: u64 },
    #[error("policy {policy}: missing export `{export}`")]
    MissingExport { policy: String, export: String },
    #[error("policy {policy}: export `{export}` has the wrong type: expected {expected}")]
    WrongExportType { policy: String, export: String, expected: String },
    #[error("policy {policy}: built for {found}, but this operator supports {supported}")]
    IncompatibleVersion { policy: String, found: String, supported: String },
    #[error(
        "policy {policy}: imports `{import}`, which policies may not use \
         (allowed: the celery-operator host interface and WASI with an empty context)"
    )]
    ForbiddenImport { policy: String, import: String },
    #[error("unknown policy `{name}`; known policies: {known}")]
    UnknownPolicy { name: String, known: String },
    #[error("policy {policy}: not a WebAssembly module or component")]
    NotWasm { policy: String },
    #[error("policy {policy}: does not compile: {detail}")]
    Invalid { policy: String, detail: String },
    #[error("policy {policy}: returned an error: {message}")]
    Rejected { policy: String, message: String },
    #[error("policy {policy}: not loaded: {problem}")]
    Unavailable { policy: String, problem: String },
    #[error("policy {policy}: settings rejected: {message}")]
    InvalidSettings { policy: String, message: String },
    #[error("policy {name}: pinned to sha256:{wanted}, but the module has sha256:{found}")]
    DigestMismatch { name: String, wanted: String, found: String },
    #[error("policy {policy}: cannot read {}: {source}", path.display())]
    Io {
        policy: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy {policy}: the host could not run it: {detail}")]
    Host { policy: String, detail: String },
    #[error("policy runtime: {0}")]
    Engine(String),
}

impl PolicyError {
    /// A permanent error needs a new module or new settings; a transient one may pass on retry.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, PolicyError::Host { .. } | PolicyError::Io { .. })
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes cut)", &text[..end], text.len() - end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of the core ABI document is accepted as is and written back the same way.
    #[test]
    fn input_json_matches_core_abi() {
        let json = r#"{
          "app": "shop/orders",
          "currentReplicas": 2, "minReplicas": 1, "maxReplicas": 10, "concurrency": 4,
          "current": {
            "timestampMs": 1764000000000, "replicas": 2,
            "queues": [{"name": "celery", "backlog": 120, "reserved": 8, "consumers": 2}],
            "pods": [{"name": "orders-celery-worker-abc", "ready": true, "cpuMillis": 450,
                      "cpuRequestMillis": 500, "memoryBytes": 104857600,
                      "memoryRequestBytes": 134217728, "activeTasks": 4}]
          },
          "history": [],
          "settings": {"target": "30"}
        }"#;
        let input: PolicyInput = serde_json::from_str(json).expect("ABI example parses");
        assert_eq!(input.current.queues[0].backlog, 120);
        assert_eq!(input.current.pods[0].cpu_request_millis, Some(500));
        assert_eq!(input.settings.get("target").map(String::as_str), Some("30"));
        let back = serde_json::to_value(&input).expect("serializes");
        assert_eq!(back["currentReplicas"], 2);
        assert_eq!(back["current"]["pods"][0]["memoryRequestBytes"], 134217728);
        assert_eq!(back["settings"]["target"], "30");
    }

    #[test]
    fn absent_numbers_are_null() {
        let q = QueueSample { name: "q".into(), backlog: 1, reserved: None, consumers: None };
        let v = serde_json::to_value(&q).expect("serializes");
        assert!(v["reserved"].is_null());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h… (5 bytes cut)");
        assert_eq!(truncate("ok", 10), "ok");
    }
}
