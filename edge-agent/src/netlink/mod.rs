//! Netlink, the kernel's configuration sockets: one blocking request at a time (`socket`), and
//! links, addresses and routes through rtnetlink (`link`). The WireGuard generic-netlink family
//! lives with the other WireGuard drivers in `sixpn::wireguard`.

pub mod link;
pub(crate) mod socket;
