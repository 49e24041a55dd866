//! The `[flows]` section: how large the flow tables are and how long idle flows live in them.

use serde::{Deserialize, Serialize};

/// Flow table size and how long idle flows live, per TCP state the agent derives from the
/// flags seen in both directions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowConfig {
    /// Entries in the flow table of established connections (each takes two). Evicts least
    /// recently used, but only a completed handshake makes an entry, so spoofed SYNs never do.
    pub max_entries: u32,
    /// Entries in the table of half-open connections (each takes two): the SYNs whose client has
    /// not yet acknowledged the backend's SYN-ACK. A SYN flood cycles through it alone.
    pub half_open_max_entries: u32,
    /// A half-open connection (SYN seen, handshake not completed).
    pub syn_timeout_secs: u64,
    /// Both directions seen, no FIN or RST.
    pub established_timeout_secs: u64,
    /// A FIN seen in one direction.
    pub fin_timeout_secs: u64,
    /// RST seen, or FIN in both directions: kept briefly for the last ACKs and retransmits.
    pub closed_timeout_secs: u64,
    /// How often the sweeper walks the table.
    pub sweep_interval_secs: u64,
    /// How long a draining backend's connections may go on; 0 lets them end by themselves.
    pub drain_timeout_secs: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            max_entries: edge_common::limits::DEFAULT_FLOWS,
            half_open_max_entries: edge_common::limits::DEFAULT_HALF_OPEN,
            syn_timeout_secs: 30,
            established_timeout_secs: 3600,
            fin_timeout_secs: 30,
            closed_timeout_secs: 10,
            sweep_interval_secs: 5,
            drain_timeout_secs: 0,
        }
    }
}
