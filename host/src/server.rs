//! The operator's HTTP endpoints: `/healthz` (the process is doing its job), `/readyz` (it can
//! reach the API server and the CRD is installed) and `/metrics` (Prometheus text format).
//!
//! `/healthz` fails, so the kubelet restarts the pod, when a part that should run for the
//! life of the process has ended or when the leader elector has stopped making attempts: a
//! process that can no longer do its job must not stay up with a green probe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::watch;

use crate::leader::Leadership;
use crate::telemetry::Metrics;

/// What the endpoints report.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    /// Why the process can no longer do its job, once it cannot.
    failed: Mutex<Option<String>>,
    /// The elector's progress, and how long it may go without an attempt.
    elector: Option<(Arc<Leadership>, Duration)>,
}

impl Health {
    /// Health that also fails when `leadership`'s elector makes no attempt for `stall`.
    pub fn watching(leadership: Arc<Leadership>, stall: Duration) -> Self {
        Self { elector: Some((leadership, stall)), ..Self::default() }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the process as unable to do its job; `/healthz` fails from now on.
    pub fn fail(&self, why: impl Into<String>) {
        self.failed.lock().expect("health lock").get_or_insert_with(|| why.into());
    }

    /// `Ok`, or why `/healthz` fails.
    pub fn live(&self) -> Result<(), String> {
        if let Some(why) = self.failed.lock().expect("health lock").clone() {
            return Err(why);
        }
        if let Some((leadership, stall)) = &self.elector
            && let Some(since) = leadership.since_progress()
            && since > *stall
        {
            return Err(format!("the leader elector has made no attempt for {since:?}"));
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Serves the endpoints on `addr` until `shutdown` turns true.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { health, metrics });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, String) {
    match s.health.live() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the API server and the Celery CRD")
    }
}

async fn metrics_text(State(s): State<Shared>) -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_fails_once_a_part_has_ended() {
        let h = Health::default();
        assert_eq!(h.live(), Ok(()));
        h.fail("the controller stopped");
        h.fail("a later cause does not replace the first");
        assert_eq!(h.live(), Err("the controller stopped".to_string()));
    }

    #[test]
    fn health_fails_when_the_elector_stalls() {
        let h = Health::watching(Arc::new(Leadership::elected()), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(2));
        assert!(h.live().is_err_and(|why| why.contains("elector")));
        let h = Health::watching(Arc::new(Leadership::elected()), Duration::from_secs(3600));
        assert_eq!(h.live(), Ok(()));
    }
}
