//! The IPv4 table of every /24: one array load per SYN instead of a trie walk, the trie
//! answering only inside a /24 that longer prefixes split. Computed here; `super::write` puts it
//! in the map.

use std::net::Ipv4Addr;

use edge_common::geo::{slash24_slot, GEO_V4_DEEPER, GEO_V4_SLASH24_WORDS};
use ipnet::Ipv4Net;

/// The IPv4 /24 table of `prefixes` (with their classes): each /24 holds the class of the
/// longest prefix of at most 24 bits that covers it (0 if none does), or `GEO_V4_DEEPER` if a
/// longer prefix lies inside it; so that a lookup answers as the trie would. Classes above
/// `MAX_COUNTRY_CLASS` cannot occur (`GeoClasses` stops there) and are stored as unknown.
pub fn slash24_table(prefixes: impl IntoIterator<Item = (Ipv4Net, u16)>) -> Vec<u64> {
    let mut prefixes: Vec<(Ipv4Net, u16)> = prefixes.into_iter().collect();
    // Shorter first, so that a longer prefix paints over the ones that cover it.
    prefixes.sort_by_key(|(net, _)| net.prefix_len());
    let mut classes = vec![0u8; GEO_V4_SLASH24_WORDS as usize * 8];
    for (net, class) in prefixes {
        let first = (u32::from(net.network()) >> 8) as usize;
        let len = net.prefix_len();
        let (span, class) = if len <= 24 {
            let class = u8::try_from(class).ok().filter(|&c| c != GEO_V4_DEEPER);
            (1usize << (24 - len), class.unwrap_or(0))
        } else {
            (1, GEO_V4_DEEPER)
        };
        if let Some(run) = classes.get_mut(first..first + span) {
            run.fill(class);
        }
    }
    classes
        .chunks_exact(8)
        .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
        .collect()
}

/// The /24 class `table` (as `slash24_table` builds it) gives an address.
pub fn slash24_class(table: &[u64], addr: Ipv4Addr) -> Option<u8> {
    let (word, shift) = slash24_slot(u32::from(addr));
    Some((table.get(word as usize)? >> shift) as u8)
}
