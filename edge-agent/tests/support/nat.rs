//! The full-NAT packet tests' part of the harness (`nat.rs`, `handshake.rs`, `icmp.rs`): the
//! data plane filled by the agent's own reconciler with two services and a port without
//! backends, client and backend frames, and an independent parser (`etherparse`) that checks
//! every output frame's headers and checksums.

use std::net::{IpAddr, Ipv6Addr};

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};
use edge_agent::{
    agent::static_plan, config::AgentConfig, config::BackendConfig, config::ServiceConfig,
    dataplane::maps::services::PopSettings, dataplane::maps::services::Reconciler,
    dataplane::programs, dataplane::programs::MapSizes, testing::lab_pop,
};
use edge_common::{flow::FLOW_REVERSE, names, DropStats, FlowKey, FlowValue};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};

pub use super::{Error, TestResult, MAC_CLIENT, MAC_POP};

pub const TC_ACT_REDIRECT: u32 = 7;
pub const TC_ACT_SHOT: u32 = 2;
pub const CLIENT4: [u8; 4] = [198, 51, 100, 7];
pub const VIP4: [u8; 4] = [198, 18, 0, 10];
pub const CLIENT6: &str = "2001:db8:1::7";
pub const VIP6: &str = "2001:db8:ff::10";
pub const OVERLAY: &str = "fd00:ee::1";
pub const TABLE_SIZE: u32 = 1021;
pub const MSS_CLAMP: u16 = 1360;

pub fn v6(s: &str) -> Result<[u8; 16], Error> {
    Ok(s.parse::<Ipv6Addr>()?.octets())
}

pub fn backend(name: &str, last: u8) -> BackendConfig {
    BackendConfig {
        name: name.into(),
        addr: Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, u16::from(last)),
        port: 8080,
        weight: 1,
        region: None,
        country: None,
        soft_limit: 10_000,
        hard_limit: 100_000,
        health_check: None,
    }
}

pub fn services() -> Result<Vec<ServiceConfig>, Error> {
    let backends = vec![backend("be2", 2), backend("be3", 3), backend("be4", 4)];
    Ok(vec![
        ServiceConfig {
            name: "web4".into(),
            vip: IpAddr::from(VIP4),
            port: 80,
            backends: backends.clone(),
            health_check: None,
        },
        ServiceConfig {
            name: "web6".into(),
            vip: VIP6.parse()?,
            port: 80,
            backends,
            health_check: None,
        },
        ServiceConfig {
            name: "empty".into(),
            vip: IpAddr::from(VIP4),
            port: 81,
            backends: Vec::new(),
            health_check: None,
        },
    ])
}

/// The two programs that translate client packets; every forward test runs against both.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    Xdp,
    Tc,
}

/// What a forward program did with a frame, whichever hook ran it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Up the kernel's stack (Verdict::Pass, TC_ACT_OK).
    Pass,
    Drop,
    /// Forwarded by the program itself (TC_ACT_REDIRECT).
    Redirect,
    Other(u32),
}

/// The data plane loaded with private maps, filled by the agent's reconciler.
pub struct Nat {
    pub ebpf: Ebpf,
    pub hook: Hook,
    pub reconciler: Reconciler,
    pub pop: PopSettings,
}

impl Nat {
    pub fn new(hook: Hook) -> Result<Self, Error> {
        Self::with_flows(hook, 4096)
    }

    pub fn with_flows(hook: Hook, flows: u32) -> Result<Self, Error> {
        Self::with(hook, flows, None)
    }

    /// In a network namespace of its own (this test's thread only): the TC program asks the
    /// kernel's routing for the next hop, and the answer must not depend on the machine's
    /// routes. With none (forwarding off), the translated packet goes up the stack, like XDP's.
    pub fn with(
        hook: Hook,
        flows: u32,
        snat_prefix: Option<ipnet::Ipv6Net>,
    ) -> Result<Self, Error> {
        // SAFETY: plain syscall; it moves only the calling thread to a new namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        let sizes = MapSizes {
            flows,
            half_open: flows,
            maglev: 2 * 8 * TABLE_SIZE,
            affinity: 1024,
        };
        let (mut ebpf, mut reconciler) = super::serving(sizes, TABLE_SIZE)?;
        programs::tc_program(&mut ebpf, names::TC_FORWARD)?;
        programs::tc_program(&mut ebpf, names::TC_REPLY)?;
        let pop = PopSettings {
            overlay_addr: OVERLAY.parse()?,
            mss_clamp: MSS_CLAMP,
            port_max: 32_767,
            snat_prefix,
            ..lab_pop()
        };
        let config = AgentConfig {
            services: services()?,
            ..AgentConfig::default()
        };
        let applied = reconciler.apply(&mut ebpf, &pop, &static_plan(&config))?;
        assert_eq!(applied.services, 3, "services applied: {applied:?}");
        assert!(applied.rejected.is_empty(), "{:?}", applied.rejected);
        Ok(Nat {
            ebpf,
            hook,
            reconciler,
            pop,
        })
    }

    /// A client frame through this test's forward program.
    pub fn forward(&mut self, frame: &[u8]) -> Result<(Verdict, Vec<u8>), Error> {
        let (out, verdict): (_, fn(u32) -> Verdict) = match self.hook {
            Hook::Xdp => (super::xdp(&mut self.ebpf, frame)?, |r| match r {
                1 => Verdict::Drop,
                2 => Verdict::Pass,
                other => Verdict::Other(other),
            }),
            Hook::Tc => (
                super::tc(&mut self.ebpf, names::TC_FORWARD, frame)?,
                |r| match r {
                    0 => Verdict::Pass,
                    2 => Verdict::Drop,
                    TC_ACT_REDIRECT => Verdict::Redirect,
                    other => Verdict::Other(other),
                },
            ),
        };
        Ok((verdict(out.retval), out.data_out))
    }

    /// A backend's frame through the reply program.
    pub fn tc(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>), Error> {
        let out = super::tc(&mut self.ebpf, names::TC_REPLY, frame)?;
        Ok((out.retval, out.data_out))
    }

    /// The table of established connections.
    pub fn flows(&mut self) -> Result<BpfHashMap<&mut MapData, FlowKey, FlowValue>, Error> {
        super::flow_table(&mut self.ebpf, names::FLOWS)
    }

    /// The table of connections whose handshake is not complete.
    pub fn half_open(&mut self) -> Result<BpfHashMap<&mut MapData, FlowKey, FlowValue>, Error> {
        super::flow_table(&mut self.ebpf, names::HALF_OPEN)
    }

    /// Every entry of both tables.
    pub fn entries(&mut self) -> Result<Vec<(FlowKey, FlowValue)>, Error> {
        let mut all = self.established()?;
        all.extend(super::flow_entries(&self.ebpf, names::HALF_OPEN)?);
        Ok(all)
    }

    /// The entries of `FLOWS` only.
    pub fn established(&mut self) -> Result<Vec<(FlowKey, FlowValue)>, Error> {
        super::flow_entries(&self.ebpf, names::FLOWS)
    }

    /// Full handshakes of IPv4 clients from each of `ports`: (port, translated SYN).
    pub fn handshakes4(&mut self, ports: std::ops::Range<u16>) -> Result<Vec<(u16, Seen)>, Error> {
        ports
            .map(|sport| Ok((sport, self.handshake4(sport)?)))
            .collect()
    }

    /// The translated SYN of an IPv4 client from `sport` and the reverse key it took, with the
    /// half-open flow removed again: what a test needs to occupy that connection's candidate
    /// source ports (the first is the SYN's, the next ones follow it).
    pub fn probe_ports(&mut self, sport: u16) -> Result<(Seen, FlowKey), Error> {
        let (_, out) = self.forward(&syn4(sport, 80)?)?;
        let syn = check(&out)?;
        let entries = self.entries()?;
        let reverse = half(&entries, true)?.0;
        let mut half_open = self.half_open()?;
        for (key, _) in &entries {
            half_open.remove(key)?;
        }
        Ok((syn, reverse))
    }

    /// A whole handshake of an IPv4 client from `sport` (client ISN 1000, backend ISN 9000):
    /// SYN, the backend's SYN-ACK, the client's ACK. Returns the translated SYN.
    pub fn handshake4(&mut self, sport: u16) -> Result<Seen, Error> {
        let (_, out) = self.forward(&syn4(sport, 80)?)?;
        let syn = check(&out)?;
        let (verdict, _) = self.tc(&syn_ack_to(&syn, 64, None)?)?;
        assert_eq!(verdict, TC_ACT_REDIRECT, "the SYN-ACK of port {sport}");
        let (verdict, out) = self.forward(&segment4(sport, 1001, 9001, Flags::Ack, b"")?)?;
        assert_ne!(verdict, Verdict::Drop, "the handshake ACK of port {sport}");
        assert!(
            check(&out)?.dst.is_ipv6(),
            "the ACK of port {sport} is translated"
        );
        Ok(syn)
    }

    pub fn drops(&self) -> Result<DropStats, Error> {
        super::drops(&self.ebpf)
    }
}

pub fn syn4(sport: u16, dport: u16) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])?
        .write(&mut v, &[])?;
    Ok(v)
}

pub fn data4(sport: u16, payload: &[u8]) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(sport, 80, 1001, 64240)
        .ack(5001)
        .psh()
        .write(&mut v, payload)?;
    Ok(v)
}

/// TCP flags of a client segment built by `segment4`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flags {
    Ack,
    Fin,
    Rst,
}

/// A client segment from `sport` to the VIP's port 80 with sequence number `seq`, ACK of
/// `ack` (not for a RST), and `payload`.
pub fn segment4(
    sport: u16,
    seq: u32,
    ack: u32,
    flags: Flags,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    let builder = PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(sport, 80, seq, 64240);
    match flags {
        Flags::Ack => builder.ack(ack).write(&mut v, payload)?,
        Flags::Fin => builder.ack(ack).fin().write(&mut v, payload)?,
        Flags::Rst => builder.rst().write(&mut v, payload)?,
    }
    Ok(v)
}

pub fn syn6(sport: u16) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv6(v6(CLIENT6)?, v6(VIP6)?, 64)
        .tcp(sport, 80, 1000, 64240)
        .syn()
        .options(&[TcpOptionElement::MaximumSegmentSize(1440)])?
        .write(&mut v, &[])?;
    Ok(v)
}

/// What the checked output frame carried.
#[derive(Debug)]
pub struct Seen {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub mss: Option<u16>,
    pub payload: Vec<u8>,
    pub syn: bool,
    pub ack: bool,
}

/// The backend's SYN-ACK to the translated SYN `syn`, as it arrives on the overlay: hop limit
/// `hop_limit`, MSS option `mss`.
pub fn syn_ack_to(syn: &Seen, hop_limit: u8, mss: Option<u16>) -> Result<Vec<u8>, Error> {
    let (IpAddr::V6(backend), IpAddr::V6(overlay)) = (syn.dst, syn.src) else {
        return Err(format!("the translated SYN is not IPv6: {syn:?}").into());
    };
    let options: Vec<TcpOptionElement> = mss
        .map(TcpOptionElement::MaximumSegmentSize)
        .into_iter()
        .collect();
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_POP, MAC_CLIENT)
        .ipv6(backend.octets(), overlay.octets(), hop_limit)
        .tcp(8080, syn.sport, 9000, 65000)
        .syn()
        .ack(1001)
        .options(&options)?
        .write(&mut v, &[])?;
    Ok(v)
}

/// The backend's segment to the client of the translated SYN `syn` (backend ISN 9000).
pub fn from_backend(syn: &Seen, seq: u32, ack: u32, payload: &[u8]) -> Result<Vec<u8>, Error> {
    backend_segment(syn, seq, ack, false, payload)
}

/// The same with the backend's FIN.
pub fn fin_from_backend(syn: &Seen, seq: u32, ack: u32, payload: &[u8]) -> Result<Vec<u8>, Error> {
    backend_segment(syn, seq, ack, true, payload)
}

fn backend_segment(
    syn: &Seen,
    seq: u32,
    ack: u32,
    fin: bool,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let (IpAddr::V6(backend), IpAddr::V6(overlay)) = (syn.dst, syn.src) else {
        return Err(format!("the translated SYN is not IPv6: {syn:?}").into());
    };
    let mut v = Vec::new();
    let builder = PacketBuilder::ethernet2(MAC_POP, MAC_CLIENT)
        .ipv6(backend.octets(), overlay.octets(), 64)
        .tcp(8080, syn.sport, seq, 65000)
        .ack(ack);
    if fin {
        builder.fin().write(&mut v, payload)?;
    } else {
        builder.write(&mut v, payload)?;
    }
    Ok(v)
}

/// The first entry of `entries` of one direction: the reply half (`FLOW_REVERSE`) or the
/// client's.
pub fn half(
    entries: &[(FlowKey, FlowValue)],
    reverse: bool,
) -> Result<(FlowKey, FlowValue), Error> {
    let direction = if reverse { "reverse" } else { "forward" };
    entries
        .iter()
        .find(|(_, v)| (v.flags & FLOW_REVERSE != 0) == reverse)
        .copied()
        .ok_or_else(|| format!("no {direction} entry in {entries:?}").into())
}

/// Parses `frame` with etherparse and checks every checksum it carries.
pub fn check(frame: &[u8]) -> Result<Seen, Error> {
    let p = SlicedPacket::from_ethernet(frame)?;
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        return Err(format!("no TCP in {p:?}").into());
    };
    let (src, dst, ttl, expected) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let header = h.to_header();
            assert_eq!(
                h.header_checksum(),
                header.calc_header_checksum(),
                "IPv4 header checksum"
            );
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                h.ttl(),
                tcp.calc_checksum_ipv4(h.source(), h.destination())?,
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                h.hop_limit(),
                tcp.calc_checksum_ipv6(h.source(), h.destination())?,
            )
        }
        other => return Err(format!("no IP in {other:?}").into()),
    };
    assert_eq!(tcp.checksum(), expected, "TCP checksum of {src} -> {dst}");
    let mss = tcp.options_iterator().find_map(|o| match o {
        Ok(TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
        _ => None,
    });
    Ok(Seen {
        src,
        dst,
        sport: tcp.source_port(),
        dport: tcp.destination_port(),
        ttl,
        mss,
        payload: tcp.payload().to_vec(),
        syn: tcp.syn(),
        ack: tcp.ack(),
    })
}

pub fn backends() -> Vec<IpAddr> {
    (2..=4)
        .map(|i| IpAddr::V6(Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, i)))
        .collect()
}

/// Each named test of the including file, once per hook.
macro_rules! for_both_hooks {
    ($($name:ident),* $(,)?) => {
        mod xdp {
            $(#[test]
            fn $name() -> super::TestResult {
                super::$name(super::Hook::Xdp)
            })*
        }
        mod tc {
            $(#[test]
            fn $name() -> super::TestResult {
                super::$name(super::Hook::Tc)
            })*
        }
    };
}
