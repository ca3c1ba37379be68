//! Policies that are core modules speaking the JSON ABI of `wit/CORE-ABI.md` (version 1).
//!
//! At load the module's imports and exports are checked by name and type, and one probe
//! instance reads `celery_policy_abi_version`. Each call then gets a fresh `Store` and
//! instance: `_initialize` (for WASI reactors such as Go's c-shared output), `alloc`, the
//! input copied in, the call, and the answer copied out within the output limit. WASI
//! preview 1 is linked with the empty context of `sandbox`.
//!
//! A reactor's `_initialize` (Go's runtime start-up: about 0.5 ms) is run once, at load, by
//! [`preinitialize`]: the module is instrumented with Wizer, initialised in the same sandbox a
//! call gets, and its memory and globals are snapshotted into a new module without
//! `_initialize` (nor the emptied data segments Wizer leaves, when nothing can read them),
//! which is what gets compiled and cached. Every fresh instance then starts initialised. A
//! module Wizer cannot snapshot is run as it is, initialised in every call.

use std::collections::BTreeMap;

use wasmtime::{Caller, Extern, ExternType, InstancePre, Linker, Memory, Module, Store, ValType};
use wasmtime_wasi::p1::WasiP1Ctx;

use super::engine::PolicyEngine;
use super::runner::CallLimits;
use super::sandbox::{self, GuestOutput, Limiter, LogLevel};
use super::{CORE_ABI_VERSION, Decision, PolicyError, PolicyInput, Sample, truncate};

const HOST_MODULE: &str = "celery_policy";
const WASI_MODULE: &str = "wasi_snapshot_preview1";
const MEMORY: &str = "memory";
const ABI_VERSION: &str = "celery_policy_abi_version";
const ALLOC: &str = "celery_policy_alloc";
const DECIDE: &str = "celery_policy_decide";
const VALIDATE: &str = "celery_policy_validate_settings";

/// Per-call state of a core module's store.
pub struct CoreState {
    wasi: WasiP1Ctx,
    limiter: Limiter,
    output: GuestOutput,
}

impl sandbox::Limited for CoreState {
    fn limiter(&mut self) -> &mut Limiter {
        &mut self.limiter
    }
    fn limiter_ref(&self) -> &Limiter {
        &self.limiter
    }
}

/// A loaded, linked core-module policy.
pub struct CorePolicy {
    pre: InstancePre<CoreState>,
    /// Whether every instance must run `_initialize` (a reactor that was not pre-initialised).
    initialize: bool,
}

impl CorePolicy {
    /// Checks the module against the ABI, links it, and checks its ABI version.
    pub fn new(engine: &PolicyEngine, policy: &str, module: &Module, limits: &CallLimits) -> Result<Self, PolicyError> {
        check_imports(policy, module)?;
        check_exports(policy, module)?;
        let pre = linker(engine)?
            .instantiate_pre(module)
            .map_err(|e| PolicyError::Invalid { policy: policy.to_string(), detail: format!("{e:#}") })?;
        let initialize = module.exports().any(|e| e.name() == "_initialize" && is_func(&e.ty(), &[], &[]));
        let this = Self { pre, initialize };
        let now = jiff::Timestamp::now().as_millisecond().max(0) as u64;
        let version = this.call(engine, policy, limits, now, abi_version)??;
        if version != CORE_ABI_VERSION {
            return Err(PolicyError::IncompatibleVersion {
                policy: policy.to_string(),
                found: format!("core ABI version {version}"),
                supported: format!("core ABI version {CORE_ABI_VERSION}"),
            });
        }
        Ok(this)
    }

    /// One decision in a fresh instance.
    pub fn decide(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        input: &PolicyInput,
        history: &[Sample],
    ) -> Result<Decision, PolicyError> {
        let json = serde_json::to_vec(&JsonInput::new(input, history))
            .map_err(|e| PolicyError::Engine(format!("encoding the input: {e}")))?;
        let answer = self.exchange(engine, policy, limits, input.current.timestamp_ms, DECIDE, &json)?;
        parse_decision(policy, &answer)
    }

    /// Asks the policy whether `settings` are acceptable.
    pub fn validate_settings(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        settings: &BTreeMap<String, String>,
    ) -> Result<(), PolicyError> {
        let json = serde_json::to_vec(settings).map_err(|e| PolicyError::Engine(format!("encoding settings: {e}")))?;
        let now = jiff::Timestamp::now().as_millisecond().max(0) as u64;
        let answer = self.exchange(engine, policy, limits, now, VALIDATE, &json)?;
        let value = answer_json(policy, &answer)?;
        if let Some(error) = value.get("error") {
            return Err(PolicyError::InvalidSettings { policy: policy.to_string(), message: text_of(error) });
        }
        match value.get("ok") {
            Some(serde_json::Value::Bool(true)) => Ok(()),
            _ => Err(PolicyError::InvalidAnswer {
                policy: policy.to_string(),
                detail: format!(
                    "expected {{\"ok\": true}} or {{\"error\": \"…\"}} from {VALIDATE}, got {}",
                    truncate(&value.to_string(), 200)
                ),
            }),
        }
    }

    /// Copies `json` into a fresh instance, calls `export` with it and copies the answer out.
    fn exchange(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        sample_ms: u64,
        export: &str,
        json: &[u8],
    ) -> Result<Vec<u8>, PolicyError> {
        let output_limit = limits.output_bytes;
        self.call(engine, policy, limits, sample_ms, |store, instance| {
            let invalid = |detail: String| Ok(Err(PolicyError::InvalidAnswer { policy: policy.to_string(), detail }));
            let Some(memory) = instance.get_memory(&mut *store, MEMORY) else {
                return invalid(format!("export `{MEMORY}` is not a memory"));
            };
            let alloc = instance.get_typed_func::<i32, i32>(&mut *store, ALLOC)?;
            let call = instance.get_typed_func::<(i32, i32), i64>(&mut *store, export)?;
            let Ok(len) = i32::try_from(json.len()) else {
                return Ok(Err(PolicyError::Engine(format!("input of {} bytes is too large", json.len()))));
            };
            let ptr = alloc.call(&mut *store, len)?;
            if memory.write(&mut *store, ptr as u32 as usize, json).is_err() {
                return invalid(format!("{ALLOC}({len}) returned {ptr}, which is outside the module's memory"));
            }
            let packed = call.call(&mut *store, (ptr, len))? as u64;
            let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
            if out_len > output_limit {
                return Ok(Err(PolicyError::AnswerTooLarge {
                    policy: policy.to_string(),
                    size: out_len as u64,
                    limit: output_limit as u64,
                }));
            }
            read(store, memory, out_ptr, out_len).map_or_else(
                || invalid(format!("{export} returned {out_len} bytes at {out_ptr}, outside the module's memory")),
                |bytes| Ok(Ok(bytes)),
            )
        })?
    }

    /// Runs `body` against a fresh, initialized instance under the call's limits.
    fn call<R>(
        &self,
        engine: &PolicyEngine,
        policy: &str,
        limits: &CallLimits,
        sample_ms: u64,
        body: impl FnOnce(&mut Store<CoreState>, &wasmtime::Instance) -> wasmtime::Result<R>,
    ) -> Result<R, PolicyError> {
        let output = GuestOutput::default();
        let state = CoreState {
            wasi: sandbox::empty_wasi(sample_ms, &output).build_p1(),
            limiter: Limiter::new(limits.memory_bytes),
            output: output.clone(),
        };
        sandbox::run_bounded(engine, policy, limits, &output, state, |store| {
            let instance = self.pre.instantiate(&mut *store)?;
            if self.initialize {
                instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?.call(&mut *store, ())?;
            }
            body(store, &instance)
        })
    }
}

/// WASI preview 1 (empty context) and the host's `log`: everything a core module may import.
fn linker(engine: &PolicyEngine) -> Result<Linker<CoreState>, PolicyError> {
    let mut linker = Linker::<CoreState>::new(engine.engine());
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state| &mut state.wasi)
        .map_err(|e| PolicyError::Engine(format!("linking WASI: {e:#}")))?;
    linker
        .func_wrap(HOST_MODULE, "log", host_log)
        .map_err(|e| PolicyError::Engine(format!("linking {HOST_MODULE}.log: {e:#}")))?;
    Ok(linker)
}

/// Whether `bytes` is a core module exporting a reactor's `_initialize`.
pub fn has_initialize(bytes: &[u8]) -> bool {
    wasmparser::Parser::new(0).parse_all(bytes).any(|payload| match payload {
        Ok(wasmparser::Payload::ExportSection(exports)) => {
            exports.into_iter().any(|e| e.is_ok_and(|e| e.name == "_initialize" && e.kind == wasmparser::ExternalKind::Func))
        }
        _ => false,
    })
}

/// The module with its `_initialize` already run: instrumented by Wizer, initialised under
/// `limits` in the sandbox a call gets (empty WASI; the clock reads the load time), then
/// snapshotted. `Err` says why it could not be, and the caller uses the module as it is.
pub fn preinitialize(engine: &PolicyEngine, policy: &str, bytes: &[u8], limits: &CallLimits) -> Result<Vec<u8>, String> {
    // Wizer is strict about what it can snapshot; on a module it did not expect it may panic,
    // and a user's module must not take the operator down.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| preinitialize_inner(engine, policy, bytes, limits)))
        .unwrap_or_else(|_| Err("the pre-initializer could not handle this module".into()))
}

fn preinitialize_inner(engine: &PolicyEngine, policy: &str, bytes: &[u8], limits: &CallLimits) -> Result<Vec<u8>, String> {
    let mut wizer = wasmtime_wizer::Wizer::new();
    wizer.init_func("_initialize");
    let (context, instrumented) = wizer.instrument(bytes).map_err(|e| format!("{e:#}"))?;
    let module = Module::new(engine.engine(), &instrumented).map_err(|e| format!("{e:#}"))?;
    let linker = linker(engine).map_err(|e| e.to_string())?;
    let output = GuestOutput::default();
    let now = jiff::Timestamp::now().as_millisecond().max(0) as u64;
    let state = CoreState {
        wasi: sandbox::empty_wasi(now, &output).build_p1(),
        limiter: Limiter::new(limits.memory_bytes),
        output: output.clone(),
    };
    sandbox::run_bounded(engine, policy, limits, &output, state, |store| {
        let instance = linker.instantiate(&mut *store, &module)?;
        instance.get_typed_func::<(), ()>(&mut *store, "_initialize")?.call(&mut *store, ())?;
        let mut state = Snapshot { store, instance, unsupported: None };
        let snapshot = futures::executor::block_on(wizer.snapshot(&context, &mut state))?;
        match state.unsupported {
            Some(what) => Err(wasmtime::format_err!("{what}")),
            None => Ok(without_unused_passive_data(&snapshot).unwrap_or(snapshot)),
        }
    })
    .map_err(|e| e.to_string())
}

/// The snapshot without its passive data segments, when no code can use them.
///
/// Wizer keeps every original data segment, emptied and made passive, so that segment indices
/// stay valid; Go emits tens of thousands of them. Wasmtime sets each one up in every new
/// instance (about 100 µs for Go), though only `memory.init` and `data.drop` can ever refer
/// to a passive segment. `None` when the module has such instructions, or cannot be read.
fn without_unused_passive_data(bytes: &[u8]) -> Option<Vec<u8>> {
    use wasmparser::{DataKind, Operator, Payload};
    let mut sections = Vec::new();
    let mut active = Vec::new();
    let mut passive = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { .. } | Payload::End(_) => {}
            Payload::CodeSectionEntry(body) => {
                let mut operators = body.get_operators_reader().ok()?;
                while !operators.eof() {
                    if let Operator::MemoryInit { .. } | Operator::DataDrop { .. } = operators.read().ok()? {
                        return None;
                    }
                }
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.ok()?;
                    match data.kind {
                        DataKind::Passive => passive += 1,
                        DataKind::Active { .. } => active.push(data.range),
                    }
                }
                sections.push(Section::Data);
            }
            // Only `memory.init` and `data.drop` need the count, and there are none.
            Payload::DataCountSection { .. } => {}
            other => {
                // Sections the parser descends into (a component, say) are not expected here.
                let (id, range) = other.as_section()?;
                sections.push(Section::Raw(id, range));
            }
        }
    }
    if passive == 0 {
        return None;
    }
    let mut module = wasm_encoder::Module::new();
    for section in sections {
        match section {
            Section::Raw(id, range) => module.section(&wasm_encoder::RawSection { id, data: &bytes[range] }),
            Section::Data => {
                let mut data = wasm_encoder::DataSection::new();
                for range in &active {
                    data.raw(&bytes[range.clone()]);
                }
                module.section(&data)
            }
        };
    }
    Some(module.finish())
}

/// [`PolicyInput`] as the JSON ABI encodes it, borrowed, with `history` cut to what the policy
/// reads (the same fields and names: wit/CORE-ABI.md).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonInput<'a> {
    app: &'a str,
    current_replicas: u32,
    min_replicas: u32,
    max_replicas: u32,
    concurrency: u32,
    current: &'a Sample,
    history: &'a [Sample],
    settings: &'a BTreeMap<String, String>,
}

impl<'a> JsonInput<'a> {
    fn new(input: &'a PolicyInput, history: &'a [Sample]) -> Self {
        let PolicyInput { app, current_replicas, min_replicas, max_replicas, concurrency, current, history: _, settings } = input;
        Self {
            app,
            current_replicas: *current_replicas,
            min_replicas: *min_replicas,
            max_replicas: *max_replicas,
            concurrency: *concurrency,
            current,
            history,
            settings,
        }
    }
}

/// A section of a module being rewritten: copied as it is, or the data section rebuilt.
enum Section {
    Raw(u8, std::ops::Range<usize>),
    Data,
}

/// What Wizer reads of an initialised instance.
struct Snapshot<'a> {
    store: &'a mut Store<CoreState>,
    instance: wasmtime::Instance,
    /// A global Wizer cannot represent (a reference): the snapshot is then discarded.
    unsupported: Option<String>,
}

impl wasmtime_wizer::InstanceState for Snapshot<'_> {
    async fn global_get(&mut self, name: &str, _: wasmtime_wizer::ValType) -> wasmtime_wizer::SnapshotVal {
        use wasmtime::Val;
        use wasmtime_wizer::SnapshotVal;
        match self.instance.get_global(&mut *self.store, name).map(|g| g.get(&mut *self.store)) {
            Some(Val::I32(x)) => SnapshotVal::I32(x),
            Some(Val::I64(x)) => SnapshotVal::I64(x),
            Some(Val::F32(x)) => SnapshotVal::F32(x),
            Some(Val::F64(x)) => SnapshotVal::F64(x),
            Some(Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            other => {
                self.unsupported = Some(format!("global {name} holds {other:?}, which a snapshot cannot keep"));
                SnapshotVal::I32(0)
            }
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => {
                self.unsupported = Some(format!("memory {name} is not exported"));
                contents(&[]);
            }
        }
    }
}

/// `celery_policy.log(level, ptr, len)`: a bad pointer is reported, never trusted.
fn host_log(mut caller: Caller<'_, CoreState>, level: i32, ptr: i32, len: i32) {
    let Some(Extern::Memory(memory)) = caller.get_export(MEMORY) else {
        return;
    };
    let len = (len as u32 as usize).min(sandbox::LOG_LINE_MAX);
    let mut buffer = vec![0; len];
    let output = caller.data().output.clone();
    match memory.read(&caller, ptr as u32 as usize, &mut buffer) {
        Ok(()) => output.log(LogLevel::from_abi(level), &String::from_utf8_lossy(&buffer)),
        Err(_) => output.log(LogLevel::Warn, "log called with a pointer outside memory"),
    }
}

fn read(store: &mut Store<CoreState>, memory: Memory, ptr: usize, len: usize) -> Option<Vec<u8>> {
    let mut buffer = vec![0; len];
    memory.read(&*store, ptr, &mut buffer).ok()?;
    Some(buffer)
}

fn abi_version(store: &mut Store<CoreState>, instance: &wasmtime::Instance) -> wasmtime::Result<Result<i32, PolicyError>> {
    if let Some(global) = instance.get_global(&mut *store, ABI_VERSION) {
        return Ok(Ok(global.get(&mut *store).i32().unwrap_or(-1)));
    }
    let func = instance.get_typed_func::<(), i32>(&mut *store, ABI_VERSION)?;
    Ok(Ok(func.call(&mut *store, ())?))
}

fn check_imports(policy: &str, module: &Module) -> Result<(), PolicyError> {
    for import in module.imports() {
        let allowed = match (import.module(), import.name()) {
            (WASI_MODULE, _) => true,
            (HOST_MODULE, "log") => is_func(&import.ty(), &[ValType::I32, ValType::I32, ValType::I32], &[]),
            _ => false,
        };
        if !allowed {
            return Err(PolicyError::ForbiddenImport {
                policy: policy.to_string(),
                import: format!("{}.{}", import.module(), import.name()),
            });
        }
    }
    Ok(())
}

fn check_exports(policy: &str, module: &Module) -> Result<(), PolicyError> {
    let find = |name: &str| module.exports().find(|e| e.name() == name).map(|e| e.ty());
    let missing = |export: &str| PolicyError::MissingExport { policy: policy.to_string(), export: export.to_string() };
    let wrong = |export: &str, expected: &str| PolicyError::WrongExportType {
        policy: policy.to_string(),
        export: export.to_string(),
        expected: expected.to_string(),
    };
    match find(MEMORY).ok_or_else(|| missing(MEMORY))? {
        ExternType::Memory(_) => {}
        _ => return Err(wrong(MEMORY, "a memory")),
    }
    match find(ABI_VERSION).ok_or_else(|| missing(ABI_VERSION))? {
        ExternType::Global(g) if g.content().is_i32() => {}
        ty if is_func(&ty, &[], &[ValType::I32]) => {}
        _ => return Err(wrong(ABI_VERSION, "a global i32 or a function () -> i32")),
    }
    let alloc = find(ALLOC).ok_or_else(|| missing(ALLOC))?;
    if !is_func(&alloc, &[ValType::I32], &[ValType::I32]) {
        return Err(wrong(ALLOC, "(i32) -> i32"));
    }
    for export in [DECIDE, VALIDATE] {
        let ty = find(export).ok_or_else(|| missing(export))?;
        if !is_func(&ty, &[ValType::I32, ValType::I32], &[ValType::I64]) {
            return Err(wrong(export, "(i32, i32) -> i64"));
        }
    }
    Ok(())
}

fn is_func(ty: &ExternType, params: &[ValType], results: &[ValType]) -> bool {
    let ExternType::Func(func) = ty else {
        return false;
    };
    let same = |a: &ValType, b: &ValType| ValType::eq(a, b);
    func.params().len() == params.len()
        && func.results().len() == results.len()
        && func.params().zip(params).all(|(a, b)| same(&a, b))
        && func.results().zip(results).all(|(a, b)| same(&a, b))
}

fn answer_json(policy: &str, bytes: &[u8]) -> Result<serde_json::Value, PolicyError> {
    serde_json::from_slice(bytes).map_err(|e| PolicyError::InvalidAnswer {
        policy: policy.to_string(),
        detail: format!("not JSON ({e}): {}", truncate(&String::from_utf8_lossy(bytes), 200)),
    })
}

fn text_of(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => truncate(text, sandbox::LOG_LINE_MAX),
        other => truncate(&other.to_string(), sandbox::LOG_LINE_MAX),
    }
}

/// The answer of `celery_policy_decide`: a decision, or `{"error": …}`.
pub fn parse_decision(policy: &str, bytes: &[u8]) -> Result<Decision, PolicyError> {
    let value = answer_json(policy, bytes)?;
    if let Some(error) = value.get("error") {
        return Err(PolicyError::Rejected { policy: policy.to_string(), message: text_of(error) });
    }
    serde_json::from_value(value).map_err(|e| PolicyError::InvalidAnswer {
        policy: policy.to_string(),
        detail: format!("expected {{\"replicas\": <0 to 4294967295>, \"reason\": \"…\"}}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_borrowed_input_encodes_as_the_input_with_its_history_cut() {
        let mut input = crate::policy::cli::sample_input();
        input.settings.insert("target".into(), "5".into());
        let whole = serde_json::to_value(JsonInput::new(&input, &input.history)).expect("encodes");
        assert_eq!(whole, serde_json::to_value(&input).expect("encodes"));
        let cut = serde_json::to_value(JsonInput::new(&input, &input.history[3..])).expect("encodes");
        input.history.drain(..3);
        assert_eq!(cut, serde_json::to_value(&input).expect("encodes"));
    }

    #[test]
    fn answers_are_parsed_strictly() {
        let ok = parse_decision("p", br#"{"replicas": 3, "reason": "because"}"#).expect("valid");
        assert_eq!(ok, Decision { replicas: 3, reason: "because".into() });
        assert!(
            matches!(parse_decision("p", br#"{"error": "no metrics"}"#), Err(PolicyError::Rejected { message, .. }) if message == "no metrics")
        );
        assert!(matches!(parse_decision("p", br#"{"replicas": -1, "reason": ""}"#), Err(PolicyError::InvalidAnswer { .. })));
        assert!(matches!(
            parse_decision("p", br#"{"replicas": 99999999999, "reason": ""}"#),
            Err(PolicyError::InvalidAnswer { .. })
        ));
        assert!(matches!(parse_decision("p", b"\xff\x00"), Err(PolicyError::InvalidAnswer { .. })));
    }
}
