//! Servers the tests start for themselves: Debian's `redis-server` on a free loopback port,
//! and the Python of the venv `hack/install-test-deps.sh` makes, with the real Celery. Shared by
//! the broker tests and the cluster tests (`#[path]`-included, so each test crate compiles it).
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Upper bound for a server to come up. Only a liveness bound: a test never passes or fails
/// on how fast something was.
pub const STARTUP: Duration = Duration::from_secs(120);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + STARTUP;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up within {STARTUP:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A server process, killed on drop.
pub struct Server {
    child: Child,
    /// Removed on drop, after the process is gone.
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Server {
    pub fn spawn(mut command: Command, dir: tempfile::TempDir) -> Server {
        let log = dir.path().join("server.log");
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?} ({e}); run hack/install-test-deps.sh"));
        Server { child, _dir: dir, log }
    }

    /// Sends `signal` (`TERM`, `STOP`, …) to the process, as `kill -<signal>` does.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
    }

    /// Whether the process has exited (reaped here if so).
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log {}:\n{}", self.log.display(), self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn redis_server(extra: &[&str]) -> (Server, u16) {
    redis_server_on("127.0.0.1", extra)
}

/// A Redis server listening on `addresses` (space-separated, the first one loopback: that is
/// where readiness is checked), for pods that reach it on the real node's address.
pub fn redis_server_on(addresses: &str, extra: &[&str]) -> (Server, u16) {
    let port = free_port();
    (redis_server_at(addresses, port, extra), port)
}

/// A Redis server on `port` of `addresses`: a broker that comes back where its clients left it.
pub fn redis_server_at(addresses: &str, port: u16, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", addresses, "--save", "", "--appendonly", "no"]);
    // Pods reach it from the pod network, not from loopback.
    command.args(["--protected-mode", "no"]);
    command.args(["--daemonize", "no", "--dir"]).arg(dir.path()).args(extra);
    let server = Server::spawn(command, dir);
    wait_for("redis-server", || TcpStream::connect(("127.0.0.1", port)).is_ok());
    server
}

/// The venv's Python with Celery, made by `hack/install-test-deps.sh`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("CELERY_OPERATOR_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        home.join(".cache/celery-operator/venv/bin/python")
    });
    assert!(path.exists(), "{} is missing: run hack/install-test-deps.sh", path.display());
    path
}
