//! Every map of the data plane. Sizes that depend on the deployment (the flow table, the Maglev
//! rings) are set by the agent at load time; the sizes here are the defaults.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use edge_common::{
    limits::{DEFAULT_FLOWS, MAX_BACKENDS, MAX_RINGS, MAX_SERVICES},
    BackendStats, BackendValue, DropStats, FlowKey, FlowValue, PopConfig, ServiceKey, ServiceStats,
    ServiceValue,
};

#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { MAX_SERVICES as usize }> = HashMap::new();

#[btf_map]
pub static BACKENDS: Array<BackendValue, { MAX_BACKENDS as usize }> = Array::new();

/// `MAX_RINGS` rings of `PopConfig::ring_size` slots each, holding backend ids.
#[btf_map]
pub static MAGLEV: Array<u32, { (MAX_RINGS * 1021) as usize }> = Array::new();

#[btf_map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue, { DEFAULT_FLOWS as usize }> = LruHashMap::new();

#[btf_map]
pub static POP_CONFIG: Array<PopConfig, 1> = Array::new();

#[btf_map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

#[btf_map]
pub static DROP_STATS: PerCpuArray<DropStats, 1> = PerCpuArray::new();
