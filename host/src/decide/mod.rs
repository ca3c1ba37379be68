//! The scaling decision of one tick, as a pure function: the answers of an app's policies →
//! one answer ([`stabilize::combine`]) → scale-down damping ([`stabilize::Damper`]) → hold or
//! `fallbackReplicas` when no answer can be trusted. No I/O: the loop
//! ([`crate::autoscale::scaler`]) gathers the answers and acts on the [`Decision`], and
//! `celery-operator policy simulate` runs the same arithmetic.
//!
//! - [`stabilize`]: the bounds of the resource, the combining of several answers, the
//!   stabilisation window and gradual steps down.
//! - [`overrides`]: the annotations that hold the count, set it, or block one direction.
//! - [`schedule`]: time windows that override the bounds while they are active.
//! - [`scalein`]: which workers a scale-down removes (idle first), and whether it waits for
//!   busy ones.

pub mod overrides;
pub mod scalein;
pub mod schedule;
pub mod stabilize;

use crate::conditions::{METRICS_UNAVAILABLE, POLICY_DECIDING, POLICY_FAILED};
use crate::crd::Combine;
use stabilize::{Damper, Verdict, Vote};

/// One policy's answer, already within `minReplicas`/`maxReplicas`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Replicas within the bounds.
    pub bounded: u32,
    /// Replicas the policy asked for.
    pub proposed: u32,
    /// The policy's reason, with a note when the bounds changed it.
    pub reason: String,
    pub policy: String,
}

/// Whether a sample led to a decision, and if not why: the reason and message of the
/// `ScalingActive` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub reason: &'static str,
    pub message: String,
}

impl Health {
    /// The policies decide.
    pub fn ok(&self) -> bool {
        self.reason == POLICY_DECIDING
    }
}

/// What a decision may not go beyond: the resource's bounds and its fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
    /// Replicas to raise to while no answer can be trusted.
    pub fallback: Option<u32>,
}

/// The replica count for one tick and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub target: u32,
    pub health: Health,
    /// Why `target`, for the status, the event and the log.
    pub reason: String,
    /// What the chosen policy asked for; `None` when the count was held.
    pub proposed: Option<u32>,
    /// The policy that decided, or every selected policy when none could.
    pub policy: String,
    /// The count was held (or raised to the fallback) because no usable answer came.
    pub held: bool,
    /// The answer that won, within the bounds and before damping; `None` when held. A
    /// scale-down that waits for busy workers ends when this rises to the current count.
    pub recommended: Option<u32>,
}

/// One policy's part in a tick, in the spec's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Decided(Choice),
    /// The policy declined to decide this time (its reason began with `decline:`): no vote.
    Declined {
        policy: String,
        reason: String,
    },
    /// The policy, or the signal it needs, failed.
    Failed {
        policy: String,
        health: Health,
    },
}

impl Answer {
    fn vote(&self) -> Vote {
        match self {
            Answer::Decided(c) => Vote::Answer(c.bounded),
            Answer::Declined { .. } => Vote::Declined,
            Answer::Failed { .. } => Vote::Failed,
        }
    }
}

/// What each policy proposed, for the reason of a combined decision: `Max: queue-length 5
/// (won), cpu-memory 3, steps declined, load failed`.
fn proposals(answers: &[Answer], combine: Combine, winner: Option<usize>) -> String {
    let each: Vec<String> = answers
        .iter()
        .enumerate()
        .map(|(i, a)| match a {
            Answer::Decided(c) if Some(i) == winner => format!("{} {} (won)", c.policy, c.proposed),
            Answer::Decided(c) => format!("{} {}", c.policy, c.proposed),
            Answer::Declined { policy, .. } => format!("{policy} declined"),
            Answer::Failed { policy, .. } => format!("{policy} failed"),
        })
        .collect();
    format!("{combine}: {}", each.join(", "))
}

/// Decides the replica count at `now_ms` from `current` and one answer (or decline, or
/// failure) per selected policy, in the order of the spec. `policies` names them all, for a
/// held count.
///
/// The answers are combined as `combine` says; when some failed, the known ones may only
/// scale up; when none is usable the count holds, or rises to `fallbackReplicas`, and never
/// falls on missing data. When every policy declines, the count holds.
pub fn decide(
    now_ms: u64,
    current: u32,
    answers: &[Answer],
    damper: &mut Damper,
    bounds: Bounds,
    combine: Combine,
    policies: &str,
) -> Decision {
    let votes: Vec<Vote> = answers.iter().map(Answer::vote).collect();
    let failures: Vec<&Health> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Failed { health, .. } => Some(health),
            _ => None,
        })
        .collect();
    let declines: Vec<String> = answers
        .iter()
        .filter_map(|a| match a {
            Answer::Declined { policy, reason } => Some(format!("{policy}: {reason}")),
            _ => None,
        })
        .collect();
    let failed = || Health {
        reason: if failures.iter().all(|f| f.reason == METRICS_UNAVAILABLE) { METRICS_UNAVAILABLE } else { POLICY_FAILED },
        message: if failures.is_empty() {
            "no scaling policy is selected".into()
        } else {
            failures.iter().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; ")
        },
    };
    let ceiling = bounds.max.max(bounds.min);
    match stabilize::combine(current, &votes, combine) {
        Verdict::All(best) | Verdict::UpOnKnown(best) => {
            let Answer::Decided(choice) = &answers[best] else { unreachable!("combine picks an answer") };
            // NB: the damping of a scale-down never keeps the count above maxReplicas: a
            // lowered bound applies at once (the window still holds the answers of before).
            let target = damper.next(now_ms, current, choice.bounded).min(ceiling);
            let (health, mut reason) = if failures.is_empty() {
                (
                    Health { reason: POLICY_DECIDING, message: format!("{}: {}", choice.policy, choice.reason) },
                    choice.reason.clone(),
                )
            } else {
                // Scale up on what is known; the failure still shows.
                let health = failed();
                let reason = format!("{} (scaled up on the signals known; {})", choice.reason, health.message);
                (health, reason)
            };
            if answers.len() > 1 {
                reason = format!("{reason} [{}]", proposals(answers, combine, Some(best)));
            }
            if target < current && target == ceiling && choice.bounded == ceiling && ceiling < choice.proposed {
                reason = format!("{reason}; at most maxReplicas {ceiling}");
            }
            if target >= current && target < choice.bounded.min(ceiling) && choice.bounded > current {
                let (policy, asked) = (&choice.policy, choice.bounded);
                reason = match target - current {
                    0 => format!(
                        "{reason}; {policy} asked for {asked}, {} were added this period (scaleUp)",
                        damper.added_this_period()
                    ),
                    n => format!("{reason}; {policy} asked for {asked}, {n} may be added this period (scaleUp)"),
                };
            }
            Decision {
                target,
                health,
                reason,
                proposed: Some(choice.proposed),
                policy: choice.policy.clone(),
                held: false,
                recommended: Some(choice.bounded),
            }
        }
        Verdict::Hold if failures.is_empty() && !declines.is_empty() => {
            // Nobody wants to decide, and nothing is wrong: the count stays, within the bounds.
            let target = current.max(bounds.min).min(ceiling);
            let message = format!("every policy declined ({})", declines.join("; "));
            let reason = match target.cmp(&current) {
                std::cmp::Ordering::Greater => format!("raised to minReplicas {target}: {message}"),
                std::cmp::Ordering::Less => format!("lowered to maxReplicas {target}: {message}"),
                std::cmp::Ordering::Equal => format!("holding {current} workers: {message}"),
            };
            let health = Health { reason: POLICY_DECIDING, message };
            Decision { target, health, reason, proposed: None, policy: policies.to_string(), held: true, recommended: None }
        }
        Verdict::Hold => {
            let health = failed();
            let target = bounds.fallback.map_or(current, |f| f.clamp(bounds.min, ceiling).max(current));
            // Missing data never lowers the count, but the user's bounds move it (a schedule's
            // raised minimum too: adding workers is safe without figures).
            let target = target.max(bounds.min).min(ceiling);
            let reason = if target > current && bounds.fallback.is_none_or(|f| target > f) {
                format!("raised to minReplicas {target}: {}", health.message)
            } else if target > current {
                format!("raised to fallbackReplicas {target}: {}", health.message)
            } else if target < current {
                format!("lowered to maxReplicas {target}, no lower: {}", health.message)
            } else {
                format!("holding {current} workers: {}", health.message)
            };
            Decision { target, health, reason, proposed: None, policy: policies.to_string(), held: true, recommended: None }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const BOUNDS: Bounds = Bounds { min: 1, max: 20, fallback: None };

    fn answer(policy: &str, replicas: u32) -> Answer {
        Answer::Decided(Choice {
            bounded: replicas,
            proposed: replicas,
            reason: format!("{policy} wants {replicas}"),
            policy: policy.into(),
        })
    }

    fn failure(reason: &'static str, message: &str) -> Answer {
        Answer::Failed { policy: "failing".into(), health: Health { reason, message: message.into() } }
    }

    fn declined(policy: &str) -> Answer {
        Answer::Declined { policy: policy.into(), reason: format!("{policy} has no opinion") }
    }

    /// A damper that has run for a while at `current` workers, long enough that its window
    /// and step period have passed.
    fn settled(current: u32) -> (Damper, u64) {
        let mut damper = Damper::new(Duration::from_secs(60), 50, Duration::from_secs(15));
        damper.seed(0, current, None);
        (damper, 120_000)
    }

    /// A lowered maxReplicas applies at once, whatever the window holds, also while the
    /// figures are missing (which alone never lower the count).
    #[test]
    fn a_lowered_max_applies_at_once() {
        let (mut damper, now) = settled(5);
        // The window remembers 5; the policy still wants 5, bounded to the new maximum 2.
        let _ = decide(now, 5, &[answer("queue", 5)], &mut damper, BOUNDS, Combine::Max, "queue");
        let bounds = Bounds { min: 1, max: 2, fallback: None };
        let d = decide(
            now + 1000,
            5,
            &[Answer::Decided(Choice { bounded: 2, proposed: 5, reason: "5 wanted".into(), policy: "queue".into() })],
            &mut damper,
            bounds,
            Combine::Max,
            "queue",
        );
        assert_eq!(d.target, 2, "{d:?}");
        let held =
            decide(now + 2000, 5, &[failure(METRICS_UNAVAILABLE, "broker down")], &mut damper, bounds, Combine::Max, "queue");
        assert_eq!((held.target, held.held), (2, true), "{held:?}");
        assert!(held.reason.starts_with("lowered to maxReplicas 2"), "{}", held.reason);
    }

    /// A minimum raised (by a schedule) while the figures are missing still adds workers:
    /// missing data never lowers the count, and adding them is safe.
    #[test]
    fn a_raised_minimum_applies_while_held() {
        let (mut damper, now) = settled(1);
        let bounds = Bounds { min: 3, max: 6, fallback: None };
        let d = decide(now, 1, &[failure(METRICS_UNAVAILABLE, "broker down")], &mut damper, bounds, Combine::Max, "queue");
        assert_eq!((d.target, d.held), (3, true), "{d:?}");
        assert_eq!(d.reason, "raised to minReplicas 3: broker down");
        let with_fallback = Bounds { fallback: Some(5), ..bounds };
        let d = decide(now, 1, &[failure(METRICS_UNAVAILABLE, "broker down")], &mut damper, with_fallback, Combine::Max, "queue");
        assert_eq!(d.target, 5);
        assert!(d.reason.starts_with("raised to fallbackReplicas 5"), "{}", d.reason);
    }

    #[test]
    fn a_limited_scale_up_says_what_was_asked_and_what_was_added() {
        let (mut damper, now) = settled(2);
        let limit = stabilize::UpLimit { max_pods: Some(8), max_percent: None, period: Duration::from_secs(60) };
        damper.set_scale_up(Some(limit));
        let bounds = Bounds { min: 1, max: 50, fallback: None };
        let d = decide(now, 2, &[answer("queue", 40)], &mut damper, bounds, Combine::Max, "queue");
        assert_eq!(d.target, 10, "{d:?}");
        assert_eq!(d.reason, "queue wants 40; queue asked for 40, 8 may be added this period (scaleUp)");
        damper.scaled_up(now, 8);
        let d = decide(now + 1000, 10, &[answer("queue", 40)], &mut damper, bounds, Combine::Max, "queue");
        assert_eq!(d.target, 10, "{d:?}");
        assert_eq!(d.reason, "queue wants 40; queue asked for 40, 8 were added this period (scaleUp)");
        assert_eq!(d.recommended, Some(40), "what the policy wants stays known");
    }

    #[test]
    fn the_largest_answer_decides_and_scaling_up_is_immediate() {
        let (mut damper, now) = settled(2);
        let d = decide(now, 2, &[answer("queue", 6), answer("cpu", 3)], &mut damper, BOUNDS, Combine::Max, "queue+cpu");
        assert_eq!((d.target, d.proposed, d.policy.as_str(), d.held), (6, Some(6), "queue", false));
        assert!(d.health.ok());
        assert_eq!(d.health.message, "queue: queue wants 6");
    }

    #[test]
    fn scaling_down_goes_in_steps_after_the_window() {
        let (mut damper, now) = settled(10);
        let d = decide(now, 10, &[answer("queue", 1)], &mut damper, BOUNDS, Combine::Max, "queue");
        // Half of the 10 workers at most in one step.
        assert_eq!(d.target, 5);
        // The next step waits for the step period.
        let d = decide(now + 1_000, 5, &[answer("queue", 1)], &mut damper, BOUNDS, Combine::Max, "queue");
        assert_eq!(d.target, 5);
        let d = decide(now + 16_000, 5, &[answer("queue", 1)], &mut damper, BOUNDS, Combine::Max, "queue");
        assert_eq!(d.target, 2);
    }

    #[test]
    fn a_failed_signal_never_scales_down_but_the_known_ones_may_scale_up() {
        let (mut damper, now) = settled(4);
        let down = [answer("cpu", 1), failure(METRICS_UNAVAILABLE, "broker: refused")];
        let d = decide(now, 4, &down, &mut damper, BOUNDS, Combine::Max, "queue+cpu");
        assert_eq!((d.target, d.held, d.health.reason), (4, true, METRICS_UNAVAILABLE));
        assert_eq!(d.reason, "holding 4 workers: broker: refused");

        let up = [answer("cpu", 9), failure(METRICS_UNAVAILABLE, "broker: refused")];
        let d = decide(now, 4, &up, &mut damper, BOUNDS, Combine::Max, "queue+cpu");
        assert_eq!((d.target, d.held, d.health.reason), (9, false, METRICS_UNAVAILABLE));
        assert!(d.reason.contains("scaled up on the signals known"), "{}", d.reason);
    }

    #[test]
    fn with_no_answer_the_count_holds_or_rises_to_the_fallback_within_bounds() {
        let (mut damper, now) = settled(3);
        let failed = [failure(POLICY_FAILED, "queue: trapped")];
        let d = decide(now, 3, &failed, &mut damper, BOUNDS, Combine::Max, "queue");
        assert_eq!((d.target, d.proposed, d.health.reason), (3, None, POLICY_FAILED));

        let d = decide(now, 3, &failed, &mut damper, Bounds { fallback: Some(8), ..BOUNDS }, Combine::Max, "queue");
        assert_eq!((d.target, d.reason.as_str()), (8, "raised to fallbackReplicas 8: queue: trapped"));
        // A fallback above maxReplicas is held to it; one below the current count lowers nothing.
        let d = decide(now, 3, &failed, &mut damper, Bounds { min: 1, max: 5, fallback: Some(50) }, Combine::Max, "queue");
        assert_eq!(d.target, 5);
        let d = decide(now, 3, &failed, &mut damper, Bounds { fallback: Some(1), ..BOUNDS }, Combine::Max, "queue");
        assert_eq!(d.target, 3);
    }

    #[test]
    fn a_mix_of_failures_is_a_policy_failure_and_no_policy_at_all_holds() {
        let (mut damper, now) = settled(2);
        let mixed = [failure(METRICS_UNAVAILABLE, "broker down"), failure(POLICY_FAILED, "cpu: trapped")];
        let d = decide(now, 2, &mixed, &mut damper, BOUNDS, Combine::Max, "queue+cpu");
        assert_eq!((d.health.reason, d.health.message.as_str()), (POLICY_FAILED, "broker down; cpu: trapped"));
        assert_eq!(d.policy, "queue+cpu");

        let d = decide(now, 2, &[], &mut damper, BOUNDS, Combine::Max, "");
        assert_eq!((d.target, d.held, d.health.message.as_str()), (2, true, "no scaling policy is selected"));
    }

    /// Several policies: the reason names the one that won and what each proposed.
    #[test]
    fn a_combined_reason_names_the_winner_and_every_proposal() {
        let (mut damper, now) = settled(2);
        let answers = [declined("steps"), answer("queue", 6), answer("cpu", 3), failure(METRICS_UNAVAILABLE, "broker down")];
        let d = decide(now, 2, &answers, &mut damper, BOUNDS, Combine::Max, "steps+queue+cpu+failing");
        assert_eq!((d.target, d.policy.as_str()), (6, "queue"));
        assert_eq!(
            d.reason,
            "queue wants 6 (scaled up on the signals known; broker down) \
             [Max: steps declined, queue 6 (won), cpu 3, failing failed]"
        );

        let answers = [declined("steps"), answer("queue", 1), answer("cpu", 3)];
        let (mut damper, now) = settled(2);
        let d = decide(now, 2, &answers, &mut damper, BOUNDS, Combine::First, "steps+queue+cpu");
        assert_eq!((d.target, d.policy.as_str()), (1, "queue"));
        assert_eq!(d.reason, "queue wants 1 [First: steps declined, queue 1 (won), cpu 3]");
        let (mut damper, now) = settled(2);
        let d = decide(now, 2, &answers[1..], &mut damper, BOUNDS, Combine::Min, "queue+cpu");
        assert_eq!((d.target, d.reason.as_str()), (1, "queue wants 1 [Min: queue 1 (won), cpu 3]"));
    }

    /// When every policy declines, nothing failed: the count holds and the condition stays
    /// healthy.
    #[test]
    fn when_every_policy_declines_the_count_holds_without_a_failure() {
        let (mut damper, now) = settled(2);
        let d = decide(now, 2, &[declined("a"), declined("b")], &mut damper, BOUNDS, Combine::First, "a+b");
        assert_eq!((d.target, d.held, d.health.reason), (2, true, POLICY_DECIDING));
        assert_eq!(d.reason, "holding 2 workers: every policy declined (a: a has no opinion; b: b has no opinion)");
        let d = decide(now, 0, &[declined("a")], &mut damper, BOUNDS, Combine::First, "a");
        assert_eq!((d.target, d.held), (1, true), "the bounds still apply: {d:?}");
    }
}
