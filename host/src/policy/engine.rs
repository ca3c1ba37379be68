//! The one wasmtime `Engine` of the process and the limits every guest runs under.
//!
//! Time is bounded by epoch interruption: a ticker thread advances the engine's epoch every
//! [`EngineSettings::tick`] while a guest runs, and each store gets a deadline in ticks. With
//! no guest running the ticker sleeps ([`PolicyEngine::running`] wakes it): an operator whose
//! apps cannot be measured makes no policy call, and should not wake 200 times a second. Memory is bounded twice:
//! the pooling allocator's slots cannot exceed the operator-wide maximum, and each store's
//! limiter (see `sandbox`) enforces the per-call cap below it. Fuel is not used: epochs cost
//! far less and a deadline is what we need.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::PolicyError;

/// Operator-wide limits of the policy runtime.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    /// The most memory any one call may be given, whatever a resource asks for.
    pub max_memory_bytes: u64,
    /// Epoch tick: the granularity of time limits.
    pub tick: Duration,
    /// Instances the pooling allocator keeps slots for (bounded calls in flight use them).
    pub pool_instances: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self { max_memory_bytes: 256 << 20, tick: Duration::from_millis(5), pool_instances: 64 }
    }
}

/// Whether the pool resets a slot with Linux's `PAGEMAP_SCAN` (6.7+), copying back only the
/// pages the instance wrote instead of all [`KEEP_RESIDENT`] bytes. Off: measured on wasmtime 50
/// here (2026-12-04, `cargo bench --bench policy`, both in the same hour) it made the small policies
/// slower (Rust 16.0 → 19.3 µs, C 9.1 → 11.7 µs, Go 100 → 126 µs) and the large ones a little
/// faster (JavaScript 802 → 716 µs, Python 1.6 → 1.5 ms); on wasmtime 48 it had made Go 37 µs,
/// but 48 left a written page the kernel had swapped out unreset, for the next instance to read
/// (bytecodealliance/wasmtime#14357, fixed in 50). Either way the reset keeps a decision from
/// reading the last one's memory: `tests::a_slot_never_shows_a_page_the_last_instance_wrote_even_swapped_out`
/// stages swapped-out and freed pages with it on and off. Measured again with 256 KiB kept
/// (2026-12-06) it changed nothing beyond the noise.
const PAGEMAP_SCAN: bool = false;

/// How much of a warm slot's linear memory is reset in place (its initial image copied back, the
/// rest zeroed) rather than handed back to the kernel, which refills a page on its next touch.
/// Copying is cheaper than a page fault for the few pages every instance touches, and dearer for
/// the megabytes it would copy whether touched or not: with 4 MiB, every Go decision copied Go's
/// whole 2.4 MiB image back. Measured here (2026-12-06, `policy bench`, p50 per decision, 4 MiB →
/// 256 KiB → none): Rust 5.5 → 5.1 → 13.4 µs, C 6.6 → 6.4 → 17.0 µs, Go 272 → 140 → 142 µs,
/// JavaScript 920 → 727 → 672 µs, Python 1.40 → 1.15 → 1.14 ms.
const KEEP_RESIDENT: usize = 256 << 10;

/// Pool slots kept warm (resident, ready for the next instance of the module they last held)
/// while unused; see `config`.
const WARM_SLOTS: u32 = 8;

/// How often, at most, the epoch ticker hands the warm slots' resident pages back to the system
/// (`Engine::release_idle_pool_memory`) at a moment no guest runs: an operator whose decisions
/// have stopped, or come in bursts, does not keep the memory of its busiest minute.
pub const RELEASE_IDLE_EVERY: Duration = Duration::from_secs(30);

/// Memory the operator keeps for itself (watches, caches, the runtime) out of its limit.
pub const RESERVED_MEMORY: u64 = 96 << 20;

impl EngineSettings {
    /// The defaults, with the memory of one call capped so that `concurrency` calls at their
    /// cap fit in `limit` (the process's memory limit) beside [`RESERVED_MEMORY`]: a resource
    /// asking for a large `policyMemory` cannot get the operator killed for exceeding its own
    /// limit. At least 16 MiB, the smallest a built-in runs in.
    pub fn within_memory(limit: Option<u64>, concurrency: usize) -> Self {
        let mut settings = Self::default();
        if let Some(limit) = limit {
            let share = limit.saturating_sub(RESERVED_MEMORY) / concurrency.max(1) as u64;
            settings.max_memory_bytes = settings.max_memory_bytes.min(share).max(16 << 20);
        }
        settings
    }
}

/// Memory one module's compilation may take at its peak. Measured on the built-ins
/// (`/usr/bin/time celery-operator policy --no-cache check`): 360–390 MB of peak RSS for the
/// 12–18 MB JavaScript and Python components, 430 MB for all five loaded one after the other,
/// 540 MB for two at a time. Compiled modules are cached on disk, so this is paid once.
pub const COMPILE_MEMORY: u64 = 448 << 20;

/// How many modules to compile at once: one per core, but no more than fit beside
/// [`RESERVED_MEMORY`] in the memory `limit`, and at least one. Under the Deployment's limit
/// the operator compiles one at a time; two at once got it OOM-killed at every start, before
/// anything was cached (found on the real node).
pub fn compile_threads(limit: Option<u64>, cores: usize) -> usize {
    let fit = limit.map_or(usize::MAX, |l| (l.saturating_sub(RESERVED_MEMORY) / COMPILE_MEMORY) as usize);
    cores.min(fit).max(1)
}

/// Hands the memory that compilations freed back to the system. NB: glibc's allocator keeps
/// freed heap memory for reuse, so after compiling the large built-ins (hundreds of MB of
/// short-lived allocations, see [`COMPILE_MEMORY`]) the operator stayed at 421 MiB of RSS in
/// its pod for good; trimmed, 191 MiB (the real-node tier's figure, with 100 apps).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions
    // and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The memory limit of this process's cgroup (v2 `memory.max`, v1 `memory.limit_in_bytes`),
/// if it has one.
pub fn memory_limit() -> Option<u64> {
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok();
    let v1 = || std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes").ok();
    let text = v2.or_else(v1)?;
    // "max" (v2) or a huge number (v1's way of saying unlimited).
    text.trim().parse::<u64>().ok().filter(|&n| n < (1 << 60))
}

/// A cheap handle on the process's engine.
#[derive(Clone)]
pub struct PolicyEngine {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    settings: EngineSettings,
    /// Guests running now, and the ticker thread to wake when the first one starts.
    running: Arc<AtomicUsize>,
    ticker: Thread,
    pooling: bool,
}

impl PolicyEngine {
    /// Builds the engine and starts its epoch ticker. The ticker stops when the last handle
    /// is dropped.
    pub fn new(settings: EngineSettings) -> Result<Self, PolicyError> {
        let (engine, pooling) = match Engine::new(&config(&settings, true, PAGEMAP_SCAN)) {
            Ok(engine) => (engine, true),
            Err(error) => {
                // NB: the pool reserves address space up front; where that is refused (a low
                // `ulimit -v`, some sandboxes) on-demand allocation still works, only slower.
                tracing::warn!(%error, "pooling allocator unavailable; allocating instances on demand");
                let engine = Engine::new(&config(&settings, false, false))
                    .map_err(|e| PolicyError::Engine(format!("cannot build the wasm engine: {e:#}")))?;
                (engine, false)
            }
        };
        let weak = engine.weak();
        let tick = settings.tick;
        let running = Arc::new(AtomicUsize::new(0));
        let busy = Arc::clone(&running);
        let ticker = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                let mut released = Instant::now();
                while let Some(engine) = weak.upgrade() {
                    if busy.load(Ordering::Acquire) == 0 {
                        if released.elapsed() >= RELEASE_IDLE_EVERY {
                            engine.release_idle_pool_memory();
                            released = Instant::now();
                        }
                        drop(engine);
                        // Woken by the next call; the timeout notices a dropped engine.
                        std::thread::park_timeout(Duration::from_secs(1));
                        continue;
                    }
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(tick);
                }
            })
            .map_err(|e| PolicyError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        let ticker = ticker.thread().clone();
        Ok(Self { inner: Arc::new(Inner { engine, settings, pooling, running, ticker }) })
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.inner.pooling
    }

    /// Marks a guest as running until the guard is dropped: the epoch advances meanwhile.
    pub fn running(&self) -> Running {
        if self.inner.running.fetch_add(1, Ordering::AcqRel) == 0 {
            self.inner.ticker.unpark();
        }
        Running { count: Arc::clone(&self.inner.running) }
    }

    /// Epoch ticks that cover `limit`, plus one for the tick already under way.
    pub fn deadline_ticks(&self, limit: Duration) -> u64 {
        let tick = self.inner.settings.tick.as_nanos().max(1);
        (limit.as_nanos().div_ceil(tick) as u64).saturating_add(1)
    }
}

/// A guest runs while this lives; see [`PolicyEngine::running`].
pub struct Running {
    count: Arc<AtomicUsize>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

fn config(settings: &EngineSettings, pooling: bool, pagemap_scan: bool) -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    // Go 1.26 emits typed function references.
    config.wasm_function_references(true);
    config.wasm_component_model(true);
    config.parallel_compilation(true);
    // Deep recursion ends as a clean trap well before the host's own stack is at risk.
    config.max_wasm_stack(1 << 20);
    if pooling {
        let total = settings.pool_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.max_memory_size(settings.max_memory_bytes as usize)
            .total_component_instances(total)
            // Python and JavaScript components carry dozens of core instances, several memories
            // and tables of tens of thousands of functions.
            .max_core_instances_per_component(64)
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .total_core_instances(total * 16)
            .total_memories(total * 4)
            .total_tables(total * 8)
            .table_elements(100_000)
            .max_core_instance_size(4 << 20)
            .max_component_instance_size(4 << 20)
            // Slots left warm after their instance ended, beyond those in use: each keeps what its
            // instance wrote resident, up to the amounts below. A handful serves the same few
            // modules deciding over and over; the rest are emptied.
            .max_unused_warm_slots(WARM_SLOTS.min(total))
            // The first pages of a warm slot are reset by copying the initial image back, which
            // saves the next instance their page faults; see `KEEP_RESIDENT`.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(1 << 20)
            .pagemap_scan(if pagemap_scan { wasmtime::Enabled::Auto } else { wasmtime::Enabled::No });
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compilations_at_once_fit_in_the_pods_limit() {
        // The chart's default (768 MiB) compiles one at a time, as does anything below the
        // reserve plus one compilation; no limit: one per core.
        assert_eq!(compile_threads(Some(768 << 20), 2), 1);
        assert_eq!(compile_threads(Some(256 << 20), 2), 1, "never none");
        assert_eq!(compile_threads(Some(2 << 30), 8), 4);
        assert_eq!(compile_threads(Some(2 << 30), 2), 2);
        assert_eq!(compile_threads(None, 2), 2);
        assert!(compile_threads(Some(768 << 20), 2) as u64 * COMPILE_MEMORY + RESERVED_MEMORY <= 768 << 20);
    }

    #[test]
    fn concurrent_calls_at_their_cap_fit_in_the_pods_limit() {
        // A 256 MiB limit and two cores.
        let s = EngineSettings::within_memory(Some(256 << 20), 2);
        assert_eq!(s.max_memory_bytes, 80 << 20);
        assert!(2 * s.max_memory_bytes + RESERVED_MEMORY <= 256 << 20);
        assert_eq!(EngineSettings::within_memory(None, 2).max_memory_bytes, 256 << 20, "no limit: the default");
        assert_eq!(EngineSettings::within_memory(Some(8 << 30), 2).max_memory_bytes, 256 << 20, "never above the default");
        assert_eq!(EngineSettings::within_memory(Some(64 << 20), 8).max_memory_bytes, 16 << 20, "never below 16 MiB");
    }

    /// A swap file for one test, switched off and removed on drop. `None` where swap cannot be
    /// switched on (not root, or a filesystem without swap files).
    struct Swap(std::path::PathBuf);

    impl Swap {
        fn on() -> Option<Self> {
            let path = std::env::temp_dir().join(format!("celery-operator-test-swap-{}", std::process::id()));
            let run = |program: &str, args: &[&std::ffi::OsStr]| {
                std::process::Command::new(program).args(args).output().is_ok_and(|o| o.status.success())
            };
            let file = std::fs::File::create(&path).ok()?;
            let swap = Self(path);
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&swap.0, std::fs::Permissions::from_mode(0o600)).ok()?;
            file.set_len(32 << 20).ok()?;
            // A sparse file is refused by swapon: write it out.
            std::io::Write::write_all(&mut &file, &vec![0u8; 32 << 20]).ok()?;
            file.sync_all().ok()?;
            (run("mkswap", &[swap.0.as_os_str()]) && run("swapon", &[swap.0.as_os_str()])).then_some(swap)
        }
    }

    impl Drop for Swap {
        fn drop(&mut self) {
            let _ = std::process::Command::new("swapoff").arg(&self.0).output();
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Whether the page at `address` is in swap, from `/proc/self/pagemap` (bit 62 of its entry).
    fn swapped(address: usize) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let page = address / page_size();
        let mut entry = [0u8; 8];
        let mut pagemap = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        pagemap.seek(SeekFrom::Start(page as u64 * 8)).expect("seek");
        pagemap.read_exact(&mut entry).expect("read");
        u64::from_le_bytes(entry) & (1 << 62) != 0
    }

    fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size")
    }

    /// The isolation promise (a fresh instance per decision sees nothing of the last one) with
    /// the pool's reset, by copying back the kept-resident pages or by `pagemap_scan`, under
    /// memory pressure staged on the page itself: an
    /// instance writes a secret, the kernel swaps that page out (`MADV_PAGEOUT`) or may drop
    /// it (`MADV_FREE`) while the instance still lives, the instance ends and its slot is
    /// reset, and the next instance, in the same slot, reads the initial zero. Up to wasmtime
    /// 48 the swapped page kept the secret (bytecodealliance/wasmtime#14357).
    #[test]
    fn a_slot_never_shows_a_page_the_last_instance_wrote_even_swapped_out() {
        let Some(_swap) = Swap::on() else {
            // CI runs as root, where this is staged for real.
            assert!(std::env::var_os("CI").is_none(), "cannot switch a swap file on: this test needs root");
            eprintln!("skipped: cannot switch a swap file on (not root?)");
            return;
        };
        for pagemap_scan in [false, true] {
            let engine =
                wasmtime::Engine::new(&config(&EngineSettings::default(), true, pagemap_scan)).expect("a pooling engine");
            isolated_under_pressure(&engine, pagemap_scan);
        }
    }

    fn isolated_under_pressure(engine: &wasmtime::Engine, pagemap_scan: bool) {
        const SECRET: i64 = 0x5ec2_e7c0_ffee_0001;
        // Offsets in the first page, in the middle of what is kept resident, and past it.
        let offsets = [64_i32, KEEP_RESIDENT as i32 / 2, 2 << 20];
        let module = wasmtime::Module::new(
            engine,
            r#"(module
                 (memory (export "memory") 128)
                 (func (export "write") (param i32 i64) (i64.store (local.get 0) (local.get 1)))
                 (func (export "read") (param i32) (result i64) (i64.load (local.get 0))))"#,
        )
        .expect("module");
        let instance = |store: &mut wasmtime::Store<()>| {
            store.set_epoch_deadline(u64::MAX / 2);
            let instance = wasmtime::Instance::new(&mut *store, &module, &[]).expect("instance");
            let memory = instance.get_memory(&mut *store, "memory").expect("memory");
            let write = instance.get_typed_func::<(i32, i64), ()>(&mut *store, "write").expect("write");
            let read = instance.get_typed_func::<i32, i64>(&mut *store, "read").expect("read");
            (memory.data_ptr(&*store) as usize, write, read)
        };
        for advice in [libc::MADV_PAGEOUT, libc::MADV_FREE] {
            for round in 0..3 {
                let mut store = wasmtime::Store::new(engine, ());
                let (base, write, read) = instance(&mut store);
                for &offset in &offsets {
                    assert_eq!(read.call(&mut store, offset).expect("read"), 0, "round {round}: a fresh slot starts at zero");
                    write.call(&mut store, (offset, SECRET)).expect("write");
                    let page = (base + offset as usize) & !(page_size() - 1);
                    // SAFETY: the page lies in the instance's linear memory, which lives as long as
                    // `store`; the advice changes where its contents are kept, never what they are.
                    let advise = || unsafe { libc::madvise(page as *mut libc::c_void, page_size(), advice) };
                    assert_eq!(advise(), 0, "madvise: {}", std::io::Error::last_os_error());
                    if advice == libc::MADV_PAGEOUT {
                        // The kernel skips a page it cannot take at once (one still being written
                        // to swap from the last round, or still in another CPU's batch of new
                        // pages): ask again until it is out, for a while.
                        for _ in 0..500 {
                            if swapped(page) {
                                break;
                            }
                            std::thread::sleep(std::time::Duration::from_millis(10));
                            assert_eq!(advise(), 0, "madvise: {}", std::io::Error::last_os_error());
                        }
                        assert!(swapped(page), "round {round}: the page at {offset} was not swapped out: nothing staged");
                    }
                }
                drop(store);

                let mut store = wasmtime::Store::new(engine, ());
                let (again, _, read) = instance(&mut store);
                assert_eq!(again, base, "the next instance took another slot: the reset was not exercised");
                for &offset in &offsets {
                    let seen = read.call(&mut store, offset).expect("read");
                    assert_eq!(
                        seen, 0,
                        "pagemap_scan {pagemap_scan}, advice {advice}, round {round}: the next instance read {seen:#x} at {offset}"
                    );
                }
            }
        }
    }
}
