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
    let err = |name| move |source| GeoMapsError::Map { name, source };
    {
        let mut v4 = trie::<[u8; 4]>(ebpf, names::GEO_V4)?;
        let mut now = HashSet::with_capacity(db.v4_prefixes().len());
        for (net, country) in db.v4_prefixes() {
            let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
            v4.insert(&key, value(classes, country), 0)
                .map_err(err(names::GEO_V4))?;
            now.insert(net);
        }
        for stale in written.v4.difference(&now) {
            let key = Key::new(u32::from(stale.prefix_len()), stale.network().octets());
            match v4.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => {
                    return Err(GeoMapsError::Map {
                        name: names::GEO_V4,
                        source: e,
                    })
                }
            }
        }
        written.v4 = now;
    }
    let mut v6 = trie::<[u8; 16]>(ebpf, names::GEO_V6)?;
    let mut now = HashSet::with_capacity(db.v6_prefixes().len());
    for (net, country) in db.v6_prefixes() {
        let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
        v6.insert(&key, value(classes, country), 0)
            .map_err(err(names::GEO_V6))?;
        now.insert(net);
    }
    for stale in written.v6.difference(&now) {
        let key = Key::new(u32::from(stale.prefix_len()), stale.network().octets());
        match v6.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => {
                return Err(GeoMapsError::Map {
                    name: names::GEO_V6,
                    source: e,
                })
            }
        }
    }
    written.v6 = now;
    Ok(())
}
