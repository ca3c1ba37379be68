//! `celery-operator policy …`: tools for policy authors (list, check, eval, simulate, bench).
//!
//! A policy argument is a file when it names one (or looks like a path), otherwise a name
//! resolved by the registry (built-ins and the user directory, `name@sha256:<hex>` allowed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use super::cache::ArtifactCache;
use super::engine::{EngineSettings, PolicyEngine};
use super::loader::{LoadedPolicy, Metadata, Source};
use super::registry::{Registry, RegistrySettings};
use super::runner::{CallLimits, Verdict};
use super::simulate::{self, SimulateOptions};
use super::{PodSample, PolicyError, PolicyInput, QueueSample, Sample};

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
    /// Directory of the built-in policies (default: /usr/lib/celery-operator/policies, else
    /// target/policies of a checkout), as `run --policy-dir`.
    #[arg(long = "policy-dir", visible_alias = "builtin-dir", global = true, env = "CELERY_OPERATOR_POLICY_DIR")]
    builtin_dir: Option<PathBuf>,
    /// Directory of your own policies (a mounted ConfigMap in a cluster), as
    /// `run --extra-policy-dir`.
    #[arg(long = "extra-policy-dir", visible_alias = "user-dir", global = true, env = "CELERY_OPERATOR_USER_POLICY_DIR")]
    user_dir: Option<PathBuf>,
    /// Directory of compiled policies (default: ~/.cache/celery-operator/policies), as
    /// `run --policy-cache-dir`.
    #[arg(long = "policy-cache-dir", visible_alias = "cache-dir", global = true, env = "CELERY_OPERATOR_POLICY_CACHE")]
    cache_dir: Option<PathBuf>,
    /// Compile every module afresh, without reading or writing the cache.
    #[arg(long, global = true)]
    no_cache: bool,
    /// Time limit of one call, in milliseconds.
    #[arg(long, global = true, default_value_t = 100)]
    timeout_ms: u64,
    /// Memory limit of one call, in MiB.
    #[arg(long, global = true, default_value_t = 64)]
    memory_mib: u64,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// The policies the registry knows, with language, interface, digest and source.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Load a module and check its interface, version and imports.
    Check { file: PathBuf },
    /// One decision, printed as JSON.
    Eval {
        /// A policy name or a .wasm/.wat file.
        policy: String,
        /// The input: the JSON form of the WIT `input` record (see wit/CORE-ABI.md).
        #[arg(long)]
        input: PathBuf,
        /// Settings as key=value, added to (and overriding) those of the input.
        #[arg(long = "settings", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Replay a recorded trace through a policy with the host's bounds and stabilisation
    /// (a trace from `celery-operator trace` brings its policies, bounds and damping; flags
    /// override them), or through two side by side (`--compare`).
    Simulate(SimulateArgs),
    /// Decisions per second and latency percentiles, with a fresh instance per decision.
    Bench {
        policy: String,
        /// Decisions to time.
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
        /// Input to decide on (default: a built-in sample).
        #[arg(long)]
        input: Option<PathBuf>,
        #[arg(long = "settings", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
}

/// `policy simulate`: what to replay, through what, with which bounds.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// A policy name or a .wasm/.wat file; by default the policies the trace was recorded with.
    pub policy: Option<String>,
    /// CSV with columns t_seconds,backlog[,replicas,reserved,active_tasks,cpu_millis,cpu_request_millis,decided].
    #[arg(long)]
    pub trace: PathBuf,
    /// Write an SVG plot of backlog and replicas over time.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the timeline (and the summaries) as JSON.
    #[arg(long)]
    pub json: bool,
    /// A second policy to replay the same trace through, side by side, with a summary of
    /// both: worker-seconds, backlog-seconds, peak backlog, scale events.
    #[arg(long, value_name = "POLICY2")]
    pub compare: Option<String>,
    /// Settings of the `--compare` policy, as key=value.
    #[arg(long = "settings2", value_name = "KEY=VALUE")]
    pub settings2: Vec<String>,
    /// Tasks one worker completes per second: the backlog then answers each policy's
    /// workers (tasks arrive as recorded) instead of being replayed as recorded.
    #[arg(long)]
    pub rate_per_worker: Option<f64>,
    /// Fewest replicas (default: the trace's, else 1).
    #[arg(long)]
    pub min: Option<u32>,
    /// Most replicas (default: the trace's, else 10).
    #[arg(long)]
    pub max: Option<u32>,
    /// Worker concurrency, tasks per pod (default: the trace's, else 4).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Replicas at the start (default: the trace's first recorded replicas, else min).
    #[arg(long)]
    pub initial: Option<u32>,
    /// Scale-down stabilisation window, in seconds (`scaleDown.stabilizationWindowSeconds`;
    /// default: the trace's, else 60).
    #[arg(long)]
    pub stabilization_seconds: Option<u64>,
    /// Most workers removed in one scale-down step, in percent (`scaleDown.maxStepPercent`;
    /// default: the trace's, else 50).
    #[arg(long)]
    pub step_percent: Option<u32>,
    /// Seconds between scale-down steps (`scaleDown.periodSeconds`; default: the trace's,
    /// else 15).
    #[arg(long)]
    pub step_period_seconds: Option<u64>,
    /// Samples of history handed to the policy (the operator hands 60).
    #[arg(long, default_value_t = crate::policy::HISTORY)]
    pub history: usize,
    /// Settings of the policy, as key=value (default: the trace's, for the policy it names).
    #[arg(long = "settings", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
}

impl PolicyArgs {
    /// `policy simulate`, with the directories the environment names and the default limits.
    pub fn simulate(args: SimulateArgs) -> Self {
        let dir = |var: &str| std::env::var_os(var).map(PathBuf::from);
        Self {
            command: PolicyCommand::Simulate(args),
            builtin_dir: dir("CELERY_OPERATOR_POLICY_DIR"),
            user_dir: dir("CELERY_OPERATOR_USER_POLICY_DIR"),
            cache_dir: dir("CELERY_OPERATOR_POLICY_CACHE"),
            no_cache: false,
            timeout_ms: 100,
            memory_mib: 64,
        }
    }
}

/// Runs a `policy` subcommand.
pub async fn run(args: PolicyArgs) -> anyhow::Result<()> {
    let PolicyArgs { command, builtin_dir, user_dir, cache_dir, no_cache, timeout_ms, memory_mib } = args;
    let cap_mib = EngineSettings::default().max_memory_bytes >> 20;
    if memory_mib == 0 || memory_mib > cap_mib {
        bail!(
            "--memory-mib {memory_mib}: a policy call may have 1 to {cap_mib} MiB, as in the operator (spec.autoscaling.policyMemory)"
        );
    }
    // Guest log lines matter when evaluating or checking one module; elsewhere they are noise.
    let quiet = !matches!(command, PolicyCommand::Eval { .. } | PolicyCommand::Check { .. });
    init_logging(if quiet { "warn" } else { "info" });
    let limits = CallLimits {
        memory_bytes: memory_mib.saturating_mul(1 << 20),
        timeout: Duration::from_millis(timeout_ms),
        ..CallLimits::default()
    };
    let engine = PolicyEngine::new(EngineSettings {
        max_memory_bytes: limits.memory_bytes.max(EngineSettings::default().max_memory_bytes),
        ..EngineSettings::default()
    })?;
    let settings = RegistrySettings {
        builtin_dir: builtin_dir.or_else(RegistrySettings::default_builtin_dir),
        user_dir,
        cache_dir: (!no_cache).then(|| cache_dir.unwrap_or_else(RegistrySettings::default_cache_dir)),
    };
    let tools = Tools { engine, settings, limits };
    // Guest calls block; keep them off the runtime's workers like the operator does.
    tokio::task::spawn_blocking(move || tools.run(command)).await?
}

fn init_logging(default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: escape codes in a file are noise.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
}

struct Tools {
    engine: PolicyEngine,
    settings: RegistrySettings,
    limits: CallLimits,
}

impl Tools {
    fn run(&self, command: PolicyCommand) -> anyhow::Result<()> {
        match command {
            PolicyCommand::List { json } => self.list(json),
            PolicyCommand::Check { file } => self.check(&file),
            PolicyCommand::Eval { policy, input, settings } => self.eval(&policy, &input, &settings),
            PolicyCommand::Simulate(simulate) => self.simulate(simulate),
            PolicyCommand::Bench { policy, iterations, input, settings } => {
                self.bench(&policy, iterations, input.as_deref(), &settings)
            }
        }
    }

    fn cache(&self) -> Option<ArtifactCache> {
        let dir = self.settings.cache_dir.as_ref()?;
        ArtifactCache::open(dir).map_err(|e| tracing::warn!(error = %e, "compiling without a cache")).ok()
    }

    fn registry(&self) -> Registry {
        let registry = Registry::new(self.engine.clone(), self.settings.clone());
        registry.refresh();
        registry
    }

    /// A file when `policy` names one, else a registry name.
    fn resolve(&self, policy: &str) -> anyhow::Result<Arc<LoadedPolicy>> {
        let path = Path::new(policy);
        let looks_like_file =
            path.is_file() || policy.contains('/') || path.extension().is_some_and(|e| e == "wasm" || e == "wat");
        if looks_like_file {
            let metadata = Metadata::beside(path).map_err(anyhow::Error::msg)?;
            let loaded = LoadedPolicy::load_file(&self.engine, self.cache().as_ref(), path, Source::File(path.into()), metadata)?;
            return Ok(Arc::new(loaded));
        }
        // Only the module named: the others need not be compiled (nor read from the cache).
        let registry = Registry::new(self.engine.clone(), self.settings.clone());
        registry.refresh_only(policy);
        match registry.resolve(policy) {
            Err(PolicyError::UnknownPolicy { name, known }) => {
                let names = registry.names_on_disk();
                let known = if names.is_empty() { known } else { names.join(", ") };
                Err(PolicyError::UnknownPolicy { name, known }.into())
            }
            other => Ok(other?),
        }
    }

    fn list(&self, json: bool) -> anyhow::Result<()> {
        let infos = self.registry().list();
        if json {
            println!("{}", serde_json::to_string_pretty(&infos)?);
            return Ok(());
        }
        if infos.is_empty() {
            println!("no policies found (built-in dir: {:?}, user dir: {:?})", self.settings.builtin_dir, self.settings.user_dir);
            return Ok(());
        }
        println!("{:<16} {:<11} {:<10} {:<16} {:<20} SOURCE", "NAME", "LANGUAGE", "INTERFACE", "HISTORY", "DIGEST");
        for info in infos {
            let digest = info.digest.as_deref().map_or("-".to_string(), |d| format!("sha256:{}", &d[..d.len().min(12)]));
            println!(
                "{:<16} {:<11} {:<10} {:<16} {:<20} {}",
                info.name,
                info.language.as_deref().unwrap_or("-"),
                info.interface.map_or("-".to_string(), |i| i.to_string()),
                // Records, then columns for a policy that imports `window`: "0, window 60".
                format!(
                    "{}{}",
                    info.history.map_or("all".to_string(), |n| n.to_string()),
                    info.window.map_or(String::new(), |n| format!(", window {n}"))
                ),
                digest,
                info.source
            );
            if let Some(problem) = info.problem {
                println!("    ! {problem}");
            }
        }
        Ok(())
    }

    fn check(&self, file: &Path) -> anyhow::Result<()> {
        let metadata = Metadata::beside(file).map_err(anyhow::Error::msg)?;
        let policy = LoadedPolicy::load_file(&self.engine, self.cache().as_ref(), file, Source::File(file.into()), metadata)?;
        let stats = policy.stats();
        println!("{}: loaded", file.display());
        println!("  interface: {}", policy.interface());
        println!(
            "  version:   {}",
            match policy.interface() {
                super::Interface::Component => format!("celery:autoscaler@{} compatible", super::WIT_VERSION),
                super::Interface::Core => format!("core ABI version {}", super::CORE_ABI_VERSION),
            }
        );
        println!(
            "  imports:   only the host interface{} and WASI (empty context)",
            if policy.window().is_some() { ", the history window as columns" } else { "" }
        );
        println!("  digest:    sha256:{}", policy.digest());
        println!("  pin as:    {}@sha256:{}", policy.name(), policy.digest());
        println!("  compiled in {:.1} ms", stats.artifact.as_secs_f64() * 1e3);
        // A module can load and still loop, trap or answer garbage on every call: call it once.
        let (validate, decide) = match policy.interface() {
            super::Interface::Component => ("validate-settings", "decide"),
            super::Interface::Core => ("celery_policy_validate_settings", "celery_policy_decide"),
        };
        let failed =
            |export: &str, e: PolicyError| anyhow::anyhow!("{}: export `{export}` failed on a test call: {e}", file.display());
        match policy.validate_settings(&self.limits, &BTreeMap::new()) {
            Ok(()) => println!("  test call: {validate}({{}}) accepts empty settings"),
            Err(PolicyError::InvalidSettings { message, .. }) => {
                println!("  test call: {validate}({{}}) answers: {message}");
            }
            Err(e) => return Err(failed(validate, e)),
        }
        match policy.decide(&self.limits, &sample_input()) {
            Ok(decision) => println!("  test call: {decide}(a sample input) answers {} ({})", decision.replicas, decision.reason),
            Err(PolicyError::Rejected { message, .. }) => {
                println!("  test call: {decide}(a sample input, no settings) answers an error: {message}");
            }
            Err(e) => return Err(failed(decide, e)),
        }
        println!("{}: ok", file.display());
        Ok(())
    }

    fn eval(&self, policy: &str, input: &Path, settings: &[String]) -> anyhow::Result<()> {
        let policy = self.resolve(policy)?;
        let mut input = read_input(input)?;
        if input.min_replicas > input.max_replicas {
            bail!(
                "the input's minReplicas {} is above its maxReplicas {}: the operator refuses such bounds, so no policy is ever \
                 asked with them",
                input.min_replicas,
                input.max_replicas
            );
        }
        input.settings.extend(parse_settings(settings)?);
        policy.validate_settings(&self.limits, &input.settings)?;
        let (min, max) = (input.min_replicas, input.max_replicas);
        let verdict = Verdict::bounded(policy.decide(&self.limits, &input)?, min, max);
        let out = serde_json::json!({
            "replicas": verdict.decision.replicas,
            "reason": verdict.decision.reason,
            "proposed": verdict.proposed,
            "clamped": verdict.clamped,
            "declined": verdict.declined,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    }

    fn simulate(&self, args: SimulateArgs) -> anyhow::Result<()> {
        let trace = &args.trace;
        let text = std::fs::read_to_string(trace).with_context(|| format!("reading {}", trace.display()))?;
        let header = simulate::parse_header(&text).map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
        let rows = simulate::parse_trace(&text).map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
        let option = |key: &str| header.options.get(key).copied();
        let small = |key: &str| option(key).and_then(|v| u32::try_from(v).ok());
        let options = SimulateOptions {
            app: header.app.clone().unwrap_or_else(|| "simulation/app".into()),
            min_replicas: args.min.or_else(|| small("min")).unwrap_or(1),
            max_replicas: args.max.or_else(|| small("max")).unwrap_or(10),
            concurrency: args.concurrency.or_else(|| small("concurrency")).unwrap_or(4),
            initial_replicas: args.initial,
            stabilization: Duration::from_secs(
                args.stabilization_seconds.or_else(|| option("stabilization-seconds")).unwrap_or(60),
            ),
            step_percent: args.step_percent.or_else(|| small("step-percent")).unwrap_or(50),
            step_period: Duration::from_secs(args.step_period_seconds.or_else(|| option("step-period-seconds")).unwrap_or(15)),
            history: args.history,
            combine: header.combine.unwrap_or_default(),
            epoch_ms: header.epoch_ms.unwrap_or(1_764_000_000_000),
            queue: args.rate_per_worker.map(|per_worker| simulate::QueueModel { per_worker }),
        };
        if options.min_replicas > options.max_replicas {
            anyhow::bail!("--min {} is above --max {}", options.min_replicas, options.max_replicas);
        }
        if let Some(rate) = args.rate_per_worker
            && !(rate.is_finite() && rate > 0.0)
        {
            anyhow::bail!("--rate-per-worker must be a positive number of tasks per second, not {rate}");
        }
        // The first run: the policy named (with the trace's settings for it, unless given),
        // else every policy the trace was recorded with, combined as it was.
        let first: Vec<(Arc<LoadedPolicy>, BTreeMap<String, String>)> = match &args.policy {
            Some(policy) => {
                let loaded = self.resolve(policy)?;
                let recorded = header.policies.iter().find(|(name, _)| name == loaded.name()).map(|(_, s)| s.clone());
                let settings =
                    if args.settings.is_empty() { recorded.unwrap_or_default() } else { parse_settings(&args.settings)? };
                vec![(loaded, settings)]
            }
            None if header.policies.is_empty() => {
                anyhow::bail!("{}: the trace names no policy (it is not from `celery-operator trace`): name one", trace.display())
            }
            None => header
                .policies
                .iter()
                .map(|(name, settings)| Ok((self.resolve(name)?, settings.clone())))
                .collect::<anyhow::Result<_>>()?,
        };
        let mut first_options = options.clone();
        if args.policy.is_some() {
            first_options.combine = crate::crd::Combine::Max;
        }
        for (loaded, settings) in &first {
            loaded.validate_settings(&self.limits, settings)?;
        }
        let selected: Vec<simulate::Selected<'_>> =
            first.iter().map(|(p, s)| simulate::Selected { policy: p, settings: s.clone() }).collect();
        let first_name = first.iter().map(|(p, _)| p.name()).collect::<Vec<_>>().join("+");
        let steps = simulate::simulate(&selected, &self.limits, &rows, &first_options);

        let second = match &args.compare {
            None => None,
            Some(policy) => {
                let loaded = self.resolve(policy)?;
                let settings = parse_settings(&args.settings2)?;
                loaded.validate_settings(&self.limits, &settings)?;
                let mut second_options = options.clone();
                second_options.combine = crate::crd::Combine::Max;
                let selected = [simulate::Selected { policy: &loaded, settings }];
                let steps = simulate::simulate(&selected, &self.limits, &rows, &second_options);
                Some((loaded.name().to_string(), steps))
            }
        };
        if args.json {
            let mut out = serde_json::json!({"policy": first_name, "steps": steps, "summary": simulate::summarize(&steps)});
            if let Some((name, steps)) = &second {
                out["compare"] = serde_json::json!({"policy": name, "steps": steps, "summary": simulate::summarize(steps)});
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            match &second {
                None => print!("{}", simulate::timeline(&steps)),
                Some((name, other)) => {
                    println!("{first_name}:");
                    print!("{}", simulate::timeline(&steps));
                    println!("\n{name}:");
                    print!("{}", simulate::timeline(other));
                    println!();
                    print!("{}", simulate::comparison((&first_name, &steps), (name, other), options.queue.is_some()));
                }
            }
        }
        if let Some(plot) = &args.plot {
            let mut runs: Vec<(&str, &[simulate::Step])> = vec![(&first_name, &steps)];
            if let Some((name, other)) = &second {
                runs.push((name, other));
            }
            let names = runs.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" vs ");
            let title = format!("{names} on {}", trace.display());
            std::fs::write(plot, simulate::plot_svg(&runs, &title)).with_context(|| format!("writing {}", plot.display()))?;
            if !args.json {
                println!("plot written to {}", plot.display());
            }
        }
        Ok(())
    }

    fn bench(&self, policy: &str, iterations: usize, input: Option<&Path>, settings: &[String]) -> anyhow::Result<()> {
        let loaded = self.resolve(policy)?;
        let mut input = match input {
            Some(path) => read_input(path)?,
            None => sample_input(),
        };
        input.settings.extend(parse_settings(settings)?);
        let iterations = iterations.max(1);
        let warmup = (iterations / 10).clamp(1, 100);
        for _ in 0..warmup {
            loaded.decide(&self.limits, &input)?;
        }
        let mut times = Vec::with_capacity(iterations);
        let start = Instant::now();
        for _ in 0..iterations {
            let t = Instant::now();
            loaded.decide(&self.limits, &input)?;
            times.push(t.elapsed());
        }
        let total = start.elapsed();
        let (p50, p99) = percentiles(&mut times);
        println!(
            "{}: {iterations} decisions, fresh instance each: {:.0} decisions/s, p50 {:.1} µs, p99 {:.1} µs",
            loaded.name(),
            iterations as f64 / total.as_secs_f64(),
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
        Ok(())
    }
}

/// p50 and p99 of `times` (sorted in place).
pub fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort_unstable();
    let at = |q: f64| {
        if times.is_empty() {
            return Duration::ZERO;
        }
        let i = ((times.len() - 1) as f64 * q).round() as usize;
        times[i.min(times.len() - 1)]
    };
    (at(0.50), at(0.99))
}

fn read_input(path: &Path) -> anyhow::Result<PolicyInput> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a policy input (see wit/CORE-ABI.md)", path.display()))
}

/// `key=value` pairs; a pair without `=` is an error naming it.
pub fn parse_settings(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut settings = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("setting `{pair}` is not KEY=VALUE");
        };
        settings.insert(key.trim().to_string(), value.to_string());
    }
    Ok(settings)
}

/// A representative input: two workers, a backlog, CPU and memory metrics, some history.
pub fn sample_input() -> PolicyInput {
    let sample = |t: u64, backlog: u64, active: u32| Sample {
        timestamp_ms: 1_764_000_000_000 + t * 15_000,
        replicas: 2,
        queues: vec![QueueSample { name: "celery".into(), backlog, reserved: Some(8), consumers: Some(2) }],
        pods: (0..2)
            .map(|i| PodSample {
                name: format!("orders-celery-worker-{i}"),
                ready: true,
                cpu_millis: Some(450),
                cpu_request_millis: Some(500),
                memory_bytes: Some(100 << 20),
                memory_request_bytes: Some(128 << 20),
                active_tasks: Some(active),
            })
            .collect(),
    };
    PolicyInput {
        app: "shop/orders".into(),
        current_replicas: 2,
        min_replicas: 1,
        max_replicas: 10,
        concurrency: 4,
        current: sample(4, 120, 4),
        history: (0..4).map(|t| sample(t, 40 + t * 20, 3)).collect(),
        settings: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_errors_name_the_pair() {
        let s = parse_settings(&["target=30".into(), "steps=0:1,100:3".into()]).expect("valid");
        assert_eq!(s.get("steps").map(String::as_str), Some("0:1,100:3"));
        let error = parse_settings(&["oops".into()]).expect_err("no =");
        assert!(error.to_string().contains("oops"));
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut times: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        assert_eq!(percentiles(&mut times), (Duration::from_micros(51), Duration::from_micros(99)));
    }
}
