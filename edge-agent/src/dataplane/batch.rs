//! Reading and deleting hash-map entries, and writing array entries, a few thousand per `bpf(2)`
//! call (`BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_DELETE_BATCH`, `BPF_MAP_UPDATE_BATCH`; aya has no
//! wrapper for them). Walking a map key by key costs two system calls per entry: sweeping the
//! few hundred thousand entries a stream of new connections leaves took about a tenth of a CPU
//! from the data plane.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    maps::{MapData, MapError},
    sys::SyscallError,
    Pod,
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Entries asked for per call.
const CHUNK: usize = 4096;

/// The batch part of `union bpf_attr` (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

impl BatchAttr {
    /// A request about `count` entries of `map`, keys at `keys`.
    fn new<K>(map: &MapData, keys: *const K, count: usize) -> Self {
        Self {
            keys: keys as u64,
            count: count as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Self::default()
        }
    }
}

fn failed(call: &'static str, io_error: io::Error) -> MapError {
    MapError::SyscallError(SyscallError { call, io_error })
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: the buffers `attr` points at are the caller's and hold `count` keys (and values).
    unsafe { crate::dataplane::syscall::bpf(cmd, attr) }.map(|_| ())
}

/// Every entry of a hash map (plain or LRU; not per-CPU). Entries added or removed during the
/// walk may or may not be seen, as with a key-by-key walk.
pub fn entries<K: Pod, V: Pod>(map: &MapData) -> Result<Vec<(K, V)>, MapError> {
    let mut out = Vec::new();
    for_each(map, |k, v| out.push((*k, *v)))?;
    Ok(out)
}

/// Calls `f` with every entry of a hash map (as `entries`) or an array map (keys are the
/// indexes), a batch at a time: the caller keeps only what it needs of each, not a copy of the
/// whole table.
pub fn for_each<K: Pod, V: Pod>(map: &MapData, mut f: impl FnMut(&K, &V)) -> Result<(), MapError> {
    let mut chunk = CHUNK;
    let mut keys: Vec<MaybeUninit<K>> = Vec::new();
    let mut values: Vec<MaybeUninit<V>> = Vec::new();
    // The kernel's position in the table (a bucket index): opaque, at most 8 bytes.
    let (mut at, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        keys.resize_with(chunk, MaybeUninit::uninit);
        values.resize_with(chunk, MaybeUninit::uninit);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const at as u64 },
            out_batch: &raw mut next as u64,
            values: values.as_mut_ptr() as u64,
            ..BatchAttr::new(map, keys.as_mut_ptr(), chunk)
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let got = (attr.count as usize).min(chunk);
        for i in 0..got {
            // SAFETY: the kernel wrote `got` keys and values.
            unsafe { f(keys[i].assume_init_ref(), values[i].assume_init_ref()) };
        }
        match result {
            Ok(()) => {}
            // The end of the table.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // One bucket holds more entries than the buffer: retry it with a larger one.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                chunk *= 2;
                continue;
            }
            Err(e) => return Err(failed("bpf_map_lookup_batch", e)),
        }
        at = next;
        first = false;
    }
}

/// Deletes `keys` from a hash map; keys already gone are skipped. Returns how many were
/// deleted.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<u64, MapError> {
    let mut deleted = 0u64;
    let mut rest = keys;
    while !rest.is_empty() {
        let n = rest.len().min(CHUNK);
        let mut attr = BatchAttr::new(map, rest.as_ptr(), n);
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = (attr.count as usize).min(n);
        deleted += done as u64;
        match result {
            Ok(()) => rest = &rest[n..],
            // The key after the deleted ones is gone already (evicted, or removed by the
            // kernel's own path): skip it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[(done + 1).min(n)..],
            Err(e) => return Err(failed("bpf_map_delete_batch", e)),
        }
    }
    Ok(deleted)
}

/// Writes `values[i]` at index `indexes[i]` of an array map (the two slices pair up to the
/// shorter one's length).
pub fn update_array<V: Pod>(map: &MapData, indexes: &[u32], values: &[V]) -> Result<(), MapError> {
    update(map, indexes, values)
}

/// Writes `values[i]` under `keys[i]` of a hash or array map, creating entries that are not
/// there (the two slices pair up to the shorter one's length).
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> Result<(), MapError> {
    let n = keys.len().min(values.len());
    for (keys, values) in keys[..n].chunks(CHUNK).zip(values[..n].chunks(CHUNK)) {
        let mut attr = BatchAttr {
            values: values.as_ptr() as u64,
            ..BatchAttr::new(map, keys.as_ptr(), keys.len())
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr).map_err(|e| failed("bpf_map_update_batch", e))?;
    }
    Ok(())
}

/// Deletes the entries whose value `doomed` picks; returns how many it picked (an entry gone
/// before its turn counts: it is gone).
pub fn delete_where<K: Pod, V: Pod>(
    map: &MapData,
    doomed: impl Fn(&V) -> bool,
) -> Result<u64, MapError> {
    let mut keys: Vec<K> = Vec::new();
    for_each::<K, V>(map, |k, v| {
        if doomed(v) {
            keys.push(*k);
        }
    })?;
    delete(map, &keys)?;
    Ok(keys.len() as u64)
}
