//! The recent past of every autoscaled pool, kept to be replayed: what was measured, the count
//! that ran and the count decided at every tick, in a ring bounded by time (15 minutes by
//! default, `--trace-minutes`), and the reasons of the last decisions that changed something.
//! `GET /trace/NAMESPACE/NAME` ([`crate::server`]) writes a ring as the CSV that
//! `celery-operator policy simulate --trace` reads ([`Trace::csv`]), headed by the policies,
//! bounds and damping it ran with, so a replay needs no other flag.
//!
//! A ring holds each tick's time as the milliseconds since the tick before (4 bytes: at the
//! default one-second interval a pool's 15 minutes are 900 ticks, 3.5 KiB, allocated once when
//! its loop starts), and its figures as runs: ticks in a row with the same figures share one
//! 32-byte entry (numbers narrowed, no allocation). A quiet pool, most pools most of the time,
//! holds a handful of runs; one whose figures change every tick holds a run per tick (36 bytes
//! a tick in all).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::policy::Sample;

/// A figure that was not known at that tick.
const UNKNOWN_U32: u32 = u32::MAX;
const UNKNOWN_U64: u64 = u64::MAX;
/// Reasons kept per pool for `kubectl celery why`.
pub const NOTES: usize = 20;

/// The figures of one tick of one pool, and how many ticks in a row had them: a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    /// Messages ready over the pool's queues, as two halves (low, high: so that a run packs in
    /// 32 bytes); [`UNKNOWN_U64`] when the broker could not be read. See [`Run::backlog`].
    backlog_halves: [u32; 2],
    /// Delivered and unacknowledged, where the broker tells; saturated.
    reserved: u32,
    /// Tasks in progress per worker (rounded mean over the pods Flower reports).
    active_tasks: u32,
    /// Mean CPU in use and requested per worker pod, in millicores.
    cpu_millis: u32,
    cpu_request_millis: u32,
    /// The count that ran, and the count decided (at most 1000 either: the CRD's bound).
    replicas: u16,
    decided: u16,
    /// What the shadow policy answered; `u16::MAX` when there is none or it failed.
    shadow: u16,
    /// Ticks in a row with these figures (at most `u16::MAX`: a longer stretch takes two runs).
    ticks: u16,
}

impl Run {
    fn backlog(&self) -> u64 {
        u64::from(self.backlog_halves[0]) | (u64::from(self.backlog_halves[1]) << 32)
    }

    /// Whether a tick with `figures` extends this run.
    fn extended_by(&self, figures: &Run) -> bool {
        Run { ticks: 0, ..*self } == Run { ticks: 0, ..*figures } && self.ticks < u16::MAX
    }
}

fn halves(n: u64) -> [u32; 2] {
    [n as u32, (n >> 32) as u32]
}

/// What one tick measured, taken before the sample goes to the policies (it is theirs then).
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    t_ms: u64,
    figures: Run,
}

impl Measured {
    /// The figures of `sample`; `broker_failed`: the backlog was not known (the sample then
    /// holds no queues).
    pub fn of(sample: &Sample, broker_failed: bool) -> Self {
        let saturate = |n: u64| u32::try_from(n).unwrap_or(UNKNOWN_U32 - 1);
        let mean = |values: &mut dyn Iterator<Item = u64>| -> u32 {
            let (sum, n) = values.fold((0u64, 0u64), |(sum, n), v| (sum.saturating_add(v), n + 1));
            (sum.saturating_add(n / 2)).checked_div(n).map_or(UNKNOWN_U32, saturate)
        };
        let pods = &sample.pods;
        let reserved: Option<u64> = sample.queues.iter().map(|q| q.reserved).sum();
        let figures = Run {
            backlog_halves: halves(if broker_failed {
                UNKNOWN_U64
            } else {
                sample.queues.iter().map(|q| q.backlog).fold(0u64, u64::saturating_add).min(UNKNOWN_U64 - 1)
            }),
            reserved: match reserved {
                Some(r) if !broker_failed => saturate(r),
                _ => UNKNOWN_U32,
            },
            active_tasks: mean(&mut pods.iter().filter_map(|p| p.active_tasks.map(u64::from))),
            cpu_millis: mean(&mut pods.iter().filter_map(|p| p.cpu_millis)),
            cpu_request_millis: mean(&mut pods.iter().filter_map(|p| p.cpu_request_millis)),
            replicas: u16::try_from(sample.replicas).unwrap_or(u16::MAX),
            decided: 0,
            shadow: u16::MAX,
            ticks: 1,
        };
        Self { t_ms: sample.timestamp_ms, figures }
    }
}

/// What a pool ran with: the head of its CSV, read back by `policy simulate`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Setup {
    /// `namespace/name` or `namespace/name/group`.
    pub label: String,
    /// Each policy with its settings, in the spec's order, and how they combine.
    pub policies: Vec<(String, Vec<(String, String)>)>,
    pub combine: String,
    pub min: u32,
    pub max: u32,
    pub concurrency: u32,
    pub interval: Duration,
    pub stabilization: Duration,
    pub step_percent: u32,
    pub step_period: Duration,
}

/// A decision worth a line in `why`: one that changed the count or the condition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Note {
    pub t_ms: u64,
    pub backlog: Option<u64>,
    pub replicas: u32,
    pub decided: u32,
    pub reason: String,
}

/// The ring of one pool.
#[derive(Debug)]
pub struct Trace {
    setup: Setup,
    /// The time of the oldest tick held, and of the newest, in milliseconds since the epoch.
    start_ms: u64,
    last_ms: u64,
    /// Per tick held, oldest first: milliseconds since the tick before (0 for the oldest).
    gaps: VecDeque<u32>,
    /// The ticks' figures, oldest first; their `ticks` add up to `gaps.len()`.
    runs: VecDeque<Run>,
    /// Ticks held at most.
    capacity: usize,
    notes: VecDeque<Note>,
    last_reason: String,
}

impl Trace {
    fn new(setup: Setup, window: Duration) -> Self {
        let capacity = ticks_for(window, setup.interval);
        Self {
            setup,
            start_ms: 0,
            last_ms: 0,
            gaps: VecDeque::with_capacity(capacity),
            runs: VecDeque::new(),
            capacity,
            notes: VecDeque::new(),
            last_reason: String::new(),
        }
    }

    /// Takes a changed setup; a changed interval resizes the ring (the newest ticks stay).
    pub fn set_setup(&mut self, setup: Setup, window: Duration) {
        let capacity = ticks_for(window, setup.interval);
        if capacity != self.capacity {
            while self.gaps.len() > capacity {
                self.drop_oldest();
            }
            self.gaps.shrink_to(capacity);
            self.gaps.reserve_exact(capacity.saturating_sub(self.gaps.len()));
            self.capacity = capacity;
        }
        self.setup = setup;
    }

    /// Forgets the oldest tick.
    fn drop_oldest(&mut self) {
        self.gaps.pop_front();
        if let Some(gap) = self.gaps.front_mut() {
            self.start_ms += u64::from(*gap);
            *gap = 0;
        }
        if let Some(run) = self.runs.front_mut() {
            run.ticks -= 1;
            if run.ticks == 0 {
                self.runs.pop_front();
                // A pool that was busy and is quiet again gives back its runs' memory.
                if self.runs.capacity() > 64 && self.runs.len() * 4 < self.runs.capacity() {
                    self.runs.shrink_to(self.runs.len() * 2);
                }
            }
        }
    }

    /// Records one tick: what was measured, what was decided and why, and what the shadow
    /// policy (if any) would have decided.
    /// The reason is formatted in place (into the latest reason's buffer), not allocated per tick.
    pub fn record(
        &mut self,
        measured: Measured,
        decided: u32,
        shadow: Option<u32>,
        health_changed: bool,
        reason: std::fmt::Arguments<'_>,
    ) {
        if self.capacity == 0 {
            return;
        }
        self.last_reason.clear();
        let _ = self.last_reason.write_fmt(reason);
        let shadow = shadow.map_or(u16::MAX, |n| u16::try_from(n).unwrap_or(u16::MAX - 1));
        let figures = Run { decided: u16::try_from(decided).unwrap_or(u16::MAX), shadow, ..measured.figures };
        if self.gaps.len() == self.capacity {
            self.drop_oldest();
        }
        // A clock that steps back records the tick as taken with the one before.
        if self.gaps.is_empty() {
            self.start_ms = measured.t_ms;
            self.gaps.push_back(0);
        } else {
            let gap = measured.t_ms.saturating_sub(self.last_ms);
            self.gaps.push_back(u32::try_from(gap).unwrap_or(u32::MAX));
        }
        self.last_ms = self.last_ms.max(measured.t_ms);
        match self.runs.back_mut() {
            Some(run) if run.extended_by(&figures) => run.ticks += 1,
            _ => {
                // Grown by half, not doubled, and never past a run per tick: a pool whose
                // figures change every tick holds at most the ring's ticks in runs.
                if self.runs.len() == self.runs.capacity() {
                    let more = (self.runs.len() / 2).max(16).min(self.capacity.saturating_sub(self.runs.len())).max(1);
                    self.runs.reserve_exact(more);
                }
                self.runs.push_back(figures);
            }
        }
        let replicas = u32::from(figures.replicas);
        if decided != replicas || health_changed || self.notes.is_empty() {
            if self.notes.len() == NOTES {
                self.notes.pop_front();
            }
            self.notes.push_back(Note {
                t_ms: measured.t_ms,
                backlog: (figures.backlog() != UNKNOWN_U64).then_some(figures.backlog()),
                replicas,
                decided,
                reason: self.last_reason.clone(),
            });
        }
    }

    /// Every tick held, oldest first: milliseconds since the oldest, and its figures.
    fn ticks(&self) -> impl Iterator<Item = (u64, &Run)> {
        let figures = self.runs.iter().flat_map(|run| std::iter::repeat_n(run, usize::from(run.ticks)));
        let at = self.gaps.iter().scan(0u64, |t, gap| {
            *t += u64::from(*gap);
            Some(*t)
        });
        at.zip(figures)
    }

    /// Bytes the ring holds for its ticks (allocated, not only used).
    pub fn heap_bytes(&self) -> usize {
        self.gaps.capacity() * std::mem::size_of::<u32>() + self.runs.capacity() * std::mem::size_of::<Run>()
    }

    /// The decisions that changed something, oldest first, and the latest.
    pub fn notes(&self) -> (Vec<Note>, &str) {
        (self.notes.iter().cloned().collect(), &self.last_reason)
    }

    /// The ring as CSV: `#` lines naming what the pool ran with (as `policy simulate` reads
    /// them), then `t_seconds` from the first row, the measured columns, `replicas` (what
    /// ran), `decided` (what the operator decided) and `shadow` (what the shadow policy would
    /// have, when there is one).
    pub fn csv(&self) -> String {
        let s = &self.setup;
        let mut out = String::with_capacity(64 * (self.gaps.len() + 8));
        let start = self.start_ms;
        let _ = writeln!(out, "# celery-operator trace of {}", s.label);
        let _ = writeln!(out, "# epoch-ms: {start}");
        for (name, settings) in &s.policies {
            let settings: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "# policy: {name} {}", settings.join(" ").trim());
        }
        let _ = writeln!(out, "# combine: {}", s.combine);
        let _ = writeln!(
            out,
            "# options: min={} max={} concurrency={} interval-seconds={} stabilization-seconds={} step-percent={} step-period-seconds={}",
            s.min,
            s.max,
            s.concurrency,
            s.interval.as_secs(),
            s.stabilization.as_secs(),
            s.step_percent,
            s.step_period.as_secs()
        );
        out.push_str("t_seconds,backlog,replicas,reserved,active_tasks,cpu_millis,cpu_request_millis,decided,shadow\n");
        let cell32 = |v: u32| if v == UNKNOWN_U32 { String::new() } else { v.to_string() };
        for (since, r) in self.ticks() {
            let t_seconds = since as f64 / 1000.0;
            if r.backlog() == UNKNOWN_U64 {
                // A tick without a backlog cannot be replayed: the policies that need it held.
                let _ = writeln!(out, "# {t_seconds:.3}: backlog unknown, {} held", r.replicas);
                continue;
            }
            let shadow = if r.shadow == u16::MAX { String::new() } else { r.shadow.to_string() };
            let _ = writeln!(
                out,
                "{t_seconds:.3},{},{},{},{},{},{},{},{shadow}",
                r.backlog(),
                r.replicas,
                cell32(r.reserved),
                cell32(r.active_tasks),
                cell32(r.cpu_millis),
                cell32(r.cpu_request_millis),
                r.decided
            );
        }
        out
    }

    /// Ticks held.
    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty()
    }
}

/// Ticks that hold `window` at one per `interval`.
fn ticks_for(window: Duration, interval: Duration) -> usize {
    let interval = interval.max(Duration::from_secs(1));
    usize::try_from(window.as_secs().div_ceil(interval.as_secs())).unwrap_or(usize::MAX)
}

/// Every pool's ring, by label, shared by the loops (which write) and the endpoint (which reads).
#[derive(Debug)]
pub struct Traces {
    window: Duration,
    rings: Mutex<HashMap<String, Arc<Mutex<Trace>>>>,
}

impl Traces {
    /// Rings that keep `window` of ticks; a zero window keeps none.
    pub fn new(window: Duration) -> Arc<Self> {
        Arc::new(Self { window, rings: Mutex::new(HashMap::new()) })
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// The ring of a pool, made when it has none (a loop that starts again keeps its past).
    pub fn ring(&self, setup: Setup) -> Arc<Mutex<Trace>> {
        let mut rings = self.rings.lock().expect("traces lock");
        let ring =
            rings.entry(setup.label.clone()).or_insert_with(|| Arc::new(Mutex::new(Trace::new(setup.clone(), self.window))));
        ring.lock().expect("trace lock").set_setup(setup, self.window);
        Arc::clone(ring)
    }

    /// Forgets a pool whose app or group is gone.
    pub fn forget(&self, label: &str) {
        self.rings.lock().expect("traces lock").remove(label);
    }

    pub fn get(&self, label: &str) -> Option<Arc<Mutex<Trace>>> {
        self.rings.lock().expect("traces lock").get(label).cloned()
    }

    /// Ticks held over all rings, and the bytes they take, for the memory figures.
    pub fn held(&self) -> (usize, usize) {
        let rings = self.rings.lock().expect("traces lock");
        rings
            .values()
            .map(|r| r.lock().expect("trace lock"))
            .fold((0, 0), |(ticks, bytes), r| (ticks + r.len(), bytes + r.heap_bytes()))
    }
}

/// Bytes a run of ticks with the same figures takes in a ring, and a tick's time.
pub const RUN_BYTES: usize = std::mem::size_of::<Run>();
pub const TICK_BYTES: usize = std::mem::size_of::<u32>();

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::simulate::parse_trace;
    use crate::policy::{PodSample, QueueSample};

    fn sample(t_ms: u64, backlog: u64, replicas: u32) -> Sample {
        let pod = |i: u32| PodSample {
            name: format!("w-{i}"),
            ready: true,
            cpu_millis: Some(100 + u64::from(i)),
            cpu_request_millis: Some(500),
            memory_bytes: None,
            memory_request_bytes: None,
            active_tasks: Some(i),
        };
        Sample {
            timestamp_ms: t_ms,
            replicas,
            queues: vec![QueueSample { name: "celery".into(), backlog, reserved: None, consumers: None }],
            pods: (0..replicas).map(pod).collect(),
        }
    }

    fn setup() -> Setup {
        Setup {
            label: "shop/orders".into(),
            policies: vec![("queue-length".into(), vec![("target".into(), "10".into())])],
            combine: "Max".into(),
            min: 1,
            max: 8,
            concurrency: 4,
            interval: Duration::from_secs(1),
            stabilization: Duration::from_secs(60),
            step_percent: 50,
            step_period: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_run_is_small_and_the_ring_is_bounded_by_time() {
        assert_eq!((RUN_BYTES, TICK_BYTES), (32, 4));
        let traces = Traces::new(Duration::from_secs(5));
        let ring = traces.ring(setup());
        let mut trace = ring.lock().unwrap();
        for t in 0..8u64 {
            trace.record(Measured::of(&sample(1_000 * t, t * 10, 2), false), 2, None, false, format_args!("same"));
        }
        assert_eq!(trace.len(), 5, "5 s at one tick a second");
        let csv = trace.csv();
        assert!(csv.contains("# epoch-ms: 3000\n") && csv.contains("\n0.000,30,2,"), "the oldest ticks went first: {csv}");
    }

    /// Ticks with the same figures share a run, and the ring still gives back every tick at
    /// its own time, in order, as a ring of whole rows would, while ticks fall off the front
    /// across runs.
    #[test]
    fn runs_give_back_every_tick_at_its_own_time() {
        let window = Duration::from_secs(20);
        let traces = Traces::new(window);
        let ring = traces.ring(setup());
        let mut trace = ring.lock().unwrap();
        // (time, backlog, decided): quiet stretches, a burst that changes every tick, a clock
        // that steps back once, and uneven gaps.
        let mut ticks = Vec::new();
        let mut t = 5_000u64;
        for i in 0..60u64 {
            let backlog = if (20..30).contains(&i) { i * 3 } else { 0 };
            t = if i == 40 { t - 300 } else { t + 1_000 + (i % 3) * 7 };
            ticks.push((t, backlog, if backlog > 0 { 3 } else { 2 }));
        }
        let mut written = Vec::new();
        let mut latest = 0;
        for (i, &(t, backlog, decided)) in ticks.iter().enumerate() {
            trace.record(Measured::of(&sample(t, backlog, 2), i == 33), decided, None, false, format_args!("r"));
            // A tick taken before the latest one is held as taken with it.
            latest = t.max(latest);
            written.push((latest, backlog, decided, i == 33));
            // After every tick, the ring holds the last 20, each as recorded.
            let held = &written[written.len().saturating_sub(20)..];
            let start = held[0].0;
            let expected: Vec<String> = held
                .iter()
                .map(|&(t, backlog, decided, unknown)| {
                    let at = t - start;
                    if unknown {
                        format!("# {:.3}: backlog unknown, 2 held", at as f64 / 1000.0)
                    } else {
                        format!("{:.3},{backlog},2,,1,101,500,{decided},", at as f64 / 1000.0)
                    }
                })
                .collect();
            let csv = trace.csv();
            assert!(csv.contains(&format!("# epoch-ms: {start}\n")), "tick {i}: {csv}");
            let lines: Vec<&str> = csv.lines().skip_while(|l| !l.starts_with("t_seconds")).skip(1).collect();
            assert_eq!(lines, expected, "tick {i}");
        }
        // The last 20 ticks: a quiet stretch, so one run, whatever came before.
        assert_eq!(trace.runs.len(), 1, "{:?}", trace.runs);
        assert_eq!(trace.heap_bytes(), 20 * TICK_BYTES + trace.runs.capacity() * RUN_BYTES);
    }

    /// A stretch longer than a run holds takes two, and every tick of it stays.
    #[test]
    fn a_long_quiet_stretch_takes_two_runs() {
        let traces = Traces::new(Duration::from_secs(70_000));
        let ring = traces.ring(setup());
        let mut trace = ring.lock().unwrap();
        for t in 0..66_000u64 {
            trace.record(Measured::of(&sample(1_000 * t, 0, 2), false), 2, None, false, format_args!("quiet"));
        }
        assert_eq!((trace.len(), trace.runs.len()), (66_000, 2));
        let csv = trace.csv();
        assert_eq!(csv.lines().filter(|l| l.ends_with(",0,2,,1,101,500,2,")).count(), 66_000);
        assert!(csv.contains("\n65999.000,0,2,"), "the last tick at its time");
    }

    /// The CSV is what `policy simulate --trace` reads, with the measured means and the
    /// decided count; a tick whose backlog was unknown is a comment.
    #[test]
    fn the_csv_is_a_simulate_trace() {
        let traces = Traces::new(Duration::from_secs(900));
        let ring = traces.ring(setup());
        let mut trace = ring.lock().unwrap();
        trace.record(Measured::of(&sample(10_000, 30, 2), false), 3, Some(5), false, format_args!("30 messages → 3"));
        trace.record(Measured::of(&sample(11_000, 0, 3), true), 3, None, true, format_args!("broker down"));
        trace.record(Measured::of(&sample(12_500, 5, 3), false), 3, None, false, format_args!("5 messages → 1"));
        let csv = trace.csv();
        assert!(csv.contains("# policy: queue-length target=10\n"), "{csv}");
        assert!(csv.contains("# options: min=1 max=8 concurrency=4 interval-seconds=1 stabilization-seconds=60"), "{csv}");
        let rows = parse_trace(&csv).expect("simulate reads it");
        assert_eq!(rows.len(), 2, "{csv}");
        assert_eq!((rows[0].t_seconds, rows[0].backlog, rows[0].replicas), (0.0, 30, Some(2)));
        assert_eq!((rows[0].active_tasks, rows[0].cpu_millis, rows[0].cpu_request_millis), (Some(1), Some(101), Some(500)));
        assert_eq!((rows[1].t_seconds, rows[1].backlog, rows[1].decided), (2.5, 5, Some(3)));
        assert!(
            csv.contains("\n0.000,30,2,,1,101,500,3,5\n") && csv.contains("\n2.500,5,3,,1,101,500,3,\n"),
            "the shadow column: {csv}"
        );
        let (notes, last) = trace.notes();
        assert_eq!(notes.iter().map(|n| n.reason.as_str()).collect::<Vec<_>>(), ["30 messages → 3", "broker down"]);
        assert_eq!(last, "5 messages → 1");
    }
}
