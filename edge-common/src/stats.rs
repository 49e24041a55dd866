//! Packet classification counters.
//!
//! The counter map is a per-CPU array rather than a hash keyed by a struct: an array lookup is a
//! bounds check and an add, which keeps counting off the per-packet budget. The index packs
//! (L3 class, L4 class, XDP action) as `(l3 * L4_CLASSES + l4) * ACTIONS + action`.

/// How a frame's network layer was classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum L3Class {
    Ipv4 = 0,
    Ipv6 = 1,
    /// Not IP (ARP, LLDP, ...).
    Other = 2,
    /// Shorter than its Ethernet, VLAN or IP header, or an IP header that contradicts itself.
    Malformed = 3,
}

/// How a packet's transport layer was classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum L4Class {
    Tcp = 0,
    Udp = 1,
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp = 2,
    /// Any other protocol, and non-first IP fragments (which carry no transport header).
    Other = 3,
    /// No transport layer was reached (the frame is not IP, or its IP header is malformed).
    None = 4,
    /// The transport header is truncated, or IPv6 extension headers could not be walked.
    Malformed = 5,
}

pub const L3_CLASSES: u32 = 4;
pub const L4_CLASSES: u32 = 6;
/// XDP actions are 0..=4: ABORTED, DROP, PASS, TX, REDIRECT.
pub const ACTIONS: u32 = 5;
pub const STATS_ENTRIES: u32 = L3_CLASSES * L4_CLASSES * ACTIONS;

impl L3Class {
    pub const ALL: [L3Class; L3_CLASSES as usize] = [
        L3Class::Ipv4,
        L3Class::Ipv6,
        L3Class::Other,
        L3Class::Malformed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            L3Class::Ipv4 => "ipv4",
            L3Class::Ipv6 => "ipv6",
            L3Class::Other => "other",
            L3Class::Malformed => "malformed",
        }
    }
}

impl L4Class {
    pub const ALL: [L4Class; L4_CLASSES as usize] = [
        L4Class::Tcp,
        L4Class::Udp,
        L4Class::Icmp,
        L4Class::Other,
        L4Class::None,
        L4Class::Malformed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            L4Class::Tcp => "tcp",
            L4Class::Udp => "udp",
            L4Class::Icmp => "icmp",
            L4Class::Other => "other",
            L4Class::None => "none",
            L4Class::Malformed => "malformed",
        }
    }
}

/// Name of an XDP action as bpftool and the kernel docs spell it.
pub const fn action_name(action: u32) -> &'static str {
    match action {
        0 => "aborted",
        1 => "drop",
        2 => "pass",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

/// Index of the counter for a classified packet and the action taken on it.
#[inline(always)]
pub const fn stats_index(l3: L3Class, l4: L4Class, action: u32) -> u32 {
    (l3 as u32 * L4_CLASSES + l4 as u32) * ACTIONS + action
}

/// The inverse of [`stats_index`], for readers of the map.
pub const fn stats_class(index: u32) -> Option<(L3Class, L4Class, u32)> {
    if index >= STATS_ENTRIES {
        return None;
    }
    let action = index % ACTIONS;
    let l4 = (index / ACTIONS) % L4_CLASSES;
    let l3 = index / (ACTIONS * L4_CLASSES);
    Some((L3Class::ALL[l3 as usize], L4Class::ALL[l4 as usize], action))
}

/// One counter slot: packets and bytes (frame length as XDP sees it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: two u64 fields, no padding; every bit pattern is a valid value.
unsafe impl aya::Pod for Counters {}

/// Per-service counters (per CPU, indexed by service id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ServiceStats {
    /// Client -> backend direction.
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// SYNs dropped because the service had no backend to give them.
    pub no_backend: u64,
}

/// Per-backend counters (per CPU, indexed by backend id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct BackendStats {
    pub packets_to: u64,
    pub bytes_to: u64,
    pub packets_from: u64,
    pub bytes_from: u64,
    pub new_flows: u64,
    /// RSTs the backend sent.
    pub resets_from: u64,
    /// Flows the backend answered with a SYN-ACK (once per flow): with `new_flows`, the passive
    /// health signal "SYNs that get no answer".
    pub syn_acks: u64,
    /// Flows the backend answered with a RST instead of a SYN-ACK: connection refused.
    pub refused: u64,
}

/// Packets the data plane dropped or could not translate, by reason (one per-CPU entry).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
#[repr(C)]
pub struct DropStats {
    /// SYN to a service with no backend.
    pub no_backend: u64,
    /// No free source port after `PORT_TRIES` attempts.
    pub port_exhausted: u64,
    /// Flow entry could not be written.
    pub flow_insert: u64,
    /// To a VIP but not translatable: IPv4 options, fragments, VLAN tags, IPv6 extension headers.
    pub unsupported: u64,
    /// Header room could not be changed (NAT46/NAT64).
    pub resize_failed: u64,
    /// Not a drop: a RST to a VIP with no flow, or a packet whose flow could not be remade
    /// (see `recovered`), passed to the kernel (which resets it).
    pub no_flow: u64,
    /// Reply could not be redirected to the public interface.
    pub redirect_failed: u64,
    /// Not a drop: a client's FIN or RST at another sequence number than the backend expects
    /// (blind, or overtaking data still in flight): forwarded to the backend, not recorded.
    pub out_of_window: u64,
    /// Not a drop: a mid-connection packet with no flow, whose flow was remade by the same
    /// consistent hash (`FLOW_RECOVERED`).
    pub recovered: u64,
    /// Not a drop: a half-open flow removed because a new one needed its source port and
    /// every other candidate was taken (a SYN flood holds most of them).
    pub displaced: u64,
    /// A backend's answer to a recovered flow that was not for it (another connection's ACK,
    /// or a RST): dropped, and the source port marked as not the client's
    /// (`FLOW_TOMBSTONE`), so that the client's next packet tries the next one.
    pub recovery_missed: u64,
    /// Not a drop: an ICMP or ICMPv6 error from the client side that quotes a live flow
    /// (VIP -> client), translated and sent to the flow's backend over the overlay.
    pub icmp_to_backend: u64,
    /// Not a drop: an ICMPv6 error from the overlay that quotes a live flow (POP -> backend),
    /// translated and sent to the flow's client (as ICMPv4 for an IPv4 client).
    pub icmp_to_client: u64,
    /// Not a drop: an ICMP error quoting a service's or the POP's translated address and port
    /// that matches no established flow, passed to the kernel untouched.
    pub icmp_no_flow: u64,
    /// An ICMP error about a live flow that was refused: its quote is truncated (less than the
    /// IP header and 8 bytes of TCP), or the error is not addressed to the quoted source.
    pub icmp_bad_quote: u64,
    /// An ICMP error about a live flow refused because the quoted sequence number is not near
    /// what the flow's receiver last acknowledged (a blind forgery must guess it).
    pub icmp_out_of_window: u64,
    /// An ICMP error about a live flow refused by the per-flow limit (10 a second each way).
    pub icmp_rate_limited: u64,
    /// An ICMP error about a live flow whose type and code have no counterpart in the other
    /// family (RFC 7915), refused.
    pub icmp_untranslatable: u64,
}

#[cfg(feature = "user")]
// SAFETY: u64 fields only.
unsafe impl aya::Pod for ServiceStats {}
#[cfg(feature = "user")]
// SAFETY: u64 fields only.
unsafe impl aya::Pod for BackendStats {}
#[cfg(feature = "user")]
// SAFETY: u64 fields only.
unsafe impl aya::Pod for DropStats {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips_for_every_class() {
        for l3 in L3Class::ALL {
            for l4 in L4Class::ALL {
                for action in 0..ACTIONS {
                    let index = stats_index(l3, l4, action);
                    assert!(index < STATS_ENTRIES, "{l3:?}/{l4:?}/{action} -> {index}");
                    assert_eq!(stats_class(index), Some((l3, l4, action)));
                }
            }
        }
        assert_eq!(stats_class(STATS_ENTRIES), None);
    }
}
