//! Gives the heap a burst freed back to the kernel. glibc's malloc returns memory only from the
//! top of each arena; what a burst of connections, queries and requests freed below a live
//! allocation stays in the process (issue 18 saw an agent grow from 60 to 230 MB and never
//! shrink). Measured in the hostile lab (`edge-tests/tests/e2e/hostile_lab.rs`, debug build): after
//! the attack the main arena held 26 MB of which 1.2 MB were in use; `malloc_trim(0)`, which
//! also releases free pages inside an arena, took the agent from 51 to 35 MB. `M_ARENA_MAX=1`
//! saved only 3 MB there (the agent's runtime is single-threaded; its few blocking threads are
//! bounded by the servers), so the arenas are left as they are.
//!
//! The connection caps (`crate::listen`) bound the peak; this bounds what stays after it. The
//! hostile lab checks both (its RSS bound during the attack, and the return to near idle
//! after it): a test in this crate could not, as RSS is the whole test process's.

use std::time::Duration;

/// Releases free heap memory to the kernel; whether any was released. A no-op where the C
/// library is not glibc.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers; it locks each arena while it works.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trims every `every` on a blocking thread (a trim walks the free lists: milliseconds, not
/// for the runtime's thread), until the runtime stops.
pub fn spawn_trimmer(every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick completes at once: nothing to give back yet.
        tick.tick().await;
        loop {
            tick.tick().await;
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    })
}
