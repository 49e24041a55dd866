//! Network-namespace lab harness for edgeProxy's end-to-end tests.
//!
//! A [`Topology`] describes hosts (network namespaces), the veths between
//! them, addresses, routes and sysctls; [`Topology::up`] builds it and returns
//! a [`Lab`] whose drop removes all of it. Processes started with
//! [`NetNs::spawn`] run in their own process group with their output captured
//! for assertions and failure messages.
//!
//! Every object carries the prefix [`PREFIX`] and a per-run id, so labs of
//! parallel threads and processes never collide, and anything a crashed run
//! left behind is found by [`find_leftovers`] and removed by [`clean_all`].
//!
//! Everything here needs root, `ip` (iproute2) and `nsenter` (util-linux).

pub mod agent_config;
mod capture;
mod cmd;
mod error;
mod lab;
mod leftovers;
mod link;
mod logdir;
mod names;
mod netns;
mod pinning;
pub mod pop_lab;
mod process;
mod procfs;
mod steering;
mod topology;
mod validate;
mod wire_hash;

#[cfg(test)]
mod lab_tests;

pub use agent_config::AgentConfig;
pub use cmd::CmdOutput;
pub use error::{LabError, Result};
pub use lab::Lab;
pub use leftovers::{clean, clean_all, find_leftovers, LeftoverProcess, Leftovers};
pub use link::Mac;
pub use logdir::KEEP_LOGS_ENV;
pub use names::{
    bpffs_pin_dir, ns_name, ns_prefix, wg_ifname, RunId, AGENT_RUN_DIR, PREFIX, RUN_ID_LEN,
};
pub use netns::NetNs;
pub use pinning::Pinned;
pub use process::LabProcess;
pub use steering::SteeringOff;
pub use topology::{End, Topology};
pub use wire_hash::{hash_like_a_nic, WireHash};

/// Raises this process's open-files limit to its hard maximum: the lab's load generators hold
/// thousands of sockets, more than the usual soft limit of 1024.
pub fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer, then the same struct back in.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
