//! Compiles a country database into the kernel's geo tries: prefix -> country class.
//!
//! A reload writes every prefix of the new database and then removes the ones it no longer has,
//! so lookups keep answering (with the old or the new country) while it runs.

use std::collections::HashSet;

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        MapData, MapError,
    },
    Ebpf,
};
use edge_common::{geo::GeoValue, names};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::{balancer::GeoClasses, geo::GeoDb};

/// The prefixes currently in the tries.
#[derive(Default)]
pub struct Written {
    v4: HashSet<Ipv4Net>,
    v6: HashSet<Ipv6Net>,
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

/// Makes the tries hold exactly `db`, classified by `classes`.
pub fn write(
    ebpf: &mut Ebpf,
    db: &GeoDb,
    classes: &GeoClasses,
    written: &mut Written,
) -> Result<(), GeoMapsError> {
    let v4 = db
        .v4_prefixes()
        .map(|(net, c)| (net, net.key(), value(classes, c)));
    replace(
        &mut trie(ebpf, names::GEO_V4)?,
        names::GEO_V4,
        v4,
        &mut written.v4,
    )?;
    let v6 = db
        .v6_prefixes()
        .map(|(net, c)| (net, net.key(), value(classes, c)));
    replace(
        &mut trie(ebpf, names::GEO_V6)?,
        names::GEO_V6,
        v6,
        &mut written.v6,
    )
}

/// Writes `entries` into `trie`, then removes what `written` held and `entries` does not.
fn replace<N, K>(
    trie: &mut LpmTrie<&mut MapData, K, GeoValue>,
    name: &'static str,
    entries: impl Iterator<Item = (N, Key<K>, GeoValue)>,
    written: &mut HashSet<N>,
) -> Result<(), GeoMapsError>
where
    N: std::hash::Hash + Eq + Copy + PrefixKey<K>,
    K: aya::Pod,
{
    let err = |source| GeoMapsError::Map { name, source };
    let mut now = HashSet::with_capacity(written.len());
    for (net, key, value) in entries {
        trie.insert(&key, value, 0).map_err(err)?;
        now.insert(net);
    }
    for stale in written.difference(&now) {
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
