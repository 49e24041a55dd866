//! Types shared by the kernel programs (`edge-ebpf`) and the agent (`edge-agent`).
//!
//! Everything here is `#[repr(C)]` with explicit padding and no `bool`/enum fields, so that every
//! bit pattern the kernel hands back is a valid value. The `user` feature adds `aya::Pod` impls.
//! Addresses are 16 bytes; IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`, RFC 4291
//! section 2.5.5.2) so that one key type serves both families.
#![no_std]

pub mod flow;
pub mod geo;
pub mod hash;
pub mod pop;
pub mod service;
pub mod stats;

pub use flow::{FlowKey, FlowValue};
pub use pop::PopConfig;
pub use service::{BackendValue, ServiceKey, ServiceValue};
pub use stats::{BackendStats, Counters, DropStats, L3Class, L4Class, ServiceStats, STATS_ENTRIES};

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;

/// Names of the maps and programs, as the kernel object declares them and as the agent pins them.
pub mod names {
    /// The XDP ingress program on the public interface.
    pub const XDP_INGRESS: &str = "edge_xdp";
    /// A program that parses like `edge_xdp` and passes: the benchmarks' baseline.
    pub const XDP_BASELINE: &str = "edge_xdp_baseline";
    /// Benchmark-only programs: `XDP_BASELINE` plus one flow-table lookup, and plus the two
    /// flow-table inserts of a new flow: what the kernel's map operations cost on the machine.
    pub const XDP_FLOOR_HIT: &str = "edge_xdp_floor_hit";
    pub const XDP_FLOOR_INSERT: &str = "edge_xdp_floor_insert";
    /// The clock calibration program (`kernel_clock`).
    pub const XDP_CLOCK: &str = "edge_clock";
    /// The TC ingress program on the public interface: `edge_xdp`'s translation where the TC
    /// hook is the cheaper one (veth).
    pub const TC_FORWARD: &str = "edge_tc_forward";
    /// The TC ingress program on the overlay interface (the reply path).
    pub const TC_REPLY: &str = "edge_tc_reply";
    /// Per-CPU packet counters per (IP version, protocol, verdict).
    pub const STATS_MAP: &str = "EDGE_STATS";
    pub const SERVICES: &str = "SERVICES";
    pub const SERVICE_PORTS: &str = "SERVICE_PORTS";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FLOWS: &str = "FLOWS";
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const POP_CONFIG: &str = "POP_CONFIG";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const DROP_STATS: &str = "DROP_STATS";
    pub const GEO_V4: &str = "GEO_V4";
    pub const GEO_V4_SLASH24: &str = "GEO_V4_SLASH24";
    pub const GEO_V6: &str = "GEO_V6";
    pub const GEO_V6_32: &str = "GEO_V6_32";
    pub const GEO_V6_48: &str = "GEO_V6_48";
    pub const SERVICE_RINGS: &str = "SERVICE_RINGS";
    pub const AFFINITY: &str = "AFFINITY";
    /// The load-time global (`u8`) that turns the programs' debug records on.
    pub const DEBUG_LOG: &str = "DEBUG_LOG";
}

/// Sizes of the maps whose size the agent does not choose at load time.
pub mod limits {
    /// Services (VIP, port) and their per-service counters.
    pub const MAX_SERVICES: u32 = 1024;
    /// Backends, indexed by the id the agent assigns.
    pub const MAX_BACKENDS: u32 = 4096;
    /// Maglev tables (rings) compiled into the object; the agent sizes the map at load time.
    pub const MAX_RINGS: u32 = 2 * MAX_SERVICES;
    /// Prefixes in each geo trie.
    pub const MAX_GEO_PREFIXES: u32 = 1 << 20;
    /// Default client bindings.
    pub const DEFAULT_AFFINITY: u32 = 1 << 18;
    /// Default flow table size (entries, both directions count).
    pub const DEFAULT_FLOWS: u32 = 1_000_000;
    /// Default size of the half-open table (connections whose handshake is not complete, both
    /// directions count). A flood of spoofed SYNs cycles through it; a real client's handshake
    /// takes one round trip, during which the flood would have to make this many entries.
    pub const DEFAULT_HALF_OPEN: u32 = 1 << 17;
    /// Source ports tried per new flow before giving up.
    pub const PORT_TRIES: u32 = 8;
}

/// An IPv4 address as the maps store it.
pub const fn ipv4_mapped(octets: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Whether a stored address is IPv4-mapped.
pub const fn is_ipv4_mapped(addr: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 10 {
        if addr[i] != 0 {
            return false;
        }
        i += 1;
    }
    addr[10] == 0xff && addr[11] == 0xff
}
