//! The BGP speaker's figures for `/metrics`: session states, prefixes, BFD, and whether each VIP
//! is announced, as the agent last published them.

use super::{AgentView, Scrape};

/// The BGP speaker's sessions (one state gauge per RFC 4271 state, as node_exporter does for
/// systemd units) and whether each VIP is announced.
pub(super) fn families(out: &Scrape, view: &AgentView) -> prometheus::Result<()> {
    use crate::bgp::session::State;
    const STATES: [State; 6] = [
        State::Idle,
        State::Connect,
        State::Active,
        State::OpenSent,
        State::OpenConfirm,
        State::Established,
    ];
    if view.bgp_sessions.is_empty() {
        return Ok(());
    }
    out.gauges(
        "edgeproxy_bgp_session_state",
        "1 for the BGP session's current state",
        &["peer", "state"],
        view.bgp_sessions
            .iter()
            .flat_map(|p| {
                STATES.map(|st| {
                    (
                        vec![p.peer.to_string(), st.as_str().to_owned()],
                        f64::from(u8::from(p.state == st)),
                    )
                })
            })
            .collect(),
    )?;
    out.gauges(
        "edgeproxy_bgp_prefixes_announced",
        "Prefixes announced to the peer",
        &["peer"],
        view.bgp_sessions
            .iter()
            .map(|p| (vec![p.peer.to_string()], p.prefixes_announced as f64))
            .collect(),
    )?;
    out.counters(
        "edgeproxy_bgp_prefixes_received_total",
        "Prefixes the peer announced to this speaker (read, not used)",
        &["peer"],
        view.bgp_sessions
            .iter()
            .map(|p| (vec![p.peer.to_string()], p.prefixes_received))
            .collect(),
    )?;
    out.counters(
        "edgeproxy_bgp_sessions_established_total",
        "Times the session reached Established",
        &["peer"],
        view.bgp_sessions
            .iter()
            .map(|p| (vec![p.peer.to_string()], p.established_count))
            .collect(),
    )?;
    for f in crate::bgp::metrics::families(&view.bgp_sessions, &view.bgp_bfd_dropped) {
        match f.kind {
            crate::bgp::metrics::Kind::Gauge => out.gauges(f.name, f.help, f.labels, f.samples)?,
            crate::bgp::metrics::Kind::Counter => out.counters(
                f.name,
                f.help,
                f.labels,
                f.samples.into_iter().map(|(l, v)| (l, v as u64)).collect(),
            )?,
        }
    }
    out.gauges(
        "edgeproxy_bgp_vip_announced",
        "1 while the VIP is announced",
        &["vip", "prefix"],
        view.bgp_vips
            .iter()
            .map(|v| {
                (
                    vec![v.vip.to_string(), v.prefix.to_string()],
                    f64::from(u8::from(v.announced)),
                )
            })
            .collect(),
    )
}
