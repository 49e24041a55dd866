//! Processes held on one CPU for a measurement: every thread of the namespaces named, no
//! other, and their CPUs come back with the guard's drop.

use super::three_hosts;
use crate::{pinning::affinity, Result};

/// The CPUs process `pid` may run on (none once it has exited).
fn cpus(pid: u32) -> Vec<usize> {
    let Some(set) = affinity(pid as libc::pid_t) else {
        return Vec::new();
    };
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `c` is within the set.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

#[test]
fn pinning_holds_the_namespaces_named_on_one_cpu_until_its_guard_drops() -> Result<()> {
    let lab = three_hosts("pinning")?;
    let inside = lab.ns("server").spawn("sleeper", &["sleep", "100"], &[])?;
    let outside = lab.ns("client").spawn("sleeper", &["sleep", "100"], &[])?;
    // nsenter enters the namespace, then becomes `sleep`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !lab.ns("server").pids().contains(&(inside.pid() as i32)) {
        assert!(
            std::time::Instant::now() < deadline,
            "sleep never entered the namespace"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let before = cpus(inside.pid());
    assert_eq!(
        before.len(),
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        "a spawned process may run anywhere"
    );
    // `sleep` under nsenter: both are in the namespace, each one thread.
    let guard = lab.pinned(&["server"], 0)?;
    assert!(guard.threads() >= 1, "{guard:?}");
    assert_eq!(cpus(inside.pid()), vec![0]);
    assert_eq!(cpus(outside.pid()), before, "other namespaces untouched");
    drop(guard);
    assert_eq!(cpus(inside.pid()), before, "given back with the guard");
    Ok(())
}
