//! An interface's MTU, addresses and routes through rtnetlink, and `wireguard` links created and
//! deleted the same way (issue 5 asks for rtnetlink rather than the `ip` command).
//!
//! [`NetlinkLink`] is what the agent should use: it needs no `ip` binary, reports the kernel's
//! errno and extended-ack text instead of parsing stderr, and costs one syscall pair per change
//! instead of a process. [`crate::sixpn::IpLink`] stays for callers that must act in a namespace they
//! hold only as a path, without a thread inside it (the userspace lab test does that).
//!
//! The messages are those `ip` sends for `ip link set dev D mtu M up`, `ip addr replace A dev D
//! [nodad]` and `ip route replace P dev D`, so either tool can redo or undo what the other did.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::socket::{valid_ifname, NetlinkError, NlSocket};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("no interface {ifname:?} in this network namespace")]
    NoSuchLink { ifname: String },
    #[error("{ifname:?} is not an interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    BadName { ifname: String },
}

impl LinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink(e) => e.errno(),
            _ => None,
        }
    }
}

/// rtnetlink in one network namespace: the one of the thread that called [`NetlinkLink::open`],
/// whichever thread then uses it. Every change is idempotent (a replace, or EEXIST taken as done).
#[derive(Debug)]
pub struct NetlinkLink {
    socket: NlSocket,
}

impl NetlinkLink {
    pub fn open() -> Result<Self, LinkError> {
        Ok(Self {
            socket: NlSocket::open(NETLINK_ROUTE)?,
        })
    }

    /// The interface's index, looked up through this socket (so in its namespace, not the calling
    /// thread's, as `if_nametoindex` would).
    pub fn index(&self, ifname: &str) -> Result<u32, LinkError> {
        check_name(ifname)?;
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(ifname.to_owned()));
        let answers = self
            .send(
                &format!("look up link {ifname}"),
                RouteNetlinkMessage::GetLink(message),
                NLM_F_REQUEST | NLM_F_ACK,
            )
            .map_err(|e| no_such_link(e, ifname))?;
        answers
            .into_iter()
            .find_map(|answer| match answer {
                RouteNetlinkMessage::NewLink(link) => Some(link.header.index),
                _ => None,
            })
            .ok_or_else(|| LinkError::NoSuchLink {
                ifname: ifname.to_owned(),
            })
    }

    /// Sets the MTU and brings the link up.
    pub fn up(&self, ifname: &str, mtu: u32) -> Result<(), LinkError> {
        let index = self.index(ifname)?;
        self.send(
            &format!("set link {ifname} mtu {mtu} up"),
            RouteNetlinkMessage::SetLink(up_message(index, mtu)),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
        .map_err(|e| no_such_link(e, ifname))
    }

    /// Adds (or keeps) an address, without duplicate address detection for IPv6: overlay
    /// addresses are unique by construction, and DAD would hold them tentative, unusable, for a
    /// second or more.
    pub fn add_addr(&self, ifname: &str, addr: IpNet) -> Result<(), LinkError> {
        let index = self.index(ifname)?;
        self.change(
            &format!("add address {addr} to {ifname}"),
            RouteNetlinkMessage::NewAddress(address_message(index, addr)),
        )
    }

    /// Routes `dest` (its network: host bits are dropped) into the interface, replacing any route
    /// to the same prefix. The link must be up for an IPv4 route (ENETDOWN otherwise).
    pub fn route(&self, ifname: &str, dest: IpNet) -> Result<(), LinkError> {
        let index = self.index(ifname)?;
        self.change(
            &format!("route {dest} to {ifname}"),
            RouteNetlinkMessage::NewRoute(route_message(index, dest)),
        )
    }

    /// Creates a link of kind `wireguard`; fails with EOPNOTSUPP where the kernel has no
    /// WireGuard, and EEXIST if the name is taken.
    pub fn create_wireguard(&self, ifname: &str) -> Result<(), LinkError> {
        check_name(ifname)?;
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(ifname.to_owned()),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Wireguard)]),
        ];
        self.send(
            &format!("create link {ifname} of kind wireguard"),
            RouteNetlinkMessage::NewLink(message),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
        .map_err(LinkError::from)
    }

    pub fn delete(&self, ifname: &str) -> Result<(), LinkError> {
        let index = self.index(ifname)?;
        let mut message = LinkMessage::default();
        message.header.index = index;
        self.send(
            &format!("delete link {ifname}"),
            RouteNetlinkMessage::DelLink(message),
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(drop)
        .map_err(|e| no_such_link(e, ifname))
    }

    /// Sends a create-or-replace request; EEXIST means it is there already, which is the goal.
    fn change(&self, op: &str, message: RouteNetlinkMessage) -> Result<(), LinkError> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        match self.send(op, message, flags) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop).map_err(LinkError::from),
        }
    }

    fn send(
        &self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut message = NetlinkMessage::from(message);
        message.header.flags = flags;
        self.socket.request_message(op, message)
    }
}

fn check_name(ifname: &str) -> Result<(), LinkError> {
    if valid_ifname(ifname) {
        Ok(())
    } else {
        Err(LinkError::BadName {
            ifname: ifname.to_owned(),
        })
    }
}

/// ENODEV names the missing link rather than the request.
fn no_such_link(error: NetlinkError, ifname: &str) -> LinkError {
    if error.errno() == Some(libc::ENODEV) {
        LinkError::NoSuchLink {
            ifname: ifname.to_owned(),
        }
    } else {
        LinkError::Netlink(error)
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn up_message(index: u32, mtu: u32) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.header.flags = LinkFlags::Up;
    // Only the flags in the mask change; the others (e.g. NOARP) are left as they are.
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::Mtu(mtu));
    message
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = family(addr.addr());
    message.header.prefix_len = addr.prefix_len();
    message.header.scope = AddressScope::Universe;
    message.header.index = index;
    if addr.addr().is_ipv6() {
        message.header.flags = AddressHeaderFlags::Nodad;
    }
    // As `ip` sends it without a peer: IFA_LOCAL is the address, IFA_ADDRESS the same.
    message.attributes = vec![
        AddressAttribute::Local(addr.addr()),
        AddressAttribute::Address(addr.addr()),
    ];
    message
}

fn route_message(index: u32, dest: IpNet) -> RouteMessage {
    // The network itself: IPv4 refuses a destination with host bits set (EINVAL).
    let dest = dest.trunc();
    let mut message = RouteMessage::default();
    message.header.address_family = family(dest.addr());
    message.header.destination_prefix_length = dest.prefix_len();
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    // What `ip route` marks its routes with, so that `ip route replace` finds and replaces them.
    message.header.protocol = RouteProtocol::Boot;
    // `ip` picks link scope for an IPv4 route with no gateway; IPv6 routes are always universe.
    message.header.scope = match dest {
        IpNet::V4(_) => RouteScope::Link,
        IpNet::V6(_) => RouteScope::Universe,
    };
    message.header.kind = RouteType::Unicast;
    message.attributes = vec![
        RouteAttribute::Destination(match dest {
            IpNet::V4(net) => RouteAddress::Inet(net.addr()),
            IpNet::V6(net) => RouteAddress::Inet6(net.addr()),
        }),
        RouteAttribute::Oif(index),
    ];
    message
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use super::*;

    #[test]
    fn up_changes_only_the_up_flag_and_sets_the_mtu() {
        let message = up_message(7, 1420);
        assert_eq!(message.header.index, 7);
        assert_eq!(message.header.flags, LinkFlags::Up);
        assert_eq!(message.header.change_mask, LinkFlags::Up);
        assert_eq!(message.attributes, vec![LinkAttribute::Mtu(1420)]);
    }

    #[test]
    fn ipv6_addresses_skip_dad_and_ipv4_ones_need_not() {
        let v6 = address_message(3, "fd5e:a1c0:7b3d:100:0:1:0:1/48".parse().unwrap());
        assert_eq!(v6.header.family, AddressFamily::Inet6);
        assert_eq!(v6.header.prefix_len, 48);
        assert_eq!(v6.header.flags, AddressHeaderFlags::Nodad);
        let addr: IpAddr = "fd5e:a1c0:7b3d:100:0:1:0:1".parse().unwrap();
        assert_eq!(
            v6.attributes,
            vec![
                AddressAttribute::Local(addr),
                AddressAttribute::Address(addr)
            ]
        );
        let v4 = address_message(3, "10.50.1.1/16".parse().unwrap());
        assert_eq!(v4.header.family, AddressFamily::Inet);
        assert!(v4.header.flags.is_empty());
    }

    #[test]
    fn routes_go_to_the_network_with_ips_scopes() {
        let v4 = route_message(5, "10.50.7.9/16".parse().unwrap());
        assert_eq!(v4.header.destination_prefix_length, 16);
        assert_eq!(v4.header.scope, RouteScope::Link);
        assert_eq!(v4.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(
            v4.attributes,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet("10.50.0.0".parse().unwrap())),
                RouteAttribute::Oif(5),
            ]
        );
        let v6 = route_message(5, "fd5e:a1c0:7b3d:300::1/56".parse().unwrap());
        assert_eq!(v6.header.scope, RouteScope::Universe);
        assert_eq!(
            v6.attributes[0],
            RouteAttribute::Destination(RouteAddress::Inet6(
                "fd5e:a1c0:7b3d:300::".parse().unwrap()
            ))
        );
    }
}
