//! The WireGuard device under 6PN, by driver: the kernel module through generic netlink
//! (`kernel`), or a userspace `wireguard-go` (`userspace`) configured over its UAPI socket
//! (`uapi`); `choice` says which one this kernel allows.

pub mod choice;
pub mod kernel;
pub mod uapi;
pub mod userspace;
