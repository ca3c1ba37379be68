//! What a guest may touch, and how its failures are named.
//!
//! - [`Limiter`]: the per-call memory cap, across every memory and table of an instance, which
//!   remembers that it refused growth so a trap that follows is reported as a memory limit.
//! - [`empty_wasi`]: WASI with nothing in it: no preopened directories, environment, arguments
//!   or network; clocks frozen at the sample's time; random bytes from a fixed sequence; stdout
//!   and stderr captured into a bounded [`GuestOutput`].
//! - [`classify`]: a wasmtime error from a guest call → the [`PolicyError`] a user can act on.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, I32Exit, WasiCtxBuilder};

use super::engine::PolicyEngine;
use super::runner::CallLimits;
use super::{PolicyError, truncate};

/// Longest log line kept from a guest.
pub const LOG_LINE_MAX: usize = 1024;
/// Most bytes of stdout, stderr and log lines kept from one call.
pub const OUTPUT_MAX: usize = 16 * 1024;
/// Table elements one instance may grow to.
const TABLE_ELEMENTS_MAX: usize = 200_000;

/// Caps the linear memory of one store, summed over all its memories.
pub struct Limiter {
    limit: usize,
    used: usize,
    refused: bool,
}

impl Limiter {
    pub fn new(limit: u64) -> Self {
        Self { limit: usize::try_from(limit).unwrap_or(usize::MAX), used: 0, refused: false }
    }

    /// Whether the guest asked for more memory than allowed.
    pub fn refused(&self) -> bool {
        self.refused
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.used.saturating_add(desired.saturating_sub(current));
        if total > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.used = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_MAX)
    }
}

/// Severity of a guest's log line, as in the WIT `level` enum and the core ABI's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The core ABI's number; anything unknown counts as info.
    pub fn from_abi(level: i32) -> Self {
        match level {
            0 => LogLevel::Debug,
            2 => LogLevel::Warn,
            3 => LogLevel::Error,
            _ => LogLevel::Info,
        }
    }
}

/// What a guest wrote during one call: log lines, stdout and stderr, bounded.
#[derive(Clone, Default)]
pub struct GuestOutput(Arc<Mutex<OutputState>>);

#[derive(Default)]
struct OutputState {
    kept: usize,
    dropped: usize,
    lines: Vec<(LogLevel, String)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl GuestOutput {
    fn state(&self) -> MutexGuard<'_, OutputState> {
        // A poisoned lock only means another writer panicked; the bytes are still usable.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a log line from the guest.
    pub fn log(&self, level: LogLevel, message: &str) {
        let line = truncate(message, LOG_LINE_MAX);
        let mut state = self.state();
        if state.kept + line.len() > OUTPUT_MAX {
            state.dropped += line.len();
            return;
        }
        state.kept += line.len();
        state.lines.push((level, line));
    }

    fn write(&self, stderr: bool, bytes: &[u8]) {
        let mut state = self.state();
        let room = OUTPUT_MAX.saturating_sub(state.kept);
        let take = bytes.len().min(room);
        state.kept += take;
        state.dropped += bytes.len() - take;
        let buffer = if stderr { &mut state.stderr } else { &mut state.stdout };
        buffer.extend_from_slice(&bytes[..take]);
    }

    /// The guest's last words: its last error line, else the last line of stderr (where a
    /// Rust or Go panic message lands), else its last log line.
    pub fn last_words(&self) -> Option<String> {
        let state = self.state();
        let stderr = String::from_utf8_lossy(&state.stderr);
        state
            .lines
            .iter()
            .rev()
            .find(|(level, _)| *level == LogLevel::Error)
            .map(|(_, line)| line.clone())
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()).map(|l| truncate(l.trim(), LOG_LINE_MAX)))
            .or_else(|| state.lines.last().map(|(_, line)| line.clone()))
    }

    /// The guest's log lines so far.
    pub fn lines(&self) -> Vec<(LogLevel, String)> {
        self.state().lines.clone()
    }

    /// Sends everything captured to the operator's log, tagged with the policy. A guest's text
    /// is a quoted field (`guest="…"`, newlines and control characters escaped), never the
    /// message itself, so it cannot forge a line of the operator's own; and all guests together
    /// get at most [`GUEST_LINES_PER_SECOND`] lines, so a chatty policy cannot flood the log.
    pub fn emit(&self, policy: &str) {
        let state = self.state();
        let stdout = String::from_utf8_lossy(&state.stdout);
        let stderr = String::from_utf8_lossy(&state.stderr);
        let lines = state
            .lines
            .iter()
            .map(|(level, line)| (*level, None, line.as_str()))
            .chain(stdout.lines().filter(|l| !l.is_empty()).map(|l| (LogLevel::Info, Some("stdout"), l)))
            .chain(stderr.lines().filter(|l| !l.is_empty()).map(|l| (LogLevel::Warn, Some("stderr"), l)));
        for (level, stream, line) in lines {
            let Some(dropped) = GUEST_LOG.take(std::time::Instant::now()) else {
                continue;
            };
            if dropped > 0 {
                tracing::warn!(
                    dropped_lines = dropped,
                    limit = GUEST_LINES_PER_SECOND,
                    "policy log lines dropped (too many per second)"
                );
            }
            let stream = stream.unwrap_or("log");
            // Debug formatting quotes the text and escapes what it must.
            match level {
                LogLevel::Debug => tracing::debug!(policy, stream, guest = ?line, "policy says"),
                LogLevel::Info => tracing::info!(policy, stream, guest = ?line, "policy says"),
                LogLevel::Warn => tracing::warn!(policy, stream, guest = ?line, "policy says"),
                LogLevel::Error => tracing::error!(policy, stream, guest = ?line, "policy says"),
            }
        }
        if state.dropped > 0 {
            tracing::warn!(policy, dropped_bytes = state.dropped, "policy output cut");
        }
    }
}

/// Lines of policy output the operator logs per second, all policies together.
pub const GUEST_LINES_PER_SECOND: u32 = 50;

static GUEST_LOG: LogBudget = LogBudget::new(GUEST_LINES_PER_SECOND);

/// A fixed one-second window of log lines.
pub struct LogBudget {
    per_second: u32,
    state: Mutex<Option<(std::time::Instant, u32, u64)>>,
}

impl LogBudget {
    pub const fn new(per_second: u32) -> Self {
        Self { per_second, state: Mutex::new(None) }
    }

    /// `Some(lines dropped since the last line let through)` when a line may be logged at
    /// `now`, `None` when it is to be dropped.
    pub fn take(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (start, used, dropped) = state.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *used = 0;
        }
        if *used >= self.per_second {
            *dropped += 1;
            return None;
        }
        *used += 1;
        Some(std::mem::take(dropped))
    }
}

/// A guest's stdout or stderr, captured into its [`GuestOutput`].
#[derive(Clone)]
struct Captured {
    output: GuestOutput,
    stderr: bool,
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    // NB: the default adapter spawns a task on a tokio runtime per stream; writing straight
    // into the buffer needs neither.
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.output.write(self.stderr, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(4096)
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.output.write(self.stderr, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The wall clock stopped at the sample's time.
struct FrozenWall(Duration);

impl HostWallClock for FrozenWall {
    fn resolution(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// A monotonic clock that never moves.
struct FrozenMonotonic(u64);

impl HostMonotonicClock for FrozenMonotonic {
    fn resolution(&self) -> u64 {
        1_000_000
    }
    fn now(&self) -> u64 {
        self.0
    }
}

/// A WASI context that grants nothing: see the module documentation.
pub fn empty_wasi(sample_time_ms: u64, output: &GuestOutput) -> WasiCtxBuilder {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(Captured { output: output.clone(), stderr: false })
        .stderr(Captured { output: output.clone(), stderr: true })
        .wall_clock(FrozenWall(Duration::from_millis(sample_time_ms)))
        .monotonic_clock(FrozenMonotonic(sample_time_ms.saturating_mul(1_000_000)))
        .secure_random(Deterministic::new(vec![0x5e, 0xed, 0xc0, 0xde]))
        .insecure_random(Deterministic::new(vec![0xc0, 0xde, 0x5e, 0xed]))
        .insecure_random_seed(0)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    builder
}

/// Store state that carries the call's memory [`Limiter`].
pub trait Limited: 'static {
    fn limiter(&mut self) -> &mut Limiter;
    fn limiter_ref(&self) -> &Limiter;
}

/// Runs `body` in a fresh store holding `state`, under the call's memory and time limits;
/// forwards what the guest printed to the log and names a failure with [`classify`]. Both
/// kinds of module (components and core modules) run their calls through here.
pub fn run_bounded<T: Limited, R>(
    engine: &PolicyEngine,
    policy: &str,
    limits: &CallLimits,
    output: &GuestOutput,
    state: T,
    body: impl FnOnce(&mut Store<T>) -> wasmtime::Result<R>,
) -> Result<R, PolicyError> {
    // The epoch advances while this call runs (and only then).
    let _running = engine.running();
    let mut store = Store::new(engine.engine(), state);
    store.limiter(|state| state.limiter());
    store.set_epoch_deadline(engine.deadline_ticks(limits.timeout));
    store.epoch_deadline_trap();
    let result = body(&mut store);
    output.emit(policy);
    result.map_err(|error| {
        classify(policy, error, store.data().limiter_ref().refused(), limits.memory_bytes, limits.timeout, output)
    })
}

/// Names a failure of a guest call (or of the instantiation before it).
pub fn classify(
    policy: &str,
    error: wasmtime::Error,
    memory_refused: bool,
    memory_limit: u64,
    time_limit: Duration,
    output: &GuestOutput,
) -> PolicyError {
    let policy = policy.to_string();
    if let Some(trap) = error.downcast_ref::<Trap>() {
        return match trap {
            Trap::Interrupt => PolicyError::Timeout { policy, limit: time_limit },
            _ if memory_refused => PolicyError::MemoryLimit { policy, limit: memory_limit },
            Trap::StackOverflow => PolicyError::Trap { policy, message: "call stack exhausted (recursion too deep)".into() },
            other => PolicyError::Trap { policy, message: with_last_words(other.to_string(), output) },
        };
    }
    if memory_refused {
        return PolicyError::MemoryLimit { policy, limit: memory_limit };
    }
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return PolicyError::Trap { policy, message: with_last_words(format!("exited with status {}", exit.0), output) };
    }
    // The chain of causes, without the wasm backtrace wasmtime attaches.
    let causes: Vec<String> =
        error.chain().map(ToString::to_string).filter(|c| !c.starts_with("error while executing at wasm backtrace")).collect();
    let text = causes.join(": ");
    if text.contains("does not fit in pooling allocator requirements") {
        // Said in the user's terms: the module declares more than a policy call may have.
        let why = causes.last().cloned().unwrap_or_default();
        return PolicyError::Invalid {
            policy,
            detail: truncate(
                &format!("it needs more memory (or table space) than a policy call may have, before it runs at all: {why}"),
                LOG_LINE_MAX,
            ),
        };
    }
    if text.contains("maximum concurrent limit") {
        return PolicyError::Host {
            policy,
            detail: "every sandbox slot is in use by other policy calls; it is tried again at the next interval".into(),
        };
    }
    if guest_fault(&text) {
        // A component that lifts a bad string, variant or pointer (in its answer, or in a call
        // to `log`) broke the calling convention: its fault, as an invalid answer of a core
        // module is, not the host's.
        return PolicyError::InvalidAnswer {
            policy,
            detail: truncate(&format!("broke the component calling convention: {text}"), LOG_LINE_MAX),
        };
    }
    PolicyError::Host { policy, detail: truncate(&text, LOG_LINE_MAX) }
}

/// Whether a call's error is wasmtime refusing what the guest handed over (the canonical ABI's
/// checks on strings, lists, variants and pointers), rather than a fault of the host.
fn guest_fault(text: &str) -> bool {
    const SIGNS: [&str; 9] = [
        "out of bounds of memory",
        "not aligned",
        "invalid utf-8",
        "invalid utf-16",
        "discriminant",
        "expected `",
        "byte length too large",
        "realloc return",
        "pointer out of bounds",
    ];
    let lower = text.to_ascii_lowercase();
    SIGNS.iter().any(|sign| lower.contains(sign))
}

fn with_last_words(message: String, output: &GuestOutput) -> String {
    match output.last_words() {
        Some(words) => format!("{message}; the policy said: {words}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classified(causes: &[&str]) -> PolicyError {
        let mut error = wasmtime::Error::msg(causes[causes.len() - 1].to_string());
        for cause in causes[..causes.len() - 1].iter().rev() {
            error = error.context(cause.to_string());
        }
        classify("p", error, false, 64 << 20, Duration::from_millis(100), &GuestOutput::default())
    }

    /// What a component hands over that the canonical ABI refuses (a bad string, variant or
    /// pointer, in its answer or in a call to `log`) is the guest's fault, permanent like a
    /// core module's invalid answer; the pooling allocator's words are put in the user's.
    #[test]
    fn guest_faults_are_the_guests_and_pooling_is_said_plainly() {
        for fault in [
            "string pointer/length out of bounds of memory",
            "invalid utf-8 sequence of 1 bytes from index 3",
            "unexpected discriminant: 7",
            "expected `string` found `u32`",
        ] {
            let e = classified(&[fault]);
            assert!(matches!(e, PolicyError::InvalidAnswer { .. }) && e.is_permanent(), "{fault}: {e:?}");
            assert!(e.to_string().contains("broke the component calling convention"), "{e}");
        }
        let e = classified(&[
            "module memory does not fit in pooling allocator requirements",
            "memory has a minimum byte size of 1073741824 which exceeds the limit of 268435456 bytes",
        ]);
        assert!(matches!(e, PolicyError::Invalid { .. }), "{e:?}");
        assert!(
            e.to_string().contains("more memory (or table space) than a policy call may have")
                && !e.to_string().contains("pooling"),
            "{e}"
        );
        let e = classified(&["maximum concurrent limit of 64 for core instances reached"]);
        assert!(matches!(e, PolicyError::Host { .. }) && !e.is_permanent(), "{e:?}");
        let e = classified(&["Cannot allocate memory (os error 12)"]);
        assert!(matches!(e, PolicyError::Host { .. }), "an unknown failure stays the host's: {e:?}");
    }

    /// Log output of `f`, as the operator's text format writes it.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_guest_cannot_forge_the_operators_log_lines() {
        let output = GuestOutput::default();
        let forged = "fine\n2026-12-01T00:00:00.000000Z  INFO celery_operator::autoscale::scaler: scaled the workers \x1b[2J";
        output.log(LogLevel::Info, forged);
        output.write(false, b"out\r\n");
        let text = logged(|| output.emit("mine"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "one line per guest line:\n{text}");
        assert!(lines.iter().all(|l| l.contains("policy says") && l.contains("policy=\"mine\"")), "{text}");
        assert!(lines[0].contains("fine\\n2026"), "the newline is escaped: {text}");
        assert!(!text.contains('\x1b'), "control characters are escaped: {text:?}");
    }

    #[test]
    fn the_guest_log_budget_refills_every_second_and_counts_what_it_dropped() {
        let budget = LogBudget::new(2);
        let t0 = std::time::Instant::now();
        assert_eq!(budget.take(t0), Some(0));
        assert_eq!(budget.take(t0), Some(0));
        assert_eq!(budget.take(t0), None);
        assert_eq!(budget.take(t0 + Duration::from_millis(500)), None);
        assert_eq!(budget.take(t0 + Duration::from_secs(1)), Some(2), "two lines were dropped meanwhile");
    }

    #[test]
    fn limiter_caps_the_sum_of_memories() {
        let mut limiter = Limiter::new(3 << 16);
        assert!(limiter.memory_growing(0, 2 << 16, None).expect("no error"));
        assert!(!limiter.memory_growing(0, 2 << 16, None).expect("no error"));
        assert!(limiter.refused());
    }

    #[test]
    fn output_is_bounded_and_last_words_prefer_errors() {
        let output = GuestOutput::default();
        output.log(LogLevel::Info, "starting");
        output.write(true, b"panicked at lib.rs: boom\n");
        assert_eq!(output.last_words().as_deref(), Some("panicked at lib.rs: boom"));
        output.log(LogLevel::Error, "bad setting");
        assert_eq!(output.last_words().as_deref(), Some("bad setting"));
        output.write(false, &vec![b'x'; OUTPUT_MAX * 2]);
        assert!(output.state().kept <= OUTPUT_MAX);
        assert!(output.state().dropped > 0);
    }
}
