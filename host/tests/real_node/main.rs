//! Tier 4: real containers. The control plane of the cluster tests plus one real node
//! (`REAL_NODE=1 hack/control-plane.sh start`: containerd, runc, a kubelet, kube-proxy and
//! CoreDNS), the two images built without Docker by `hack/build-images.sh` and imported into
//! the node, and on it:
//!
//! - the operator as users install it (`kubectl apply -k` on `deploy/`, the image swapped for
//!   `celery-operator:dev`): in-cluster configuration, its ServiceAccount token, read-only root
//!   filesystem, non-root, probes, `/metrics` scraped from the pod;
//! - the example app (`example-image:dev`): real Celery workers and a real Flower, against a
//!   Redis the test starts on the node's address, fed by `example/producer.py`; every task sent
//!   runs to its end exactly once (the app's task log);
//! - a scale-down that sends SIGTERM to a worker running a long task: Celery's warm shutdown
//!   finishes it before the pod goes;
//! - a node whose harness was killed before its stop, left behind and reclaimed by the next
//!   start, and a second node refused while one runs (`left_behind`, staged before the tier's own
//!   node starts).
//!
//! Needs root (containers, mounts, a bridge). Off root, outside CI, every test is reported as
//! ignored with the reason; under CI (`CI=true`) that is a failure instead.
//!
//! Part of `make test`; alone: `make test-real-node` (the first run builds the node's binaries and
//! images: about 10 minutes more than the cluster tests).

#[path = "../common/dockerfile.rs"]
mod dockerfile;
#[path = "../common/servers.rs"]
mod servers;
#[allow(dead_code)]
#[path = "../cluster/support.rs"]
mod support;

mod app;
mod images;
mod left_behind;
mod operator;
mod quick_start;

use std::process::{Command, ExitCode};
use std::sync::{Arc, LazyLock};

use libtest_mimic::{Arguments, Failed, Trial};
use support::ControlPlane;

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime"));

type TestFn = fn(Arc<Node>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A test: its name and its body.
pub type TestCase = (&'static str, TestFn);

/// What a test gets: the cluster with its real node, and an admin client.
pub struct Node {
    pub control_plane: ControlPlane,
    pub admin: kube::Client,
}

impl Node {
    /// `kubectl` as the cluster's admin.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig").arg(self.control_plane.admin_kubeconfig());
        c
    }

    /// Runs `kubectl ARGS`, panicking with its output when it fails; returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl().args(args).output().expect("runs kubectl");
        assert!(out.status.success(), "kubectl {}: {}\n{}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The real node's address on its pod network bridge (hack/node/real-node.sh, NODE_SUBNET).
pub fn node_ip() -> String {
    let subnet = std::env::var("NODE_SUBNET").unwrap_or_else(|_| "10.213.0.0/24".into());
    let base = subnet.split('/').next().unwrap_or_default();
    let (prefix, last) = base.rsplit_once('.').expect("an IPv4 subnet");
    format!("{prefix}.{}", last.parse::<u8>().expect("an IPv4 subnet") + 1)
}

/// Why this machine cannot run the real node, if it cannot.
fn unable() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    (!root).then(|| "the real node needs root (containers, mounts, a bridge)".to_string())
}

/// Runs a build script of the repository as it runs from a shell. NB: without cargo's
/// environment for tests (`CARGO_PKG_*`, `CARGO_MANIFEST_*`, `LD_LIBRARY_PATH`...), else the
/// `cargo build --release` inside hack/build-images.sh fingerprints differently from the one in
/// `.ci/run` and rebuilds every dependency (10 minutes), and so does the next build from a shell.
fn run(what: &str, command: &mut Command) -> Result<(), String> {
    // What the user's shell sets for cargo is kept: the build in .ci/run saw it too.
    const USERS: &[&str] = &["CARGO_HOME", "CARGO_INCREMENTAL", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS"];
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let cargos = key.starts_with("CARGO") && !USERS.contains(&key.as_ref());
        if cargos || ["LD_LIBRARY_PATH", "RUST_RECURSION_COUNT", "RUSTUP_TOOLCHAIN_SOURCE"].contains(&key.as_ref()) {
            command.env_remove(key.as_ref());
        }
    }
    let status = command.status().map_err(|e| format!("cannot run {what}: {e}"))?;
    status.success().then_some(()).ok_or_else(|| format!("{what} failed: {status}"))
}

fn main() -> ExitCode {
    let mut args = Arguments::from_args();
    let tests: Vec<TestCase> = images::TESTS
        .iter()
        .chain(operator::TESTS)
        .chain(app::TESTS)
        .chain(quick_start::TESTS)
        .chain(left_behind::TESTS)
        .copied()
        .collect();

    let skip = if args.list { None } else { unable() };
    if let Some(why) = &skip {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            eprintln!("the real-node tier cannot run here: {why}");
            return ExitCode::FAILURE;
        }
        eprintln!("skipping the real-node tier: {why}");
        args.ignored = false;
        args.include_ignored = false;
    }

    let node = if args.list || skip.is_some() {
        None
    } else {
        let root = support::repo_root();
        // The operator image holds the built-in policies.
        if let Err(e) = run("policies/build.sh", &mut Command::new(root.join("policies/build.sh"))) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
        *left_behind::STAGED.lock().unwrap() = Some(left_behind::stage());
        let control_plane = match ControlPlane::start_with_real_node() {
            Ok(cp) => cp,
            Err(e) => {
                eprintln!("cannot start the control plane with its real node: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Err(e) = run("hack/build-images.sh", Command::new(root.join("hack/build-images.sh")).arg(&control_plane.state)) {
            eprintln!("{e}");
            control_plane.dump_logs();
            return ExitCode::FAILURE;
        }
        let admin = RUNTIME.block_on(async {
            celery_operator::operator::client(Some(&control_plane.admin_kubeconfig())).await.expect("admin client")
        });
        Some(Arc::new(Node { control_plane, admin }))
    };

    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let node = node.clone();
            let trial = Trial::test(name, move || {
                let node = node.ok_or_else(|| Failed::from("no real node"))?;
                RUNTIME.block_on(f(node));
                Ok(())
            });
            trial.with_ignored_flag(skip.is_some())
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed()
        && let Some(n) = &node
    {
        n.control_plane.dump_logs();
    }
    // NB: stopped explicitly, not by the last drop: a task a test left on the runtime may hold
    // the node, and a real node left running (its bridge, its containers) stops the next run.
    if let Some(n) = &node {
        n.control_plane.stop_now();
    }
    drop(node);
    conclusion.exit_code()
}
