//! The tracker's own threads for heavy work: large request frames decoded and checked (a Register
//! of up to 2^18 hash merges per file), large replies encoded. Not Tokio's blocking pool: these
//! threads run at a lowered CPU priority, so heavy work yields the cores to the async workers
//! (which serve every other session) whenever they have something to do, and a thread's priority
//! cannot be raised again without privileges, so a shared pool's threads would stay lowered for
//! whatever else the process (a test or benchmark running peers in-process) gave them later.

use std::panic::{catch_unwind, AssertUnwindSafe};

use tokio::sync::oneshot;

/// How much lower than the process's the CPU priority of heavy work is (in nice steps: at 10, a
/// busy thread gets about a tenth of a core the async workers also want).
const HEAVY_NICE: i32 = 10;

/// A fixed set of lowered-priority threads; dropping it ends them once their work is done.
#[derive(Debug)]
pub(crate) struct HeavyPool {
    /// None if no thread could be started: every piece of heavy work then fails.
    pool: Option<rayon::ThreadPool>,
}

/// The work panicked, or there are no threads to run it.
#[derive(Debug)]
pub(crate) struct Failed;

impl HeavyPool {
    /// `threads` threads (at least one).
    pub(crate) fn new(threads: usize) -> std::io::Result<HeavyPool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("tracker-heavy-{i}"))
            .start_handler(|_| lower_priority())
            .build()
            .map_err(std::io::Error::other)?;
        Ok(HeavyPool { pool: Some(pool) })
    }

    /// A pool without threads, for when none can be started.
    pub(crate) fn unavailable() -> HeavyPool {
        HeavyPool { pool: None }
    }

    /// Runs `work` on one of the threads and waits for its result.
    pub(crate) async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, Failed> {
        let pool = self.pool.as_ref().ok_or(Failed)?;
        let (tx, rx) = oneshot::channel();
        pool.spawn(move || {
            let _ = tx.send(catch_unwind(AssertUnwindSafe(work)));
        });
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            _ => Err(Failed),
        }
    }
}

/// Lowers the calling thread's CPU priority by [`HEAVY_NICE`]. Linux only (a thread has its own
/// nice value there); a failure leaves the priority as it was.
fn lower_priority() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let me = Some(rustix::thread::gettid());
        if let Ok(nice) = rustix::process::getpriority_process(me) {
            let _ = rustix::process::setpriority_process(me, (nice + HEAVY_NICE).min(19));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_work_and_reports_panics() {
        let pool = HeavyPool::new(1).unwrap();
        assert_eq!(pool.run(|| 6 * 7).await.unwrap(), 42);
        assert!(pool.run(|| panic!("boom")).await.is_err());
        // The thread survives a panic.
        assert_eq!(pool.run(|| 1).await.unwrap(), 1);
        assert!(HeavyPool::unavailable().run(|| 1).await.is_err());
    }
}
