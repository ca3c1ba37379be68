//! Real Celery workers standing in for simulated (kwok) worker pods: one worker of the example
//! app per pod, on the host, under the pod's node name (`celery@<pod>`), so Flower and the
//! operator see them as the pods' workers. When the ReplicaSet controller deletes a pod, its
//! worker gets SIGTERM as the kubelet would send it (Celery's warm shutdown) and, with a grace
//! period, SIGKILL when it has not exited by then. The example app records each task's start and
//! end in Redis ([`TASK_LOG`]), so a test or a benchmark tells which worker ran what, and whether
//! a task was cut short or ran twice. Shared by the cluster tests and the scale-in benchmark
//! (`#[path]`-included).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams};
use serde::Deserialize;

use super::servers::{Server, python, wait_for};

/// The Redis list the example app records each task's start and end in (`EXAMPLE_TASK_LOG`).
pub const TASK_LOG: &str = "example:task-log";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../example")
}

/// One line of the example app's task log.
#[derive(Debug, Deserialize)]
pub struct Recorded {
    pub event: String,
    pub id: String,
    /// The task's name (`app.report`, `app.tick`, …).
    #[serde(default)]
    pub task: String,
    pub worker: String,
    /// Seconds since the epoch.
    pub at: f64,
}

pub fn task_log(redis_port: u16) -> Vec<Recorded> {
    let out = Command::new("redis-cli")
        .args(["-p", &redis_port.to_string(), "--raw", "lrange", TASK_LOG, "0", "-1"])
        .output()
        .expect("runs redis-cli");
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// One task as the log tells it.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub starts: u32,
    pub ends: u32,
    /// The pod of its last start.
    pub pod: String,
    /// Its first start, in seconds since the epoch.
    pub first_start: f64,
}

/// Every task of the log by id.
pub fn runs(log: &[Recorded]) -> BTreeMap<String, Run> {
    let mut m: BTreeMap<String, Run> = BTreeMap::new();
    for r in log {
        let e = m.entry(r.id.clone()).or_default();
        match r.event.as_str() {
            "start" => {
                if e.starts == 0 {
                    e.first_start = r.at;
                }
                e.starts += 1;
                e.pod = r.worker.trim_start_matches("celery@").to_string();
            }
            "end" => e.ends += 1,
            _ => {}
        }
    }
    m
}

/// The pods running a task that has not ended, by the task log.
pub fn busy_pods(redis_port: u16) -> BTreeSet<String> {
    runs(&task_log(redis_port)).into_values().filter(|r| r.ends < r.starts).map(|r| r.pod).collect()
}

/// Sends `count` tasks `task` (`report`, `sleep`) of `seconds` each.
pub fn produce(broker: &str, task: &str, count: u32, seconds: u32) {
    let status = Command::new(python())
        .current_dir(example_dir())
        .env("CELERY_BROKER_URL", broker)
        .args(["producer.py", "--task", task, "--burst", &count.to_string(), "--duration", &seconds.to_string()])
        .status()
        .expect("runs the producer");
    assert!(status.success(), "producer failed: {status}");
}

/// Flower of the example app on the host (no credentials), killed on drop.
pub fn flower(broker: &str, port: u16) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(python());
    command.env("CELERY_BROKER_URL", broker).env("PYTHONPATH", example_dir());
    command.args(["-m", "celery", "--app=app:celery_app", "flower", "--address=127.0.0.1", &format!("--port={port}")]);
    let server = Server::spawn(command, dir);
    wait_for("flower", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    server
}

/// What happened to the worker of a deleted pod.
#[derive(Clone, Debug)]
pub struct Stop {
    /// When its pod was seen deleted and it got SIGTERM, in seconds since the epoch.
    pub terminated: f64,
    /// When it had exited (by itself, or killed at the end of the grace period).
    pub exited: Option<f64>,
    /// It was still running at the end of the grace period and got SIGKILL.
    pub killed: bool,
}

/// Now, in seconds since the epoch (the task log's clock).
pub fn epoch() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The workers of a fleet and what became of them.
pub struct Fleet {
    workers: Mutex<BTreeMap<String, Server>>,
    stops: Mutex<BTreeMap<String, Stop>>,
}

impl Fleet {
    /// Starts a worker (concurrency 1, one message prefetched) for each of `pods`, and a task
    /// that stops the worker of every pod deleted from `ns`: SIGTERM, then SIGKILL after `grace`
    /// (never, without one).
    pub fn start(broker: &str, pods: &[String], client: Client, ns: String, grace: Option<Duration>) -> Arc<Self> {
        Self::start_on(broker, pods, "celery", client, ns, grace)
    }

    /// As [`start`](Self::start), the workers consuming `queues` (comma-separated).
    pub fn start_on(
        broker: &str,
        pods: &[String],
        queues: &str,
        client: Client,
        ns: String,
        grace: Option<Duration>,
    ) -> Arc<Self> {
        let mut workers = BTreeMap::new();
        for pod in pods {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut command = Command::new(python());
            command.env("CELERY_BROKER_URL", broker).env("PYTHONPATH", example_dir());
            command.env("EXAMPLE_TASK_LOG", TASK_LOG);
            command.args(["-m", "celery", "--app=app:celery_app", "worker", &format!("--queues={queues}"), "--loglevel=info"]);
            command.args(["--concurrency=1", "--prefetch-multiplier=1", &format!("--hostname=celery@{pod}")]);
            workers.insert(pod.clone(), Server::spawn(command, dir));
        }
        let fleet = Arc::new(Self { workers: Mutex::new(workers), stops: Mutex::new(BTreeMap::new()) });
        let follower = Arc::clone(&fleet);
        tokio::spawn(async move {
            let api: Api<Pod> = Api::namespaced(client, &ns);
            while Arc::strong_count(&follower) > 1 {
                if let Ok(list) = api.list(&ListParams::default()).await {
                    let live: BTreeSet<String> = list
                        .items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .filter_map(|p| p.metadata.name.clone())
                        .collect();
                    follower.follow(&live, grace);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        fleet
    }

    fn follow(&self, live: &BTreeSet<String>, grace: Option<Duration>) {
        let mut workers = self.workers.lock().unwrap();
        let mut stops = self.stops.lock().unwrap();
        let now = epoch();
        for (pod, server) in workers.iter_mut() {
            match stops.get_mut(pod) {
                None if !live.contains(pod) => {
                    server.signal("TERM");
                    stops.insert(pod.clone(), Stop { terminated: now, exited: None, killed: false });
                }
                Some(stop) if stop.exited.is_none() => {
                    if server.exited() {
                        stop.exited = Some(now);
                    } else if grace.is_some_and(|g| now >= stop.terminated + g.as_secs_f64()) {
                        server.signal("KILL");
                        stop.killed = true;
                    }
                }
                _ => {}
            }
        }
    }

    /// The pods whose worker got SIGTERM.
    pub fn terminated(&self) -> BTreeSet<String> {
        self.stops.lock().unwrap().keys().cloned().collect()
    }

    pub fn stops(&self) -> BTreeMap<String, Stop> {
        self.stops.lock().unwrap().clone()
    }
}
