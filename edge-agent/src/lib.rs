//! The edgeProxy agent as a library: the binary (`main.rs`) is a thin CLI over these modules, and
//! the tests use them directly. `docs/architecture.md` opens with this layout as a tree.

pub mod agent;
pub mod balancing;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod dns;
pub mod geo;
pub mod health;
pub mod http_client;
pub mod listen;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod process;
pub mod register;
pub mod sixpn;
pub mod state;
#[cfg(feature = "test-support")]
pub mod testing;
