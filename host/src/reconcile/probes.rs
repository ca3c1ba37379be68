//! The worker container's probes: cheap checks of a running Celery worker that read `/proc`
//! and never the broker.
//!
//! `celery inspect ping` is the usual probe, and a poor one: each run starts a Python program
//! that imports the app (seconds of CPU), and it fails whenever the broker is away, so a broker
//! outage restarts every worker at once. Instead the kubelet runs two short scripts
//! (`probes/*.py`) with the worker's own Python interpreter: `/proc/1/exe`, since PID 1 of the
//! container is the `celery` process the operator starts (its command is always `celery`), so
//! no path inside the user's image is assumed. Python starts with `-I -S` (no site packages,
//! no environment): about 20 ms of CPU per run.
//!
//! - **Liveness** ([`ALIVE`]): the main process's main thread has been scheduled or used CPU in
//!   the last 10 s. An idle worker wakes several times a second; one waiting for its broker
//!   sleeps and retries, so it passes; a deadlocked or stopped one fails, and is restarted
//!   after three failures (about a minute). Left out for the `solo` pool, where tasks run on
//!   that thread and a task blocked on I/O for minutes is indistinguishable from a stuck worker.
//! - **Readiness** ([`CONNECTED`]): the main process holds an established TCP connection, the
//!   one to the broker it consumes from. A worker that lost its broker is shown not Ready
//!   (it does no work) and is not restarted.
//!
//! Users with other needs (a broker without a standing connection, say) set
//! `workerSpec.livenessProbe` / `readinessProbe`, which replace these.

use k8s_openapi::api::core::v1::{ExecAction, Probe};

/// The liveness script (see the module doc). Also run by the tests against real workers.
pub const ALIVE: &str = include_str!("probes/alive.py");
/// The readiness script.
pub const CONNECTED: &str = include_str!("probes/connected.py");

/// The default liveness probe of a worker whose command line is `args`, or `None` for the
/// `solo` pool.
pub fn worker_liveness(args: &[String]) -> Option<Probe> {
    (!solo_pool(args)).then(|| Probe {
        // The script waits up to 10 s for the thread to move.
        timeout_seconds: Some(15),
        period_seconds: Some(20),
        failure_threshold: Some(3),
        ..python_probe(ALIVE)
    })
}

/// The default readiness probe of a worker.
pub fn worker_readiness() -> Probe {
    Probe {
        timeout_seconds: Some(5),
        period_seconds: Some(5),
        // A broker blip of a few seconds does not take the worker out.
        failure_threshold: Some(3),
        ..python_probe(CONNECTED)
    }
}

fn python_probe(script: &str) -> Probe {
    let command = ["/proc/1/exe", "-I", "-S", "-c", script].map(String::from).to_vec();
    Probe { exec: Some(ExecAction { command: Some(command) }), ..Default::default() }
}

/// Whether the worker command line selects the `solo` pool (`-P solo`, `-Psolo`,
/// `--pool=solo`, `--pool solo`); the last choice wins, as in Celery's parser.
fn solo_pool(args: &[String]) -> bool {
    let mut pool = None;
    let mut it = args.iter().map(String::as_str);
    while let Some(a) = it.next() {
        if a == "-P" || a == "--pool" {
            pool = it.next();
        } else if let Some(p) = a.strip_prefix("--pool=").or_else(|| a.strip_prefix("-P")) {
            pool = Some(p);
        }
    }
    pool == Some("solo")
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case(&[], false)]
    #[case(&["-P", "solo"], true)]
    #[case(&["-Psolo"], true)]
    #[case(&["--pool=solo"], true)]
    #[case(&["--pool", "solo"], true)]
    #[case(&["--pool=solo", "-P", "threads"], false)]
    #[case(&["--pool=gevent"], false)]
    #[case(&["--queues=solo"], false)]
    fn the_solo_pool_gets_no_liveness_probe(#[case] args: &[&str], #[case] solo: bool) {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        assert_eq!(worker_liveness(&args).is_none(), solo, "{args:?}");
    }

    #[test]
    fn the_probes_run_the_workers_own_python_without_site_or_environment() {
        for probe in [worker_liveness(&[]).expect("a liveness probe"), worker_readiness()] {
            let command = probe.exec.and_then(|e| e.command).expect("an exec probe");
            assert_eq!(command[..4], ["/proc/1/exe", "-I", "-S", "-c"]);
            // The script waits at most 10 s; the kubelet must wait longer.
            assert!(probe.timeout_seconds.unwrap_or(1) > 10 || command[4] == CONNECTED);
        }
    }
}
