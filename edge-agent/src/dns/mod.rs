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
    /// DNS over TCP: connections and the idle timeout (`[dns.tcp_limits]`, per listening
    /// address; see `crate::listen`). UDP holds no state per client.
    pub tcp_limits: crate::listen::ConnLimits<crate::listen::DnsTcpDefaults>,
}

impl DnsConfig {
    /// The addresses served: `listen`, and port 53 of the overlay address if `on_overlay`.
    pub fn addresses(&self, overlay: Option<std::net::Ipv6Addr>) -> Vec<SocketAddr> {
        let mut listen = self.listen.clone();
        if let (true, Some(addr)) = (self.on_overlay, overlay) {
            listen.push(SocketAddr::from((addr, 53)));
        }
        listen
    }
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
            tcp_limits: crate::listen::ConnLimits::default(),
        }
    }
}
