//! The `celery-operator` binary; everything lives in the library, see `cli`.

/// Threads for blocking work: policy calls (at most one per core at a time), policy loading,
/// and name lookups, which the HTTP and Redis clients hand to the blocking pool. tokio's default
/// of 512 let every app with an unresolvable broker or Flower hold a thread; beyond this bound a
/// lookup waits its turn instead.
const BLOCKING_THREADS: usize = 32;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()?
        .block_on(celery_operator::cli::main())
}
