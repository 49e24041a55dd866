//! End-to-end tests: real agents in network-namespace labs. They need root and the binaries
//! `cargo xtask test` builds (`EDGE_AGENT_BIN`, `EDGE_XTASK_BIN`).

mod agent_lifecycle;
mod anycast_lab;
mod attack_lab;
mod bfd_lab;
mod bgp_graceful_restart_lab;
mod bgp_ibgp_lab;
mod bgp_lab;
mod bpf_log_lab;
mod cli_lab;
mod common;
mod container_lab;
mod corrosion_lab;
mod dns_register_lab;
mod drain_timeout;
mod frr_lab;
mod geo_lab;
mod health_lab;
mod hostile_lab;
mod maps_lab;
mod metrics_lab;
mod nat_lab;
mod netlink_link_lab;
mod pmtu_lab;
mod pop_restarts;
mod readiness;
mod realistic_pop;
mod restart_lab;
mod restart_under_load;
mod sixpn_lab;
mod table_swap;
mod wireguard_lab;
mod xtask_run;
