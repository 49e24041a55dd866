//! Geo classification and client affinity, as the kernel looks them up.
//!
//! The agent compiles the country database into two LPM tries (IPv4, IPv6; keys are aya's
//! `lpm_trie::Key` of the address bytes) whose values are
//! small country indexes (0: unknown). A service's table for a client is then one array lookup:
//! `SERVICE_RINGS[service_id * GEO_CLASSES + country]`, which the agent fills with the ring of
//! the eligible backend set it computed for that country (v1's tiers), countries with the same
//! set sharing one ring.

/// Country indexes: 0 is "unknown", 1..=MAX_COUNTRY_CLASS are countries the agent assigned.
pub const GEO_CLASSES: u32 = 256;

/// The highest class a country gets: the IPv4 /24 table stores classes in a byte, and its
/// 255 is `GEO_V4_DEEPER`.
pub const MAX_COUNTRY_CLASS: u16 = 254;

/// Words of the IPv4 /24 table (`GEO_V4_SLASH24`): the class of every IPv4 /24, eight to a
/// `u64`, the /24 numbered `8 * w + i` in byte `i` of word `w` (least significant first). One
/// array load classifies an IPv4 client, where the LPM trie walks a node per prefix bit.
pub const GEO_V4_SLASH24_WORDS: u32 = (1 << 24) / 8;

/// In the /24 table: this /24 holds prefixes longer than /24, so the IPv4 trie answers for it.
pub const GEO_V4_DEEPER: u8 = 255;

/// Where the /24 table keeps the class of IPv4 address `addr` (host order): the word's index,
/// and the shift that brings the class to the word's low byte.
pub const fn slash24_slot(addr: u32) -> (u32, u32) {
    let slash24 = addr >> 8;
    (slash24 >> 3, (slash24 & 7) * 8)
}

/// What a prefix maps to: the country's index, and its ISO code for people reading the map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GeoValue {
    pub class: u16,
    pub country: [u8; 2],
}

/// Client affinity key: (service, client address).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client: [u8; 16],
}

/// The backend a client is bound to, and when the binding was last used (coarse monotonic ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only.
unsafe impl aya::Pod for GeoValue {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for AffinityKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, integer fields only.
unsafe impl aya::Pod for AffinityValue {}
