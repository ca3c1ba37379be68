//! One app with ten worker groups beside ten apps of one pool each: same queues, same load,
//! printed side by side in one run. The grouped form must not cost more than the separate one.
//!
//! Every pool is autoscaled by `queue-length` (target 10, every second) on its own queue of a
//! real Redis, which holds a steady backlog of 25 messages per queue (3 workers each). After
//! the pools have settled, over `WINDOW` seconds (default 120, the status refresh of a steady
//! pool), it counts:
//! - broker round trips per second: Redis' own count of the queue-read script (`EVAL`, one per
//!   pipelined read of any number of queues), and the `LLEN`s inside them;
//! - CPU per pool and cycle: this process's CPU time (the operator runs in it, as in the
//!   cluster tests) over the pools' sampling cycles (the operator's own histogram);
//! - status writes per minute: the operator's `celery/status` patches in the API server's
//!   audit log.
//!
//! `cargo bench -p celery-operator --bench groups` (WINDOW=…, POOLS=…). A benchmark, never a
//! test: nothing here passes or fails on a figure.

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
use std::time::Duration;

use celery_operator::crd::Celery;
use kube::api::{Api, PostParams};
use support::{ControlPlane, Env, eventually};

const WAIT: Duration = Duration::from_secs(600);
/// Messages kept in each queue: `queue-length` with target 10 wants 3 workers for them.
const BACKLOG: usize = 25;

fn main() {
    let window = Duration::from_secs(measure::env_number("WINDOW", 120) as u64);
    let pools = measure::env_number("POOLS", 10);
    let stage::Stage { runtime, control_plane, redis: _redis, broker } = stage::stage();
    runtime.block_on(async {
        let env = Env::connect(&control_plane).await;
        support::install(&env).await;
        let redis = redis::Client::open(broker.as_str()).expect("redis client");
        let mut conn = redis.get_multiplexed_async_connection().await.expect("redis connection");
        for i in 0..pools {
            let messages: Vec<String> = (0..BACKLOG).map(|m| format!("{{\"bench\": {m}}}")).collect();
            let _: () = redis::cmd("LPUSH").arg(format!("q{i}")).arg(&messages).query_async(&mut conn).await.expect("LPUSH");
        }

        let separate = Form::Separate.run(&env, &control_plane, &broker, &mut conn, pools, window).await;
        let grouped = Form::Grouped.run(&env, &control_plane, &broker, &mut conn, pools, window).await;

        println!();
        println!(
            "{pools} autoscaled pools on {pools} queues of one Redis ({BACKLOG} messages each, queue-length every 1 s), \
             measured over {window:?}"
        );
        println!(
            "{:<24} {:>16} {:>10} {:>20} {:>12} {:>18} {:>12}",
            "", "broker reads/s", "LLEN/s", "CPU per pool-cycle", "CPU share", "status writes/min", "cycles/s"
        );
        for (form, m) in [(Form::Separate, &separate), (Form::Grouped, &grouped)] {
            println!(
                "{:<24} {:>16.2} {:>10.1} {:>20} {:>11.1}% {:>18.1} {:>12.1}",
                form.label(pools),
                m.reads_per_second,
                m.llen_per_second,
                measure::fmt(m.cpu_per_cycle),
                100.0 * m.cpu_share,
                m.status_writes_per_minute,
                m.cycles_per_second,
            );
        }
        println!("(CPU share: of one core, for this whole process; the machine has {} cores)", measure::num_cores());
    });
}

#[derive(Clone, Copy)]
enum Form {
    /// One app per queue, its `workerSpec` autoscaled.
    Separate,
    /// One app, one worker group per queue, each autoscaled.
    Grouped,
}

/// What one form cost over the window.
struct Measured {
    reads_per_second: f64,
    llen_per_second: f64,
    cpu_per_cycle: Duration,
    cpu_share: f64,
    status_writes_per_minute: f64,
    cycles_per_second: f64,
}

const AUTOSCALING: &str = "{policy: queue-length, settings: {target: '10'}, minReplicas: 1, maxReplicas: 5}";

impl Form {
    fn label(self, pools: usize) -> String {
        match self {
            Form::Separate => format!("{pools} apps x 1 pool"),
            Form::Grouped => format!("1 app x {pools} groups"),
        }
    }

    fn apps(self, pools: usize, broker: &str) -> Vec<String> {
        let head = |name: &str| {
            format!(
                "apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: {name}}}
spec:
  common: {{appName: {name}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  flowerSpec: {{enabled: false}}
"
            )
        };
        match self {
            Form::Separate => (0..pools)
                .map(|i| format!("{}  workerSpec: {{queues: q{i}}}\n  autoscaling: {AUTOSCALING}\n", head(&format!("app{i}"))))
                .collect(),
            Form::Grouped => {
                let groups: String =
                    (0..pools).map(|i| format!("  - {{name: g{i}, queues: q{i}, autoscaling: {AUTOSCALING}}}\n")).collect();
                vec![format!("{}  workerSpec: {{numOfWorkers: 0}}\n  workerGroups:\n{groups}", head("shop"))]
            }
        }
    }

    /// The pools of `app` that have decided 3 workers for their backlog.
    fn settled(self, app: &Celery) -> usize {
        let status = app.status.clone().unwrap_or_default();
        let decided = |a: Option<&celery_operator::crd::AutoscalerStatus>| {
            a.and_then(|a| a.last_decision.as_ref()).is_some_and(|d| d.replicas == 3)
        };
        match self {
            Form::Separate => usize::from(decided(status.autoscaler.as_ref())),
            Form::Grouped => status.worker_groups.iter().filter(|g| decided(g.autoscaler.as_ref())).count(),
        }
    }

    async fn run(
        self,
        env: &Env,
        control_plane: &ControlPlane,
        broker: &str,
        redis: &mut redis::aio::MultiplexedConnection,
        pools: usize,
        window: Duration,
    ) -> Measured {
        let ns = env
            .namespace(match self {
                Form::Separate => "separate",
                Form::Grouped => "grouped",
            })
            .await;
        let listen: SocketAddr = format!("127.0.0.1:{}", servers::free_port()).parse().expect("address");
        let operator = env.start_operator_serving(&[&ns], None, Some(listen));
        let api: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
        for yaml in self.apps(pools, broker) {
            let celery: Celery = serde_yaml::from_str(&yaml).expect("bench YAML is a Celery");
            api.create(&PostParams::default(), &celery).await.expect("created");
        }
        eventually(&format!("{} settled", self.label(pools)), WAIT, || async {
            let list = api.list(&Default::default()).await.map_err(|e| e.to_string())?;
            let settled: usize = list.items.iter().map(|c| self.settled(c)).sum();
            if settled == pools { Ok(()) } else { Err(format!("{settled} of {pools} pools settled")) }
        })
        .await;
        // Past the first writes of a settled pool.
        tokio::time::sleep(Duration::from_secs(5)).await;

        let before = Counts::take(listen, redis).await;
        let from = jiff::Timestamp::now();
        tokio::time::sleep(window).await;
        let after = Counts::take(listen, redis).await;
        let to = jiff::Timestamp::now();
        let writes = control_plane
            .audited_writes()
            .into_iter()
            .filter(|w| w.namespace == ns && w.resource == "celery" && w.subresource == "status")
            .filter(|w| w.received >= from && w.received <= to)
            .count();
        operator.stop().await;

        let seconds = window.as_secs_f64();
        let cycles = after.cycles - before.cycles;
        let cpu = after.cpu - before.cpu;
        Measured {
            reads_per_second: (after.evals - before.evals) as f64 / seconds,
            llen_per_second: (after.llens - before.llens) as f64 / seconds,
            cpu_per_cycle: cpu.div_f64(cycles.max(1.0)),
            cpu_share: cpu.as_secs_f64() / seconds,
            status_writes_per_minute: writes as f64 * 60.0 / seconds,
            cycles_per_second: cycles / seconds,
        }
    }
}

/// Redis' command counts, the operator's cycles and this process's CPU time at one instant.
struct Counts {
    evals: u64,
    llens: u64,
    cycles: f64,
    cpu: Duration,
}

impl Counts {
    async fn take(listen: SocketAddr, redis: &mut redis::aio::MultiplexedConnection) -> Self {
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(redis).await.expect("INFO");
        let calls = |command: &str| -> u64 {
            let prefix = format!("cmdstat_{command}:calls=");
            info.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let text = measure::metrics_text(listen).await;
        Self {
            evals: calls("eval"),
            llens: calls("llen"),
            cycles: measure::metric_sum(&text, "celery_operator_autoscaler_cycle_duration_seconds_count"),
            cpu: measure::process_cpu(),
        }
    }
}
