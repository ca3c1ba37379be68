//! Tier 3: the operator against a real Kubernetes control plane on loopback.
//!
//! One control plane serves the whole run; each test has its own namespace and its own
//! operator, which runs in-process with the permissions of `deploy/rbac.yaml` only. A test
//! that restarts the API server takes an exclusive lock, so the others never see it go away,
//! and runs after all of them.
//! Logs of every component are printed when a test fails.
//!
//! Run with `cargo test --test cluster` (the first run builds the control plane: 10-20 min).

mod autoscaling;
mod chart;
mod cost;
mod faults;
#[path = "../common/fleet.rs"]
mod fleet;
mod groups;
mod lifecycle;
mod monitoring;
mod scale_in;
#[path = "../common/servers.rs"]
mod servers;
mod support;
mod trace;

use std::process::ExitCode;
use std::sync::{Arc, LazyLock, RwLock};

use libtest_mimic::{Arguments, Failed, Trial};
use support::{ControlPlane, Env};

/// The async runtime every test runs on.
static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime"));

/// Shared by ordinary tests, exclusive for one that disturbs the control plane.
static GATE: RwLock<()> = RwLock::new(());

type TestFn = fn(Arc<Harness>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A test: its name, whether it needs the control plane to itself, and its body.
pub type TestCase = (&'static str, bool, TestFn);

/// What a test gets.
pub struct Harness {
    pub env: Env,
    pub control_plane: ControlPlane,
}

fn trial(name: &'static str, exclusive: bool, harness: &Option<Arc<Harness>>, f: TestFn) -> Trial {
    let harness = harness.clone();
    Trial::test(name, move || {
        let harness = harness.ok_or_else(|| Failed::from("no control plane"))?;
        let _shared;
        let _exclusive;
        if exclusive {
            _exclusive = GATE.write().unwrap_or_else(|e| e.into_inner());
        } else {
            _shared = GATE.read().unwrap_or_else(|e| e.into_inner());
        }
        RUNTIME.block_on(f(harness));
        Ok(())
    })
}

/// Everything the in-process operators log at debug level and above, whatever `RUST_LOG` shows
/// on stderr: a test greps it for what must never be logged.
static LOGS: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// The operators' logs so far (see [`LOGS`]).
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The operator's text logs on stderr, filtered by `RUST_LOG`, and all of its own lines into
/// [`LOGS`].
fn init_logging() {
    use tracing_subscriber::prelude::*;
    let shown = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()));
    let captured = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(|| Capture)
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("celery_operator", tracing::Level::DEBUG));
    let _ = tracing_subscriber::registry().with(shown).with(captured).try_init();
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    // The operators under test log here; RUST_LOG=info (or debug) shows what they do.
    if std::env::var_os("RUST_LOG").is_none() {
        // SAFETY: no other thread runs yet.
        unsafe { std::env::set_var("RUST_LOG", "warn") };
    }
    support::keep_lookups_on_loopback();
    init_logging();
    let listing = args.list;

    let harness = if listing {
        None
    } else {
        // The built-in policies the operator checks resources against (quick when built).
        let built = std::process::Command::new(support::repo_root().join("policies/build.sh")).status();
        if !built.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("policies/build.sh failed: {built:?}");
            return ExitCode::FAILURE;
        }
        let control_plane = match ControlPlane::start() {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("cannot start the control plane: {e}");
                return ExitCode::FAILURE;
            }
        };
        let env = RUNTIME.block_on(async {
            let env = Env::connect(&control_plane).await;
            support::install(&env).await;
            env
        });
        Some(Arc::new(Harness { env, control_plane }))
    };

    let mut cases: Vec<TestCase> = lifecycle::TESTS
        .iter()
        .chain(autoscaling::TESTS)
        .chain(scale_in::TESTS)
        .chain(groups::TESTS)
        .chain(chart::TESTS)
        .chain(faults::TESTS)
        .chain(cost::TESTS)
        .chain(trace::TESTS)
        .chain(monitoring::TESTS)
        .copied()
        .collect();
    // The tests that restart the API server run last: no other test's pods then wait on a
    // control plane that is coming back (the harness restarts the API server's clients and
    // checks that a new pod runs, see hack/control-plane.sh `restart_clients`).
    cases.sort_by_key(|&(_, exclusive, _)| exclusive);
    let trials = cases.into_iter().map(|(name, exclusive, f)| trial(name, exclusive, &harness, f)).collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed()
        && let Some(h) = &harness
    {
        h.control_plane.dump_logs();
    }
    // Stops the control plane (Drop) before exiting.
    drop(harness);
    conclusion.exit_code()
}
