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
/// In the IPv6 directories likewise: the next level (the /48 directory, then the trie) answers.
pub const GEO_V4_DEEPER: u8 = 255;

/// Lines of the IPv6 /32 directory (`GEO_V6_32`): IPv6 /32 -> country class, or
/// `GEO_V4_DEEPER` when prefixes longer than /32 lie inside it (then the /48 directory answers,
/// else the trie). A line is one 64-byte cache line of `V6_DIR_SLOTS` slots (`v6_dir_slot`),
/// the line of a key its hash (`v6_dir_line`): a lookup is one load, where a hash map's is two
/// dependent ones (bucket, then element), each a cache miss in a large database. A key whose
/// line is full has no entry: the trie answers for it. 2 MiB, 262,144 slots.
pub const GEO_V6_32_LINES: u32 = 1 << 15;
/// Lines of the IPv6 /48 directory (`GEO_V6_48`): IPv6 /48 (inside a /32 marked deeper) ->
/// country class, or `GEO_V4_DEEPER` when prefixes longer than /48 lie inside it. 4 MiB,
/// 524,288 slots.
pub const GEO_V6_48_LINES: u32 = 1 << 16;
/// Slots per directory line.
pub const V6_DIR_SLOTS: usize = 8;
/// In a directory slot: the slot is used (an all-zero slot is free).
pub const V6_DIR_USED: u64 = 1 << 8;

/// The /32 directory's key of an IPv6 address: its first 32 bits.
#[inline(always)]
pub const fn v6_key32(addr: &[u8; 16]) -> u64 {
    u32::from_be_bytes([addr[0], addr[1], addr[2], addr[3]]) as u64
}

/// The /48 directory's key of an IPv6 address: its first 48 bits.
#[inline(always)]
pub const fn v6_key48(addr: &[u8; 16]) -> u64 {
    u64::from_be_bytes([0, 0, addr[0], addr[1], addr[2], addr[3], addr[4], addr[5]])
}

/// The line of `key` in a directory of `lines` lines (a power of two): Fibonacci hashing, the
/// top bits of the key times 2^64 / phi, which spreads runs of neighbouring prefixes evenly.
#[inline(always)]
pub const fn v6_dir_line(key: u64, lines: u32) -> u32 {
    (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - lines.trailing_zeros())) as u32
}

/// A directory slot: `key` in bits 16..64, `V6_DIR_USED`, `class` in bits 0..8.
#[inline(always)]
pub const fn v6_dir_slot(key: u64, class: u8) -> u64 {
    key << 16 | V6_DIR_USED | class as u64
}

/// The class a directory line holds for `key`, if any.
#[inline(always)]
pub fn v6_dir_find(line: &[u64; V6_DIR_SLOTS], key: u64) -> Option<u8> {
    let mut i = 0;
    while i < V6_DIR_SLOTS {
        let slot = line[i];
        if slot >> 16 == key && slot & V6_DIR_USED != 0 {
            return Some(slot as u8);
        }
        i += 1;
    }
    None
}

/// Where the /24 table keeps the class of IPv4 address `addr` (host order): the word's index,
/// and the shift that brings the class to the word's low byte.
pub const fn slash24_slot(addr: u32) -> (u32, u32) {
    let slash24 = addr >> 8;
    (slash24 >> 3, (slash24 & 7) * 8)
}

/// The IPv4 address an IPv6 client address is classified by, if it embeds one: MaxMind DBs
/// answer these ranges from their IPv4 data (aliases of the IPv4 subtree), so the agent's
/// loader leaves them out of the IPv6 trie and the kernel and the agent's own lookups must take
/// the IPv4 address out instead (issue 22):
///
/// - 6to4, `2002::/16` (RFC 3056 section 2): the site's IPv4 address in bits 16..48.
/// - Teredo, `2001::/32` (RFC 4380 section 4): bits 32..64, the Teredo *server's* IPv4
///   address, as MaxMind's alias reads it (`2001:0:5102:458e::9` is 81.2.69.142's). The
///   client's own NAT-external address (inverted in the last 32 bits) would say more about
///   where the client is, but the database answers the range by the server, and every MaxMind
///   reader of the same file (`mmdblookup`, the `maxminddb` crate) gives that answer: the
///   kernel agrees with them rather than inventing its own.
/// - IPv4-mapped, `::ffff:0:0/96` (RFC 4291 section 2.5.5.2): never valid on the wire, but XDP
///   and TC ingress run before the kernel's IPv6 input drops such a source.
///
/// Byte compares only: this runs on the kernel's SYN path, where a slice compare would become a
/// call to BPF's byte-loop `memcmp`.
#[inline(always)]
pub const fn embedded_ipv4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    if addr[0] == 0x20 && addr[1] == 0x02 {
        return Some([addr[2], addr[3], addr[4], addr[5]]);
    }
    if addr[0] == 0x20 && addr[1] == 0x01 && addr[2] == 0 && addr[3] == 0 {
        return Some([addr[4], addr[5], addr[6], addr[7]]);
    }
    if crate::is_ipv4_mapped(addr) {
        return Some([addr[12], addr[13], addr[14], addr[15]]);
    }
    None
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

#[cfg(test)]
mod tests {
    use super::embedded_ipv4;

    #[test]
    fn embedded_ipv4_of_each_range() {
        // 6to4 of 81.2.69.142 (MaxMind's test data).
        let six_to_four = [0x20, 0x02, 81, 2, 69, 142, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(embedded_ipv4(&six_to_four), Some([81, 2, 69, 142]));
        // Teredo: server 65.54.227.120 in bits 32..64 (what MaxMind's alias reads), client
        // 81.2.69.142 inverted in the last 32 bits (not what classifies it).
        let teredo = [
            0x20, 0x01, 0, 0, 65, 54, 227, 120, 0x80, 0, 0xfb, 0xaa, 0xae, 0xfd, 0xba, 0x71,
        ];
        assert_eq!(embedded_ipv4(&teredo), Some([65, 54, 227, 120]));
        // MaxMind's test address: server 81.2.69.142.
        let teredo = [0x20, 0x01, 0, 0, 81, 2, 69, 142, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(embedded_ipv4(&teredo), Some([81, 2, 69, 142]));
        let mapped = crate::ipv4_mapped([192, 0, 2, 7]);
        assert_eq!(embedded_ipv4(&mapped), Some([192, 0, 2, 7]));
        // Neighbours of those ranges embed nothing.
        for other in [
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0, 1, 81, 2, 69, 142, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x03, 81, 2, 69, 142, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xfe, 192, 0, 2, 7],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ] {
            assert_eq!(
                embedded_ipv4(&other),
                None,
                "{other:02x?}: expected no IPv4"
            );
        }
    }
}
