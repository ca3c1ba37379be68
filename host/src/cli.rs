//! The command line: `celery-operator run`, `crd`, `policy …`, `observe`, `trace`, and the
//! kubectl plugin (the binary run as `kubectl-celery`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use crate::leader::LeaseConfig;
use crate::operator::{self, RunOptions};
use crate::policy::check::PolicyCheck;
use crate::policy::registry::RegistrySettings;
use crate::scope::Scope;
use crate::telemetry::{self, LogFormat};

/// Runs Celery applications on Kubernetes and scales their workers with WebAssembly policies.
#[derive(Parser, Debug)]
#[command(name = "celery-operator", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator in a cluster or against a kubeconfig.
    Run(RunArgs),
    /// Print the CustomResourceDefinition of `Celery` (what deploy/crd.yaml holds).
    Crd,
    /// Tools for scaling-policy authors: list, check, eval, simulate, bench.
    Policy(crate::policy::cli::PolicyArgs),
    /// Print, as JSON, what the broker reports for some queues: what a policy would be handed.
    Observe(crate::metrics::observe::ObserveArgs),
    /// Write an autoscaled app's recent ticks (from the running operator) as the CSV that
    /// `policy simulate --trace` replays.
    Trace(crate::kubectl::TraceArgs),
    /// The kubectl plugin (`kubectl celery why|trace|simulate`); the binary linked as
    /// `kubectl-celery` runs this.
    Kubectl(crate::kubectl::Plugin),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Kubeconfig to use; by default KUBECONFIG, ~/.kube/config, or the in-cluster account.
    #[arg(long, env = "KUBECONFIG_PATH")]
    kubeconfig: Option<PathBuf>,
    /// Namespace to watch; repeat for several. All namespaces when absent.
    #[arg(long = "namespace", short = 'n', env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080", env = "LISTEN_ADDRESS")]
    listen: SocketAddr,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
    log_format: LogFormat,
    /// Hold a Lease before reconciling, so only one of several replicas acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "celery-operator")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "celery-operator")]
    lease_name: String,
    /// Seconds a standby waits for a silent leader before taking over; the leader itself stops
    /// writing two thirds of that after its last renewal (15 s: 10 s), and retries every
    /// 2/15 of it (2 s), as client-go does.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Directory of the built-in policies (default: /usr/lib/celery-operator/policies, else
    /// target/policies in a checkout).
    #[arg(long, env = "CELERY_OPERATOR_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Watched directory of your own policy modules (`<name>.wasm`), e.g. a mounted ConfigMap.
    #[arg(long, env = "CELERY_OPERATOR_USER_POLICY_DIR")]
    extra_policy_dir: Option<PathBuf>,
    /// Where compiled policies are cached across restarts.
    #[arg(long, env = "CELERY_OPERATOR_POLICY_CACHE")]
    policy_cache_dir: Option<PathBuf>,
    /// DNS server (ADDRESS:PORT) for broker and Flower names, instead of those in
    /// /etc/resolv.conf (whose search domains still apply), e.g. a forwarded cluster DNS when
    /// the operator runs outside the cluster.
    #[arg(long, env = "CELERY_OPERATOR_DNS_SERVER")]
    dns_server: Option<std::net::SocketAddr>,
    /// Minutes of each autoscaled pool's past kept for `/trace` (`celery-operator trace`); 0
    /// keeps none. About 40 bytes per pool per interval (35 KiB for 15 minutes at 1 s).
    #[arg(long, default_value_t = 15, env = "CELERY_OPERATOR_TRACE_MINUTES")]
    trace_minutes: u64,
    /// A loopback address (127.0.0.1:PORT) serving `/trace` without a token, for
    /// `kubectl port-forward` and `celery-operator trace`; `/trace` on --listen needs a token.
    #[arg(long, env = "CELERY_OPERATOR_TRACE_LISTEN")]
    trace_listen: Option<SocketAddr>,
}

/// Entry point of the binary.
pub async fn main() -> anyhow::Result<()> {
    if crate::kubectl::invoked_as_plugin() {
        return crate::kubectl::plugin(crate::kubectl::Plugin::parse()).await;
    }
    let Cli { command } = Cli::parse();
    match command {
        Command::Crd => {
            print!("{}", crate::crd::crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => run(args).await,
        Command::Policy(args) => crate::policy::cli::run(args).await,
        Command::Observe(args) => crate::metrics::observe::run(args).await,
        Command::Trace(args) => crate::kubectl::trace(args).await,
        Command::Kubectl(plugin) => crate::kubectl::plugin(plugin).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        kubeconfig,
        namespaces,
        listen,
        log_format,
        leader_elect,
        lease_namespace,
        lease_name,
        lease_seconds,
        policy_dir,
        extra_policy_dir,
        policy_cache_dir,
        dns_server,
        trace_minutes,
        trace_listen,
    } = args;
    telemetry::init_logging(log_format);
    if let Some(server) = dns_server {
        crate::metrics::dns::use_server(server);
    }
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let client = operator::client_as(kubeconfig.as_deref(), Some(&identity)).await?;
    let registry = RegistrySettings {
        builtin_dir: policy_dir.or_else(RegistrySettings::default_builtin_dir),
        user_dir: extra_policy_dir,
        cache_dir: Some(policy_cache_dir.unwrap_or_else(RegistrySettings::default_cache_dir)),
    };
    let policies = PolicyCheck::start(registry, Duration::from_secs(5))?;
    let options = RunOptions {
        scope: Scope { namespaces },
        policies: Some(policies),
        listen: Some(listen),
        trace_window: Duration::from_secs(trace_minutes.saturating_mul(60)),
        trace_listen,
        leader_election: leader_elect
            .then(|| LeaseConfig::new(lease_namespace, lease_name, identity.clone(), Duration::from_secs(lease_seconds.max(3)))),
        lease_client: match leader_elect {
            true => {
                let config = operator::config_as(kubeconfig.as_deref(), Some(&identity)).await?;
                // Checked here, where an error can still be reported; built again on the
                // campaign's thread, from the same configuration.
                operator::client_from(config.clone())?;
                let make: operator::LeaseClient =
                    Arc::new(move || operator::client_from(config.clone()).expect("the configuration was checked"));
                Some(make)
            }
            false => None,
        },
    };

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    operator::run(client, options, shutdown).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "celery-operator".into())
}
