//! Header parsing: Ethernet, up to two VLAN tags, IPv4 or IPv6 (with extension headers), then the
//! transport header. Every read goes through [`ptr_at`], which bounds-checks a whole header.

use crate::ctx::{ptr_at, Packet as Context};
use edge_common::stats::{L3Class, L4Class};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, vlan::VlanHdr};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;

/// VLAN tags walked before giving up (802.1ad outer + 802.1Q inner).
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up; a legitimate packet rarely carries more than
/// two (RFC 8200 section 4.1 recommends an order with each at most once, destination options twice).
const MAX_IPV6_EXT_HEADERS: usize = 6;

const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const ICMP_HDR_LEN: usize = 8;

/// What the parser learned about a frame.
pub struct Packet {
    pub l3: L3Class,
    pub l4: L4Class,
    /// Offset of the IP header (after Ethernet and VLAN tags).
    pub l3_off: usize,
    /// Offset of the transport header, when `l4` is a parsed protocol.
    pub l4_off: usize,
    /// An IPv4 fragment, or an IPv6 packet with a fragment header.
    pub fragment: bool,
}

impl Packet {
    const fn new(l3: L3Class, l4: L4Class) -> Self {
        Packet {
            l3,
            l4,
            l3_off: 0,
            l4_off: 0,
            fragment: false,
        }
    }

    const fn at(mut self, l3_off: usize, l4_off: usize) -> Self {
        self.l3_off = l3_off;
        self.l4_off = l4_off;
        self
    }
}

/// An IPv6 extension header's first two bytes, common to all of them.
#[repr(C)]
struct Ipv6ExtHdr {
    next_hdr: u8,
    hdr_ext_len: u8,
    _rest: [u8; 6],
}

#[inline(always)]
pub fn classify<C: Context>(ctx: &C) -> Packet {
    let Some(eth) = ptr_at::<_, EthHdr>(ctx, 0) else {
        return Packet::new(L3Class::Malformed, L4Class::None);
    };
    // SAFETY: ptr_at checked the whole header is inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        let Some(vlan) = ptr_at::<_, VlanHdr>(ctx, offset) else {
            return Packet::new(L3Class::Malformed, L4Class::None);
        };
        // SAFETY: bounds-checked above.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        offset += VlanHdr::LEN;
    }
    match ether_type {
        ETH_P_IP => classify_ipv4(ctx, offset),
        ETH_P_IPV6 => classify_ipv6(ctx, offset),
        _ => Packet::new(L3Class::Other, L4Class::None),
    }
}

#[inline(always)]
fn classify_ipv4<C: Context>(ctx: &C, offset: usize) -> Packet {
    let Some(ip) = ptr_at::<_, Ipv4Hdr>(ctx, offset) else {
        return Packet::new(L3Class::Malformed, L4Class::None);
    };
    // SAFETY: bounds-checked above.
    let (vihl, frags, proto) = unsafe { ((*ip).vihl, (*ip).frags, (*ip).proto) };
    let header_len = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Packet::new(L3Class::Malformed, L4Class::None);
    }
    // A non-first fragment carries no transport header.
    let frags = u16::from_be_bytes(frags);
    if frags & 0x1fff != 0 {
        let mut packet = Packet::new(L3Class::Ipv4, L4Class::Other).at(offset, 0);
        packet.fragment = true;
        return packet;
    }
    let l4_off = offset + header_len;
    let l4 = classify_l4(ctx, l4_off, proto, IPPROTO_ICMP);
    let mut packet = Packet::new(L3Class::Ipv4, l4).at(offset, l4_off);
    // More fragments follow this first one.
    packet.fragment = frags & 0x2000 != 0;
    packet
}

#[inline(always)]
fn classify_ipv6<C: Context>(ctx: &C, offset: usize) -> Packet {
    let Some(ip) = ptr_at::<_, Ipv6Hdr>(ctx, offset) else {
        return Packet::new(L3Class::Malformed, L4Class::None);
    };
    // SAFETY: bounds-checked above.
    let (version, mut next_hdr) = unsafe { ((*ip).vcf[0] >> 4, (*ip).next_hdr) };
    if version != 6 {
        return Packet::new(L3Class::Malformed, L4Class::None);
    }
    let l3_off = offset;
    let mut offset = offset + Ipv6Hdr::LEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let ext_len = match next_hdr {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT | IPPROTO_AH => {
                let Some(ext) = ptr_at::<_, Ipv6ExtHdr>(ctx, offset) else {
                    return Packet::new(L3Class::Ipv6, L4Class::Malformed);
                };
                // SAFETY: bounds-checked above.
                let (next, len, frag_off) = unsafe {
                    (
                        (*ext).next_hdr,
                        usize::from((*ext).hdr_ext_len),
                        u16::from_be_bytes([(*ext)._rest[0], (*ext)._rest[1]]),
                    )
                };
                if next_hdr == IPPROTO_FRAGMENT {
                    if frag_off >> 3 != 0 {
                        let mut packet = Packet::new(L3Class::Ipv6, L4Class::Other).at(l3_off, 0);
                        packet.fragment = true;
                        return packet;
                    }
                    fragment = true;
                }
                let ext_len = match next_hdr {
                    IPPROTO_FRAGMENT => 8,
                    // RFC 4302 section 2.2: AH's length is in 4-octet units, minus 2.
                    IPPROTO_AH => (len + 2) * 4,
                    // RFC 8200 section 4.3: 8-octet units, not counting the first 8.
                    _ => (len + 1) * 8,
                };
                next_hdr = next;
                ext_len
            }
            _ => {
                let l4 = classify_l4(ctx, offset, next_hdr, IPPROTO_ICMPV6);
                let mut packet = Packet::new(L3Class::Ipv6, l4).at(l3_off, offset);
                packet.fragment = fragment;
                return packet;
            }
        };
        offset += ext_len;
    }
    // More extension headers than we walk: we cannot find the transport header.
    Packet::new(L3Class::Ipv6, L4Class::Malformed)
}

#[inline(always)]
fn classify_l4<C: Context>(ctx: &C, offset: usize, proto: u8, icmp_proto: u8) -> L4Class {
    let (class, header_len) = match proto {
        IPPROTO_TCP => (L4Class::Tcp, TCP_HDR_LEN),
        IPPROTO_UDP => (L4Class::Udp, UDP_HDR_LEN),
        p if p == icmp_proto => (L4Class::Icmp, ICMP_HDR_LEN),
        _ => return L4Class::Other,
    };
    if ctx.data() + offset + header_len > ctx.data_end() {
        return L4Class::Malformed;
    }
    class
}
