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

mod capture;
mod cmd;
mod error;
mod lab;
mod leftovers;
mod link;
mod logdir;
mod names;
mod netns;
pub mod pop_lab;
mod process;
mod procfs;
mod topology;
mod validate;

#[cfg(test)]
mod lab_tests;

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
pub use process::LabProcess;
pub use topology::{End, Topology};
