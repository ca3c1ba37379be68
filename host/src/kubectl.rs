//! `celery-operator trace` and the `kubectl` plugin: the same binary installed (or linked) as
//! `kubectl-celery` answers `kubectl celery why|trace|simulate APP`.
//!
//! The trace comes from the operator's `/trace/NAMESPACE/NAME` ([`crate::server`]): by default
//! from its loopback listener reached with `kubectl port-forward` (no token needed, the API
//! server authorised the forward), or from any address of the operator with a bearer token
//! (`--token`, `CELERY_OPERATOR_TOKEN`) that the operator reviews with the API server.
//! `why` reads the app's status from the API server (the kubeconfig's user and namespace)
//! and, where the operator can be reached, its last decisions with their inputs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use kube::api::Api;

use crate::crd::Celery;
use crate::policy::cli::{PolicyArgs, SimulateArgs};

/// The operator's `/trace` as `kubectl port-forward -n celery-operator deploy/celery-operator
/// 8081` makes it reachable (the chart's `--trace-listen 127.0.0.1:8081`).
pub const DEFAULT_TRACE_URL: &str = "http://127.0.0.1:8081";

/// Where the operator's `/trace` is, and how to be let in.
#[derive(Args, Debug, Clone)]
pub struct Endpoint {
    /// Base URL of the operator's `/trace`: its port-forwarded loopback listener, or its
    /// --listen address with --token.
    #[arg(long, env = "CELERY_OPERATOR_URL", default_value = DEFAULT_TRACE_URL)]
    pub url: String,
    /// Bearer token for the operator (reviewed with the API server: the user must be able to
    /// get the Celery).
    #[arg(long, env = "CELERY_OPERATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `celery-operator trace NAMESPACE/NAME`.
#[derive(Args, Debug)]
pub struct TraceArgs {
    /// The app, as NAMESPACE/NAME.
    pub app: String,
    /// A worker group's pool instead of `workerSpec`'s.
    #[arg(long)]
    pub group: Option<String>,
    /// Write the CSV here instead of to standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub endpoint: Endpoint,
}

/// Runs `celery-operator trace`.
pub async fn trace(args: TraceArgs) -> anyhow::Result<()> {
    let (namespace, name) =
        args.app.split_once('/').with_context(|| format!("`{}`: give the app as NAMESPACE/NAME", args.app))?;
    let csv = fetch(&args.endpoint, namespace, name, args.group.as_deref(), "csv").await?;
    write_out(args.output.as_ref(), &csv)
}

fn write_out(output: Option<&PathBuf>, text: &str) -> anyhow::Result<()> {
    match output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("writing {}", path.display())),
        None => {
            print!("{text}");
            Ok(())
        }
    }
}

/// `GET /trace/NAMESPACE/NAME` from the operator; errors say which server answered what.
async fn fetch(endpoint: &Endpoint, namespace: &str, name: &str, group: Option<&str>, view: &str) -> anyhow::Result<String> {
    crate::metrics::ensure_crypto_provider();
    let base = endpoint.url.trim_end_matches('/');
    let mut url = url::Url::parse(&format!("{base}/trace/")).with_context(|| format!("--url {}: not a URL", endpoint.url))?;
    url.path_segments_mut()
        .map_err(|()| anyhow::anyhow!("--url {}: cannot hold a path", endpoint.url))?
        .pop_if_empty()
        .extend([namespace, name]);
    url.query_pairs_mut().append_pair("view", view);
    if let Some(group) = group {
        url.query_pairs_mut().append_pair("group", group);
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut request = client.get(url.clone());
    if let Some(token) = &endpoint.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        let hint = if endpoint.url == DEFAULT_TRACE_URL {
            " (forward it first: kubectl port-forward -n celery-operator deploy/celery-operator 8081, or give --url)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot reach the operator at {}{hint}: {}", endpoint.url, crate::telemetry::chain(&e))
    })?;
    let status = response.status();
    let body = response.text().await.with_context(|| format!("reading the answer of {}", endpoint.url))?;
    if !status.is_success() {
        bail!("the operator at {} answered {status}: {}", endpoint.url, body.trim());
    }
    Ok(body)
}

/// `kubectl celery …`.
#[derive(Parser, Debug)]
#[command(name = "kubectl celery", bin_name = "kubectl celery", version, about = "Celery apps run by celery-operator")]
pub struct Plugin {
    #[command(subcommand)]
    command: PluginCommand,
    /// Namespace of the app (default: the kubeconfig context's).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// The app's last decisions, with their inputs and reasons, and its scaling conditions.
    Why {
        app: String,
        #[arg(long)]
        group: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// The app's recent ticks as CSV, as `policy simulate --trace` reads them.
    Trace {
        app: String,
        #[arg(long)]
        group: Option<String>,
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Replays the app's own recent trace through another policy (or the same one).
    Simulate {
        app: String,
        #[arg(long)]
        group: Option<String>,
        /// The policy to replay through (default: the app's own).
        #[arg(long)]
        policy: Option<String>,
        #[arg(long = "settings", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// A second policy, side by side, with a summary of both.
        #[arg(long)]
        compare: Option<String>,
        #[arg(long = "settings2", value_name = "KEY=VALUE")]
        settings2: Vec<String>,
        /// Write an SVG plot.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Tasks one worker completes per second, to let the backlog answer the workers.
        #[arg(long)]
        rate_per_worker: Option<f64>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// Whether the binary was started as the kubectl plugin.
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|name| name == "kubectl-celery" || name.starts_with("kubectl-celery."))
}

/// Runs `kubectl celery …`.
pub async fn plugin(plugin: Plugin) -> anyhow::Result<()> {
    let namespace = match plugin.namespace {
        Some(ns) => ns,
        None => kube::Config::infer().await.map(|c| c.default_namespace).unwrap_or_else(|_| "default".into()),
    };
    match plugin.command {
        PluginCommand::Trace { app, group, output, endpoint } => {
            let csv = fetch(&endpoint, &namespace, &app, group.as_deref(), "csv").await?;
            write_out(output.as_ref(), &csv)
        }
        PluginCommand::Why { app, group, endpoint } => why(&namespace, &app, group.as_deref(), &endpoint).await,
        PluginCommand::Simulate { app, group, policy, settings, compare, settings2, plot, rate_per_worker, endpoint } => {
            let csv = fetch(&endpoint, &namespace, &app, group.as_deref(), "csv").await?;
            let dir = tempfile::tempdir()?;
            let trace = dir.path().join(format!("{app}.csv"));
            std::fs::write(&trace, csv)?;
            let args = SimulateArgs {
                policy,
                trace,
                plot,
                json: false,
                compare,
                settings2,
                rate_per_worker,
                min: None,
                max: None,
                concurrency: None,
                initial: None,
                stabilization_seconds: None,
                step_percent: None,
                step_period_seconds: None,
                history: crate::policy::HISTORY,
                settings,
            };
            crate::policy::cli::run(PolicyArgs::simulate(args)).await
        }
    }
}

/// `kubectl celery why`: the status's view, then the operator's last decisions.
async fn why(namespace: &str, app: &str, group: Option<&str>, endpoint: &Endpoint) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("reading the kubeconfig")?;
    let celery = Api::<Celery>::namespaced(client, namespace)
        .get(app)
        .await
        .with_context(|| format!("reading celery {app} in namespace {namespace}"))?;
    let status = celery.status.unwrap_or_default();
    println!("{namespace}/{app}");
    for c in status
        .conditions
        .iter()
        .filter(|c| c.type_ == crate::conditions::SCALING_ACTIVE || c.type_ == crate::conditions::DEGRADED)
    {
        println!("  {} {} ({}): {}", c.type_, c.status, c.reason, c.message);
    }
    let autoscaler = match group {
        None => status.autoscaler.clone(),
        Some(g) => status.worker_groups.iter().find(|w| w.name == g).and_then(|w| w.autoscaler.clone()),
    };
    if let Some(d) = autoscaler.as_ref().and_then(|a| a.last_decision.as_ref()) {
        println!("  last decision ({}): {} workers by {}: {}", d.time.0, d.replicas, d.policy, d.reason);
    }
    match fetch(endpoint, namespace, app, group, "why").await {
        Ok(body) => {
            let parsed: serde_json::Value = serde_json::from_str(&body).context("the operator's answer is not JSON")?;
            println!("decisions that changed something (oldest first):");
            for d in parsed["decisions"].as_array().into_iter().flatten() {
                let at = d["tMs"].as_i64().and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok());
                let backlog = d["backlog"].as_u64().map_or("unknown".to_string(), |b| b.to_string());
                println!(
                    "  {}  backlog {backlog:>6}  {} → {}  {}",
                    at.map_or("?".into(), |t| t.to_string()),
                    d["replicas"],
                    d["decided"],
                    d["reason"].as_str().unwrap_or_default()
                );
            }
        }
        Err(e) => println!("(the operator's recent decisions are not available: {e:#})"),
    }
    Ok(())
}
