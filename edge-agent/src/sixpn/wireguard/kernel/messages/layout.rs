//! The kernel's reading of a WireGuard generic netlink message, written from
//! include/uapi/linux/wireguard.h and netlink.h rather than taken from the crate that encodes
//! the messages, so that the tests of [`super`] check the bytes against the kernel's layout and
//! not against the encoder itself.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

// The layout under test, copied from include/uapi/linux/wireguard.h rather than taken from
// the crate that writes the messages.
pub(super) const WG_CMD_GET_DEVICE: u8 = 0;
pub(super) const WG_CMD_SET_DEVICE: u8 = 1;
pub(super) const WG_GENL_VERSION: u8 = 1;
pub(super) const WGDEVICE_A_IFNAME: u16 = 2;
pub(super) const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
pub(super) const WGDEVICE_A_FLAGS: u16 = 5;
pub(super) const WGDEVICE_A_LISTEN_PORT: u16 = 6;
pub(super) const WGDEVICE_A_PEERS: u16 = 8;
pub(super) const WGDEVICE_F_REPLACE_PEERS: u32 = 1;
pub(super) const WGPEER_A_PUBLIC_KEY: u16 = 1;
pub(super) const WGPEER_A_FLAGS: u16 = 3;
pub(super) const WGPEER_A_ENDPOINT: u16 = 4;
pub(super) const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
pub(super) const WGPEER_A_ALLOWEDIPS: u16 = 9;
pub(super) const WGPEER_F_REMOVE_ME: u32 = 1;
pub(super) const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
pub(super) const WGALLOWEDIP_A_FAMILY: u16 = 1;
pub(super) const WGALLOWEDIP_A_IPADDR: u16 = 2;
pub(super) const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
// include/uapi/linux/netlink.h and linux/socket.h.
pub(super) const NLA_F_NESTED: u16 = 1 << 15;
pub(super) const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
pub(super) const REQUEST: u16 = 0x1;
pub(super) const ACK: u16 = 0x4;
pub(super) const DUMP: u16 = 0x300;
pub(super) const AF_INET: u16 = 2;
pub(super) const AF_INET6: u16 = 10;

/// Any id: the kernel assigns the family's at run time.
pub(super) const FAMILY: u16 = 0x1d;

/// One netlink attribute as the kernel's `nla_for_each_attr` sees it.
pub(super) struct Attr<'a> {
    pub(super) kind: u16,
    pub(super) nested: bool,
    pub(super) value: &'a [u8],
}

/// Walks a run of attributes: `nla_len` (u16, header included), `nla_type` (u16, flags in the
/// top bits), the value, zero padding to 4 bytes.
pub(super) fn attrs(mut bytes: &[u8]) -> Vec<Attr<'_>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 4, "{} trailing bytes", bytes.len());
        let len = usize::from(u16::from_ne_bytes([bytes[0], bytes[1]]));
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]);
        assert!(
            (4..=bytes.len()).contains(&len),
            "nla_len {len} with {} bytes left",
            bytes.len()
        );
        assert_eq!(kind & NLA_F_NET_BYTEORDER, 0, "attribute {kind:#x}");
        let padded = (len + 3) & !3;
        assert!(padded <= bytes.len(), "attribute {kind:#x} is not padded");
        assert!(
            bytes[len..padded].iter().all(|&b| b == 0),
            "attribute {kind:#x} is padded with non-zero bytes"
        );
        out.push(Attr {
            kind: kind & !NLA_F_NESTED,
            nested: kind & NLA_F_NESTED != 0,
            value: &bytes[4..len],
        });
        bytes = &bytes[padded..];
    }
    out
}

pub(super) fn u16_of(value: &[u8]) -> u16 {
    u16::from_ne_bytes(value.try_into().unwrap())
}

pub(super) fn u32_of(value: &[u8]) -> u32 {
    u32::from_ne_bytes(value.try_into().unwrap())
}

/// Checks `struct nlmsghdr` and `struct genlmsghdr`; returns the flags, the command and the
/// attributes.
pub(super) fn message(bytes: &[u8]) -> (u16, u8, &[u8]) {
    assert!(bytes.len() >= 20, "a {}-byte message", bytes.len());
    assert_eq!(u32_of(&bytes[0..4]) as usize, bytes.len(), "nlmsg_len");
    assert_eq!(bytes.len() % 4, 0, "message length");
    assert_eq!(u16_of(&bytes[4..6]), FAMILY, "nlmsg_type is the family id");
    assert_eq!(bytes[17], WG_GENL_VERSION, "genlmsghdr version");
    assert_eq!(&bytes[18..20], [0, 0], "genlmsghdr reserved");
    (u16_of(&bytes[6..8]), bytes[16], &bytes[20..])
}

#[derive(Debug, Default, PartialEq)]
pub(super) struct Peer {
    pub(super) key: [u8; 32],
    pub(super) flags: Option<u32>,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) keepalive: Option<u16>,
    pub(super) allowed: Vec<IpNet>,
    pub(super) has_allowed_ips: bool,
}

#[derive(Debug, Default)]
pub(super) struct SetDevice {
    pub(super) ifname: String,
    pub(super) private_key: Option<[u8; 32]>,
    pub(super) flags: Option<u32>,
    pub(super) listen_port: Option<u16>,
    pub(super) peers: Vec<Peer>,
}

pub(super) fn decode_set(bytes: &[u8]) -> SetDevice {
    let (flags, cmd, body) = message(bytes);
    assert_eq!(flags, REQUEST | ACK, "nlmsg_flags");
    assert_eq!(cmd, WG_CMD_SET_DEVICE);
    let mut device = SetDevice::default();
    let mut seen = Vec::new();
    for attr in attrs(body) {
        assert!(
            !seen.contains(&attr.kind),
            "device attribute {} twice",
            attr.kind
        );
        seen.push(attr.kind);
        assert_eq!(
            attr.nested,
            attr.kind == WGDEVICE_A_PEERS,
            "NLA_F_NESTED on device attribute {}",
            attr.kind
        );
        match attr.kind {
            WGDEVICE_A_IFNAME => {
                let (name, nul) = attr.value.split_at(attr.value.len() - 1);
                assert_eq!(nul, [0], "the name is NUL-terminated");
                device.ifname = String::from_utf8(name.to_vec()).unwrap();
            }
            WGDEVICE_A_PRIVATE_KEY => device.private_key = Some(attr.value.try_into().unwrap()),
            WGDEVICE_A_FLAGS => device.flags = Some(u32_of(attr.value)),
            WGDEVICE_A_LISTEN_PORT => device.listen_port = Some(u16_of(attr.value)),
            WGDEVICE_A_PEERS => device.peers = attrs(attr.value).iter().map(decode_peer).collect(),
            other => panic!("unexpected device attribute {other}"),
        }
    }
    device
}

pub(super) fn decode_peer(nest: &Attr<'_>) -> Peer {
    // wg(8) numbers these nests 0, 1, ...; the kernel looks only at the nesting.
    assert!(nest.nested, "a peer that is not a nested attribute");
    let mut peer = Peer::default();
    for attr in attrs(nest.value) {
        assert_eq!(
            attr.nested,
            attr.kind == WGPEER_A_ALLOWEDIPS,
            "NLA_F_NESTED on peer attribute {}",
            attr.kind
        );
        match attr.kind {
            WGPEER_A_PUBLIC_KEY => peer.key = attr.value.try_into().unwrap(),
            WGPEER_A_FLAGS => peer.flags = Some(u32_of(attr.value)),
            WGPEER_A_ENDPOINT => peer.endpoint = Some(sockaddr(attr.value)),
            WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL => peer.keepalive = Some(u16_of(attr.value)),
            WGPEER_A_ALLOWEDIPS => {
                peer.has_allowed_ips = true;
                peer.allowed
                    .extend(attrs(attr.value).iter().map(decode_allowed_ip));
            }
            other => panic!("unexpected peer attribute {other}"),
        }
    }
    peer
}

pub(super) fn decode_allowed_ip(nest: &Attr<'_>) -> IpNet {
    assert!(nest.nested, "an allowed IP that is not a nested attribute");
    let (mut family, mut addr, mut cidr) = (None, None, None);
    for attr in attrs(nest.value) {
        assert!(!attr.nested);
        match attr.kind {
            WGALLOWEDIP_A_FAMILY => family = Some(u16_of(attr.value)),
            WGALLOWEDIP_A_IPADDR => {
                addr = Some(match attr.value.len() {
                    4 => IpAddr::from(<[u8; 4]>::try_from(attr.value).unwrap()),
                    16 => IpAddr::from(<[u8; 16]>::try_from(attr.value).unwrap()),
                    n => panic!("a {n}-byte address"),
                })
            }
            WGALLOWEDIP_A_CIDR_MASK => {
                assert_eq!(attr.value.len(), 1, "the mask is a u8");
                cidr = Some(attr.value[0]);
            }
            other => panic!("unexpected allowed IP attribute {other}"),
        }
    }
    let (family, addr, cidr) = (family.unwrap(), addr.unwrap(), cidr.unwrap());
    let expected = if addr.is_ipv4() { AF_INET } else { AF_INET6 };
    assert_eq!(family, expected, "the family of {addr}");
    IpNet::new(addr, cidr).unwrap()
}

/// `struct sockaddr_in` (16 bytes) or `struct sockaddr_in6` (28 bytes): the family in host
/// order, the port in network order.
pub(super) fn sockaddr(value: &[u8]) -> SocketAddr {
    let family = u16_of(&value[0..2]);
    let port = u16::from_be_bytes([value[2], value[3]]);
    match (family, value.len()) {
        (AF_INET, 16) => {
            assert_eq!(&value[8..], [0; 8], "sin_zero");
            let ip = <[u8; 4]>::try_from(&value[4..8]).unwrap();
            SocketAddr::new(IpAddr::from(ip), port)
        }
        (AF_INET6, 28) => {
            assert_eq!(&value[4..8], [0; 4], "sin6_flowinfo");
            assert_eq!(&value[24..28], [0; 4], "sin6_scope_id");
            let ip = <[u8; 16]>::try_from(&value[8..24]).unwrap();
            SocketAddr::new(IpAddr::from(ip), port)
        }
        other => panic!("an endpoint of (family, length) {other:?}"),
    }
}
