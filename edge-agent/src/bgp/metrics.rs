//! The `/metrics` families of graceful restart and BFD, per peer, built here so that the
//! endpoint (`crate::metrics`) only registers them.

use std::collections::BTreeMap;

use super::session::PeerStatus;

pub enum Kind {
    Gauge,
    Counter,
}

/// One family: name, help, label names, and (label values, value) samples.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub samples: Vec<(Vec<String>, f64)>,
}

fn per_peer(
    sessions: &[PeerStatus],
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: impl Fn(&PeerStatus) -> Option<f64>,
) -> Family {
    Family {
        name,
        help,
        kind,
        labels: &["peer"],
        samples: sessions
            .iter()
            .filter_map(|p| value(p).map(|v| (vec![p.peer.to_string()], v)))
            .collect(),
    }
}

fn flag(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// Graceful-restart and BFD families for `sessions`, and BFD's dropped datagrams.
pub fn families(sessions: &[PeerStatus], bfd_dropped: &BTreeMap<&'static str, u64>) -> Vec<Family> {
    fn gr(p: &PeerStatus) -> Option<&super::session::GrStatus> {
        p.graceful_restart.restart_time.map(|_| &p.graceful_restart)
    }
    let eor = |list: &Vec<&'static str>| list.len() as f64;
    let mut out = vec![
        per_peer(
            sessions,
            "edgeproxy_bgp_graceful_restart_negotiated",
            "1 when both OPENs carried the graceful-restart capability",
            Kind::Gauge,
            |p| gr(p).map(|g| flag(g.negotiated)),
        ),
        per_peer(
            sessions,
            "edgeproxy_bgp_graceful_restart_time_seconds",
            "The restart time this speaker offers",
            Kind::Gauge,
            |p| gr(p).and_then(|g| g.restart_time).map(f64::from),
        ),
        per_peer(
            sessions,
            "edgeproxy_bgp_graceful_restart_forwarding_state",
            "1 when the Forwarding State bit was sent (the data plane kept forwarding)",
            Kind::Gauge,
            |p| gr(p).map(|g| flag(g.forwarding_state)),
        ),
        per_peer(
            sessions,
            "edgeproxy_bgp_end_of_rib_sent",
            "Families End-of-RIB was sent for on this session",
            Kind::Gauge,
            |p| gr(p).map(|g| eor(&g.end_of_rib_sent)),
        ),
        per_peer(
            sessions,
            "edgeproxy_bgp_end_of_rib_received",
            "Families the peer sent End-of-RIB for on this session",
            Kind::Gauge,
            |p| gr(p).map(|g| eor(&g.end_of_rib_received)),
        ),
        per_peer(
            sessions,
            "edgeproxy_bfd_session_up",
            "1 while the BFD session is Up",
            Kind::Gauge,
            |p| p.bfd.as_ref().map(|b| flag(b.up)),
        ),
        per_peer(
            sessions,
            "edgeproxy_bfd_tx_interval_seconds",
            "Agreed BFD transmit interval",
            Kind::Gauge,
            |p| p.bfd.as_ref().map(|b| b.tx_interval_ms / 1000.0),
        ),
        per_peer(
            sessions,
            "edgeproxy_bfd_rx_interval_seconds",
            "Agreed BFD receive interval (the peer's transmit interval)",
            Kind::Gauge,
            |p| p.bfd.as_ref().map(|b| b.rx_interval_ms / 1000.0),
        ),
        per_peer(
            sessions,
            "edgeproxy_bfd_detection_time_seconds",
            "Silence after which this side declares the BFD session down",
            Kind::Gauge,
            |p| p.bfd.as_ref().map(|b| b.detection_time_ms / 1000.0),
        ),
        per_peer(
            sessions,
            "edgeproxy_bfd_transitions_total",
            "BFD session state changes",
            Kind::Counter,
            |p| p.bfd.as_ref().map(|b| b.transitions as f64),
        ),
        per_peer(
            sessions,
            "edgeproxy_bfd_down_transitions_total",
            "Falls of the BFD session from Up",
            Kind::Counter,
            |p| p.bfd.as_ref().map(|b| b.down_transitions as f64),
        ),
    ];
    if sessions.iter().any(|p| p.bfd.is_some()) {
        out.push(Family {
            name: "edgeproxy_bfd_dropped_total",
            help: "BFD datagrams dropped, by reason (RFC 5880 6.8.6 and RFC 5881 checks)",
            kind: Kind::Counter,
            labels: &["reason"],
            samples: bfd_dropped
                .iter()
                .map(|(reason, n)| (vec![(*reason).to_owned()], *n as f64))
                .collect(),
        });
    }
    out.retain(|f| !f.samples.is_empty());
    out
}
