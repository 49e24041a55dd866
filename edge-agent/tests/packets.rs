//! Packet tests of the XDP program through `BPF_PROG_TEST_RUN`: a frame in, the verdict, the frame
//! out and the counter it must move. Frames are built and checked with `etherparse`, a parser
//! independent of the one under test. Needs root (CAP_BPF), as `cargo xtask test` runs.

mod support;

use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};
use edge_agent::{
    dataplane::maps::counters, dataplane::programs, dataplane::programs::MapSizes,
    testing::test_run,
};
use edge_common::{names, Counters};
use etherparse::PacketBuilder;
use support::{Error, TestResult};

const XDP_PASS: u32 = 2;
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const V4_CLIENT: [u8; 4] = [198, 51, 100, 7];
const V4_VIP: [u8; 4] = [203, 0, 113, 10];
const V6_CLIENT: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
const V6_VIP: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10];

/// A freshly loaded program with private (unpinned) maps, so counters start at zero.
struct Harness {
    ebpf: Ebpf,
}

impl Harness {
    fn new() -> Result<Self, Error> {
        Ok(Harness {
            ebpf: support::load(MapSizes::default())?,
        })
    }

    /// Runs `frame` once; checks the program left it unchanged and returns the verdict.
    fn run(&mut self, frame: &[u8]) -> Result<u32, Error> {
        let out = support::xdp(&mut self.ebpf, frame)?;
        assert_eq!(
            out.data_out, frame,
            "a classify-only program must not change the frame"
        );
        Ok(out.retval)
    }

    fn snapshot(&self) -> Result<counters::Snapshot, Error> {
        let map = self
            .ebpf
            .map(names::STATS_MAP)
            .ok_or("EDGE_STATS map missing")?;
        let map: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(map)?;
        Ok(counters::snapshot(&map)?)
    }

    /// Runs `frame` and asserts it passed and moved exactly the (ip, proto, pass) counter, by one
    /// packet and the frame's length in bytes.
    fn expect(&mut self, what: &str, frame: &[u8], ip: &str, proto: &str) -> TestResult {
        let before = self.snapshot()?;
        let verdict = self.run(frame)?;
        assert_eq!(
            verdict, XDP_PASS,
            "{what}: expected XDP_PASS, got {verdict}"
        );
        let after = self.snapshot()?;
        let moved: Vec<_> = after
            .classes
            .iter()
            .filter(|c| !before.classes.contains(c))
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "{what}: expected one counter to move, saw {moved:?}"
        );
        let c = moved[0];
        assert_eq!(
            (c.ip, c.proto, c.verdict),
            (ip, proto, "pass"),
            "{what} ({} bytes): counted in the wrong class",
            frame.len()
        );
        let before_packets = before.packets(ip, proto, "pass");
        assert_eq!(c.packets, before_packets + 1, "{what}: packet count");
        let before_bytes = before
            .classes
            .iter()
            .find(|b| (b.ip, b.proto, b.verdict) == (ip, proto, "pass"))
            .map_or(0, |b| b.bytes);
        assert_eq!(
            c.bytes,
            before_bytes + frame.len() as u64,
            "{what}: byte count"
        );
        Ok(())
    }
}

type Frame = Result<Vec<u8>, Error>;

fn ipv4_tcp() -> Frame {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_CLIENT, V4_VIP, 64)
        .tcp(40000, 443, 1, 64240)
        .syn()
        .write(&mut v, &[])?;
    Ok(v)
}

fn ipv6_tcp() -> Frame {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_CLIENT, V6_VIP, 64)
        .tcp(40000, 443, 1, 64240)
        .syn()
        .write(&mut v, &[])?;
    Ok(v)
}

/// IPv6 with the given extension headers (each as its raw bytes, `next header` filled in here)
/// before a 20-byte TCP header.
fn ipv6_with_extensions(exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    const TCP: u8 = 6;
    let mut tail = Vec::new();
    for (i, (_, bytes)) in exts.iter().enumerate() {
        let mut bytes = bytes.clone();
        bytes[0] = exts.get(i + 1).map_or(TCP, |(kind, _)| *kind);
        tail.extend_from_slice(&bytes);
    }
    // TCP header: ports 40000 -> 443, data offset 5, SYN.
    tail.extend_from_slice(&[
        0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
    ]);
    let mut v = Vec::new();
    v.extend_from_slice(&MAC_B);
    v.extend_from_slice(&MAC_A);
    v.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    v.extend_from_slice(&(tail.len() as u16).to_be_bytes());
    v.push(exts.first().map_or(TCP, |(kind, _)| *kind));
    v.push(64);
    v.extend_from_slice(&V6_CLIENT);
    v.extend_from_slice(&V6_VIP);
    v.extend_from_slice(&tail);
    v
}

const HOPOPTS: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DSTOPTS: u8 = 60;

/// An 8-byte options header (hop-by-hop or destination options) holding one PadN option.
fn options_header(kind: u8) -> (u8, Vec<u8>) {
    (kind, vec![0, 0, 1, 4, 0, 0, 0, 0])
}

fn fragment_header(offset_units: u16, more: bool) -> (u8, Vec<u8>) {
    let field = (offset_units << 3) | u16::from(more);
    let [hi, lo] = field.to_be_bytes();
    (FRAGMENT, vec![0, 0, hi, lo, 0, 0, 0, 42])
}

#[test]
fn well_formed_frames_are_counted_by_class() -> TestResult {
    let mut h = Harness::new()?;
    h.expect("IPv4 TCP", &ipv4_tcp()?, "ipv4", "tcp")?;
    h.expect("IPv6 TCP", &ipv6_tcp()?, "ipv6", "tcp")?;

    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_CLIENT, V4_VIP, 64)
        .udp(5353, 53)
        .write(&mut v, b"query")?;
    h.expect("IPv4 UDP", &v, "ipv4", "udp")?;

    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_CLIENT, V6_VIP, 64)
        .udp(5353, 53)
        .write(&mut v, b"query")?;
    h.expect("IPv6 UDP", &v, "ipv6", "udp")?;

    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_CLIENT, V4_VIP, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut v, b"ping")?;
    h.expect("ICMP echo", &v, "ipv4", "icmp")?;

    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_CLIENT, V6_VIP, 64)
        .icmpv6_echo_request(7, 1)
        .write(&mut v, b"ping")?;
    h.expect("ICMPv6 echo", &v, "ipv6", "icmp")?;

    // A protocol the data plane has no parser for (GRE, 47) is still IP.
    let mut v = ipv4_tcp()?;
    v[14 + 9] = 47;
    h.expect("IPv4 GRE", &v, "ipv4", "other")?;

    // ARP: not IP at all.
    let mut arp = Vec::new();
    arp.extend_from_slice(&[0xff; 6]);
    arp.extend_from_slice(&MAC_A);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    h.expect("ARP", &arp, "other", "none")?;

    let total = h.snapshot()?.total_packets();
    assert_eq!(total, 8, "eight frames ran, counters say {total}");
    Ok(())
}

#[test]
fn vlan_tagged_frames_are_parsed_through_the_tags() -> TestResult {
    let mut h = Harness::new()?;
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .single_vlan(100u16.try_into()?)
        .ipv4(V4_CLIENT, V4_VIP, 64)
        .tcp(40000, 443, 1, 64240)
        .write(&mut v, &[])?;
    assert_eq!(&v[12..14], &[0x81, 0x00], "single tag is 802.1Q");
    h.expect("802.1Q IPv4 TCP", &v, "ipv4", "tcp")?;

    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .double_vlan(200u16.try_into()?, 100u16.try_into()?)
        .ipv6(V6_CLIENT, V6_VIP, 64)
        .udp(5353, 53)
        .write(&mut v, b"q")?;
    h.expect("QinQ IPv6 UDP", &v, "ipv6", "udp")?;

    // Three tags are more than the parser walks: the frame passes, classified as not-IP.
    let mut v = ipv4_tcp()?;
    let tag = [0x81, 0x00, 0x00, 0x64];
    for _ in 0..3 {
        v.splice(12..12, tag);
    }
    h.expect("three VLAN tags", &v, "other", "none")?;
    Ok(())
}

#[test]
fn ipv6_extension_headers_are_walked() -> TestResult {
    let mut h = Harness::new()?;
    let frame = ipv6_with_extensions(&[options_header(HOPOPTS), options_header(DSTOPTS)]);
    let parsed = etherparse::SlicedPacket::from_ethernet(&frame)?;
    assert!(
        matches!(parsed.transport, Some(etherparse::TransportSlice::Tcp(_))),
        "reference parser must see TCP behind the extension headers: {parsed:?}"
    );
    h.expect("hop-by-hop + destination options", &frame, "ipv6", "tcp")?;

    // A routing header with hdr_ext_len 1 is 16 bytes.
    let routing = (
        ROUTING,
        vec![0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    h.expect(
        "routing header (16 bytes)",
        &ipv6_with_extensions(&[routing]),
        "ipv6",
        "tcp",
    )?;
    h.expect(
        "first fragment",
        &ipv6_with_extensions(&[fragment_header(0, true)]),
        "ipv6",
        "tcp",
    )?;
    h.expect(
        "later fragment carries no transport header",
        &ipv6_with_extensions(&[fragment_header(100, false)]),
        "ipv6",
        "other",
    )?;
    let too_many: Vec<_> = (0..7).map(|_| options_header(DSTOPTS)).collect();
    h.expect(
        "more extension headers than walked",
        &ipv6_with_extensions(&too_many),
        "ipv6",
        "malformed",
    )?;
    Ok(())
}

#[test]
fn ipv4_header_anomalies() -> TestResult {
    let mut h = Harness::new()?;
    let mut v = ipv4_tcp()?;
    v[14] = 0x44; // IHL 4: shorter than the fixed header
    h.expect("IPv4 IHL < 5", &v, "malformed", "none")?;

    let mut v = ipv4_tcp()?;
    v[14] = 0x65; // version 6 inside an IPv4 ethertype
    h.expect("IPv4 ethertype, version 6", &v, "malformed", "none")?;

    let mut v = ipv4_tcp()?;
    v[14 + 6] = 0x00;
    v[14 + 7] = 0x10; // fragment offset 16 units
    h.expect("IPv4 later fragment", &v, "ipv4", "other")?;

    let mut v = ipv4_tcp()?;
    v[14] = 0x4f; // IHL 15: 60-byte header, longer than this frame's
    h.expect("IPv4 options run past the frame", &v, "ipv4", "malformed")?;
    Ok(())
}

/// What a frame cut to `len` bytes must be counted as, given where its headers end.
fn truncated_class(
    len: usize,
    l3_start: usize,
    l3_len: usize,
    l4_len: usize,
    ip: &'static str,
) -> (&'static str, &'static str) {
    if len < l3_start + l3_len {
        ("malformed", "none")
    } else if len < l3_start + l3_len + l4_len {
        (ip, "malformed")
    } else {
        (ip, "tcp")
    }
}

#[test]
fn frames_truncated_at_every_length_pass_and_count_as_malformed() -> TestResult {
    let mut h = Harness::new()?;
    let cases = [
        ("IPv4 TCP", ipv4_tcp()?, 14, 20, "ipv4"),
        ("IPv6 TCP", ipv6_tcp()?, 14, 40, "ipv6"),
    ];
    for (what, full, l3_start, l3_len, ip) in cases {
        assert_eq!(
            full.len(),
            l3_start + l3_len + 20,
            "{what}: test frame layout"
        );
        // The kernel refuses test frames shorter than an Ethernet header (ETH_HLEN), so the
        // lengths 0..14 are checked for the refusal and the counters staying still.
        for len in 0..=full.len() {
            let frame = &full[..len];
            let label = format!("{what} cut to {len} bytes");
            if len < 14 {
                let before = h.snapshot()?;
                // The program is there (loaded by the harness): only the run may be refused.
                let program = programs::xdp_program(&mut h.ebpf, names::XDP_INGRESS)?;
                let refused = test_run(program, frame, 1).is_err();
                assert!(
                    refused,
                    "{label}: the kernel should refuse a frame without an Ethernet header"
                );
                assert_eq!(h.snapshot()?, before, "{label}: nothing may be counted");
                continue;
            }
            let (ip_class, proto_class) = truncated_class(len, l3_start, l3_len, 20, ip);
            h.expect(&label, frame, ip_class, proto_class)?;
        }
    }
    Ok(())
}
