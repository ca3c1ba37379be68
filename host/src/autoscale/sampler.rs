//! One sample of one app, and the bounded history a policy sees, as plain values.
//!
//! A sample is what a policy decides from: the queues as the broker reported them and the
//! worker pods as the cluster view holds them. A queue whose backlog is unknown makes the whole
//! sample unusable ([`sample`] says which queue), because a policy handed a made-up 0 would
//! scale the app down on missing data.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{AutoscalerStatus, QueueStatus};
use crate::metrics::QueueStats;
use crate::policy::{HISTORY, PodSample, Sample};

/// The sample handed to a policy. `queues` is `None` when no policy of the app needs the
/// broker (CPU and memory only).
pub fn sample(timestamp_ms: u64, replicas: u32, queues: Option<&[QueueStats]>, pods: Vec<PodSample>) -> Result<Sample, String> {
    let queues = match queues {
        None => Vec::new(),
        Some(stats) => stats
            .iter()
            .map(|q| q.to_sample().ok_or_else(|| format!("the backlog of queue {} is unknown", q.name)))
            .collect::<Result<_, _>>()?,
    };
    Ok(Sample { timestamp_ms, replicas, queues, pods })
}

/// Appends `sample` to `history`, keeping the latest `keep` (at most [`HISTORY`]): what the
/// app's policies read. The vector's capacity stays at `keep + 1`: a long-running loop does
/// not grow, and a loop whose policies read no history holds none.
pub fn remember(history: &mut Vec<Sample>, sample: Sample, keep: usize) {
    let keep = keep.min(HISTORY);
    if keep == 0 {
        *history = Vec::new();
        return;
    }
    if history.capacity() != keep + 1 && history.len() <= keep {
        let mut kept = Vec::with_capacity(keep + 1);
        kept.append(history);
        *history = kept;
    }
    history.push(sample);
    if history.len() > keep {
        let excess = history.len() - keep;
        history.drain(..excess);
    }
}

/// Total backlog of the queues in a status, when there are queues and every one is known.
pub fn total_backlog(status: &AutoscalerStatus) -> Option<i64> {
    if status.queues.is_empty() {
        return None;
    }
    status.queues.iter().try_fold(0i64, |sum, q| q.backlog.map(|b| sum.saturating_add(b)))
}

/// Whether the backlog changed enough since `shown` for the status to follow it sooner than
/// its regular refresh: it became known or unknown, empty or not, or moved by a fifth.
pub fn backlog_moved(shown: Option<i64>, now: Option<i64>) -> bool {
    match (shown, now) {
        (Some(a), Some(b)) => (a == 0) != (b == 0) || a.abs_diff(b) * 5 > a.max(b).unsigned_abs(),
        (None, None) => false,
        _ => true,
    }
}

/// The measured part of the status: queues, CPU and memory of the pods.
pub fn measured_status(time: Time, queues: &[QueueStats], pods: &[PodSample]) -> AutoscalerStatus {
    let with_metrics: Vec<_> = pods.iter().filter(|p| p.cpu_millis.is_some() && p.memory_bytes.is_some()).collect();
    let sum = |f: fn(&PodSample) -> Option<u64>| -> Option<i64> {
        (!with_metrics.is_empty()).then(|| with_metrics.iter().filter_map(|p| f(p)).map(to_i64).sum())
    };
    AutoscalerStatus {
        sample_time: Some(time),
        queues: queues
            .iter()
            .map(|q| QueueStatus { name: q.name.clone(), backlog: q.backlog.map(to_i64), reserved: q.reserved.map(to_i64) })
            .collect(),
        cpu_millis: sum(|p| p.cpu_millis),
        memory_bytes: sum(|p| p.memory_bytes),
        pods_with_metrics: Some(with_metrics.len() as i32),
        pods: Some(pods.len() as i32),
        active_tasks: pods.iter().filter_map(|p| p.active_tasks).map(i64::from).reduce(|a, b| a + b),
        last_decision: None,
        last_scale_time: None,
        scale_in: None,
        active_schedules: Vec::new(),
        shadow: None,
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(name: &str, backlog: Option<u64>) -> QueueStats {
        QueueStats { name: name.into(), backlog, reserved: Some(1), consumers: None }
    }

    fn pod(name: &str, cpu: Option<u64>) -> PodSample {
        PodSample {
            name: name.into(),
            ready: true,
            cpu_millis: cpu,
            cpu_request_millis: Some(100),
            memory_bytes: cpu.map(|c| c * 1000),
            memory_request_bytes: None,
            active_tasks: None,
        }
    }

    #[test]
    fn an_unknown_backlog_is_no_sample() {
        let queues = [queue("a", Some(3)), queue("b", None)];
        let error = sample(1, 2, Some(&queues), Vec::new()).unwrap_err();
        assert!(error.contains("queue b"), "{error}");
        let s = sample(1, 2, Some(&queues[..1]), vec![pod("p", None)]).unwrap();
        assert_eq!((s.queues[0].backlog, s.pods.len()), (3, 1));
        assert!(sample(1, 2, None, Vec::new()).unwrap().queues.is_empty(), "queues not needed");
    }

    #[test]
    fn history_is_bounded_and_oldest_first() {
        let mut history = Vec::new();
        for t in 0..(HISTORY as u64 * 3) {
            remember(&mut history, sample(t, 1, None, Vec::new()).unwrap(), usize::MAX);
            assert!(history.capacity() <= HISTORY + 1, "capacity {}", history.capacity());
        }
        assert_eq!(history.len(), HISTORY);
        assert_eq!(history[0].timestamp_ms, HISTORY as u64 * 2);
        assert_eq!(history[HISTORY - 1].timestamp_ms, HISTORY as u64 * 3 - 1);

        // The policies now read 5: the oldest go, and so does the room for them.
        remember(&mut history, sample(1000, 1, None, Vec::new()).unwrap(), 5);
        remember(&mut history, sample(1001, 1, None, Vec::new()).unwrap(), 5);
        let kept: Vec<u64> = history.iter().map(|s| s.timestamp_ms).collect();
        assert_eq!(kept, [HISTORY as u64 * 3 - 3, HISTORY as u64 * 3 - 2, HISTORY as u64 * 3 - 1, 1000, 1001]);
        assert_eq!(history.capacity(), 6);
        // None read it: nothing is held.
        remember(&mut history, sample(1002, 1, None, Vec::new()).unwrap(), 0);
        assert_eq!((history.len(), history.capacity()), (0, 0));
    }

    #[test]
    fn backlog_moves_when_it_matters() {
        assert!(!backlog_moved(Some(100), Some(90)));
        assert!(backlog_moved(Some(100), Some(70)));
        assert!(backlog_moved(Some(0), Some(1)));
        assert!(backlog_moved(Some(3), Some(0)));
        assert!(backlog_moved(None, Some(0)));
        assert!(!backlog_moved(Some(0), Some(0)));
        assert!(!backlog_moved(None, None));
    }

    #[test]
    fn totals_and_status() {
        let time = Time("2026-11-30T00:00:00Z".parse().unwrap());
        let both = measured_status(time.clone(), &[queue("a", Some(3)), queue("b", Some(4))], &[]);
        assert_eq!(total_backlog(&both), Some(7));
        let one_unknown = measured_status(time.clone(), &[queue("a", Some(3)), queue("b", None)], &[]);
        assert_eq!(total_backlog(&one_unknown), None);
        assert_eq!(total_backlog(&measured_status(time.clone(), &[], &[])), None);
        let status = measured_status(time, &[queue("a", Some(3))], &[pod("p", Some(250)), pod("q", None)]);
        assert_eq!((status.cpu_millis, status.memory_bytes), (Some(250), Some(250_000)));
        assert_eq!((status.pods_with_metrics, status.pods), (Some(1), Some(2)));
        assert_eq!(status.queues[0].backlog, Some(3));
        assert_eq!(status.active_tasks, None, "no pod with tasks from Flower: unknown, not 0");
        let mut busy = pod("r", None);
        busy.active_tasks = Some(4);
        let mut idle = pod("s", None);
        idle.active_tasks = Some(0);
        let time = Time("2026-11-30T00:00:00Z".parse().unwrap());
        assert_eq!(measured_status(time, &[], &[busy, idle, pod("t", None)]).active_tasks, Some(4));
        let none = measured_status(Time("2026-11-30T00:00:00Z".parse().unwrap()), &[], &[pod("q", None)]);
        assert_eq!(none.cpu_millis, None, "no pod with metrics: unknown, not 0");
    }
}
