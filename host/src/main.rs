//! The `celery-operator` binary; everything lives in the library, see `cli`.

/// Threads for blocking work: policy calls (at most one per core at a time), policy loading,
/// and name lookups, which the HTTP and Redis clients hand to the blocking pool. tokio's default
/// of 512 let every app with an unresolvable broker or Flower hold a thread; beyond this bound a
/// lookup waits its turn instead.
const BLOCKING_THREADS: usize = 32;

/// jemalloc, not the system's: glibc's malloc gives each thread that allocates an arena of its
/// own (up to eight per core: the runtime's workers and the blocking pool's threads) and hands
/// little back, so the operator's resident memory grew well beyond what it held live (at 1,000
/// apps, 162 MiB for 74 MB of heap). jemalloc returns freed pages to the system after a few
/// seconds (117 MiB there; README, Scale benchmark). The library (and so the tests' own
/// processes) leaves the choice to whoever links it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?
        .block_on(celery_operator::cli::main())
}
