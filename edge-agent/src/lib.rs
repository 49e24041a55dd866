//! The edgeProxy agent as a library: the binary (`main.rs`) is a thin CLI over these modules, and
//! the tests use them directly.

pub mod agent;
pub mod backend_reset;
pub mod balancer;
pub mod bgp;
pub mod bpf_log;
pub mod bpf_syscall;
pub mod bpffs;
pub mod config;
pub mod counters;
pub mod dataplane;
pub mod dns;
pub mod explain;
pub mod flows;
pub mod geo;
pub mod geo_maps;
pub mod health;
pub mod http_client;
pub mod kernel_clock;
pub mod listen;
pub mod log_limit;
pub mod maglev;
pub mod map_batch;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod netdev;
pub mod object;
pub mod pinned_maps;
pub mod register;
pub mod report;
pub mod services;
pub mod sixpn;
pub mod state;
pub mod test_run;
