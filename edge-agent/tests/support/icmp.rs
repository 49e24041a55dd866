//! The ICMP tests' part of the harness (`icmp.rs`): the routers that report errors, an IPv6
//! client's whole handshake, the segments a router quotes, the ICMP and ICMPv6 errors quoting
//! them, and a parser of the translated errors the programs send on.

use std::net::IpAddr;

use edge_common::DropStats;
use etherparse::{
    Ipv4HeaderSlice, Ipv6HeaderSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};

use super::nat::*;

/// A router on the client's IPv4 path, and on its IPv6 one.
pub const ROUTER4: [u8; 4] = [203, 0, 113, 1];
pub const ROUTER6: &str = "2001:db8:2::1";
/// A router in the overlay.
pub const HUB: &str = "fd00:ee::fe";
/// The backend's ISN + 1 and the client's, as the harness's handshakes leave them.
pub const BACKEND_SEQ: u32 = 9001;
pub const CLIENT_SEQ: u32 = 1001;
/// How much a router quotes after the headers (a Linux router quotes up to 576 bytes in all).
pub const QUOTED_DATA: usize = 500;

/// A whole handshake of the IPv6 client from `sport`: the translated SYN.
pub fn handshake6(nat: &mut Nat, sport: u16) -> Result<Seen, Error> {
    let (_, out) = nat.forward(&syn6(sport)?)?;
    let syn = check(&out)?;
    let (verdict, _) = nat.tc(&syn_ack_to(&syn, 64, None)?)?;
    assert_eq!(verdict, TC_ACT_REDIRECT, "the SYN-ACK of port {sport}");
    let mut ack = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv6(v6(CLIENT6)?, v6(VIP6)?, 64)
        .tcp(sport, 80, CLIENT_SEQ, 64240)
        .ack(BACKEND_SEQ)
        .write(&mut ack, &[])?;
    nat.forward(&ack)?;
    Ok(syn)
}

/// The first `len` bytes of a TCP segment `src:sport -> dst:dport` (IPv4 or IPv6 alike) with
/// sequence number `seq`, 1400 bytes of data: what a router quotes.
pub fn quote(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    seq: u32,
    len: usize,
) -> Result<Vec<u8>, Error> {
    let data: Vec<u8> = (0..1400u32).map(|i| (i * 13) as u8).collect();
    let mut v = Vec::new();
    let builder = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 57),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 57),
        _ => return Err("mixed families".into()),
    };
    builder
        .tcp(ports.0, ports.1, seq, 64000)
        .ack(77)
        .write(&mut v, &data)?;
    v.truncate(len);
    Ok(v)
}

/// An ICMPv4 error (`kind`, `code`, bytes 5-8 `rest`) from `from` to `to` with `quoted`.
pub fn icmp4(
    from: [u8; 4],
    to: [u8; 4],
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(from, to, 250)
        .icmpv4_raw(kind, code, rest)
        .write(&mut v, quoted)?;
    Ok(v)
}

/// An ICMPv6 error likewise, with Ethernet addresses `macs`.
pub fn icmp6(
    macs: ([u8; 6], [u8; 6]),
    from: &str,
    to: &str,
    kind: u8,
    code: u8,
    rest: [u8; 4],
    quoted: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(v6(from)?, v6(to)?, 250)
        .icmpv6_raw(kind, code, rest)
        .write(&mut v, quoted)?;
    Ok(v)
}

/// An ICMP message's type, code and bytes 5-8 (an MTU, or unused).
pub type Kind = (u8, u8, [u8; 4]);

/// What a translated error carried, every checksum checked.
#[derive(Debug)]
pub struct Error6or4 {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub kind: u8,
    pub code: u8,
    pub rest: [u8; 4],
    /// The quoted packet's addresses, ports, sequence number, IP length field.
    pub inner: (IpAddr, IpAddr, u16, u16, u32, u16),
    /// What follows the quoted IP header and the first 8 bytes of TCP.
    pub tail: Vec<u8>,
}

pub fn parse_error(frame: &[u8]) -> Result<Error6or4, Error> {
    let p = SlicedPacket::from_ethernet(frame)?;
    let (src, dst, kind, code, rest, payload) = match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
            let h = ip.header();
            assert!(
                icmp.is_checksum_valid(h.source(), h.destination()),
                "ICMPv6 checksum of {frame:02x?}"
            );
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                icmp.type_u8(),
                icmp.code_u8(),
                icmp.bytes5to8(),
                icmp.payload(),
            )
        }
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
            let h = ip.header();
            assert_eq!(
                h.header_checksum(),
                h.to_header().calc_header_checksum(),
                "outer IPv4 header checksum"
            );
            assert_eq!(
                icmp.checksum(),
                icmp.icmp_type().calc_checksum(icmp.payload()),
                "ICMPv4 checksum"
            );
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                icmp.type_u8(),
                icmp.code_u8(),
                icmp.bytes5to8(),
                icmp.payload(),
            )
        }
        other => return Err(format!("not an ICMP error: {other:?}").into()),
    };
    let (isrc, idst, len, tcp) = if payload.first().map(|b| b >> 4) == Some(6) {
        let h = Ipv6HeaderSlice::from_slice(payload)?;
        assert_eq!(h.next_header().0, 6, "the quote is TCP");
        (
            IpAddr::from(h.source_addr()),
            IpAddr::from(h.destination_addr()),
            h.payload_length(),
            40,
        )
    } else {
        let h = Ipv4HeaderSlice::from_slice(payload)?;
        assert_eq!(
            h.header_checksum(),
            h.to_header().calc_header_checksum(),
            "quoted IPv4 header checksum"
        );
        (
            IpAddr::from(h.source_addr()),
            IpAddr::from(h.destination_addr()),
            h.total_len(),
            20,
        )
    };
    let t = payload
        .get(tcp..tcp + 8)
        .ok_or("quote without 8 bytes of TCP")?;
    Ok(Error6or4 {
        src,
        dst,
        kind,
        code,
        rest,
        inner: (
            isrc,
            idst,
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
            u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            len,
        ),
        tail: payload[tcp + 8..].to_vec(),
    })
}

pub fn ip(s: &str) -> Result<IpAddr, Error> {
    Ok(s.parse()?)
}

pub fn same_except(
    before: &DropStats,
    after: &DropStats,
    what: &str,
    field: fn(&DropStats) -> u64,
    by: u64,
) {
    assert_eq!(field(after), field(before) + by, "{what}: {after:?}");
    let rest = |d: &DropStats| {
        d.icmp_to_backend
            + d.icmp_to_client
            + d.icmp_no_flow
            + d.icmp_bad_quote
            + d.icmp_out_of_window
            + d.icmp_rate_limited
            + d.icmp_untranslatable
            - field(d)
    };
    assert_eq!(
        rest(after),
        rest(before),
        "{what}: no other ICMP counter moves: {after:?}"
    );
}
