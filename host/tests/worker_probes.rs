//! The worker probes the operator puts on every worker container
//! (`celery_operator::reconcile::probes`), run as the kubelet runs them, with the worker's own
//! Python and `-I -S`, against a real Celery worker of the example app and a real Redis started
//! here: a connected worker is alive and ready; a worker whose broker went away is still alive
//! but not ready; a stopped (stuck) one is not alive. The real-node tier shows the kubelet acting
//! on them.
//!
//! Run: `hack/install-test-deps.sh && cargo test -p celery-operator --test worker_probes`.

#[path = "common/servers.rs"]
mod servers;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use celery_operator::reconcile::probes::{ALIVE, CONNECTED};
use servers::{python, redis_server, wait_for};

/// Runs `script` the way the probe does (`-I -S -c`), against process `pid` instead of PID 1;
/// returns whether it passed and what it printed.
fn probe(script: &str, pid: u32) -> (bool, String) {
    let out = Command::new(python()).args(["-I", "-S", "-c", script, &pid.to_string()]).output().expect("runs python");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// A worker of the example app, killed on drop.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status().expect("runs kill");
    assert!(status.success(), "kill {signal} {pid}");
}

#[test]
fn a_worker_without_its_broker_is_alive_but_not_ready_and_a_stopped_one_is_not_alive() {
    let (redis, port) = redis_server(&[]);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../example");
    let worker = Worker(
        Command::new(python())
            .current_dir(&example)
            .env("CELERY_BROKER_URL", format!("redis://127.0.0.1:{port}/0"))
            .args(["-m", "celery", "--app=app:celery_app", "worker", "--concurrency=1", "--loglevel=warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starts a Celery worker"),
    );
    let pid = worker.0.id();

    // Ready once it has connected (the first checks may run while it imports the app).
    wait_for("the worker's readiness probe to pass", || probe(CONNECTED, pid).0);
    assert_eq!(probe(ALIVE, pid), (true, String::new()), "a consuming worker is alive");

    // The broker goes away: the worker retries, is shown not ready, and is not restarted.
    drop(redis);
    wait_for("the readiness probe to fail without the broker", || !probe(CONNECTED, pid).0);
    assert_eq!(probe(CONNECTED, pid).1, "the worker is not connected to its broker");
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(15) {
        assert_eq!(probe(ALIVE, pid), (true, String::new()), "a worker waiting for its broker is alive");
    }

    // Stuck: its main process no longer runs.
    signal(pid, "-STOP");
    let stuck = probe(ALIVE, pid);
    signal(pid, "-CONT");
    assert_eq!(stuck, (false, "the worker's main process has not run for 10 s".to_string()), "a stopped worker");
    assert!(probe(ALIVE, pid).0, "alive again once it runs");
}
