//! What the benchmarks measure alike: this process's CPU time and memory, the operator's
//! `/metrics`, and durations printed at a readable scale.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

/// A number from the environment (a benchmark's knob), or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A comma-separated list of numbers from the environment (a benchmark's sizes), or `default`.
pub fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| default.to_vec())
}

/// The text of the operator's `/metrics` on `listen`.
pub async fn metrics_text(listen: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(listen).await.expect("metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await.expect("request");
    let mut body = String::new();
    stream.read_to_string(&mut body).await.expect("response");
    body
}

/// The sum of the samples of metric `name` (over its labels) in `/metrics` text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// User plus system CPU time of this process.
pub fn process_cpu() -> Duration {
    cpu_of("self")
}

/// User plus system CPU time of process `pid` ("self": this one); zero once it is gone.
pub fn cpu_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command name.
    let ticks: u64 = fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum()).unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / 100.0)
}

/// Resident memory of this process.
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// Resident memory of process `pid` ("self": this one); zero once it is gone.
pub fn rss_kib_of(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn fmt(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2}s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1}ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1}µs", d.as_secs_f64() * 1e6)
    }
}
