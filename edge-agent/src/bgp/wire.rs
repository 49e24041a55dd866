//! BGP messages on the wire. The stream framing of RFC 4271 §4.1 (marker, length, type, and each
//! type's length rules) is checked here, because it decides which NOTIFICATION a broken header
//! gets; the bodies are decoded and encoded with bgpkit-parser. Every way a received message
//! can be wrong ends as a [`Notify`]: the NOTIFICATION the RFC names for it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bgpkit_parser::error::BgpValidationWarning;
use bgpkit_parser::models::{
    Afi, AsPath, AsnLength, AttributeValue, Attributes, BgpError, BgpMessage,
    BgpNotificationMessage, BgpUpdateMessage, Community, NetworkPrefix, NextHopAddress, Nlri,
    Origin, Safi,
};
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;

/// The graceful-shutdown community of RFC 8326, added while a POP drains.
pub const GRACEFUL_SHUTDOWN: (u16, u16) = (65535, 0);

pub const HEADER_LEN: usize = 19;
/// Without the extended message capability (RFC 8654), which this speaker does not offer.
pub const MAX_LEN: usize = 4096;
/// What a 2-octet AS field carries for a 4-octet AS number (RFC 6793).
pub const AS_TRANS: u32 = 23456;

/// NOTIFICATION error codes (RFC 4271 §4.5).
pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
}

/// A NOTIFICATION to send, with why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (NOTIFICATION {code}/{subcode})")]
pub struct Notify {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
    pub reason: String,
}

impl Notify {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>, reason: impl Into<String>) -> Self {
        Notify {
            code,
            subcode,
            data,
            reason: reason.into(),
        }
    }

    /// Cease / Administrative Shutdown (RFC 4486): what a stopping speaker closes with.
    pub fn administrative_shutdown() -> Self {
        Notify::new(code::CEASE, 2, Vec::new(), "administrative shutdown")
    }

    pub fn message(&self) -> BgpMessage {
        BgpMessage::Notification(BgpNotificationMessage {
            error: BgpError::new(self.code, self.subcode),
            data: self.data.clone(),
        })
    }
}

/// One whole message split off the stream, header checked.
#[derive(Clone, Debug)]
pub struct Frame {
    pub msg_type: u8,
    /// The whole message, header included.
    pub bytes: Bytes,
}

/// Splits the first message off `buf` once all of it has arrived; `Ok(None)` until then.
pub fn frame(buf: &mut BytesMut) -> Result<Option<Frame>, Notify> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16] != [0xff; 16] {
        return Err(Notify::new(
            code::HEADER,
            1,
            Vec::new(),
            "connection not synchronized: the marker is not all ones",
        ));
    }
    let length = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
    let msg_type = buf[18];
    let bad_length = |why: &str| {
        Notify::new(
            code::HEADER,
            2,
            buf[16..18].to_vec(),
            format!("bad message length {length}: {why}"),
        )
    };
    if !(HEADER_LEN..=MAX_LEN).contains(&length) {
        return Err(bad_length("outside 19..=4096"));
    }
    let fits = match msg_type {
        1 => length >= 29,
        2 => length >= 23,
        3 => length >= 21,
        4 => length == 19,
        // No ORF or enhanced route refresh is offered: exactly AFI, reserved, SAFI.
        5 => length == 23,
        _ => {
            return Err(Notify::new(
                code::HEADER,
                3,
                vec![msg_type],
                format!("bad message type {msg_type}"),
            ))
        }
    };
    if !fits {
        return Err(bad_length("too short or too long for its type"));
    }
    if buf.len() < length {
        return Ok(None);
    }
    Ok(Some(Frame {
        msg_type,
        bytes: buf.split_to(length).freeze(),
    }))
}

/// Decodes a framed message; a body that cannot be read, or an UPDATE that breaks RFC 4271
/// §6.3, gives the NOTIFICATION for it.
pub fn decode(frame: &Frame, asn_len: AsnLength) -> Result<BgpMessage, Notify> {
    let mut bytes = frame.bytes.clone();
    let msg = bgpkit_parser::parser::bgp::parse_bgp_message(&mut bytes, false, &asn_len);
    match (frame.msg_type, msg) {
        (1, Err(e)) => Err(Notify::new(
            code::OPEN,
            0,
            Vec::new(),
            format!("malformed OPEN: {e}"),
        )),
        (1, Ok(BgpMessage::Open(open))) => {
            // bgpkit reads as many parameters as there are bytes; the length byte must agree.
            let declared = usize::from(frame.bytes[HEADER_LEN + 9]);
            if !open.extended_length && declared != frame.bytes.len() - HEADER_LEN - 10 {
                return Err(Notify::new(
                    code::OPEN,
                    0,
                    Vec::new(),
                    "malformed OPEN: optional parameters length disagrees with the message",
                ));
            }
            Ok(BgpMessage::Open(open))
        }
        (2, Err(e)) => Err(Notify::new(
            code::UPDATE,
            1,
            Vec::new(),
            format!("malformed attribute list: {e}"),
        )),
        (2, Ok(BgpMessage::Update(update))) => {
            match update
                .attributes
                .validation_warnings()
                .iter()
                .find_map(update_error)
            {
                Some((subcode, reason)) => {
                    Err(Notify::new(code::UPDATE, subcode, Vec::new(), reason))
                }
                None => Ok(BgpMessage::Update(update)),
            }
        }
        (_, Ok(msg)) if msg.msg_type() as u8 == frame.msg_type => Ok(msg),
        (t, Err(e)) => Err(Notify::new(
            code::HEADER,
            2,
            Vec::new(),
            format!("message of type {t} cannot be read: {e}"),
        )),
        (t, Ok(_)) => Err(Notify::new(
            code::HEADER,
            3,
            vec![t],
            "message type mismatch",
        )),
    }
}

/// The UPDATE Message Error subcode (RFC 4271 §6.3) for what bgpkit found, if it is an error.
fn update_error(w: &BgpValidationWarning) -> Option<(u8, String)> {
    use BgpValidationWarning as W;
    let subcode = match w {
        W::MalformedAttributeList { .. } | W::DuplicateAttribute { .. } => 1,
        W::UnrecognizedWellKnownAttribute { .. } => 2,
        W::MissingWellKnownAttribute { .. } => 3,
        W::AttributeFlagsError { .. } => 4,
        W::AttributeLengthError { .. } => 5,
        W::InvalidOriginAttribute { .. } => 6,
        W::InvalidNextHopAttribute { .. } => 8,
        W::OptionalAttributeError { .. } | W::PartialAttributeError { .. } => 9,
        W::InvalidNetworkField { .. } | W::MalformedNlri { .. } => 10,
        W::MalformedAsPath { .. } => 11,
        _ => return None,
    };
    Some((subcode, format!("UPDATE error: {w:?}")))
}

/// Encodes a message; what this speaker builds always fits.
pub fn encode(msg: &BgpMessage, asn_len: AsnLength) -> Result<Bytes, Notify> {
    msg.encode(asn_len).map_err(|e| {
        Notify::new(
            code::CEASE,
            0,
            Vec::new(),
            format!("cannot encode a message: {e}"),
        )
    })
}

/// What one route carries besides its prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RouteAttrs {
    pub communities: Vec<(u16, u16)>,
    pub med: Option<u32>,
    /// Extra copies of the local AS.
    pub prepend: u8,
}

/// How this session speaks: what the two OPENs agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Speaking {
    pub local_asn: u32,
    pub asn_len: AsnLength,
    pub next_hop_v4: Option<Ipv4Addr>,
    pub next_hop_v6: Option<Ipv6Addr>,
    /// The peer is in this AS (iBGP): an empty AS_PATH and a LOCAL_PREF.
    pub ibgp: bool,
    /// What internal sessions carry as LOCAL_PREF (not sent on external ones).
    pub local_pref: u32,
}

fn prefix(p: IpNet) -> NetworkPrefix {
    NetworkPrefix {
        prefix: p,
        path_id: None,
    }
}

fn unicast(afi: Afi, next_hop: Option<NextHopAddress>, prefixes: Vec<NetworkPrefix>) -> Nlri {
    Nlri {
        afi,
        safi: Safi::Unicast,
        next_hop,
        prefixes,
        labeled_prefixes: None,
        link_state_nlris: None,
        flowspec_nlris: None,
    }
}

/// The UPDATE announcing `p` with `attrs`, or `None` when this session has no next hop for its
/// family.
pub fn announce(p: IpNet, attrs: &RouteAttrs, s: &Speaking) -> Option<BgpMessage> {
    let copies = 1 + usize::from(attrs.prepend);
    let mut values = vec![AttributeValue::Origin(Origin::IGP)];
    if s.ibgp {
        // A route this AS originates goes to an internal peer with an empty AS_PATH (RFC 4271
        // §5.1.2: the AS is added by whoever sends it out of the AS). No prepend either: any
        // copy of its own AS is a loop to every router of the AS, which then drops the route
        // (§9.1.2; GoBGP counted "Received 2 Accepted 0").
        values.push(AttributeValue::AsPath(AsPath::new()));
    } else if s.asn_len == AsnLength::Bits16 && s.local_asn > u32::from(u16::MAX) {
        // A 2-octet peer sees AS_TRANS, and the real path rides in AS4_PATH (RFC 6793 §4.2.2).
        values.push(AttributeValue::AsPath(AsPath::from_sequence(vec![
            AS_TRANS;
            copies
        ])));
        values.push(AttributeValue::As4Path(AsPath::from_sequence(
            vec![s.local_asn; copies],
        )));
    } else {
        values.push(AttributeValue::AsPath(AsPath::from_sequence(
            vec![s.local_asn; copies],
        )));
    }
    if let Some(med) = attrs.med {
        values.push(AttributeValue::MultiExitDiscriminator(med));
    }
    if s.ibgp {
        // Every UPDATE to an internal peer carries LOCAL_PREF (RFC 4271 §5.1.5), and none to an
        // external one. A draining POP cannot lengthen an internal path, so it sets LOCAL_PREF
        // 0 itself: what RFC 8326 asks receivers of the graceful-shutdown community to do.
        let draining = attrs.communities.contains(&GRACEFUL_SHUTDOWN);
        values.push(AttributeValue::LocalPreference(if draining {
            0
        } else {
            s.local_pref
        }));
    }
    if !attrs.communities.is_empty() {
        values.push(AttributeValue::Communities(
            attrs
                .communities
                .iter()
                .map(|&(a, v)| Community::Custom(u32::from(a).into(), v))
                .collect(),
        ));
    }
    let announced = match p {
        IpNet::V4(_) => {
            values.push(AttributeValue::NextHop(IpAddr::V4(s.next_hop_v4?)));
            vec![prefix(p)]
        }
        IpNet::V6(_) => {
            let nh = NextHopAddress::Ipv6(s.next_hop_v6?);
            values.push(AttributeValue::MpReachNlri(unicast(
                Afi::Ipv6,
                Some(nh),
                vec![prefix(p)],
            )));
            Vec::new()
        }
    };
    Some(BgpMessage::Update(BgpUpdateMessage {
        withdrawn_prefixes: Vec::new(),
        attributes: Attributes::from_iter(values),
        announced_prefixes: announced,
    }))
}

/// The UPDATE withdrawing `prefixes` of one family (an empty list is that family's End-of-RIB
/// marker, RFC 4724).
pub fn withdraw(v6: bool, prefixes: &[IpNet]) -> BgpMessage {
    let prefixes: Vec<NetworkPrefix> = prefixes.iter().copied().map(prefix).collect();
    BgpMessage::Update(if v6 {
        BgpUpdateMessage {
            withdrawn_prefixes: Vec::new(),
            attributes: Attributes::from_iter(vec![AttributeValue::MpUnreachNlri(unicast(
                Afi::Ipv6,
                None,
                prefixes,
            ))]),
            announced_prefixes: Vec::new(),
        }
    } else {
        BgpUpdateMessage {
            withdrawn_prefixes: prefixes,
            attributes: Attributes::default(),
            announced_prefixes: Vec::new(),
        }
    })
}

/// The family an UPDATE is the End-of-RIB marker of (RFC 4724 §2): an IPv4 UPDATE with
/// nothing in it, or one holding only an empty MP_UNREACH_NLRI.
pub fn end_of_rib(u: &BgpUpdateMessage) -> Option<&'static str> {
    if !u.announced_prefixes.is_empty() || !u.withdrawn_prefixes.is_empty() {
        return None;
    }
    let attrs: Vec<&AttributeValue> = u.attributes.iter().collect();
    match attrs.as_slice() {
        [] => Some("ipv4"),
        [AttributeValue::MpUnreachNlri(n)] if n.prefixes.is_empty() => match n.afi {
            Afi::Ipv4 => Some("ipv4"),
            Afi::Ipv6 => Some("ipv6"),
            _ => None,
        },
        _ => None,
    }
}

/// The prefixes an UPDATE announces and withdraws, both families (for counting what a peer
/// sends).
pub fn update_counts(u: &BgpUpdateMessage) -> (usize, usize) {
    let reach = u
        .attributes
        .get_reachable_nlri()
        .map_or(0, |n| n.prefixes.len());
    let unreach = u
        .attributes
        .get_unreachable_nlri()
        .map_or(0, |n| n.prefixes.len());
    (
        u.announced_prefixes.len() + reach,
        u.withdrawn_prefixes.len() + unreach,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn speaking(ibgp: bool, asn_len: AsnLength, local_asn: u32) -> Speaking {
        Speaking {
            local_asn,
            asn_len,
            next_hop_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
            next_hop_v6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            ibgp,
            local_pref: 200,
        }
    }

    /// The encoded UPDATE for `p`, decoded again as a peer reads it.
    fn on_the_wire(p: &str, attrs: &RouteAttrs, s: &Speaking) -> Result<Attributes, String> {
        let p: IpNet = p.parse().map_err(|e| format!("{e}"))?;
        let msg = announce(p, attrs, s).ok_or("no next hop")?;
        let bytes = encode(&msg, s.asn_len).map_err(|e| e.to_string())?;
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = frame(&mut buf)
            .map_err(|e| e.to_string())?
            .ok_or("partial")?;
        match decode(&frame, s.asn_len).map_err(|e| e.to_string())? {
            BgpMessage::Update(u) => Ok(u.attributes),
            other => Err(format!("expected an UPDATE, decoded {other:?}")),
        }
    }

    fn path(a: &Attributes) -> Option<Vec<u32>> {
        a.as_path().and_then(|p| p.to_u32_vec_opt(false))
    }

    #[test]
    fn internal_routes_have_an_empty_path_and_a_local_pref() -> TestResult {
        let attrs = RouteAttrs {
            communities: vec![(65001, 7)],
            med: Some(5),
            prepend: 2,
        };
        for (p, asn_len, asn) in [
            ("198.18.0.10/32", AsnLength::Bits32, 65001),
            ("2001:db8:ff::10/128", AsnLength::Bits32, 65001),
            // A 4-octet AS towards a 2-octet peer: still nothing in AS_PATH, and no AS4_PATH.
            ("198.18.0.10/32", AsnLength::Bits16, 4_200_000_001),
        ] {
            let a = on_the_wire(p, &attrs, &speaking(true, asn_len, asn))?;
            let seen = a.as_path().map(|p| p.route_len());
            assert_eq!(
                seen,
                Some(0),
                "iBGP {p}: expected an empty AS_PATH, saw {seen:?}"
            );
            assert!(a.as4_path().is_none(), "iBGP {p}: AS4_PATH sent");
            assert_eq!(
                a.local_preference(),
                Some(200),
                "iBGP {p}: expected LOCAL_PREF 200"
            );
            assert_eq!(a.multi_exit_discriminator(), Some(5), "iBGP {p}: MED");
        }
        // The next hop is this POP's own address, as on eBGP.
        let a = on_the_wire(
            "198.18.0.10/32",
            &attrs,
            &speaking(true, AsnLength::Bits32, 65001),
        )?;
        assert_eq!(a.next_hop(), Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        Ok(())
    }

    #[test]
    fn external_routes_carry_the_as_and_no_local_pref() -> TestResult {
        let attrs = RouteAttrs {
            prepend: 2,
            ..RouteAttrs::default()
        };
        let a = on_the_wire(
            "198.18.0.10/32",
            &attrs,
            &speaking(false, AsnLength::Bits32, 65001),
        )?;
        assert_eq!(path(&a), Some(vec![65001; 3]), "eBGP: AS and two prepends");
        assert_eq!(a.local_preference(), None, "eBGP: LOCAL_PREF sent");
        Ok(())
    }

    #[test]
    fn a_draining_pop_sends_local_pref_zero_internally() -> TestResult {
        let attrs = RouteAttrs {
            communities: vec![GRACEFUL_SHUTDOWN],
            prepend: 3,
            ..RouteAttrs::default()
        };
        let a = on_the_wire(
            "198.18.0.10/32",
            &attrs,
            &speaking(true, AsnLength::Bits32, 65001),
        )?;
        assert_eq!(
            a.local_preference(),
            Some(0),
            "draining: expected LOCAL_PREF 0"
        );
        let seen = a.as_path().map(|p| p.route_len());
        assert_eq!(
            seen,
            Some(0),
            "draining: expected no AS inside the AS, saw {seen:?}"
        );
        Ok(())
    }
}
