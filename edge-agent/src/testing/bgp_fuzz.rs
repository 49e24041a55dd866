//! Mutation fuzzing of the BGP message decoder, shared by its test (a bounded run) and
//! `cargo xtask bench` (a million messages): valid messages of every type, mutated, must
//! decode or give the NOTIFICATION the RFC names, never panic.
//!
//! The expected answer for a header is worked out here from RFC 4271 §6.1 on its own, not by
//! calling the framing code it checks.

use bgpkit_parser::models::AsnLength;
use bytes::BytesMut;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::bgp::{
    open,
    wire::{self, RouteAttrs, Speaking},
};

/// Valid messages of every type, as this speaker and a router send them.
pub fn corpus() -> Vec<Vec<u8>> {
    let speaking = Speaking {
        local_asn: 65001,
        asn_len: AsnLength::Bits32,
        next_hop_v4: Some([192, 0, 2, 1].into()),
        next_hop_v6: Some([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1].into()),
        ibgp: false,
        local_pref: 100,
    };
    let internal = Speaking {
        ibgp: true,
        local_pref: 200,
        ..speaking
    };
    let attrs = RouteAttrs {
        communities: vec![(65001, 7), (65535, 0)],
        med: Some(10),
        prepend: 2,
    };
    let p4 = IpNet::V4(Ipv4Net::new_assert([203, 0, 113, 0].into(), 24));
    let p6 = IpNet::V6(Ipv6Net::new_assert(
        [0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0].into(),
        48,
    ));
    let mut msgs = vec![
        open::ours(65001, 90, [10, 0, 0, 1].into()),
        open::ours(4_200_000_000, 0, [10, 0, 0, 2].into()),
        open::ours_with(
            65001,
            90,
            [10, 0, 0, 3].into(),
            Some(open::GracefulRestart {
                restart_time: 120,
                restarted: true,
                forwarding: true,
            }),
        ),
        bgpkit_parser::models::BgpMessage::KeepAlive,
        wire::withdraw(false, &[p4]),
        wire::withdraw(true, &[p6]),
        wire::withdraw(false, &[]),
        wire::withdraw(true, &[]),
        wire::Notify::new(wire::code::CEASE, 2, vec![1, 2, 3], "").message(),
        bgpkit_parser::models::BgpMessage::RouteRefresh(
            bgpkit_parser::models::BgpRouteRefreshMessage {
                afi: 1,
                subtype: 0,
                safi: 1,
                data: Vec::new(),
            },
        ),
    ];
    msgs.extend(wire::announce(p4, &attrs, &speaking));
    msgs.extend(wire::announce(p6, &attrs, &speaking));
    msgs.extend(wire::announce(p4, &attrs, &internal));
    msgs.extend(wire::announce(p6, &attrs, &internal));
    msgs.iter()
        .filter_map(|m| wire::encode(m, AsnLength::Bits32).ok())
        .map(|b| b.to_vec())
        .collect()
}

/// One mutation of `msg`: bit flips, byte overwrites, truncation, extension, or a header field
/// set to an edge value.
pub fn mutate(rng: &mut fastrand::Rng, msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    for _ in 0..rng.usize(1..=4) {
        match rng.u8(0..8) {
            0 if !m.is_empty() => {
                let i = rng.usize(0..m.len());
                m[i] ^= 1 << rng.u8(0..8);
            }
            1 if !m.is_empty() => {
                let i = rng.usize(0..m.len());
                m[i] = rng.u8(..);
            }
            2 => m.truncate(rng.usize(0..=m.len())),
            3 => m.extend((0..rng.usize(1..64)).map(|_| rng.u8(..))),
            4 if m.len() >= 18 => {
                let len = [0u16, 18, 19, 20, 4096, 4097, 65535, m.len() as u16][rng.usize(0..8)];
                m[16..18].copy_from_slice(&len.to_be_bytes());
            }
            5 if m.len() >= 19 => m[18] = [0, 1, 2, 3, 4, 5, 6, 255][rng.usize(0..8)],
            // Inside the body, where the decoder of each type works.
            _ if m.len() > 19 => {
                let i = rng.usize(19..m.len());
                m[i] = rng.u8(..);
            }
            _ => {}
        }
    }
    m
}

/// What the header alone says the answer must be (RFC 4271 §6.1).
#[derive(Debug, PartialEq, Eq)]
pub enum Expect {
    /// Not all of the message is there yet.
    Incomplete,
    /// This header error.
    Header(u8),
    /// A well-framed message of this type: decoded, or an error of its body's code.
    Body(u8),
}

pub fn expect(m: &[u8]) -> Expect {
    if m.len() < wire::HEADER_LEN {
        return Expect::Incomplete;
    }
    if m[..16].iter().any(|&b| b != 0xff) {
        return Expect::Header(1);
    }
    let len = usize::from(u16::from_be_bytes([m[16], m[17]]));
    if !(19..=4096).contains(&len) {
        return Expect::Header(2);
    }
    let ok_len = match m[18] {
        1 => len >= 29,
        2 => len >= 23,
        3 => len >= 21,
        4 => len == 19,
        5 => len == 23,
        _ => return Expect::Header(3),
    };
    if !ok_len {
        Expect::Header(2)
    } else if m.len() < len {
        Expect::Incomplete
    } else {
        Expect::Body(m[18])
    }
}

/// Runs one input through framing and decoding; `Err` says how the answer is wrong.
pub fn check(m: &[u8]) -> Result<(), String> {
    let mut buf = BytesMut::from(m);
    let got = wire::frame(&mut buf).and_then(|f| match f {
        None => Ok(None),
        Some(frame) => wire::decode(&frame, AsnLength::Bits32).map(Some),
    });
    let fine = match (expect(m), &got) {
        (Expect::Incomplete, Ok(None)) => true,
        (Expect::Header(sub), Err(n)) => n.code == wire::code::HEADER && n.subcode == sub,
        (Expect::Body(_), Ok(Some(_))) => true,
        (Expect::Body(1), Err(n)) => n.code == wire::code::OPEN,
        (Expect::Body(2), Err(n)) => n.code == wire::code::UPDATE,
        _ => false,
    };
    if fine {
        Ok(())
    } else {
        Err(format!("{:02x?}: expected {:?}, got {got:?}", m, expect(m)))
    }
}
