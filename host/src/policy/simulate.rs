//! Replaying a recorded trace through policies, for `celery-operator policy simulate`.
//!
//! A trace is CSV with a header: `t_seconds` and `backlog` are required; `replicas` (what the
//! cluster ran when the trace was recorded, plotted for comparison), `reserved`,
//! `active_tasks` (per worker), `cpu_millis` and `cpu_request_millis` (per worker pod) and
//! `decided` (what the operator decided) are optional. `#` lines are comments, except those a
//! trace from the operator (`celery-operator trace`) starts with, which say what the pool ran
//! with ([`TraceHeader`]): the policies, bounds and damping a replay uses unless told otherwise.
//!
//! Each step goes through the operator's own decision ([`crate::decide::decide`]): the bounds,
//! the combining of several policies, scale-down damping, and a failing policy holding the
//! count, as the autoscaling loop does, so a trace replayed through the policy that recorded it
//! decides what the operator decided. The backlog is replayed as recorded, unless a throughput
//! per worker is given ([`QueueModel`]): then the queue answers the simulated workers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use super::loader::LoadedPolicy;
use super::runner::{CallLimits, Verdict};
use super::{PodSample, PolicyInput, QueueSample, Sample};
use crate::crd::Combine;
use crate::decide::stabilize::Damper;
use crate::decide::{self, Answer, Bounds, Choice, Health};

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
    /// The count the operator decided at that tick.
    pub decided: Option<u32>,
}

/// Parses a trace; errors name the line and column.
pub fn parse_trace(text: &str) -> Result<Vec<TraceRow>, String> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'));
    let (_, header) = lines.next().ok_or("the trace is empty")?;
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_ascii_lowercase()).collect();
    let index = |name: &str| columns.iter().position(|c| c == name);
    let t = index("t_seconds").ok_or("the header needs a t_seconds column")?;
    let backlog = index("backlog").ok_or("the header needs a backlog column")?;
    let optional = ["replicas", "reserved", "active_tasks", "cpu_millis", "cpu_request_millis", "decided"].map(index);
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
            decided: small(num(optional[5], "decided")?, "decided")?,
        });
    }
    if rows.is_empty() {
        return Err("the trace has a header but no rows".into());
    }
    Ok(rows)
}

/// What a trace written by the operator says it ran with (its leading `# key: value` lines).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceHeader {
    /// The app (and group) it is the trace of.
    pub app: Option<String>,
    /// Unix time of `t_seconds = 0`, in milliseconds.
    pub epoch_ms: Option<u64>,
    /// Each policy with its settings, in order.
    pub policies: Vec<(String, BTreeMap<String, String>)>,
    pub combine: Option<Combine>,
    /// `min`, `max`, `concurrency`, `stabilization-seconds`, `step-percent`, `step-period-seconds`.
    pub options: BTreeMap<String, u64>,
}

/// Reads the header of a trace; lines it does not know are comments. Errors name the line.
pub fn parse_header(text: &str) -> Result<TraceHeader, String> {
    let mut header = TraceHeader::default();
    for (number, line) in text.lines().enumerate().take_while(|(_, l)| l.starts_with('#') || l.trim().is_empty()) {
        let bad = |what: &str| format!("line {}: {what}", number + 1);
        let line = line.trim_start_matches('#').trim();
        if let Some(app) = line.strip_prefix("celery-operator trace of ") {
            header.app = Some(app.trim().to_string());
        } else if let Some(epoch) = line.strip_prefix("epoch-ms:") {
            header.epoch_ms = Some(epoch.trim().parse().map_err(|_| bad("epoch-ms is not a number"))?);
        } else if let Some(policy) = line.strip_prefix("policy:") {
            let mut words = policy.split_whitespace();
            let name = words.next().ok_or_else(|| bad("a policy line without a name"))?.to_string();
            let settings = words
                .map(|pair| {
                    pair.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| bad("a setting is not KEY=VALUE"))
                })
                .collect::<Result<_, _>>()?;
            header.policies.push((name, settings));
        } else if let Some(combine) = line.strip_prefix("combine:") {
            header.combine = Some(match combine.trim() {
                "Max" => Combine::Max,
                "Min" => Combine::Min,
                "First" => Combine::First,
                other => return Err(bad(&format!("combine `{other}` is none of Max, Min, First"))),
            });
        } else if let Some(options) = line.strip_prefix("options:") {
            for pair in options.split_whitespace() {
                let (key, value) = pair.split_once('=').ok_or_else(|| bad("an option is not KEY=VALUE"))?;
                let value = value.parse().map_err(|_| bad(&format!("option {key} is not a whole number")))?;
                header.options.insert(key.to_string(), value);
            }
        }
    }
    Ok(header)
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
    /// How the answers of several policies become one.
    pub combine: Combine,
    /// Unix time of `t_seconds = 0`, in milliseconds.
    pub epoch_ms: u64,
    /// A queue that answers the simulated workers; `None` replays the backlog as recorded.
    pub queue: Option<QueueModel>,
}

/// A fluid model of the queue: tasks arrive as the recording implies (what the backlog gained
/// plus what the recorded workers took), and each simulated worker takes `per_worker` tasks a
/// second. The policies then see the backlog their own workers would have left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QueueModel {
    pub per_worker: f64,
}

/// A policy with the settings it is asked with.
pub struct Selected<'a> {
    pub policy: &'a LoadedPolicy,
    pub settings: BTreeMap<String, String>,
}

/// One step of the replica timeline.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Step {
    pub t_seconds: f64,
    /// The backlog the policies saw (as recorded, or as the queue model left it).
    pub backlog: u64,
    pub recorded_replicas: Option<u32>,
    /// What the operator decided, when the trace says.
    pub recorded_decided: Option<u32>,
    /// What the winning policy asked for; `None` when the count was held.
    pub proposed: Option<u32>,
    /// Replicas after bounds, combining and stabilisation.
    pub replicas: u32,
    pub reason: String,
}

/// Builds the sample of a row for `replicas` workers.
fn sample_of(row: &TraceRow, backlog: u64, replicas: u32, epoch_ms: u64) -> Sample {
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
        queues: vec![QueueSample { name: "celery".into(), backlog, reserved: row.reserved, consumers: Some(replicas) }],
        pods,
    }
}

/// One policy's answer as the loop takes it.
fn ask(selected: &Selected<'_>, limits: &CallLimits, input: &PolicyInput) -> Answer {
    let name = selected.policy.name().to_string();
    match selected.policy.decide(limits, input) {
        Ok(decision) => {
            let verdict = Verdict::bounded(decision, input.min_replicas, input.max_replicas);
            match verdict.declined {
                Some(reason) => Answer::Declined { policy: name, reason },
                None => Answer::Decided(Choice {
                    bounded: verdict.decision.replicas,
                    proposed: verdict.proposed,
                    reason: verdict.decision.reason,
                    policy: name,
                }),
            }
        }
        Err(e) => {
            Answer::Failed { policy: name, health: Health { reason: crate::conditions::POLICY_FAILED, message: e.to_string() } }
        }
    }
}

/// Replays `rows` through `policies`.
pub fn simulate(policies: &[Selected<'_>], limits: &CallLimits, rows: &[TraceRow], options: &SimulateOptions) -> Vec<Step> {
    let mut replicas = options.initial_replicas.or_else(|| rows.first().and_then(|r| r.replicas)).unwrap_or(options.min_replicas);
    let mut damper = Damper::new(options.stabilization, options.step_percent, options.step_period);
    let bounds = Bounds { min: options.min_replicas, max: options.max_replicas, fallback: None };
    let names: Vec<&str> = policies.iter().map(|p| p.policy.name()).collect();
    let label = names.join("+");
    let mut history: Vec<Sample> = Vec::new();
    let mut steps = Vec::with_capacity(rows.len());
    let mut modeled = rows.first().map_or(0.0, |r| r.backlog as f64);
    for (i, row) in rows.iter().enumerate() {
        let backlog = if options.queue.is_some() { modeled.round() as u64 } else { row.backlog };
        let current = sample_of(row, backlog, replicas, options.epoch_ms);
        let now_ms = current.timestamp_ms;
        if !damper.is_seeded() {
            damper.seed(now_ms, replicas, None);
        }
        let mut input = PolicyInput {
            app: options.app.clone(),
            current_replicas: replicas,
            min_replicas: options.min_replicas,
            max_replicas: options.max_replicas,
            concurrency: options.concurrency,
            current: current.clone(),
            history: history.clone(),
            settings: BTreeMap::new(),
        };
        let answers: Vec<Answer> = policies
            .iter()
            .map(|p| {
                input.settings.clone_from(&p.settings);
                ask(p, limits, &input)
            })
            .collect();
        let decision = decide::decide(now_ms, replicas, &answers, &mut damper, bounds, options.combine, &label);
        if decision.target > replicas && !decision.held {
            damper.scaled_up(now_ms, decision.target - replicas);
        }
        let before = replicas;
        replicas = decision.target;
        steps.push(Step {
            t_seconds: row.t_seconds,
            backlog,
            recorded_replicas: row.replicas,
            recorded_decided: row.decided,
            proposed: decision.proposed,
            replicas,
            reason: decision.reason,
        });
        history.push(current);
        if history.len() > options.history {
            history.remove(0);
        }
        // The queue until the next row: what arrived, less what the simulated workers took.
        if let (Some(model), Some(next)) = (options.queue, rows.get(i + 1)) {
            let dt = (next.t_seconds - row.t_seconds).max(0.0);
            let recorded = f64::from(row.replicas.unwrap_or(before));
            let arrived = (next.backlog as f64 - row.backlog as f64 + model.per_worker * recorded * dt).max(0.0);
            modeled = (modeled + arrived - model.per_worker * f64::from(replicas) * dt).max(0.0);
        }
    }
    steps
}

/// What a team compares two policies on, over one replay.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Workers × seconds: what the workers cost.
    pub worker_seconds: f64,
    /// Messages × seconds spent waiting in the queue.
    pub backlog_seconds: f64,
    pub peak_backlog: u64,
    pub peak_replicas: u32,
    /// Times the count changed.
    pub scale_events: usize,
}

/// The summary of a timeline; each step lasts until the next (the last one, one interval as
/// long as the step before it).
pub fn summarize(steps: &[Step]) -> Summary {
    let mut summary = Summary { worker_seconds: 0.0, backlog_seconds: 0.0, peak_backlog: 0, peak_replicas: 0, scale_events: 0 };
    let mut last_dt = 0.0;
    for (i, step) in steps.iter().enumerate() {
        let dt = steps.get(i + 1).map_or(last_dt, |next| (next.t_seconds - step.t_seconds).max(0.0));
        last_dt = dt;
        summary.worker_seconds += f64::from(step.replicas) * dt;
        summary.backlog_seconds += step.backlog as f64 * dt;
        summary.peak_backlog = summary.peak_backlog.max(step.backlog);
        summary.peak_replicas = summary.peak_replicas.max(step.replicas);
        let before = if i == 0 { step.recorded_replicas.unwrap_or(step.replicas) } else { steps[i - 1].replicas };
        if step.replicas != before {
            summary.scale_events += 1;
        }
    }
    summary
}

/// The timeline as a text table (with the operator's decision beside it when the trace has it).
pub fn timeline(steps: &[Step]) -> String {
    let decided = steps.iter().any(|s| s.recorded_decided.is_some());
    let mut out = String::from(if decided {
        "   t(s)    backlog  proposed  replicas  operator  reason\n"
    } else {
        "   t(s)    backlog  proposed  replicas  reason\n"
    });
    for s in steps {
        let proposed = s.proposed.map_or("-".to_string(), |p| p.to_string());
        let _ = write!(out, "{:>7.1} {:>10} {:>9} {:>9}", s.t_seconds, s.backlog, proposed, s.replicas);
        if decided {
            let _ = write!(out, " {:>9}", s.recorded_decided.map_or("-".to_string(), |d| d.to_string()));
        }
        let _ = writeln!(out, "  {}", s.reason);
    }
    out
}

/// Two replays side by side: the summary of each, and how they differ.
pub fn comparison(first: (&str, &[Step]), second: (&str, &[Step]), modeled: bool) -> String {
    let (a, b) = (summarize(first.1), summarize(second.1));
    let mut out = String::new();
    let width = first.0.len().max(second.0.len()).max(8);
    let _ = writeln!(out, "{:<24} {:>w$} {:>w$}", "", first.0, second.0, w = width);
    let row = |out: &mut String, what: &str, x: String, y: String| {
        let _ = writeln!(out, "{what:<24} {x:>width$} {y:>width$}");
    };
    row(&mut out, "worker-seconds", format!("{:.0}", a.worker_seconds), format!("{:.0}", b.worker_seconds));
    row(&mut out, "backlog-seconds", format!("{:.0}", a.backlog_seconds), format!("{:.0}", b.backlog_seconds));
    row(&mut out, "peak backlog", a.peak_backlog.to_string(), b.peak_backlog.to_string());
    row(&mut out, "peak replicas", a.peak_replicas.to_string(), b.peak_replicas.to_string());
    row(&mut out, "scale events", a.scale_events.to_string(), b.scale_events.to_string());
    if !modeled {
        out.push_str("(the backlog is replayed as recorded, the same for both: give --rate-per-worker to let it answer each policy's workers)\n");
    }
    out
}

/// Backlog (left axis) and replicas (right axis) over time, as a self-contained SVG: one
/// replica line per run (a `--compare` has two), the recorded replicas dashed, and each run's
/// backlog (one line when they are the same, as when it is replayed as recorded).
pub fn plot_svg(runs: &[(&str, &[Step])], title: &str) -> String {
    const W: f64 = 800.0;
    const H: f64 = 400.0;
    const L: f64 = 70.0;
    const R: f64 = 60.0;
    const T: f64 = 56.0;
    const B: f64 = 50.0;
    const REPLICA_COLORS: [&str; 2] = ["#d62728", "#2ca02c"];
    const BACKLOG_COLORS: [&str; 2] = ["#1f77b4", "#17becf"];
    let all = || runs.iter().flat_map(|(_, steps)| steps.iter());
    let t_min = all().map(|s| s.t_seconds).fold(f64::INFINITY, f64::min);
    let t_max = all().map(|s| s.t_seconds).fold(f64::NEG_INFINITY, f64::max);
    let t_span = if t_max > t_min { t_max - t_min } else { 1.0 };
    let backlog_max = all().map(|s| s.backlog).max().unwrap_or(0).max(1) as f64;
    let replicas_max = all().map(|s| s.replicas.max(s.recorded_replicas.unwrap_or(0))).max().unwrap_or(0).max(1) as f64;
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
    let mut legend: Vec<(String, &str)> = Vec::new();
    let same_backlog = runs.windows(2).all(|w| w[0].1.iter().map(|s| s.backlog).eq(w[1].1.iter().map(|s| s.backlog)));
    for (i, (name, steps)) in runs.iter().enumerate().take(2) {
        if i == 0 || !same_backlog {
            let points = steps.iter().map(|s| (x(s.t_seconds), y(s.backlog as f64, backlog_max))).collect();
            let _ = writeln!(svg, "{}", line(points, BACKLOG_COLORS[i], false));
            let label = if same_backlog { "backlog (left)".to_string() } else { format!("backlog, {name} (left)") };
            legend.push((label, BACKLOG_COLORS[i]));
        }
    }
    if let Some((_, steps)) = runs.first()
        && steps.iter().any(|s| s.recorded_replicas.is_some())
    {
        let recorded =
            steps.iter().filter_map(|s| s.recorded_replicas.map(|r| (x(s.t_seconds), y(f64::from(r), replicas_max)))).collect();
        let _ = writeln!(svg, r#"<g stroke-dasharray="4 3">{}</g>"#, line(recorded, "#999999", true));
        legend.push(("recorded replicas".into(), "#999999"));
    }
    for (i, (name, steps)) in runs.iter().enumerate().take(2) {
        let points = steps.iter().map(|s| (x(s.t_seconds), y(f64::from(s.replicas), replicas_max))).collect();
        let _ = writeln!(svg, "{}", line(points, REPLICA_COLORS[i], true));
        legend.push((
            if runs.len() > 1 { format!("replicas, {name} (right)") } else { "replicas (right)".into() },
            REPLICA_COLORS[i],
        ));
    }
    let mut at = L + 10.0;
    svg.push_str("<g>");
    for (label, color) in &legend {
        let _ = write!(
            svg,
            r#"<rect x="{at:.1}" y="{}" width="12" height="3" fill="{color}"/><text x="{:.1}" y="{}">{}</text>"#,
            T - 22.0,
            at + 16.0,
            T - 17.0,
            escape(label)
        );
        at += 30.0 + 6.5 * label.len() as f64;
    }
    svg.push_str("</g>\n</svg>\n");
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
                recorded_decided: None,
                proposed: Some(1),
                replicas: 1,
                reason: String::new(),
            },
            Step {
                t_seconds: 10.0,
                backlog: 100,
                recorded_replicas: Some(1),
                recorded_decided: None,
                proposed: Some(4),
                replicas: 4,
                reason: String::new(),
            },
        ];
        let svg = plot_svg(&[("queue-length", &steps)], "a <b>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("#1f77b4") && svg.contains("#d62728"));
        assert!(svg.contains("a &lt;b&gt;"));
    }
}
