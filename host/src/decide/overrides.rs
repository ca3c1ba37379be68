//! Manual overrides of the autoscaler, as annotations on the `Celery` resource (the names KEDA
//! users know, under the operator's prefix): hold the count, set and hold one, or block one
//! direction. Pure: parsed from the annotations and applied to a [`Decision`].
//!
//! The policies are still asked while an override holds, so the decision's reason says what
//! they would do; the count is what the annotation says. An override shows in `ScalingActive`
//! (reason `Paused`) and, through the loop, in one event when it starts and one when it ends.

use std::collections::BTreeMap;

use super::{Decision, Health};
use crate::conditions::PAUSED;

/// Holds the replica count where it is.
pub const PAUSED_ANNOTATION: &str = "celeryproject.org/autoscaling-paused";
/// Sets the replica count to its value and holds it there.
pub const PAUSED_REPLICAS_ANNOTATION: &str = "celeryproject.org/paused-replicas";
/// Blocks scaling down; the policies still scale up.
pub const PAUSED_SCALE_IN_ANNOTATION: &str = "celeryproject.org/paused-scale-in";
/// Blocks scaling up; the policies still scale down.
pub const PAUSED_SCALE_OUT_ANNOTATION: &str = "celeryproject.org/paused-scale-out";

/// The most workers `paused-replicas` may ask for (the CRD's ceiling of a replica count).
const MAX_REPLICAS: u32 = crate::crd::MAX_WORKER_REPLICAS as u32;

/// The overrides an app's annotations ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Override {
    /// `paused-replicas`, else `autoscaling-paused` (`Some(None)`: hold the current count).
    hold: Option<Option<u32>>,
    no_scale_in: bool,
    no_scale_out: bool,
}

impl Override {
    /// The overrides in `annotations`, or why one cannot be read (its value is quoted: it is
    /// the user's, and not secret). A switch is on with `"true"` (any case), off otherwise.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Self, String> {
        let on = |key: &str| annotations.get(key).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let replicas = match annotations.get(PAUSED_REPLICAS_ANNOTATION) {
            None => None,
            Some(value) => match value.trim().parse::<u32>() {
                Ok(n) if n <= MAX_REPLICAS => Some(n),
                _ => {
                    return Err(format!(
                        "annotation {PAUSED_REPLICAS_ANNOTATION}: {value:?} is not a replica count from 0 to {MAX_REPLICAS}"
                    ));
                }
            },
        };
        let hold = match (replicas, on(PAUSED_ANNOTATION)) {
            (Some(n), _) => Some(Some(n)),
            (None, true) => Some(None),
            (None, false) => None,
        };
        Ok(Self { hold, no_scale_in: on(PAUSED_SCALE_IN_ANNOTATION), no_scale_out: on(PAUSED_SCALE_OUT_ANNOTATION) })
    }

    /// Whether the count is held (the damping starts afresh from it when the hold ends).
    pub fn holds(&self) -> bool {
        self.hold.is_some()
    }

    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }

    /// `decision` as the overrides allow it, from `current` workers.
    pub fn apply(&self, current: u32, decision: Decision) -> Decision {
        let wanted = decision.target;
        let what = match decision.proposed {
            Some(_) => format!("{} would have {wanted}: {}", decision.policy, decision.reason),
            None => decision.reason.clone(),
        };
        let (target, message) = match (self.hold, wanted.cmp(&current)) {
            (Some(Some(n)), _) => (n, format!("{n} workers set by annotation {PAUSED_REPLICAS_ANNOTATION}")),
            (Some(None), _) => (current, format!("{current} workers held by annotation {PAUSED_ANNOTATION}")),
            (None, std::cmp::Ordering::Less) if self.no_scale_in => {
                (current, format!("scaling down blocked by annotation {PAUSED_SCALE_IN_ANNOTATION}"))
            }
            (None, std::cmp::Ordering::Greater) if self.no_scale_out => {
                (current, format!("scaling up blocked by annotation {PAUSED_SCALE_OUT_ANNOTATION}"))
            }
            (None, _) if self.no_scale_in || self.no_scale_out => {
                let blocked = if self.no_scale_in { PAUSED_SCALE_IN_ANNOTATION } else { PAUSED_SCALE_OUT_ANNOTATION };
                // Nothing blocked this tick; the override still stands, and shows.
                return Decision { health: paused(format!("annotation {blocked} is set")), ..decision };
            }
            (None, _) => return decision,
        };
        Decision {
            target,
            // NB: the condition's message leaves out what the policies would do, which moves with
            // every sample: a status write per sample for nothing.
            health: paused(message.clone()),
            reason: format!("{message} ({what})"),
            held: false,
            recommended: self.hold.is_none().then_some(decision.recommended).flatten(),
            ..decision
        }
    }
}

fn paused(message: String) -> Health {
    Health { reason: PAUSED, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::POLICY_DECIDING;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn wants(target: u32) -> Decision {
        Decision {
            target,
            health: Health { reason: POLICY_DECIDING, message: "queue-length: 30 waiting".into() },
            reason: "30 waiting".into(),
            proposed: Some(target),
            policy: "queue-length".into(),
            held: false,
            recommended: Some(target),
        }
    }

    #[test]
    fn no_annotation_changes_nothing() {
        let none = Override::from_annotations(&annotations(&[("other", "true"), (PAUSED_ANNOTATION, "false")])).unwrap();
        assert!(none.is_none());
        assert_eq!(none.apply(2, wants(5)), wants(5));
    }

    #[test]
    fn paused_holds_and_says_what_the_policy_would_do() {
        let o = Override::from_annotations(&annotations(&[(PAUSED_ANNOTATION, "True")])).unwrap();
        assert!(o.holds());
        let d = o.apply(2, wants(5));
        assert_eq!((d.target, d.health.reason, d.recommended), (2, PAUSED, None));
        assert_eq!(
            d.reason,
            "2 workers held by annotation celeryproject.org/autoscaling-paused (queue-length would have 5: 30 waiting)"
        );
    }

    #[test]
    fn paused_replicas_sets_the_count_whatever_the_policy_says() {
        let o = Override::from_annotations(&annotations(&[(PAUSED_REPLICAS_ANNOTATION, " 7 "), (PAUSED_ANNOTATION, "true")]))
            .unwrap();
        assert_eq!(o.apply(2, wants(5)).target, 7);
        assert_eq!(o.apply(9, wants(5)).target, 7);
        for bad in ["seven", "-1", "1001"] {
            let error = Override::from_annotations(&annotations(&[(PAUSED_REPLICAS_ANNOTATION, bad)])).unwrap_err();
            assert!(error.starts_with("annotation celeryproject.org/paused-replicas: \""), "{error}");
        }
    }

    #[test]
    fn one_direction_is_blocked_the_other_is_not() {
        let no_in = Override::from_annotations(&annotations(&[(PAUSED_SCALE_IN_ANNOTATION, "true")])).unwrap();
        assert!(!no_in.holds());
        let down = no_in.apply(5, wants(2));
        assert_eq!((down.target, down.health.reason), (5, PAUSED));
        assert!(down.reason.starts_with("scaling down blocked by annotation celeryproject.org/paused-scale-in"));
        let up = no_in.apply(2, wants(5));
        assert_eq!((up.target, up.health.reason), (5, PAUSED), "scaling up goes on; the override still shows");
        let no_out = Override::from_annotations(&annotations(&[(PAUSED_SCALE_OUT_ANNOTATION, "true")])).unwrap();
        assert_eq!(no_out.apply(2, wants(5)).target, 2);
        assert_eq!(no_out.apply(5, wants(2)).target, 2);
    }
}
