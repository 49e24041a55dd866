//! Control-plane figures: how fast a state change reaches the kernel maps, and what a
//! realistic country database costs to load (time and kernel memory), with the per-packet cost
//! of a SYN that looks its client up in it. Needs root.
//!
//! `cargo bench -p edge-agent --bench control [-- --json PATH]`

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::Ebpf;
use edge_agent::{
    balancing::plan, balancing::plan::GeoClasses, balancing::plan::Inputs, dataplane::maps::geo,
    dataplane::maps::services::Reconciler, dataplane::programs, dataplane::programs::MapSizes,
    geo::GeoDb, model::Backend, model::BackendAddr, model::Country, model::Region, model::Service,
    state::SqliteState, state::StateSource as _, testing::lab_pop,
    testing::mmdb_writer::write_country_mmdb, testing::test_run,
};
use edge_common::names;
use etherparse::PacketBuilder;

type Error = Box<dyn std::error::Error>;

const TABLE_SIZE: u32 = 4099;
/// IPv4 /24s and IPv6 /48s of the synthetic country database.
const V4_NETWORKS: u32 = 300_000;
const V6_NETWORKS: u32 = 200_000;
const VIP6: &str = "2001:db8:ff::10";
const CHANGES: usize = 100;
const COUNTRIES: [&str; 12] = [
    "BR", "AR", "US", "CA", "DE", "FR", "GB", "JP", "AU", "IN", "ZA", "SG",
];

fn load() -> Result<Ebpf, Error> {
    let sizes = MapSizes {
        flows: 1 << 20,
        half_open: 1 << 10,
        maglev: 64 * TABLE_SIZE,
        affinity: 1 << 16,
    };
    let mut ebpf = programs::load_object(None, sizes)?;
    programs::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
    Ok(ebpf)
}

/// A deterministic database of `v4` IPv4 /24s and `v6` IPv6 /48s, neighbours sharing countries.
fn synthetic(v4: u32, v6: u32) -> Result<Vec<(ipnet::IpNet, Country)>, Error> {
    let mut entries = Vec::new();
    for i in 0..v4 {
        let net = format!("{}.{}.{}.0/24", 1 + i / 65536, (i / 256) % 256, i % 256);
        entries.push((
            net.parse()?,
            COUNTRIES[(i / 997) as usize % COUNTRIES.len()].parse()?,
        ));
    }
    for i in 0..v6 {
        let net = format!("2400:{:x}:{:x}::/48", i >> 16, i & 0xffff);
        entries.push((
            net.parse()?,
            COUNTRIES[(i / 991) as usize % COUNTRIES.len()].parse()?,
        ));
    }
    Ok(entries)
}

/// Clears every line of the IPv6 directory `name` (`lines` lines).
fn empty(ebpf: &mut Ebpf, name: &str, lines: u32) -> Result<(), Error> {
    let Some(aya::maps::Map::Array(data)) = ebpf.map_mut(name) else {
        return Err(format!("no array {name}").into());
    };
    let indexes: Vec<u32> = (0..lines).collect();
    let zero = vec![[0u64; edge_common::geo::V6_DIR_SLOTS]; lines as usize];
    edge_agent::dataplane::batch::update_array(data, &indexes, &zero)?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Kernel memory of the maps named, from /proc/self/fdinfo (`memlock`).
fn memlock(ebpf: &Ebpf, names: &[&str]) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    names
        .iter()
        .filter_map(|name| {
            let map = ebpf.map(name)?;
            let fd = match map {
                aya::maps::Map::LpmTrie(data)
                | aya::maps::Map::Array(data)
                | aya::maps::Map::HashMap(data) => data.fd().as_fd().as_raw_fd(),
                _ => return None,
            };
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            info.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

fn state_latency(dir: &std::path::Path) -> Result<(Duration, Duration, Duration), Error> {
    let path = dir.join("routing.db");
    let state = SqliteState::open(&path)?;
    state.upsert_service(&Service {
        id: "web".into(),
        vip: "198.18.0.10".parse::<IpAddr>()?,
        port: 80,
        check: None,
    })?;
    for i in 1..=3u16 {
        state.upsert_backend(&Backend {
            id: format!("be{i}"),
            service: "web".into(),
            region: "eu".parse()?,
            country: "DE".parse()?,
            addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, i)),
            port: 8080,
            weight: 1,
            soft_limit: 100,
            hard_limit: 1000,
            draining: false,
            enabled: true,
            check: None,
            lease: None,
        })?;
    }
    let mut ebpf = load()?;
    let mut reconciler = Reconciler::recover(&mut ebpf, TABLE_SIZE)?;
    let region: Region = "eu".parse()?;
    let pop = lab_pop();
    let apply = |ebpf: &mut Ebpf, reconciler: &mut Reconciler| -> Result<(), Error> {
        let (snapshot, _) = state.snapshot()?;
        let inputs = Inputs {
            pop_id: "pop",
            pop_region: &region,
            region_of: &|_| region.clone(),
            unknown_region: &region,
            classes: &GeoClasses::default(),
            active: &HashMap::new(),
            health: &HashMap::new(),
            now_unix: 0,
        };
        let plan = plan::plan(&snapshot, &inputs, &|_| None);
        reconciler.apply(ebpf, &pop, &plan)?;
        Ok(())
    };
    apply(&mut ebpf, &mut reconciler)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut changes = state.changes()?;
    // Changes the way an operator makes them: the sqlite3 CLI, alternating a disable, a weight
    // and a drain. Timed from the CLI's exit (its commit is durable then) to the maps written.
    let statements = [
        "UPDATE backends SET enabled = 0 WHERE id = 'be1'",
        "UPDATE backends SET enabled = 1 WHERE id = 'be1'",
        "UPDATE backends SET weight = 3 WHERE id = 'be2'",
        "UPDATE backends SET weight = 1 WHERE id = 'be2'",
        "UPDATE backends SET draining = 1 WHERE id = 'be3'",
        "UPDATE backends SET draining = 0 WHERE id = 'be3'",
    ];
    let mut times = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let out = std::process::Command::new("sqlite3")
            .arg(&path)
            .arg(statements[i % statements.len()])
            .output()?;
        if !out.status.success() {
            return Err(format!("sqlite3: {}", String::from_utf8_lossy(&out.stderr)).into());
        }
        let started = Instant::now();
        runtime.block_on(changes.changed());
        apply(&mut ebpf, &mut reconciler)?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
    ))
}

fn main() -> Result<(), Error> {
    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let dir = std::env::temp_dir().join(format!("edge-bench-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let (p50, p99, max) = state_latency(&dir)?;
    println!("state change (sqlite3 CLI: disable, weight, drain) -> kernel maps written, {CHANGES} changes:");
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms   (target: p99 <= 100 ms)",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );

    let entries = synthetic(V4_NETWORKS, V6_NETWORKS)?;
    let mmdb = dir.join("countries.mmdb");
    let started = Instant::now();
    write_country_mmdb(&mmdb, &entries, "edgeProxy-Synthetic-Country")?;
    let write = started.elapsed();
    let started = Instant::now();
    let db = GeoDb::load(&mmdb)?;
    let parse = started.elapsed();
    let mut ebpf = load()?;
    let classes = GeoClasses::new(db.countries());
    let started = Instant::now();
    geo::write(&mut ebpf, &db, &classes, &mut geo::Written::default())?;
    let compile = started.elapsed();
    let memory = memlock(
        &ebpf,
        &[
            names::GEO_V4,
            names::GEO_V6,
            names::GEO_V4_SLASH24,
            names::GEO_V6_32,
            names::GEO_V6_48,
        ],
    );
    println!(
        "country database, {} networks ({} IPv4, {} IPv6), {} bytes as .mmdb:",
        db.len(),
        db.v4_prefixes().len(),
        db.v6_prefixes().len(),
        std::fs::metadata(&mmdb)?.len()
    );
    println!("  read {:.0} ms, into the kernel's geo maps {:.0} ms, kernel memory {:.1} MiB (written as .mmdb in {:.0} ms)",
        parse.as_secs_f64() * 1e3, compile.as_secs_f64() * 1e3, memory as f64 / 1048576.0, write.as_secs_f64() * 1e3);

    // The SYN path with that database in the tries, beside an established packet, one-shot.
    let mut reconciler = Reconciler::recover(&mut ebpf, TABLE_SIZE)?;
    let region: Region = "eu".parse()?;
    let de: Country = "DE".parse()?;
    let backends: Vec<_> = (2..=4)
        .map(|i| edge_agent::config::BackendConfig {
            name: format!("be{i}"),
            addr: Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, i),
            port: 8080,
            weight: 1,
            region: Some(region.clone()),
            country: Some(de),
            soft_limit: 10_000,
            hard_limit: 100_000,
            health_check: None,
        })
        .collect();
    // One service per family, so that IPv6 clients' SYNs walk the IPv6 trie of the same
    // database.
    let services = edge_agent::config::AgentConfig {
        services: [("web", "198.18.0.10"), ("web6", VIP6)]
            .into_iter()
            .map(|(name, vip)| {
                Ok::<_, Error>(edge_agent::config::ServiceConfig {
                    name: name.into(),
                    vip: vip.parse()?,
                    port: 80,
                    backends: backends.clone(),
                    health_check: None,
                })
            })
            .collect::<Result<_, _>>()?,
        ..Default::default()
    };
    let (state, _) = services.snapshot();
    let inputs = Inputs {
        pop_id: "pop",
        pop_region: &region,
        region_of: &|_| region.clone(),
        unknown_region: &region,
        classes: &classes,
        active: &HashMap::new(),
        health: &HashMap::new(),
        now_unix: 0,
    };
    reconciler.apply(
        &mut ebpf,
        &lab_pop(),
        &plan::plan(&state, &inputs, &|_| None),
    )?;
    let n = 20_000u32;
    let mut syn_total = 0u64;
    let mut est_total = 0u64;
    let mut syn6_total = 0u64;
    let mut spread_total = 0u64;
    let vip6: Ipv6Addr = VIP6.parse()?;
    for i in 0..n {
        // Clients spread over the database's IPv6 /48s (`2400:<i >> 16>:<i & 0xffff>::/48`),
        // interleaved with the IPv4 ones so that both meet the same cache state.
        let net = (i * 7919) % V6_NETWORKS;
        let client6 = Ipv6Addr::new(0x2400, (net >> 16) as u16, net as u16, 0, 0, 0, 0, 7);
        let mut syn6 = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(client6.octets(), vip6.octets(), 64)
            .tcp(40000, 80, 1, 64240)
            .syn()
            .write(&mut syn6, &[])?;
        let program = programs::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
        syn6_total += test_run(program, &syn6, 1)?.duration.as_nanos() as u64;
        // IPv4 clients spread over the database's /24s the same way: the /24 table's cache
        // misses as the IPv6 directories' (the clients below stay within a few hundred KiB of
        // it).
        let net = (i * 7919) % V4_NETWORKS;
        let spread = [
            1 + (net / 65536) as u8,
            (net / 256 % 256) as u8,
            (net % 256) as u8,
            7,
        ];
        let mut syn4 = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(spread, [198, 18, 0, 10], 64)
            .tcp(40000, 80, 1, 64240)
            .syn()
            .write(&mut syn4, &[])?;
        let program = programs::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
        spread_total += test_run(program, &syn4, 1)?.duration.as_nanos() as u64;
        // Clients spread over the database's IPv4 networks.
        let client = [1 + (i % 4) as u8, (i / 250) as u8, (i % 250) as u8, 7];
        let mut syn = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(client, [198, 18, 0, 10], 64)
            .tcp(40000, 80, 1, 64240)
            .syn()
            .write(&mut syn, &[])?;
        let mut data = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(client, [198, 18, 0, 10], 64)
            .tcp(40000, 80, 2, 64240)
            .ack(1)
            .write(&mut data, &[0; 64])?;
        let program = programs::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
        syn_total += test_run(program, &syn, 1)?.duration.as_nanos() as u64;
        est_total += test_run(program, &data, 1)?.duration.as_nanos() as u64;
    }
    // The same IPv6 SYNs (new connections: another source port) with the directories emptied:
    // what the trie alone costs them.
    empty(
        &mut ebpf,
        names::GEO_V6_32,
        edge_common::geo::GEO_V6_32_LINES,
    )?;
    empty(
        &mut ebpf,
        names::GEO_V6_48,
        edge_common::geo::GEO_V6_48_LINES,
    )?;
    let mut trie_total = 0u64;
    for i in 0..n {
        let net = (i * 7919) % V6_NETWORKS;
        let client6 = Ipv6Addr::new(0x2400, (net >> 16) as u16, net as u16, 0, 0, 0, 0, 7);
        let mut syn6 = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv6(client6.octets(), vip6.octets(), 64)
            .tcp(40001, 80, 1, 64240)
            .syn()
            .write(&mut syn6, &[])?;
        let program = programs::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
        trie_total += test_run(program, &syn6, 1)?.duration.as_nanos() as u64;
    }
    let trie_ns = trie_total as f64 / f64::from(n);
    let (syn_ns, est_ns, syn6_ns, spread_ns) = (
        syn_total as f64 / f64::from(n),
        est_total as f64 / f64::from(n),
        syn6_total as f64 / f64::from(n),
        spread_total as f64 / f64::from(n),
    );
    println!("per packet with that database loaded (one-shot, distinct clients):");
    println!(
        "  SYN with geo lookup {syn_ns:.0} ns, the same flow's next packet {est_ns:.0} ns ({:.2}x)",
        syn_ns / est_ns
    );
    println!(
        "  IPv6 SYN with geo lookup, clients spread over the database {syn6_ns:.0} ns ({:.2}x \
         the IPv4 SYN); an IPv4 SYN spread likewise {spread_ns:.0} ns (the IPv6 one {:.2}x it)",
        syn6_ns / syn_ns,
        syn6_ns / spread_ns
    );
    println!(
        "  the same IPv6 SYNs with the trie alone (directories emptied) {trie_ns:.0} ns ({:.2}x \
         the IPv4 SYN)",
        trie_ns / syn_ns
    );
    let drops = {
        let map = ebpf.map(names::DROP_STATS).ok_or("no DROP_STATS")?;
        let map: aya::maps::PerCpuArray<_, edge_common::DropStats> =
            aya::maps::PerCpuArray::try_from(map)?;
        edge_agent::dataplane::maps::counters::sum_per_cpu(&map, 0)?
    };
    if drops.no_backend + drops.port_exhausted + drops.flow_insert > 0 {
        return Err(format!("SYNs of the measurement were refused: {drops:?}").into());
    }
    if let Some(path) = json_path {
        let doc = serde_json::json!({
            "state_change_p50_ms": p50.as_secs_f64() * 1e3,
            "state_change_p99_ms": p99.as_secs_f64() * 1e3,
            "geo_networks": db.len(),
            "geo_read_ms": parse.as_secs_f64() * 1e3,
            "geo_load_ms": compile.as_secs_f64() * 1e3,
            "geo_kernel_bytes": memory,
            "syn_geo_ns": syn_ns,
            "syn_geo_v6_ns": syn6_ns,
            "syn_geo_v4_spread_ns": spread_ns,
            "syn_geo_v6_trie_only_ns": trie_ns,
            "established_ns": est_ns,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
