//! Authoritative DNS for `internal.`, served from control-plane state (hickory-server).

pub mod server;
pub mod zone;

pub use self::{server::DnsServer, zone::Zone};

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The `[dns]` section of the agent's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    pub enabled: bool,
    /// UDP and TCP, each.
    pub listen: Vec<SocketAddr>,
    /// Also listen on this POP's overlay address (`overlay.addr`), port 53.
    pub on_overlay: bool,
    /// Of every answer, and of negative answers (the SOA minimum).
    pub ttl_secs: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: true,
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], 53)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 53)),
            ],
            on_overlay: true,
            ttl_secs: 5,
        }
    }
}
