//! The kernel object built by `build.rs`, embedded in the agent.

/// Bytes of the `edge-ebpf` ELF object, aligned for the ELF parser.
pub static EDGE_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/edge-ebpf"));
