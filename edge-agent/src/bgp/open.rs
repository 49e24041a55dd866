//! The OPEN exchange: what this speaker offers (4-octet AS, IPv4 and IPv6 unicast, route
//! refresh, and graceful restart when configured) and what it accepts of the peer's OPEN
//! (RFC 4271 §6.2, RFC 6793, RFC 4760, RFC 4724 §3).

use std::net::Ipv4Addr;

use bgpkit_parser::models::{
    capabilities::{
        BgpCapabilityType, FourOctetAsCapability, GracefulRestartAddressFamily,
        GracefulRestartCapability, MultiprotocolExtensionsCapability, RouteRefreshCapability,
    },
    Afi, Asn, AsnLength, BgpMessage, BgpOpenMessage, Capability, CapabilityValue, OptParam,
    ParamValue, Safi,
};

use super::wire::{code, Notify, AS_TRANS};

/// What both OPENs agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Seconds; 0: no keepalives and no hold timer.
    pub hold_time: u16,
    pub asn_len: AsnLength,
    pub ipv4: bool,
    pub ipv6: bool,
    pub route_refresh: bool,
    pub peer_id: Ipv4Addr,
    /// The peer's graceful-restart time when it offered the capability (RFC 4724 §3).
    pub peer_restart_time: Option<u16>,
}

/// What this speaker says in its graceful-restart capability (RFC 4724 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Seconds the peers keep this speaker's routes after the session drops (12 bits).
    pub restart_time: u16,
    /// The Restart State bit: this speaker has restarted (its first sessions after a start).
    pub restarted: bool,
    /// The Forwarding State bit of every family: the data plane kept forwarding across the
    /// restart (the agent adopted the pinned programs instead of starting fresh).
    pub forwarding: bool,
}

impl Negotiated {
    pub fn keepalive_secs(&self) -> u64 {
        u64::from(self.hold_time / 3)
    }
}

/// This speaker's OPEN.
pub fn ours(asn: u32, hold_time: u16, router_id: Ipv4Addr) -> BgpMessage {
    ours_with(asn, hold_time, router_id, None)
}

/// This speaker's OPEN, with the graceful-restart capability when `gr` is given.
pub fn ours_with(
    asn: u32,
    hold_time: u16,
    router_id: Ipv4Addr,
    gr: Option<GracefulRestart>,
) -> BgpMessage {
    let cap = |ty, value| Capability { ty, value };
    let mp = |afi| {
        cap(
            BgpCapabilityType::MULTIPROTOCOL_EXTENSIONS_FOR_BGP_4,
            CapabilityValue::MultiprotocolExtensions(MultiprotocolExtensionsCapability {
                afi,
                safi: Safi::Unicast,
            }),
        )
    };
    let mut caps = vec![
        mp(Afi::Ipv4),
        mp(Afi::Ipv6),
        cap(
            BgpCapabilityType::ROUTE_REFRESH_CAPABILITY_FOR_BGP_4,
            CapabilityValue::RouteRefresh(RouteRefreshCapability::new()),
        ),
        cap(
            BgpCapabilityType::SUPPORT_FOR_4_OCTET_AS_NUMBER_CAPABILITY,
            CapabilityValue::FourOctetAs(FourOctetAsCapability { asn }),
        ),
    ];
    if let Some(gr) = gr {
        let family = |afi| GracefulRestartAddressFamily {
            afi,
            safi: Safi::Unicast,
            forwarding_state: gr.forwarding,
        };
        caps.push(cap(
            BgpCapabilityType::GRACEFUL_RESTART_CAPABILITY,
            CapabilityValue::GracefulRestart(GracefulRestartCapability::new(
                gr.restarted,
                gr.restart_time.min(MAX_RESTART_TIME),
                vec![family(Afi::Ipv4), family(Afi::Ipv6)],
            )),
        ));
    }
    let two_octet = u16::try_from(asn).unwrap_or(AS_TRANS as u16);
    BgpMessage::Open(BgpOpenMessage {
        version: 4,
        asn: Asn::new_16bit(two_octet),
        hold_time,
        bgp_identifier: router_id,
        extended_length: false,
        opt_params: vec![OptParam {
            param_type: 2,
            param_value: ParamValue::Capacities(caps),
        }],
    })
}

/// The restart time field has 12 bits (RFC 4724 §3).
pub const MAX_RESTART_TIME: u16 = 4095;

/// Checks the peer's OPEN against what is configured for it, and what the session will use.
pub fn accept(
    open: &BgpOpenMessage,
    expected_asn: u32,
    our_hold: u16,
    our_id: Ipv4Addr,
) -> Result<Negotiated, Notify> {
    if open.version != 4 {
        // The data is the highest version this speaker supports.
        return Err(Notify::new(
            code::OPEN,
            1,
            4u16.to_be_bytes().to_vec(),
            format!("unsupported version {}", open.version),
        ));
    }
    let mut four_octet = None;
    let mut peer_restart_time = None;
    let (mut mp, mut any_mp, mut route_refresh) = ((false, false), false, false);
    for param in &open.opt_params {
        let ParamValue::Capacities(caps) = &param.param_value else {
            return Err(Notify::new(
                code::OPEN,
                4,
                Vec::new(),
                format!("unsupported optional parameter {}", param.param_type),
            ));
        };
        for c in caps {
            match &c.value {
                CapabilityValue::FourOctetAs(f) => four_octet = Some(f.asn),
                CapabilityValue::MultiprotocolExtensions(m) => {
                    any_mp = true;
                    match (m.afi, m.safi) {
                        (Afi::Ipv4, Safi::Unicast) => mp.0 = true,
                        (Afi::Ipv6, Safi::Unicast) => mp.1 = true,
                        _ => {}
                    }
                }
                CapabilityValue::RouteRefresh(_) => route_refresh = true,
                CapabilityValue::GracefulRestart(g) => peer_restart_time = Some(g.restart_time),
                _ => {}
            }
        }
    }
    let two_octet = u32::from(u16::from(open.asn));
    let peer_asn = four_octet.unwrap_or(two_octet);
    let trans_without_cap =
        four_octet.is_none() && two_octet == AS_TRANS && expected_asn != AS_TRANS;
    if peer_asn != expected_asn || trans_without_cap {
        return Err(Notify::new(
            code::OPEN,
            2,
            Vec::new(),
            format!("peer AS {peer_asn}, expected {expected_asn}"),
        ));
    }
    let id = open.bgp_identifier;
    if id.is_unspecified() || id.is_broadcast() || id.is_multicast() || id == our_id {
        return Err(Notify::new(
            code::OPEN,
            3,
            Vec::new(),
            format!("bad BGP identifier {id}"),
        ));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(Notify::new(
            code::OPEN,
            6,
            Vec::new(),
            format!("unacceptable hold time {}", open.hold_time),
        ));
    }
    Ok(Negotiated {
        hold_time: our_hold.min(open.hold_time),
        asn_len: if four_octet.is_some() {
            AsnLength::Bits32
        } else {
            AsnLength::Bits16
        },
        // RFC 4760: a speaker that lists no families speaks IPv4 unicast only.
        ipv4: mp.0 || !any_mp,
        ipv6: mp.1,
        route_refresh,
        peer_id: id,
        peer_restart_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::wire;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn roundtrip(msg: &BgpMessage) -> Result<BgpMessage, Notify> {
        let bytes = wire::encode(msg, AsnLength::Bits32)?;
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let frame =
            wire::frame(&mut buf)?.ok_or_else(|| Notify::new(0, 0, Vec::new(), "partial"))?;
        wire::decode(&frame, AsnLength::Bits32)
    }

    /// The NOTIFICATION `accept` gives, or a clearly wrong one when it accepts.
    fn refused(o: &BgpOpenMessage, asn: u32, id: Ipv4Addr) -> Notify {
        accept(o, asn, 90, id)
            .err()
            .unwrap_or_else(|| Notify::new(0, 0, Vec::new(), "accepted"))
    }

    fn open_of(msg: BgpMessage) -> BgpOpenMessage {
        match msg {
            BgpMessage::Open(o) => o,
            other => panic!("not an OPEN: {other:?}"),
        }
    }

    #[test]
    fn our_open_is_accepted_by_our_own_rules() -> TestResult {
        let id = Ipv4Addr::new(10, 0, 0, 1);
        let open = open_of(roundtrip(&ours(4_200_000_001, 90, id))?);
        assert_eq!(u16::from(open.asn), AS_TRANS as u16);
        let n = accept(&open, 4_200_000_001, 30, Ipv4Addr::new(10, 0, 0, 2))?;
        assert_eq!(n.hold_time, 30);
        assert_eq!(n.keepalive_secs(), 10);
        assert_eq!(n.asn_len, AsnLength::Bits32);
        assert!(n.ipv4 && n.ipv6 && n.route_refresh);
        Ok(())
    }

    #[test]
    fn each_bad_open_gets_its_subcode() -> TestResult {
        let id = Ipv4Addr::new(10, 0, 0, 1);
        let good = open_of(ours(65001, 90, id));
        let other = Ipv4Addr::new(10, 0, 0, 9);
        let sub = |o: &BgpOpenMessage| refused(o, 65001, other).subcode;
        let mut o = good.clone();
        o.version = 3;
        assert_eq!(sub(&o), 1);
        assert_eq!(refused(&o, 65001, other).data, vec![0, 4]);
        assert_eq!(refused(&good, 65002, other).subcode, 2);
        let mut o = good.clone();
        o.bgp_identifier = Ipv4Addr::UNSPECIFIED;
        assert_eq!(sub(&o), 3);
        assert_eq!(refused(&good, 65001, id).subcode, 3);
        let mut o = good.clone();
        o.opt_params.push(OptParam {
            param_type: 7,
            param_value: ParamValue::Raw(vec![1]),
        });
        assert_eq!(sub(&o), 4);
        let mut o = good.clone();
        o.hold_time = 2;
        assert_eq!(sub(&o), 6);
        let mut o = good;
        o.hold_time = 0;
        assert_eq!(accept(&o, 65001, 90, other)?.hold_time, 0);
        Ok(())
    }

    #[test]
    fn the_graceful_restart_capability_says_time_restart_and_forwarding() -> TestResult {
        let id = Ipv4Addr::new(10, 0, 0, 1);
        let gr = GracefulRestart {
            restart_time: 5000,
            restarted: true,
            forwarding: true,
        };
        let open = open_of(roundtrip(&ours_with(65001, 90, id, Some(gr)))?);
        let cap = open
            .opt_params
            .iter()
            .filter_map(|p| match &p.param_value {
                ParamValue::Capacities(c) => Some(c),
                _ => None,
            })
            .flatten()
            .find_map(|c| match &c.value {
                CapabilityValue::GracefulRestart(g) => Some(g.clone()),
                _ => None,
            })
            .ok_or("no graceful-restart capability in the OPEN")?;
        assert_eq!(cap.restart_time, 4095, "12 bits: expected the time capped");
        assert!(cap.restart_state, "expected the Restart State bit");
        let families: Vec<(Afi, bool)> = cap
            .address_families
            .iter()
            .map(|f| (f.afi, f.forwarding_state))
            .collect();
        assert_eq!(families, vec![(Afi::Ipv4, true), (Afi::Ipv6, true)]);
        // Accepted by our own rules, and seen as the peer's restart time.
        let n = accept(&open, 65001, 90, Ipv4Addr::new(10, 0, 0, 2))?;
        assert_eq!(n.peer_restart_time, Some(4095));
        // Fresh data plane: no forwarding state; no capability at all when off.
        let fresh = GracefulRestart {
            forwarding: false,
            ..gr
        };
        let open = open_of(roundtrip(&ours_with(65001, 90, id, Some(fresh)))?);
        let n = accept(&open, 65001, 90, Ipv4Addr::new(10, 0, 0, 2))?;
        assert_eq!(n.peer_restart_time, Some(4095));
        let open = open_of(roundtrip(&ours(65001, 90, id))?);
        let n = accept(&open, 65001, 90, Ipv4Addr::new(10, 0, 0, 2))?;
        assert_eq!(n.peer_restart_time, None, "no capability unless configured");
        Ok(())
    }

    #[test]
    fn a_peer_without_families_speaks_ipv4_only() -> TestResult {
        let mut o = open_of(ours(65001, 90, Ipv4Addr::new(10, 0, 0, 1)));
        o.opt_params.clear();
        let n = accept(&o, 65001, 90, Ipv4Addr::new(10, 0, 0, 2))?;
        assert!(n.ipv4 && !n.ipv6 && !n.route_refresh);
        assert_eq!(n.asn_len, AsnLength::Bits16);
        Ok(())
    }
}
