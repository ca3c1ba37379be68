//! Failover: how long an autoscaled app goes without decisions when the leader dies.
//!
//! Two operator replicas run in this process against the real control plane, with a Lease of
//! `LEASE` seconds (default 5) and an app sampled every second. Each trial kills the leader as
//! a crash would (no Lease released), pushes a backlog to Redis at once, and times how long it
//! takes until the worker Deployment has the count the backlog calls for, seen through a watch:
//! the Lease expiring on the standby's clock, its campaign, its controllers starting, and its
//! first decision. A new standby is started for the next trial. Printed beside the goal (the
//! Lease plus one interval) and the part of it that is only waiting for the Lease to expire.
//!
//! `cargo bench -p celery-operator --bench failover` (TRIALS=10, LEASE=5). A benchmark, never
//! a test: nothing here passes or fails on a timing.

#[path = "../tests/common/servers.rs"]
mod servers;
#[path = "shared/stage.rs"]
mod stage;
#[path = "../tests/cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use celery_operator::crd::Celery;
use celery_operator::leader::LeaseConfig;
use celery_operator::policy::cli::percentiles;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use support::{Env, eventually};

const WAIT: Duration = Duration::from_secs(300);

fn main() {
    let trials: usize = std::env::var("TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let lease_seconds: u64 = std::env::var("LEASE").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let stage::Stage { runtime, control_plane, redis: _redis, broker } = stage::stage();
    runtime.block_on(async {
        let env = Env::connect(&control_plane).await;
        support::install(&env).await;
        let ns = env.namespace("failover").await;
        let lease_name = format!("bench-{ns}");
        let lease = |identity: &str| {
            LeaseConfig::new("celery-operator", lease_name.clone(), identity, Duration::from_secs(lease_seconds))
        };
        let leases: Api<Lease> = Api::namespaced(env.admin.clone(), "celery-operator");
        let holder = || async {
            let l = leases.get_opt(&lease_name).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(l.and_then(|l| l.spec?.holder_identity))
        };

        let mut leader = env.start_operator(&[&ns], Some(lease("replica-0")));
        eventually("replica-0 to lead", WAIT, || async {
            (holder().await? == Some("replica-0".into())).then_some(()).ok_or("not yet".to_string())
        })
        .await;
        let yaml = format!(
            "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop}}
spec:
  common: {{appName: shop, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{queues: shop}}
  flowerSpec: {{enabled: false}}
  autoscaling:
    policy: queue-length
    settings: {{target: '10'}}
    minReplicas: 1
    maxReplicas: 10
    scaleDown: {{stabilizationWindowSeconds: 0, maxStepPercent: 100, periodSeconds: 0}}
"
        );
        let celery: Celery = serde_yaml::from_str(&yaml).expect("a Celery");
        Api::<Celery>::namespaced(env.admin.clone(), &ns).create(&PostParams::default(), &celery).await.expect("created");
        let deployments: Api<Deployment> = Api::namespaced(env.admin.clone(), &ns);
        let redis = redis::Client::open(broker.as_str()).expect("redis client");
        let mut conn = redis.get_multiplexed_async_connection().await.expect("redis connection");

        let mut times = Vec::with_capacity(trials);
        for trial in 0..trials {
            // A standby, and the backlog back to one worker's worth, before the leader dies.
            let standby = format!("replica-{}", trial + 1);
            let next = env.start_operator(&[&ns], Some(lease(&standby)));
            let _: () = redis::cmd("DEL").arg("shop").query_async(&mut conn).await.expect("DEL");
            eventually("one worker", WAIT, || async {
                let d = deployments.get_opt("shop-celery-worker").await.map_err(|e| e.to_string())?;
                let n = d.and_then(|d| d.spec?.replicas);
                (n == Some(1)).then_some(()).ok_or(format!("{n:?}"))
            })
            .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let want = 2 + (trial % 2) as i32 * 3;
            let config = watcher::Config::default().fields("metadata.name=shop-celery-worker");
            let mut changes = watcher::watcher(deployments.clone(), config).boxed();
            while let Some(event) = changes.next().await {
                if matches!(event, Ok(watcher::Event::InitDone)) {
                    break;
                }
            }

            leader.kill();
            let died = Instant::now();
            let messages: Vec<String> = (0..want * 10).map(|i| format!("{{\"bench\": {i}}}")).collect();
            let _: () = redis::cmd("RPUSH").arg("shop").arg(&messages).query_async(&mut conn).await.expect("RPUSH");
            let took = loop {
                match changes.next().await {
                    Some(Ok(watcher::Event::Apply(d))) if d.spec.as_ref().and_then(|s| s.replicas) == Some(want) => {
                        break died.elapsed();
                    }
                    Some(_) => {}
                    None => panic!("the watch ended"),
                }
            };
            println!("trial {trial}: {standby} decided {took:?} after the leader died");
            times.push(took);
            leader = next;
        }
        leader.stop().await;

        let mut sorted = times.clone();
        let (p50, _) = percentiles(&mut sorted);
        let p95 = sorted[((sorted.len() - 1) as f64 * 0.95).round() as usize];
        let max = sorted.last().copied().unwrap_or_default();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!();
        println!("Failover: leader killed → first decision by the new leader ({trials} trials, Lease {lease_seconds} s, intervalSeconds 1)");
        println!("{:<44} {:>10} {:>10} {:>10}", "", "p50", "p95", "max");
        println!("{:<44} {:>10} {:>10} {:>10}", "celery-operator", ms(p50), ms(p95), ms(max));
        let lease = Duration::from_secs(lease_seconds);
        println!("{:<44} {:>10}", "goal: the Lease plus one interval", ms(lease + Duration::from_secs(1)));
        println!("{:<44} {:>10}", "waiting for the Lease to expire (a floor)", ms(lease));
    });
}
