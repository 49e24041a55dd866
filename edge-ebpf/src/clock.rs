//! The data plane's clock: `bpf_jiffies64`, which the verifier turns into a single load, scaled
//! to nanoseconds by the tick length and offset the agent measured (`PopConfig::ns_per_jiffy`,
//! `clock_offset_ns`). The result follows CLOCK_MONOTONIC_COARSE to within a tick, the clock
//! the agent's sweeper compares flows against; reading that clock itself
//! (`bpf_ktime_get_coarse_ns`) costs a helper call, about 14 ns of every packet on the
//! development machine, against about 1 ns for this.

use aya_ebpf::helpers::bpf_jiffies64;
use edge_common::PopConfig;

/// Now, in CLOCK_MONOTONIC_COARSE nanoseconds (to within a tick).
#[inline(always)]
pub fn now_ns(config: &PopConfig) -> u64 {
    // SAFETY: no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    jiffies
        .wrapping_mul(u64::from(config.ns_per_jiffy))
        .wrapping_add(config.clock_offset_ns)
}
