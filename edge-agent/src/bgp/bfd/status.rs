//! What `edge-agent status` and `/metrics` show of one peer's BFD session: its configured and
//! agreed timers, its state and the counts of its changes and packets.

use std::time::Duration;

use serde::Serialize;

use super::{config::BfdConfig, machine::Machine, packet::State};

/// One peer's BFD session, for `edge-agent status` and `/metrics`.
#[derive(Clone, Debug, Serialize)]
pub struct BfdStatus {
    pub state: &'static str,
    pub up: bool,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// Configured.
    pub min_tx_ms: u32,
    pub min_rx_ms: u32,
    pub multiplier: u8,
    /// The BGP session waits for this one to have been Up `strict_hold_ms` before its OPEN.
    pub strict: bool,
    pub strict_hold_ms: u32,
    /// Agreed: how often this side sends, how often the peer does, and how long a silence
    /// takes this session down.
    pub tx_interval_ms: f64,
    pub rx_interval_ms: f64,
    pub detection_time_ms: f64,
    pub remote_multiplier: u8,
    /// The peer's C bit (Control Plane Independent).
    pub remote_control_plane_independent: bool,
    /// Every state change, and the Up -> Down ones.
    pub transitions: u64,
    pub down_transitions: u64,
    /// Why the session last went down (RFC 5880 §4.1 diagnostic).
    pub last_down_diag: Option<&'static str>,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub error: Option<String>,
}

impl BfdStatus {
    pub(super) fn new(config: &BfdConfig, my_disc: u32) -> BfdStatus {
        BfdStatus {
            state: State::Down.as_str(),
            up: false,
            local_discriminator: my_disc,
            remote_discriminator: 0,
            min_tx_ms: config.min_tx_ms,
            min_rx_ms: config.min_rx_ms,
            multiplier: config.multiplier,
            strict: config.strict,
            strict_hold_ms: config.strict_hold_ms,
            tx_interval_ms: 0.0,
            rx_interval_ms: 0.0,
            detection_time_ms: 0.0,
            remote_multiplier: 0,
            remote_control_plane_independent: false,
            transitions: 0,
            down_transitions: 0,
            last_down_diag: None,
            packets_sent: 0,
            packets_received: 0,
            error: None,
        }
    }

    pub(super) fn show(&mut self, m: &Machine) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        self.state = m.state.as_str();
        self.up = m.state == State::Up;
        self.remote_discriminator = m.remote_disc;
        self.tx_interval_ms = m.tx_interval().map_or(0.0, ms);
        self.rx_interval_ms = ms(m.rx_interval());
        self.detection_time_ms = if m.remote_mult > 0 {
            ms(m.detection_time())
        } else {
            0.0
        };
        self.remote_multiplier = m.remote_mult;
        self.remote_control_plane_independent = m.remote_cpi;
    }
}
