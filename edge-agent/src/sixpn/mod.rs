//! 6PN, the deployment's IPv6 private network over WireGuard (issue 5): the address plan, the
//! host's WireGuard keys, and the userspace WireGuard implementation used when the kernel has no
//! `wireguard` module. See `docs/6pn.md`.

pub mod keys;
pub mod members;
pub mod node;
pub mod plan;
pub mod wireguard;

pub use keys::{KeyError, PrivateKey, PublicKey};
pub use plan::{Deployment, Location, PlanError, RegionNumbers};
pub use wireguard::uapi::{DeviceConfig, DeviceState, PeerConfig, PeerState, Uapi, UapiError};
pub use wireguard::userspace::{IpLink, UserspaceError, WireguardGo};
