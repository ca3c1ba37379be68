//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and
//! only one reconciles.
//!
//! The holder renews the Lease every third of its duration. A candidate takes the Lease over
//! when its record has not changed for a whole duration *as measured by the candidate's own
//! clock*, so clock skew between nodes cannot cut a healthy leader short. Every write carries
//! the `resourceVersion` it read, so two candidates cannot both win. A leader that cannot
//! renew in time steps down (the process exits and restarts as a candidate).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// Identity and timing of one candidate.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub duration: Duration,
}

/// Why leadership could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the leader Lease {namespace}/{name}: not renewed for {elapsed:?} (limit {limit:?})")]
    Lost { namespace: String, name: String, elapsed: Duration, limit: Duration },
}

/// A candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen (holder and renew time) and when this process first saw it.
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// Blocks until this candidate holds the Lease.
    pub async fn acquire(&mut self) {
        let retry = self.config.duration / 5;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(error) => {
                    warn!(%error, lease = %self.config.name, "leader election: cannot read or write the Lease")
                }
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Renews the Lease until renewal fails for longer than its duration; returns why.
    pub async fn keep(&mut self) -> LeaderError {
        let period = self.config.duration / 3;
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => return self.lost(last_renewal),
                Err(error) => {
                    warn!(%error, lease = %self.config.name, "cannot renew the leader Lease")
                }
            }
            if last_renewal.elapsed() >= self.config.duration {
                return self.lost(last_renewal);
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once instead of after a full duration.
    pub async fn release(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.config.identity) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self.api.replace(&self.config.name, &PostParams::default(), &lease).await;
                info!(lease = %self.config.name, "released leadership");
            }
        }
    }

    fn lost(&self, since: Instant) -> LeaderError {
        LeaderError::Lost {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            elapsed: since.elapsed(),
            limit: self.config.duration,
        }
    }

    /// One round of the election: true when this candidate holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let duration_secs = i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.config.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };

        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = format!("{holder:?}/{:?}", spec.renew_time.as_ref().map(|t| t.0));
        let first_seen = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.observed = Some((record.clone(), Instant::now()));
                Instant::now()
            }
        };
        let ours = holder.as_deref() == Some(&self.config.identity);
        let expired = holder.is_none() || first_seen.elapsed() >= self.config.duration;
        if !ours && !expired {
            return Ok(false);
        }
        if !ours {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now.clone());
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(now);
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Someone else wrote first; they hold it for now.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
