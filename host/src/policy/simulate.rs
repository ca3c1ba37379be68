//! Replaying a recorded trace through a policy, for `celery-operator policy simulate`.
//!
//! A trace is CSV with a header: `t_seconds` and `backlog` are required; `replicas` (what the
//! cluster ran when the trace was recorded, plotted for comparison), `reserved`,
//! `active_tasks` (per worker), `cpu_millis` and `cpu_request_millis` (per worker pod) are
//! optional. The backlog is replayed as recorded: a simulation shows what the policy would
//! have asked for, not how the queue would have responded. Each step applies the host's
//! bounds and scale-down stabilisation, exactly as the autoscaling loop does, and a policy
//! error holds the replica count, as the operator does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::loader::LoadedPolicy;
use super::runner::{CallLimits, Verdict};
use super::{PodSample, PolicyInput, QueueSample, Sample};
use crate::decide::stabilize::Damper;

/// One row of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRow {
    pub t_seconds: f64,
    pub backlog: u64,
    pub replicas: Option<u32>,
    pub reserved: Option<u64>,
    pub active_tasks: Option<u32>,
    pub cpu_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
}

/// Parses a trace; errors name the line and column.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRow>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let (_, header) = lines.next().ok_or("the trace is empty")?;
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let index = |name: &str| columns.iter().position(|c| c == name);
    let t = index("t_seconds").ok_or("the header needs a t_seconds column")?;
    let backlog = index("backlog").ok_or("the header needs a backlog column")?;
    let optional = ["replicas", "reserved", "active_tasks", "cpu_millis", "cpu_request_millis"].map(index);
    let mut rows = Vec::new();
    for (number, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let cell = |i: usize| cells.get(i).copied().filter(|c| !c.is_empty());
        let bad = |column: &str, value: &str| format!("line {}: {column} `{value}` is not a number", number + 1);
        let num = |i: Option<usize>, column: &str| -> Result<Option<u64>, String> {
            match i.and_then(cell) {
                None => Ok(None),
                Some(v) => v.parse::<u64>().map(Some).map_err(|_| bad(column, v)),
            }
        };
        let t_value = cell(t).ok_or(format!("line {}: no t_seconds", number + 1))?;
        let t_seconds = t_value.parse::<f64>().map_err(|_| bad("t_seconds", t_value))?;
        let backlog = num(Some(backlog), "backlog")?.ok_or(format!("line {}: no backlog", number + 1))?;
        let small = |v: Option<u64>, column: &str| -> Result<Option<u32>, String> {
            v.map(|v| u32::try_from(v).map_err(|_| format!("line {}: {column} {v} is too large", number + 1))).transpose()
        };
        rows.push(TraceRow {
            t_seconds,
            backlog,
            replicas: small(num(optional[0], "replicas")?, "replicas")?,
            reserved: num(optional[1], "reserved")?,
            active_tasks: small(num(optional[2], "active_tasks")?, "active_tasks")?,
            cpu_millis: num(optional[3], "cpu_millis")?,
            cpu_request_millis: num(optional[4], "cpu_request_millis")?,
        });
    }
    if rows.is_empty() {
        return Err("the trace has a header but no rows".into());
    }
    Ok(rows)
}

/// The bounds and knobs of a simulation.
#[derive(Clone, Debug)]
pub struct SimulateOptions {
    pub app: String,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub concurrency: u32,
    /// Replicas at the start; the trace's first `replicas` if absent.
    pub initial_replicas: Option<u32>,
    /// Scale-down damping, as `spec.autoscaling.scaleDown` sets it for the loop.
    pub stabilization: Duration,
    pub step_percent: u32,
    pub step_period: Duration,
    pub history: usize,
    pub settings: BTreeMap<String, String>,
    /// Unix time of `t_seconds = 0`, in milliseconds.
    pub epoch_ms: u64,
}

/// One step of the replica timeline.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Step {
    pub t_seconds: f64,
    pub backlog: u64,
    pub recorded_replicas: Option<u32>,
    /// What the policy asked for; `None` when it failed.
    pub proposed: Option<u32>,
    /// Replicas after bounds and stabilisation.
    pub replicas: u32,
    pub reason: String,
}

/// Builds the sample of a row for `replicas` workers.
fn sample_of(row: &TraceRow, replicas: u32, epoch_ms: u64) -> Sample {
    let pods = (0..replicas)
        .map(|i| PodSample {
            name: format!("worker-{i}"),
            ready: true,
            cpu_millis: row.cpu_millis,
            cpu_request_millis: row.cpu_request_millis,
            memory_bytes: None,
            memory_request_bytes: None,
            active_tasks: row.active_tasks,
        })
        .collect();
    Sample {
        timestamp_ms: epoch_ms.saturating_add((row.t_seconds.max(0.0) * 1000.0) as u64),
        replicas,
        queues: vec![QueueSample {
            name: "celery".into(),
            backlog: row.backlog,
            reserved: row.reserved,
            consumers: Some(replicas),
        }],
        pods,
    }
}

/// Replays `rows` through `policy`.
pub fn simulate(policy: &LoadedPolicy, limits: &CallLimits, rows: &[TraceRow], options: &SimulateOptions) -> Vec<Step> {
    let mut replicas = options.initial_replicas.or_else(|| rows.first().and_then(|r| r.replicas)).unwrap_or(options.min_replicas);
    let mut damper = Damper::new(options.stabilization, options.step_percent, options.step_period);
    let mut history: Vec<Sample> = Vec::new();
    let mut steps = Vec::with_capacity(rows.len());
    for row in rows {
        let current = sample_of(row, replicas, options.epoch_ms);
        let input = PolicyInput {
            app: options.app.clone(),
            current_replicas: replicas,
            min_replicas: options.min_replicas,
            max_replicas: options.max_replicas,
            concurrency: options.concurrency,
            current: current.clone(),
            history: history.clone(),
            settings: options.settings.clone(),
        };
        let (proposed, reason) = match policy.decide(limits, &input) {
            Ok(decision) if decision.declined().is_some() => {
                (None, format!("held: the policy declined: {}", decision.declined().unwrap_or_default()))
            }
            Ok(decision) => {
                let verdict = Verdict::bounded(decision, options.min_replicas, options.max_replicas);
                replicas = damper.next(current.timestamp_ms, replicas, verdict.decision.replicas);
                let reason = if replicas > verdict.decision.replicas {
                    format!(
                        "{}; held at {replicas} by scale-down damping ({} s window, steps of {}% every {} s)",
                        verdict.decision.reason,
                        options.stabilization.as_secs(),
                        options.step_percent,
                        options.step_period.as_secs()
                    )
                } else {
                    verdict.decision.reason
                };
                (Some(verdict.proposed), reason)
            }
            Err(error) => (None, format!("held: {error}")),
        };
        steps.push(Step {
            t_seconds: row.t_seconds,
            backlog: row.backlog,
            recorded_replicas: row.replicas,
            proposed,
            replicas,
            reason,
        });
        history.push(current);
        if history.len() > options.history {
            history.remove(0);
        }
    }
    steps
}

/// The timeline as a text table.
pub fn timeline(steps: &[Step]) -> String {
    let mut out = String::from("   t(s)    backlog  proposed  replicas  reason\n");
    for s in steps {
        let proposed = s.proposed.map_or("-".to_string(), |p| p.to_string());
        let _ = writeln!(out, "{:>7.1} {:>10} {:>9} {:>9}  {}", s.t_seconds, s.backlog, proposed, s.replicas, s.reason);
    }
    out
}

/// Backlog (left axis) and replicas (right axis) over time, as a self-contained SVG.
pub fn plot_svg(steps: &[Step], title: &str) -> String {
    const W: f64 = 800.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0;
    const R: f64 = 60.0;
    const T: f64 = 56.0;
    const B: f64 = 50.0;
    let t_min = steps.iter().map(|s| s.t_seconds).fold(f64::INFINITY, f64::min);
    let t_max = steps.iter().map(|s| s.t_seconds).fold(f64::NEG_INFINITY, f64::max);
    let t_span = if t_max > t_min { t_max - t_min } else { 1.0 };
    let backlog_max = steps.iter().map(|s| s.backlog).max().unwrap_or(0).max(1) as f64;
    let replicas_max = steps.iter().map(|s| s.replicas.max(s.recorded_replicas.unwrap_or(0))).max().unwrap_or(0).max(1) as f64;
    let x = |t: f64| L + (t - t_min) / t_span * (W - L - R);
    let y = |v: f64, max: f64| H - B - v / max * (H - T - B);
    let line = |points: Vec<(f64, f64)>, color: &str, step: bool| {
        let mut d = String::new();
        let mut last: Option<(f64, f64)> = None;
        for (px, py) in points {
            match last {
                None => {
                    let _ = write!(d, "M{px:.1},{py:.1}");
                }
                Some((_, ly)) if step => {
                    let _ = write!(d, " L{px:.1},{ly:.1} L{px:.1},{py:.1}");
                }
                Some(_) => {
                    let _ = write!(d, " L{px:.1},{py:.1}");
                }
            }
            last = Some((px, py));
        }
        format!(r#"<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>"#)
    };
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#, W / 2.0, escape(title));
    let _ = writeln!(
        svg,
        r##"<g stroke="#999"><line x1="{L}" y1="{}" x2="{}" y2="{}"/><line x1="{L}" y1="{T}" x2="{L}" y2="{}"/><line x1="{}" y1="{T}" x2="{}" y2="{}"/></g>"##,
        H - B,
        W - R,
        H - B,
        H - B,
        W - R,
        W - R,
        H - B
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" text-anchor="end" fill="#1f77b4">{:.0}</text>"##,
            L - 6.0,
            y(f * backlog_max, backlog_max) + 4.0,
            f * backlog_max
        );
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{:.1}" fill="#d62728">{:.1}</text>"##,
            W - R + 6.0,
            y(f * replicas_max, replicas_max) + 4.0,
            f * replicas_max
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.0}</text>"#,
            x(t_min + f * t_span),
            H - B + 18.0,
            t_min + f * t_span
        );
    }
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#, (L + W - R) / 2.0, H - 12.0);
    let _ = writeln!(
        svg,
        "{}",
        line(steps.iter().map(|s| (x(s.t_seconds), y(s.backlog as f64, backlog_max))).collect(), "#1f77b4", false)
    );
    if steps.iter().any(|s| s.recorded_replicas.is_some()) {
        let recorded =
            steps.iter().filter_map(|s| s.recorded_replicas.map(|r| (x(s.t_seconds), y(f64::from(r), replicas_max)))).collect();
        let _ = writeln!(svg, r#"<g stroke-dasharray="4 3">{}</g>"#, line(recorded, "#999999", true));
    }
    let _ = writeln!(
        svg,
        "{}",
        line(steps.iter().map(|s| (x(s.t_seconds), y(f64::from(s.replicas), replicas_max))).collect(), "#d62728", true)
    );
    let _ = writeln!(
        svg,
        r##"<g><rect x="{}" y="{}" width="12" height="3" fill="#1f77b4"/><text x="{}" y="{}">backlog (left)</text><rect x="{}" y="{}" width="12" height="3" fill="#d62728"/><text x="{}" y="{}">replicas (right)</text><rect x="{}" y="{}" width="12" height="3" fill="#999999"/><text x="{}" y="{}">recorded replicas</text></g>"##,
        L + 10.0,
        T - 22.0,
        L + 26.0,
        T - 17.0,
        L + 130.0,
        T - 22.0,
        L + 146.0,
        T - 17.0,
        L + 260.0,
        T - 22.0,
        L + 276.0,
        T - 17.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_parse_with_optional_columns() {
        let rows = parse_trace("t_seconds,backlog,replicas\n0,10,1\n15,200,\n# comment\n30,0,2\n").expect("parses");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].replicas, None);
        assert_eq!(rows[2].replicas, Some(2));
        assert_eq!(rows[0].cpu_millis, None);
    }

    #[test]
    fn trace_errors_name_the_line() {
        let error = parse_trace("t_seconds,backlog\n0,ten\n").expect_err("bad number");
        assert!(error.contains("line 2") && error.contains("backlog"), "{error}");
        assert!(parse_trace("time,backlog\n0,1\n").is_err());
        assert!(parse_trace("t_seconds,backlog\n").is_err());
    }

    #[test]
    fn plot_is_svg_with_both_series() {
        let steps = vec![
            Step {
                t_seconds: 0.0,
                backlog: 10,
                recorded_replicas: Some(1),
                proposed: Some(1),
                replicas: 1,
                reason: String::new(),
            },
            Step {
                t_seconds: 10.0,
                backlog: 100,
                recorded_replicas: Some(1),
                proposed: Some(4),
                replicas: 4,
                reason: String::new(),
            },
        ];
        let svg = plot_svg(&steps, "a <b>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("#1f77b4") && svg.contains("#d62728"));
        assert!(svg.contains("a &lt;b&gt;"));
    }
}
