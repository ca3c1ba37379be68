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
use super::{PodSample, PolicyInput, QueueSample, Sample};

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
    /// Directory of the built-in policies (default: /usr/lib/celery-operator/policies, else
    /// target/policies of a checkout).
    #[arg(long, global = true, env = "CELERY_OPERATOR_POLICY_DIR")]
    builtin_dir: Option<PathBuf>,
    /// Directory of user policies (a mounted ConfigMap in a cluster).
    #[arg(long, global = true, env = "CELERY_OPERATOR_USER_POLICY_DIR")]
    user_dir: Option<PathBuf>,
    /// Directory of compiled policies (default: ~/.cache/celery-operator/policies).
    #[arg(long, global = true, env = "CELERY_OPERATOR_POLICY_CACHE")]
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
    /// Replay a recorded trace through the policy with the host's bounds and stabilisation.
    Simulate {
        policy: String,
        /// CSV with columns t_seconds,backlog[,replicas,reserved,active_tasks,cpu_millis,cpu_request_millis].
        #[arg(long)]
        trace: PathBuf,
        /// Write an SVG plot of backlog and replicas over time.
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        min: u32,
        #[arg(long, default_value_t = 10)]
        max: u32,
        /// Worker concurrency (tasks per pod).
        #[arg(long, default_value_t = 4)]
        concurrency: u32,
        /// Replicas at the start (default: the trace's first recorded replicas, else min).
        #[arg(long)]
        initial: Option<u32>,
        /// Scale-down stabilisation window, in seconds (`scaleDown.stabilizationWindowSeconds`).
        #[arg(long, default_value_t = 60)]
        stabilization_seconds: u64,
        /// Most workers removed in one scale-down step, in percent (`scaleDown.maxStepPercent`).
        #[arg(long, default_value_t = 50)]
        step_percent: u32,
        /// Seconds between scale-down steps (`scaleDown.periodSeconds`).
        #[arg(long, default_value_t = 15)]
        step_period_seconds: u64,
        /// Samples of history handed to the policy (the operator hands 60).
        #[arg(long, default_value_t = crate::policy::HISTORY)]
        history: usize,
        #[arg(long = "settings", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
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

/// Runs a `policy` subcommand.
pub async fn run(args: PolicyArgs) -> anyhow::Result<()> {
    let PolicyArgs { command, builtin_dir, user_dir, cache_dir, no_cache, timeout_ms, memory_mib } = args;
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
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
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
            PolicyCommand::Simulate {
                policy,
                trace,
                plot,
                min,
                max,
                concurrency,
                initial,
                stabilization_seconds,
                step_percent,
                step_period_seconds,
                history,
                settings,
            } => {
                let options = SimulateOptions {
                    app: "simulation/app".into(),
                    min_replicas: min,
                    max_replicas: max,
                    concurrency,
                    initial_replicas: initial,
                    stabilization: Duration::from_secs(stabilization_seconds),
                    step_percent,
                    step_period: Duration::from_secs(step_period_seconds),
                    history,
                    settings: parse_settings(&settings)?,
                    epoch_ms: 1_764_000_000_000,
                };
                self.simulate(&policy, &trace, plot.as_deref(), &options)
            }
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
        Ok(self.registry().resolve(policy)?)
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
        println!("{:<16} {:<11} {:<10} {:<8} {:<20} SOURCE", "NAME", "LANGUAGE", "INTERFACE", "HISTORY", "DIGEST");
        for info in infos {
            let digest = info.digest.as_deref().map_or("-".to_string(), |d| format!("sha256:{}", &d[..d.len().min(12)]));
            println!(
                "{:<16} {:<11} {:<10} {:<8} {:<20} {}",
                info.name,
                info.language.as_deref().unwrap_or("-"),
                info.interface.map_or("-".to_string(), |i| i.to_string()),
                info.history.map_or("all".to_string(), |n| n.to_string()),
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
        let policy = LoadedPolicy::load_file(&self.engine, None, file, Source::File(file.into()), metadata)?;
        let stats = policy.stats();
        println!("{}: ok", file.display());
        println!("  interface: {}", policy.interface());
        println!(
            "  version:   {}",
            match policy.interface() {
                super::Interface::Component => format!("celery:autoscaler@{} compatible", super::WIT_VERSION),
                super::Interface::Core => format!("core ABI version {}", super::CORE_ABI_VERSION),
            }
        );
        println!("  imports:   only the host interface and WASI (empty context)");
        println!("  digest:    sha256:{}", policy.digest());
        println!("  pin as:    {}@sha256:{}", policy.name(), policy.digest());
        println!("  compiled in {:.1} ms", stats.artifact.as_secs_f64() * 1e3);
        Ok(())
    }

    fn eval(&self, policy: &str, input: &Path, settings: &[String]) -> anyhow::Result<()> {
        let policy = self.resolve(policy)?;
        let mut input = read_input(input)?;
        input.settings.extend(parse_settings(settings)?);
        policy.validate_settings(&self.limits, &input.settings)?;
        let (min, max) = (input.min_replicas, input.max_replicas);
        let verdict = Verdict::bounded(policy.decide(&self.limits, &input)?, min, max);
        let out = serde_json::json!({
            "replicas": verdict.decision.replicas,
            "reason": verdict.decision.reason,
            "proposed": verdict.proposed,
            "clamped": verdict.clamped,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    }

    fn simulate(&self, policy: &str, trace: &Path, plot: Option<&Path>, options: &SimulateOptions) -> anyhow::Result<()> {
        let loaded = self.resolve(policy)?;
        loaded.validate_settings(&self.limits, &options.settings)?;
        let text = std::fs::read_to_string(trace).with_context(|| format!("reading {}", trace.display()))?;
        let rows = simulate::parse_trace(&text).map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
        let steps = simulate::simulate(&loaded, &self.limits, &rows, options);
        print!("{}", simulate::timeline(&steps));
        if let Some(plot) = plot {
            let title = format!("{} on {}", loaded.name(), trace.display());
            std::fs::write(plot, simulate::plot_svg(&steps, &title)).with_context(|| format!("writing {}", plot.display()))?;
            println!("plot written to {}", plot.display());
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
