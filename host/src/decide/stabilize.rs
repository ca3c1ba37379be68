//! Bounds and scale-down stabilisation of policy answers, as pure functions.
//!
//! The host, not the policy, enforces `minReplicas`/`maxReplicas` ([`clamp`]). Scaling down is
//! damped like the Kubernetes HPA: the replica count applied is the highest recommendation
//! seen within the window, so a brief dip does not kill workers that are needed a minute
//! later ([`stabilized`], [`Stabilizer`]). Scaling up is immediate, unless `scaleUp` limits
//! how many workers a period may add ([`UpLimit`]).

use std::collections::VecDeque;
use std::time::Duration;

use crate::crd::Combine;

/// Which bound a decision was clamped to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Min,
    Max,
}

/// What the answers of an app's policies allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every policy that counts answered or declined: this answer wins.
    All(usize),
    /// Some policies could not answer, and this one, the winner among the known answers, asks
    /// for more workers than run now: the known signals may scale up.
    UpOnKnown(usize),
    /// No answer, or the known answers would not add workers: scaling down needs every
    /// signal, so the count holds.
    Hold,
}

/// One policy's part in a combination: its (bounded) answer, a decline, or a failure (of the
/// policy or of the signal it needs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vote {
    Answer(u32),
    Declined,
    Failed,
}

/// Combines the votes of an app's policies, in the spec's order, as `mode` says: the largest
/// or the smallest answer (the first of equals), or the first answer in order. A decline is
/// no vote. A failure that could have changed the outcome (any failure for `Max`/`Min`; one
/// before the winner for `First`) lets the known answers only scale up.
pub fn combine(current: u32, votes: &[Vote], mode: Combine) -> Verdict {
    let mut answers = votes.iter().enumerate().filter_map(|(i, v)| match v {
        Vote::Answer(n) => Some((i, *n)),
        _ => None,
    });
    let best = match mode {
        Combine::Max => answers.fold(None, |best: Option<(usize, u32)>, (i, n)| match best {
            Some((_, b)) if n <= b => best,
            _ => Some((i, n)),
        }),
        Combine::Min => answers.fold(None, |best: Option<(usize, u32)>, (i, n)| match best {
            Some((_, b)) if n >= b => best,
            _ => Some((i, n)),
        }),
        Combine::First => answers.next(),
    };
    let Some((winner, n)) = best else { return Verdict::Hold };
    let counted = match mode {
        Combine::First => &votes[..winner],
        Combine::Max | Combine::Min => votes,
    };
    if !counted.contains(&Vote::Failed) {
        Verdict::All(winner)
    } else if n > current {
        Verdict::UpOnKnown(winner)
    } else {
        Verdict::Hold
    }
}

/// `proposed` within `[min, max]`, and which bound applied if any. Should `min` exceed `max`
/// (the resource's validation forbids it), `min` wins: never fewer workers than asked for.
pub fn clamp(proposed: u32, min: u32, max: u32) -> (u32, Option<Bound>) {
    if proposed < min {
        (min, Some(Bound::Min))
    } else if proposed > max.max(min) {
        (max.max(min), Some(Bound::Max))
    } else {
        (proposed, None)
    }
}

/// The replica count to apply at `now_ms`, given the recommendations so far (time in
/// milliseconds, replicas; any order) and the scale-down window: the highest recommendation
/// made within the window up to and including now. With no recommendation in the window,
/// `None`.
pub fn stabilized(recommendations: &[(u64, u32)], now_ms: u64, window: Duration) -> Option<u32> {
    let since = now_ms.saturating_sub(window.as_millis() as u64);
    recommendations.iter().filter(|(at, _)| *at >= since && *at <= now_ms).map(|(_, replicas)| *replicas).max()
}

/// Keeps the recommendations of one app for [`stabilized`], dropping those out of the window.
#[derive(Clone, Debug)]
pub struct Stabilizer {
    window: Duration,
    recent: VecDeque<(u64, u32)>,
}

impl Stabilizer {
    pub fn new(window: Duration) -> Self {
        Self { window, recent: VecDeque::new() }
    }

    /// Another window, keeping the recommendations made so far.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Records `recommendation` at `now_ms` and returns the replica count to apply.
    pub fn apply(&mut self, now_ms: u64, recommendation: u32) -> u32 {
        let since = now_ms.saturating_sub(self.window.as_millis() as u64);
        while self.recent.front().is_some_and(|(at, _)| *at < since) {
            self.recent.pop_front();
        }
        self.recent.push_back((now_ms, recommendation));
        let (front, back) = self.recent.as_slices();
        stabilized(front, now_ms, self.window)
            .into_iter()
            .chain(stabilized(back, now_ms, self.window))
            .max()
            .unwrap_or(recommendation)
    }
}

/// Scale-down damping of one app: the [`Stabilizer`] window, then steps of at most
/// `step_percent` of the current workers (at least one) no closer than `step_period`.
/// Scaling up is applied at once and never delayed by an earlier step down.
///
/// A damper that starts without a past (an operator restart, a failover) is [`seed`]ed first,
/// so that it never scales down faster than one that had kept running.
///
/// [`seed`]: Damper::seed
#[derive(Clone, Debug)]
pub struct Damper {
    stabilizer: Stabilizer,
    step_percent: u32,
    step_period: Duration,
    last_step_ms: Option<u64>,
    seeded: bool,
    up: Option<UpLimit>,
    /// The scale-ups within the last period of `up`: when, and how many workers each added.
    ups: VecDeque<(u64, u32)>,
}

/// How many workers a period may add (`spec.autoscaling.scaleUp`): at most `max_pods`, or
/// `max_percent` of the workers that ran when the period began (at least one); with both, the
/// larger allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpLimit {
    pub max_pods: Option<u32>,
    pub max_percent: Option<u32>,
    pub period: Duration,
}

impl UpLimit {
    /// Workers a period may add when it began with `base` running.
    pub fn allowance(&self, base: u32) -> u32 {
        let pods = self.max_pods.unwrap_or(0);
        let percent = self.max_percent.map_or(0, |p| (u64::from(base) * u64::from(p)).div_ceil(100).max(1));
        pods.max(u32::try_from(percent).unwrap_or(u32::MAX))
    }
}

impl Damper {
    pub fn new(window: Duration, step_percent: u32, step_period: Duration) -> Self {
        Self {
            stabilizer: Stabilizer::new(window),
            step_percent: step_percent.clamp(1, 100),
            step_period,
            last_step_ms: None,
            seeded: false,
            up: None,
            ups: VecDeque::new(),
        }
    }

    /// Limits scale-ups to `up` (`None`: none), keeping the scale-ups of the current period.
    pub fn set_scale_up(&mut self, up: Option<UpLimit>) {
        self.up = up;
    }

    /// Forgets the recommendations, to be [`seed`](Self::seed)ed again from the count that
    /// runs then (while an annotation holds the count); the step period and the scale-ups of
    /// the current period stay.
    pub fn forget(&mut self) {
        self.stabilizer = Stabilizer::new(self.stabilizer.window);
        self.seeded = false;
    }

    /// Records a scale-up of `added` workers made at `now_ms`, which the scale-up limit counts.
    pub fn scaled_up(&mut self, now_ms: u64, added: u32) {
        if self.up.is_some() && added > 0 {
            self.ups.push_back((now_ms, added));
        }
    }

    /// Whether [`seed`](Self::seed) has run.
    pub fn is_seeded(&self) -> bool {
        self.seeded
    }

    /// Gives a new damper the past it would have had: the workers running now count as
    /// recommended now (so the whole window passes before any step down), and the last scale
    /// the status recorded counts as the last step (so the step period is kept across a
    /// restart). What an earlier process recommended is not known, and unknown is never
    /// taken as permission to scale down.
    pub fn seed(&mut self, now_ms: u64, current: u32, last_scale_ms: Option<u64>) {
        self.stabilizer.apply(now_ms, current);
        self.last_step_ms = last_scale_ms.filter(|at| *at <= now_ms).max(self.last_step_ms);
        self.seeded = true;
    }

    /// New tuning that keeps what was recommended and when the last step was.
    pub fn retune(&mut self, window: Duration, step_percent: u32, step_period: Duration) {
        self.stabilizer.set_window(window);
        self.step_percent = step_percent.clamp(1, 100);
        self.step_period = step_period;
    }

    /// The replica count to run at `now_ms`, from `current` and the (bounded) recommendation.
    pub fn next(&mut self, now_ms: u64, current: u32, recommendation: u32) -> u32 {
        let stable = self.stabilizer.apply(now_ms, recommendation);
        if stable > current {
            return self.limit_up(now_ms, current, stable);
        }
        if stable == current {
            return stable;
        }
        let period = self.step_period.as_millis() as u64;
        if self.last_step_ms.is_some_and(|at| now_ms.saturating_sub(at) < period) {
            return current;
        }
        let step = (u64::from(current) * u64::from(self.step_percent)).div_ceil(100).max(1);
        let next = u64::from(current).saturating_sub(step).max(u64::from(stable)) as u32;
        self.last_step_ms = Some(now_ms);
        next
    }

    /// `wanted` (above `current`) as far as the scale-up limit allows this period, counting the
    /// scale-ups [`scaled_up`](Self::scaled_up) recorded (only those made: one an annotation
    /// blocked took nothing). NB: they live in this process: after an operator restart the
    /// period starts afresh (at most one period's allowance more than a process that kept
    /// running).
    fn limit_up(&mut self, now_ms: u64, current: u32, wanted: u32) -> u32 {
        let Some(up) = self.up else { return wanted };
        let period = up.period.as_millis() as u64;
        while self.ups.front().is_some_and(|(at, _)| now_ms.saturating_sub(*at) >= period) {
            self.ups.pop_front();
        }
        let added: u32 = self.ups.iter().map(|(_, n)| *n).sum();
        let allowed = up.allowance(current.saturating_sub(added)).saturating_sub(added);
        wanted.min(current.saturating_add(allowed))
    }

    /// Workers the scale-up limit has let in within its current period (0 without a limit).
    pub fn added_this_period(&self) -> u32 {
        self.ups.iter().map(|(_, n)| *n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(5, 1, 10, 5, None)]
    #[case(0, 1, 10, 1, Some(Bound::Min))]
    #[case(4_000_000_000, 1, 10, 10, Some(Bound::Max))]
    #[case(3, 4, 4, 4, Some(Bound::Min))]
    #[case(9, 4, 4, 4, Some(Bound::Max))]
    #[case(0, 0, 3, 0, None)]
    #[case(7, 5, 2, 5, Some(Bound::Max))]
    fn clamps_to_bounds(
        #[case] proposed: u32,
        #[case] min: u32,
        #[case] max: u32,
        #[case] applied: u32,
        #[case] bound: Option<Bound>,
    ) {
        assert_eq!(clamp(proposed, min, max), (applied, bound));
    }

    const A: fn(u32) -> Vote = Vote::Answer;
    const D: Vote = Vote::Declined;
    const F: Vote = Vote::Failed;

    #[rstest]
    #[case::all_answer(3, &[A(2), A(5)], Verdict::All(1))]
    #[case::all_answer_down(3, &[A(1), A(2)], Verdict::All(1))]
    #[case::first_of_equals(3, &[A(4), A(4)], Verdict::All(0))]
    #[case::cpu_down_queue_up(2, &[A(6), F], Verdict::UpOnKnown(0))]
    #[case::cpu_down_queue_level(6, &[A(6), F], Verdict::Hold)]
    #[case::cpu_down_queue_lower(6, &[A(1), F], Verdict::Hold)]
    #[case::nothing_known(2, &[F, F], Verdict::Hold)]
    #[case::no_policy(2, &[], Verdict::Hold)]
    #[case::a_decline_is_no_vote(6, &[D, A(2)], Verdict::All(1))]
    #[case::all_declined(6, &[D, D], Verdict::Hold)]
    fn max_a_failing_signal_fails_alone(#[case] current: u32, #[case] votes: &[Vote], #[case] verdict: Verdict) {
        assert_eq!(combine(current, votes, Combine::Max), verdict);
    }

    #[rstest]
    #[case::smallest(3, &[A(2), A(5)], Verdict::All(0))]
    #[case::first_of_equals(3, &[A(4), A(4)], Verdict::All(0))]
    #[case::failure_up_on_known(2, &[F, A(6), A(4)], Verdict::UpOnKnown(2))]
    #[case::failure_never_down(6, &[A(3), F], Verdict::Hold)]
    #[case::declines_ignored(6, &[A(3), D], Verdict::All(0))]
    fn min_takes_the_smallest(#[case] current: u32, #[case] votes: &[Vote], #[case] verdict: Verdict) {
        assert_eq!(combine(current, votes, Combine::Min), verdict);
    }

    #[rstest]
    #[case::first_answer(3, &[A(2), A(5)], Verdict::All(0))]
    #[case::past_declines(3, &[D, D, A(1), A(9)], Verdict::All(2))]
    #[case::failure_after_the_winner(3, &[A(1), F], Verdict::All(0))]
    #[case::failure_before_may_scale_up(3, &[F, A(5)], Verdict::UpOnKnown(1))]
    #[case::failure_before_never_down(3, &[F, D, A(1)], Verdict::Hold)]
    #[case::all_declined(3, &[D, D], Verdict::Hold)]
    fn first_takes_the_first_answer(#[case] current: u32, #[case] votes: &[Vote], #[case] verdict: Verdict) {
        assert_eq!(combine(current, votes, Combine::First), verdict);
    }

    #[test]
    fn scale_down_waits_for_the_window_and_scale_up_does_not() {
        let window = Duration::from_secs(60);
        let mut s = Stabilizer::new(window);
        assert_eq!(s.apply(0, 8), 8);
        assert_eq!(s.apply(30_000, 2), 8, "a dip within the window is ignored");
        assert_eq!(s.apply(45_000, 12), 12, "scale up at once");
        assert_eq!(s.apply(90_000, 3), 12);
        assert_eq!(s.apply(106_000, 3), 3, "12 left the window at 105 s");
    }

    #[test]
    fn zero_window_follows_the_policy() {
        let mut s = Stabilizer::new(Duration::ZERO);
        assert_eq!(s.apply(0, 8), 8);
        assert_eq!(s.apply(1, 2), 2);
    }

    #[test]
    fn stabilized_ignores_the_future_and_the_past() {
        let recs = [(0, 9), (50_000, 4), (200_000, 20)];
        assert_eq!(stabilized(&recs, 100_000, Duration::from_secs(60)), Some(4));
        assert_eq!(stabilized(&recs, 300_000, Duration::from_secs(60)), None);
    }

    #[test]
    fn a_scale_up_limit_lets_in_so_many_workers_a_period() {
        let second = Duration::from_secs(1);
        let mut d = Damper::new(Duration::ZERO, 100, Duration::ZERO);
        d.set_scale_up(Some(UpLimit { max_pods: Some(2), max_percent: None, period: 60 * second }));
        assert_eq!(d.next(0, 1, 10), 3, "two may be added");
        assert_eq!(d.added_this_period(), 0, "none was, yet");
        d.scaled_up(0, 2);
        assert_eq!(d.added_this_period(), 2);
        assert_eq!(d.next(10_000, 3, 10), 3, "the period's two are used");
        assert_eq!(d.next(59_000, 3, 10), 3);
        assert_eq!(d.next(60_000, 3, 10), 5, "a new period");
        d.scaled_up(60_000, 2);
        assert_eq!(d.next(61_000, 5, 4), 4, "scaling down is not limited by it");
        assert_eq!(d.next(70_000, 4, 4), 4);

        // A percentage of the workers at the start of the period, at least one.
        let mut d = Damper::new(Duration::ZERO, 100, Duration::ZERO);
        d.set_scale_up(Some(UpLimit { max_pods: None, max_percent: Some(100), period: 10 * second }));
        assert_eq!(d.next(0, 4, 40), 8, "doubled");
        d.scaled_up(0, 4);
        assert_eq!(d.next(1_000, 8, 40), 8, "4 of 4 used this period");
        assert_eq!(d.next(10_000, 8, 40), 16);
        d.scaled_up(10_000, 8);
        assert_eq!(d.next(20_000, 0, 40), 1, "from zero: at least one");
        // With both, the larger allowance.
        let both = UpLimit { max_pods: Some(1), max_percent: Some(50), period: second };
        assert_eq!((both.allowance(4), both.allowance(1), both.allowance(0)), (2, 1, 1));
        // Without a limit, at once.
        let mut d = Damper::new(Duration::ZERO, 100, Duration::ZERO);
        assert_eq!(d.next(0, 1, 40), 40);
    }

    #[test]
    fn damper_steps_down_gradually_after_the_window() {
        let mut d = Damper::new(Duration::from_secs(10), 50, Duration::from_secs(5));
        assert_eq!(d.next(0, 10, 10), 10);
        assert_eq!(d.next(1_000, 10, 0), 10, "within the window");
        assert_eq!(d.next(9_500, 10, 0), 10, "10 still in the window");
        assert_eq!(d.next(11_000, 10, 0), 5, "half of 10 goes");
        assert_eq!(d.next(12_000, 5, 0), 5, "the step period holds");
        assert_eq!(d.next(16_000, 5, 0), 2, "ceil(50% of 5) = 3 go");
        assert_eq!(d.next(21_000, 2, 0), 1);
        assert_eq!(d.next(26_000, 1, 0), 0, "to zero, one at a time at the end");
        assert_eq!(d.next(26_500, 0, 4), 4, "scale up at once, whatever the step period");
    }

    #[test]
    fn a_seeded_damper_waits_the_window_and_the_step_period_like_one_that_kept_running() {
        let (window, period) = (Duration::from_secs(60), Duration::from_secs(15));
        // The last step down happened 5 s before the restart at t = 100 s, from 10 to 5.
        let mut d = Damper::new(window, 50, period);
        d.seed(100_000, 5, Some(95_000));
        assert!(d.is_seeded());
        assert_eq!(d.next(101_000, 5, 0), 5, "the window starts with the workers running at the restart");
        assert_eq!(d.next(159_000, 5, 0), 5, "still within the window");
        assert_eq!(d.next(161_000, 5, 0), 2, "after the window, one step of 50%");
        // Unseeded, the first tick would drop half of the workers at once.
        assert_eq!(Damper::new(window, 50, period).next(101_000, 5, 0), 2);

        // With no window, the step period counts from the recorded scale.
        let mut d = Damper::new(Duration::ZERO, 50, period);
        d.seed(100_000, 10, Some(95_000));
        assert_eq!(d.next(100_500, 10, 0), 10, "15 s have not passed since the last step");
        assert_eq!(d.next(110_000, 10, 0), 5);
    }

    #[test]
    fn retuning_keeps_the_past() {
        let mut d = Damper::new(Duration::from_secs(60), 50, Duration::from_secs(15));
        assert_eq!(d.next(0, 8, 8), 8);
        d.retune(Duration::from_secs(30), 100, Duration::from_secs(1));
        assert_eq!(d.next(10_000, 8, 0), 8, "8 was recommended within the new 30 s window");
        assert_eq!(d.next(31_000, 8, 0), 0, "then 100% steps");
    }

    #[test]
    fn damper_never_steps_below_the_recommendation() {
        let mut d = Damper::new(Duration::ZERO, 100, Duration::ZERO);
        assert_eq!(d.next(0, 10, 7), 7);
        assert_eq!(d.next(1, 7, 7), 7);
    }
}
