//! The status a user reads, as pure functions, in two parts with one owner each:
//!
//! - the reconciler's ([`compute`]): `Ready`, `Progressing` and `Degraded`, the replica
//!   counts and the policy, from what the apply step saw;
//! - the autoscaler's ([`autoscaler_part`]): `queueBacklog`, `autoscaler` and `ScalingActive`,
//!   from the last tick.
//!
//! Every condition is built by [`condition`], which keeps `lastTransitionTime` while the
//! status is unchanged, and [`transitions`] tells which conditions changed, so events are
//! emitted on transitions only.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use kube::runtime::events::EventType;

use crate::conditions::*;
use crate::crd::{AutoscalerStatus, BeatStatus, Celery, CeleryStatus, GroupStatus, ReplicaStatus};
use crate::decide::Health;
use crate::spec::validate::Scaling;

/// Longest condition message, in characters.
const MAX_MESSAGE: usize = 1024;

/// What a reconcile ended with, as far as the status is concerned.
pub enum Outcome<'a> {
    /// The children were applied; these are the Deployments as the API server returned them.
    Applied {
        scaling: &'a Scaling,
        worker: &'a Deployment,
        /// Each of `spec.workerGroups`, in its order.
        groups: Vec<GroupOutcome<'a>>,
        beat: Option<&'a Deployment>,
        flower: Option<&'a Deployment>,
        flower_service: Option<String>,
        /// A problem that did not stop the children from being applied (a policy that cannot
        /// be used): a `Degraded` reason and its message. `Ready` is False with it too.
        problem: Option<(&'static str, String)>,
    },
    /// The spec failed validation, or the API server refused a child: `reason` is one of the
    /// `Degraded` reasons and `message` says what to fix.
    Failed { reason: &'static str, message: String },
}

/// A worker group after the apply: its name, its Deployment as the API server returned it, and
/// how it scales.
pub struct GroupOutcome<'a> {
    pub name: &'a str,
    pub deployment: &'a Deployment,
    pub scaling: &'a Scaling,
}

/// The new status of `celery` after a reconcile.
pub fn compute(celery: &Celery, outcome: &Outcome<'_>, now: &Time) -> CeleryStatus {
    let old = celery.status.clone().unwrap_or_default();
    let generation = celery.metadata.generation;
    let conditions_at = |ready: (bool, &str, String), progressing: (bool, &str, String), degraded: (bool, &str, String)| {
        [(READY, ready), (PROGRESSING, progressing), (DEGRADED, degraded)]
            .into_iter()
            .map(|(type_, (status, reason, message))| condition(&old.conditions, type_, status, reason, message, generation, now))
            .collect::<Vec<_>>()
    };

    match outcome {
        Outcome::Failed { reason, message } => CeleryStatus {
            observed_generation: generation,
            conditions: conditions_at(
                (false, reason, message.clone()),
                (false, reason, "the change cannot be rolled out until the problem is fixed".into()),
                (true, reason, message.clone()),
            ),
            workers: old.workers,
            replicas: old.replicas,
            worker_groups: old.worker_groups.into_iter().map(|g| GroupStatus { autoscaler: None, ..g }).collect(),
            beat: old.beat,
            flower: old.flower,
            flower_service: old.flower_service,
            policy: old.policy,
            queue_backlog: None,
            autoscaler: None,
        },
        Outcome::Applied { scaling, worker, groups, beat, flower, flower_service, problem } => {
            let pools = std::iter::once((None, *worker)).chain(groups.iter().map(|g| (Some(g.name), g.deployment)));
            let mut workers = ReplicaStatus::default();
            for (_, d) in pools.clone() {
                let r = replicas(d);
                workers.desired += r.desired;
                workers.ready += r.ready;
                workers.updated += r.updated;
            }
            let flower_replicas = flower.map(replicas);
            let stuck = pools.clone().map(|(_, d)| d).chain(*flower).chain(*beat).find_map(progress_deadline_exceeded);

            let unready_pool = pools.clone().find(|(_, d)| !converged(d));
            let flower_ok = flower.is_none_or(converged);
            let beat_ok = beat.is_none_or(converged);
            // NB: a problem comes first. Its children run, but an app whose spec cannot be
            // acted on (no usable policy: the count is held) is not what was asked for, and
            // `Ready=True` beside `Degraded=True` would contradict itself.
            let ready = if let Some((reason, message)) = problem {
                (false, *reason, message.clone())
            } else if let Some((group, d)) = unready_pool {
                let r = replicas(d);
                let message = match group {
                    None => format!("{}/{} worker replicas ready", r.ready, r.desired),
                    Some(g) => format!("worker group {g}: {}/{} replicas ready", r.ready, r.desired),
                };
                (false, WORKERS_NOT_READY, message)
            } else if let (false, Some(f)) = (flower_ok, &flower_replicas) {
                (false, FLOWER_NOT_READY, format!("{}/{} Flower replicas ready", f.ready, f.desired))
            } else if !beat_ok {
                (false, BEAT_NOT_READY, "the beat pod is not ready".to_string())
            } else {
                (true, ALL_REPLICAS_READY, format!("{} worker replicas ready", workers.ready))
            };
            let progressing = if unready_pool.is_none() && flower_ok && beat_ok {
                (false, ROLLOUT_COMPLETE, "the children run the current spec".to_string())
            } else {
                (true, ROLLING_OUT, "waiting for the Deployments to roll out".to_string())
            };
            let degraded = match (problem, stuck) {
                (Some((reason, message)), _) => (true, *reason, message.clone()),
                (None, Some(message)) => (true, ROLLOUT_STUCK, message),
                (None, None) => (false, AS_EXPECTED, "no problem found".to_string()),
            };
            CeleryStatus {
                observed_generation: generation,
                conditions: conditions_at(ready, progressing, degraded),
                workers: Some(workers),
                replicas: Some(worker.status.as_ref().and_then(|s| s.replicas).unwrap_or(0)),
                worker_groups: groups
                    .iter()
                    .map(|g| GroupStatus {
                        name: g.name.to_string(),
                        workers: Some(replicas(g.deployment)),
                        policy: Some(g.scaling.policy_label()),
                        autoscaler: None,
                    })
                    .collect(),
                beat: beat.map(beat_status),
                flower: flower_replicas,
                flower_service: flower_service.clone(),
                policy: Some(scaling.policy_label()),
                queue_backlog: None,
                autoscaler: None,
            }
        }
    }
}

/// Beat's readiness, and when its pod last became ready: the time the Deployment last became
/// available (one pod, replaced with `Recreate`: it is unavailable while its pod starts or
/// restarts).
fn beat_status(d: &Deployment) -> BeatStatus {
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Available" && c.status == "True"));
    BeatStatus { ready: replicas(d).ready >= 1, last_restart: available.and_then(|c| c.last_transition_time.clone()) }
}

/// The part of a status the reconciler writes: everything but what the autoscaler writes
/// (`queueBacklog`, `autoscaler` and the `ScalingActive` condition) under its own field
/// manager. The reconciler compares and applies only this part, so neither overwrites the
/// other with a stale copy.
pub fn reconciler_part(status: &CeleryStatus) -> CeleryStatus {
    CeleryStatus {
        conditions: status
            .conditions
            .iter()
            .filter(|c| [READY, PROGRESSING, DEGRADED].contains(&c.type_.as_str()))
            .cloned()
            .collect(),
        queue_backlog: None,
        autoscaler: None,
        worker_groups: status.worker_groups.iter().map(|g| GroupStatus { autoscaler: None, ..g.clone() }).collect(),
        ..status.clone()
    }
}

/// Whether `new` differs from `old` only in how far a rollout has come: the replica counts, and
/// the condition messages and times that quote them, with every condition's status and reason
/// as before. Such a change can wait a moment and be written together with the next one.
pub fn only_progress(old: &CeleryStatus, new: &CeleryStatus) -> bool {
    let same_conditions = old.conditions.len() == new.conditions.len()
        && old
            .conditions
            .iter()
            .zip(&new.conditions)
            .all(|(a, b)| (&a.type_, &a.status, &a.reason) == (&b.type_, &b.status, &b.reason));
    same_conditions
        && old.observed_generation == new.observed_generation
        && old.flower_service == new.flower_service
        && old.policy == new.policy
        && old.queue_backlog == new.queue_backlog
        && old.autoscaler == new.autoscaler
}

/// The conditions whose status or reason differ from before: the only ones worth an event.
pub fn transitions<'a>(old: &[Condition], new: &'a [Condition]) -> Vec<&'a Condition> {
    new.iter().filter(|c| !old.iter().any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)).collect()
}

/// Which changed conditions are worth an event, and of which type: Warning when something
/// broke (`Degraded` True), Normal when it healed (`Ready` True).
pub fn event_for(c: &Condition) -> Option<EventType> {
    match (c.type_.as_str(), c.status.as_str()) {
        (DEGRADED, "True") => Some(EventType::Warning),
        (READY, "True") => Some(EventType::Normal),
        _ => None,
    }
}

/// Whether the status holds what only an autoscaling loop writes.
pub fn has_autoscaler_part(status: Option<&CeleryStatus>) -> bool {
    status.is_some_and(|s| {
        s.autoscaler.is_some() || s.queue_backlog.is_some() || s.conditions.iter().any(|c| c.type_ == SCALING_ACTIVE)
    })
}

/// `ScalingActive` from the health of the last tick; `old` holds the condition as last written.
pub fn scaling_condition(old: &[Condition], health: &Health, generation: Option<i64>, now: &Time) -> Condition {
    let message = crate::policy::truncate(&health.message, MAX_MESSAGE);
    condition(old, SCALING_ACTIVE, health.ok(), health.reason, message, generation, now)
}

/// The autoscaler's part of the status: the total backlog, its figures and last decision, and
/// `ScalingActive`.
pub fn autoscaler_part(backlog: Option<i64>, autoscaler: &AutoscalerStatus, scaling: &Condition) -> serde_json::Value {
    serde_json::json!({
        "queueBacklog": backlog,
        "autoscaler": autoscaler,
        "conditions": [scaling],
    })
}

/// A worker group's autoscaler part of the status, which the group's loop applies as its own
/// field manager: its entry of `workerGroups` (merged by name with the reconciler's) holding
/// what it measured and decided. A group's health shows in its decision and its events, not in
/// a condition (`ScalingActive` is `workerSpec`'s).
pub fn group_autoscaler_part(group: &str, autoscaler: &AutoscalerStatus) -> serde_json::Value {
    serde_json::json!({ "workerGroups": [{ "name": group, "autoscaler": autoscaler }] })
}

/// A condition of `type_`, keeping the transition time of `old`'s condition of that type
/// while its status is the same.
pub fn condition(
    old: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn replicas(d: &Deployment) -> ReplicaStatus {
    let status = d.status.as_ref();
    ReplicaStatus {
        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
        ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
        updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
    }
}

/// The Deployment controller has seen the current template and every replica runs it, ready.
fn converged(d: &Deployment) -> bool {
    let r = replicas(d);
    let status = d.status.as_ref();
    let seen = status.and_then(|s| s.observed_generation) >= d.metadata.generation;
    let total = status.and_then(|s| s.replicas).unwrap_or(0);
    seen && r.ready >= r.desired && r.updated >= r.desired && total == r.desired
}

fn progress_deadline_exceeded(d: &Deployment) -> Option<String> {
    let cond = d
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))?;
    Some(format!(
        "Deployment {}: {}",
        d.metadata.name.as_deref().unwrap_or("?"),
        cond.message.as_deref().unwrap_or("progress deadline exceeded")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::validate::Scaling;

    fn celery_with_status(conditions: &str) -> Celery {
        serde_yaml::from_str(&format!(
            "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: demo, namespace: default, generation: 3}}
spec:
  common: {{appName: demo, celeryApp: app, image: i}}
status:
  conditions: {conditions}
"
        ))
        .unwrap()
    }

    fn deployment(yaml: &str) -> Deployment {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    const READY_WORKERS: &str = "
metadata: {name: demo-celery-worker, generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 2, readyReplicas: 2, updatedReplicas: 2}
";

    fn get<'a>(s: &'a CeleryStatus, type_: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_when_every_replica_is_ready() {
        let celery = celery_with_status("[]");
        let worker = deployment(READY_WORKERS);
        let scaling = Scaling::Fixed { replicas: 2 };
        let outcome = Outcome::Applied {
            scaling: &scaling,
            worker: &worker,
            groups: Vec::new(),
            beat: None,
            flower: None,
            flower_service: None,
            problem: None,
        };
        let s = compute(&celery, &outcome, &time("2026-01-01T00:00:00Z"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(get(&s, READY).status, "True");
        assert_eq!(get(&s, PROGRESSING).reason, ROLLOUT_COMPLETE);
        assert_eq!(get(&s, DEGRADED).status, "False");
        assert_eq!(s.workers, Some(ReplicaStatus { desired: 2, ready: 2, updated: 2 }));
        assert_eq!(s.policy.as_deref(), Some("none"));
    }

    #[test]
    fn a_replica_count_that_moves_is_only_progress_a_condition_that_flips_is_not() {
        let celery = celery_with_status("[]");
        let scaling = Scaling::Fixed { replicas: 2 };
        let status_with = |ready: i32, generation: i64| {
            let worker = deployment(&format!(
                "
metadata: {{name: w, generation: {generation}}}
spec: {{replicas: 2, selector: {{}}, template: {{}}}}
status: {{observedGeneration: {generation}, replicas: 2, readyReplicas: {ready}, updatedReplicas: 2}}
"
            ));
            let outcome = Outcome::Applied {
                scaling: &scaling,
                worker: &worker,
                groups: Vec::new(),
                beat: None,
                flower: None,
                flower_service: None,
                problem: None,
            };
            compute(&celery, &outcome, &time("2026-01-01T00:00:00Z"))
        };
        let (none, one, two) = (status_with(0, 1), status_with(1, 1), status_with(2, 1));
        assert!(only_progress(&none, &one), "0/2 → 1/2 ready: the counts and the message move");
        assert!(!only_progress(&one, &two), "1/2 → 2/2: Ready turns True");
        assert!(!only_progress(&one, &CeleryStatus { policy: Some("other".into()), ..one.clone() }));
        assert!(!only_progress(&one, &CeleryStatus { observed_generation: Some(4), ..one.clone() }));
    }

    #[test]
    fn rolling_out_until_the_controller_catches_up() {
        let celery = celery_with_status("[]");
        let worker = deployment(
            "
metadata: {name: w, generation: 3}
spec: {replicas: 3, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 3, readyReplicas: 3, updatedReplicas: 1}
",
        );
        let flower = deployment(READY_WORKERS);
        let scaling = Scaling::Fixed { replicas: 3 };
        let outcome = Outcome::Applied {
            scaling: &scaling,
            worker: &worker,
            groups: Vec::new(),
            beat: None,
            flower: Some(&flower),
            flower_service: Some("f".into()),
            problem: None,
        };
        let s = compute(&celery, &outcome, &time("2026-01-01T00:00:00Z"));
        assert_eq!(get(&s, READY).reason, WORKERS_NOT_READY);
        assert_eq!(get(&s, PROGRESSING).status, "True");
        assert_eq!(s.flower_service.as_deref(), Some("f"));
    }

    #[test]
    fn stuck_rollout_is_degraded() {
        let celery = celery_with_status("[]");
        let worker = deployment(
            "
metadata: {name: demo-celery-worker, generation: 1}
spec: {replicas: 1, selector: {}, template: {}}
status:
  observedGeneration: 1
  conditions: [{type: Progressing, status: 'False', reason: ProgressDeadlineExceeded, message: 'ReplicaSet has timed out progressing.'}]
",
        );
        let scaling = Scaling::Fixed { replicas: 1 };
        let outcome = Outcome::Applied {
            scaling: &scaling,
            worker: &worker,
            groups: Vec::new(),
            beat: None,
            flower: None,
            flower_service: None,
            problem: None,
        };
        let s = compute(&celery, &outcome, &time("2026-01-01T00:00:00Z"));
        let d = get(&s, DEGRADED);
        assert_eq!((d.status.as_str(), d.reason.as_str()), ("True", ROLLOUT_STUCK));
        assert!(d.message.contains("demo-celery-worker"), "{}", d.message);
    }

    /// An app whose policy cannot be used still gets its children, but it is not Ready:
    /// `Ready=True` beside `Degraded=True` would contradict itself.
    #[rstest::rstest]
    #[case::unknown_policy(INVALID_POLICY)]
    #[case::bad_settings(INVALID_SETTINGS)]
    fn a_policy_problem_is_not_ready(#[case] reason: &'static str) {
        let celery = celery_with_status("[]");
        let worker = deployment(READY_WORKERS);
        let scaling = Scaling::Fixed { replicas: 2 };
        let problem = Some((reason, "spec.autoscaling: no policy named no-such".to_string()));
        let outcome = Outcome::Applied {
            scaling: &scaling,
            worker: &worker,
            groups: Vec::new(),
            beat: None,
            flower: None,
            flower_service: None,
            problem,
        };
        let s = compute(&celery, &outcome, &time("2026-01-01T00:00:00Z"));
        let (ready, degraded) = (get(&s, READY), get(&s, DEGRADED));
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason));
        assert!(ready.message.contains("no-such"), "{}", ready.message);
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reason));
        assert_eq!(s.workers, Some(ReplicaStatus { desired: 2, ready: 2, updated: 2 }), "the counts are still reported");
    }

    #[test]
    fn failure_keeps_last_counts_and_names_the_problem() {
        let mut celery = celery_with_status("[]");
        celery.status.as_mut().unwrap().workers = Some(ReplicaStatus { desired: 2, ready: 2, updated: 2 });
        let outcome = Outcome::Failed { reason: INVALID_SPEC, message: "spec.workerSpec.resources.requests.cpu: bad".into() };
        let s = compute(&celery, &outcome, &time("2026-01-01T00:00:00Z"));
        assert_eq!(get(&s, DEGRADED).reason, INVALID_SPEC);
        assert!(get(&s, READY).message.contains("requests.cpu"));
        assert_eq!(s.workers.unwrap().ready, 2);
    }

    #[test]
    fn transition_time_moves_only_on_change_and_events_follow_transitions() {
        let before = "[{type: Ready, status: 'True', reason: AllReplicasReady, message: m, lastTransitionTime: '2025-01-01T00:00:00Z'},
                       {type: Degraded, status: 'False', reason: AsExpected, message: m, lastTransitionTime: '2025-01-01T00:00:00Z'}]";
        let celery = celery_with_status(before);
        let worker = deployment(READY_WORKERS);
        let scaling = Scaling::Fixed { replicas: 2 };
        let now = time("2026-06-01T00:00:00Z");
        let outcome = Outcome::Applied {
            scaling: &scaling,
            worker: &worker,
            groups: Vec::new(),
            beat: None,
            flower: None,
            flower_service: None,
            problem: None,
        };
        let s = compute(&celery, &outcome, &now);
        assert_eq!(get(&s, READY).last_transition_time, time("2025-01-01T00:00:00Z"));
        let old = &celery.status.as_ref().unwrap().conditions;
        let changed: Vec<_> = transitions(old, &s.conditions).iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(changed, [PROGRESSING], "only the condition that was absent before");

        let failed = Outcome::Failed { reason: INVALID_SPEC, message: "x".into() };
        let s2 = compute(&celery, &failed, &now);
        assert_eq!(get(&s2, READY).last_transition_time, now);
        let changed: Vec<_> = transitions(old, &s2.conditions).iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(changed, [READY, PROGRESSING, DEGRADED]);
    }
}
