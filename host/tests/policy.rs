//! The policy runtime against real modules: hostile fixtures (`tests/fixtures/*.wat`) are
//! contained with the specific error while good policies keep deciding; the cache and the
//! registry behave across reloads; and, where `policies/build.sh` has built them
//! (`target/policies`), every built-in policy passes the same table of cases.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use celery_operator::decide::stabilize::Bound;
use celery_operator::policy::cache::{ArtifactCache, Kind};
use celery_operator::policy::cli::sample_input;
use celery_operator::policy::{
    CallLimits, EngineSettings, HISTORY, Interface, LoadedPolicy, Metadata, PolicyEngine, PolicyError, PolicyInput, PolicyRunner,
    Registry, RegistrySettings, Source,
};
use rstest::rstest;

fn engine() -> PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new(EngineSettings::default()).expect("engine")).clone()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.wat"))
}

fn load(name: &str) -> Result<LoadedPolicy, PolicyError> {
    let path = fixture(name);
    LoadedPolicy::load_file(&engine(), None, &path, Source::File(path.clone()), Metadata::default())
}

fn loaded(name: &str) -> Arc<LoadedPolicy> {
    Arc::new(load(name).unwrap_or_else(|e| panic!("fixture {name} loads: {e}")))
}

fn input_with(current: u32) -> PolicyInput {
    let mut input = sample_input();
    input.current_replicas = current;
    input
}

/// The good policy still answers correctly after whatever ran before it.
fn good_still_decides() {
    let decision = loaded("good").decide(&CallLimits::default(), &input_with(7)).expect("good policy decides");
    assert_eq!(decision.replicas, 7);
}

#[test]
fn good_policy_reads_the_input_and_validates_settings() {
    let policy = loaded("good");
    assert_eq!(policy.interface(), Interface::Core);
    let limits = CallLimits::default();
    for current in [0, 3, 4_000_000] {
        let decision = policy.decide(&limits, &input_with(current)).expect("decides");
        assert_eq!(decision.replicas, current);
        assert_eq!(decision.reason, "holds the current replica count");
    }
    policy.validate_settings(&limits, &BTreeMap::from([("target".into(), "3".into())])).expect("valid settings");
    let error = policy.validate_settings(&limits, &BTreeMap::from([("bad".into(), "x".into())])).expect_err("refused settings");
    assert!(
        matches!(&error, PolicyError::InvalidSettings { policy, message } if policy == "good" && message == "setting bad: not allowed"),
        "{error}"
    );
}

/// The variant of an error, for tables of expected failures.
fn variant(error: &PolicyError) -> &'static str {
    match error {
        PolicyError::Trap { .. } => "Trap",
        PolicyError::Timeout { .. } => "Timeout",
        PolicyError::MemoryLimit { .. } => "MemoryLimit",
        PolicyError::InvalidAnswer { .. } => "InvalidAnswer",
        PolicyError::AnswerTooLarge { .. } => "AnswerTooLarge",
        PolicyError::MissingExport { .. } => "MissingExport",
        PolicyError::WrongExportType { .. } => "WrongExportType",
        PolicyError::IncompatibleVersion { .. } => "IncompatibleVersion",
        PolicyError::ForbiddenImport { .. } => "ForbiddenImport",
        PolicyError::UnknownPolicy { .. } => "UnknownPolicy",
        PolicyError::NotWasm { .. } => "NotWasm",
        PolicyError::Invalid { .. } => "Invalid",
        PolicyError::Rejected { .. } => "Rejected",
        PolicyError::InvalidSettings { .. } => "InvalidSettings",
        PolicyError::Unavailable { .. } => "Unavailable",
        PolicyError::DigestMismatch { .. } => "DigestMismatch",
        PolicyError::Io { .. } => "Io",
        PolicyError::Host { .. } => "Host",
        PolicyError::Engine(_) => "Engine",
    }
}

/// `error` is the `expected` variant, and its message names `name` and says every `detail`.
fn assert_error(name: &str, error: &PolicyError, expected: &str, details: &[&str]) {
    let message = error.to_string();
    assert_eq!(variant(error), expected, "{name}: {message}");
    assert!(message.contains(&format!("policy {name}")), "the message names the policy: {message}");
    for detail in details {
        assert!(message.contains(detail), "{name}: `{message}` should say `{detail}`");
    }
}

#[rstest]
#[case::endless_loop("endless_loop", "Timeout", &["100ms"])]
#[case::memory_bomb("memory_bomb", "MemoryLimit", &["67108864 bytes"])]
#[case::trap_with_message("trap_message", "Trap", &["unreachable", "boom: the queue exploded"])]
#[case::deep_recursion("deep_recursion", "Trap", &["call stack exhausted"])]
#[case::oversized_answer("oversized_answer", "AnswerTooLarge", &["1000000 bytes", "65536 bytes"])]
#[case::not_json("bad_json", "InvalidAnswer", &["not JSON", "four, maybe five"])]
#[case::answer_outside_memory("out_of_bounds", "InvalidAnswer", &["outside the module's memory"])]
#[case::policy_error("rejects", "Rejected", &["no metrics for any pod"])]
fn hostile_calls_are_contained(#[case] name: &str, #[case] expected: &str, #[case] details: &[&str]) {
    let policy = loaded(name);
    let error = policy.decide(&CallLimits::default(), &sample_input()).expect_err("hostile call fails");
    assert_error(name, &error, expected, details);
    good_still_decides();
    let again = policy.decide(&CallLimits::default(), &sample_input()).expect_err("fails again the same way");
    assert_error(name, &again, expected, details);
}

#[rstest]
#[case::forbidden_import("forbidden_import", "ForbiddenImport", &["`env.open_socket`"])]
#[case::wrong_abi_version("wrong_abi_version", "IncompatibleVersion", &["core ABI version 2", "supports core ABI version 1"])]
#[case::missing_export("missing_export", "MissingExport", &["`celery_policy_decide`"])]
#[case::component_wrong_version("component_wrong_version", "IncompatibleVersion", &["celery:autoscaler@0.2.0", "supports celery:autoscaler@0.1.x"])]
#[case::component_missing_export("component_missing_export", "MissingExport", &["celery:autoscaler/policy@0.1.x"])]
#[case::component_forbidden_import("component_forbidden_import", "ForbiddenImport", &["`wasi:sockets/tcp@0.2.0`"])]
#[case::component_filesystem_import("component_filesystem_import", "ForbiddenImport", &["`wasi:filesystem/preopens@0.2.0`"])]
fn bad_modules_are_refused_at_load(#[case] name: &str, #[case] expected: &str, #[case] details: &[&str]) {
    let error = load(name).expect_err("refused");
    assert_error(name, &error, expected, details);
    good_still_decides();
}

#[test]
fn garbage_and_precompiled_code_are_not_wasm() {
    let engine = engine();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let error = LoadedPolicy::load(&engine, None, "garbage", &garbage, Source::File("garbage".into()), Metadata::default())
        .expect_err("garbage refused");
    assert!(matches!(&error, PolicyError::NotWasm { policy } if policy == "garbage"), "{error:?}");

    // A native artifact a user hands in is refused too: only the cache deserializes.
    let wat = std::fs::read(fixture("good")).expect("fixture");
    let native = engine.engine().precompile_module(&wat).expect("precompiles");
    let error = LoadedPolicy::load(&engine, None, "native", &native, Source::File("native".into()), Metadata::default())
        .expect_err("precompiled refused");
    assert!(matches!(error, PolicyError::NotWasm { .. }), "{error:?}");
}

#[test]
fn the_host_clamps_answers_and_says_so() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let runner = PolicyRunner::new(2, CallLimits::default());
    let (verdict, _) = runtime.block_on(runner.decide(loaded("far_above_max"), sample_input(), None)).expect("decides");
    assert_eq!(verdict.decision.replicas, sample_input().max_replicas);
    assert_eq!(verdict.proposed, 4_000_000_000);
    assert_eq!(verdict.clamped, Some(Bound::Max));
    assert!(verdict.decision.reason.starts_with("more workers than anyone has"));
    assert!(verdict.decision.reason.contains("capped at maxReplicas 10"));

    let mut input = input_with(0);
    input.min_replicas = 2;
    let (verdict, _) = runtime.block_on(runner.decide(loaded("good"), input, None)).expect("decides");
    assert_eq!((verdict.decision.replicas, verdict.clamped), (2, Some(Bound::Min)));
}

#[test]
fn every_decision_gets_a_fresh_instance() {
    let policy = loaded("counter");
    for _ in 0..3 {
        assert_eq!(policy.decide(&CallLimits::default(), &sample_input()).expect("decides").replicas, 1);
    }
}

#[test]
fn wasi_is_empty_and_the_clock_is_the_sample_time() {
    let policy = loaded("sandbox");
    for timestamp_ms in [1_764_000_000_000u64, 1_800_000_000_123] {
        let mut input = sample_input();
        input.current.timestamp_ms = timestamp_ms;
        let decision = policy.decide(&CallLimits::default(), &input).expect("decides inside an empty WASI");
        assert_eq!(decision.reason, (u128::from(timestamp_ms) * 1_000_000).to_string());
    }
}

#[test]
fn a_hostile_policy_does_not_hold_up_others() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let runner = PolicyRunner::new(2, CallLimits::default());
        let good = loaded("good");
        let slow = CallLimits { timeout: Duration::from_secs(5), ..CallLimits::default() };
        let hostile = tokio::spawn({
            let runner = runner.clone();
            async move { runner.decide(loaded("endless_loop"), sample_input(), Some(slow)).await }
        });
        tokio::task::yield_now().await;
        for current in 1..=5 {
            let (verdict, _) = runner.decide(Arc::clone(&good), input_with(current), None).await.expect("good decides");
            assert_eq!(verdict.decision.replicas, current);
        }
        assert!(!hostile.is_finished(), "the good decisions finished while the endless loop still ran");
        let error = hostile.await.expect("joined").expect_err("the endless loop times out");
        assert_error("endless_loop", &error, "Timeout", &["5s"]);
    });
}

#[test]
fn the_cache_serves_a_second_load_and_survives_junk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ArtifactCache::open(dir.path().join("cache")).expect("cache");
    let engine = engine();
    let bytes = std::fs::read(fixture("good")).expect("fixture");
    let load = || {
        LoadedPolicy::load(&engine, Some(&cache), "good", &bytes, Source::File("good".into()), Metadata::default())
            .expect("loads")
    };
    let first = load();
    assert!(!first.stats().from_cache);
    let second = load();
    assert!(second.stats().from_cache);
    assert_eq!(second.decide(&CallLimits::default(), &input_with(5)).expect("decides").replicas, 5);

    // A damaged artifact is discarded and the module compiled again. (Replaced, never
    // rewritten in place: the loaded policies map the old file, as the cache's own writes do.)
    let artifact = cache.path_for(engine.engine(), Kind::Module, &bytes);
    let damaged = artifact.with_extension("damaged");
    std::fs::write(&damaged, b"not an artifact").expect("write");
    std::fs::rename(&damaged, &artifact).expect("replace");
    let third = load();
    assert!(!third.stats().from_cache);
    assert_eq!(third.decide(&CallLimits::default(), &input_with(6)).expect("decides").replicas, 6);
    assert!(load().stats().from_cache);
}

#[test]
fn the_cache_keeps_within_its_limit_and_drops_the_least_recently_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine();
    let good = std::fs::read_to_string(fixture("good")).expect("fixture");
    let version = |n: u32| format!("{good}\n;; version {n}\n").into_bytes();
    let artifact_size = {
        let probe = ArtifactCache::open(dir.path().join("probe")).expect("cache");
        LoadedPolicy::load(&engine, Some(&probe), "good", &version(0), Source::File("good".into()), Metadata::default())
            .expect("loads");
        std::fs::metadata(probe.path_for(engine.engine(), Kind::Module, &version(0))).expect("stored").len()
    };
    // Room for two artifacts, not three.
    let cache = ArtifactCache::open(dir.path().join("cache")).expect("cache").with_limit(artifact_size * 2 + artifact_size / 2);
    let load = |n: u32| {
        LoadedPolicy::load(&engine, Some(&cache), "good", &version(n), Source::File("good".into()), Metadata::default())
            .expect("loads")
    };
    let stored = |n: u32| cache.path_for(engine.engine(), Kind::Module, &version(n)).exists();
    load(1);
    std::thread::sleep(Duration::from_millis(20));
    load(2);
    std::thread::sleep(Duration::from_millis(20));
    assert!(load(1).stats().from_cache, "1 is used again, so 2 is now the least recent");
    std::thread::sleep(Duration::from_millis(20));
    load(3);
    assert!(stored(1) && stored(3), "the most recently used stay");
    assert!(!stored(2), "the least recently used went");
    let total: u64 = std::fs::read_dir(cache.dir()).unwrap().flatten().map(|e| e.metadata().unwrap().len()).sum();
    assert!(total <= artifact_size * 2 + artifact_size / 2, "{total} bytes kept");
}

#[test]
fn the_registry_keeps_a_bounded_number_of_pinnable_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("policies");
    std::fs::create_dir(&users).expect("mkdir");
    let good = std::fs::read_to_string(fixture("good")).expect("fixture");
    let registry =
        Registry::new(engine(), RegistrySettings { builtin_dir: None, user_dir: Some(users.clone()), cache_dir: None });
    let mut digests = Vec::new();
    for n in 0..8 {
        // A different length each time, so the rescan sees a change whatever the mtime.
        std::fs::write(users.join("mine.wasm"), format!("{good}\n;; {}\n", "v".repeat(n + 1))).expect("write");
        registry.refresh();
        digests.push(registry.resolve("mine").expect("resolves").digest().to_string());
    }
    let pinnable: Vec<bool> = digests.iter().map(|d| registry.resolve(&format!("mine@sha256:{d}")).is_ok()).collect();
    assert_eq!(pinnable, [false, false, false, false, true, true, true, true], "the current version and the three before it");
}

#[test]
fn the_user_directory_follows_no_symlink_out_of_itself_and_caps_module_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("policies");
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir_all(users.join("..data")).expect("mkdir");
    std::fs::create_dir(&outside).expect("mkdir");
    let good = std::fs::read(fixture("good")).expect("fixture");
    std::fs::write(outside.join("secret.wasm"), &good).expect("write");
    std::os::unix::fs::symlink(outside.join("secret.wasm"), users.join("escape.wasm")).expect("symlink");
    std::fs::write(users.join("..data/inside.wasm"), &good).expect("write");
    std::os::unix::fs::symlink(Path::new("..data/inside.wasm"), users.join("inside.wasm")).expect("symlink");
    let big = std::fs::File::create(users.join("huge.wasm")).expect("create");
    big.set_len(celery_operator::policy::registry::MAX_MODULE_BYTES + 1).expect("sparse file");
    let registry =
        Registry::new(engine(), RegistrySettings { builtin_dir: None, user_dir: Some(users.clone()), cache_dir: None });
    registry.refresh();
    assert!(registry.resolve("inside").is_ok(), "a ConfigMap-style symlink inside the directory is followed");
    assert!(matches!(registry.resolve("escape"), Err(PolicyError::UnknownPolicy { .. })), "a symlink out of it is not");
    let huge = registry.list().into_iter().find(|i| i.name == "huge").expect("listed with its problem");
    assert!(huge.problem.as_deref().is_some_and(|p| p.contains("above the limit")), "{huge:?}");
}

#[test]
fn the_registry_follows_a_configmap_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("policies");
    std::fs::create_dir(&users).expect("mkdir");
    // A ConfigMap volume: keys are symlinks into `..data`, itself a symlink swapped on update.
    let publish = |version: &str, files: &[(&str, Vec<u8>)]| {
        let data = users.join(format!("..{version}"));
        std::fs::create_dir(&data).expect("mkdir");
        for (name, bytes) in files {
            std::fs::write(data.join(name), bytes).expect("write");
            let link = users.join(name);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(name), &link).expect("symlink");
            }
        }
        let tmp = users.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).expect("symlink");
        std::fs::rename(&tmp, users.join("..data")).expect("swap");
    };
    let good = std::fs::read(fixture("good")).expect("fixture");
    let above = std::fs::read(fixture("far_above_max")).expect("fixture");
    let registry = Registry::new(
        engine(),
        RegistrySettings { builtin_dir: None, user_dir: Some(users.clone()), cache_dir: Some(dir.path().join("cache")) },
    );
    let limits = CallLimits::default();

    publish("v1", &[("mine.wasm", good.clone())]);
    assert_eq!(registry.refresh(), vec!["mine".to_string()]);
    assert!(registry.refresh().is_empty(), "nothing changed");
    let v1 = registry.resolve("mine").expect("resolves");
    assert_eq!(v1.decide(&limits, &input_with(4)).expect("decides").replicas, 4);
    let pinned = format!("mine@sha256:{}", v1.digest());
    assert_eq!(registry.resolve(&pinned).expect("pinned").digest(), v1.digest());

    // A broken update keeps the last good version and says why.
    publish("v2", &[("mine.wasm", b"\0asm garbage".to_vec())]);
    assert_eq!(registry.refresh(), vec!["mine".to_string()]);
    assert_eq!(registry.resolve("mine").expect("still resolves").digest(), v1.digest());
    let info = registry.list().into_iter().find(|i| i.name == "mine").expect("listed");
    assert!(info.problem.as_deref().is_some_and(|p| p.contains("mine")), "{info:?}");

    // A good update replaces it; the old digest stays pinnable.
    publish("v3", &[("mine.wasm", above)]);
    registry.refresh();
    let v3 = registry.resolve("mine").expect("resolves");
    assert_ne!(v3.digest(), v1.digest());
    assert_eq!(v3.decide(&limits, &sample_input()).expect("decides").replicas, 4_000_000_000);
    assert!(registry.list().iter().all(|i| i.problem.is_none()));
    assert_eq!(registry.resolve(&pinned).expect("old pin").digest(), v1.digest());
    let error = registry.resolve(&format!("mine@sha256:{}", "0".repeat(64))).expect_err("unknown digest");
    assert!(matches!(error, PolicyError::DigestMismatch { .. }), "{error:?}");

    let error = registry.resolve("nope").expect_err("unknown");
    assert!(
        matches!(&error, PolicyError::UnknownPolicy { name, known } if name == "nope" && known.contains("mine")),
        "{error:?}"
    );

    std::fs::remove_file(users.join("mine.wasm")).expect("remove");
    registry.refresh();
    assert!(matches!(registry.resolve("mine"), Err(PolicyError::UnknownPolicy { .. })));
}

#[test]
fn the_registry_reads_metadata_beside_a_module_and_names_a_bad_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("mine.wasm");
    let json = dir.path().join("mine.json");
    std::fs::copy(fixture("good"), &wasm).expect("copy");
    let registry = Registry::new(
        engine(),
        RegistrySettings { builtin_dir: None, user_dir: Some(dir.path().to_path_buf()), cache_dir: None },
    );
    registry.refresh();
    assert_eq!(registry.resolve("mine").expect("loads").metadata(), &Metadata::default());

    // Only NAME.json changes: the module is loaded again with what it says.
    std::fs::write(&json, r#"{"language": "wat", "history": 3}"#).expect("write");
    assert_eq!(registry.refresh(), vec!["mine".to_string()]);
    let mine = registry.resolve("mine").expect("loads");
    assert_eq!(mine.metadata(), &Metadata { language: Some("wat".into()), history: Some(3), columns: None });
    let info = registry.list().into_iter().find(|i| i.name == "mine").expect("listed");
    assert_eq!((info.language.as_deref(), info.history), (Some("wat"), Some(3)), "{info:?}");

    // A field of the wrong type is a problem naming the file and the field; the last good
    // version keeps serving.
    std::fs::write(&json, r#"{"history": "all of it"}"#).expect("write");
    registry.refresh();
    let info = registry.list().into_iter().find(|i| i.name == "mine").expect("listed");
    let problem = info.problem.expect("a problem is listed");
    assert!(problem.contains("mine.json") && problem.contains("`history`"), "{problem}");
    assert_eq!(registry.resolve("mine").expect("still resolves").metadata().history, Some(3));
    std::fs::write(&json, r#"{"history": 0, "columns": -1}"#).expect("write");
    registry.refresh();
    let info = registry.list().into_iter().find(|i| i.name == "mine").expect("listed");
    let problem = info.problem.expect("a problem is listed");
    assert!(problem.contains("mine.json") && problem.contains("`columns`"), "{problem}");
}

#[test]
fn a_policy_gets_only_the_history_its_metadata_asks_for() {
    let Some(dir) = builtins_dir() else {
        assert!(std::env::var_os("CELERY_OPERATOR_REQUIRE_BUILTINS").is_none(), "run policies/build.sh");
        return;
    };
    // drain-time reads the window as columns (it imports `window`); its reason counts the
    // intervals it was given. A backlog draining by 10 a second at a constant 2 replicas, over
    // a minute.
    let mut input = sample_input();
    input.settings.clear();
    let template = input.current.clone();
    let sample = |age: u64| {
        let mut s = template.clone();
        s.timestamp_ms -= age * 1000;
        s.replicas = 2;
        for q in &mut s.queues {
            q.backlog = 100 + age * 10;
        }
        s
    };
    let mut samples: Vec<_> = (0..=60).rev().map(sample).collect();
    input.current = samples.pop().expect("the newest sample");
    input.history = samples;
    let path = dir.join("drain-time.wasm");
    // Compiled once: each load below differs only in its metadata.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = ArtifactCache::open(tmp.path().join("cache")).expect("cache");
    let load = |metadata: Metadata| {
        LoadedPolicy::load_file(&engine(), Some(&cache), &path, Source::File(path.clone()), metadata).expect("loads")
    };
    let with = |history: Option<usize>, columns: Option<usize>| {
        let policy = load(Metadata { language: None, history, columns });
        policy.decide(&CallLimits::default(), &input).expect("decides").reason
    };
    let whole = with(None, None);
    assert!(whole.contains("60 intervals"), "{whole}");
    // The columns are what it reads: no records, and the cut applies to the columns.
    let records_none = with(Some(0), None);
    assert!(records_none.contains("60 intervals"), "{records_none}");
    let cut = with(Some(0), Some(2));
    assert!(cut.contains("2 intervals"), "{cut}");
    let none = with(None, Some(0));
    assert!(none.contains("too little history") && none.contains("1 sample"), "{none}");

    // What the loop keeps for it: the longer of the two forms.
    let reads = |history, columns| load(Metadata { language: None, history, columns }).reads();
    assert_eq!((reads(Some(0), None), reads(Some(0), Some(5)), reads(Some(7), Some(5))), (HISTORY, 5, 7));
    assert_eq!(load(Metadata::default()).window(), Some(HISTORY));
    // A policy that does not import `window` reads only its records, whatever `columns` says.
    let queue_length = dir.join("queue-length.wasm");
    let records_only = LoadedPolicy::load_file(
        &engine(),
        None,
        &queue_length,
        Source::File(queue_length.clone()),
        Metadata { language: None, history: Some(0), columns: Some(30) },
    )
    .expect("loads");
    assert_eq!((records_only.window(), records_only.reads()), (None, 0));
}

#[test]
fn a_component_built_against_0_1_0_of_the_contract_still_loads_and_decides() {
    let Some(dir) = builtins_dir() else {
        assert!(std::env::var_os("CELERY_OPERATOR_REQUIRE_BUILTINS").is_none(), "run policies/build.sh");
        return;
    };
    // 0.1.1 added an interface and changed no type, so a component of 0.1.0 is queue-length
    // with the version in its import and export names written back (same length: nothing else
    // in the binary moves).
    let current = std::fs::read(dir.join("queue-length.wasm")).expect("read");
    let (new, old) = (b"celery:autoscaler/policy@0.1.1".as_slice(), b"celery:autoscaler/policy@0.1.0".as_slice());
    let mut bytes = current.clone();
    let mut renamed = 0;
    for (from, to) in [(new, old), (b"autoscaler/types@0.1.1".as_slice(), b"autoscaler/types@0.1.0".as_slice())] {
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(from.len()).position(|w| w == from) {
            bytes[at + i..at + i + from.len()].copy_from_slice(to);
            at += i + from.len();
            renamed += 1;
        }
    }
    assert!(renamed >= 2, "queue-length names the 0.1.1 contract: {renamed} names");
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("queue-length-0.1.0.wasm");
    std::fs::write(&path, &bytes).expect("write");
    let load = |path: &Path| {
        LoadedPolicy::load_file(&engine(), None, path, Source::File(path.to_path_buf()), Metadata::default()).expect("loads")
    };
    let old_policy = load(&path);
    let exports: Vec<String> = wasmtime::component::Component::new(engine().engine(), &bytes)
        .expect("compiles")
        .component_type()
        .exports(engine().engine())
        .map(|(name, _)| name.to_string())
        .collect();
    assert!(exports.iter().any(|e| e == "celery:autoscaler/policy@0.1.0"), "{exports:?}");
    let mut input = sample_input();
    input.settings = BTreeMap::from([("target".to_string(), "10".to_string())]);
    let decided = old_policy.decide(&CallLimits::default(), &input).expect("decides");
    assert_eq!(decided, load(&dir.join("queue-length.wasm")).decide(&CallLimits::default(), &input).expect("decides"));
    assert!(decided.replicas > 0, "{decided:?}");
}

/// The built-in policies, where `policies/build.sh` has built them.
fn builtins_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies");
    let has_any = std::fs::read_dir(&dir).ok()?.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "wasm"));
    has_any.then_some(dir)
}

/// One case of `policies/test/cases.json`, the table every built-in policy is held to (also
/// run outside the operator by `policies/test/run.mjs`). `input` overrides top-level fields of
/// `base-input.json`; a case with `validate` checks settings instead of deciding; one with
/// `declined` expects the policy to decline.
#[derive(serde::Deserialize)]
struct Case {
    policy: String,
    name: String,
    #[serde(default)]
    input: serde_json::Map<String, serde_json::Value>,
    validate: Option<BTreeMap<String, String>>,
    replicas: Option<u32>,
    /// The policy declines (its reason starts with `decline:`).
    #[serde(default)]
    declined: bool,
    error: Option<String>,
}

#[test]
fn builtins_pass_the_shared_table_through_the_host() {
    let Some(dir) = builtins_dir() else {
        assert!(
            std::env::var_os("CELERY_OPERATOR_REQUIRE_BUILTINS").is_none(),
            "CELERY_OPERATOR_REQUIRE_BUILTINS is set but target/policies has no modules: run policies/build.sh"
        );
        eprintln!("target/policies has no built policies; run policies/build.sh to test them");
        return;
    };
    let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/test");
    let read = |name: &str| std::fs::read_to_string(table.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let cases: Vec<Case> = serde_json::from_str(&read("cases.json")).expect("cases.json");
    let base: serde_json::Value = serde_json::from_str(&read("base-input.json")).expect("base-input.json");
    // The Python and JavaScript components take long to compile: keep them across test runs.
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-cache");
    let registry = Registry::new(engine(), RegistrySettings { builtin_dir: Some(dir), user_dir: None, cache_dir: Some(cache) });
    registry.refresh();
    for info in registry.list() {
        assert!(info.problem.is_none(), "built-in {} does not load: {:?}", info.name, info.problem);
    }
    let limits = CallLimits::default();
    let mut failures = Vec::new();
    let mut interfaces = std::collections::BTreeSet::new();
    for case in &cases {
        let policy = match registry.resolve(&case.policy) {
            Ok(policy) => policy,
            Err(error) => {
                failures.push(format!("{} / {}: {error}", case.policy, case.name));
                continue;
            }
        };
        interfaces.insert(policy.interface().to_string());
        let outcome = match &case.validate {
            Some(settings) => match (policy.validate_settings(&limits, settings), &case.error) {
                (Ok(()), None) => Ok(()),
                (Err(PolicyError::InvalidSettings { message, .. }), Some(e)) if message.contains(e.as_str()) => Ok(()),
                (got, _) => Err(format!("validate: got {got:?}, expected error {:?}", case.error)),
            },
            None => {
                let mut input = base.clone();
                for (key, value) in &case.input {
                    input[key] = value.clone();
                }
                let input: PolicyInput = serde_json::from_value(input).expect("case input is a PolicyInput");
                match (policy.decide(&limits, &input), &case.error, case.replicas) {
                    (Ok(decision), None, None) if case.declined && decision.declined().is_some() => Ok(()),
                    (Ok(decision), None, Some(want))
                        if !case.declined && decision.declined().is_none() && decision.replicas == want =>
                    {
                        Ok(())
                    }
                    (Err(PolicyError::Rejected { message, .. }), Some(e), _) if message.contains(e.as_str()) => Ok(()),
                    (got, error, replicas) => Err(format!("got {got:?}, expected replicas {replicas:?} / error {error:?}")),
                }
            }
        };
        if let Err(problem) = outcome {
            failures.push(format!("{} / {}: {problem}", case.policy, case.name));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert_eq!(
        interfaces.into_iter().collect::<Vec<_>>(),
        vec!["component".to_string(), "core".to_string()],
        "the table covers both interfaces"
    );
}

/// `queue-length` allocates from the page its module starts with and grows its memory only
/// when an input does not fit (policies/queue-length/src/alloc.rs): an input of ~200 KiB
/// (2,000 queues with long names) must be read whole, and the instance after it still decides.
#[test]
fn queue_length_reads_an_input_larger_than_its_first_page() {
    let Some(dir) = builtins_dir() else {
        eprintln!("target/policies has no built policies; run policies/build.sh to test them");
        return;
    };
    let path = dir.join("queue-length.wasm");
    let policy = LoadedPolicy::load_file(&engine(), None, &path, Source::File(path.clone()), Metadata::default())
        .expect("queue-length loads");
    let mut input = sample_input();
    input.settings.insert("target".into(), "7".into());
    let queue = input.current.queues[0].clone();
    input.current.queues = (0..2000u64)
        .map(|i| celery_operator::policy::QueueSample {
            name: format!("{i:04}-a-queue-name-long-enough-to-fill-pages-of-linear-memory-quickly"),
            backlog: i,
            ..queue.clone()
        })
        .collect();
    let backlog: u64 = (0..2000).sum();
    let decision = policy.decide(&CallLimits::default(), &input).expect("decides");
    assert_eq!(u64::from(decision.replicas), backlog.div_ceil(7), "{}", decision.reason);
    assert!(decision.reason.starts_with(&format!("{backlog} messages")), "{}", decision.reason);

    let small = sample_input();
    let mut small_input = small.clone();
    small_input.settings.insert("target".into(), "7".into());
    let after = policy.decide(&CallLimits::default(), &small_input).expect("decides");
    let small_backlog: u64 = small.current.queues.iter().map(|q| q.backlog).sum();
    assert_eq!(u64::from(after.replicas), small_backlog.div_ceil(7), "{}", after.reason);
}

/// `celery-operator policy …` as an author runs it.
mod cli {
    use super::fixture;
    use std::process::Command;

    fn policy_command(args: &[&str]) -> std::process::Output {
        let cache = tempfile::tempdir().expect("tempdir");
        Command::new(env!("CARGO_BIN_EXE_celery-operator"))
            .arg("policy")
            .args(args)
            .arg("--policy-cache-dir")
            .arg(cache.path())
            .env("RUST_LOG", "off")
            .output()
            .expect("runs")
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn check_accepts_a_good_module_and_names_what_is_wrong_with_a_bad_one() {
        let good = fixture("good");
        let out = policy_command(&["check", good.to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("interface: core"));
        let bad = fixture("forbidden_import");
        let out = policy_command(&["check", bad.to_str().expect("utf-8 path")]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("imports `env.open_socket`"), "{}", text(&out.stderr));
    }

    /// `check` makes a test call: a module that loads but loops, traps or answers garbage
    /// fails it, naming the export; one that answers passes, saying what it answered.
    #[test]
    fn check_calls_the_module_and_names_the_export_that_fails() {
        for (name, says) in [
            ("endless_loop", "export `celery_policy_decide` failed on a test call: policy endless_loop: no answer within"),
            ("trap_message", "export `celery_policy_decide` failed on a test call: policy trap_message: trapped"),
            ("bad_json", "export `celery_policy_decide` failed on a test call: policy bad_json: invalid answer"),
        ] {
            let out = policy_command(&["check", fixture(name).to_str().expect("utf-8 path")]);
            assert!(!out.status.success(), "{name} passed: {}", text(&out.stdout));
            assert!(text(&out.stderr).contains(says), "{name}: {}", text(&out.stderr));
        }
        let out = policy_command(&["check", fixture("good").to_str().expect("utf-8 path")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("test call: celery_policy_decide(a sample input) answers"), "{}", text(&out.stdout));
    }

    /// The limits and bounds an author gives are those the operator allows, and an unknown
    /// name says where it was looked for.
    #[test]
    fn eval_refuses_what_the_operator_would_and_says_where_it_looked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("input.json");
        let mut sample = celery_operator::policy::cli::sample_input();
        let good = fixture("good");
        let args = |input: &std::path::Path| {
            ["eval".to_string(), good.display().to_string(), "--input".into(), input.display().to_string()]
        };
        std::fs::write(&input, serde_json::to_vec(&sample).expect("json")).expect("write");
        let mut too_much: Vec<String> = args(&input).to_vec();
        too_much.extend(["--memory-mib".into(), "1024".into()]);
        let out = policy_command(&too_much.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            !out.status.success() && text(&out.stderr).contains("--memory-mib 1024: a policy call may have 1 to 256 MiB"),
            "{}",
            text(&out.stderr)
        );
        sample.min_replicas = 8;
        sample.max_replicas = 3;
        std::fs::write(&input, serde_json::to_vec(&sample).expect("json")).expect("write");
        let out = policy_command(&args(&input).iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            !out.status.success() && text(&out.stderr).contains("minReplicas 8 is above its maxReplicas 3"),
            "{}",
            text(&out.stderr)
        );

        let empty = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_celery-operator"))
            .args(["policy", "eval", "queue-length", "--input"])
            .arg(&input)
            .arg("--policy-dir")
            .arg(empty.path())
            .env("RUST_LOG", "off")
            .output()
            .expect("runs");
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("unknown policy `queue-length`; known policies: none (built-in directory ")
                && stderr.contains("--policy-dir"),
            "{stderr}"
        );
    }

    #[test]
    fn eval_prints_the_bounded_decision_and_fails_clearly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let input = dir.path().join("input.json");
        let mut sample = celery_operator::policy::cli::sample_input();
        sample.max_replicas = 6;
        std::fs::write(&input, serde_json::to_vec(&sample).expect("json")).expect("write");
        let policy = fixture("far_above_max");
        let out = policy_command(&["eval", policy.to_str().expect("utf-8"), "--input", input.to_str().expect("utf-8")]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let decision: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(decision["replicas"], 6);
        assert_eq!(decision["proposed"], 4_000_000_000u64);
        assert_eq!(decision["clamped"], "max");

        let policy = fixture("endless_loop");
        let out = policy_command(&["eval", policy.to_str().expect("utf-8"), "--input", input.to_str().expect("utf-8")]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("policy endless_loop: no answer within 100ms"), "{}", text(&out.stderr));

        let policy = fixture("good");
        let out = policy_command(&[
            "eval",
            policy.to_str().expect("utf-8"),
            "--input",
            input.to_str().expect("utf-8"),
            "--settings",
            "bad=1",
        ]);
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains("setting bad: not allowed"), "{}", text(&out.stderr));
    }

    #[test]
    fn simulate_prints_a_timeline_and_plots_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plot = dir.path().join("plot.svg");
        let policy = fixture("good");
        let trace = fixture("trace").with_extension("csv");
        let out = policy_command(&[
            "simulate",
            policy.to_str().expect("utf-8"),
            "--trace",
            trace.to_str().expect("utf-8"),
            "--plot",
            plot.to_str().expect("utf-8"),
            "--min",
            "2",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        // The trace starts at 1 replica; the host raises the policy's "hold at 1" to min 2.
        assert!(stdout.contains("raised to minReplicas 2"), "{stdout}");
        assert_eq!(stdout.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count(), 17);
        let svg = std::fs::read_to_string(&plot).expect("plot written");
        assert!(svg.starts_with("<svg") && svg.contains("<path"));
    }
}

/// Every `Celery` resource shipped as an example (`example/*.yaml`, `deploy/example-celery.yaml`)
/// passes the operator's own validation, and the real built-in it selects accepts its settings;
/// together they show every built-in policy.
#[test]
fn example_resources_are_valid_and_cover_every_builtin() {
    use celery_operator::crd::Celery;
    use celery_operator::spec::validate::{Scaling, validate};
    let Some(dir) = builtins_dir() else {
        assert!(std::env::var_os("CELERY_OPERATOR_REQUIRE_BUILTINS").is_none(), "run policies/build.sh");
        return;
    };
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-cache");
    let registry = Registry::new(engine(), RegistrySettings { builtin_dir: Some(dir), user_dir: None, cache_dir: Some(cache) });
    registry.refresh();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("example"))
        .expect("example/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.push(root.join("deploy/example-celery.yaml"));
    let mut shown = std::collections::BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            if value.get("kind").and_then(serde_yaml::Value::as_str) != Some("Celery") {
                continue;
            }
            let celery: Celery = serde_yaml::from_value(value).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let scaling = validate(&celery.spec).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let Scaling::Policies { policies, .. } = scaling else { continue };
            for p in policies {
                let policy = registry.resolve(&p.name).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                policy
                    .validate_settings(&CallLimits::default(), &p.settings)
                    .unwrap_or_else(|e| panic!("{}: {} refuses the settings: {e}", file.display(), p.name));
                shown.insert(p.name);
            }
        }
    }
    let builtins: std::collections::BTreeSet<String> = registry.list().into_iter().map(|i| i.name).collect();
    let missing: Vec<_> = builtins.difference(&shown).collect();
    assert!(missing.is_empty(), "no example resource shows {missing:?}");
}

/// A WASI reactor (Go's c-shared output is one) is initialised once, at load: the module that
/// gets compiled is a snapshot taken after `_initialize`, and every fresh instance starts from
/// it, neither initialised twice nor not at all. A start-up that traps is not snapshotted: the
/// load fails as it always did, naming the trap.
#[test]
fn a_reactor_is_initialised_once_at_load() {
    use celery_operator::policy::core_module::{has_initialize, preinitialize};
    let wasm = wat::parse_file(fixture("reactor")).expect("fixture");
    assert!(has_initialize(&wasm));
    let snapshot = preinitialize(&engine(), "reactor", &wasm, &CallLimits::default()).expect("snapshotted");
    assert!(!has_initialize(&snapshot), "the snapshot has no _initialize left to run");
    // Wizer empties the original segments into passive ones; nothing can use them here, so the
    // host drops them (Go has tens of thousands, each set up in every instance otherwise).
    assert_eq!(data_segments(&wasm), (2, 0));
    assert_eq!(data_segments(&snapshot).1, 0, "no passive data segment is left");

    let cache = tempfile::tempdir().expect("tempdir");
    let cache = ArtifactCache::open(cache.path()).expect("cache");
    for from_cache in [false, true] {
        let policy =
            LoadedPolicy::load(&engine(), Some(&cache), "reactor", &wasm, Source::File("reactor".into()), Metadata::default())
                .expect("loads");
        assert_eq!(policy.stats().from_cache, from_cache);
        for _ in 0..3 {
            let decision = policy.decide(&CallLimits::default(), &input_with(1)).expect("decides");
            assert_eq!((decision.replicas, decision.reason.as_str()), (7, "initialised 1"));
        }
    }

    let trapping = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (global (export "celery_policy_abi_version") i32 (i32.const 1))
             (func (export "_initialize") unreachable)
             (func (export "celery_policy_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "celery_policy_validate_settings") (param i32 i32) (result i64) (i64.const 0))
             (func (export "celery_policy_decide") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .expect("WAT");
    assert!(preinitialize(&engine(), "trapping", &trapping, &CallLimits::default()).is_err());

    // A reactor that copies a passive segment in at decision time keeps its segments.
    let passive = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (global (export "celery_policy_abi_version") i32 (i32.const 1))
             (data (i32.const 0) "{\22ok\22:true}")
             (data $answer "{\22replicas\22:4,\22reason\22:\22from a passive segment\22}")
             (func (export "_initialize") nop)
             (func (export "celery_policy_alloc") (param i32) (result i32) (i32.const 1024))
             (func (export "celery_policy_validate_settings") (param i32 i32) (result i64) (i64.const 11))
             (func (export "celery_policy_decide") (param i32 i32) (result i64)
               (memory.init $answer (i32.const 64) (i32.const 0) (i32.const 48))
               (i64.or (i64.shl (i64.const 64) (i64.const 32)) (i64.const 48))))"#,
    )
    .expect("WAT");
    let snapshot = preinitialize(&engine(), "passive", &passive, &CallLimits::default()).expect("snapshotted");
    assert!(data_segments(&snapshot).1 >= 1, "the segment memory.init reads is kept");
    let policy = LoadedPolicy::load(&engine(), None, "passive", &passive, Source::File("passive".into()), Metadata::default())
        .expect("loads");
    let decision = policy.decide(&CallLimits::default(), &input_with(1)).expect("decides");
    assert_eq!((decision.replicas, decision.reason.as_str()), (4, "from a passive segment"));
    let error = LoadedPolicy::load(&engine(), None, "trapping", &trapping, Source::File("trapping".into()), Metadata::default())
        .expect_err("its start-up traps");
    assert_eq!(variant(&error), "Trap", "{error}");
}

/// (active, passive) data segments of a core module.
fn data_segments(wasm: &[u8]) -> (usize, usize) {
    let mut counts = (0, 0);
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::DataSection(reader) = payload.expect("parses") {
            for data in reader {
                match data.expect("segment").kind {
                    wasmparser::DataKind::Passive => counts.1 += 1,
                    wasmparser::DataKind::Active { .. } => counts.0 += 1,
                }
            }
        }
    }
    counts
}

#[test]
fn a_policy_proved_fast_runs_inline_until_a_slow_call_sends_it_back_to_the_blocking_pool() {
    use celery_operator::policy::runner::{INLINE_AFTER, INLINE_BUDGET};
    use std::sync::atomic::{AtomicUsize, Ordering};

    // One runtime thread: a call that holds it holds every other task too.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let limits = CallLimits { timeout: Duration::from_millis(300), ..CallLimits::default() };
        let runner = PolicyRunner::new(2, limits);
        let policy = loaded("turns_slow");
        let mut small = sample_input();
        (small.history, small.current.pods) = (Vec::new(), Vec::new());
        let mut large = sample_input();
        large.history = std::iter::repeat_n(sample_input().current, 60).collect();
        assert!(serde_json::to_vec(&large).expect("JSON").len() > 4000, "the fixture spins on inputs over 2,000 bytes");

        // Another task, which counts while it gets the thread.
        let turns = Arc::new(AtomicUsize::new(0));
        tokio::spawn({
            let turns = Arc::clone(&turns);
            async move {
                loop {
                    turns.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
        });
        let other_task_ran_during = |input: PolicyInput| {
            let (runner, policy, turns) = (runner.clone(), Arc::clone(&policy), Arc::clone(&turns));
            async move {
                let before = turns.load(Ordering::Relaxed);
                let outcome = runner.decide(policy, input, None).await;
                (turns.load(Ordering::Relaxed) > before, outcome)
            }
        };

        // Proving fast takes INLINE_AFTER calls in a row under INLINE_BUDGET of CPU. A call on
        // this shared machine can go over (a cold pool slot, a page fault under memory
        // pressure), which restarts the count without a strike (it ran on the blocking pool):
        // so call until the policy is proved fast, not exactly INLINE_AFTER times, and fail
        // only if it never is.
        let prove_fast = async |what: &str| {
            for call in 1..=INLINE_AFTER * 50 {
                let (_, outcome) = other_task_ran_during(small.clone()).await;
                assert_eq!(outcome.expect("fast answer").0.decision.reason, "fast");
                if policy.pace().inline() {
                    assert!(call >= INLINE_AFTER, "{what}: inline after {call} calls, fewer than {INLINE_AFTER}");
                    return;
                }
            }
            panic!("{what}: never {INLINE_AFTER} calls in a row under {INLINE_BUDGET:?}");
        };
        prove_fast("proved fast").await;
        // Inline: the slow call holds the thread until its deadline; nothing else runs.
        let (ran, outcome) = other_task_ran_during(large.clone()).await;
        assert_error("turns_slow", &outcome.expect_err("times out"), "Timeout", &[]);
        assert!(!ran, "the call ran on the runtime's thread");
        assert!(!policy.pace().inline(), "demoted by the slow call");
        // Back on the blocking pool: the thread is free while the policy spins.
        let (ran, outcome) = other_task_ran_during(large).await;
        assert_error("turns_slow", &outcome.expect_err("times out"), "Timeout", &[]);
        assert!(ran, "the other task ran while the policy spun on the blocking pool");
        // Until it proves fast again (for good after STRIKES slow calls inline: see the
        // runner's unit tests).
        prove_fast("fast again").await;
    });
}
