//! Bytes → a checked, compiled, linked policy ready for calls.
//!
//! The kind (component or core module) is read from the binary's header; WAT text is accepted
//! too, for fixtures and authors. Anything else is `NotWasm`, which also covers precompiled
//! native artifacts: a user can never get one deserialized (see `cache`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::cache::{self, ArtifactCache, Compiled, Kind, Origin};
use super::component::ComponentPolicy;
use super::core_module::CorePolicy;
use super::engine::PolicyEngine;
use super::runner::{CallLimits, Pace};
use super::{Decision, HISTORY, PolicyError, PolicyInput};

/// How a policy talks to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    /// A component of the `scaling-policy` world.
    Component,
    /// A core module speaking the JSON ABI.
    Core,
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interface::Component => "component",
            Interface::Core => "core",
        })
    }
}

/// Where a policy came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Shipped with the operator.
    BuiltIn(PathBuf),
    /// Installed by a user in the watched directory.
    User(PathBuf),
    /// Named on the command line.
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::BuiltIn(p) => write!(f, "built-in ({})", p.display()),
            Source::User(p) => write!(f, "user ({})", p.display()),
            Source::File(p) => write!(f, "file ({})", p.display()),
        }
    }
}

/// What `NAME.json` beside a module says of it (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The source language, shown by `policy list`.
    pub language: Option<String>,
    /// How many of the latest history samples the policy reads; the host sends no more.
    /// `None` sends the whole window. Copying a minute of samples into a guest costs more
    /// than most decisions, so a policy that never looks back should say `0`.
    pub history: Option<usize>,
    /// How many of the latest history samples the `window` interface hands out as columns,
    /// for a component that imports it; `None` hands the whole window.
    pub columns: Option<usize>,
}

impl Metadata {
    /// Reads `NAME.json` beside `wasm`: none is no metadata; one that cannot be read or has a
    /// field of the wrong type is an error naming the file and the field.
    pub fn beside(wasm: &Path) -> Result<Self, String> {
        let path = wasm.with_extension("json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let language = match value.get("language") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => return Err(format!("{}: `language` must be a string, got {other}", path.display())),
        };
        let samples = |field: &str| match value.get(field) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
                Some(n) => Ok(Some(n)),
                None => Err(format!("{}: `{field}` must be a whole number of samples (0 for none), got {v}", path.display())),
            },
        };
        Ok(Self { language, history: samples("history")?, columns: samples("columns")? })
    }
}

/// What loading cost.
#[derive(Clone, Copy, Debug)]
pub struct LoadStats {
    /// Compiled now, or deserialized from the cache.
    pub from_cache: bool,
    /// Time to compile or to deserialize.
    pub artifact: Duration,
    /// Time for everything: digest, artifact, checks, linking and the probe instance.
    pub total: Duration,
}

enum Runnable {
    Component(ComponentPolicy),
    Core(CorePolicy),
}

/// A policy ready for calls. Cheap to share behind an `Arc`; every call gets its own store.
pub struct LoadedPolicy {
    name: String,
    digest: String,
    interface: Interface,
    source: Source,
    metadata: Metadata,
    stats: LoadStats,
    engine: PolicyEngine,
    runnable: Runnable,
    /// Whether its calls have been fast enough to run on the caller's thread (see `runner`).
    pace: Pace,
}

impl fmt::Debug for LoadedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPolicy")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("interface", &self.interface)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// The hex sha256 of a module's bytes: what `name@sha256:<hex>` pins.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// The sha256 of a module's bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compiles a module; a core module with a reactor's `_initialize` is pre-initialised first
/// (see `core_module`), so that its instances start initialised.
fn compile(engine: &PolicyEngine, name: &str, kind: Kind, bytes: &[u8]) -> wasmtime::Result<Compiled> {
    if kind == Kind::Module && super::core_module::has_initialize(bytes) {
        let start = Instant::now();
        match super::core_module::preinitialize(engine, name, bytes, &CallLimits::default().within(engine)) {
            Ok(snapshot) => {
                tracing::debug!(policy = %name, took = ?start.elapsed(), "pre-initialised");
                return cache::compile(engine.engine(), kind, &snapshot);
            }
            Err(why) => tracing::info!(policy = %name, %why, "not pre-initialised: _initialize runs in every call"),
        }
    }
    cache::compile(engine.engine(), kind, bytes)
}

/// Reads the kind from a binary header or the first form of WAT text.
fn kind_of(bytes: &[u8]) -> Option<Kind> {
    if let Some(header) = bytes.strip_prefix(b"\0asm") {
        // Core modules are version 1 (layer 0); components have layer 1 in bytes 6..8.
        return Some(if header.get(2..4) == Some(&[1, 0]) { Kind::Component } else { Kind::Module });
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let code =
        text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with(";;")).collect::<Vec<_>>().join(" ");
    if code.starts_with("(component") {
        Some(Kind::Component)
    } else if code.starts_with("(module") {
        Some(Kind::Module)
    } else {
        None
    }
}

impl LoadedPolicy {
    /// Loads `bytes` as the policy `name`, through `cache` when given.
    pub fn load(
        engine: &PolicyEngine,
        cache: Option<&ArtifactCache>,
        name: &str,
        bytes: &[u8],
        source: Source,
        metadata: Metadata,
    ) -> Result<Self, PolicyError> {
        Self::load_with_digest(engine, cache, name, bytes, &sha256(bytes), source, metadata)
    }

    /// [`load`](Self::load) when the caller has hashed `bytes` already (`sha256` is
    /// [`sha256`]`(bytes)`), so a large module is hashed once.
    pub fn load_with_digest(
        engine: &PolicyEngine,
        cache: Option<&ArtifactCache>,
        name: &str,
        bytes: &[u8],
        sha256: &[u8; 32],
        source: Source,
        metadata: Metadata,
    ) -> Result<Self, PolicyError> {
        let start = Instant::now();
        let kind = kind_of(bytes).ok_or_else(|| PolicyError::NotWasm { policy: name.to_string() })?;
        let invalid = |e: wasmtime::Error| PolicyError::Invalid { policy: name.to_string(), detail: format!("{e:#}") };
        let compile = || compile(engine, name, kind, bytes);
        let (compiled, origin, artifact) = match cache {
            Some(cache) => cache.load_or_compile(engine.engine(), kind, sha256, compile).map_err(invalid)?,
            None => {
                let start = Instant::now();
                let compiled = compile().map_err(invalid)?;
                (compiled, Origin::Compiled, start.elapsed())
            }
        };
        let probe_limits = CallLimits::default().within(engine);
        let (runnable, interface) = match compiled {
            Compiled::Component(c) => (Runnable::Component(ComponentPolicy::new(engine, name, &c)?), Interface::Component),
            Compiled::Module(m) => (Runnable::Core(CorePolicy::new(engine, name, &m, &probe_limits)?), Interface::Core),
        };
        Ok(Self {
            name: name.to_string(),
            digest: hex::encode(sha256),
            interface,
            source,
            metadata,
            stats: LoadStats { from_cache: origin == Origin::Cache, artifact, total: start.elapsed() },
            engine: engine.clone(),
            runnable,
            pace: Pace::default(),
        })
    }

    /// Loads a file; the policy is named after the file without its extension.
    pub fn load_file(
        engine: &PolicyEngine,
        cache: Option<&ArtifactCache>,
        path: &Path,
        source: Source,
        metadata: Metadata,
    ) -> Result<Self, PolicyError> {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes =
            std::fs::read(path).map_err(|source| PolicyError::Io { policy: name.clone(), path: path.to_path_buf(), source })?;
        Self::load(engine, cache, &name, &bytes, source, metadata)
    }

    /// One decision in a fresh instance, on the calling thread. Not clamped: see `runner`.
    /// The history is cut to the latest samples the policy's metadata asks for, as records
    /// (`history`) and, for a component that imports `window`, as columns (`columns`).
    pub fn decide(&self, limits: &CallLimits, input: &PolicyInput) -> Result<Decision, PolicyError> {
        let limits = limits.within(&self.engine);
        // Cut, not copied: the call encodes the input itself.
        let latest = |wanted: Option<usize>| {
            let keep = wanted.unwrap_or(usize::MAX).min(input.history.len());
            &input.history[input.history.len() - keep..]
        };
        let history = latest(self.metadata.history);
        match &self.runnable {
            Runnable::Component(c) => c.decide(&self.engine, &self.name, &limits, input, history, latest(self.metadata.columns)),
            Runnable::Core(c) => c.decide(&self.engine, &self.name, &limits, input, history),
        }
    }

    /// Asks the policy whether `settings` are acceptable, on the calling thread.
    pub fn validate_settings(&self, limits: &CallLimits, settings: &BTreeMap<String, String>) -> Result<(), PolicyError> {
        let limits = limits.within(&self.engine);
        match &self.runnable {
            Runnable::Component(c) => c.validate_settings(&self.engine, &self.name, &limits, settings),
            Runnable::Core(c) => c.validate_settings(&self.engine, &self.name, &limits, settings),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How fast its calls have been: whether the next may run on the caller's thread.
    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    /// Hex sha256 of the module's bytes.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn interface(&self) -> Interface {
        self.interface
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The source language, where the module's metadata says.
    pub fn language(&self) -> Option<&str> {
        self.metadata.language.as_deref()
    }

    /// What `NAME.json` said of the module.
    /// How many samples of history the policy reads in any form: records, and columns when it
    /// imports `window`. The loop keeps no more than its policies read.
    pub fn reads(&self) -> usize {
        self.metadata.history.unwrap_or(HISTORY).max(self.window().unwrap_or(0)).min(HISTORY)
    }

    /// Samples of history handed as columns, for a component that imports `window`.
    pub fn window(&self) -> Option<usize> {
        match &self.runnable {
            Runnable::Component(c) if c.reads_window() => Some(self.metadata.columns.unwrap_or(HISTORY).min(HISTORY)),
            _ => None,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub fn stats(&self) -> LoadStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_read_from_headers_and_text() {
        assert_eq!(kind_of(b"\0asm\x01\0\0\0"), Some(Kind::Module));
        assert_eq!(kind_of(b"\0asm\x0d\0\x01\0"), Some(Kind::Component));
        assert_eq!(kind_of(b";; a comment\n(module)"), Some(Kind::Module));
        assert_eq!(kind_of(b"(component)"), Some(Kind::Component));
        assert_eq!(kind_of(b"\x7fELF\x02\x01"), None);
        assert_eq!(kind_of(b"hello"), None);
    }
}
