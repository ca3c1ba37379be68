//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas can run and
//! only one writes.
//!
//! Timing follows client-go's: a Lease `duration` (15 s by default), a renew `deadline`
//! shorter than it (10 s) and a `retry` period (2 s). The holder renews every `retry`; a
//! candidate takes the Lease over when its record has not changed for a whole `duration` *as
//! measured by the candidate's own clock*, so clock skew between nodes cannot cut a healthy
//! leader short. Every write carries the `resourceVersion` it read, so two candidates cannot
//! both win.
//!
//! What keeps two leaders from writing at once is the [`Leadership`] gate: a term lasts until
//! the renew deadline counted from when the last successful renewal was *sent*. The standby
//! counts from when it *saw* that renewal, which is later, and waits the longer `duration`,
//! so an old leader's term always ends before a new one's begins; a renewal that hangs and
//! returns late cannot stretch the term, and every call is cut off at the deadline. Every
//! writer (reconciler, autoscaler) asks the gate before each write. A leader that loses its
//! term stops its controllers and campaigns again ([`crate::operator`]).
//!
//! The operator campaigns on a thread of its own ([`Campaign`]), with a runtime and (in the
//! binary) a client of its own: a leader busy with 10,000 apps saturates its runtime's
//! threads, and renewals that queued with that work reached the API server seconds late and
//! lost the Lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, not std's: the same in production, and pausable in tests, so the fault tests
// of the elector can stage a hung renewal exactly.
use tokio::time::Instant;

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
    /// How long others wait, after the holder's record last changed, before taking over.
    pub duration: Duration,
    /// The holder's term ends this long after its last successful renewal was sent; shorter
    /// than `duration`, so it ends before any standby may take over.
    pub renew_deadline: Duration,
    /// Time between two attempts, renewing or campaigning.
    pub retry: Duration,
}

impl LeaseConfig {
    /// client-go's proportions: 15 s lease, 10 s renew deadline, 2 s retry.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>, duration: Duration) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            duration,
            renew_deadline: duration * 2 / 3,
            retry: (duration * 2 / 15).max(Duration::from_millis(200)),
        }
    }
}

/// Why leadership ended.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the leader Lease {namespace}/{name}: not renewed within {deadline:?} (the term ended {late:?} ago)")]
    Expired { namespace: String, name: String, deadline: Duration, late: Duration },
    #[error("lost the leader Lease {namespace}/{name}: {holder} holds it now")]
    TakenOver { namespace: String, name: String, holder: String },
}

/// Whether this process may write now, and whether its elector is alive. Shared by the elector,
/// which extends and ends terms, and every writer, which asks [`holds`](Self::holds).
#[derive(Debug)]
pub struct Leadership {
    elected: bool,
    state: Mutex<Term>,
}

#[derive(Debug)]
struct Term {
    /// End of the current term; `None` while not leading.
    until: Option<Instant>,
    /// When the elector last finished an attempt (successful or not).
    progress: Instant,
}

impl Leadership {
    /// For a single replica without election: always allowed to write.
    pub fn unconditional() -> Self {
        Self { elected: false, state: Mutex::new(Term { until: None, progress: Instant::now() }) }
    }

    /// For a candidate: not allowed to write until the elector wins a term.
    pub fn elected() -> Self {
        Self { elected: true, state: Mutex::new(Term { until: None, progress: Instant::now() }) }
    }

    /// True while this process may write: no election, or within a term.
    pub fn holds(&self) -> bool {
        self.holds_at(Instant::now())
    }

    fn holds_at(&self, now: Instant) -> bool {
        !self.elected || self.state.lock().expect("leadership lock").until.is_some_and(|until| now < until)
    }

    /// How long ago the elector last made an attempt; `None` without election.
    pub fn since_progress(&self) -> Option<Duration> {
        self.elected.then(|| self.state.lock().expect("leadership lock").progress.elapsed())
    }

    fn extend(&self, until: Instant) {
        let mut term = self.state.lock().expect("leadership lock");
        term.until = Some(until);
        term.progress = Instant::now();
    }

    fn attempted(&self) {
        self.state.lock().expect("leadership lock").progress = Instant::now();
    }

    fn end(&self) {
        let mut term = self.state.lock().expect("leadership lock");
        term.until = None;
        term.progress = Instant::now();
    }
}

/// A candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record seen (holder and renew time) and when this process first saw it.
    observed: Option<(String, Instant)>,
}

/// What one attempt found.
enum Attempt {
    Holding,
    HeldBy(String),
    /// The term ended before the renewal could be sent.
    TooLate,
}

impl Elector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config, observed: None }
    }

    /// Blocks until this candidate holds the Lease, and opens its term in `leadership`.
    pub async fn acquire(&mut self, leadership: &Leadership) {
        loop {
            let sent = Instant::now();
            let attempt = tokio::time::timeout(self.config.renew_deadline, self.try_acquire_or_renew(None)).await;
            leadership.attempted();
            match attempt {
                Ok(Ok(Attempt::Holding)) => {
                    leadership.extend(sent + self.config.renew_deadline);
                    info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(Ok(Attempt::HeldBy(_) | Attempt::TooLate)) => {}
                Ok(Err(error)) => {
                    warn!(error = %crate::telemetry::chain(&error), lease = %self.config.name, "leader election: cannot read or write the Lease")
                }
                Err(_) => {
                    warn!(lease = %self.config.name, timeout = ?self.config.renew_deadline, "leader election: the API server did not answer in time")
                }
            }
            tokio::time::sleep(self.config.retry).await;
        }
    }

    /// Renews the Lease every `retry` until a renewal cannot be made before the term's
    /// deadline, or another candidate holds the Lease; ends the term and returns why.
    pub async fn keep(&mut self, leadership: &Leadership) -> LeaderError {
        let error = self.renew_until_lost(leadership).await;
        leadership.end();
        warn!(%error, "leadership ended: this replica stops writing and campaigns again");
        error
    }

    async fn renew_until_lost(&mut self, leadership: &Leadership) -> LeaderError {
        let Some(mut deadline) = leadership.state.lock().expect("leadership lock").until else {
            return self.expired(Instant::now());
        };
        loop {
            tokio::time::sleep(self.config.retry).await;
            loop {
                let sent = Instant::now();
                if sent >= deadline {
                    return self.expired(deadline);
                }
                // Cut off at the deadline: a reply after it would come too late to count.
                let attempt = tokio::time::timeout_at(deadline, self.try_acquire_or_renew(Some(deadline))).await;
                leadership.attempted();
                match attempt {
                    Ok(Ok(Attempt::Holding)) => {
                        deadline = sent + self.config.renew_deadline;
                        leadership.extend(deadline);
                        break;
                    }
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        return LeaderError::TakenOver {
                            namespace: self.config.namespace.clone(),
                            name: self.config.name.clone(),
                            holder,
                        };
                    }
                    Ok(Ok(Attempt::TooLate)) | Err(_) => return self.expired(deadline),
                    Ok(Err(error)) => {
                        warn!(error = %crate::telemetry::chain(&error), lease = %self.config.name, "cannot renew the leader Lease");
                        let pause = self.config.retry.min(deadline.saturating_duration_since(Instant::now()));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Gives the Lease up so a standby takes over at once instead of after a full duration.
    pub async fn release(&mut self) {
        let release = async {
            if let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if spec.holder_identity.as_deref() == Some(&self.config.identity) {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                    if self.api.replace(&self.config.name, &PostParams::default(), &lease).await.is_ok() {
                        info!(lease = %self.config.name, "released leadership");
                    }
                }
            }
        };
        if tokio::time::timeout(self.config.renew_deadline, release).await.is_err() {
            warn!(lease = %self.config.name, "could not release the leader Lease in time; a standby takes over when it expires");
        }
    }

    fn expired(&self, deadline: Instant) -> LeaderError {
        LeaderError::Expired {
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            deadline: self.config.renew_deadline,
            late: deadline.elapsed(),
        }
    }

    /// One round of the election. A renewal passes the term's `deadline`: past it, the write is
    /// not sent at all (the read before it may have been slow), so a late renewal cannot land.
    async fn try_acquire_or_renew(&mut self, deadline: Option<Instant>) -> Result<Attempt, kube::Error> {
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
                Ok(_) => Ok(Attempt::Holding),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldBy("another candidate".into())),
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
            return Ok(Attempt::HeldBy(holder.unwrap_or_default()));
        }
        if !ours {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.acquire_time = Some(now.clone());
        }
        spec.holder_identity = Some(self.config.identity.clone());
        spec.lease_duration_seconds = Some(duration_secs);
        spec.renew_time = Some(now);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Attempt::TooLate);
        }
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Holding),
            // Someone else wrote first; they hold it for now.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldBy("another candidate".into())),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_follows_client_go() {
        let c = LeaseConfig::new("ns", "lease", "me", Duration::from_secs(15));
        assert_eq!((c.renew_deadline, c.retry), (Duration::from_secs(10), Duration::from_secs(2)));
        assert!(c.renew_deadline < c.duration, "a term must end before a standby may take over");
    }

    #[test]
    fn a_term_ends_at_its_deadline_without_the_elector_running() {
        let l = Leadership::elected();
        assert!(!l.holds(), "no term before the first win");
        let start = Instant::now();
        l.extend(start + Duration::from_secs(10));
        assert!(l.holds_at(start + Duration::from_secs(9)));
        // The elector may be stopped (SIGSTOP, a blocked runtime): the gate still closes.
        assert!(!l.holds_at(start + Duration::from_secs(10)));
        l.end();
        assert!(!l.holds_at(start));
        assert!(Leadership::unconditional().holds(), "a single replica without election always writes");
        assert_eq!(Leadership::unconditional().since_progress(), None);
    }
}

/// What a [`Campaign`] reports.
#[derive(Debug)]
pub enum Turn {
    /// This replica holds the Lease; its term is open in the [`Leadership`].
    Won,
    /// The term ended; the campaign goes on.
    Lost(LeaderError),
}

/// An [`Elector`] campaigning, holding and campaigning again on a thread and a tokio runtime of
/// its own, so that its renewals are scheduled by the OS beside the operator's runtime rather
/// than queued behind its tasks. [`next`](Self::next) reports each term won and lost;
/// [`stop`](Self::stop) releases the Lease.
pub struct Campaign {
    terms: tokio::sync::mpsc::UnboundedReceiver<Turn>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
}

impl Campaign {
    /// Starts campaigning for `config`'s Lease with the client `client` makes, opening and
    /// ending terms in `leadership`. The client is made on the campaign's thread: a client's
    /// connections and request queue run on the runtime it is built in.
    pub fn start(
        client: impl FnOnce() -> Client + Send + 'static,
        config: LeaseConfig,
        leadership: Arc<Leadership>,
    ) -> std::io::Result<Self> {
        let (report, terms) = tokio::sync::mpsc::unbounded_channel();
        let (stop, mut stopping) = tokio::sync::oneshot::channel::<()>();
        let (done, stopped) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("lease".into()).spawn(move || {
            runtime.block_on(async move {
                let client = client();
                let mut elector = Elector::new(client.clone(), config.clone());
                let campaign = async {
                    loop {
                        elector.acquire(&leadership).await;
                        if report.send(Turn::Won).is_err() {
                            return;
                        }
                        let lost = elector.keep(&leadership).await;
                        if report.send(Turn::Lost(lost)).is_err() {
                            return;
                        }
                    }
                };
                let asked = tokio::select! {
                    () = campaign => false,
                    asked = &mut stopping => asked.is_ok(),
                };
                if asked {
                    leadership.end();
                    // A fresh elector: the campaigning one may have been stopped mid-renewal.
                    Elector::new(client, config).release().await;
                }
                let _ = done.send(());
            });
        })?;
        Ok(Self { terms, stop: Some(stop), stopped })
    }

    /// The next term won or lost; `None` if the campaign's thread ended (it never does on its
    /// own: a panic).
    pub async fn next(&mut self) -> Option<Turn> {
        self.terms.recv().await
    }

    /// Ends the term, if one is open, releases the Lease if this replica holds it, and waits
    /// until that is done (the release is cut off at the renew deadline).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.stopped).await;
    }
}
