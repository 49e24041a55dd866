//! The file budget: how many connections the listeners may hold, so that the files the rest of
//! the agent needs (health check sockets and pipes, the state database, BPF objects, Corrosion
//! and BGP sessions, logs) are always there. Issue 18 saw the opposite: the API's slow clients
//! took the last of 1,024 files and every health check failed with "Too many open files".
//!
//! At start the soft `RLIMIT_NOFILE` is raised to the hard one (the agent never uses
//! `select(2)`, the reason soft limits stay at 1,024; Go's runtime does the same since 1.19),
//! a reserve is set aside, and if the listeners' connection caps do not fit in the rest, each is
//! scaled down by the same factor, with a warning that says what to raise.

use tracing::{info, warn};

/// Files kept for everything but the listeners, beyond the health checks' own share: BPF maps
/// and programs, the state database and its watcher, Corrosion, BGP, 6PN, logs, and headroom.
const BASE_RESERVE: u64 = 256;
/// Files a health check in flight may hold: its socket, or what spawning a command takes.
const PER_CHECK: u64 = 2;
/// No listener is cut below this, whatever the limit.
const MIN_CAP: u32 = 8;

/// The process's open-files limits after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileLimit {
    pub soft: u64,
    pub hard: u64,
}

fn getrlimit() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// The open-files limits in force.
pub fn file_limit() -> std::io::Result<FileLimit> {
    let limit = getrlimit()?;
    Ok(FileLimit {
        soft: limit.rlim_cur,
        hard: limit.rlim_max,
    })
}

/// Raises the soft open-files limit to the hard one; the limits then in force.
pub fn raise_nofile() -> std::io::Result<FileLimit> {
    let limit = getrlimit()?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    file_limit()
}

/// Files this process has open now.
pub fn open_files() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64)
}

/// What the configuration asks of the files: the listeners' connection caps summed, and the
/// health checks that may run at once (see `AgentConfig::listener_demand`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub connections: u64,
    pub health_checks: u64,
}

/// The connection caps the listeners get.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// The share of each configured cap granted, 1.0 when everything fits.
    pub factor: f64,
    pub reserve: u64,
    /// The soft limit the caps were fitted under.
    pub limit: u64,
}

impl Budget {
    /// Fits caps totalling `wanted` under `limit` with `reserve` files kept back and `open`
    /// already in use.
    pub fn fit(limit: u64, open: u64, reserve: u64, wanted: u64) -> Self {
        let available = limit.saturating_sub(open).saturating_sub(reserve);
        let factor = if wanted <= available || wanted == 0 {
            1.0
        } else {
            available as f64 / wanted as f64
        };
        Budget {
            factor,
            reserve,
            limit,
        }
    }

    /// What a listener configured for `cap` connections gets.
    pub fn cap(&self, cap: u32) -> u32 {
        if self.factor >= 1.0 {
            return cap;
        }
        ((f64::from(cap) * self.factor) as u32).clamp(MIN_CAP.min(cap), cap)
    }

    /// The budget for the listeners `demand` describes under this process's limit (raised
    /// first), logged.
    pub fn plan(demand: Demand) -> Self {
        let limit = raise_nofile()
            .or_else(|error| {
                warn!(%error, "raising the open-files limit to the hard one");
                file_limit()
            })
            .unwrap_or_else(|error| {
                warn!(%error, "reading the open-files limit; assuming 1024");
                FileLimit {
                    soft: 1024,
                    hard: 1024,
                }
            });
        let wanted = demand.connections;
        let reserve = BASE_RESERVE + PER_CHECK * demand.health_checks;
        let budget = Budget::fit(limit.soft, open_files(), reserve, wanted);
        if budget.factor < 1.0 {
            warn!(
                limit = limit.soft,
                reserve,
                wanted,
                percent = (budget.factor * 100.0) as u32,
                needed = wanted + reserve + open_files(),
                "the open-files limit cannot hold every listener's connection cap: each gets this percentage of it; raise LimitNOFILE (or the container's nofile ulimit) to `needed`"
            );
        } else {
            info!(
                limit = limit.soft,
                reserve, wanted, "open files: the listeners' caps fit"
            );
        }
        budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_kept_when_they_fit_and_scaled_alike_when_not() {
        let roomy = Budget::fit(16_384, 40, 1_024, 1_792);
        assert_eq!(roomy.factor, 1.0);
        assert_eq!((roomy.cap(512), roomy.cap(64)), (512, 64));

        // The container lab's 1024: 1024 - 40 open - 1024 reserve leaves nothing.
        let tight = Budget::fit(1_024, 40, 1_024, 1_792);
        assert_eq!(
            (tight.cap(512), tight.cap(64), tight.cap(4)),
            (8, 8, 4),
            "expected the floor (never above the configured cap)"
        );

        // Three listeners of 512 and four of 128 in the 1,024 files left.
        let half = Budget::fit(2_024, 0, 1_000, 3 * 512 + 4 * 128);
        assert_eq!((half.cap(512), half.cap(128)), (256, 64), "{half:?}");
        let total = half.cap(512) * 3 + half.cap(128) * 4;
        assert!(
            u64::from(total) <= 1_024,
            "expected the scaled caps within the 1,024 files left, saw {total}"
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() -> std::io::Result<()> {
        let limit = raise_nofile()?;
        assert_eq!(limit.soft, limit.hard, "{limit:?}");
        assert!(
            open_files() > 0,
            "expected /proc/self/fd to list this test's files"
        );
        Ok(())
    }
}
