//! The IPv6 directories, /32 and /48: one load answers a SYN from most of the address space
//! where the trie would take a walk (with 200,000 IPv6 networks loaded, a SYN's trie walk cost
//! 3.2 times an IPv4 SYN). Computed here; `super::write` puts them in the maps.

use std::collections::HashMap;

use edge_common::geo::{
    v6_dir_line, v6_dir_slot, v6_key32, v6_key48, GEO_V4_DEEPER, GEO_V6_32_LINES, GEO_V6_48_LINES,
    V6_DIR_SLOTS, V6_DIR_USED,
};
use ipnet::Ipv6Net;

/// The IPv6 directories: the /32s and /48s whose class a SYN can take from one load.
#[derive(Debug, Default)]
pub struct V6Directories {
    /// /32 (`v6_key32`) -> class, or `GEO_V4_DEEPER`.
    pub slash32: HashMap<u64, u8>,
    /// /48 (`v6_key48`) -> class, or `GEO_V4_DEEPER`.
    pub slash48: HashMap<u64, u8>,
}

/// Prefixes this long or longer are spread over the /32s they cover (at most 4,096 each);
/// clients under a shorter one without a longer one inside are the trie's.
const SLASH32_FROM: u8 = 20;
/// Likewise over /48s (at most 256 each); /33 to /39 stay the trie's.
const SLASH48_FROM: u8 = 40;

/// The directories of `prefixes` (with their classes). A /32 holds the class of the longest
/// prefix of /20 to /32 covering it, or `GEO_V4_DEEPER` if a longer prefix lies inside it; a
/// /48 likewise from /40 to /48. Each entry answers as the trie would for every address in it,
/// so any subset of the entries is correct: what has no entry, or what the maps' lines have no
/// room for, goes to the trie. Classes above `MAX_COUNTRY_CLASS` cannot occur (`GeoClasses`
/// stops there) and are stored as unknown.
///
/// The splits are marked first, then prefixes are spread longest first into keys no longer
/// prefix took: so the spreading may stop at any point and leave a correct subset, and it stops
/// once a level holds as many entries as its map has slots (a database of many short prefixes,
/// each spread over up to 4,096 keys, would otherwise cost the agent millions of entries at
/// every load, all but the first few hundred thousand without a slot).
pub fn v6_directories(prefixes: impl IntoIterator<Item = (Ipv6Net, u16)>) -> V6Directories {
    let mut prefixes: Vec<(Ipv6Net, u16)> = prefixes.into_iter().collect();
    prefixes.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
    let mut d = V6Directories::default();
    for &(net, _) in &prefixes {
        let (first, len) = (u128::from(net.network()), net.prefix_len());
        if len > 32 {
            d.slash32.insert((first >> 96) as u64, GEO_V4_DEEPER);
        }
        if len > 48 {
            d.slash48.insert((first >> 80) as u64, GEO_V4_DEEPER);
        }
    }
    let room32 = GEO_V6_32_LINES as usize * V6_DIR_SLOTS;
    let room48 = GEO_V6_48_LINES as usize * V6_DIR_SLOTS;
    for &(net, class) in &prefixes {
        let class = u8::try_from(class)
            .ok()
            .filter(|&c| c != GEO_V4_DEEPER)
            .unwrap_or(0);
        let (first, len) = (u128::from(net.network()), net.prefix_len());
        if (SLASH48_FROM..=48).contains(&len) && d.slash48.len() < room48 {
            let key = (first >> 80) as u64;
            for i in 0..1u64 << (48 - len) {
                d.slash48.entry(key + i).or_insert(class);
            }
        }
        if (SLASH32_FROM..=32).contains(&len) && d.slash32.len() < room32 {
            let key = (first >> 96) as u64;
            for i in 0..1u64 << (32 - len) {
                d.slash32.entry(key + i).or_insert(class);
            }
        }
    }
    d
}

/// The class `d` gives an IPv6 address, as the kernel reads the directories: `None` where the
/// trie answers.
pub fn v6_directory_class(d: &V6Directories, addr: std::net::Ipv6Addr) -> Option<u8> {
    let a = addr.octets();
    match *d.slash32.get(&v6_key32(&a))? {
        GEO_V4_DEEPER => match *d.slash48.get(&v6_key48(&a))? {
            GEO_V4_DEEPER => None,
            class => Some(class),
        },
        class => Some(class),
    }
}

/// The lines of a directory of `lines` lines holding `entries`, and how many entries found
/// their line full (left to the trie). Keys in order, so that the same database fills the
/// same slots on every load.
pub fn v6_directory_lines(
    entries: &HashMap<u64, u8>,
    lines: u32,
) -> (Vec<[u64; V6_DIR_SLOTS]>, usize) {
    let mut table = vec![[0u64; V6_DIR_SLOTS]; lines as usize];
    let mut keys: Vec<(&u64, &u8)> = entries.iter().collect();
    keys.sort_unstable();
    let mut full = 0;
    for (&key, &class) in keys {
        let Some(line) = table.get_mut(v6_dir_line(key, lines) as usize) else {
            continue;
        };
        match line.iter_mut().find(|slot| **slot & V6_DIR_USED == 0) {
            Some(slot) => *slot = v6_dir_slot(key, class),
            None => full += 1,
        }
    }
    (table, full)
}
