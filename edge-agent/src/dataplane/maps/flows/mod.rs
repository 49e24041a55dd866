//! The flow table seen from user space: TCP state derived from both directions' flags, expiry,
//! per-backend active-flow counts, and listings for `edge-agent flows`.

mod config;

use std::{
    borrow::Borrow,
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    HashMap as BpfHashMap, IterableMap as _, MapData, MapError,
};
use edge_common::{
    flow::{FLOW_ENDED, FLOW_REVERSE, TCP_ACK, TCP_FIN, TCP_RST},
    geo::{embedded_ipv4, GeoValue},
    is_ipv4_mapped, names, FlowKey, FlowValue,
};
use serde::Serialize;

pub use self::config::FlowConfig;
use crate::dataplane::backend_reset::BackendReset;

/// TCP state of a connection as the two directions' flags tell it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpState {
    /// In `HALF_OPEN`: the client has not acknowledged the backend's SYN-ACK (yet).
    SynSent,
    Established,
    /// A FIN in one direction.
    Closing,
    /// A RST, or FINs both ways.
    Closed,
}

/// Which of the two flow tables a sweep walks (see `edge_common::flow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// `FLOWS`: connections whose handshake the client completed.
    Established,
    /// `HALF_OPEN`: connections a SYN started.
    HalfOpen,
}

impl TcpState {
    pub fn of(table: Table, forward_flags: u8, reverse_flags: u8) -> Self {
        let both = forward_flags | reverse_flags;
        if both & TCP_RST != 0 || (forward_flags & TCP_FIN != 0 && reverse_flags & TCP_FIN != 0) {
            TcpState::Closed
        } else if table == Table::HalfOpen {
            TcpState::SynSent
        } else if both & TCP_FIN != 0 {
            TcpState::Closing
        } else {
            TcpState::Established
        }
    }

    pub fn timeout(self, config: &FlowConfig) -> Duration {
        Duration::from_secs(match self {
            TcpState::SynSent => config.syn_timeout_secs,
            TcpState::Established => config.established_timeout_secs,
            TcpState::Closing => config.fin_timeout_secs,
            TcpState::Closed => config.closed_timeout_secs,
        })
    }
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock the kernel programs stamp flows with
/// (jiffies, scaled by `dataplane::clock`'s calibration).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; the clock exists on every kernel the data plane runs on.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One connection: its forward entry and, if still there, its reverse one.
#[derive(Clone, Debug, Serialize)]
pub struct Flow {
    pub client: String,
    /// The client's country as the kernel's geo tries classify it (filled by `classify`).
    pub country: Option<String>,
    pub vip: String,
    pub backend: String,
    pub backend_id: u32,
    pub service_id: u32,
    pub state: TcpState,
    pub age_secs: f64,
    pub idle_secs: f64,
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
}

fn addr(a: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*a);
    if is_ipv4_mapped(a) {
        v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
    } else {
        IpAddr::V6(v6)
    }
}

/// `a.b.c.d:port` or `[v6]:port` of a stored address and network-order port.
pub fn endpoint(a: &[u8; 16], port_be: u16) -> String {
    match addr(a) {
        IpAddr::V4(v4) => format!("{v4}:{}", u16::from_be(port_be)),
        IpAddr::V6(v6) => format!("[{v6}]:{}", u16::from_be(port_be)),
    }
}

/// The address the kernel classifies a client by (`geo_class`): its own IPv4 address, the IPv4
/// address an IPv6 one embeds (6to4, Teredo, IPv4-mapped: `edge_common::geo::embedded_ipv4`),
/// else (`Err`) its IPv6 address.
pub fn client_ipv4(client: IpAddr) -> Result<Ipv4Addr, Ipv6Addr> {
    match client {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(ip) => embedded_ipv4(&ip.octets()).map(Ipv4Addr::from).ok_or(ip),
    }
}

/// Fills each flow's `country` from the pinned geo tries under `pins` (the same longest-prefix
/// lookup the kernel made for its SYN, by the same address: `client_ipv4`). Flows whose address
/// is in no prefix stay `None`.
pub fn classify(flows: &mut [Flow], pins: &crate::dataplane::pins::PinDir) {
    use aya::maps::{lpm_trie::LpmTrie, Map};
    let open = |name| MapData::from_pin(pins.map(name)).ok().map(Map::LpmTrie);
    let v4 = open(names::GEO_V4).and_then(|m| LpmTrie::try_from(m).ok());
    let v6 = open(names::GEO_V6).and_then(|m| LpmTrie::try_from(m).ok());
    classify_with(flows, v4.as_ref(), v6.as_ref());
}

/// `classify` with the geo tries at hand (absent ones answer nothing).
pub fn classify_with<T: Borrow<MapData>>(
    flows: &mut [Flow],
    v4: Option<&LpmTrie<T, [u8; 4], GeoValue>>,
    v6: Option<&LpmTrie<T, [u8; 16], GeoValue>>,
) {
    for flow in flows {
        let Ok(client) = flow.client.parse::<std::net::SocketAddr>() else {
            continue;
        };
        let found = match client_ipv4(client.ip()) {
            Ok(ip) => v4.and_then(|t| t.get(&Key::new(32, ip.octets()), 0).ok()),
            Err(ip) => v6.and_then(|t| t.get(&Key::new(128, ip.octets()), 0).ok()),
        };
        flow.country = found
            .filter(|g| g.class != 0)
            .and_then(|g| String::from_utf8(g.country.to_vec()).ok());
    }
}

/// What a sweep found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    /// Entries in the table (both directions).
    pub entries: u64,
    pub connections: u64,
    /// Entries removed (both directions of expired connections, and orphaned halves).
    pub expired: u64,
    /// Connections not closed, per backend id: what the balancer weighs against the limits.
    pub active_per_backend: BTreeMap<u32, u64>,
    pub by_state: BTreeMap<String, u64>,
}

/// What a sweep does beside counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sweep {
    /// Count only (status, metrics).
    Count,
    /// Count and remove the entries past their state's timeout (the agent's sweeper).
    Expire,
    /// Count and list every connection (`edge-agent flows`).
    List,
}

/// What a sweep keeps of a reverse entry: what judging its connection takes. Forward entries
/// are kept whole (the listing shows them), reverse ones by key, in about half the memory:
/// a million-entry table is held in some 100 MB instead of twice that.
struct ReplyHalf {
    tcp_flags: u8,
    /// A forward entry names this one as its partner.
    paired: bool,
    last_seen_ns: u64,
    packets: u64,
    bytes: u64,
}

/// Reads every entry of one of the flow tables; see `Sweep` for what else it does. Only
/// established connections count towards `active_per_backend`: a flood of spoofed SYNs must not
/// take a backend to its connection limit.
pub fn sweep<T: Borrow<MapData>>(
    flows: &BpfHashMap<T, FlowKey, FlowValue>,
    table: Table,
    config: &FlowConfig,
    now_ns: u64,
    mode: Sweep,
) -> Result<(SweepReport, Vec<Flow>), MapError> {
    let map = flows.map();
    let mut forward: Vec<(FlowKey, FlowValue)> = Vec::new();
    // foldhash (randomly seeded) rather than SipHash: a sweep of a few hundred thousand
    // entries spent most of its own time hashing them.
    let mut replies: foldhash::HashMap<FlowKey, ReplyHalf> = foldhash::HashMap::default();
    crate::dataplane::batch::for_each(map, |key: &FlowKey, value: &FlowValue| {
        if value.flags & FLOW_REVERSE == 0 {
            forward.push((*key, *value));
        } else {
            replies.insert(
                *key,
                ReplyHalf {
                    tcp_flags: value.tcp_flags,
                    paired: false,
                    last_seen_ns: value.last_seen_ns,
                    packets: value.packets,
                    bytes: value.bytes,
                },
            );
        }
    })?;
    // Named once per state, not once per connection.
    let mut by_state: BTreeMap<TcpState, u64> = BTreeMap::new();
    let mut report = SweepReport {
        entries: (forward.len() + replies.len()) as u64,
        ..SweepReport::default()
    };
    let mut listing = Vec::new();
    let mut doomed = Vec::new();
    for (key, value) in &forward {
        let partner_key = value.partner_key();
        let partner = replies.get_mut(&partner_key).map(|p| {
            p.paired = true;
            &*p
        });
        report.connections += 1;
        let reverse_flags = partner.map_or(0, |p| p.tcp_flags);
        let state = TcpState::of(table, value.tcp_flags, reverse_flags);
        let last = partner.map_or(value.last_seen_ns, |p| {
            p.last_seen_ns.max(value.last_seen_ns)
        });
        let idle = Duration::from_nanos(now_ns.saturating_sub(last));
        *by_state.entry(state).or_default() += 1;
        if idle > state.timeout(config) {
            doomed.push(*key);
            if partner.is_some() {
                doomed.push(partner_key);
            }
            continue;
        }
        if matches!(state, TcpState::Established | TcpState::Closing) {
            *report
                .active_per_backend
                .entry(value.backend_id)
                .or_default() += 1;
        }
        if mode != Sweep::List {
            continue;
        }
        listing.push(Flow {
            client: endpoint(&key.src, key.sport),
            country: None,
            vip: endpoint(&key.dst, key.dport),
            backend: endpoint(&value.new_dst, value.new_dport),
            backend_id: value.backend_id,
            service_id: value.service_id,
            state,
            age_secs: now_ns.saturating_sub(value.created_ns) as f64 / 1e9,
            idle_secs: idle.as_secs_f64(),
            packets_in: value.packets,
            bytes_in: value.bytes,
            packets_out: partner.map_or(0, |p| p.packets),
            bytes_out: partner.map_or(0, |p| p.bytes),
        });
    }
    // Reverse halves no forward entry names are orphans (their forward half was evicted, or
    // replaced by a new flow on the same client port): gone once idle past the closed timeout.
    for (key, reply) in &replies {
        let idle = Duration::from_nanos(now_ns.saturating_sub(reply.last_seen_ns));
        if !reply.paired && idle > TcpState::Closed.timeout(config) {
            doomed.push(*key);
        }
    }
    report.by_state = by_state
        .into_iter()
        .map(|(state, n)| (format!("{state:?}"), n))
        .collect();
    if mode == Sweep::Expire {
        // Keys another path removed meanwhile are counted as expired too: they are gone.
        crate::dataplane::batch::delete(map, &doomed)?;
        report.expired = doomed.len() as u64;
    }
    Ok((report, listing))
}

/// What ending one flow table's connections to some backends takes: the entries to delete, and
/// a RST for each backend whose connection is still open (see `backend_reset`).
#[derive(Debug, Default)]
pub struct Ending {
    /// Reverse halves, and half-open entries: removed.
    pub keys: Vec<FlowKey>,
    /// Forward halves, marked `FLOW_ENDED`: written back as they are.
    pub ended: Vec<(FlowKey, FlowValue)>,
    pub resets: Vec<BackendReset>,
    /// Connections left for a later sweep: this one had `max_resets` RSTs to send already.
    pub deferred: u64,
}

/// The connections to one of `backends` in one flow table (both directions, and reverse halves
/// whose forward half is gone): what a drain timeout ends. A connection whose backend has
/// acknowledged anything and which no RST has ended yet gets a RST from the POP's translated
/// source to the backend at the sequence number the backend expects (the reverse half's `ack`);
/// past `max_resets` of them, connections are left in the table for a later sweep. Clients learn
/// it from the POP's kernel, which their next packets go to: the forward halves of `FLOWS` stay,
/// marked `FLOW_ENDED`, until the closed timeout (removed, they would be remade, see
/// `FLOW_RECOVERED`); in `HALF_OPEN` (`mark = false`) everything goes.
pub fn backend_flows_to_end<T: Borrow<MapData>>(
    flows: &BpfHashMap<T, FlowKey, FlowValue>,
    backends: &std::collections::HashSet<u32>,
    max_resets: usize,
    mark: bool,
) -> Result<Ending, MapError> {
    let mut forward: Vec<(FlowKey, FlowValue)> = Vec::new();
    let mut replies: foldhash::HashMap<FlowKey, FlowValue> = foldhash::HashMap::default();
    crate::dataplane::batch::for_each(flows.map(), |key: &FlowKey, value: &FlowValue| {
        if !backends.contains(&value.backend_id) || value.flags & FLOW_ENDED != 0 {
            return;
        }
        if value.flags & FLOW_REVERSE == 0 {
            forward.push((*key, *value));
        } else {
            replies.insert(*key, *value);
        }
    })?;
    let mut ending = Ending::default();
    for (key, value) in forward {
        let partner_key = value.partner_key();
        let reply = replies.remove(&partner_key);
        if let Some(reset) = reply.and_then(|reply| reset_for(&value, &reply)) {
            if ending.resets.len() >= max_resets {
                ending.deferred += 1;
                continue;
            }
            ending.resets.push(reset);
        }
        if mark {
            let ended = FlowValue {
                flags: value.flags | FLOW_ENDED,
                tcp_flags: value.tcp_flags | TCP_RST,
                ..value
            };
            ending.ended.push((key, ended));
        } else {
            ending.keys.push(key);
        }
        if reply.is_some() {
            ending.keys.push(partner_key);
        }
    }
    ending.keys.extend(replies.into_keys());
    Ok(ending)
}

/// Removes every connection to one of `backends` (both directions) from one flow table, telling
/// no backend (the agent's drain timeout uses `backend_flows_to_end`, which resets them too).
pub fn remove_backend_flows<T: Borrow<MapData>>(
    flows: &BpfHashMap<T, FlowKey, FlowValue>,
    backends: &std::collections::HashSet<u32>,
) -> Result<u64, MapError> {
    crate::dataplane::batch::delete_where::<FlowKey, FlowValue>(flows.map(), |v| {
        backends.contains(&v.backend_id)
    })
}

/// The RST that ends a connection at its backend, if the backend still has it: it has
/// acknowledged something (so it has a socket, and `ack` is what it expects), and neither side
/// has sent a RST.
pub fn reset_for(forward: &FlowValue, reply: &FlowValue) -> Option<BackendReset> {
    if reply.tcp_flags & TCP_ACK == 0 || (forward.tcp_flags | reply.tcp_flags) & TCP_RST != 0 {
        return None;
    }
    Some(BackendReset {
        src: Ipv6Addr::from(forward.new_src),
        sport: u16::from_be(forward.new_sport),
        dst: Ipv6Addr::from(forward.new_dst),
        dport: u16::from_be(forward.new_dport),
        seq: reply.ack,
    })
}

/// Removes client bindings unused for longer than `ttl` (v1 swept its bindings every 60 s). The
/// kernel already ignores them; this frees their slots before the LRU has to.
pub fn expire_bindings<T: Borrow<MapData>>(
    bindings: &BpfHashMap<T, edge_common::geo::AffinityKey, edge_common::geo::AffinityValue>,
    ttl: Duration,
    now_ns: u64,
) -> Result<u64, MapError> {
    let ttl_ns = ttl.as_nanos().min(u128::from(u64::MAX)) as u64;
    crate::dataplane::batch::delete_where::<
        edge_common::geo::AffinityKey,
        edge_common::geo::AffinityValue,
    >(bindings.map(), |v| {
        now_ns.saturating_sub(v.last_used_ns) >= ttl_ns
    })
}

#[cfg(test)]
mod tests {
    use edge_common::flow::TCP_SYN;

    use super::*;

    #[test]
    fn state_follows_both_directions() {
        use Table::{Established as Est, HalfOpen};
        assert_eq!(TcpState::of(HalfOpen, TCP_SYN, 0), TcpState::SynSent);
        assert_eq!(
            TcpState::of(HalfOpen, TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK),
            TcpState::SynSent,
            "a half-open flow stays SynSent until the client's ACK moves it"
        );
        assert_eq!(
            TcpState::of(Est, TCP_SYN | TCP_ACK, TCP_SYN | TCP_ACK),
            TcpState::Established
        );
        assert_eq!(
            TcpState::of(Est, TCP_SYN | TCP_ACK | TCP_FIN, TCP_SYN | TCP_ACK),
            TcpState::Closing
        );
        assert_eq!(
            TcpState::of(Est, TCP_SYN | TCP_FIN, TCP_SYN | TCP_FIN),
            TcpState::Closed
        );
        assert_eq!(TcpState::of(Est, TCP_SYN, TCP_RST), TcpState::Closed);
        assert_eq!(TcpState::of(HalfOpen, TCP_SYN, TCP_RST), TcpState::Closed);
        let config = FlowConfig::default();
        assert!(TcpState::Closed.timeout(&config) < TcpState::Established.timeout(&config));
        assert!(TcpState::SynSent.timeout(&config) < TcpState::Established.timeout(&config));
    }

    #[test]
    fn a_reset_goes_from_the_translated_source_at_the_backends_ack() {
        let forward = FlowValue {
            new_src: ipv6("fd00:ee:ff::a00:102"),
            new_dst: ipv6("fd00:ee:1:1::2"),
            new_sport: 40123u16.to_be(),
            new_dport: 7007u16.to_be(),
            tcp_flags: TCP_SYN | TCP_ACK,
            ..FlowValue::default()
        };
        let reply = FlowValue {
            tcp_flags: TCP_SYN | TCP_ACK,
            ack: 123_456,
            flags: FLOW_REVERSE,
            ..FlowValue::default()
        };
        let reset = reset_for(&forward, &reply);
        assert_eq!(
            reset,
            Some(BackendReset {
                src: "fd00:ee:ff::a00:102"
                    .parse()
                    .unwrap_or(Ipv6Addr::UNSPECIFIED),
                sport: 40123,
                dst: "fd00:ee:1:1::2".parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
                dport: 7007,
                seq: 123_456,
            }),
            "a RST from the forward entry's new source to its new destination at the reply's ack"
        );
        let reset_already = FlowValue {
            tcp_flags: TCP_ACK | TCP_RST,
            ..reply
        };
        assert_eq!(reset_for(&forward, &reset_already), None, "already reset");
        let silent = FlowValue {
            tcp_flags: 0,
            ..reply
        };
        assert_eq!(
            reset_for(&forward, &silent),
            None,
            "the backend never answered: nothing to reset"
        );
    }

    fn ipv6(s: &str) -> [u8; 16] {
        s.parse::<Ipv6Addr>()
            .unwrap_or(Ipv6Addr::UNSPECIFIED)
            .octets()
    }
}
