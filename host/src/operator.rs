//! `celery-operator run`: wires the client, the HTTP endpoints, leader election and the
//! controller together, and shuts them down in order on SIGTERM or Ctrl-C.
//!
//! Tests call [`run`] directly with their own client and shutdown signal, so what they run is
//! what the binary runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::watch;
use tracing::info;

use crate::controller::{self, Scope};
use crate::leader::{Elector, LeaderError, LeaseConfig};
use crate::reconcile::policies::PolicyCheck;
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
    /// The scaling-policy runtime; `None` runs without one (policies are then not checked).
    pub policies: Option<Arc<PolicyCheck>>,
}

/// Why the operator stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot load the Kubernetes client configuration")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot serve the health and metrics endpoints")]
    Serve(#[source] std::io::Error),
    #[error(transparent)]
    Leadership(#[from] LeaderError),
}

/// A client from a kubeconfig file, or inferred (`KUBECONFIG`, `~/.kube/config`, in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, RunError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| RunError::Config(e.into()))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| RunError::Config(e.into()))?
        }
        None => Config::infer().await.map_err(|e| RunError::Config(e.into()))?,
    };
    Client::try_from(config).map_err(|e| RunError::Config(e.into()))
}

/// Runs the operator until `shutdown` turns true (Ok) or leadership is lost (Err).
pub async fn run(client: Client, options: RunOptions, shutdown: watch::Receiver<bool>) -> Result<(), RunError> {
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let server = options.listen.map(|addr| tokio::spawn(server::serve(addr, health.clone(), metrics.clone(), shutdown.clone())));

    let mut stop = shutdown.clone();
    controller::wait_for_crd(&client, &options.scope, &mut stop).await;
    health.set_ready(true);

    let result = match options.leader_election {
        None => {
            metrics.set_leader(true);
            controller::run(client, options.scope, metrics.clone(), options.policies, shutdown).await;
            Ok(())
        }
        Some(lease) => {
            let mut elector = Elector::new(client.clone(), lease);
            tokio::select! {
                _ = elector.acquire() => {}
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
            metrics.set_leader(true);
            let outcome = tokio::select! {
                _ = controller::run(client, options.scope, metrics.clone(), options.policies, shutdown) => Ok(()),
                lost = elector.keep() => Err(RunError::Leadership(lost)),
            };
            metrics.set_leader(false);
            if outcome.is_ok() {
                elector.release().await;
            }
            outcome
        }
    };
    if let Some(server) = server
        && let Ok(Err(e)) = server.await
    {
        return Err(RunError::Serve(e));
    }
    info!("operator stopped");
    result
}
