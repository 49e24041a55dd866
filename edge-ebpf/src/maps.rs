//! Every map of the data plane. Sizes that depend on the deployment (the flow table, the Maglev
//! rings) are set by the agent at load time; the sizes here are the defaults.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
    maps::lpm_trie::Key,
};
use edge_common::{
    geo::{
        AffinityKey, AffinityValue, GeoValue, GEO_CLASSES, GEO_V4_SLASH24_WORDS, GEO_V6_32_LINES,
        GEO_V6_48_LINES, V6_DIR_SLOTS,
    },
    limits::{
        DEFAULT_AFFINITY, DEFAULT_FLOWS, MAX_BACKENDS, MAX_GEO_PREFIXES, MAX_RINGS, MAX_SERVICES,
    },
    BackendStats, BackendValue, DropStats, FlowKey, FlowValue, PopConfig, ServiceKey, ServiceStats,
    ServiceValue,
};

#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue, { MAX_SERVICES as usize }> = HashMap::new();

/// A bit per TCP port (`port / 64` -> word, `port % 64` -> bit), set for every port a service
/// has used: what is not marked is not ours, and costs one array load instead of two hash
/// misses. The agent only sets bits: a removed service's flows keep being translated until they
/// end, and a stale bit costs only what every packet cost before this map.
#[btf_map]
pub static SERVICE_PORTS: Array<u64, 1024> = Array::new();

#[btf_map]
pub static BACKENDS: Array<BackendValue, { MAX_BACKENDS as usize }> = Array::new();

/// `MAX_RINGS` rings of `PopConfig::ring_size` slots each, holding backend ids.
#[btf_map]
pub static MAGLEV: Array<u32, { (MAX_RINGS * 1021) as usize }> = Array::new();

/// Established connections (see `edge_common::flow`).
#[btf_map]
pub static FLOWS: FlowTable = LruHashMap::new();

/// Connections whose handshake the client has not completed: what a SYN creates. Its own LRU,
/// so that a flood of spoofed SYNs evicts only its own kind. Per-CPU LRU lists
/// (`BPF_F_NO_COMMON_LRU`, as Katran's flow table): each CPU evicts the tail of its own list, so
/// a flood arriving on one CPU churns that CPU's share of the table and its evictions take no
/// lock the other CPUs' inserts wait on.
#[btf_map]
pub static HALF_OPEN: HalfOpenTable = LruHashMap::new();

pub type FlowTable = LruHashMap<FlowKey, FlowValue, { DEFAULT_FLOWS as usize }>;
pub type HalfOpenTable =
    LruHashMap<FlowKey, FlowValue, { DEFAULT_FLOWS as usize }, { BPF_F_NO_COMMON_LRU as usize }>;

#[btf_map]
pub static POP_CONFIG: Array<PopConfig, 1> = Array::new();

#[btf_map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<BackendStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

#[btf_map]
pub static DROP_STATS: PerCpuArray<DropStats, 1> = PerCpuArray::new();

/// Client IPv4 prefix -> country class.
#[btf_map]
pub static GEO_V4: LpmTrie<[u8; 4], GeoValue, { MAX_GEO_PREFIXES as usize }> = LpmTrie::new();

/// IPv4 /24 -> country class, eight to a word (`edge_common::geo::GEO_V4_SLASH24_WORDS`);
/// `GEO_V4_DEEPER` sends the lookup on to `GEO_V4`.
#[btf_map]
pub static GEO_V4_SLASH24: Array<u64, { GEO_V4_SLASH24_WORDS as usize }> = Array::new();

/// Client IPv6 prefix -> country class.
#[btf_map]
pub static GEO_V6: LpmTrie<[u8; 16], GeoValue, { MAX_GEO_PREFIXES as usize }> = LpmTrie::new();

/// IPv6 /32 -> country class, or `GEO_V4_DEEPER` (ask `GEO_V6_48`): the trie's first level, as
/// `GEO_V4_SLASH24` is IPv4's. Lines of slots a key hashes to (`edge_common::geo::
/// GEO_V6_32_LINES`): IPv6 is too sparse to index, and a hash map's lookup is two cache misses.
#[btf_map]
pub static GEO_V6_32: Array<[u64; V6_DIR_SLOTS], { GEO_V6_32_LINES as usize }> = Array::new();

/// IPv6 /48 -> country class, or `GEO_V4_DEEPER` (ask `GEO_V6`).
#[btf_map]
pub static GEO_V6_48: Array<[u64; V6_DIR_SLOTS], { GEO_V6_48_LINES as usize }> = Array::new();

/// `service_id * GEO_CLASSES + class` -> the ring new flows of that service from that country
/// are picked from.
#[btf_map]
pub static SERVICE_RINGS: Array<u32, { (MAX_SERVICES * GEO_CLASSES) as usize }> = Array::new();

/// (service, client) -> backend bindings, refreshed on use.
#[btf_map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue, { DEFAULT_AFFINITY as usize }> =
    LruHashMap::new();

/// Per-CPU scratch space: the flow key and the two entries a new flow writes would not fit on
/// the 512-byte BPF stack beside everything else.
#[repr(C)]
pub struct NewFlowScratch {
    /// The packet's flow key (a map value can be a lookup key).
    pub key: FlowKey,
    pub value: FlowValue,
    pub reverse_key: FlowKey,
    /// The forward key of a half-open flow a new one takes the source port of.
    pub displaced: FlowKey,
    /// The sequence number of the packet a flow is being recovered for (`new_flow`'s arguments
    /// are full).
    pub recover_seq: u32,
    pub binding: AffinityKey,
    pub geo_v6: Key<[u8; 16]>,
    /// The TC hook's next-hop question and the kernel's answer.
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
}

#[btf_map]
pub static SCRATCH: PerCpuArray<NewFlowScratch, 1> = PerCpuArray::new();
