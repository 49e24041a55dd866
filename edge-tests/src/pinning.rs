//! Every process of some of a lab's namespaces held on one CPU for a while, where a
//! measurement must count what the path costs rather than where the scheduler and receive
//! steering spread it (see `Lab::pinned`).

use std::{fs, mem};

use crate::{Lab, LabError, Result};

/// The threads a guard moved, with the CPUs each was allowed before; dropping this gives them
/// back (threads that have exited since are skipped).
pub struct Pinned {
    saved: Vec<(libc::pid_t, libc::cpu_set_t)>,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned")
            .field("threads", &self.saved.len())
            .finish()
    }
}

impl Lab {
    /// Holds every thread of every process now inside the namespaces labelled `namespaces` on
    /// CPU `cpu` until the guard drops (threads they start later inherit it). Processes started
    /// afterwards are not moved: start them under `taskset`.
    pub fn pinned(&self, namespaces: &[&str], cpu: usize) -> Result<Pinned> {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(LabError::io(
                format!("pinning to CPU {cpu}"),
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            ));
        }
        // SAFETY: a cpu_set_t is plain bits; all zero is the empty set.
        let mut one: libc::cpu_set_t = unsafe { mem::zeroed() };
        // SAFETY: `cpu` is within the set (checked above).
        unsafe { libc::CPU_SET(cpu, &mut one) };
        let mut guard = Pinned { saved: Vec::new() };
        for ns in namespaces {
            for pid in self.ns(ns).pids() {
                for tid in threads(pid) {
                    let Some(before) = affinity(tid) else {
                        continue;
                    };
                    if set_affinity(tid, &one) {
                        guard.saved.push((tid, before));
                    }
                }
            }
        }
        Ok(guard)
    }
}

impl Pinned {
    /// How many threads the guard holds.
    pub fn threads(&self) -> usize {
        self.saved.len()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for (tid, before) in &self.saved {
            set_affinity(*tid, before);
        }
    }
}

/// The threads of `pid` (none if it has exited).
fn threads(pid: i32) -> Vec<libc::pid_t> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The CPUs thread `tid` may run on; `None` if it has exited.
pub(crate) fn affinity(tid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: all zero is a valid cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: the set is ours and of the size passed.
    let rc = unsafe { libc::sched_getaffinity(tid, mem::size_of_val(&set), &mut set) };
    (rc == 0).then_some(set)
}

/// Lets thread `tid` run on `set` only; false if it has exited.
fn set_affinity(tid: libc::pid_t, set: &libc::cpu_set_t) -> bool {
    // SAFETY: the set is valid and of the size passed.
    unsafe { libc::sched_setaffinity(tid, mem::size_of_val(set), set) == 0 }
}
