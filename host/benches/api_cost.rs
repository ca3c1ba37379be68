//! What a steady autoscaled app costs the API server: requests per app per minute, read from
//! the API server's own `apiserver_request_total`, with the operator running and then stopped
//! (the difference is the operator's, whatever the other components do meanwhile).
//!
//! `APPS` (default 22) autoscaled apps on one Redis with a flat, empty backlog, each at its
//! minimum of one worker; once every app has decided, a `WINDOW` (default 120 s, the status
//! refresh, so that a window holds one) with the operator running and one without. Printed beside the figure measured on main before the
//! reconciles followed the spec (issue 12: 12.5 writes and 16.5 reads per app per minute) and
//! the goal (at most 1 write and no reads). The same window is then counted from the API
//! server's audit log, which names the user of each request: the operator's own requests, and
//! the reads of Celery objects that other components (the garbage collector) made meanwhile.
//!
//! `cargo bench -p celery-operator --bench api_cost`. A benchmark, never a test.

#[path = "../tests/common/servers.rs"]
mod servers;
#[path = "shared/stage.rs"]
mod stage;
#[path = "../tests/cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use celery_operator::crd::Celery;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use support::{Env, eventually};

const WAIT: Duration = Duration::from_secs(600);
/// The resources the operator reads or writes.
const RESOURCES: [&str; 6] = ["celery", "deployments", "services", "pods", "events", "leases"];

fn main() {
    let apps: usize = std::env::var("APPS").ok().and_then(|v| v.parse().ok()).unwrap_or(22);
    let window = Duration::from_secs(std::env::var("WINDOW").ok().and_then(|v| v.parse().ok()).unwrap_or(120));
    let stage::Stage { runtime, control_plane, redis: _redis, broker } = stage::stage();
    runtime.block_on(async {
        let env = Env::connect(&control_plane).await;
        support::install(&env).await;
        let ns = env.namespace("api-cost").await;
        let operator = env.start_operator(&[&ns], None);
        let celery: Api<Celery> = Api::namespaced(env.admin.clone(), &ns);
        for i in 0..apps {
            let yaml = format!(
                "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: app-{i}}}
spec:
  common: {{appName: app-{i}, celeryApp: 'app:celery_app', image: example-image}}
  broker: {{url: '{broker}'}}
  workerSpec: {{queues: q{i}}}
  autoscaling: {{policy: queue-length, settings: {{target: '10'}}, minReplicas: 1, maxReplicas: 5}}
"
            );
            let app: Celery = serde_yaml::from_str(&yaml).expect("a Celery");
            celery.create(&PostParams::default(), &app).await.expect("created");
        }
        eventually(&format!("{apps} apps ready and deciding"), WAIT, || async {
            let list = celery.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            let settled = list
                .items
                .iter()
                .filter(|c| {
                    let status = c.status.clone().unwrap_or_default();
                    status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        && status.autoscaler.and_then(|a| a.last_decision).is_some()
                })
                .count();
            if settled >= apps { Ok(()) } else { Err(format!("{settled} settled")) }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(10)).await;

        let before = requests(&env.admin).await;
        let from = jiff::Timestamp::now();
        tokio::time::sleep(window).await;
        let running = delta(&before, &requests(&env.admin).await);
        let to = jiff::Timestamp::now();
        operator.stop().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = requests(&env.admin).await;
        tokio::time::sleep(window).await;
        let stopped = delta(&before, &requests(&env.admin).await);

        let per_app_minute = 60.0 / window.as_secs_f64() / apps as f64;
        println!();
        println!(
            "API requests per app per minute, {apps} steady autoscaled apps, {window:?} with the operator and {window:?} without"
        );
        println!("{:<14} {:>10} {:>10}", "resource", "writes", "reads");
        let (mut writes, mut reads) = (0.0, 0.0);
        for resource in RESOURCES {
            let get =
                |m: &BTreeMap<(String, bool), f64>, write: bool| m.get(&(resource.to_string(), write)).copied().unwrap_or(0.0);
            let w = (get(&running, true) - get(&stopped, true)).max(0.0) * per_app_minute;
            let r = (get(&running, false) - get(&stopped, false)).max(0.0) * per_app_minute;
            writes += w;
            reads += r;
            println!("{resource:<14} {w:>10.2} {r:>10.2}");
        }
        println!("{:<14} {:>10.2} {:>10.2}", "celery-operator", writes, reads);
        // The same window from the audit log, which names who made each request: the
        // operator's own (watches aside), and who else read the Celery objects meanwhile.
        let audited: Vec<_> =
            control_plane.audited().into_iter().filter(|r| r.received >= from && r.received < to && r.namespace == ns).collect();
        let (mut own_writes, mut own_reads) = (0.0, 0.0);
        for r in audited.iter().filter(|r| r.user == support::OPERATOR_USER) {
            if matches!(r.verb.as_str(), "get" | "list") { own_reads += per_app_minute } else { own_writes += per_app_minute }
        }
        println!("{:<14} {:>10.2} {:>10.2}", "audit log", own_writes, own_reads);
        let mut own: BTreeMap<String, usize> = BTreeMap::new();
        for r in audited.iter().filter(|r| r.user == support::OPERATOR_USER) {
            *own.entry(format!("{} {}/{} {}", r.verb, r.resource, r.subresource, r.name)).or_default() += 1;
        }
        for (request, n) in own {
            println!("  {n} × {request} by the operator");
        }
        let mut others: BTreeMap<&str, usize> = BTreeMap::new();
        for r in audited.iter().filter(|r| r.user != support::OPERATOR_USER && r.resource == "celery") {
            *others.entry(r.user.as_str()).or_default() += 1;
        }
        for (user, n) in others {
            println!("  + {n} reads of Celery objects by {user} (not the operator)");
        }
        println!("{:<14} {:>10} {:>10}", "before (main)", "12.5", "16.5");
        println!("{:<14} {:>10} {:>10}", "goal", "≤ 1", "0");
    });
}

/// `apiserver_request_total` summed by (resource, is a write), from the API server's /metrics;
/// with `VERBS=1` also printed by resource, subresource and verb.
async fn requests(admin: &Client) -> BTreeMap<(String, bool), f64> {
    let request = http::Request::get("/metrics").body(Vec::new()).expect("request");
    let text = admin.request_text(request).await.expect("/metrics of the API server");
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            labels.split(&format!("{name}=\"")).nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default().to_string()
        };
        let resource = label("resource");
        if !RESOURCES.contains(&resource.as_str()) {
            continue;
        }
        let verb = label("verb");
        let write = !matches!(verb.as_str(), "GET" | "LIST" | "WATCH");
        let n = value.parse::<f64>().unwrap_or(0.0);
        if std::env::var_os("VERBS").is_some() {
            eprintln!("{resource}/{} {verb} {} {n}", label("subresource"), label("code"));
        }
        *sums.entry((resource, write)).or_insert(0.0) += n;
    }
    sums
}

fn delta(before: &BTreeMap<(String, bool), f64>, after: &BTreeMap<(String, bool), f64>) -> BTreeMap<(String, bool), f64> {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).collect()
}
