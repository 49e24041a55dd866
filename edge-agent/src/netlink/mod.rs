//! Netlink, the kernel's configuration sockets: one blocking request at a time (`socket`),
//! links, addresses and routes through rtnetlink (`link`), and the lookup and addressing of
//! generic netlink families (`generic`). What the WireGuard family's messages hold lives with
//! the other WireGuard drivers in `sixpn::wireguard::kernel`.

pub(crate) mod generic;
pub mod link;
pub(crate) mod socket;

pub use socket::NetlinkError;
