//! Which workers a scale-down removes, as a pure function: the ranking of the pods, how many go
//! now, and which pods the ReplicaSet controller must be told to take (their
//! `controller.kubernetes.io/pod-deletion-cost`). No I/O: the loop
//! ([`crate::autoscale::scaler`]) gathers the pods and Flower's figures, writes the marks and
//! the count.
//!
//! The ReplicaSet controller deletes, among the pods of a shrinking set, those not Ready
//! first, then those with the lowest deletion cost, then (among equals) the most recently
//! started. The operator ranks the pods the same way, with what only it knows in between:
//!
//! 1. pods not Ready (starting, or unable to reach their broker),
//! 2. idle pods: Flower says they run no task and hold none prefetched,
//! 3. busy pods already told to stop taking tasks (`drainBusyWorkers`), so the choice does not
//!    swing to another worker while they drain,
//! 4. pods whose tasks Flower does not know (a worker with no heartbeat yet): never taken for
//!    idle,
//! 5. busy pods, the fewest running tasks first, then the fewest prefetched (a warm shutdown
//!    hands those back to the broker),
//!
//! and within each, the youngest first. The `k` pods that must go get the lowest cost there
//! is ([`MARK`]); the others keep none, so a pod that stays busy is never below a victim.
//!
//! With `busyWorkers: Wait`, only victims that are not Ready or idle go now; the count is lowered
//! by as many, and the busy ones are waited for (`maxWaitSeconds` at most). Without per-pod
//! figures (no Flower, or Flower down) nothing is marked: Kubernetes chooses, and the reason
//! says so; `Wait` then waits for the bound, as nothing is known to be idle.

use crate::crd::BusyWorkers;

/// The annotation the ReplicaSet controller orders pods by when it scales down.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The cost the operator gives the pods it removes: the lowest a cost can be (an int32), so a
/// marked pod goes before any other Ready pod, and a pod carrying it is known to be marked by
/// the operator (and cleared by it when the scale-down does not happen).
pub const MARK: &str = "-2147483648";

/// One worker pod as the scale-in sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    pub name: String,
    pub ready: bool,
    /// Being deleted already: neither a candidate nor counted.
    pub terminating: bool,
    /// Creation time, in milliseconds.
    pub created_ms: i64,
    /// Carries the operator's [`MARK`].
    pub marked: bool,
    /// Tasks running and tasks prefetched, from Flower; `None` when Flower has no figure for it.
    pub load: Option<Load>,
    /// Told to stop taking tasks (`drainBusyWorkers`) by the scale-down under way: it stays
    /// among the victims, so the order does not swing to another worker while it drains.
    pub draining: bool,
}

/// A worker's tasks, from Flower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub running: u32,
    pub reserved: u32,
}

impl Load {
    fn idle(self) -> bool {
        self.running == 0 && self.reserved == 0
    }
}

/// What is known of the workers' tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figures<'a> {
    /// Flower answered: every worker's [`Worker::load`] is its figure (or `None` for a worker
    /// it has not heard from).
    Known,
    /// No per-worker figures: the reason (no Flower, or why it cannot be read).
    Unknown(&'a str),
}

/// A scale-down as it is carried out now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScaleIn {
    /// The replica count to write (between the goal and the current count).
    pub replicas: u32,
    /// Pods to mark before the count is written, in removal order.
    pub mark: Vec<String>,
    /// Pods that carry the mark and must lose it (kept, or no scale-down at all).
    pub unmark: Vec<String>,
    /// Busy workers waited for (`busyWorkers: Wait`), with their running tasks.
    pub waiting: Vec<(String, u32)>,
    /// What was chosen, for the decision's reason; empty when nothing goes.
    pub note: String,
}

/// How a scale-down treats busy workers now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lower the count at once.
    Terminate,
    /// Remove only what is not Ready or idle; `Wait { over: true }` once `maxWaitSeconds` has
    /// passed, which then removes like `Terminate`.
    Wait { over: bool },
}

impl Mode {
    pub fn of(busy_workers: BusyWorkers, over: bool) -> Self {
        match busy_workers {
            BusyWorkers::Terminate => Self::Terminate,
            BusyWorkers::Wait => Self::Wait { over },
        }
    }
}

/// No scale-down: the marks left from one that did not happen are cleared.
pub fn steady(workers: &[Worker]) -> Vec<String> {
    workers.iter().filter(|w| w.marked && !w.terminating).map(|w| w.name.clone()).collect()
}

/// The scale-down from `current` replicas towards `goal` (below it) over `workers`.
pub fn plan(current: u32, goal: u32, workers: &[Worker], figures: Figures<'_>, mode: Mode) -> ScaleIn {
    let mut live: Vec<&Worker> = workers.iter().filter(|w| !w.terminating).collect();
    let known = matches!(figures, Figures::Known);
    live.sort_by(|a, b| rank(a, known).cmp(&rank(b, known)).then(b.created_ms.cmp(&a.created_ms)).then(a.name.cmp(&b.name)));
    let live_count = u32::try_from(live.len()).unwrap_or(u32::MAX);
    // The ReplicaSet deletes `live - replicas` pods: the first of the ranking.
    let excess = live_count.saturating_sub(goal) as usize;
    let victims = &live[..excess.min(live.len())];
    let removable = |w: &&&Worker| !w.ready || (known && w.load.is_some_and(Load::idle));
    let (replicas, taken) = match mode {
        Mode::Terminate | Mode::Wait { over: true } => (goal, victims.len()),
        Mode::Wait { over: false } => {
            // Victims are ranked removable first, so the removable ones are a prefix.
            let now = victims.iter().take_while(removable).count();
            let now_u32 = u32::try_from(now).unwrap_or(u32::MAX);
            (live_count.saturating_sub(now_u32).clamp(goal, current.max(goal)), now)
        }
    };
    let taken_pods = &victims[..taken];
    let waiting: Vec<(String, u32)> =
        victims[taken..].iter().map(|w| (w.name.clone(), w.load.map_or(0, |l| l.running + l.reserved))).collect();
    let mark: Vec<String> = if known { taken_pods.iter().map(|w| w.name.clone()).collect() } else { Vec::new() };
    let unmark = live.iter().filter(|w| w.marked && !mark.contains(&w.name)).map(|w| w.name.clone()).collect();

    let note = match figures {
        Figures::Unknown(why) => {
            let mut parts = vec![format!("no per-worker figures ({why})")];
            if replicas < current {
                parts.push("Kubernetes chooses which workers go".into());
            }
            if !waiting.is_empty() {
                parts.push(format!("{replicas} → {goal}: waiting for {} workers that may be busy", waiting.len()));
            }
            if parts.len() == 1 { String::new() } else { parts.join("; ") }
        }
        Figures::Known => {
            let mut parts = Vec::new();
            let names = |pods: Vec<&&Worker>| pods.iter().map(|w| w.name.as_str()).collect::<Vec<_>>().join(", ");
            let starting: Vec<&&Worker> = taken_pods.iter().filter(|w| !w.ready).collect();
            let idle: Vec<&&Worker> = taken_pods.iter().filter(|w| w.ready && w.load.is_some_and(Load::idle)).collect();
            let busy: Vec<String> = taken_pods
                .iter()
                .filter(|w| w.ready && !w.load.is_some_and(Load::idle))
                .map(|w| match w.load {
                    Some(l) => format!("{} ({})", w.name, tasks(l.running + l.reserved)),
                    None => format!("{} (tasks unknown)", w.name),
                })
                .collect();
            if !starting.is_empty() {
                parts.push(format!("removing not ready {}", names(starting)));
            }
            if !idle.is_empty() {
                parts.push(format!("removing idle {}", names(idle)));
            }
            if !busy.is_empty() {
                let after = if matches!(mode, Mode::Wait { over: true }) { ", maxWaitSeconds passed" } else { "" };
                parts.push(format!("removing busy {} (warm shutdown{after})", busy.join(", ")));
            }
            if !waiting.is_empty() {
                let list: Vec<String> = waiting.iter().map(|(name, n)| format!("{name} ({})", running(*n))).collect();
                parts.push(format!("{replicas} → {goal}: waiting for {}", list.join(", ")));
            }
            parts.join("; ")
        }
    };
    ScaleIn { replicas, mark, unmark, waiting, note }
}

/// The class of a pod in the ranking, lower first: then its running tasks, then its
/// prefetched ones (which a warm shutdown hands back to the broker, losing no work).
fn rank(w: &Worker, known: bool) -> (u8, u32, u32) {
    match (w.ready, known.then_some(w.load).flatten()) {
        (false, _) => (0, 0, 0),
        (true, Some(l)) if l.idle() => (1, 0, 0),
        (true, _) if w.draining => (2, 0, 0),
        (true, None) => (3, 0, 0),
        (true, Some(l)) => (4, l.running, l.reserved),
    }
}

fn tasks(n: u32) -> String {
    if n == 1 { "1 task".into() } else { format!("{n} tasks") }
}

pub fn running(n: u32) -> String {
    format!("{} running", tasks(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, ready: bool, created_ms: i64, load: Option<(u32, u32)>) -> Worker {
        Worker {
            name: name.into(),
            ready,
            terminating: false,
            created_ms,
            marked: false,
            load: load.map(|(running, reserved)| Load { running, reserved }),
            draining: false,
        }
    }

    /// Four Ready workers, two of them busy; the oldest is idle.
    fn four() -> Vec<Worker> {
        vec![
            w("a", true, 1, Some((0, 0))),
            w("b", true, 2, Some((2, 0))),
            w("c", true, 3, Some((0, 0))),
            w("d", true, 4, Some((1, 0))),
        ]
    }

    #[test]
    fn idle_workers_go_first_then_the_least_busy_then_the_youngest() {
        let s = plan(4, 2, &four(), Figures::Known, Mode::Terminate);
        assert_eq!((s.replicas, s.mark.clone()), (2, vec!["c".to_string(), "a".into()]), "the idle two, youngest first");
        assert_eq!(s.note, "removing idle c, a");
        assert!(s.waiting.is_empty() && s.unmark.is_empty());

        // One more must go: the busy one with fewer tasks.
        let s = plan(4, 1, &four(), Figures::Known, Mode::Terminate);
        assert_eq!(s.mark, ["c", "a", "d"]);
        assert_eq!(s.note, "removing idle c, a; removing busy d (1 task) (warm shutdown)");
    }

    #[test]
    fn a_prefetched_task_is_work_and_a_worker_flower_has_not_heard_of_is_not_idle() {
        let mut pods = four();
        pods[0].load = Some(Load { running: 0, reserved: 1 });
        pods[2].load = None;
        let s = plan(4, 3, &pods, Figures::Known, Mode::Terminate);
        assert_eq!(s.mark, ["c"], "unknown ranks before busy");
        let s = plan(4, 2, &pods, Figures::Known, Mode::Terminate);
        assert_eq!(s.mark, ["c", "a"], "one prefetched task before two running");
    }

    #[test]
    fn a_draining_worker_stays_chosen_though_another_became_less_busy() {
        let mut pods = four();
        pods[1].load = Some(Load { running: 3, reserved: 0 });
        pods[1].draining = true;
        let s = plan(4, 1, &pods, Figures::Known, Mode::Wait { over: false });
        assert_eq!(s.waiting, [("b".to_string(), 3)], "b (3 tasks, draining) before d (1 task)");
    }

    #[test]
    fn not_ready_pods_go_before_idle_ones_and_terminating_ones_do_not_count() {
        let mut pods = four();
        pods.push(w("e", false, 0, None));
        let mut gone = w("f", false, 9, Some((0, 0)));
        gone.terminating = true;
        pods.push(gone);
        let s = plan(5, 3, &pods, Figures::Known, Mode::Terminate);
        assert_eq!(s.mark, ["e", "c"]);
        assert_eq!(s.note, "removing not ready e; removing idle c");
    }

    #[test]
    fn wait_removes_the_idle_now_and_waits_for_the_busy() {
        let s = plan(4, 1, &four(), Figures::Known, Mode::Wait { over: false });
        assert_eq!((s.replicas, s.mark.clone()), (2, vec!["c".to_string(), "a".into()]));
        assert_eq!(s.waiting, [("d".to_string(), 1)]);
        assert_eq!(s.note, "removing idle c, a; 2 → 1: waiting for d (1 task running)");

        // All busy: nothing goes, the count stays.
        let busy: Vec<Worker> = (0..4).map(|i| w(&format!("p{i}"), true, i, Some((1, 0)))).collect();
        let s = plan(4, 2, &busy, Figures::Known, Mode::Wait { over: false });
        assert_eq!((s.replicas, s.mark.len(), s.waiting.len()), (4, 0, 2));
        assert_eq!(s.note, "4 → 2: waiting for p3 (1 task running), p2 (1 task running)");

        // Past maxWaitSeconds: like Terminate.
        let s = plan(4, 2, &busy, Figures::Known, Mode::Wait { over: true });
        assert_eq!((s.replicas, s.mark.len(), s.waiting.len()), (2, 2, 0));
        assert!(s.note.contains("maxWaitSeconds passed"), "{}", s.note);
    }

    #[test]
    fn without_figures_kubernetes_chooses_and_nothing_is_marked() {
        let mut pods = four();
        pods[1].marked = true;
        let s = plan(4, 2, &pods, Figures::Unknown("Flower: connection refused"), Mode::Terminate);
        assert_eq!((s.replicas, s.mark.len()), (2, 0));
        assert_eq!(s.unmark, ["b"], "an old mark would steer Kubernetes' choice");
        assert_eq!(s.note, "no per-worker figures (Flower: connection refused); Kubernetes chooses which workers go");

        // Wait: nothing is known to be idle, so only the not-Ready may go.
        pods.push(w("e", false, 0, None));
        let s = plan(5, 2, &pods, Figures::Unknown("no Flower"), Mode::Wait { over: false });
        assert_eq!((s.replicas, s.waiting.len()), (4, 2));
        assert_eq!(
            s.note,
            "no per-worker figures (no Flower); Kubernetes chooses which workers go; 4 → 2: waiting for 2 workers that may be busy"
        );
    }

    #[test]
    fn marks_already_in_place_are_kept_and_stale_ones_cleared() {
        let mut pods = four();
        pods[2].marked = true; // c: still a victim
        pods[1].marked = true; // b: busy, must not stay marked
        let s = plan(4, 3, &pods, Figures::Known, Mode::Terminate);
        assert_eq!((s.mark.clone(), s.unmark.clone()), (vec!["c".to_string()], vec!["b".to_string()]));
        assert_eq!(steady(&pods), ["b", "c"]);
        pods[2].terminating = true;
        assert_eq!(steady(&pods), ["b"], "a pod being deleted is left alone");
    }
}
