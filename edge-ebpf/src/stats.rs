//! Per-CPU packet counters, indexed as `edge_common::stats` documents.

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use edge_common::{
    stats::{stats_index, L3Class, L4Class},
    Counters, STATS_ENTRIES,
};

#[btf_map]
static EDGE_STATS: PerCpuArray<Counters, { STATS_ENTRIES as usize }> = PerCpuArray::new();

#[inline(always)]
pub fn count(l3: L3Class, l4: L4Class, action: u32, frame_len: usize) {
    if let Some(slot) = EDGE_STATS.get_ptr_mut(stats_index(l3, l4, action)) {
        // SAFETY: per-CPU slot, only this CPU writes it while this program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += frame_len as u64;
        }
    }
}
