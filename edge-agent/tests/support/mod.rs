//! The harness the packet tests share: the data plane loaded with private (unpinned) maps, so
//! that every test starts from empty tables and zero counters; frames through its programs by
//! `BPF_PROG_TEST_RUN`; reads of its flow tables and drop counters. On top of it, `nat` holds
//! the full-NAT tests' services and frames and `icmp` the ICMP errors they build and parse;
//! `register` is the registration API of the DNS and registration tests.

#![allow(
    dead_code,
    unused_imports,
    unused_macros,
    reason = "each test file uses its own part of the harness"
)]

#[macro_use]
pub mod nat;
pub mod icmp;
pub mod register;

use std::net::Ipv6Addr;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    Ebpf,
};
use edge_agent::{
    dataplane::{
        maps::{counters, services::Reconciler},
        programs::{self, MapSizes},
    },
    testing::{test_run, FrameRun},
};
use edge_common::{names, DropStats, FlowKey, FlowValue};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket};

pub type Error = Box<dyn std::error::Error>;
pub type TestResult = Result<(), Error>;

/// The MAC addresses of the frames the tests build: a client's, then the POP's.
pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const MAC_POP: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// The data plane's maps of `sizes`, private to this test; no program in the kernel yet.
pub fn maps(sizes: MapSizes) -> Result<Ebpf, Error> {
    Ok(programs::load_object(None, sizes)?)
}

/// [`maps`] with the XDP program loaded (through the verifier).
pub fn load(sizes: MapSizes) -> Result<Ebpf, Error> {
    load_with(sizes, false)
}

/// [`load`] with the programs' debug records switched on or off.
pub fn load_with(sizes: MapSizes, debug_log: bool) -> Result<Ebpf, Error> {
    let mut ebpf = programs::load_object_with(None, sizes, debug_log)?;
    programs::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
    Ok(ebpf)
}

/// [`load`] and the agent's reconciler over the new maps, with tables of `table_size` slots.
pub fn serving(sizes: MapSizes, table_size: u32) -> Result<(Ebpf, Reconciler), Error> {
    let mut ebpf = load(sizes)?;
    let reconciler = Reconciler::recover(&mut ebpf, table_size)?;
    Ok((ebpf, reconciler))
}

/// `frame` once through the XDP program.
pub fn xdp(ebpf: &mut Ebpf, frame: &[u8]) -> Result<FrameRun, Error> {
    let program = programs::xdp_program(ebpf, names::XDP_INGRESS)?;
    Ok(test_run(program, frame, 1)?)
}

/// `frame` once through the TC program `name`.
pub fn tc(ebpf: &mut Ebpf, name: &'static str, frame: &[u8]) -> Result<FrameRun, Error> {
    let program = programs::tc_program(ebpf, name)?;
    Ok(test_run(program, frame, 1)?)
}

/// The flow table `name` (`FLOWS` or `HALF_OPEN`), to change.
pub fn flow_table<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<BpfHashMap<&'e mut MapData, FlowKey, FlowValue>, Error> {
    let map = ebpf.map_mut(name).ok_or(format!("no {name} map"))?;
    Ok(BpfHashMap::try_from(map)?)
}

/// Every entry of the flow table `name`.
pub fn flow_entries(ebpf: &Ebpf, name: &'static str) -> Result<Vec<(FlowKey, FlowValue)>, Error> {
    let map = ebpf.map(name).ok_or(format!("no {name} map"))?;
    let table: BpfHashMap<&MapData, FlowKey, FlowValue> = BpfHashMap::try_from(map)?;
    Ok(table.iter().collect::<Result<_, _>>()?)
}

/// The drop counters, summed over the CPUs.
pub fn drops(ebpf: &Ebpf) -> Result<DropStats, Error> {
    let map = ebpf.map(names::DROP_STATS).ok_or("no DROP_STATS map")?;
    let map: PerCpuArray<&MapData, DropStats> = PerCpuArray::try_from(map)?;
    Ok(counters::sum_per_cpu(&map, 0)?)
}

/// A SYN from `client`:`sport` to `vip`:80 (ISN 1, no options).
pub fn syn4_from(client: [u8; 4], vip: [u8; 4], sport: u16) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(client, vip, 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .write(&mut frame, &[])?;
    Ok(frame)
}

/// [`syn4_from`] for an IPv6 client and VIP.
pub fn syn6_from(client: Ipv6Addr, vip: [u8; 16], sport: u16) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv6(client.octets(), vip, 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .write(&mut frame, &[])?;
    Ok(frame)
}

/// Where a translated frame goes: its IPv6 destination, `None` for a frame out that is not IPv6
/// (an IPv4 client's packet the program did not translate).
pub fn ipv6_destination(out: &FrameRun) -> Result<Option<Ipv6Addr>, Error> {
    Ok(match SlicedPacket::from_ethernet(&out.data_out)?.net {
        Some(NetSlice::Ipv6(ip)) => Some(Ipv6Addr::from(ip.header().destination())),
        _ => None,
    })
}
