//! The kernel programs' debug records (aya-log) through `BPF_PROG_TEST_RUN`: loaded with
//! `DEBUG_LOG` set, each event writes one record that aya-log decodes; loaded without it (the
//! default), the same packets write nothing and the verifier has removed the logging code.
//! Needs root, as `cargo xtask test` runs.

mod support;

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use edge_agent::{
    agent::static_plan, config::AgentConfig, config::BackendConfig, config::ServiceConfig,
    dataplane::maps::services::PopSettings, dataplane::maps::services::Reconciler,
    dataplane::programs, dataplane::programs::MapSizes, testing::lab_pop,
};
use edge_common::names;
use etherparse::PacketBuilder;
use support::{Error, MAC_CLIENT, MAC_POP};

const CLIENT4: [u8; 4] = [198, 51, 100, 7];
const VIP4: [u8; 4] = [198, 18, 0, 10];
const OVERLAY: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, 1);
const BACKEND: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, 2);
const TABLE_SIZE: u32 = 1021;

/// Collects what aya-log decodes, as `LEVEL target: message`.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        if let Ok(mut lines) = self.0.lock() {
            lines.push(line);
        }
    }
    fn flush(&self) {}
}

/// The data plane with private maps, one service (`web4`, VIP4:80, one backend; VIP4:81 with
/// none), its programs loaded with the debug switch as given.
fn load(debug_log: bool) -> Result<Ebpf, Error> {
    let sizes = MapSizes {
        flows: 1024,
        half_open: 1024,
        maglev: 2 * 8 * TABLE_SIZE,
        affinity: 1024,
    };
    let mut ebpf = support::load_with(sizes, debug_log)?;
    programs::tc_program(&mut ebpf, names::TC_REPLY)?;
    let pop = PopSettings {
        overlay_addr: OVERLAY,
        port_max: 32_767,
        ..lab_pop()
    };
    let backend = BackendConfig {
        name: "be2".into(),
        addr: BACKEND,
        port: 8080,
        weight: 1,
        region: None,
        country: None,
        soft_limit: 10_000,
        hard_limit: 100_000,
        health_check: None,
    };
    let config = AgentConfig {
        services: vec![
            ServiceConfig {
                name: "web4".into(),
                vip: IpAddr::from(VIP4),
                port: 80,
                backends: vec![backend],
                health_check: None,
            },
            ServiceConfig {
                name: "empty".into(),
                vip: IpAddr::from(VIP4),
                port: 81,
                backends: Vec::new(),
                health_check: None,
            },
        ],
        ..AgentConfig::default()
    };
    let mut reconciler = Reconciler::recover(&mut ebpf, TABLE_SIZE)?;
    reconciler.apply(&mut ebpf, &pop, &static_plan(&config))?;
    Ok(ebpf)
}

fn client4(sport: u16, dport: u16, syn: bool) -> Result<Vec<u8>, Error> {
    let mut frame = Vec::new();
    let builder = PacketBuilder::ethernet2(MAC_CLIENT, MAC_POP)
        .ipv4(CLIENT4, VIP4, 64)
        .tcp(sport, dport, 1000, 64_240);
    if syn {
        builder.syn().write(&mut frame, &[])?;
    } else {
        builder.ack(1).write(&mut frame, b"late")?;
    }
    Ok(frame)
}

/// A backend's segment to a source port this POP allocates, for which there is no flow.
fn stray_reply() -> Result<Vec<u8>, Error> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(MAC_POP, MAC_CLIENT)
        .ipv6(BACKEND.octets(), OVERLAY.octets(), 64)
        .tcp(8080, 12_345, 1, 100)
        .ack(1)
        .write(&mut frame, b"lost")?;
    Ok(frame)
}

/// Runs a new flow, a refused SYN, segments with and without a flow and a stray reply through
/// the programs; returns the records they wrote and the XDP and TC programs' translated sizes.
fn run(debug_log: bool) -> Result<(Vec<String>, [u32; 2]), Error> {
    let mut ebpf = load(debug_log)?;
    let capture = Capture::default();
    let mut logger = EbpfLogger::init_with_logger(&mut ebpf, capture.clone())?;
    let xdp = programs::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
    let xdp_size = xdp.info()?.size_translated().ok_or("no translated size")?;
    let frames = [
        // A new flow, then its second segment: an established flow writes nothing.
        client4(40_000, 80, true)?,
        client4(40_000, 80, false)?,
        // A SYN to the service without backends.
        client4(40_000, 81, true)?,
        // A segment of a connection the flow table does not know: its flow is remade.
        client4(40_001, 80, false)?,
        // Not a service: never reported.
        client4(40_002, 82, false)?,
    ];
    for frame in frames {
        support::xdp(&mut ebpf, &frame)?;
    }
    let tc = programs::tc_program(&mut ebpf, names::TC_REPLY)?;
    let tc_size = tc.info()?.size_translated().ok_or("no translated size")?;
    support::tc(&mut ebpf, names::TC_REPLY, &stray_reply()?)?;
    logger.flush();
    let lines = capture.0.lock().map_err(|e| e.to_string())?.clone();
    Ok((lines, [xdp_size, tc_size]))
}

#[test]
fn debug_records_only_when_switched_on_and_no_code_when_off() -> Result<(), Error> {
    let (on, size_on) = run(true)?;
    let expected = [
        "INFO edge_ebpf: new flow: service 0 client [::ffff:198.51.100.7]:40000 vip port 80 -> backend 0 [fd00:ee::2]:8080 from [fd00:ee::1]:",
        "WARN edge_ebpf: SYN dropped, no eligible backend: service 1 client [::ffff:198.51.100.7]:40000",
        "INFO edge_ebpf: new flow: service 0 client [::ffff:198.51.100.7]:40001 vip port 80 -> backend 0 [fd00:ee::2]:8080 from [fd00:ee::1]:",
        "INFO edge_ebpf: reply without flow: [fd00:ee::2]:8080 -> [fd00:ee::1]:12345, passed to the kernel",
    ];
    assert_eq!(
        on.len(),
        expected.len(),
        "one record per event with DEBUG_LOG on, got:\n{}",
        on.join("\n")
    );
    for (line, prefix) in on.iter().zip(expected) {
        assert!(
            line.starts_with(prefix),
            "expected a record starting {prefix:?}, got {line:?}"
        );
    }

    let (off, size_off) = run(false)?;
    assert!(
        off.is_empty(),
        "DEBUG_LOG off (the default) must write no record, got:\n{}",
        off.join("\n")
    );
    // The switch is a frozen read-only global: the verifier removes the dead logging branches.
    for (program, off, on) in [
        (names::XDP_INGRESS, size_off[0], size_on[0]),
        (names::TC_REPLY, size_off[1], size_on[1]),
    ] {
        assert!(
            off < on,
            "{program}: with DEBUG_LOG off the verifier should have removed the logging code: \
             {off} translated bytes off, {on} on"
        );
        eprintln!("{program} translated: {off} bytes with DEBUG_LOG off, {on} on");
    }
    Ok(())
}
