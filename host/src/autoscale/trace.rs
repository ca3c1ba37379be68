//! The recent past of every autoscaled pool, kept to be replayed: one compact row per tick
//! (what was measured, the count that ran, the count decided) in a ring bounded by time (15
//! minutes by default, `--trace-minutes`), and the reasons of the last decisions that changed
//! something. `GET /trace/NAMESPACE/NAME` ([`crate::server`]) writes a ring as the CSV that
//! `celery-operator policy simulate --trace` reads ([`Trace::csv`]), headed by the policies,
//! bounds and damping it ran with, so a replay needs no other flag.
//!
//! A row is 40 bytes (numbers narrowed, no allocation): at the default one-second interval a
//! pool's 15 minutes are 900 rows, 35 KiB, allocated once when its loop starts.

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

/// One tick of one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Row {
    t_ms: u64,
    /// Messages ready over the pool's queues; [`UNKNOWN_U64`] when the broker could not be read.
    backlog: u64,
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
}

/// What one tick measured, taken before the sample goes to the policies (it is theirs then).
#[derive(Clone, Copy, Debug)]
pub struct Measured(Row);

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
        Self(Row {
            t_ms: sample.timestamp_ms,
            backlog: if broker_failed {
                UNKNOWN_U64
            } else {
                sample.queues.iter().map(|q| q.backlog).fold(0u64, u64::saturating_add).min(UNKNOWN_U64 - 1)
            },
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
        })
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
    rows: VecDeque<Row>,
    capacity: usize,
    notes: VecDeque<Note>,
    last_reason: String,
}

impl Trace {
    fn new(setup: Setup, window: Duration) -> Self {
        let capacity = rows_for(window, setup.interval);
        Self { setup, rows: VecDeque::with_capacity(capacity), capacity, notes: VecDeque::new(), last_reason: String::new() }
    }

    /// Takes a changed setup; a changed interval resizes the ring (the newest rows stay).
    pub fn set_setup(&mut self, setup: Setup, window: Duration) {
        let capacity = rows_for(window, setup.interval);
        if capacity != self.capacity {
            while self.rows.len() > capacity {
                self.rows.pop_front();
            }
            self.rows.shrink_to(capacity);
            self.rows.reserve_exact(capacity.saturating_sub(self.rows.len()));
            self.capacity = capacity;
        }
        self.setup = setup;
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
        let row = Row { decided: u16::try_from(decided).unwrap_or(u16::MAX), shadow, ..measured.0 };
        if self.rows.len() == self.capacity {
            self.rows.pop_front();
        }
        self.rows.push_back(row);
        let replicas = u32::from(row.replicas);
        if decided != replicas || health_changed || self.notes.is_empty() {
            if self.notes.len() == NOTES {
                self.notes.pop_front();
            }
            self.notes.push_back(Note {
                t_ms: row.t_ms,
                backlog: (row.backlog != UNKNOWN_U64).then_some(row.backlog),
                replicas,
                decided,
                reason: self.last_reason.clone(),
            });
        }
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
        let mut out = String::with_capacity(64 * (self.rows.len() + 8));
        let start = self.rows.front().map_or(0, |r| r.t_ms);
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
        for r in &self.rows {
            if r.backlog == UNKNOWN_U64 {
                // A tick without a backlog cannot be replayed: the policies that need it held.
                let _ = writeln!(out, "# {:.3}: backlog unknown, {} held", (r.t_ms - start) as f64 / 1000.0, r.replicas);
                continue;
            }
            let shadow = if r.shadow == u16::MAX { String::new() } else { r.shadow.to_string() };
            let _ = writeln!(
                out,
                "{:.3},{},{},{},{},{},{},{},{shadow}",
                (r.t_ms - start) as f64 / 1000.0,
                r.backlog,
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

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// Rows that hold `window` at one per `interval`.
fn rows_for(window: Duration, interval: Duration) -> usize {
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

    /// Rows held over all rings, for the memory figures.
    pub fn rows(&self) -> usize {
        self.rings.lock().expect("traces lock").values().map(|r| r.lock().expect("trace lock").len()).sum()
    }
}

/// Bytes one row takes in a ring.
pub const ROW_BYTES: usize = std::mem::size_of::<Row>();

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
    fn a_row_is_small_and_the_ring_is_bounded_by_time() {
        assert_eq!(ROW_BYTES, 40);
        let traces = Traces::new(Duration::from_secs(5));
        let ring = traces.ring(setup());
        let mut trace = ring.lock().unwrap();
        for t in 0..8u64 {
            trace.record(Measured::of(&sample(1_000 * t, t * 10, 2), false), 2, None, false, format_args!("same"));
        }
        assert_eq!(trace.len(), 5, "5 s at one row a second");
        let csv = trace.csv();
        assert!(csv.contains("# epoch-ms: 3000\n") && csv.contains("\n0.000,30,2,"), "the oldest rows went first: {csv}");
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
