//! What the configured listeners ask of the process's files, for `listen::budget`.

use super::AgentConfig;
use crate::listen::budget::Demand;

impl AgentConfig {
    /// The connection caps of every listener this configuration opens, and the health checks
    /// that may hold files at once.
    pub fn listener_demand(&self) -> Demand {
        let mut wanted =
            u64::from(self.register.limits.max_connections) * self.register.listen.len() as u64;
        if self.metrics.listen.is_some() {
            wanted += u64::from(self.metrics.limits.max_connections);
        }
        if self.dns.enabled {
            let addresses = self.dns.addresses(self.overlay.addr).len() as u64;
            wanted += u64::from(self.dns.tcp_limits.max_connections) * addresses;
        }
        Demand {
            connections: wanted,
            health_checks: self.health.concurrency as u64,
        }
    }
}
