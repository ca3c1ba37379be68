//! The cost of policies, printed as one table: per built-in policy (`target/policies`, built
//! by `policies/build.sh`), compiling versus loading from the cache, the latency of one
//! decision with a fresh instance, and the same decision by a plain Rust function.
//! Decisions are timed twice: on the shared test input (no history), and with a full history
//! window of [`HISTORY`] samples, which is what the operator hands a policy once an app has
//! been watched for a minute.
//!
//! `cargo bench -p celery-operator --bench policy` (ITERATIONS=… to change the sample size).
//! A benchmark, never a test: nothing here passes or fails on a timing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use celery_operator::policy::HISTORY;
use celery_operator::policy::cache::ArtifactCache;
use celery_operator::policy::cli::percentiles;
use celery_operator::policy::{
    CallLimits, EngineSettings, LoadedPolicy, Metadata, PolicyEngine, PolicyInput, Registry, RegistrySettings, Source,
};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/policies");
    let mut modules: Vec<PathBuf> =
        std::fs::read_dir(&dir).map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect()).unwrap_or_default();
    modules.retain(|p| p.extension().is_some_and(|e| e == "wasm"));
    modules.sort();
    if modules.is_empty() {
        println!("no built policies in {}: run policies/build.sh first", dir.display());
        return;
    }
    let iterations: usize = std::env::var("ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let base: PolicyInput = serde_json::from_str(
        &std::fs::read_to_string(root.join("policies/test/base-input.json")).expect("policies/test/base-input.json"),
    )
    .expect("base input");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(root.join("policies/test/cases.json")).expect("policies/test/cases.json"))
            .expect("cases");

    let engine = PolicyEngine::new(EngineSettings::default()).expect("engine");
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache = ArtifactCache::open(cache_dir.path()).expect("cache");
    let limits = CallLimits { timeout: Duration::from_secs(5), ..CallLimits::default() };
    println!(
        "policy benchmark: {iterations} decisions each, fresh instance per decision, pooling allocator {}",
        if engine.pooling() { "on" } else { "off (unavailable)" }
    );
    println!();
    println!(
        "{:<13} {:<10} {:<9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>11} {:>10} {:>8} {:>11} {:>11}",
        "policy",
        "language",
        "interface",
        "size",
        "compile",
        "cache load",
        "p50",
        "p99",
        "decisions/s",
        "native",
        "history",
        "window p50",
        "window p99"
    );
    let mut cache_total = Duration::ZERO;
    let mut records_too = Vec::new();
    for path in modules {
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let bytes = std::fs::read(&path).expect("module");
        // NAME.json as the registry reads it: the language, and how much history to send.
        let metadata = Metadata::beside(&path).unwrap_or_else(|e| panic!("{e}"));
        let language = metadata.language.clone().unwrap_or_else(|| "-".into());
        let load_with = |cache: Option<&ArtifactCache>, metadata: Metadata| {
            LoadedPolicy::load(&engine, cache, &name, &bytes, Source::BuiltIn(path.clone()), metadata)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let load = |cache: Option<&ArtifactCache>| load_with(cache, metadata.clone());
        let compiled = load(None);
        load(Some(&cache));
        let cached = load(Some(&cache));
        assert!(cached.stats().from_cache, "second load comes from the cache");
        cache_total += cached.stats().total;

        let mut input = base.clone();
        input.settings = valid_settings(&cases, &name);
        let decision = cached.decide(&limits, &input).unwrap_or_else(|e| panic!("{e}"));
        let (p50, p99, rate) = time_decisions(&cached, &limits, &input, iterations);
        let (window_p50, window_p99, _) = time_decisions(&cached, &limits, &with_full_window(&input), iterations);
        let native = native_latency(&name, &input, decision.replicas);
        // Records, then the columns of `window` for a component that imports it.
        let history = format!(
            "{}{}",
            metadata.history.map_or("all".to_string(), |n| n.to_string()),
            cached.window().map_or(String::new(), |n| format!("+w{n}"))
        );
        if cached.window().is_some_and(|n| n > 0) && metadata.history != Some(HISTORY) {
            // What the window costs as records: the same policy sent the whole window both ways.
            let both = load_with(Some(&cache), Metadata { history: None, ..metadata.clone() });
            let (p50, _, _) = time_decisions(&both, &limits, &with_full_window(&input), iterations);
            records_too.push((name.clone(), p50));
        }
        println!(
            "{:<13} {:<10} {:<9} {:>9} {:>11} {:>10} {:>10} {:>10} {:>11.0} {:>10} {:>8} {:>11} {:>11}",
            name,
            language,
            cached.interface().to_string(),
            format!("{} KiB", bytes.len() / 1024),
            show(compiled.stats().artifact),
            show(cached.stats().total),
            show(p50),
            show(p99),
            rate,
            native.map_or("-".to_string(), show),
            history,
            show(window_p50),
            show(window_p99),
        );
    }
    // What the operator does at start: its registry reads, hashes and loads every built-in
    // from the warm cache, the modules spread over the cores. Best of three fresh registries.
    let at_start = (0..3)
        .map(|_| {
            let settings = RegistrySettings {
                builtin_dir: Some(dir.clone()),
                user_dir: None,
                cache_dir: Some(cache_dir.path().to_path_buf()),
            };
            let registry = Registry::new(engine.clone(), settings);
            let t = Instant::now();
            registry.refresh();
            let took = t.elapsed();
            assert!(registry.list().iter().all(|p| p.problem.is_none()), "every built-in loads");
            took
        })
        .min()
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!();
    for (name, p50) in &records_too {
        println!("{name}: window p50 {} with the {HISTORY} samples sent as records as well as columns", show(*p50));
    }
    println!("all built-ins loaded from the cache in {} one after another (deserialize, link, checks)", show(cache_total));
    println!("the registry at start (read, hash, load; {cores} cores): {} for all built-ins", show(at_start));
    println!("compile: cranelift from wasm bytes; cache load: LoadedPolicy::load with a warm artifact cache;");
    println!("p50/p99: one decision, new store and instance each time; native: the same rule in plain Rust;");
    println!("window: the same decision with {HISTORY} samples of history, as the operator has once an app is watched a minute,");
    println!("cut to the latest samples the policy's NAME.json asks for (history: all, or how many; +wN: N more as columns");
    println!("through the `window` interface, for a component that imports it).");
}

/// p50, p99 and decisions per second of `iterations` decisions on `input`, each in a fresh
/// instance, after a tenth as many untimed.
fn time_decisions(
    policy: &LoadedPolicy,
    limits: &CallLimits,
    input: &PolicyInput,
    iterations: usize,
) -> (Duration, Duration, f64) {
    for _ in 0..(iterations / 10).max(1) {
        policy.decide(limits, input).expect("decides");
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        std::hint::black_box(policy.decide(limits, std::hint::black_box(input)).expect("decides"));
        times.push(t.elapsed());
    }
    let rate = iterations as f64 / times.iter().sum::<Duration>().as_secs_f64();
    let (p50, p99) = percentiles(&mut times);
    (p50, p99, rate)
}

/// `input` with a full history window: the current sample repeated a second apart, the
/// backlog rising by one each time, as the sampler keeps them.
fn with_full_window(input: &PolicyInput) -> PolicyInput {
    let mut windowed = input.clone();
    windowed.history = (0..HISTORY)
        .map(|i| {
            let mut sample = input.current.clone();
            let age = (HISTORY - i) as u64;
            sample.timestamp_ms = sample.timestamp_ms.saturating_sub(age * 1000);
            for queue in &mut sample.queues {
                queue.backlog = queue.backlog.saturating_sub(age);
            }
            sample
        })
        .collect();
    windowed
}

/// Settings from the first case of `policy` that validates cleanly.
fn valid_settings(cases: &[serde_json::Value], policy: &str) -> BTreeMap<String, String> {
    cases
        .iter()
        .filter(|c| c["policy"] == policy && c.get("error").is_none())
        .find_map(|c| c.get("validate"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

fn show(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else if us < 1e6 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// p50 of the plain-Rust version of a built-in's rule, settings parsed from strings as the
/// guest does; checked against the policy's own answer so the baseline does the same work.
fn native_latency(policy: &str, input: &PolicyInput, expected: u32) -> Option<Duration> {
    let rule: fn(&PolicyInput) -> u32 = match policy {
        "queue-length" => native::queue_length,
        "steps" => native::steps,
        "load" => native::load,
        "cpu-memory" => native::cpu_memory,
        "drain-time" => native::drain_time,
        _ => return None,
    };
    if rule(input) != expected {
        eprintln!("note: native {policy} says {} where the policy says {expected}", rule(input));
    }
    let mut times = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let t = Instant::now();
        std::hint::black_box(rule(std::hint::black_box(input)));
        times.push(t.elapsed());
    }
    Some(percentiles(&mut times).0)
}

mod native {
    use celery_operator::policy::PolicyInput;

    fn setting(input: &PolicyInput, key: &str) -> Option<f64> {
        input.settings.get(key).and_then(|v| v.trim().trim_end_matches('%').parse().ok())
    }

    fn backlog(input: &PolicyInput) -> u64 {
        input.current.queues.iter().map(|q| q.backlog).sum()
    }

    pub fn queue_length(input: &PolicyInput) -> u32 {
        let target = setting(input, "target").unwrap_or(1.0).max(1.0);
        let backlog = backlog(input) as f64;
        let wanted = (backlog / target).ceil();
        if backlog > 0.0 && wanted < 1.0 { 1 } else { wanted.min(f64::from(u32::MAX)) as u32 }
    }

    pub fn steps(input: &PolicyInput) -> u32 {
        let backlog = backlog(input);
        let table = input.settings.get("steps").map(String::as_str).unwrap_or("");
        let mut replicas = 0;
        for entry in table.split(',') {
            let Some((threshold, count)) = entry.split_once(':') else {
                continue;
            };
            if let (Ok(threshold), Ok(count)) = (threshold.trim().parse::<u64>(), count.trim().parse::<u32>())
                && backlog >= threshold
            {
                replicas = count;
            }
        }
        replicas
    }

    pub fn load(input: &PolicyInput) -> u32 {
        let target = setting(input, "targetUtilization").unwrap_or(0.8);
        let active: u64 = input.current.pods.iter().filter_map(|p| p.active_tasks).map(u64::from).sum();
        let work = (active + backlog(input)) as f64;
        let per_worker = f64::from(input.concurrency.max(1)) * target;
        (work / per_worker).ceil() as u32
    }

    pub fn cpu_memory(input: &PolicyInput) -> u32 {
        let target = setting(input, "cpu").unwrap_or(80.0) / 100.0;
        let (used, requested) = input
            .current
            .pods
            .iter()
            .filter(|p| p.ready)
            .filter_map(|p| Some((p.cpu_millis?, p.cpu_request_millis?)))
            .fold((0u64, 0u64), |(u, r), (pu, pr)| (u + pu, r + pr));
        if requested == 0 {
            return input.current_replicas;
        }
        let ratio = used as f64 / requested as f64 / target;
        if (ratio - 1.0).abs() <= 0.1 {
            return input.current_replicas;
        }
        (f64::from(input.current_replicas) * ratio).ceil() as u32
    }

    pub fn drain_time(input: &PolicyInput) -> u32 {
        let seconds = setting(input, "seconds").unwrap_or(60.0);
        let rate = setting(input, "workerRate").unwrap_or(1.0).max(f64::MIN_POSITIVE);
        let backlog = backlog(input) as f64;
        if input.history.is_empty() {
            return if backlog > 0.0 { input.current_replicas.max(1) } else { 0 };
        }
        (backlog / (seconds * rate)).ceil() as u32
    }
}
