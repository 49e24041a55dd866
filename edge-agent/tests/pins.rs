//! Pinned maps across agents: a map pinned with another layout or size (an older agent, a new
//! `flows.max_entries`) is replaced, a matching one is reused with its contents. Needs root and
//! bpffs.

use std::{
    ffi::CString,
    mem::size_of,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, MapInfo};
use edge_agent::{
    dataplane::pins::PinDir, dataplane::programs, dataplane::programs::MapSizes,
    dataplane::syscall::bpf,
};
use edge_common::{names, FlowValue, ServiceKey, ServiceValue};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

/// A pin root of this test's own, removed at the end.
struct Pins(PinDir);

impl Pins {
    fn new(what: &str) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = PinDir::new(format!(
            "/sys/fs/bpf/edgeproxy-test-{what}-{}",
            std::process::id()
        ));
        dir.create()?;
        Ok(Pins(dir))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

/// Creates an LRU hash map of the given shape and pins it at `path`, as an older agent whose
/// flow key was another size would have.
fn pin_lru_hash(path: &Path, key_size: u32, value_size: u32, max_entries: u32) -> TestResult {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let mut create = Create {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    // SAFETY: the attribute carries no pointers; the result is a new descriptor, ours.
    let map = unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &mut create)? as i32) };
    let path = CString::new(path.as_os_str().as_bytes())?;
    let mut pin = Pin {
        pathname: path.as_ptr() as u64,
        bpf_fd: map.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: the path outlives the call; the pin keeps the map once `map` is closed.
    unsafe { bpf(BPF_OBJ_PIN, &mut pin)? };
    Ok(())
}

fn sizes(flows: u32) -> MapSizes {
    MapSizes {
        flows,
        half_open: 4096,
        maglev: 2 * 8 * 1021,
        affinity: 1024,
    }
}

#[test]
fn a_pinned_map_of_another_shape_is_replaced_and_a_matching_one_kept() -> TestResult {
    let pins = Pins::new("shapes")?;
    let service = ServiceKey {
        addr: [7; 16],
        port: 80u16.to_be(),
        proto: 6,
        _pad: 0,
    };
    {
        let mut ebpf = programs::load_object(Some(&pins.0), sizes(4096))?;
        let mut services: BpfHashMap<_, ServiceKey, ServiceValue> =
            BpfHashMap::try_from(ebpf.map_mut(names::SERVICES).ok_or("no SERVICES")?)?;
        services.insert(
            service,
            ServiceValue {
                service_id: 3,
                flags: 0,
            },
            0,
        )?;
    }
    // An older agent's flow table: 40-byte keys.
    let flows_pin = pins.0.map(names::FLOWS);
    std::fs::remove_file(&flows_pin)?;
    pin_lru_hash(&flows_pin, 40, size_of::<FlowValue>() as u32, 4096)?;

    let retired = programs::retire_mismatched_pins(&pins.0, sizes(4096))?;
    let names: Vec<&str> = retired.iter().map(|m| m.name).collect();
    assert_eq!(names, [names::FLOWS], "only the flow table: {retired:?}");
    assert_eq!(
        (retired[0].pinned.key_size, retired[0].wanted.key_size),
        (40, 36)
    );

    let ebpf = programs::load_object(Some(&pins.0), sizes(4096))?;
    assert_eq!(
        MapInfo::from_pin(&flows_pin)?.key_size(),
        36,
        "a new flow table"
    );
    let services: BpfHashMap<_, ServiceKey, ServiceValue> =
        BpfHashMap::try_from(ebpf.map(names::SERVICES).ok_or("no SERVICES")?)?;
    assert_eq!(
        services.get(&service, 0)?.service_id,
        3,
        "the matching map kept its contents"
    );
    drop(ebpf);

    // A new flow-table size takes effect the same way.
    let retired = programs::retire_mismatched_pins(&pins.0, sizes(8192))?;
    assert_eq!(
        retired
            .iter()
            .map(|m| (m.name, m.pinned.max_entries, m.wanted.max_entries))
            .collect::<Vec<_>>(),
        [(names::FLOWS, 4096, 8192)]
    );
    programs::load_object(Some(&pins.0), sizes(8192))?;
    assert_eq!(MapInfo::from_pin(&flows_pin)?.max_entries(), 8192);
    assert!(
        programs::retire_mismatched_pins(&pins.0, sizes(8192))?.is_empty(),
        "nothing left to replace"
    );
    Ok(())
}
