//! What the autoscaling loop costs and how fast it reacts, on the real control plane with a
//! real Redis, printed in one run:
//!
//! 1. Reaction time: from a burst of messages on an empty queue in Redis to the first new and
//!    the final `replicas` on the worker Deployment (seen through a watch), over trials pushed at
//!    phases spread evenly over the sampling interval (`intervalSeconds: 1`): the operator
//!    reading at each tick, split by Redis's `MONITOR` timestamps into the wait for its next read
//!    and the rest; then the same with Redis's keyspace events on, which wake it at the first
//!    message. Beside them, the floor any 1 s poller has (half the interval on average), and a
//!    30 s poller's.
//! 2. The cost of one sampling cycle (broker read, policy, status) at 1, 100 and 1,000
//!    autoscaled apps: process CPU time per cycle, wall time per cycle (from the operator's own
//!    histogram), cycles achieved against the interval, and resident memory, beside the same
//!    process with no app.
//!
//! `cargo bench -p celery-operator --bench autoscale` (TRIALS=…, APPS=1,100,1000, WINDOW=…).
//! The operator runs in this process, as the cluster tests run it, with the RBAC of
//! `deploy/rbac.yaml`. A benchmark, never a test: nothing here passes or fails on a timing.

#[path = "shared/measure.rs"]
mod measure;
#[path = "../tests/common/servers.rs"]
mod servers;
#[path = "shared/stage.rs"]
mod stage;
#[path = "../tests/cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use celery_operator::crd::Celery;
use celery_operator::policy::cli::percentiles;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;
use support::{Env, eventually};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(600);

fn main() {
    let trials: usize = measure::env_number("TRIALS", 40);
    let window = Duration::from_secs(measure::env_number("WINDOW", 20) as u64);
    let sizes = measure::env_list("APPS", &[1, 100, 1000]);

    let stage::Stage { runtime, control_plane, redis: _redis, broker } = stage::stage();
    runtime.block_on(async {
        let env = Env::connect(&control_plane).await;
        support::install(&env).await;
        let ns = env.namespace("bench").await;
        let listen: SocketAddr = format!("127.0.0.1:{}", servers::free_port()).parse().expect("address");
        let baseline_rss = measure::rss_kib();
        let operator = env.start_operator_serving(&[&ns], None, Some(listen));
        let redis = redis::Client::open(broker.as_str()).expect("redis client");
        let mut conn = redis.get_multiplexed_async_connection().await.expect("redis connection");

        reactions(&env, &ns, &broker, &mut conn, &redis, trials).await;
        cost(&env, &ns, &broker, listen, &sizes, window, baseline_rss).await;
        operator.stop().await;
    });
}

fn app_yaml(name: &str, queue: &str, broker: &str, min: u32, start: u32, window: u32) -> String {
    format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {name}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{numOfWorkers: {start}, queues: {queue}}}
  flowerSpec: {{enabled: false}}
  autoscaling:
    policy: queue-length
    settings: {{target: '10'}}
    minReplicas: {min}
    maxReplicas: 10
    scaleDown: {{stabilizationWindowSeconds: {window}, maxStepPercent: 100, periodSeconds: 0}}
"
    )
}

async fn create(env: &Env, ns: &str, yaml: &str) {
    let celery: Celery = serde_yaml::from_str(yaml).expect("bench YAML is a Celery");
    Api::<Celery>::namespaced(env.admin.clone(), ns).create(&PostParams::default(), &celery).await.expect("created");
}

async fn replicas(api: &Api<Deployment>, name: &str) -> Result<i32, String> {
    let d = api.get_opt(name).await.map_err(|e| e.to_string())?.ok_or("no Deployment yet")?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(1))
}

async fn wait_replicas(api: &Api<Deployment>, name: &str, want: i32) {
    eventually(&format!("{name} at {want}"), WAIT, || async {
        let got = replicas(api, name).await?;
        if got == want { Ok(()) } else { Err(format!("{got}")) }
    })
    .await;
}

/// Every command Redis runs, with Redis's own timestamp (`MONITOR`): when a burst landed and
/// when the operator next read its queue, on one clock.
async fn monitor(redis: &redis::Client) -> mpsc::UnboundedReceiver<(f64, String)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let monitor = redis.get_async_monitor().await.expect("redis MONITOR");
    tokio::spawn(async move {
        let mut lines = monitor.into_on_message::<String>();
        while let Some(line) = lines.next().await {
            // `1733238000.123456 [0 127.0.0.1:5555] "EVAL" "…" "1" "react"`
            let Some((at, rest)) = line.split_once(' ') else { continue };
            if let Ok(at) = at.parse::<f64>()
                && tx.send((at, rest.to_string())).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// From the monitor's lines since the last trial: the time from the first LPUSH on `queue` to the
/// operator's first read of it after that.
fn tick_wait(monitor: &mut mpsc::UnboundedReceiver<(f64, String)>, queue: &str) -> Option<Duration> {
    let key = format!("\"{queue}\"");
    let mut pushed = None;
    while let Ok((at, command)) = monitor.try_recv() {
        if !command.contains(&key) {
            continue;
        }
        if command.contains("\"LPUSH\"") {
            pushed.get_or_insert(at);
        } else if let Some(pushed) = pushed
            && command.contains("\"LLEN\"")
        {
            return Some(Duration::from_secs_f64((at - pushed).max(0.0)));
        }
    }
    None
}

/// What one series of trials measured.
#[derive(Default)]
struct Reaction {
    /// Burst → the first new replica, and → the final count.
    first: Vec<Duration>,
    last: Vec<Duration>,
    /// Burst → the operator's next read of the queue (Redis's clock), and from there to the first
    /// new replica, for the trials the monitor split.
    waits: Vec<Duration>,
    rest: Vec<Duration>,
}

/// Part 1: a burst of 50 messages on the empty queue of app `name` (scaled to zero), pushed one
/// LPUSH at a time as a producer sends them, → replicas 0 → 5 on its Deployment, seen through a
/// watch, at phases spread evenly over the 1 s interval.
async fn reaction(
    env: &Env,
    ns: &str,
    name: &str,
    broker: &str,
    conn: &mut redis::aio::MultiplexedConnection,
    monitor: &mut mpsc::UnboundedReceiver<(f64, String)>,
    trials: usize,
) -> Reaction {
    create(env, ns, &app_yaml(name, name, broker, 0, 0, 0)).await;
    let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), ns);
    let worker = format!("{name}-celery-worker");
    wait_replicas(&deployments, &worker, 0).await;
    // Let the loop settle into its rhythm.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut seen = Reaction::default();
    for trial in 0..trials {
        // Land the burst at phases spread evenly over the 1 s interval. A trial ends at about
        // the same phase each time (the scale-down happens at a tick), so pseudo-random sleeps
        // would leave the phases as uneven as their few draws: 12 of them once put 5 pushes in
        // the first third of the interval, and the p50 of the wait at 657 ms instead of 500.
        // The golden ratio's multiples cover [0, 1) evenly for any number of trials.
        let phase = (trial as f64 * 0.618_033_988_75).fract();
        tokio::time::sleep(Duration::from_secs_f64(phase)).await;

        let config = watcher::Config::default().fields(&format!("metadata.name={worker}"));
        let mut changes = watcher::watcher(deployments.clone(), config).boxed();
        // The watch is established once its initial list is through.
        while let Some(event) = changes.next().await {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                break;
            }
        }
        while monitor.try_recv().is_ok() {}
        let pushed = Instant::now();
        for i in 0..50 {
            let _: () = redis::cmd("LPUSH").arg(name).arg(format!("{{\"bench\": {i}}}")).query_async(conn).await.expect("LPUSH");
        }
        let mut first = None;
        let last = loop {
            match changes.next().await {
                Some(Ok(watcher::Event::Apply(d))) => {
                    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                    if replicas > 0 {
                        first.get_or_insert(pushed.elapsed());
                    }
                    if replicas == 5 {
                        break pushed.elapsed();
                    }
                }
                Some(_) => {}
                None => panic!("the watch ended"),
            }
        };
        let first = first.unwrap_or(last);
        seen.first.push(first);
        seen.last.push(last);
        // The monitor's lines trail the commands by a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(wait) = tick_wait(monitor, name) {
            seen.waits.push(wait);
            seen.rest.push(first.saturating_sub(wait));
        }
        let _: () = redis::cmd("DEL").arg(name).query_async(conn).await.expect("DEL");
        wait_replicas(&deployments, &worker, 0).await;
    }
    Api::<Celery>::namespaced(env.admin.clone(), ns).delete(name, &Default::default()).await.expect("deleted");
    seen
}

/// Both series, printed in one table.
async fn reactions(
    env: &Env,
    ns: &str,
    broker: &str,
    conn: &mut redis::aio::MultiplexedConnection,
    redis: &redis::Client,
    trials: usize,
) {
    let mut monitor = monitor(redis).await;
    let mut polled = reaction(env, ns, "polled", broker, conn, &mut monitor, trials).await;
    // The bench owns this Redis: it turns keyspace events on for the second series (the
    // operator only reads the setting), and off again for part 2.
    let set = |flags: &'static str| redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg(flags).clone();
    let _: () = set("Kl").query_async(conn).await.expect("CONFIG SET");
    let mut woken = reaction(env, ns, "woken", broker, conn, &mut monitor, trials).await;
    let _: () = set("").query_async(conn).await.expect("CONFIG SET");

    let cell = |times: &mut Vec<Duration>| {
        let (p50, _) = percentiles(times);
        let p95 = times.get(((times.len().max(1) - 1) as f64 * 0.95).round() as usize).copied().unwrap_or_default();
        (measure::fmt(p50), measure::fmt(p95))
    };
    let row = |what: &str, first: (String, String), last: (String, String)| {
        println!("{what:<44} {:>10} {:>10} {:>10} {:>10}", first.0, first.1, last.0, last.1);
    };
    println!();
    println!(
        "Reaction time: a burst of 50 messages (one LPUSH each) on an empty queue → replicas 0 → 5 ({trials} trials, intervalSeconds 1)"
    );
    println!("{:<44} {:>21} {:>21}", "", "→ first replica", "→ all 5");
    println!("{:<44} {:>10} {:>10} {:>10} {:>10}", "", "p50", "p95", "p50", "p95");
    row("celery-operator, reading every 1 s", cell(&mut polled.first), cell(&mut polled.last));
    let none = || ("–".to_string(), "–".to_string());
    // Redis's MONITOR timestamps split it: the wait for the loop's next read, and the rest.
    row(&format!("  waiting for its next read ({} trials)", polled.waits.len()), cell(&mut polled.waits), none());
    row("  read → replica seen by a watch", cell(&mut polled.rest), none());
    row("celery-operator, Redis keyspace events on", cell(&mut woken.first), cell(&mut woken.last));
    row(&format!("  waiting for its next read ({} trials)", woken.waits.len()), cell(&mut woken.waits), none());
    row("  read → replica seen by a watch", cell(&mut woken.rest), none());
    row("floor of any 1 s poller (waiting only)", ("500ms".into(), "950ms".into()), none());
    row("floor of a 30 s poller (waiting only)", ("15.0s".into(), "28.5s".into()), none());
}

/// Part 2: CPU, wall time and memory of sampling cycles at several numbers of apps.
async fn cost(env: &Env, ns: &str, broker: &str, listen: SocketAddr, sizes: &[usize], window: Duration, baseline_rss: u64) {
    let celery: Api<Celery> = Api::namespaced(env.admin.clone(), ns);
    let mut created = 0;
    println!();
    println!("Sampling cost: every app samples its own Redis queue every second (queue-length policy); measured over {window:?}");
    println!(
        "{:>6} {:>16} {:>16} {:>16} {:>14} {:>12}",
        "apps", "CPU per cycle", "wall per cycle", "cycles/app/s", "CPU share", "RSS"
    );
    println!("{:>6} {:>16} {:>16} {:>16} {:>14} {:>12}", "0", "-", "-", "-", "-", format!("{} MiB", baseline_rss / 1024));
    for &apps in sizes {
        // The bench apps: no workers (min 0, start at 0), so no pods, only the loops.
        while created < apps {
            let name = format!("app-{created}");
            create(env, ns, &app_yaml(&name, &name, broker, 0, 0, 60)).await;
            created += 1;
        }
        eventually(&format!("{apps} apps sampling"), WAIT, || async {
            let list = celery.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let sampling = list
                .items
                .iter()
                .filter(|c| c.metadata.name.as_deref().is_some_and(|n| n.starts_with("app-")))
                .filter(|c| c.status.as_ref().and_then(|s| s.autoscaler.as_ref()).is_some_and(|a| a.last_decision.is_some()))
                .count();
            if sampling >= apps { Ok(()) } else { Err(format!("{sampling} sampling")) }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;

        let before = Snapshot::take(listen).await;
        tokio::time::sleep(window).await;
        let after = Snapshot::take(listen).await;
        let cycles = after.cycles - before.cycles;
        let cpu = after.cpu - before.cpu;
        let wall = (after.cycle_seconds - before.cycle_seconds) / cycles.max(1.0);
        let per_app = cycles / (apps as f64 * window.as_secs_f64());
        println!(
            "{:>6} {:>16} {:>16} {:>16.2} {:>13.1}% {:>12}",
            apps,
            measure::fmt(cpu.div_f64(cycles.max(1.0))),
            measure::fmt(Duration::from_secs_f64(wall)),
            per_app,
            100.0 * cpu.as_secs_f64() / window.as_secs_f64(),
            format!("{} MiB", measure::rss_kib() / 1024),
        );
    }
    println!("(CPU share: of one core, for this whole process; the machine has {} cores)", measure::num_cores());
}

/// The operator's counters and this process's CPU time at one instant.
struct Snapshot {
    cycles: f64,
    cycle_seconds: f64,
    cpu: Duration,
}

impl Snapshot {
    async fn take(listen: SocketAddr) -> Self {
        let text = measure::metrics_text(listen).await;
        let value = |name: &str| -> f64 { measure::metric_sum(&text, name) };
        Self {
            cycles: value("celery_operator_autoscaler_cycle_duration_seconds_count"),
            cycle_seconds: value("celery_operator_autoscaler_cycle_duration_seconds_sum"),
            cpu: measure::process_cpu(),
        }
    }
}
