//! Types shared by the kernel programs (`edge-ebpf`) and the agent (`edge-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`/enum fields, so that every
//! bit pattern the kernel hands back is a valid value. The `user` feature adds `aya::Pod` impls.
#![no_std]

pub mod stats;

pub use stats::{Counters, L3Class, L4Class, STATS_ENTRIES};

/// Names of the maps and programs, as the kernel object declares them and as the agent pins them.
pub mod names {
    /// The XDP ingress program on the public interface.
    pub const XDP_INGRESS: &str = "edge_xdp";
    /// Per-CPU packet counters per (IP version, protocol, verdict).
    pub const STATS_MAP: &str = "EDGE_STATS";
}
