//! A POP as a user runs one, for the restart, reload and fault tests: a country database of
//! 100,000 networks over IPv4 and IPv6, six services on IPv4 and IPv6 VIPs, eight backends in
//! four regions (one country each), health checks, client affinity, the SQLite state, a BGP
//! peer (BIRD, graceful restart on both sides) and clients in ten countries. `MaxServices` picks the table budget: the default, or one a fresh
//! start only just fits in.
//!
//! Two kinds of load run through it: 200 long-lived connections (`hold4`/`hold6`, the plain echo
//! port) and a stream of new clients, one every 10 ms (`geo-churn`), to the four `web`
//! services, whose backends say who they are (`echo-server --hello`), so that every connection
//! is checked against the backend its country's tier picks.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use edge_agent::{
    model::{Backend, BackendAddr, Country, Service},
    testing::mmdb_writer::write_country_mmdb,
};
use edge_tests::{
    agent_config::{Bgp, BgpPeer, Health},
    bpffs_pin_dir,
    pop_lab::{backend_addr, start_agent, topology, BACKEND_PORT, OVERLAY, VIP4, VIP6},
    AgentConfig, Lab, LabProcess,
};

use super::common::{agent_bin, TestResult};

type Error = Box<dyn std::error::Error>;

/// The port the `--hello` echo servers listen on (the plain ones: `BACKEND_PORT`).
pub const HELLO_PORT: u16 = 7008;

/// (name, region, country) of backend `n` (1-based: `BACKENDS[n - 1]`).
pub const BACKENDS: [(&str, &str, &str); 8] = [
    ("br", "sa", "BR"),
    ("ar", "sa", "AR"),
    ("us", "us", "US"),
    ("ca", "us", "CA"),
    ("de", "eu", "DE"),
    ("fr", "eu", "FR"),
    ("jp", "ap", "JP"),
    ("au", "ap", "AU"),
];

/// (IPv4 client, IPv6 client, country, the backends its tier picks). CL and GB have no backend
/// of their own: their region's backends take them.
pub const CLIENTS: [(&str, &str, &str, &[&str]); 10] = [
    ("10.0.1.17", "2001:db8:1::17", "BR", &["br"]),
    ("10.0.1.33", "2001:db8:1::33", "AR", &["ar"]),
    ("10.0.1.49", "2001:db8:1::49", "US", &["us"]),
    ("10.0.1.65", "2001:db8:1::65", "CA", &["ca"]),
    ("10.0.1.81", "2001:db8:1::81", "DE", &["de"]),
    ("10.0.1.97", "2001:db8:1::97", "FR", &["fr"]),
    ("10.0.1.113", "2001:db8:1::113", "JP", &["jp"]),
    ("10.0.1.129", "2001:db8:1::129", "AU", &["au"]),
    ("10.0.1.145", "2001:db8:1::145", "CL", &["br", "ar"]),
    ("10.0.1.161", "2001:db8:1::161", "GB", &["de", "fr"]),
];

/// (service, VIP, port, backend port): two plain echo services for held connections, four
/// `--hello` ones for the stream of new clients.
pub const SERVICES: [(&str, &str, u16, u16); 6] = [
    ("hold4", VIP4, 7, BACKEND_PORT),
    ("hold6", VIP6, 7, BACKEND_PORT),
    ("web4", VIP4, 80, HELLO_PORT),
    ("web4b", VIP4, 8080, HELLO_PORT),
    ("web6", VIP6, 80, HELLO_PORT),
    ("web6b", VIP6, 8080, HELLO_PORT),
];

/// Countries the filler networks of the database belong to: 46 besides the clients'.
const FILLER_COUNTRIES: [&str; 46] = [
    "AT", "BE", "BG", "BO", "CH", "CN", "CO", "CZ", "DK", "EC", "EE", "EG", "ES", "FI", "GR", "HK",
    "HR", "HU", "ID", "IE", "IL", "IN", "IS", "IT", "KE", "KR", "LT", "LU", "LV", "MA", "MX", "MY",
    "NG", "NL", "NO", "NZ", "PE", "PH", "PL", "PT", "RO", "SE", "SG", "TH", "TR", "UY",
];

/// The table budget of the variant.
#[derive(Clone, Copy, Debug)]
pub enum MaxServices {
    Default,
    /// Rings for twice this many tables: a fresh start of this POP needs most of them.
    Tight,
}

pub struct RealisticPop {
    pub lab: Lab,
    pub pins: PathBuf,
    pub geo: PathBuf,
    pub config: AgentConfig,
    /// BIRD's control socket (`birdc -s`).
    pub bird_socket: String,
    bird: Bird,
    servers: Vec<LabProcess>,
}

/// BIRD and its control socket, which lives outside the lab (see `start_bird`).
struct Bird {
    process: LabProcess,
    socket: String,
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The router's end of the BGP link, and the POP's.
const ROUTER: &str = "10.0.99.1";
const POP_BGP: &str = "10.0.99.2";

impl RealisticPop {
    /// The lab, its backends, the database and the state; no agent yet.
    pub fn up(label: &str, max_services: MaxServices) -> Result<Self, Error> {
        let mut t = topology(label, BACKENDS.len())
            .ns("rtr")
            .veth(("pop", "bgp0"), ("rtr", "eth0"))
            .addr("pop", "bgp0", &format!("{POP_BGP}/30"))
            .addr("rtr", "eth0", &format!("{ROUTER}/30"))
            .addr("pop", "bgp0", "2001:db8:99::2/64")
            .addr("rtr", "eth0", "2001:db8:99::1/64");
        for (v4, v6, _, _) in CLIENTS {
            t = t.addr("client", "eth0", &format!("{v4}/24")).addr(
                "client",
                "eth0",
                &format!("{v6}/64"),
            );
        }
        let lab = t.up()?;
        let mut servers = Vec::new();
        let echo = env!("CARGO_BIN_EXE_echo-server");
        for (n, (name, _, _)) in BACKENDS.iter().enumerate() {
            let ns = lab.ns(&format!("be{}", n + 1));
            let plain = format!("[::]:{BACKEND_PORT}");
            let hello = format!("[::]:{HELLO_PORT}");
            for argv in [vec![echo, &plain], vec![echo, "--hello", name, &hello]] {
                let server = ns.spawn("echo-server", &argv, &[])?;
                server.wait_for_output("echo-server ready", Duration::from_secs(10))?;
                servers.push(server);
            }
        }
        let geo = lab.log_dir().join("countries.mmdb");
        write_database(&geo, &[])?;
        let state = state_database(&lab)?;
        let config = AgentConfig::pop()
            .region("eu")
            .overlay("ovl0", OVERLAY)
            .affinity_ttl_secs(300)
            .health(Health {
                enabled: Some(true),
                interval_ms: Some(500),
                ..Health::default()
            })
            .geo_database(&geo)
            .state_database(&state)
            .bgp(Bgp {
                asn: Some(65001),
                graceful_restart_secs: Some(30),
                peers: vec![BgpPeer {
                    address: ROUTER.to_owned(),
                    asn: 65000,
                    next_hop_v6: Some("2001:db8:99::2".to_owned()),
                }],
            });
        let config = match max_services {
            MaxServices::Default => config,
            // A fresh start builds 72 tables (each service one per backend country, one per
            // region of countries without a backend, one for the rest): 80 rings leave 8.
            MaxServices::Tight => config.max_services(40),
        };
        let (bird, bird_socket) = start_bird(&lab)?;
        Ok(RealisticPop {
            pins: bpffs_pin_dir(lab.ns("pop").name()),
            lab,
            geo,
            config,
            bird: Bird {
                process: bird,
                socket: bird_socket.clone(),
            },
            bird_socket,
            servers,
        })
    }

    /// Stops the router and the backends, removes the lab and checks it left nothing.
    pub fn tear_down(self) {
        let RealisticPop {
            lab, bird, servers, ..
        } = self;
        drop(bird);
        drop(servers);
        super::common::tear_down(lab);
    }

    /// `birdc show route for VIP`'s answer.
    pub fn route(&self, vip: &str) -> Result<String, Error> {
        let out = std::process::Command::new("birdc")
            .args(["-s", &self.bird_socket, "show", "route", "for", vip])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the router has both VIPs from this POP.
    pub fn wait_routes(&self) -> TestResult {
        let started = std::time::Instant::now();
        while !self.route(VIP4)?.contains("[pop") || !self.route(VIP6)?.contains("[pop") {
            if started.elapsed() > Duration::from_secs(30) {
                return Err(
                    format!("the router has no route to the VIPs: {}", self.route(VIP4)?).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Starts an agent on this POP (`--reset` for a first start).
    pub fn start(&self, args: &[&str]) -> Result<LabProcess, Error> {
        Ok(start_agent(
            &self.lab,
            &agent_bin(),
            &self.config.to_toml()?,
            args,
        )?)
    }

    /// 200 long-lived connections over both `hold` services, held until `go` exists, then
    /// echoed once more.
    pub fn hold(&self, go: &Path) -> Result<LabProcess, Error> {
        let echo_load = env!("CARGO_BIN_EXE_echo-load").as_ref();
        let held = edge_tests::pop_lab::spawn_echo_load_until(
            &self.lab,
            echo_load,
            200,
            4096,
            600,
            Some(go),
            true,
        )?;
        held.wait_for_output("holding 200", Duration::from_secs(60))?;
        Ok(held)
    }

    /// A new client every 10 ms from every client address to the four `web` services, until
    /// `go` exists.
    pub fn churn(&self, go: &Path) -> Result<LabProcess, Error> {
        let bin = env!("CARGO_BIN_EXE_geo-churn");
        let go = go.to_string_lossy();
        let mut argv: Vec<String> = [bin, "--every-ms", "10", "--go-file", &go, "--from"]
            .map(String::from)
            .to_vec();
        for (v4, v6, _, _) in CLIENTS {
            argv.extend([v4.to_owned(), v6.to_owned()]);
        }
        argv.push("--to".into());
        for (_, vip, port, backend_port) in SERVICES {
            if backend_port == HELLO_PORT {
                argv.push(match vip.parse::<IpAddr>()? {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                });
            }
        }
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let churn = self.lab.ns("client").spawn("geo-churn", &argv, &[])?;
        churn.wait_for_output("churning", Duration::from_secs(10))?;
        Ok(churn)
    }
}

/// BIRD in `rtr`, peering with the POP's agent (which connects) with graceful restart.
fn start_bird(lab: &Lab) -> Result<(LabProcess, String), Error> {
    let log = lab.log_dir().join("bird.log");
    let conf = format!(
        r#"router id {ROUTER};
log "{}" all;
protocol device {{ scan time 1; }}
protocol bgp pop {{
  local {ROUTER} as 65000;
  neighbor {POP_BGP} as 65001;
  passive on;
  hold time 9;
  error wait time 1, 2;
  graceful restart on;
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
}}
"#,
        log.display()
    );
    super::anycast_lab::spawn_bird(lab, "rtr", &conf)
}

/// Checks a `geo-churn` summary: no failure, and every client on a backend its tier picks.
/// Returns the number of connections.
pub fn check_churn(doc: &serde_json::Value, what: &str) -> Result<u64, Error> {
    let failed = doc["failed"].as_u64().ok_or("no failed count")?;
    let ok = doc["ok"].as_u64().ok_or("no ok count")?;
    let mut wrong = Vec::new();
    let landed = doc["landed"].as_object().ok_or("no landed map")?;
    for (pair, backends) in landed {
        let from = pair.split('|').next().ok_or("pair")?;
        let (_, _, country, want) = CLIENTS
            .iter()
            .find(|(v4, v6, _, _)| *v4 == from || *v6 == from)
            .ok_or_else(|| format!("unknown client {from}"))?;
        for (backend, n) in backends.as_object().ok_or("backends")? {
            if !want.contains(&backend.as_str()) {
                wrong.push(format!(
                    "{pair} ({country}): {n} on {backend}, want {want:?}"
                ));
            }
        }
    }
    if failed > 0 || !wrong.is_empty() {
        return Err(format!(
            "{what}: {ok} ok, {failed} failed {}; on the wrong backend: {wrong:?}",
            doc["errors"]
        )
        .into());
    }
    Ok(ok)
}

/// Writes the country database: the clients' addresses, and 100,000 filler networks (60,000
/// IPv4 /24s, 40,000 IPv6 /40s) of `FILLER_COUNTRIES` plus `extra` countries.
pub fn write_database(path: &Path, extra: &[&str]) -> Result<(), Error> {
    let mut entries: Vec<(ipnet::IpNet, Country)> = Vec::new();
    for (v4, v6, country, _) in CLIENTS {
        entries.push((format!("{v4}/32").parse()?, country.parse()?));
        entries.push((format!("{v6}/128").parse()?, country.parse()?));
    }
    let countries: Vec<Country> = FILLER_COUNTRIES
        .iter()
        .chain(extra)
        .map(|c| c.parse())
        .collect::<Result<_, _>>()?;
    let mut rng = fastrand::Rng::with_seed(19);
    let mut seen = BTreeSet::new();
    while seen.len() < 60_000 {
        // 11.0.0.0 - 95.255.255.255: clear of the lab's 10/8, 100.64/10 and 198.18/15.
        let net = (rng.u32(11 << 24..96 << 24)) & 0xffff_ff00;
        if seen.insert(net) {
            let net = ipnet::Ipv4Net::new(net.into(), 24)?;
            entries.push((net.into(), countries[rng.usize(..countries.len())]));
        }
    }
    let mut seen6 = BTreeSet::new();
    while seen6.len() < 40_000 {
        let high = 0x2a00_0000_0000u64 | rng.u64(..1 << 40);
        if seen6.insert(high) {
            let addr = std::net::Ipv6Addr::from(u128::from(high) << 88);
            let net = ipnet::Ipv6Net::new(addr, 40)?;
            entries.push((net.into(), countries[rng.usize(..countries.len())]));
        }
    }
    write_country_mmdb(path, &entries, "edgeProxy-Realistic-Country")?;
    Ok(())
}

/// The SQLite state: the six services, each with the eight backends.
fn state_database(lab: &Lab) -> Result<PathBuf, Error> {
    let path = lab.log_dir().join("routing.db");
    let state = edge_agent::state::SqliteState::open(&path)?;
    for (service, vip, port, backend_port) in SERVICES {
        state.upsert_service(&Service {
            id: service.into(),
            vip: vip.parse()?,
            port,
            check: None,
        })?;
        for (n, (name, region, country)) in BACKENDS.iter().enumerate() {
            state.upsert_backend(&Backend {
                id: format!("{service}-{name}"),
                service: service.into(),
                region: region.parse()?,
                country: country.parse()?,
                addr: BackendAddr::Ip(backend_addr(n + 1).parse()?),
                port: backend_port,
                weight: 1,
                soft_limit: 1000,
                hard_limit: 10_000,
                draining: false,
                enabled: true,
                check: None,
                lease: None,
            })?;
        }
    }
    Ok(path)
}

/// Which backend name each client address landed on in `doc`'s `landed` map, all pairs
/// together.
pub fn landings(doc: &serde_json::Value) -> BTreeMap<String, BTreeSet<String>> {
    let mut by_client: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (pair, backends) in doc["landed"].as_object().into_iter().flatten() {
        let from = pair.split('|').next().unwrap_or_default().to_owned();
        for backend in backends.as_object().into_iter().flatten().map(|(b, _)| b) {
            by_client
                .entry(from.clone())
                .or_default()
                .insert(backend.clone());
        }
    }
    by_client
}

/// Fails unless `pins` hold a running data plane (a check the tests make between restarts).
pub fn assert_serving(pins: &Path) -> TestResult {
    let doc = super::common::agent_json(pins, &["status"])?;
    if doc["services"].as_array().map_or(0, Vec::len) != SERVICES.len() {
        return Err(format!("not every service in the kernel: {}", doc["services"]).into());
    }
    Ok(())
}
