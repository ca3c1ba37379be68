//! How many apps one operator carries: the operator's own release binary, in a process of its
//! own on the real control plane, autoscaling 1, 1,000 and 10,000 apps (`APPS`), each on its
//! own queue of one real Redis, sampled every second; then its leader killed at the largest
//! size.
//!
//! Per size, over `WINDOW` seconds (default 60) once every app has decided, the loops keep
//! their interval and the first status writes have drained (at most 10 minutes after):
//! - CPU per sampling cycle and the share of a core (the operator process's own CPU time from
//!   `/proc`, divided by the cycles its histogram counted), and cycles per app per second (1.00:
//!   no loop falls behind its interval);
//! - resident memory (`/proc`), and the size of its `/metrics`;
//! - API requests a second by verb, and writes by resource, from the API server's audit log
//!   (the operator's ServiceAccount; watches aside).
//!
//! Failover: a second operator process stands by from the start; the leader is killed as a
//! crash would (no Lease released), and the standby's `/metrics` are read until every app has
//! had a decision by it: the Lease expiring (`LEASE`, default 15 s, the operator's), the campaign, the caches,
//! the loops and their first decisions.
//!
//! `cargo bench -p celery-operator --bench scale` (APPS=1,1000,10000 WINDOW=60 LEASE=15). With
//! `CALLGRIND=FILE` the leader runs inside valgrind's callgrind, which writes to FILE the
//! instructions it ran, by function (`callgrind_annotate FILE`): counts that do not depend on a
//! noisy machine. With `HEAPTRACK=FILE` it runs inside heaptrack, which writes to FILE.zst
//! every allocation with its stack; the leader is killed at the end, so what it held then is
//! what heaptrack calls leaked (`heaptrack_print --print-leaks 1 FILE.zst`). With
//! `PERF=FILE`, `perf record` samples the leader's stacks (CPU clock, DWARF unwinding) over
//! the window of the largest size, into FILE (`perf report -i FILE --no-inline`); build with
//! line tables for names and lines (`CARGO_PROFILE_RELEASE_DEBUG=line-tables-only`). There
//! is no failover under callgrind or heaptrack. With `LOGS=DIR` each operator logs at `info` (JSON, with
//! times) to `DIR/operator-N.log`, N its place in the order started: where a failover's
//! seconds go. A benchmark, never a test: nothing here passes or
//! fails on a timing.

#[path = "shared/measure.rs"]
mod measure;
#[path = "../tests/common/servers.rs"]
mod servers;
#[path = "shared/stage.rs"]
mod stage;
#[path = "../tests/cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use celery_operator::crd::Celery;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use support::{ControlPlane, Env, eventually};

const WAIT: Duration = Duration::from_secs(1800);
/// Apps created at once while the bench sets a size up.
const CREATING: usize = 32;
const DECISIONS: &str = "celery_operator_scaling_decisions_total";
const CYCLES: &str = "celery_operator_autoscaler_cycle_duration_seconds_count";
const OVERRUNS: &str = "celery_operator_autoscaler_overruns_total";
/// Status writes a second (the reconciler's and the loops') under which the first ones of a
/// new size have drained: the loops' refreshes alone stay under 10 a second at any size (see
/// `status_pace` in the scaler).
const SETTLED_WRITES: f64 = 11.0;

fn main() {
    let window = Duration::from_secs(measure::env_number("WINDOW", 60) as u64);
    let lease = measure::env_number("LEASE", 15);
    let sizes = measure::env_list("APPS", &[1, 1000, 10000]);

    let stage::Stage { runtime, control_plane, redis: _redis, broker } = stage::stage();
    runtime.block_on(async {
        let env = Env::connect(&control_plane).await;
        support::install(&env).await;
        let ns = env.namespace("scale").await;
        let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "celery-operator");
        let profiler = Profiler::from_env();
        let mut leader = Operator::spawn(&control_plane, &ns, lease, profiler.as_ref());
        eventually("the first operator to lead", WAIT, || async { leader.leads(&leases).await }).await;
        let standby = Operator::spawn(&control_plane, &ns, lease, None);
        // Both load (and on a first run compile) the built-in policies at start: measure after.
        for operator in [&leader, &standby] {
            operator.settle().await;
        }
        let audit = control_plane.state.join("logs/audit.log");

        println!();
        println!(
            "One operator process (its {} build), every app sampling its own Redis queue every second (queue-length policy), measured over {window:?}",
            if cfg!(debug_assertions) { "unoptimised" } else { "release" }
        );
        println!(
            "{:>6} {:>13} {:>10} {:>13} {:>9} {:>10} {:>10}  API requests per second (writes by resource)",
            "apps", "CPU per cycle", "CPU share", "cycles/app/s", "overruns", "RSS", "/metrics"
        );
        let idle = leader.measure(&audit, window).await;
        idle.print(0);
        let mut created = 0;
        for &apps in &sizes {
            let started = Instant::now();
            futures::stream::iter(created..apps)
                .map(|i| create(&env, &ns, &broker, i))
                .buffer_unordered(CREATING)
                .try_collect::<Vec<_>>()
                .await
                .expect("bench apps created");
            created = created.max(apps);
            eventually(&format!("{apps} apps deciding"), WAIT, || async {
                let decided = leader.decided().await;
                if decided >= apps { Ok(()) } else { Err(format!("{decided} decided")) }
            })
            .await;
            eprintln!("{apps} apps created and deciding in {:?}", started.elapsed());
            let started = Instant::now();
            let (pace, writes) = leader.keeps_pace(apps, &audit).await;
            eprintln!(
                "{apps} apps: {pace:.2} cycles per app and second, {writes:.1} status writes a second, after {:?} more",
                started.elapsed()
            );
            let last = Some(&apps) == sizes.last();
            let sampling = profiler.as_ref().filter(|_| last).and_then(|p| p.sample(&leader.pid, window));
            leader.measure(&audit, window).await.print(apps);
            if let Some(mut perf) = sampling {
                let _ = perf.wait().await;
            }
        }
        println!("(CPU share: of one core; the machine has {} cores. API: the operator's ServiceAccount, watches aside)", measure::num_cores());

        match profiler {
            // It only sampled: the failover goes on.
            Some(perf @ Profiler::Perf(_)) => println!("{}", perf.report()),
            Some(profiler) => {
                leader.stop(profiler.stop_signal()).await;
                println!("{}", profiler.report());
                return;
            }
            None => {}
        }

        // Failover at the largest size.
        let mark = AuditMark::now(&audit);
        let killed = Instant::now();
        leader.process.start_kill().expect("the leader is killed");
        let mut first = None;
        let mut half = None;
        let all = loop {
            let decided = standby.decided().await;
            if decided > 0 {
                first.get_or_insert(killed.elapsed());
            }
            if decided * 2 >= created {
                half.get_or_insert(killed.elapsed());
            }
            if decided >= created {
                break killed.elapsed();
            }
            assert!(killed.elapsed() < WAIT, "the standby never decided for every app: {decided} of {created}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        println!();
        println!("Failover at {created} apps (Lease {lease} s): leader killed → the new leader's decisions");
        println!("{:>28} {:>12} {:>12} {:>12}", "", "first app", "half", "every app");
        println!(
            "{:>28} {:>12} {:>12} {:>12}",
            "celery-operator",
            measure::fmt(first.unwrap_or(all)),
            measure::fmt(half.unwrap_or(all)),
            measure::fmt(all)
        );
        println!("{:>28} {:>12}", "the Lease expiring (floor)", format!("{lease}.00s"));
        // What the takeover cost the API server, up to 30 s after the kill.
        tokio::time::sleep(Duration::from_secs(30).saturating_sub(killed.elapsed())).await;
        let took = killed.elapsed();
        let requests = requests_since(&audit, mark, Duration::from_secs(1));
        let listed: Vec<String> = requests.iter().map(|((verb, what), n)| format!("{verb} {what} {n}").replace("  ", " ")).collect();
        println!("API requests in the {:.0} s after the kill: {}", took.as_secs_f64(), listed.join(", "));
        drop(standby);
    });
}

/// Bench app `i`: no workers (min 0, start at 0), so no pods, only its loop on queue `app-i`.
async fn create(env: &Env, ns: &str, broker: &str, i: usize) -> Result<(), kube::Error> {
    let name = format!("app-{i}");
    let yaml = format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {name}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{numOfWorkers: 0, queues: {name}}}
  flowerSpec: {{enabled: false}}
  autoscaling:
    policy: queue-length
    settings: {{target: '10'}}
    minReplicas: 0
    maxReplicas: 10
"
    );
    let celery: Celery = serde_yaml::from_str(&yaml).expect("bench YAML is a Celery");
    Api::<Celery>::namespaced(env.admin.clone(), ns).create(&PostParams::default(), &celery).await.map(|_| ())
}

/// The operator's binary, in a process of its own.
/// What the leader may run inside (`CALLGRIND=FILE` or `HEAPTRACK=FILE`), or what samples it
/// over the last window (`PERF=FILE`), writing to FILE.
enum Profiler {
    Callgrind(String),
    Heaptrack(String),
    Perf(String),
}

impl Profiler {
    fn from_env() -> Option<Self> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        var("CALLGRIND")
            .map(Self::Callgrind)
            .or_else(|| var("HEAPTRACK").map(Self::Heaptrack))
            .or_else(|| var("PERF").map(Self::Perf))
    }

    /// `perf record` on `pid` for `window`, when this is `PERF`.
    fn sample(&self, pid: &str, window: Duration) -> Option<tokio::process::Child> {
        let Self::Perf(out) = self else { return None };
        let child = tokio::process::Command::new("perf")
            .args(["record", "-q", "-e", "cpu-clock", "-F", "200", "--call-graph", "dwarf,8192", "-o", out, "-p", pid])
            .args(["--", "sleep", &window.as_secs().to_string()])
            .kill_on_drop(true)
            .spawn()
            .expect("perf starts (Debian's linux-perf)");
        Some(child)
    }

    /// How the leader is stopped: callgrind writes its counts when the process exits, so it is
    /// shut down (SIGTERM); under heaptrack it is killed, so that what it holds at the end
    /// stays allocated and `heaptrack_print` lists it, by where it was allocated, as "leaked".
    fn stop_signal(&self) -> i32 {
        match self {
            Self::Callgrind(_) | Self::Perf(_) => libc::SIGTERM,
            Self::Heaptrack(_) => libc::SIGKILL,
        }
    }

    fn report(&self) -> String {
        match self {
            Self::Callgrind(out) => format!("callgrind's counts: {out} (callgrind_annotate {out})"),
            Self::Perf(out) => format!("perf's samples over the last window: {out} (perf report -i {out} --no-inline)"),
            Self::Heaptrack(out) => {
                format!(
                    "heaptrack's record: {out}.zst (what the leader held at the end: heaptrack_print --print-leaks 1 {out}.zst)"
                )
            }
        }
    }
}

struct Operator {
    process: tokio::process::Child,
    pid: String,
    listen: SocketAddr,
}

impl Operator {
    /// The operator's binary, inside `profiler` when there is one.
    fn spawn(cp: &ControlPlane, ns: &str, lease: usize, profiler: Option<&Profiler>) -> Self {
        let listen: SocketAddr = format!("127.0.0.1:{}", servers::free_port()).parse().expect("address");
        let binary = env!("CARGO_BIN_EXE_celery-operator");
        let mut command = match profiler {
            Some(Profiler::Callgrind(out)) => {
                let mut c = tokio::process::Command::new("valgrind");
                c.args(["--tool=callgrind", &format!("--callgrind-out-file={out}"), binary]);
                c
            }
            Some(Profiler::Heaptrack(out)) => {
                let mut c = tokio::process::Command::new("heaptrack");
                c.args(["-o", out, binary]);
                c
            }
            None | Some(Profiler::Perf(_)) => tokio::process::Command::new(binary),
        };
        match std::env::var_os("LOGS") {
            Some(dir) => {
                static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::fs::create_dir_all(&dir).expect("the LOGS directory");
                let log = std::fs::File::create(PathBuf::from(dir).join(format!("operator-{n}.log"))).expect("a log file");
                command.env("RUST_LOG", "info").env("LOG_FORMAT", "json").stderr(log)
            }
            None => command.env("RUST_LOG", "warn"),
        };
        let process = command
            .args(["run", "--namespace", ns, "--listen", &listen.to_string(), "--lease-name", "scale-bench"])
            .args(["--lease-seconds", &lease.to_string()])
            .arg("--kubeconfig")
            .arg(cp.operator_kubeconfig())
            .arg("--policy-dir")
            .arg(support::repo_root().join("target/policies"))
            .kill_on_drop(true)
            .spawn()
            .expect("the operator's binary starts");
        let mut pid = process.id().expect("running").to_string();
        if let Some(Profiler::Heaptrack(_)) = profiler {
            // heaptrack is a script that starts the operator as its child: measure (and stop) that.
            pid = child_running(&pid, binary);
        }
        Self { process, pid, listen }
    }

    /// Sends it `signal`, and waits for it and its wrapper to end.
    async fn stop(&mut self, signal: i32) {
        let pid: i32 = self.pid.parse().expect("a pid");
        // SAFETY: kill(2) on our own child, or its child under heaptrack.
        unsafe { libc::kill(pid, signal) };
        let _ = self.process.wait().await;
    }

    /// Waits until it uses under 5 % of a core over 5 s (at most 5 minutes).
    async fn settle(&self) {
        let started = Instant::now();
        loop {
            let cpu = measure::cpu_of(&self.pid);
            tokio::time::sleep(Duration::from_secs(5)).await;
            if measure::cpu_of(&self.pid).saturating_sub(cpu) < Duration::from_millis(250)
                || started.elapsed() > Duration::from_secs(300)
            {
                return;
            }
        }
    }

    /// Whether this process holds the Lease (its identity ends with its pid).
    async fn leads(&self, leases: &Api<Lease>) -> Result<(), String> {
        let holder = leases.get_opt("scale-bench").await.map_err(|e| e.to_string())?.and_then(|l| l.spec?.holder_identity);
        match holder {
            Some(h) if h.ends_with(&format!("-{}", self.pid)) => Ok(()),
            other => Err(format!("held by {other:?}")),
        }
    }

    /// How many apps it has made a decision for since it started.
    async fn decided(&self) -> usize {
        let Ok(text) = tokio::time::timeout(Duration::from_secs(30), metrics_text(self.listen)).await else { return 0 };
        text.lines()
            .filter(|l| l.starts_with(DECISIONS))
            .filter_map(|l| l.split_once("app=\"")?.1.split_once('"').map(|(app, _)| app.to_string()))
            .collect::<HashSet<_>>()
            .len()
    }

    /// Waits until its loops keep their one-second interval (over 10 s, at least 0.98 cycles
    /// per app and second: past the first decisions' status writes, which the loops await), at
    /// most 10 minutes; the last pace seen.
    async fn keeps_pace(&self, apps: usize, audit: &PathBuf) -> (f64, f64) {
        let started = Instant::now();
        loop {
            let before = measure::metric_sum(&metrics_text(self.listen).await, CYCLES);
            let (at, mark) = (Instant::now(), AuditMark::now(audit));
            tokio::time::sleep(Duration::from_secs(10)).await;
            let cycles = measure::metric_sum(&metrics_text(self.listen).await, CYCLES) - before;
            let took = at.elapsed();
            let pace = cycles / took.as_secs_f64() / apps as f64;
            let writes: f64 = requests_since(audit, mark, took)
                .iter()
                .filter(|((verb, what), _)| verb == "patch" && what == "celery/status")
                .map(|(_, n)| n)
                .sum();
            if (pace >= 0.98 && writes <= SETTLED_WRITES) || started.elapsed() > Duration::from_secs(600) {
                return (pace, writes);
            }
        }
    }

    /// Its use of CPU, memory and the API server over `window`.
    async fn measure(&self, audit: &PathBuf, window: Duration) -> Figures {
        let before = metrics_text(self.listen).await;
        let (cpu, at) = (measure::cpu_of(&self.pid), Instant::now());
        let mark = AuditMark::now(audit);
        tokio::time::sleep(window).await;
        let after = metrics_text(self.listen).await;
        let (cpu, took) = (measure::cpu_of(&self.pid).saturating_sub(cpu), at.elapsed());
        // The audit log is written as requests complete: let the last lines land.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let delta = |name: &str| measure::metric_sum(&after, name) - measure::metric_sum(&before, name);
        Figures {
            cpu,
            took,
            cycles: delta(CYCLES),
            overruns: delta(OVERRUNS),
            rss_kib: measure::rss_kib_of(&self.pid),
            metrics_bytes: after.len(),
            requests: requests_since(audit, mark, took),
        }
    }
}

/// The operator's `/metrics` (may be large: read whole).
async fn metrics_text(listen: SocketAddr) -> String {
    measure::metrics_text(listen).await
}

/// What one window measured.
struct Figures {
    cpu: Duration,
    took: Duration,
    cycles: f64,
    overruns: f64,
    rss_kib: u64,
    metrics_bytes: usize,
    /// (verb, resource[/subresource] for writes, and the code of a refused request) → requests a
    /// second.
    requests: BTreeMap<(String, String), f64>,
}

impl Figures {
    fn print(&self, apps: usize) {
        let seconds = self.took.as_secs_f64();
        let (per_cycle, per_app) = if self.cycles > 0.0 {
            (measure::fmt(self.cpu.div_f64(self.cycles)), format!("{:.2}", self.cycles / (apps.max(1) as f64 * seconds)))
        } else {
            ("-".into(), "-".into())
        };
        let mut verbs: BTreeMap<&str, f64> = BTreeMap::new();
        for ((verb, _), n) in &self.requests {
            *verbs.entry(verb).or_default() += n;
        }
        let mut api: Vec<String> = verbs.iter().map(|(verb, n)| format!("{verb} {n:.2}")).collect();
        let writes: Vec<String> = self
            .requests
            .iter()
            .filter(|((_, what), _)| !what.is_empty())
            .map(|((verb, what), n)| format!("{verb} {what} {n:.2}"))
            .collect();
        if !writes.is_empty() {
            api.push(format!("({})", writes.join(", ")));
        }
        println!(
            "{:>6} {:>13} {:>9.1}% {:>13} {:>9} {:>10} {:>10}  {}",
            apps,
            per_cycle,
            100.0 * self.cpu.as_secs_f64() / seconds,
            per_app,
            self.overruns,
            format!("{} MiB", self.rss_kib / 1024),
            format!("{} KiB", self.metrics_bytes / 1024),
            if api.is_empty() { "none".to_string() } else { api.join(" ") },
        );
    }
}

/// Where the audit log ended at a moment: its file (the API server renames a full log aside,
/// `audit-TIME.log`, and starts a new one: 10,000 apps fill 100 MB in minutes) and its length.
#[derive(Clone, Copy)]
struct AuditMark {
    inode: u64,
    offset: u64,
}

impl AuditMark {
    fn now(audit: &PathBuf) -> Self {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(audit).map_or(Self { inode: 0, offset: 0 }, |m| Self { inode: m.ino(), offset: m.len() })
    }
}

/// What was logged since `mark`: the rest of the file it was in (renamed aside since, if so),
/// then the current file.
fn audit_since(audit: &PathBuf, mark: AuditMark) -> String {
    use std::os::unix::fs::MetadataExt;
    let read_from = |path: &std::path::Path, offset: u64, text: &mut String| {
        if let Ok(mut file) = std::fs::File::open(path) {
            let _ = file.seek(SeekFrom::Start(offset));
            let _ = file.read_to_string(text);
        }
    };
    let mut text = String::new();
    if AuditMark::now(audit).inode == mark.inode {
        read_from(audit, mark.offset, &mut text);
        return text;
    }
    let dir = audit.parent().expect("the logs directory");
    let aside = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .find(|entry| entry.metadata().is_ok_and(|m| m.ino() == mark.inode));
    if let Some(aside) = aside {
        read_from(&aside.path(), mark.offset, &mut text);
    }
    read_from(audit, 0, &mut text);
    text
}

/// The operator's requests in the audit log past `mark`, a second over `took`, by verb (and
/// for writes, by resource).
fn requests_since(audit: &PathBuf, mark: AuditMark, took: Duration) -> BTreeMap<(String, String), f64> {
    let text = audit_since(audit, mark);
    let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let field = |path: &[&str]| -> String {
            path.iter().try_fold(&e, |v, k| v.get(k)).and_then(|v| v.as_str()).unwrap_or_default().to_string()
        };
        if field(&["user", "username"]) != support::OPERATOR_USER || field(&["stage"]) != "ResponseComplete" {
            continue;
        }
        let verb = field(&["verb"]);
        let what = if ["create", "update", "patch", "delete"].contains(&verb.as_str()) {
            match field(&["objectRef", "subresource"]) {
                s if s.is_empty() => field(&["objectRef", "resource"]),
                s => format!("{}/{s}", field(&["objectRef", "resource"])),
            }
        } else {
            String::new()
        };
        // Refused or failed requests are counted apart, with their code.
        let code = e.pointer("/responseStatus/code").and_then(|c| c.as_i64()).unwrap_or(200);
        let what = if code >= 400 { format!("{what} {code}").trim_start().to_string() } else { what };
        *counts.entry((verb, what)).or_default() += 1.0 / took.as_secs_f64();
    }
    counts
}

/// The pid of `parent`'s child running `binary`, once it has started (at most a minute).
fn child_running(parent: &str, binary: &str) -> String {
    let binary = std::fs::canonicalize(binary).expect("the operator's binary");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let children = std::fs::read_dir("/proc").expect("/proc").flatten().filter_map(|entry| {
            let pid = entry.file_name().into_string().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // The parent pid is the second field after the command's closing parenthesis.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.to_owned();
            let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
            (ppid == parent && exe == binary).then_some(pid)
        });
        if let Some(pid) = children.into_iter().next() {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no child of {parent} runs {}", binary.display());
}
