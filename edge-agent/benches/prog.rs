//! Per-packet cost of the XDP program through `BPF_PROG_TEST_RUN`, beside the parse-and-pass
//! baseline program measured in the same run: ratios, not absolutes. Needs root.
//!
//! `cargo bench -p edge-agent --bench prog [-- --json PATH]`
//!
//! An established-flow packet is the same frame run `REPEAT` times in one call (the kernel's own
//! average). A SYN must miss the flow table every time, so each SYN is a distinct 5-tuple run
//! once; the baseline is measured the same way for that ratio, since one-shot runs carry the
//! test-run machinery's own per-call overhead. One-shot runs over distinct flows also pay the
//! cache misses of touching a new flow entry every time, which repeated runs never do: the
//! established flow is shown both ways so that the SYN can be read against either.

use std::{net::Ipv6Addr, time::Instant};

use aya::Ebpf;
use edge_agent::{
    agent::static_plan,
    config::{AgentConfig, BackendConfig, ServiceConfig},
    dataplane::{self, MapSizes},
    services::{PopSettings, Reconciler},
    test_run::test_run,
};
use edge_common::names;
use etherparse::{PacketBuilder, TcpOptionElement};

type Error = Box<dyn std::error::Error>;

const REPEAT: u32 = 1_000_000;
const ONE_SHOTS: u16 = 20_000;
const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const VIP4: [u8; 4] = [198, 18, 0, 10];
const TABLE_SIZE: u32 = 4099;

fn load() -> Result<Ebpf, Error> {
    let sizes = MapSizes {
        flows: 1 << 20,
        maglev: 2 * 8 * TABLE_SIZE,
        affinity: 1 << 16,
    };
    let mut ebpf = dataplane::load_object(None, sizes)?;
    dataplane::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
    dataplane::xdp_program(&mut ebpf, names::XDP_BASELINE)?;
    let backends = (2..=4)
        .map(|i| BackendConfig {
            name: format!("be{i}"),
            addr: Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, i),
            port: 8080,
            weight: 1,
            region: None,
            country: None,
            soft_limit: 10_000,
            hard_limit: 100_000,
            health_check: None,
        })
        .collect();
    let services = vec![ServiceConfig {
        name: "web".into(),
        vip: VIP4.into(),
        port: 80,
        backends,
        health_check: None,
    }];
    let pop = PopSettings {
        overlay_addr: "fd00:ee::1".parse()?,
        mss_clamp: 1360,
        port_min: 10_000,
        port_max: 60_000,
        public_ifindex: 1,
        overlay_l2_len: 14,
        affinity_ttl: std::time::Duration::ZERO,
        snat_prefix: None,
    };
    let config = AgentConfig {
        services,
        ..AgentConfig::default()
    };
    Reconciler::recover(&mut ebpf, TABLE_SIZE)?.apply(&mut ebpf, &pop, &static_plan(&config))?;
    Ok(ebpf)
}

fn syn(client: [u8; 4], sport: u16) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(client, VIP4, 64)
        .tcp(sport, 80, 1, 64240)
        .syn()
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])?
        .write(&mut v, &[])?;
    Ok(v)
}

fn data(client: [u8; 4], sport: u16, dst: [u8; 4]) -> Result<Vec<u8>, Error> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(client, dst, 64)
        .tcp(sport, 80, 2, 64240)
        .ack(1)
        .write(&mut v, &[0u8; 64])?;
    Ok(v)
}

/// Mean ns per run of `program` on `frame`, repeated in-kernel.
fn repeated(ebpf: &mut Ebpf, program: &'static str, frame: &[u8]) -> Result<f64, Error> {
    let prog = dataplane::xdp_program(ebpf, program)?;
    // Warm up caches and the flow entry.
    test_run(prog.fd()?, frame, 1000)?;
    Ok(f64::from(test_run(prog.fd()?, frame, REPEAT)?.duration_ns))
}

/// Mean ns per run of `program` over `frames`, each run once.
fn one_shots(ebpf: &mut Ebpf, program: &'static str, frames: &[Vec<u8>]) -> Result<f64, Error> {
    let prog = dataplane::xdp_program(ebpf, program)?;
    let mut total = 0u64;
    for frame in frames {
        total += u64::from(test_run(prog.fd()?, frame, 1)?.duration_ns);
    }
    Ok(total as f64 / frames.len() as f64)
}

fn main() -> Result<(), Error> {
    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let started = Instant::now();
    let mut ebpf = load()?;
    let first = syn([198, 51, 100, 1], 40000)?;
    let prog = dataplane::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
    test_run(prog.fd()?, &first, 1)?;
    let established = data([198, 51, 100, 1], 40000, VIP4)?;
    let not_ours = data([198, 51, 100, 1], 40000, [198, 18, 0, 99])?;

    let base_repeated = repeated(&mut ebpf, names::XDP_BASELINE, &established)?;
    let est = repeated(&mut ebpf, names::XDP_INGRESS, &established)?;
    let pass = repeated(&mut ebpf, names::XDP_INGRESS, &not_ours)?;

    let syns: Vec<Vec<u8>> = (0..ONE_SHOTS)
        .map(|i| {
            syn(
                [198, 51, 101 + (i / 250) as u8, (i % 250) as u8 + 1],
                20000 + i,
            )
        })
        .collect::<Result<_, _>>()?;
    let base_once = one_shots(&mut ebpf, names::XDP_BASELINE, &syns)?;
    let syn_once = one_shots(&mut ebpf, names::XDP_INGRESS, &syns)?;
    // The same connections' next packets: established, but each run once like the SYNs.
    let followups: Vec<Vec<u8>> = (0..ONE_SHOTS)
        .map(|i| {
            data(
                [198, 51, 101 + (i / 250) as u8, (i % 250) as u8 + 1],
                20000 + i,
                VIP4,
            )
        })
        .collect::<Result<_, _>>()?;
    let est_once = one_shots(&mut ebpf, names::XDP_INGRESS, &followups)?;

    let rows = [
        (
            "parse-and-pass baseline (repeated)",
            base_repeated,
            base_repeated,
        ),
        (
            "established flow, IPv4 -> NAT46 (repeated)",
            est,
            base_repeated,
        ),
        ("not a service: pass (repeated)", pass, base_repeated),
        ("parse-and-pass baseline (one-shot)", base_once, base_once),
        (
            "established flow, IPv4 -> NAT46 (one-shot)",
            est_once,
            base_once,
        ),
        (
            "SYN, new flow: Maglev + port + NAT46 (one-shot)",
            syn_once,
            base_once,
        ),
    ];
    println!(
        "{:<50} {:>10} {:>12}",
        "XDP program, per packet", "ns", "vs baseline"
    );
    for (what, ns, base) in rows {
        println!("{what:<50} {ns:>10.1} {:>11.2}x", ns / base);
    }
    println!(
        "targets (DESIGN.md): established <= 2x, SYN <= 4x; {} repeats, {ONE_SHOTS} distinct SYNs, {:.1} s",
        REPEAT,
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = json_path {
        let doc = serde_json::json!({
            "baseline_repeated_ns": base_repeated,
            "established_ns": est,
            "established_ratio": est / base_repeated,
            "pass_ns": pass,
            "baseline_one_shot_ns": base_once,
            "established_one_shot_ns": est_once,
            "syn_ns": syn_once,
            "syn_ratio": syn_once / base_once,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
