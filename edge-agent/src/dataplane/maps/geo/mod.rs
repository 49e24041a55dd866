//! Compiles a country database into the kernel's geo maps: prefix -> country class, in an LPM
//! trie per family, and for IPv4 also a table of every /24 (one array load per SYN instead of a
//! trie walk; the trie answers only inside a /24 that longer prefixes split). IPv6 gets two
//! directories, /32 and /48 (`v6_directories`), for the same reason: with 200,000 IPv6
//! networks loaded, a SYN's trie walk cost 3.2 times an IPv4 SYN.
//!
//! A reload writes the prefixes of the new database whose class differs from what the trie holds
//! and then removes the ones it no longer has, so lookups keep answering (with the old or the new
//! country) while it runs. A restarted agent reads what the pinned tries hold ([`adopt`]): the
//! classes it finds are the ones the pinned tables are filed under, and a database that has not
//! changed writes nothing.

use std::{collections::HashMap, net::Ipv4Addr};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        MapData, MapError,
    },
    Ebpf,
};
use edge_common::{
    geo::{
        slash24_slot, v6_dir_line, v6_dir_slot, v6_key32, v6_key48, GeoValue, GEO_V4_DEEPER,
        GEO_V4_SLASH24_WORDS, GEO_V6_32_LINES, GEO_V6_48_LINES, V6_DIR_SLOTS, V6_DIR_USED,
    },
    names,
};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::{balancing::plan::GeoClasses, geo::GeoDb};

/// What the geo tries hold, as this agent (or the one before it) wrote them.
#[derive(Default)]
pub struct Written {
    v4: HashMap<Ipv4Net, GeoValue>,
    v6: HashMap<Ipv6Net, GeoValue>,
    /// Whether the maps above include what the pinned tries held when this agent started.
    seeded: bool,
}

impl Written {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GeoMapsError {
    #[error("map {name} is missing from the loaded object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

fn trie<'e, K: aya::Pod>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<LpmTrie<&'e mut MapData, K, GeoValue>, GeoMapsError> {
    let map = ebpf
        .map_mut(name)
        .ok_or(GeoMapsError::MissingMap { name })?;
    LpmTrie::try_from(map).map_err(|source| GeoMapsError::Map { name, source })
}

fn value(classes: &GeoClasses, country: crate::model::Country) -> GeoValue {
    GeoValue {
        class: classes.class_of(country).unwrap_or(0),
        country: country.bytes(),
    }
}

/// What the pinned tries hold, and the classes they give countries (empty on a first start).
pub fn adopt(ebpf: &mut Ebpf) -> Result<(Written, GeoClasses), GeoMapsError> {
    let mut pairs: Vec<(u16, crate::model::Country)> = Vec::new();
    let v4 = pinned(
        &trie(ebpf, names::GEO_V4)?,
        names::GEO_V4,
        |k: &Key<[u8; 4]>| Ipv4Net::new(k.data().into(), k.prefix_len() as u8).ok(),
    )?;
    let v6 = pinned(
        &trie(ebpf, names::GEO_V6)?,
        names::GEO_V6,
        |k: &Key<[u8; 16]>| Ipv6Net::new(k.data().into(), k.prefix_len() as u8).ok(),
    )?;
    pairs.extend(class_pairs(v4.values().chain(v6.values())));
    let written = Written {
        v4,
        v6,
        seeded: true,
    };
    Ok((written, GeoClasses::adopted(pairs)))
}

/// The classes the pinned tries under `pins` hold, read without loading the programs (for the
/// CLI).
pub fn pinned_classes(pins: &crate::dataplane::pins::PinDir) -> anyhow::Result<GeoClasses> {
    let v4: LpmTrie<MapData, [u8; 4], GeoValue> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(pins.open_map(names::GEO_V4)?))?;
    let v6: LpmTrie<MapData, [u8; 16], GeoValue> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(pins.open_map(names::GEO_V6)?))?;
    let values: Vec<GeoValue> = v4
        .iter()
        .filter_map(Result::ok)
        .map(|(_, v)| v)
        .chain(v6.iter().filter_map(Result::ok).map(|(_, v)| v))
        .collect();
    Ok(GeoClasses::adopted(class_pairs(values.iter())))
}

/// The distinct (class, country) pairs of trie values.
fn class_pairs<'v>(
    values: impl Iterator<Item = &'v GeoValue>,
) -> Vec<(u16, crate::model::Country)> {
    let mut pairs: Vec<(u16, crate::model::Country)> = values
        .filter_map(|value| {
            let code = std::str::from_utf8(&value.country).ok()?;
            Some((value.class, code.parse().ok()?))
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Makes the geo maps hold exactly `db`, classified by `classes`.
pub fn write(
    ebpf: &mut Ebpf,
    db: &GeoDb,
    classes: &GeoClasses,
    written: &mut Written,
) -> Result<(), GeoMapsError> {
    if !written.seeded {
        // Prefixes a previous agent wrote (pinned maps outlive it) that this database lacks
        // must go too.
        *written = adopt(ebpf)?.0;
    }
    let v4 = db
        .v4_prefixes()
        .map(|(net, c)| (net, net.key(), value(classes, c)));
    replace(
        &mut trie(ebpf, names::GEO_V4)?,
        names::GEO_V4,
        v4,
        &mut written.v4,
    )?;
    // After the trie: a /24 marked deeper finds its longer prefixes there.
    let table = slash24_table(
        db.v4_prefixes()
            .map(|(net, c)| (net, value(classes, c).class)),
    );
    write_changed(ebpf, names::GEO_V4_SLASH24, &table)?;
    let v6 = db
        .v6_prefixes()
        .map(|(net, c)| (net, net.key(), value(classes, c)));
    replace(
        &mut trie(ebpf, names::GEO_V6)?,
        names::GEO_V6,
        v6,
        &mut written.v6,
    )?;
    // After the trie, as for IPv4: an entry marked deeper, or none, sends the lookup on to it.
    let directories = v6_directories(
        db.v6_prefixes()
            .map(|(net, c)| (net, value(classes, c).class)),
    );
    write_directory(
        ebpf,
        names::GEO_V6_32,
        GEO_V6_32_LINES,
        &directories.slash32,
    )?;
    write_directory(
        ebpf,
        names::GEO_V6_48,
        GEO_V6_48_LINES,
        &directories.slash48,
    )
}

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

/// Makes the directory map `name` (of `lines` lines) hold `entries`: only the lines that
/// differ from what the kernel's map holds are written.
fn write_directory(
    ebpf: &mut Ebpf,
    name: &'static str,
    lines: u32,
    entries: &HashMap<u64, u8>,
) -> Result<(), GeoMapsError> {
    let (table, full) = v6_directory_lines(entries, lines);
    if full > 0 {
        tracing::warn!(
            map = name,
            entries = entries.len(),
            left_to_the_trie = full,
            "IPv6 geo directory lines are full: their other prefixes are looked up in the trie"
        );
    }
    write_changed(ebpf, name, &table)
}

/// The prefixes in a trie with their values (keys that do not make a prefix are skipped: they
/// cannot be ours).
fn pinned<K: aya::Pod, N: std::hash::Hash + Eq>(
    trie: &LpmTrie<&mut MapData, K, GeoValue>,
    name: &'static str,
    prefix: impl Fn(&Key<K>) -> Option<N>,
) -> Result<HashMap<N, GeoValue>, GeoMapsError> {
    let mut all = HashMap::new();
    for entry in trie.iter() {
        let (key, value) = entry.map_err(|source| GeoMapsError::Map { name, source })?;
        if let Some(net) = prefix(&key) {
            all.insert(net, value);
        }
    }
    Ok(all)
}

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

/// Writes the entries of the array map `name` that differ from `table` (read back rather than
/// remembered: the pinned map may be a previous agent's, and a copy would cost the agent as much
/// memory as the map).
fn write_changed<V: aya::Pod + PartialEq>(
    ebpf: &mut Ebpf,
    name: &'static str,
    table: &[V],
) -> Result<(), GeoMapsError> {
    let map = match ebpf
        .map_mut(name)
        .ok_or(GeoMapsError::MissingMap { name })?
    {
        aya::maps::Map::Array(data) => data,
        _ => return Err(GeoMapsError::MissingMap { name }),
    };
    let err = |source| GeoMapsError::Map { name, source };
    let mut changed: Vec<(u32, V)> = Vec::new();
    crate::dataplane::batch::for_each::<u32, V>(map, |&index, old| {
        if let Some(new) = table.get(index as usize) {
            if new != old {
                changed.push((index, *new));
            }
        }
    })
    .map_err(err)?;
    let (indexes, values): (Vec<u32>, Vec<V>) = changed.into_iter().unzip();
    crate::dataplane::batch::update_array(map, &indexes, &values).map_err(err)
}

/// Writes the `entries` whose value differs from what `written` says the trie holds, then
/// removes what `written` held and `entries` does not.
fn replace<N, K>(
    trie: &mut LpmTrie<&mut MapData, K, GeoValue>,
    name: &'static str,
    entries: impl Iterator<Item = (N, Key<K>, GeoValue)>,
    written: &mut HashMap<N, GeoValue>,
) -> Result<(), GeoMapsError>
where
    N: std::hash::Hash + Eq + Copy + PrefixKey<K>,
    K: aya::Pod,
{
    let err = |source| GeoMapsError::Map { name, source };
    let mut now = HashMap::with_capacity(written.len());
    for (net, key, value) in entries {
        if written.get(&net) != Some(&value) {
            trie.insert(&key, value, 0).map_err(err)?;
        }
        now.insert(net, value);
    }
    for stale in written.keys().filter(|net| !now.contains_key(net)) {
        match trie.remove(&stale.key()) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(err(e)),
        }
    }
    *written = now;
    Ok(())
}

/// The trie key of a prefix.
trait PrefixKey<K> {
    fn key(&self) -> Key<K>;
}

impl PrefixKey<[u8; 4]> for Ipv4Net {
    fn key(&self) -> Key<[u8; 4]> {
        Key::new(u32::from(self.prefix_len()), self.network().octets())
    }
}

impl PrefixKey<[u8; 16]> for Ipv6Net {
    fn key(&self) -> Key<[u8; 16]> {
        Key::new(u32::from(self.prefix_len()), self.network().octets())
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ipnet::{IpNet, Ipv4Net};

    use super::{slash24_class, slash24_table, GEO_V4_DEEPER};
    use crate::{balancing::plan::GeoClasses, geo::GeoDb, model::Country};

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    fn net(s: &str) -> Result<Ipv4Net> {
        Ok(s.parse()?)
    }

    #[test]
    fn longer_prefixes_paint_over_the_ones_that_cover_them_in_any_order() -> Result {
        let table = slash24_table([
            (net("10.1.2.0/24")?, 3),
            (net("10.1.0.0/16")?, 2),
            (net("10.0.0.0/8")?, 1),
            (net("10.1.2.128/25")?, 4),
            (net("10.9.9.9/32")?, 5),
        ]);
        let class = |a: [u8; 4]| slash24_class(&table, Ipv4Addr::from(a));
        assert_eq!(class([10, 200, 0, 1]), Some(1));
        assert_eq!(class([10, 1, 7, 1]), Some(2));
        // A /24 split by a /25: the trie answers for the whole /24, both halves.
        assert_eq!(class([10, 1, 2, 1]), Some(GEO_V4_DEEPER));
        assert_eq!(class([10, 1, 2, 200]), Some(GEO_V4_DEEPER));
        assert_eq!(class([10, 9, 9, 1]), Some(GEO_V4_DEEPER));
        assert_eq!(class([10, 9, 8, 1]), Some(1));
        assert_eq!(class([11, 0, 0, 1]), Some(0));
        assert_eq!(class([255, 255, 255, 255]), Some(0));
        Ok(())
    }

    #[test]
    fn the_whole_space_and_its_last_slash24_are_covered() -> Result {
        let table = slash24_table([(net("0.0.0.0/0")?, 7), (net("255.255.255.0/24")?, 8)]);
        assert_eq!(slash24_class(&table, Ipv4Addr::new(0, 0, 0, 0)), Some(7));
        assert_eq!(slash24_class(&table, Ipv4Addr::new(128, 3, 4, 5)), Some(7));
        assert_eq!(
            slash24_class(&table, Ipv4Addr::new(255, 255, 255, 9)),
            Some(8)
        );
        Ok(())
    }

    #[test]
    fn a_class_that_would_read_as_deeper_is_stored_as_unknown() -> Result {
        let table = slash24_table([(net("10.0.0.0/8")?, 255), (net("11.0.0.0/8")?, 300)]);
        assert_eq!(slash24_class(&table, Ipv4Addr::new(10, 1, 1, 1)), Some(0));
        assert_eq!(slash24_class(&table, Ipv4Addr::new(11, 1, 1, 1)), Some(0));
        Ok(())
    }

    /// Random nested IPv6 prefixes of /16 to /64: wherever a directory gives a class, it is
    /// the database's own longest-prefix answer, and each level answers for some.
    #[test]
    fn the_ipv6_directories_answer_as_the_database_does() -> Result {
        use std::net::Ipv6Addr;

        use ipnet::Ipv6Net;

        use super::{v6_directories, v6_directory_class};

        let countries: Vec<Country> = ["AR", "BR", "DE", "JP", "US"]
            .iter()
            .map(|c| c.parse())
            .collect::<std::result::Result<_, _>>()?;
        let mut rng = fastrand::Rng::with_seed(48);
        // Clustered in 2a01::/20 so that prefixes nest and split /32s and /48s.
        let base: u128 = 0x2a01 << 112;
        let random = |rng: &mut fastrand::Rng| base | u128::from(rng.u64(..1 << 40)) << 68;
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3000 {
            let len = [16, 22, 29, 32, 36, 40, 44, 48, 56, 64][rng.usize(..10)];
            let net = Ipv6Net::new(Ipv6Addr::from(random(&mut rng)), len)?.trunc();
            if seen.insert(net) {
                entries.push((IpNet::V6(net), countries[rng.usize(..countries.len())]));
            }
        }
        let db = GeoDb::from_entries(entries)?;
        let classes = GeoClasses::new(db.countries());
        let class_of = |c: Country| classes.class_of(c).unwrap_or(0);
        let d = v6_directories(db.v6_prefixes().map(|(n, c)| (n, class_of(c))));
        let (mut answered, mut trie) = (0, 0);
        for _ in 0..50_000 {
            let addr = Ipv6Addr::from(random(&mut rng) | u128::from(rng.u64(..)));
            let expected = db.lookup(IpAddr::V6(addr)).map_or(0, class_of);
            match v6_directory_class(&d, addr) {
                Some(class) => {
                    assert_eq!(u16::from(class), expected, "{addr}");
                    answered += 1;
                }
                None => trie += 1,
            }
        }
        let split = d.slash32.values().filter(|&&c| c == GEO_V4_DEEPER).count();
        assert!(
            answered > 10_000 && trie > 1_000 && split > 100 && d.slash48.len() > 1_000,
            "{answered} answered, {trie} left to the trie, {split} split /32s, {} /48s",
            d.slash48.len()
        );
        Ok(())
    }

    /// Every entry is in its line or counted as left out, and a lookup finds what was placed.
    #[test]
    fn directory_lines_hold_what_fits_and_count_the_rest() -> Result {
        use std::collections::HashMap;

        use edge_common::geo::{v6_dir_find, v6_dir_line};

        use super::v6_directory_lines;

        // 4 lines of 8 slots for 40 keys: some lines overflow.
        let entries: HashMap<u64, u8> = (0..40u64)
            .map(|k| (0x2a01_0000 + k * 7, (k % 250) as u8))
            .collect();
        let (table, full) = v6_directory_lines(&entries, 4);
        let found = entries
            .iter()
            .filter(|(&key, &class)| {
                let line = &table[v6_dir_line(key, 4) as usize];
                match v6_dir_find(line, key) {
                    Some(c) => {
                        assert_eq!(c, class, "{key:x}");
                        true
                    }
                    None => false,
                }
            })
            .count();
        assert_eq!(found, 32, "every slot used");
        assert_eq!(full, 8, "the rest counted");
        // Class 0 and 255 are values like any other.
        let entries = HashMap::from([(1u64, 0u8), (2, 255)]);
        let (table, full) = v6_directory_lines(&entries, 1 << 10);
        assert_eq!(full, 0);
        for (key, class) in entries {
            assert_eq!(
                v6_dir_find(&table[v6_dir_line(key, 1 << 10) as usize], key),
                Some(class)
            );
        }
        Ok(())
    }

    /// Random nested prefixes: wherever the table gives a class, it is the database's own
    /// longest-prefix answer.
    #[test]
    fn the_table_answers_as_the_database_does() -> Result {
        let countries: Vec<Country> = ["AR", "BR", "DE", "JP", "US"]
            .iter()
            .map(|c| c.parse())
            .collect::<std::result::Result<_, _>>()?;
        let mut rng = fastrand::Rng::with_seed(24);
        let mut entries = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3000 {
            // Clustered in 10.0.0.0/12 so that prefixes nest and split /24s.
            let addr = Ipv4Addr::from(0x0a00_0000 | rng.u32(..1 << 20));
            let len = rng.u8(12..=30);
            let net = Ipv4Net::new(addr, len)?.trunc();
            if seen.insert(net) {
                entries.push((IpNet::V4(net), countries[rng.usize(..countries.len())]));
            }
        }
        let db = GeoDb::from_entries(entries)?;
        let classes = GeoClasses::new(db.countries());
        let class_of = |c: Country| classes.class_of(c).unwrap_or(0);
        let table = slash24_table(db.v4_prefixes().map(|(n, c)| (n, class_of(c))));
        let (mut direct, mut deeper) = (0, 0);
        for _ in 0..50_000 {
            let addr = Ipv4Addr::from(0x0a00_0000 | rng.u32(..1 << 21));
            let expected = db.lookup(IpAddr::V4(addr)).map_or(0, class_of);
            match slash24_class(&table, addr) {
                Some(GEO_V4_DEEPER) => deeper += 1,
                Some(class) => {
                    assert_eq!(u16::from(class), expected, "{addr}");
                    direct += 1;
                }
                None => return Err(format!("{addr}: outside the table").into()),
            }
        }
        assert!(
            direct > 10_000 && deeper > 1_000,
            "{direct} direct, {deeper} deeper"
        );
        Ok(())
    }
}
