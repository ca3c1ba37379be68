//! Work in progress and queue lengths read from a real Flower watching a real Celery worker:
//! Debian's `redis-server` as the broker, Celery and Flower from the venv
//! `hack/install-test-deps.sh` makes, all on free loopback ports and killed when the test ends.
//!
//! Run: `hack/install-test-deps.sh && cargo test -p celery-operator --test flower`.

#[path = "common/servers.rs"]
mod servers;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use servers::{STARTUP, Server, free_port, python, redis_server, wait_for};

use celery_operator::metrics::QueueStats;
use celery_operator::metrics::flower::{Flower, WorkerLoad, hostname};

/// The app: one task that sleeps, so the tasks it is given stay in progress while the test
/// reads them.
const TASKS: &str = r#"
import os, time
from celery import Celery
app = Celery("flower_test", broker=os.environ["BROKER"])
# Reserve no more than it runs (a task is acknowledged when it ends, so running tasks count
# against the prefetch): in progress is then exactly `concurrency`, the rest waits.
app.conf.worker_prefetch_multiplier = 1
app.conf.task_acks_late = True

@app.task
def nap(seconds):
    time.sleep(seconds)
"#;

const CONCURRENCY: u32 = 2;
const TASKS_SENT: u64 = 5;
const USERS: &str = "admin:s3cret,viewer:other";

/// `python -m celery -A tasks ARGS...` in a fresh directory holding the app.
fn celery(broker: &str, args: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tasks.py"), TASKS).expect("app");
    let mut command = Command::new(python());
    command.args(["-m", "celery", "-A", "tasks"]).args(args).env("BROKER", broker);
    Server::spawn(command, dir)
}

fn send(broker: &str, count: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("tasks.py"), TASKS).expect("app");
    let code = format!("from tasks import nap\nfor _ in range({count}): nap.delay(600)");
    let out = Command::new(python()).args(["-c", &code]).current_dir(dir.path()).env("BROKER", broker).output().expect("runs");
    assert!(out.status.success(), "sending failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Reads until `done` holds for what was read, within the liveness bound: Flower learns of the
/// tasks from worker heartbeats, every 2 s.
async fn until<T: std::fmt::Debug>(what: &str, read: impl AsyncFn() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + STARTUP;
    loop {
        let value = read().await;
        if done(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: still {value:?} after {STARTUP:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn flower_reports_work_in_progress_per_worker_and_the_backlog() {
    let (_redis, redis_port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{redis_port}/0");
    let pod = "shop-celery-worker-7d9f-x2";
    let concurrency = CONCURRENCY.to_string();
    let _worker = celery(&broker, &["worker", "-c", &concurrency, "-n", &format!("celery@{pod}"), "--loglevel=info"]);
    let port = free_port();
    let _flower =
        celery(&broker, &["flower", "--address=127.0.0.1", &format!("--port={port}"), &format!("--basic_auth={USERS}")]);
    wait_for("flower", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    let url = format!("http://127.0.0.1:{port}");
    let flower = Flower::new(&url, Some(USERS), Duration::from_secs(2)).expect("valid URL");

    // Idle: the worker is known and online, nothing in progress.
    let workers = until(
        "the idle worker",
        || async { flower.workers().await.ok() },
        |w| w.as_ref().is_some_and(|w| w.iter().any(|w| w.online && w.active == Some(0))),
    )
    .await
    .expect("read");
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(hostname(&workers[0].name), pod, "the worker maps to its pod");

    send(&broker, TASKS_SENT);
    let busy = until(
        "the busy worker",
        || async { flower.workers().await.expect("reads") },
        |w| w.first().and_then(|w| w.active) == Some(CONCURRENCY),
    )
    .await;
    assert_eq!(
        busy,
        vec![WorkerLoad {
            name: format!("celery@{pod}"),
            online: true,
            active: Some(CONCURRENCY),
            prefetched: busy[0].prefetched
        }]
    );
    // What waits is in the queue, measured by Flower on its broker.
    let queues = ["celery".to_string(), "elsewhere".to_string()];
    let stats = until(
        "the backlog",
        || async { flower.queues(&queues).await.expect("reads") },
        |s| s[0].backlog == Some(TASKS_SENT - u64::from(CONCURRENCY)),
    )
    .await;
    assert_eq!(stats[1], QueueStats::unknown("elsewhere"), "a queue Flower does not report is unknown, not 0");

    // `celery-operator observe` prints the same, through Flower alone.
    let out = Command::new(env!("CARGO_BIN_EXE_celery-operator"))
        .args(["observe", "--flower", &format!("http://admin:s3cret@127.0.0.1:{port}"), "--queue", "celery"])
        .env_remove("CELERY_BROKER_URL")
        .output()
        .expect("runs");
    assert!(out.status.success(), "observe failed: {}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(printed["queues"][0]["backlog"], TASKS_SENT - u64::from(CONCURRENCY), "{printed}");
    assert_eq!(printed["workers"][0]["active"], CONCURRENCY, "{printed}");
    assert!(!printed.to_string().contains("s3cret"), "{printed}");

    // The API needs the credentials; the metrics do not, but the same client sends them.
    let wrong = Flower::new(&format!("http://admin:wrong@127.0.0.1:{port}"), None, Duration::from_secs(2)).expect("valid");
    let error = wrong.queues(&queues).await.expect_err("wrong password");
    assert!(error.unauthorized && error.to_string().contains("refused the credentials"), "{error}");
    assert!(!error.to_string().contains("wrong"), "the password stays out of messages: {error}");
    let anonymous = Flower::new(&url, None, Duration::from_secs(2)).expect("valid");
    let error = anonymous.queues(&queues).await.expect_err("no credentials");
    assert!(error.to_string().contains("flowerSpec.basicAuth"), "{error}");
}

#[tokio::test]
async fn flower_down_or_silent_is_an_error_not_zero() {
    let port = free_port();
    let flower = Flower::new(&format!("http://127.0.0.1:{port}"), None, Duration::from_secs(1)).expect("valid");
    let error = flower.workers().await.expect_err("nothing listens");
    assert!(error.to_string().contains(&format!("Flower http://127.0.0.1:{port}")), "{error}");

    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = silent.local_addr().expect("addr").port();
    let flower = Flower::new(&format!("http://127.0.0.1:{port}"), None, Duration::from_millis(300)).expect("valid");
    let error = flower.workers().await.expect_err("silent");
    assert!(error.to_string().contains("no answer within"), "{error}");
}
