//! The memory of `/trace`'s rings at 1,000 autoscaled apps, beside what keeping the samples the
//! policies see would take, in one run.
//!
//! Every app records 15 minutes of ticks at the default one-second interval (900 ticks: the
//! operator's defaults) from a realistic sample: 3 queues and 10 worker pods with CPU, memory
//! and tasks in progress, and a reason that changes every tick; once with figures that change
//! every tick (the worst case for the rings' runs) and once for quiet apps (the same figures
//! throughout, as most apps are most of the time). A counting allocator gives the heap bytes
//! exactly (no noise): the rings as the operator keeps them, and, as the baseline, a ring of
//! the whole `Sample`s (what a naive trace, or the policies' own history, would hold).
//! It also times a tick's record and one app's CSV.
//!
//! `cargo bench -p celery-operator --bench trace` (APPS=…, MINUTES=…). A benchmark, never a
//! test: nothing here passes or fails on a figure.

#[path = "shared/measure.rs"]
mod measure;

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use celery_operator::autoscale::trace::{Measured, RUN_BYTES, Setup, TICK_BYTES, Traces};
use celery_operator::policy::{PodSample, QueueSample, Sample};

/// Counts the bytes the heap holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// App `app`'s sample at `tick`, with the figures of tick `figures`.
fn sample(app: usize, figures: u64, tick: u64) -> Sample {
    let backlog = (figures * 7 + app as u64) % 500;
    Sample {
        timestamp_ms: 1_764_000_000_000 + tick * 1000,
        replicas: 10,
        queues: ["celery", "reports", "webhooks"]
            .iter()
            .map(|q| QueueSample { name: (*q).into(), backlog, reserved: Some(backlog / 10), consumers: Some(10) })
            .collect(),
        pods: (0..10)
            .map(|i| PodSample {
                name: format!("shop-{app}-celery-worker-7d9f8b6c5-{i:05}"),
                ready: true,
                cpu_millis: Some(300 + i),
                cpu_request_millis: Some(500),
                memory_bytes: Some(100 << 20),
                memory_request_bytes: Some(128 << 20),
                active_tasks: Some(u32::try_from(i % 4).unwrap_or(0)),
            })
            .collect(),
    }
}

fn setup(app: usize) -> Setup {
    Setup {
        label: format!("shop-{app}/orders"),
        policies: vec![("queue-length".into(), vec![("target".into(), "30".into())])],
        combine: "Max".into(),
        min: 1,
        max: 20,
        concurrency: 4,
        interval: Duration::from_secs(1),
        stabilization: Duration::from_secs(60),
        step_percent: 50,
        step_period: Duration::from_secs(15),
    }
}

fn mib(bytes: isize) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Rings of `apps` apps that recorded `ticks` ticks and 60 more (the oldest fell off), their
/// heap bytes, the time recording took, and the first app's CSV with the time it took. `busy`:
/// the figures change every tick (the worst case for the runs); otherwise they stay the same.
fn fill(apps: usize, ticks: u64, busy: bool) -> (std::sync::Arc<Traces>, isize, Duration, String, Duration) {
    let before = live();
    let traces = Traces::new(Duration::from_secs(ticks));
    let rings: Vec<_> = (0..apps).map(|app| traces.ring(setup(app))).collect();
    let mut record = Duration::ZERO;
    for tick in 0..ticks + 60 {
        for (app, ring) in rings.iter().enumerate() {
            let s = sample(app, if busy { tick } else { 0 }, tick);
            let reason =
                format!("{} messages / 30 per worker → {} workers", s.queues[0].backlog * 3, s.queues[0].backlog / 10 + 1);
            let started = Instant::now();
            let measured = Measured::of(&s, false);
            let decided = if busy { 10 + u32::from(tick % 90 == 0) } else { 10 };
            ring.lock().expect("ring").record(measured, decided, Some(9), tick % 300 == 0, format_args!("{reason}"));
            record += started.elapsed();
        }
    }
    let bytes = live() - before;
    let started = Instant::now();
    let csv = rings[0].lock().expect("ring").csv();
    (traces, bytes, record, csv, started.elapsed())
}

fn main() {
    let apps = measure::env_number("APPS", 1000);
    let minutes = measure::env_number("MINUTES", 15) as u64;
    let ticks = minutes * 60;
    println!(
        "{apps} apps, {minutes} min at 1 s ({ticks} ticks each); a tick's time takes {TICK_BYTES} bytes, a run of ticks with the same figures {RUN_BYTES}"
    );

    let quiet = fill(apps, ticks, false);
    let (traces, rings_bytes, record, csv, csv_time) = fill(apps, ticks, true);

    let before = live();
    let mut naive: Vec<VecDeque<Sample>> = Vec::with_capacity(apps);
    for app in 0..apps {
        let mut ring = VecDeque::with_capacity(ticks as usize);
        for tick in 0..ticks {
            ring.push_back(sample(app, tick, tick));
        }
        naive.push(ring);
    }
    let naive_bytes = live() - before;

    let per_app = |bytes: isize| format!("{:.1} KiB", bytes as f64 / 1024.0 / apps as f64);
    println!();
    println!("{:<44} {:>12} {:>12}", "heap", "per app", format!("{apps} apps"));
    println!("{:<44} {:>12} {:>12}", "trace rings, figures changing every tick", per_app(rings_bytes), mib(rings_bytes));
    println!("{:<44} {:>12} {:>12}", "trace rings, quiet apps (same figures)", per_app(quiet.1), mib(quiet.1));
    println!("{:<44} {:>12} {:>12}", "baseline: the samples themselves", per_app(naive_bytes), mib(naive_bytes));
    println!();
    println!(
        "record one tick: {} mean over {} ticks",
        measure::fmt(record / u32::try_from(apps as u64 * (ticks + 60)).unwrap_or(1)),
        apps as u64 * (ticks + 60)
    );
    println!("one app's CSV: {} bytes, written in {}", csv.len(), measure::fmt(csv_time));
    let (held, bytes) = traces.held();
    println!("ticks held: {held}, in {}", mib(bytes as isize));
    drop(naive);
}
