//! This POP's data-plane settings, one entry written by the agent.

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PopConfig {
    /// The POP's overlay address: the source of every translated flow.
    pub overlay_addr: [u8; 16],
    /// MSS written into SYN and SYN-ACK segments that offer more (0: no clamping).
    pub mss_clamp: u16,
    /// Source ports allocated to translated flows, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    /// Bytes before the IP header on the overlay interface: 14 on Ethernet (veth), 0 on
    /// WireGuard, which carries bare IP packets.
    pub overlay_l2_len: u16,
    /// Slots per Maglev ring.
    pub ring_size: u32,
    /// Where replies leave: the public interface.
    pub public_ifindex: u32,
    /// `POP_*` bits.
    pub flags: u32,
    /// The kernel's tick length: with `clock_offset_ns`, turns `bpf_jiffies64` into
    /// CLOCK_MONOTONIC_COARSE nanoseconds (measured by the agent, `kernel_clock`).
    pub ns_per_jiffy: u32,
    /// How long an unused client binding lasts (v1: 600 s).
    pub affinity_ttl_ns: u64,
    /// With `POP_SNAT96`: the /96 whose low 32 bits take an IPv4 client's address as the source
    /// of its translated flows (RFC 6052-style). The client keeps its source port, so no port is
    /// allocated, flows never collide with a backend's TIME_WAIT sockets, and the backend can
    /// read the client's address from the connection.
    pub snat_prefix: [u8; 12],
    pub _pad3: [u8; 4],
    /// CLOCK_MONOTONIC_COARSE nanoseconds at jiffy 0 (wrapping).
    pub clock_offset_ns: u64,
}

/// Set once the agent has written a complete configuration; until then nothing is translated.
pub const POP_READY: u32 = 1;
/// IPv4 clients are translated to `snat_prefix` + their address (see `snat_prefix`).
pub const POP_SNAT96: u32 = 2;

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for PopConfig {}
