//! `celery-operator run`: wires the client, the HTTP endpoints, leader election and the
//! controller together, and shuts them down in order on SIGTERM or Ctrl-C.
//!
//! Tests call [`run`] directly with their own client and shutdown signal, so what they run is
//! what the binary runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;
use tracing::info;

use crate::autoscale::cluster::ClusterView;
use crate::autoscale::trace::Traces;
use crate::controller;
use crate::crd::Celery;
use crate::leader::{Campaign, Leadership, LeaseConfig, Turn};
use crate::policy::check::PolicyCheck;
use crate::scope::Scope;
use crate::server::{self, Health};
use crate::telemetry::Metrics;

/// How to run the operator.
#[derive(Clone)]
pub struct RunOptions {
    pub scope: Scope,
    /// Address of `/healthz`, `/readyz` and `/metrics`; `None` serves nothing.
    pub listen: Option<SocketAddr>,
    /// The Lease to hold before reconciling; `None` reconciles at once (a single replica).
    pub leader_election: Option<LeaseConfig>,
    /// Makes the client the Lease is renewed with, on the campaign's own thread
    /// ([`Campaign`]); `None` uses the operator's. A client of its own (its own request queue
    /// and connections, on the campaign's runtime) keeps renewals from waiting behind the
    /// operator's other requests: 10,000 loops starting at once queue thousands of status
    /// writes, and a shared client made the renewals wait past their deadline.
    pub lease_client: Option<LeaseClient>,
    /// The scaling-policy runtime; `None` runs without one (policies are then not checked).
    pub policies: Option<Arc<PolicyCheck>>,
    /// How much of each autoscaled pool's past `/trace` keeps; zero keeps none.
    pub trace_window: Duration,
    /// A loopback address serving `/trace` without a token (for `kubectl port-forward`).
    pub trace_listen: Option<SocketAddr>,
}

/// Makes a client for the Lease: called once per run, on the campaign's thread.
pub type LeaseClient = Arc<dyn Fn() -> Client + Send + Sync>;

/// Why the operator stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot load the Kubernetes client configuration")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot serve the health and metrics endpoints")]
    Serve(#[source] std::io::Error),
    #[error("cannot start the thread that campaigns for the leader Lease")]
    Campaign(#[source] std::io::Error),
    #[error("the controllers stopped without being asked to")]
    ControllerEnded,
}

/// A client from a kubeconfig file, or inferred (`KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, RunError> {
    client_as(kubeconfig, None).await
}

/// Like [`client`], with `User-Agent: celery-operator/<version> (<identity>)`, so the API
/// server's audit log tells the replicas apart.
pub async fn client_as(kubeconfig: Option<&Path>, identity: Option<&str>) -> Result<Client, RunError> {
    client_from(config_as(kubeconfig, identity).await?)
}

/// The configuration [`client_as`] builds its client from.
pub async fn config_as(kubeconfig: Option<&Path>, identity: Option<&str>) -> Result<Config, RunError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| RunError::Config(e.into()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| RunError::Config(e.into()))?
        }
        None => Config::infer().await.map_err(|e| RunError::Config(e.into()))?,
    };
    let agent = match identity {
        Some(identity) => format!("celery-operator/{} ({identity})", env!("CARGO_PKG_VERSION")),
        None => format!("celery-operator/{}", env!("CARGO_PKG_VERSION")),
    };
    let agent = http::HeaderValue::from_str(&agent).map_err(|e| RunError::Config(e.into()))?;
    config.headers.push((http::header::USER_AGENT, agent));
    Ok(config)
}

/// A client from `config`, at most [`MAX_IN_FLIGHT`] requests in flight. Its request queue
/// and connections run on the tokio runtime it is built in.
pub fn client_from(config: Config) -> Result<Client, RunError> {
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| RunError::Config(e.into()))?;
    Ok(builder.with_layer(&InFlight::layer(MAX_IN_FLIGHT)).build())
}

/// Requests one client has in flight at most, watches aside. Each is a connection of its own
/// (HTTP/1.1, as kube's client speaks), kept open and idle in its pool after the answer: 10,000
/// loops starting at once opened thousands, each with its TLS and HTTP buffers, for the
/// operator's whole life. The rest wait their turn, first come first served.
///
/// Measured at 10,000 apps on the scale bench's shared 2 cores (2026-12-04): with 32 the apps
/// were created in 380 s and the Lease held throughout; with 200 the operator's bursts of
/// status writes slowed the API server enough that it answered the Lease's reads in up to 3 s,
/// the Lease lapsed 6 times and the apps took 896 s. (With 32 a new leader's first decisions
/// waited longer behind its queued status writes: 59 s after the kill, against 28 s with no
/// bound; that wait is the loops', to be taken off their path, not the bound's to hide.)
pub const MAX_IN_FLIGHT: usize = 32;

/// Holds every request but a watch until one of `permits` is free. (tower's
/// `ConcurrencyLimit` counts every request: the long-lived watches, a handful per watched
/// namespace, would hold permits for good.) A request waits inside its response future, not
/// in `poll_ready`, so one waiting its turn never holds up a watch queued behind it in the
/// client's buffer; it reaches the inner service only once it holds a permit.
struct InFlight<S> {
    inner: Arc<tokio::sync::Mutex<S>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl InFlight<()> {
    fn layer<S>(permits: usize) -> impl tower::Layer<S, Service = InFlight<S>> {
        let permits = Arc::new(tokio::sync::Semaphore::new(permits));
        tower::layer::layer_fn(move |inner| InFlight {
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            permits: Arc::clone(&permits),
        })
    }
}

impl<S, B> tower::Service<http::Request<B>> for InFlight<S>
where
    S: tower::Service<http::Request<B>> + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    /// Always ready: readiness is the inner service's, checked when a request's turn comes.
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let watch = request.uri().query().is_some_and(|q| q.split('&').any(|pair| pair == "watch=true" || pair == "watch=1"));
        let (inner, permits) = (Arc::clone(&self.inner), Arc::clone(&self.permits));
        Box::pin(async move {
            let _permit = match watch {
                true => None,
                false => Some(permits.acquire_owned().await.expect("the semaphore is never closed")),
            };
            let response = {
                let mut inner = inner.lock().await;
                std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                inner.call(request)
            };
            response.await
        })
    }
}

/// Runs the operator until `shutdown` turns true (Ok), or a part that should never end does
/// (Err: the binary exits non-zero and the kubelet restarts it).
///
/// With leader election, a replica that loses its term stops its controllers and autoscaling
/// loops (every write is gated on the term meanwhile) and campaigns again, so an API outage
/// longer than the Lease leaves the operator waiting for the API server, not off for good.
pub async fn run(client: Client, options: RunOptions, shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let (leadership, health) = match &options.leader_election {
        None => (Arc::new(Leadership::unconditional()), Arc::new(Health::default())),
        Some(lease) => {
            let leadership = Arc::new(Leadership::elected());
            // An attempt takes at most the renew deadline, and one follows every retry period.
            let stall = (lease.renew_deadline + lease.retry) * 2;
            (leadership.clone(), Arc::new(Health::watching(leadership, stall)))
        }
    };
    // The endpoints stop when this function returns, whatever the reason.
    let (server_stop, server_shutdown) = watch::channel(false);
    let traces = Traces::new(options.trace_window);
    let endpoints =
        server::Endpoints { health: health.clone(), metrics: metrics.clone(), traces: traces.clone(), client: client.clone() };
    let server = options.listen.map(|addr| tokio::spawn(server::serve(addr, endpoints.clone(), server_shutdown.clone())));
    if let Some(addr) = options.trace_listen {
        let serving = server::serve_loopback_trace(addr, endpoints, server_shutdown);
        // Optional: a failure to serve it is logged, and the operator goes on.
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "cannot serve /trace on loopback");
            }
        });
    }

    let result = elect_and_run(&client, &options, &metrics, &leadership, &health, &traces, shutdown).await;
    if let Err(e) = &result {
        health.fail(e.to_string());
    }
    let _ = server_stop.send(true);
    if let Some(server) = server {
        // Open connections get a moment to finish; the process does not wait on them.
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Err(e))) if result.is_ok() => return Err(RunError::Serve(e)),
            _ => {}
        }
    }
    info!("operator stopped");
    result
}

/// Waits for the CRD, then watches the worker pods and Deployments for as long as the process
/// runs and [leads](lead) when it can.
async fn elect_and_run(
    client: &Client,
    options: &RunOptions,
    metrics: &Arc<Metrics>,
    leadership: &Arc<Leadership>,
    health: &Health,
    traces: &Arc<Traces>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let mut stop = shutdown.clone();
    controller::wait_for_crd::<Celery>(client, &options.scope, controller::CRD_GRACE, &mut stop).await;
    if *stop.borrow() {
        return Ok(());
    }
    health.set_ready(true);
    let kept = controller::Kept { metrics: metrics.clone(), traces: traces.clone(), cluster: ClusterView::new() };
    // The worker pods and Deployments are watched from the start, not from a term: a standby
    // keeps them current, so when it takes over, its loops need not wait for a list of every
    // worker Deployment (at 10,000 apps, seconds of the API server's time) to decide.
    // In a task of its own, so that the view stays current while the controllers' task is
    // busy (a new leader's first reconcile of every app), as the hand-offs do (controller::run).
    let view = options.policies.is_some().then(|| {
        let watch = Arc::clone(&kept.cluster).watch(client.clone(), options.scope.clone(), Arc::clone(leadership));
        AbortOnDropHandle::new(tokio::spawn(watch))
    });
    let watching = async {
        match view {
            // Its watches never end by themselves: only a panic ends the task, and the run.
            Some(view) => drop(view.await),
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        result = lead(client, options, &kept, leadership, shutdown) => result,
        () = watching => Err(RunError::ControllerEnded),
    }
}

/// Campaigns for the Lease (when elected) and runs the controllers while it is held.
async fn lead(
    client: &Client,
    options: &RunOptions,
    kept: &controller::Kept,
    leadership: &Arc<Leadership>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let mut stop = shutdown.clone();
    let metrics = &kept.metrics;
    let controllers = || {
        controller::run(
            client.clone(),
            options.scope.clone(),
            kept,
            options.policies.clone(),
            leadership.clone(),
            shutdown.clone(),
        )
    };
    let Some(lease) = &options.leader_election else {
        metrics.set_leader(true);
        controllers().await;
        return if *stop.borrow() { Ok(()) } else { Err(RunError::ControllerEnded) };
    };
    let (make, shared) = (options.lease_client.clone(), client.clone());
    let mut campaign = Campaign::start(move || make.map_or(shared, |make| make()), lease.clone(), Arc::clone(leadership))
        .map_err(RunError::Campaign)?;
    loop {
        // `None` when asked to stop (the watch's guard is not held across the release).
        let term = tokio::select! {
            term = campaign.next() => Some(term),
            _ = stop.wait_for(|s| *s) => None,
        };
        match term {
            None => {
                campaign.stop().await;
                return Ok(());
            }
            Some(Some(Turn::Won)) => {}
            Some(Some(Turn::Lost(_))) => continue,
            Some(None) => {
                tracing::error!("the Lease campaign ended unexpectedly");
                return Err(RunError::ControllerEnded);
            }
        }
        metrics.set_leader(true);
        let lost = tokio::select! {
            _ = controllers() => None,
            term = campaign.next() => Some(term),
        };
        metrics.set_leader(false);
        match lost {
            // Dropping the controllers above ended every loop; the next term starts afresh.
            Some(Some(Turn::Lost(error))) => tracing::debug!(%error, "campaigning again"),
            Some(Some(Turn::Won)) => {}
            Some(None) => {
                tracing::error!("the Lease campaign ended unexpectedly");
                return Err(RunError::ControllerEnded);
            }
            None => {
                // Shut down (or failed): the Lease is released either way, so a standby takes
                // over at once.
                campaign.stop().await;
                return if *stop.borrow() { Ok(()) } else { Err(RunError::ControllerEnded) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service};

    type Mock = tower_test::mock::Mock<http::Request<()>, &'static str>;

    fn get(path: &str) -> http::Request<()> {
        http::Request::get(path).body(()).unwrap()
    }

    /// Two permits: the third request waits until an answer frees one; a watch never waits.
    #[tokio::test]
    async fn requests_beyond_the_bound_wait_and_watches_do_not() {
        let (mock, mut handle) = tower_test::mock::pair::<http::Request<()>, &'static str>();
        let mut service: InFlight<Mock> = InFlight::layer(2).layer(mock);
        let answers: Vec<_> = ["/a", "/b", "/c", "/w?watch=true&resourceVersion=1"]
            .into_iter()
            .map(|path| tokio::spawn(service.call(get(path))))
            .collect();
        let mut arrived = Vec::new();
        for _ in 0..3 {
            let (request, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.unwrap().unwrap();
            arrived.push((request.uri().path().to_owned(), reply));
        }
        let mut paths: Vec<_> = arrived.iter().map(|(path, _)| path.as_str()).collect();
        paths.sort();
        assert_eq!(paths, ["/a", "/b", "/w"], "two requests and the watch, not the third request");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await.is_err(), "the third waits");
        let first = arrived.iter().position(|(path, _)| path == "/a").unwrap();
        let (_, reply) = arrived.remove(first);
        reply.send_response("done");
        let (third, reply) = tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.unwrap().unwrap();
        assert_eq!(third.uri().path(), "/c");
        reply.send_response("done");
        for (_, reply) in arrived {
            reply.send_response("done");
        }
        for answer in answers {
            assert_eq!(answer.await.unwrap().unwrap(), "done");
        }
    }
}
