//! Reconciliation of one `Celery` object, as a pipeline of steps:
//! read (the object handed in by the controller) → [validate](crate::spec::validate) →
//! [check the policies](crate::policy::check) → [`build`] → [`apply`] → hand the validated
//! scaling to the autoscaler ([`crate::spec::Handoff`]) → [status](crate::report::status).
//! Validating, building and the status are pure; `apply` and the [`Writer`] talk to the API
//! server.
//!
//! A spec the operator cannot run becomes a `Degraded` condition and one Warning event, and
//! the object waits for a change; a failure that may pass (API server unreachable) is an
//! [`Error`], retried with backoff by [`error_policy`].

pub mod adopt;
pub mod apply;
pub mod build;
pub mod probes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::conditions::{CONFLICTING_AUTOSCALER, INVALID_SPEC, NAME_CONFLICT};
use crate::crd::{Celery, CeleryStatus};
use crate::leader::Leadership;
use crate::policy::check::PolicyCheck;
use crate::report::status::{self, GroupOutcome, Outcome};
use crate::report::{WriteError, Writer};
use crate::spec::names::FIELD_MANAGER;
use crate::spec::validate::{self, Scaling};
use crate::spec::{Handoff, HandoffSender};
use crate::telemetry::Metrics;
use apply::ApplyError;

/// How often an app is reconciled without any change, to catch drift no watch reported.
const RESYNC: Duration = Duration::from_secs(300);
/// Apps whose failure count is kept for backoff, at most.
const MAX_BACKOFFS: usize = 4096;
/// How often an app whose children's names are taken looks again.
const CONFLICT_RECHECK: Duration = Duration::from_secs(15);
/// While only a rollout's counts move (see [`status::only_progress`]), the status follows them
/// at most this often: 100 new apps rolling out wrote about five statuses each before.
const PROGRESS_WRITE: Duration = Duration::from_secs(1);
/// How long a status this replica wrote is trusted over the cache's copy of it (the watch
/// brings the write back within milliseconds; a reconcile in between would write it again).
const WRITTEN_TRUSTED: Duration = Duration::from_secs(5);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    /// Writes the reconciler's part of the status, and its events.
    writer: Writer,
    metrics: Arc<Metrics>,
    /// Checks the selected scaling policies; `None` runs without a policy runtime.
    policies: Option<Arc<PolicyCheck>>,
    /// Where validated scaling goes to the autoscaling loops; `None` without a policy runtime.
    handoff: Option<HandoffSender>,
    /// The children as the watches last saw them.
    children: apply::Cached,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<ObjectRef<Celery>, u32>>,
    /// The reconciler's part of the status last written per object, and when.
    written: Mutex<HashMap<ObjectRef<Celery>, (Instant, CeleryStatus)>>,
    /// Whether this replica may write (its leader term).
    leadership: Arc<Leadership>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        policies: Option<Arc<PolicyCheck>>,
        handoff: Option<HandoffSender>,
        children: apply::Cached,
        leadership: Arc<Leadership>,
    ) -> Self {
        Self {
            writer: Writer::new(client.clone(), FIELD_MANAGER, leadership.clone()),
            client,
            metrics,
            policies,
            handoff,
            children,
            failures: Mutex::default(),
            written: Mutex::default(),
            leadership,
        }
    }
}

/// A failure worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Celery object has no namespace")]
    NotNamespaced,

    #[error("applying the children of Celery {app}")]
    Apply {
        app: String,
        #[source]
        source: ApplyError,
    },

    #[error("writing the status of Celery {app}")]
    Status {
        app: String,
        #[source]
        source: WriteError,
    },

    #[error("not reconciling Celery {app}: this replica's leader term has ended")]
    NotLeader { app: String },
}

/// Brings the children of one Celery app in line with its spec and reports how it went.
pub async fn reconcile(celery: Arc<Celery>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = celery.namespace().ok_or(Error::NotNamespaced)?;
    let name = celery.name_any();
    let app = format!("{ns}/{name}");

    let result =
        if ctx.leadership.holds() { run_pipeline(&celery, &ctx, &app).await } else { Err(Error::NotLeader { app: app.clone() }) };
    ctx.metrics.observe_reconcile(started.elapsed(), result.is_ok());
    let key = ObjectRef::from_obj(&*celery);
    if result.is_ok() {
        ctx.failures.lock().expect("failure map lock").remove(&key);
    }
    result
}

async fn run_pipeline(celery: &Arc<Celery>, ctx: &Context, app: &str) -> Result<Action, Error> {
    // Kept alive here because the outcome borrows from them.
    let scaling;
    let groups;
    let applied;
    let outcome = match validate::validate(&celery.spec) {
        Err(invalid) => {
            hand_off(ctx, celery, None);
            Outcome::Failed { reason: INVALID_SPEC, message: invalid.to_string() }
        }
        Ok(s) => {
            // A policy that cannot be used does not hold back the rest of the spec: the
            // children are still applied, and the scaler keeps the current count.
            let mut problem = match &ctx.policies {
                Some(check) => check.check(&s).await.err().map(|p| (p.reason, p.message)),
                None => None,
            };
            // Validated with the rest: cannot fail here.
            let mut g = validate::groups(&celery.spec).unwrap_or_default();
            let mut s = s;
            // A pool another autoscaler also scales is left to it: no tug of war over its
            // replicas, and a condition that names it.
            let foreign = ctx.children.foreign_autoscalers(celery);
            for f in &foreign {
                let external = Scaling::External { autoscaler: f.autoscaler.clone() };
                match &f.group {
                    None => s = external,
                    Some(name) => {
                        if let Some(i) = celery.spec.worker_groups.iter().position(|w| &w.name == name) {
                            g[i] = external;
                        }
                    }
                }
            }
            if !foreign.is_empty() {
                problem = Some((CONFLICTING_AUTOSCALER, conflict_message(&foreign)));
            }
            scaling = s;
            groups = g;
            let applied_now = match apply::unchanged(&ctx.children, celery, &scaling, &groups) {
                Some(cached) => Ok(cached),
                None => apply::children(&ctx.client, &ctx.children, celery, &scaling, &groups).await,
            };
            match applied_now {
                Ok(a) => {
                    applied = a;
                    hand_off(ctx, celery, Some((&scaling, &groups)));
                    Outcome::Applied {
                        scaling: &scaling,
                        worker: &applied.worker,
                        groups: celery
                            .spec
                            .worker_groups
                            .iter()
                            .zip(&applied.groups)
                            .zip(&groups)
                            .map(|((g, deployment), scaling)| GroupOutcome { name: &g.name, deployment, scaling })
                            .collect(),
                        beat: applied.beat.as_ref(),
                        flower: applied.flower.as_ref(),
                        flower_service: applied.flower_service.clone(),
                        problem,
                    }
                }
                Err(ApplyError::Rejected { reason, message }) => Outcome::Failed { reason, message },
                Err(source) => {
                    return Err(Error::Apply { app: app.to_string(), source });
                }
            }
        }
    };

    let now = Time(jiff::Timestamp::now());
    let new_status = status::compute(celery, &outcome, &now);
    let old_conditions = celery.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    if !ctx.leadership.holds() {
        return Err(Error::NotLeader { app: app.to_string() });
    }
    publish_transitions(ctx, celery, old_conditions, &new_status.conditions).await;
    // A status held back for a moment is written by the reconcile this requeue brings.
    let deferred = write_status(ctx, celery, &new_status, app).await?;
    let resync = deferred.unwrap_or(RESYNC);

    match outcome {
        Outcome::Applied { problem: None, .. } => {
            info!(app, policy = new_status.policy.as_deref().unwrap_or("none"), "reconciled");
            Ok(Action::requeue(resync))
        }
        Outcome::Applied { problem: Some((reason, message)), .. } => {
            warn!(app, reason, %message, "children applied, but the scaling policy cannot be used");
            Ok(Action::requeue(resync))
        }
        Outcome::Failed { reason, message } => {
            warn!(app, reason, %message, "cannot run this Celery app as specified");
            if reason == NAME_CONFLICT {
                // The conflicting object is not watched (it is not ours): look again, so
                // deleting or renaming it heals the app without an edit of the app.
                Ok(Action::requeue(deferred.unwrap_or(CONFLICT_RECHECK)))
            } else {
                Ok(deferred.map_or_else(Action::await_change, Action::requeue))
            }
        }
    }
}

/// What a `ConflictingAutoscaler` condition says: each HPA, the Deployment it scales, and what to
/// do about it.
fn conflict_message(foreign: &[apply::ForeignAutoscaler]) -> String {
    let each: Vec<String> = foreign
        .iter()
        .map(|f| {
            let pool = f.group.as_ref().map_or_else(|| "workerSpec".to_string(), |g| format!("worker group {g}"));
            format!("HorizontalPodAutoscaler {} scales Deployment {} ({pool})", f.autoscaler, f.deployment)
        })
        .collect();
    format!(
        "{}: two autoscalers would fight over its replicas, so the operator leaves them to the HPA; delete the          HPA (or its KEDA ScaledObject) to have the spec decide the count again",
        each.join("; ")
    )
}

/// Tells the autoscaler how `celery` scales now (`None`: its spec is invalid). NB: the
/// receiver lives as long as the controllers, so a failed send can only happen while they stop.
fn hand_off(ctx: &Context, celery: &Arc<Celery>, scaling: Option<(&Scaling, &[Scaling])>) {
    if let Some(handoff) = &ctx.handoff {
        let _ = handoff.send(Handoff::new(Arc::clone(celery), scaling));
    }
}

/// One event per condition that changed, when the change is worth one (see
/// [`status::event_for`]).
async fn publish_transitions(ctx: &Context, celery: &Celery, old: &[Condition], new: &[Condition]) {
    let reference = celery.object_ref(&());
    for c in status::transitions(old, new) {
        if let Some(type_) = status::event_for(c) {
            ctx.writer.event(&reference, type_, &c.reason, &c.message, "Reconcile").await;
        }
    }
}

/// Writes the status with server-side apply, and only when it changed: not when it matches
/// the object's, nor what this replica wrote a moment ago (the cache may not hold that yet).
/// A change that is only a rollout's progress waits until [`PROGRESS_WRITE`] after the last
/// write; `Some(wait)` then says when to reconcile again to write it.
async fn write_status(ctx: &Context, celery: &Celery, status: &CeleryStatus, app: &str) -> Result<Option<Duration>, Error> {
    if celery.status.as_ref().map(status::reconciler_part).as_ref() == Some(status) {
        return Ok(None);
    }
    let key = ObjectRef::from_obj(celery);
    let last = ctx.written.lock().expect("written status lock").get(&key).cloned();
    if let Some((at, written)) = last {
        let age = at.elapsed();
        if age < WRITTEN_TRUSTED && written == *status {
            return Ok(None);
        }
        if age < PROGRESS_WRITE && status::only_progress(&written, status) {
            return Ok(Some(PROGRESS_WRITE - age));
        }
    }
    ctx.writer.status(celery, status).await.map_err(|source| match source {
        WriteError::NotLeader => Error::NotLeader { app: app.to_string() },
        source => Error::Status { app: app.to_string(), source },
    })?;
    let mut written = ctx.written.lock().expect("written status lock");
    // Bounded like the failure counts: an entry forgotten costs at most one repeated write.
    if written.len() >= MAX_BACKOFFS && !written.contains_key(&key) {
        written.clear();
    }
    written.insert(key, (Instant::now(), status.clone()));
    Ok(None)
}

/// Retries a failed reconcile with exponential backoff: 1 s, 2 s, 4 s … up to 5 minutes.
pub fn error_policy(celery: Arc<Celery>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*celery);
    let mut failures = ctx.failures.lock().expect("failure map lock");
    // An app deleted while failing is never reconciled again to remove its entry: bound the
    // map instead (forgetting a count only shortens one backoff).
    if failures.len() >= MAX_BACKOFFS && !failures.contains_key(&key) {
        failures.clear();
    }
    let n = failures.entry(key).or_default();
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(8)).min(RESYNC);
    warn!(error = %crate::telemetry::chain(error), app = %celery.name_any(), retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}
