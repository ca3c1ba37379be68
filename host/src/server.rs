//! The operator's HTTP endpoints: `/healthz` (the process is doing its job), `/readyz` (it can
//! reach the API server and the CRD is installed), `/metrics` (Prometheus text format) and
//! `/trace/NAMESPACE/NAME` (an autoscaled app's recent ticks, [`crate::autoscale::trace`]).
//!
//! `/trace` is served only to authorised callers: a bearer token the API server accepts
//! (TokenReview) whose user may `get` that `Celery` (SubjectAccessReview): 401 without a token
//! or with one it refuses, 403 when the user may not read the app. A second, optional listener
//! on a loopback address serves `/trace` alone without a token: only processes of the pod
//! reach it, and `kubectl port-forward` (which the API server authorises) (`--trace-listen`).
//!
//! `/healthz` fails, so the kubelet restarts the pod, when a part that should run for the
//! life of the process has ended or when the leader elector has stopped making attempts: a
//! process that can no longer do its job must not stay up with a green probe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use tokio::sync::watch;

use crate::autoscale::trace::Traces;
use crate::crd::Celery;
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

/// What the endpoints serve from.
#[derive(Clone)]
pub struct Endpoints {
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub traces: Arc<Traces>,
    /// Reviews the callers of `/trace`.
    pub client: Client,
}

#[derive(Clone)]
struct Shared {
    endpoints: Endpoints,
    /// `/trace` needs a token (the main listener) or not (the loopback one).
    authenticate: bool,
}

/// Serves the endpoints on `addr` until `shutdown` turns true.
pub async fn serve(addr: SocketAddr, endpoints: Endpoints, shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/trace/{namespace}/{name}", get(trace))
        .with_state(Shared { endpoints, authenticate: true });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics and /trace");
    run(listener, app, shutdown).await
}

/// Serves `/trace` without a token on `addr`, which must be a loopback address: only the pod's
/// own processes and `kubectl port-forward` reach it.
pub async fn serve_loopback_trace(
    addr: SocketAddr,
    endpoints: Endpoints,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("--trace-listen {addr}: not a loopback address; /trace without a token is served on 127.0.0.1 or ::1 only"),
        ));
    }
    let app = Router::new().route("/trace/{namespace}/{name}", get(trace)).with_state(Shared { endpoints, authenticate: false });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /trace on loopback (for kubectl port-forward)");
    run(listener, app, shutdown).await
}

async fn run(listener: tokio::net::TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await
}

async fn healthz(State(s): State<Shared>) -> (StatusCode, String) {
    match s.endpoints.health.live() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn readyz(State(s): State<Shared>) -> (StatusCode, &'static str) {
    if s.endpoints.health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the API server and the Celery CRD")
    }
}

async fn metrics_text(State(s): State<Shared>) -> ([(&'static str, &'static str); 1], String) {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.endpoints.metrics.encode())
}

/// `?group=NAME` picks a worker group's pool; `?view=why` answers the decisions that changed
/// something, as JSON, instead of the CSV.
#[derive(serde::Deserialize)]
struct TraceQuery {
    group: Option<String>,
    view: Option<String>,
}

async fn trace(
    State(s): State<Shared>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<TraceQuery>,
    headers: HeaderMap,
) -> Response {
    if s.authenticate
        && let Err((status, why)) = authorise(&s.endpoints.client, &headers, &namespace, &name).await
    {
        return (status, why).into_response();
    }
    let label = match &query.group {
        None => format!("{namespace}/{name}"),
        Some(group) => format!("{namespace}/{name}/{group}"),
    };
    let Some(ring) = s.endpoints.traces.get(&label) else {
        let why = format!(
            "no trace of {label}: it is not autoscaled by this replica (only the leader's loops record one), or its loop has not \
             started yet"
        );
        return (StatusCode::NOT_FOUND, why).into_response();
    };
    let ring = ring.lock().expect("trace lock");
    match query.view.as_deref() {
        None | Some("csv") => ([(CONTENT_TYPE, "text/csv; charset=utf-8")], ring.csv()).into_response(),
        Some("why") => {
            let (notes, last) = ring.notes();
            axum::Json(serde_json::json!({"app": label, "decisions": notes, "latest": last})).into_response()
        }
        Some(other) => (StatusCode::BAD_REQUEST, format!("view `{other}`: use csv (the default) or why")).into_response(),
    }
}

/// Who the caller is (TokenReview) and whether they may read the app (SubjectAccessReview).
async fn authorise(client: &Client, headers: &HeaderMap, namespace: &str, name: &str) -> Result<(), (StatusCode, String)> {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let unauthorised = |why: &str| (StatusCode::UNAUTHORIZED, why.to_string());
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorised("a bearer token is needed: one the API server accepts, of a user who may get this Celery"))?;
    let unavailable = |e: kube::Error| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot review the caller with the API server: {}", crate::telemetry::chain(&e)),
        )
    };
    let review = TokenReview { spec: TokenReviewSpec { token: token.to_string(), ..Default::default() }, ..Default::default() };
    let reviewed = Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await.map_err(unavailable)?;
    let status = reviewed.status.unwrap_or_default();
    let user = match (status.authenticated, status.user) {
        (Some(true), Some(user)) => user,
        _ => return Err(unauthorised("the API server does not accept this token")),
    };
    let access = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(<Celery as Resource>::group(&()).to_string()),
                resource: Some(<Celery as Resource>::plural(&()).to_string()),
                namespace: Some(namespace.to_string()),
                name: Some(name.to_string()),
                verb: Some("get".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let decided =
        Api::<SubjectAccessReview>::all(client.clone()).create(&PostParams::default(), &access).await.map_err(unavailable)?;
    if decided.status.is_some_and(|s| s.allowed) {
        Ok(())
    } else {
        let who = user.username.unwrap_or_default();
        Err((StatusCode::FORBIDDEN, format!("{who} may not get celery {name} in namespace {namespace}")))
    }
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
