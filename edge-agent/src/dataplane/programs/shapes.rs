//! Pinned maps whose shape no longer matches this agent's object: aya reuses a pinned map by its
//! path without comparing, so they are unpinned before the load.

use aya_obj::generated::BPF_F_NO_COMMON_LRU;

use super::{DataPlaneError, MapSizes, PINNED_MAPS};
use crate::dataplane::{object, pins::PinDir};

/// What the kernel needs to agree on for a map to be reused: type, key and value sizes,
/// capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// The capacity the kernel gives an LRU hash map with a list per CPU when asked for `asked`
/// entries: rounded up to a multiple of the possible CPUs, so that every list gets as many
/// (down, where rounding up would overflow). Compared with the asked figure, such a pinned map
/// would look changed on every restart on a machine whose CPU count does not divide it, and be
/// replaced by an empty one.
pub fn per_cpu_lru_entries(asked: u32, cpus: usize) -> u32 {
    let Ok(cpus) = u32::try_from(cpus.max(1)) else {
        return asked;
    };
    match asked.div_ceil(cpus).checked_mul(cpus) {
        Some(up) => up,
        None => asked / cpus * cpus,
    }
}

/// A pinned map this agent would create differently.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub name: &'static str,
    pub pinned: MapShape,
    pub wanted: MapShape,
}

/// Unpins the maps under `pins` whose shape differs from what this agent creates with `sizes`
/// (an upgrade changed a key or value type, or `flows.max_entries` changed). aya reuses a
/// pinned map by its path without comparing, and the programs would then read and write it
/// with the wrong layout. A retired map lives on while the old programs, attached through the
/// pinned links, still use it; the new programs get a new, empty one.
pub fn retire_mismatched_pins(
    pins: &PinDir,
    sizes: MapSizes,
) -> Result<Vec<Mismatch>, DataPlaneError> {
    let object = aya_obj::Object::parse(object::EDGE_EBPF)
        .map_err(|e| DataPlaneError::Object(Box::new(e)))?;
    let mut retired = Vec::new();
    for &name in PINNED_MAPS {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| DataPlaneError::PinnedMap {
            name,
            path: path.clone(),
            source,
        };
        let Some(def) = object.maps.get(name) else {
            return Err(failed("not in this agent's eBPF object".into()));
        };
        let asked = sizes
            .overrides()
            .into_iter()
            .find_map(|(sized, n)| (sized == name).then_some(n))
            .unwrap_or_else(|| def.max_entries());
        let max_entries = if def.map_flags() & BPF_F_NO_COMMON_LRU != 0 {
            let cpus = aya::util::nr_cpus().map_err(|(_, e)| failed(Box::new(e)))?;
            per_cpu_lru_entries(asked, cpus)
        } else {
            asked
        };
        let wanted = MapShape {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries,
        };
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| failed(Box::new(e)))?;
        let pinned = MapShape {
            map_type: info.map_type().map_err(|e| failed(Box::new(e)))? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if pinned != wanted {
            std::fs::remove_file(&path).map_err(|e| failed(Box::new(e)))?;
            retired.push(Mismatch {
                name,
                pinned,
                wanted,
            });
        }
    }
    Ok(retired)
}

#[cfg(test)]
mod tests {
    use super::per_cpu_lru_entries;

    #[test]
    fn a_per_cpu_lru_map_holds_a_multiple_of_the_cpus() {
        assert_eq!(per_cpu_lru_entries(1_000_000, 2), 1_000_000);
        assert_eq!(per_cpu_lru_entries(4097, 2), 4098);
        assert_eq!(per_cpu_lru_entries(131_072, 3), 131_073);
        assert_eq!(per_cpu_lru_entries(5, 1), 5);
        assert_eq!(per_cpu_lru_entries(u32::MAX, 2), u32::MAX - 1);
        assert_eq!(per_cpu_lru_entries(7, 0), 7);
    }
}
