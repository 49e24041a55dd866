//! The 6PN mesh built by the agents from control-plane rows alone: two POPs and three backend
//! hosts in three regions, each agent publishing its own row and keeping one WireGuard peer per
//! other member. No `wg` or `ip` command configures anything here (`wg show` only reads).
//! Checked: every member lists exactly the others with their /96; every member reaches every
//! other over its 6PN address; a client's connection to a POP's VIP is carried to backends in
//! other regions through WireGuard, bytes intact; a host's removal reaches every peer within
//! 1 s while a transfer between two other hosts goes on; a key rotation keeps the mesh up.
//!
//! ```text
//! client --eth0-- popsa --u0--+
//!                 popeu --u0--+-- net (IPv6 underlay router)
//!                 hsa   --u0--+
//!                 hus   --u0--+
//!                 heu   --u0--+
//! ```

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use edge_agent::{
    model::BackendAddr,
    sixpn::{Deployment, RegionNumbers},
    state::SqliteState,
};
use edge_tests::{
    agent_config::{Dns, Health, Passive, Sixpn},
    bpffs_pin_dir, AgentConfig, Lab, LabProcess, Topology,
};

use super::common::{agent_bin, lab_backend, tear_down, web_state, TestResult};

type Error = Box<dyn std::error::Error>;

const PREFIX: &str = "fd5e:a1c0:7b3d::/48";
const VIP4: &str = "198.18.9.10";
const PORT: u16 = 51820;

struct Member {
    ns: &'static str,
    region: &'static str,
    number: u32,
    pop: bool,
}

const MEMBERS: [Member; 5] = [
    Member {
        ns: "popsa",
        region: "sa",
        number: 1,
        pop: true,
    },
    Member {
        ns: "popeu",
        region: "eu",
        number: 1,
        pop: true,
    },
    Member {
        ns: "hsa",
        region: "sa",
        number: 2,
        pop: false,
    },
    Member {
        ns: "hus",
        region: "us",
        number: 1,
        pop: false,
    },
    Member {
        ns: "heu",
        region: "eu",
        number: 2,
        pop: false,
    },
];

/// v1's IPv4 overlay address of member `i`, kept on the same tunnel (dual stack).
fn v1_addr(i: usize) -> String {
    format!("10.50.{}.1", i + 1)
}

fn underlay(i: usize) -> String {
    format!("2001:db8:6{i}::2")
}

fn addr(m: &Member) -> Result<Ipv6Addr, Error> {
    let d: Deployment = PREFIX.parse()?;
    let region = RegionNumbers::default()
        .get(m.region)
        .ok_or("well-known region")?;
    Ok(d.host_addr(region, m.number))
}

fn topology() -> Topology {
    let mut t = Topology::new("6pn")
        .ns("client")
        .ns("net")
        .veth(("client", "eth0"), ("popsa", "eth0"))
        .tx_checksum_off("client", "eth0")
        .addr("client", "eth0", "10.0.1.2/24")
        .addr("popsa", "eth0", "10.0.1.1/24")
        .addr("popsa", "lo", &format!("{VIP4}/32"))
        .route("client", "default", "10.0.1.1")
        // The eu POP's public side, where no client is in this lab.
        .veth(("popeu", "eth0"), ("net", "pe"))
        .addr("popeu", "eth0", "10.0.2.1/24")
        .sysctl("net", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("popsa", "net.ipv4.ip_forward", "1")
        .sysctl("popsa", "net.ipv6.conf.all.forwarding", "1");
    for (i, m) in MEMBERS.iter().enumerate() {
        t = t
            .ns(m.ns)
            .veth((m.ns, "u0"), ("net", &format!("m{i}")))
            .addr(m.ns, "u0", &format!("{}/64", underlay(i)))
            .addr("net", &format!("m{i}"), &format!("2001:db8:6{i}::1/64"))
            .route(m.ns, "2001:db8::/32", &format!("2001:db8:6{i}::1"));
    }
    t
}

struct Mesh {
    lab: Lab,
    agents: BTreeMap<&'static str, LabProcess>,
    servers: Vec<LabProcess>,
}

impl Mesh {
    fn config(&self, i: usize, db: &std::path::Path) -> Result<String, Error> {
        let m = &MEMBERS[i];
        let key = self.lab.log_dir().join(format!("{}.key", m.ns));
        let sixpn = Sixpn {
            enabled: Some(true),
            id: Some(m.ns.to_owned()),
            host_number: Some(m.number),
            ifname: Some(self.lab.wg_ifname(i as u16)),
            listen_port: Some(PORT),
            endpoint: Some(format!("[{}]:{PORT}", underlay(i))),
            key_file: Some(key),
            keepalive_secs: Some(5),
            ipv4: Some(format!("{}/16", v1_addr(i))),
        };
        let common = AgentConfig::default()
            .pop_id(m.ns)
            .region(m.region)
            .stats_log_secs(0)
            .state_database(db)
            .dns(Dns::off())
            .metrics()
            .sixpn(sixpn);
        let config = if m.pop {
            AgentConfig {
                iface: Some("eth0".to_owned()),
                ..common
            }
            .overlay(&self.lab.wg_ifname(i as u16), &addr(m)?.to_string())
            .max_flows(65_536)
            .max_services(4)
            .affinity_ttl_secs(0)
            .health(Health {
                passive: Some(Passive {
                    enabled: Some(false),
                    ..Passive::default()
                }),
                ..Health::default()
            })
        } else {
            common
        };
        Ok(config.to_toml()?)
    }

    fn start(&mut self, i: usize, db: &std::path::Path) -> Result<(), Error> {
        let m = &MEMBERS[i];
        let path = self.lab.log_dir().join(format!("{}.toml", m.ns));
        std::fs::write(&path, self.config(i, db)?)?;
        let pins = bpffs_pin_dir(self.lab.ns(m.ns).name());
        let agent = agent_bin();
        let (agent, pins, path) = (
            agent.to_string_lossy().into_owned(),
            pins.to_string_lossy().into_owned(),
            path.to_string_lossy().into_owned(),
        );
        let role = if m.pop { "run" } else { "host" };
        let argv = [&*agent, "--bpffs-root", &*pins, "--config", &*path, role];
        let p = self
            .lab
            .ns(m.ns)
            .spawn(&format!("agent-{}", m.ns), &argv, &[])?;
        let ready = if m.pop {
            "edge-agent ready"
        } else {
            "edge-agent host ready"
        };
        p.wait_for_output(ready, Duration::from_secs(30))?;
        self.agents.insert(m.ns, p);
        Ok(())
    }

    /// `wg show <if> allowed-ips` in member `i`'s namespace: public key -> allowed IPs.
    fn wg_peers(&self, i: usize) -> Result<BTreeMap<String, String>, Error> {
        let ifname = self.lab.wg_ifname(i as u16);
        let out = self
            .lab
            .ns(MEMBERS[i].ns)
            .exec(&["wg", "show", &ifname, "allowed-ips"])?;
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| {
                let (k, ips) = l.split_once('\t')?;
                let mut ips: Vec<&str> = ips.split_whitespace().collect();
                ips.sort_unstable();
                Some((k.to_owned(), ips.join(" ")))
            })
            .collect())
    }

    /// The public key member `i` published in its row.
    fn published_key(&self, state: &SqliteState, i: usize) -> Result<String, Error> {
        let (snap, _) = state.snapshot()?;
        snap.pops
            .iter()
            .find(|p| p.id == MEMBERS[i].ns)
            .and_then(|p| p.public_key.clone())
            .ok_or_else(|| format!("{} has published no key", MEMBERS[i].ns).into())
    }

    fn ping(&self, from: usize, to: usize) -> Result<bool, Error> {
        let target = addr(&MEMBERS[to])?.to_string();
        let out = self
            .lab
            .ns(MEMBERS[from].ns)
            .exec(&["ping", "-6", "-c", "1", "-W", "1", &target])?;
        Ok(out.success())
    }
}

/// Sends `size` pseudo-random bytes to an echo server at `target` from inside `ns` and checks
/// every byte comes back.
fn echo(lab: &Lab, ns: &str, target: SocketAddr, size: usize, seed: u64) -> Result<(), Error> {
    lab.ns(ns).run_in_thread(|| -> Result<(), String> {
        // A pattern that differs at every offset and per seed: a misplaced byte shows.
        let data: Vec<u8> = (0..size as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 7) as u8)
            .collect();
        let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5))
            .map_err(|e| format!("connect {target}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut writer = s.try_clone().map_err(|e| e.to_string())?;
        let sent = data.clone();
        let w = std::thread::spawn(move || writer.write_all(&sent));
        let mut back = vec![0u8; size];
        s.read_exact(&mut back)
            .map_err(|e| format!("echo from {target}: {e}"))?;
        w.join()
            .map_err(|_| "writer panicked".to_owned())?
            .map_err(|e| e.to_string())?;
        if back != data {
            return Err(format!("echo from {target} differs"));
        }
        Ok(())
    })??;
    Ok(())
}

#[test]
fn agents_build_the_mesh_from_rows_alone() -> TestResult {
    let lab = topology().up()?;
    let mut mesh = Mesh {
        lab,
        agents: BTreeMap::new(),
        servers: Vec::new(),
    };
    let result = scenario(&mut mesh);
    for p in mesh.agents.values().chain(mesh.servers.iter()) {
        let _ = p.signal(libc::SIGTERM);
    }
    for p in mesh.agents.values() {
        let _ = p.wait_exit(Duration::from_secs(5));
    }
    tear_down(mesh.lab);
    result
}

fn scenario(mesh: &mut Mesh) -> TestResult {
    // The control plane: the deployment's prefix, a service whose backends are the hosts in
    // regions other than the client's POP. No peer, address or key is written by the test.
    let (state, db) = web_state(&mesh.lab, VIP4)?;
    state.upsert_setting("sixpn.prefix", PREFIX)?;
    for i in [3, 4] {
        let m = &MEMBERS[i];
        state.upsert_backend(&lab_backend(
            &format!("be-{}", m.ns),
            "web",
            m.region,
            if m.region == "us" { "US" } else { "DE" },
            BackendAddr::Ip(addr(m)?),
        )?)?;
        let server = mesh.lab.ns(m.ns).spawn(
            &format!("echo-{}", m.ns),
            &[env!("CARGO_BIN_EXE_echo-server"), "[::]:7007"],
            &[],
        )?;
        server.wait_for_output("echo-server ready", Duration::from_secs(10))?;
        mesh.servers.push(server);
    }

    let started = Instant::now();
    for i in 0..MEMBERS.len() {
        mesh.start(i, &db)?;
    }

    // Every member lists exactly the four others, each with its /96.
    let d: Deployment = PREFIX.parse()?;
    let expect = |state: &SqliteState, i: usize| -> Result<BTreeMap<String, String>, Error> {
        let mut want = BTreeMap::new();
        for (j, m) in MEMBERS.iter().enumerate() {
            if j != i {
                let region = RegionNumbers::default().get(m.region).ok_or("region")?;
                want.insert(
                    mesh.published_key(state, j)?,
                    // Sorted as `wg_peers` sorts: the v1 /32 first.
                    format!("{}/32 {}", v1_addr(j), d.host_prefix(region, m.number)),
                );
            }
        }
        Ok(want)
    };
    loop {
        let all = (0..MEMBERS.len())
            .map(|i| Ok(mesh.wg_peers(i)? == expect(&state, i)?))
            .collect::<Result<Vec<bool>, Error>>()?;
        if all.iter().all(|x| *x) {
            println!(
                "6pn: full mesh of 5 from rows alone after {} ms",
                started.elapsed().as_millis()
            );
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let got: Vec<_> = (0..MEMBERS.len()).map(|i| mesh.wg_peers(i)).collect();
            return Err(format!("mesh incomplete: {got:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // Everyone reaches everyone over 6PN. A first handshake sent before the other side knew
    // this peer is retried by WireGuard after its 5 s rekey timeout: allow a few.
    let mut slowest = Duration::ZERO;
    for (from, a) in MEMBERS.iter().enumerate() {
        for (to, b) in MEMBERS.iter().enumerate() {
            if from == to {
                continue;
            }
            let start = Instant::now();
            while !mesh.ping(from, to)? {
                if start.elapsed() > Duration::from_secs(25) {
                    return Err(format!("{} cannot reach {}", a.ns, b.ns).into());
                }
            }
            slowest = slowest.max(start.elapsed());
        }
    }
    println!(
        "6pn: all 20 ordered pairs reach each other over their 6PN addresses (slowest first answer {} ms)",
        slowest.as_millis()
    );
    // Dual stack during the transition: v1's IPv4 overlay addresses ride the same tunnels.
    for (from, to) in [(0usize, 3usize), (3, 4), (4, 1)] {
        let out = mesh.lab.ns(MEMBERS[from].ns).exec(&[
            "ping",
            "-4",
            "-c",
            "1",
            "-W",
            "2",
            &v1_addr(to),
        ])?;
        assert!(
            out.success(),
            "{} -> {} over v1 IPv4: {}",
            MEMBERS[from].ns,
            MEMBERS[to].ns,
            out.stdout
        );
    }

    // The status (written every second) says which WireGuard, and each peer's handshake,
    // bytes and endpoint.
    let start = Instant::now();
    let doc = loop {
        let out = Command::new(agent_bin())
            .arg("--bpffs-root")
            .arg(bpffs_pin_dir(mesh.lab.ns("popsa").name()))
            .args(["wg", "show", "--output", "json"])
            .output()?;
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
        let all_shook = doc["peers"].as_array().is_some_and(|p| {
            p.len() == 4 && p.iter().all(|p| p["last_handshake_secs_ago"].is_number())
        });
        if all_shook || start.elapsed() > Duration::from_secs(3) {
            break doc;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        doc["implementation"]
            .as_str()
            .unwrap_or("")
            .starts_with("userspace"),
        "{doc}"
    );
    let peers = doc["peers"].as_array().ok_or("no peers")?;
    assert_eq!(peers.len(), 4, "{doc}");
    assert!(
        peers
            .iter()
            .all(|p| p["endpoint"].is_string() && p["tx_bytes"].as_u64() > Some(0)),
        "{doc}"
    );
    assert!(
        peers
            .iter()
            .all(|p| p["last_handshake_secs_ago"].is_number()),
        "{doc}"
    );

    // A client at the sa POP reaches backends in us and eu through WireGuard, bytes intact.
    for seed in 0..6 {
        echo(
            &mesh.lab,
            "client",
            format!("{VIP4}:7").parse()?,
            200_000,
            seed,
        )?;
    }
    println!("6pn: 6 client connections through the sa POP's data plane to us/eu backends over WireGuard echoed intact");

    // The POP's agent killed and started again: the data plane and the 6PN device outlive it,
    // the new agent adopts both, and a connection through them goes on.
    let vip: SocketAddr = format!("{VIP4}:7").parse()?;
    let mut held = mesh
        .lab
        .ns("client")
        .run_in_thread(|| -> Result<TcpStream, String> {
            let s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            Ok(s)
        })??;
    let round = |held: &mut TcpStream, what: &str| -> Result<(), Error> {
        let msg = format!("still here: {what}");
        held.write_all(msg.as_bytes())?;
        let mut back = vec![0u8; msg.len()];
        held.read_exact(&mut back)?;
        assert_eq!(back, msg.as_bytes(), "{what}");
        Ok(())
    };
    round(&mut held, "before")?;
    if let Some(agent) = mesh.agents.remove("popsa") {
        agent.signal(libc::SIGKILL)?;
        agent.wait_exit(Duration::from_secs(5))?;
    }
    round(&mut held, "while no agent runs")?;
    mesh.start(0, &db)?;
    let restarted = mesh.agents.get("popsa").ok_or("popsa's agent")?;
    assert!(
        restarted.output_so_far().contains("adopted=true"),
        "the new agent did not adopt the 6PN device"
    );
    round(&mut held, "after the restart")?;
    echo(&mesh.lab, "client", vip, 100_000, 7)?;
    println!("6pn: the sa POP's agent SIGKILLed and restarted: a held connection echoed before, during and after; the device was adopted");

    // Removing hsa (its agent stopped, its row deleted) reaches every peer within 1 s while
    // hus streams to heu.
    let heu: SocketAddr = SocketAddr::new(IpAddr::V6(addr(&MEMBERS[4])?), 7007);
    if let Some(agent) = mesh.agents.remove("hsa") {
        agent.signal(libc::SIGTERM)?;
        agent.wait_exit(Duration::from_secs(5))?;
    }
    let mesh = &*mesh;
    let lab = &mesh.lab;
    let removed_in = std::thread::scope(|s| -> Result<Duration, Error> {
        let transfer = s.spawn(|| echo(lab, "hus", heu, 30_000_000, 99).map_err(|e| e.to_string()));
        std::thread::sleep(Duration::from_millis(300));
        let removed_key = mesh.published_key(&state, 2)?;
        let start = Instant::now();
        state.execute(&edge_agent::state::write::delete_pop("hsa"))?;
        let others = [0usize, 1, 3, 4];
        loop {
            let gone = others
                .iter()
                .map(|&i| Ok(!mesh.wg_peers(i)?.contains_key(&removed_key)))
                .collect::<Result<Vec<bool>, Error>>()?;
            if gone.iter().all(|g| *g) {
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                return Err("hsa's peer is still listed".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = start.elapsed();
        transfer.join().map_err(|_| "transfer panicked")??;
        Ok(took)
    })?;
    println!(
        "6pn: host row deleted -> peer gone from all 4 others after {} ms; a 30 MB transfer hus -> heu went on intact",
        removed_in.as_millis()
    );
    assert!(removed_in < Duration::from_secs(1), "{removed_in:?}");
    for i in [0usize, 1, 3, 4] {
        assert_eq!(mesh.wg_peers(i)?.len(), 3);
    }

    // Key rotation on hus: the new key is published, everyone switches, the mesh stays up.
    let old = mesh.published_key(&state, 3)?;
    let out = Command::new(agent_bin())
        .arg("--config")
        .arg(mesh.lab.log_dir().join("hus.toml"))
        .args(["wg", "rotate-key"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = mesh.published_key(&state, 3)?;
    assert_ne!(old, new);
    let start = Instant::now();
    loop {
        let switched = [0usize, 1, 4]
            .iter()
            .map(|&i| Ok(mesh.wg_peers(i)?.contains_key(&new)))
            .collect::<Result<Vec<bool>, Error>>()?;
        if switched.iter().all(|s| *s) && mesh.ping(0, 3)? && mesh.ping(3, 4)? {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("the mesh did not follow hus's new key".into());
        }
    }
    println!(
        "6pn: key rotated on hus -> peers switched and pings pass after {} ms",
        start.elapsed().as_millis()
    );
    Ok(())
}
