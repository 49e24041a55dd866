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

mod directories;
mod slash24;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        MapData, MapError,
    },
    Ebpf,
};
use edge_common::{
    geo::{GeoValue, GEO_V6_32_LINES, GEO_V6_48_LINES},
    names,
};
use ipnet::{Ipv4Net, Ipv6Net};

pub use self::{
    directories::{v6_directories, v6_directory_class, v6_directory_lines, V6Directories},
    slash24::{slash24_class, slash24_table},
};
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
