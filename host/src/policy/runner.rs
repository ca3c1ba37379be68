//! Bounded policy calls from async code, and the host's clamping of their answers.
//!
//! A guest call is CPU work of up to its time limit, so it runs on tokio's blocking pool, and
//! a semaphore bounds how many run at once: a slow or hostile policy can occupy its permit
//! until its epoch deadline, never the reconcile workers. Except a policy that has proved
//! fast ([`Pace`]): after [`INLINE_AFTER`] calls in a row each under [`INLINE_BUDGET`] of CPU,
//! its calls run on the calling thread, since the hop to the blocking pool and back (two
//! thread wake-ups) cost more than a compiled policy's whole decision: at 10,000 apps a
//! second, a quarter of the operator's CPU went to switching threads. A call over the budget
//! sends the policy back to the blocking pool until it proves fast again (a fast policy has
//! outliers: a thread's first call, a cold pool slot took 4 ms), and the [`STRIKES`]th such
//! call for good: a policy that turns slow (or hostile) holds a runtime thread at most that
//! many times, each for at most its time limit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::engine::PolicyEngine;
use super::loader::LoadedPolicy;
use super::{Decision, PolicyError, PolicyInput};
use crate::decide::stabilize::{Bound, clamp};

/// Bounds of one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallLimits {
    /// Linear memory the instance may use, summed over its memories.
    pub memory_bytes: u64,
    /// Wall time for instantiation and the call together.
    pub timeout: Duration,
    /// Largest answer accepted (the JSON of a core module, the reason of a component).
    pub output_bytes: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self { memory_bytes: 64 << 20, timeout: Duration::from_millis(100), output_bytes: 64 << 10 }
    }
}

impl CallLimits {
    /// These limits with memory capped at the operator-wide maximum.
    pub fn within(&self, engine: &PolicyEngine) -> Self {
        Self { memory_bytes: self.memory_bytes.min(engine.settings().max_memory_bytes), ..self.clone() }
    }
}

/// A call that takes more CPU time than this sends its policy back to the blocking pool.
pub const INLINE_BUDGET: Duration = Duration::from_millis(1);
/// Calls in a row under [`INLINE_BUDGET`] after which a policy runs on the caller's thread
/// (a compiled Rust, C or Go policy takes 10–100 µs; Python and JavaScript take milliseconds
/// and stay on the blocking pool).
pub const INLINE_AFTER: u32 = 64;

/// Calls over [`INLINE_BUDGET`] made on the caller's thread after which a policy runs on the
/// blocking pool for good.
pub const STRIKES: u32 = 8;

/// How fast a policy's calls have been, which decides where its next one runs.
#[derive(Debug, Default)]
pub struct Pace {
    /// Calls in a row under the budget (saturating).
    fast: AtomicU32,
    /// Calls over the budget made on the caller's thread.
    strikes: AtomicU32,
}

/// What a call's time changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced {
    /// Nothing: where the next call runs is where this one did.
    Kept,
    /// Back to the blocking pool until it proves fast again.
    Demoted,
    /// Back to the blocking pool for good.
    Banished,
}

impl Pace {
    /// Whether the next call may run on the caller's thread.
    pub fn inline(&self) -> bool {
        self.strikes.load(Ordering::Relaxed) < STRIKES && self.fast.load(Ordering::Relaxed) >= INLINE_AFTER
    }

    /// Records a call that took `took` (of CPU) on the caller's thread (`inline`) or not.
    pub fn record(&self, took: Duration, inline: bool) -> Paced {
        if took <= INLINE_BUDGET {
            let _ = self.fast.try_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_add(1)));
            return Paced::Kept;
        }
        self.fast.store(0, Ordering::Relaxed);
        if !inline {
            return Paced::Kept;
        }
        match self.strikes.fetch_add(1, Ordering::Relaxed) + 1 {
            STRIKES => Paced::Banished,
            _ => Paced::Demoted,
        }
    }
}

/// A decision after the host's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The decision to act on: replicas within bounds; the reason says when it was clamped.
    pub decision: Decision,
    /// What the policy asked for.
    pub proposed: u32,
    /// The bound that applied, if any.
    pub clamped: Option<Bound>,
    /// The policy declined to decide (see [`Decision::declined`]), and why: no bounds apply.
    pub declined: Option<String>,
}

impl Verdict {
    /// Applies `[min, max]` to a policy's decision.
    pub fn bounded(decision: Decision, min: u32, max: u32) -> Self {
        let proposed = decision.replicas;
        if let Some(why) = decision.declined() {
            let declined = Some(why.to_string());
            return Self { decision, proposed, clamped: None, declined };
        }
        let (replicas, clamped) = clamp(proposed, min, max);
        let reason = match clamped {
            None => decision.reason,
            Some(Bound::Min) => {
                format!("{} (policy asked for {proposed}, raised to minReplicas {replicas})", decision.reason)
            }
            Some(Bound::Max) => {
                format!("{} (policy asked for {proposed}, capped at maxReplicas {replicas})", decision.reason)
            }
        };
        Self { decision: Decision { replicas, reason }, proposed, clamped, declined: None }
    }
}

/// Runs policy calls off the async runtime, at most `concurrency` at a time.
#[derive(Clone)]
pub struct PolicyRunner {
    permits: Arc<Semaphore>,
    limits: CallLimits,
}

impl PolicyRunner {
    pub fn new(concurrency: usize, limits: CallLimits) -> Self {
        Self { permits: Arc::new(Semaphore::new(concurrency.max(1))), limits }
    }

    /// The default limits of calls made through this runner.
    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }

    /// One decision, bounded by the resource's min and max. `limits` overrides the runner's
    /// defaults (a resource's memory setting, say), capped by the engine.
    pub async fn decide(
        &self,
        policy: Arc<LoadedPolicy>,
        input: PolicyInput,
        limits: Option<CallLimits>,
    ) -> Result<(Verdict, Duration), PolicyError> {
        self.decide_lending(policy, input, limits).await.1
    }

    /// Like [`decide`](Self::decide), and hands the input back: the autoscaling loop keeps
    /// one input per app, history included, and lends it to every call instead of copying it.
    pub async fn decide_lending(
        &self,
        policy: Arc<LoadedPolicy>,
        input: PolicyInput,
        limits: Option<CallLimits>,
    ) -> (Option<PolicyInput>, Result<(Verdict, Duration), PolicyError>) {
        let (min, max) = (input.min_replicas, input.max_replicas);
        let limits = limits.unwrap_or_else(|| self.limits.clone());
        let outcome = self
            .blocking(&policy, move |p| {
                let start = Instant::now();
                let decided = p.decide(&limits, &input).map(|d| (d, start.elapsed()));
                Ok((input, decided))
            })
            .await;
        match outcome {
            Ok((input, decided)) => (Some(input), decided.map(|(d, took)| (Verdict::bounded(d, min, max), took))),
            Err(host) => (None, Err(host)),
        }
    }

    /// Checks settings when a resource selects a policy.
    pub async fn validate_settings(
        &self,
        policy: Arc<LoadedPolicy>,
        settings: BTreeMap<String, String>,
    ) -> Result<(), PolicyError> {
        let limits = self.limits.clone();
        self.blocking(&policy, move |p| p.validate_settings(&limits, &settings)).await
    }

    async fn blocking<R: Send + 'static>(
        &self,
        policy: &Arc<LoadedPolicy>,
        call: impl FnOnce(&LoadedPolicy) -> Result<R, PolicyError> + Send + 'static,
    ) -> Result<R, PolicyError> {
        let name = policy.name().to_string();
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| PolicyError::Host { policy: name.clone(), detail: "the policy runner is closed".into() })?;
        if policy.pace().inline() {
            let result = timed(policy, true, call);
            drop(permit);
            return result;
        }
        let policy = Arc::clone(policy);
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            timed(&policy, false, call)
        })
        .await;
        joined.map_err(|e| PolicyError::Host { policy: name, detail: format!("the call panicked or was cancelled: {e}") })?
    }
}

/// Runs `call` (on the caller's thread: `inline`), and records the CPU time it took in the
/// policy's [`Pace`]: CPU time, not wall time, so that a fast policy preempted on a busy
/// machine is not taken for a slow one.
fn timed<R>(
    policy: &LoadedPolicy,
    inline: bool,
    call: impl FnOnce(&LoadedPolicy) -> Result<R, PolicyError>,
) -> Result<R, PolicyError> {
    let started = thread_cpu_time();
    let result = call(policy);
    let took = thread_cpu_time().saturating_sub(started);
    match policy.pace().record(took, inline) {
        Paced::Kept => {}
        Paced::Demoted => {
            debug!(policy = policy.name(), took_us = took.as_micros(), "a call over budget: back to the blocking pool")
        }
        Paced::Banished => warn!(
            policy = policy.name(),
            took_ms = took.as_millis(),
            "{STRIKES} calls of this policy took over {INLINE_BUDGET:?}: its calls run on the blocking pool from now on"
        ),
    }
    result
}

/// The CPU time the calling thread has used. One `clock_gettime` through libc, which the
/// host already links: no crate needed for it.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given; this clock exists on every Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_runs_inline_after_a_run_of_fast_calls_until_it_is_slow_too_often() {
        let pace = Pace::default();
        let (fast, slow) = (Duration::from_micros(20), INLINE_BUDGET * 2);
        let prove = |pace: &Pace| {
            for _ in 1..INLINE_AFTER {
                assert_eq!(pace.record(fast, false), Paced::Kept);
            }
            assert!(!pace.inline(), "one call short");
            pace.record(fast, false);
            assert!(pace.inline());
        };
        prove(&pace);
        // Slow on the blocking pool: the run starts over, no strike.
        assert_eq!(pace.record(slow, false), Paced::Kept);
        assert!(!pace.inline());
        prove(&pace);
        for strike in 1..STRIKES {
            assert_eq!(pace.record(slow, true), Paced::Demoted, "strike {strike}");
            assert!(!pace.inline(), "back to the pool after strike {strike}");
            prove(&pace);
        }
        assert_eq!(pace.record(slow, true), Paced::Banished);
        for _ in 0..INLINE_AFTER * 2 {
            pace.record(fast, false);
        }
        assert!(!pace.inline(), "for good");
    }

    #[test]
    fn verdict_reports_clamping() {
        let d = |replicas| Decision { replicas, reason: "r".into() };
        let v = Verdict::bounded(d(4_000_000_000), 1, 10);
        assert_eq!((v.decision.replicas, v.proposed, v.clamped), (10, 4_000_000_000, Some(Bound::Max)));
        assert!(v.decision.reason.contains("capped at maxReplicas 10"));
        let v = Verdict::bounded(d(0), 2, 10);
        assert_eq!((v.decision.replicas, v.clamped), (2, Some(Bound::Min)));
        let v = Verdict::bounded(d(5), 2, 10);
        assert_eq!(v.decision, d(5));
        assert_eq!(v.clamped, None);
    }
}
