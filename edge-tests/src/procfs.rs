//! Finding and killing processes through /proc.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

/// Identity of a namespace: the (device, inode) of its nsfs file, the same
/// whether reached through /run/netns/<name> or /proc/<pid>/ns/net.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    pub(crate) fn of(path: &Path) -> Option<Self> {
        let meta = fs::metadata(path).ok()?;
        Some(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// Live processes other than this one, by pid.
pub(crate) fn other_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .collect()
}

/// The network namespace of `pid`; `None` for zombies and vanished processes,
/// which have no namespace links.
pub(crate) fn netns_of(pid: i32) -> Option<NsId> {
    NsId::of(Path::new(&format!("/proc/{pid}/ns/net")))
}

/// Processes (thread-group leaders) whose network namespace is `ns`.
pub(crate) fn pids_in_netns(ns: NsId) -> Vec<i32> {
    other_pids()
        .into_iter()
        .filter(|&pid| netns_of(pid) == Some(ns))
        .collect()
}

/// The command line of `pid` with arguments separated by spaces; empty for
/// kernel threads, zombies and vanished processes.
pub(crate) fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// Whether `pid` still runs. Zombies count as gone: they hold no resources
/// except their pid and are reaped by their parent, not by us.
pub(crate) fn is_alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself
    // contain spaces and parentheses.
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    !matches!(state, None | Some("Z" | "X"))
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub(crate) fn send_signal(pid: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// SIGKILLs `pids` and waits up to `timeout` for them to die; returns those
/// still alive afterwards.
pub(crate) fn kill_and_wait(pids: &[i32], timeout: Duration) -> Vec<i32> {
    for &pid in pids {
        // Failure shows up as the process staying alive, reported below.
        let _ = send_signal(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + timeout;
    loop {
        let alive: Vec<i32> = pids.iter().copied().filter(|&p| is_alive(p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_has_a_netns() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(netns_of(me).is_some());
        assert!(cmdline(me).contains("edge_tests"));
        assert!(!other_pids().contains(&me));
    }

    #[test]
    fn vanished_pids_are_not_alive() {
        assert!(!is_alive(i32::MAX));
        assert_eq!(cmdline(i32::MAX), "");
        assert!(send_signal(i32::MAX, 0).is_ok());
    }
}
