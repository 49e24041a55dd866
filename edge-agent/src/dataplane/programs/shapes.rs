//! Pinned maps whose shape no longer matches this agent's object: aya reuses a pinned map by its
//! path without comparing, so they are unpinned before the load.

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
        let max_entries = sizes
            .overrides()
            .into_iter()
            .find_map(|(sized, n)| (sized == name).then_some(n))
            .unwrap_or_else(|| def.max_entries());
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
