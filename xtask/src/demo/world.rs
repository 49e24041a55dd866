//! The running world: the lab's namespaces, the ISPs' BIRD routers, the POP agents, the 6PN
//! hosts and their backends, and the acts that break and restore them.
//!
//! ```text
//!  clam (BR AR US CA) --c0-- ispam (BIRD) --+                 +-- popsa (XDP eth0, 6PN) --+
//!                                           +-- ix (bridge) --+                           +-- net (IPv6
//!  clea (DE FR JP AU) --c0-- ispea (BIRD) --+                 +-- popeu (XDP eth0, 6PN) --+   underlay) --
//!                                                                      hbr hus hde hjp (6PN hosts) --+
//! ```

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use edge_tests::{bpffs_pin_dir, Lab, LabProcess, Topology};

use super::plan::{
    self, members, sixpn_addr, underlay, BACKENDS, BACKEND_PORT, CLIENTS, ISPS, POPS, VIP, WG_PORT,
};

/// The `[state]` the agents share: one SQLite file (every namespace sees the same file system).
pub fn topology() -> Topology {
    let mut t = Topology::new("demo").ns("ix").ns("net");
    for (i, pop) in POPS.iter().enumerate() {
        t = t
            .ns(pop.ns)
            .veth((pop.ns, "eth0"), ("ix", &format!("p{i}")))
            .addr(pop.ns, "eth0", &format!("{}/24", pop.ix))
            // The VIP is local: a segment with no flow is answered by the POP's kernel.
            .addr(pop.ns, "lo", &format!("{VIP}/32"))
            .sysctl(pop.ns, "net.ipv4.ip_forward", "1")
            .sysctl(pop.ns, "net.ipv6.conf.all.forwarding", "1");
        t = pop_routes(t, pop.ns);
    }
    for (j, isp) in ISPS.iter().enumerate() {
        t = t
            .ns(isp.ns)
            .ns(isp.clients_ns)
            .veth((isp.ns, "ix"), ("ix", &format!("r{j}")))
            .veth((isp.clients_ns, "eth0"), (isp.ns, "c0"))
            .addr(isp.ns, "ix", &format!("{}/24", isp.ix))
            .addr(isp.ns, "c0", &format!("{}/16", isp.lan))
            .route(isp.clients_ns, "default", isp.lan)
            .sysctl(isp.ns, "net.ipv4.ip_forward", "1")
            // Full checksums into the POPs' XDP programs, as a wire delivers (TOOLCHAIN.md).
            .tx_checksum_off(isp.clients_ns, "eth0")
            .tx_checksum_off(isp.ns, "ix");
    }
    for c in &CLIENTS {
        t = t.addr(ISPS[c.isp].clients_ns, "eth0", &format!("{}/16", c.addr));
    }
    t = t.sysctl("net", "net.ipv6.conf.all.forwarding", "1");
    for (i, m) in members().iter().enumerate() {
        if !m.pop {
            t = t.ns(m.ns);
        }
        t = t
            .veth((m.ns, "u0"), ("net", &format!("m{i}")))
            .addr(m.ns, "u0", &format!("{}/64", underlay(i)))
            .addr("net", &format!("m{i}"), &format!("2001:db8:6{i}::1/64"))
            .route(m.ns, "2001:db8::/32", &format!("2001:db8:6{i}::1"));
    }
    t
}

/// A POP's routes back to the clients: through the ISP each client came from.
fn pop_routes(t: Topology, ns: &str) -> Topology {
    ISPS.iter().fold(t, |t, isp| {
        let lan = isp.lan.replace(".0.1", ".0.0/16");
        t.route(ns, &lan, isp.ix)
    })
}

/// The processes of the world, each `None` while it is killed.
pub struct World {
    pub lab: Lab,
    pub agent: PathBuf,
    pub echo_server: PathBuf,
    pub db: PathBuf,
    pub routers: Vec<LabProcess>,
    pub bird_sockets: Vec<String>,
    pub pop_agents: Vec<Option<LabProcess>>,
    pub host_agents: Vec<LabProcess>,
    pub backends: Vec<Option<LabProcess>>,
    pub drained: Vec<bool>,
}

impl Drop for World {
    fn drop(&mut self) {
        for socket in &self.bird_sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl World {
    /// Brings every process up; returns once every agent says it is ready.
    pub fn start(lab: Lab, agent: &Path, echo_server: &Path) -> anyhow::Result<Self> {
        bridge_ix(&lab)?;
        let db = lab.log_dir().join("routing.db");
        super::state::init(&db)?;
        let geo = lab.log_dir().join("countries.csv");
        let csv: String = CLIENTS
            .iter()
            .map(|c| {
                let net = c.addr.rsplit_once('.').map_or(c.addr, |(n, _)| n);
                format!("{net}.0/24,{}\n", c.country)
            })
            .collect();
        std::fs::write(&geo, csv).with_context(|| format!("writing {}", geo.display()))?;
        let mut world = World {
            lab,
            agent: agent.to_owned(),
            echo_server: echo_server.to_owned(),
            db,
            routers: Vec::new(),
            bird_sockets: Vec::new(),
            pop_agents: Vec::new(),
            host_agents: Vec::new(),
            backends: Vec::new(),
            drained: vec![false; POPS.len()],
        };
        for i in 0..ISPS.len() {
            world.start_router(i)?;
        }
        for i in 0..BACKENDS.len() {
            let server = world.spawn_backend(i)?;
            world.backends.push(Some(server));
        }
        for (i, m) in members().iter().enumerate() {
            let config = world.config_path(m.ns);
            std::fs::write(&config, agent_config(&world.lab, i, &world.db, &geo))
                .with_context(|| format!("writing {}", config.display()))?;
        }
        // The first POP's agent alone, then the others together: agents opening a fresh state
        // file at the same moment can fail with "database is locked" while one of them brings
        // the schema up (seen here once in four starts), so one does it first.
        let mut pending = Vec::new();
        for (i, m) in members().iter().enumerate() {
            let role = if m.pop { "run" } else { "host" };
            let p = world.spawn_agent(m.ns, role)?;
            if i == 0 {
                p.wait_for_output("edge-agent ready", Duration::from_secs(60))
                    .with_context(|| format!("the agent of {} did not start", m.ns))?;
            }
            pending.push((i, p));
        }
        for (i, p) in pending {
            let m = &members()[i];
            let ready = if m.pop {
                "edge-agent ready"
            } else {
                "edge-agent host ready"
            };
            p.wait_for_output(ready, Duration::from_secs(60))
                .with_context(|| format!("the agent of {} did not start", m.ns))?;
            if m.pop {
                world.pop_agents.push(Some(p));
            } else {
                world.host_agents.push(p);
            }
        }
        Ok(world)
    }

    pub fn config_path(&self, ns: &str) -> PathBuf {
        self.lab.log_dir().join(format!("{ns}.toml"))
    }

    pub fn pins(&self, ns: &str) -> PathBuf {
        bpffs_pin_dir(self.lab.ns(ns).name())
    }

    fn spawn_agent(&self, ns: &str, role: &str) -> anyhow::Result<LabProcess> {
        let (agent, pins, config) = (
            self.agent.to_string_lossy().into_owned(),
            self.pins(ns).to_string_lossy().into_owned(),
            self.config_path(ns).to_string_lossy().into_owned(),
        );
        let argv = [&*agent, "--bpffs-root", &*pins, "--config", &*config, role];
        Ok(self.lab.ns(ns).spawn(&format!("agent-{ns}"), &argv, &[])?)
    }

    fn spawn_backend(&self, i: usize) -> anyhow::Result<LabProcess> {
        let b = &BACKENDS[i];
        let server = self.echo_server.to_string_lossy();
        let listen = format!("[::]:{BACKEND_PORT}");
        let p = self.lab.ns(b.ns).spawn(
            &format!("echo-{}", b.id),
            &[&server, "--hello", b.id, "--say-peer", &listen],
            &[],
        )?;
        p.wait_for_output("echo-server ready", Duration::from_secs(10))?;
        Ok(p)
    }

    fn start_router(&mut self, i: usize) -> anyhow::Result<()> {
        let isp = &ISPS[i];
        let ns = self.lab.ns(isp.ns);
        let log = self.lab.log_dir().join(format!("bird-{}.log", isp.ns));
        let conf = self.lab.log_dir().join(format!("bird-{}.conf", isp.ns));
        std::fs::write(&conf, bird_config(i, &log))
            .with_context(|| format!("writing {}", conf.display()))?;
        // A unix socket path has room for 107 bytes: not under the lab's log directory.
        let socket = format!("/run/{}.bird.ctl", ns.name());
        let conf = conf.to_string_lossy();
        let bird = ns.spawn(
            &format!("bird-{}", isp.ns),
            &["bird", "-f", "-c", &conf, "-s", &socket],
            &[],
        )?;
        self.routers.push(bird);
        self.bird_sockets.push(socket);
        Ok(())
    }

    /// `edge-agent <args>` against POP or host `ns`, with its config; stdout on success.
    pub fn cli(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new(&self.agent)
            .arg("--bpffs-root")
            .arg(self.pins(ns))
            .arg("--config")
            .arg(self.config_path(ns))
            .args(args)
            .output()
            .with_context(|| format!("running edge-agent {args:?}"))?;
        if !out.status.success() {
            bail!(
                "edge-agent {args:?} for {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A POP's host dies: its link to the exchange goes down, then its agent is SIGKILLed.
    /// In that order, so that the kernel's FIN for the agent's BGP sockets never reaches the
    /// routers (a dead machine sends none): they learn it from BFD.
    pub fn kill_pop(&mut self, i: usize) -> anyhow::Result<()> {
        self.lab
            .ns(POPS[i].ns)
            .exec_ok(&["ip", "link", "set", "eth0", "down"])?;
        if let Some(agent) = self.pop_agents[i].take() {
            agent.kill()?;
            let _ = agent.wait_exit(Duration::from_secs(5));
        }
        Ok(())
    }

    /// `edge-agent drain` on POP `i`: graceful-shutdown community, then withdraw.
    pub fn drain_pop(&mut self, i: usize) -> anyhow::Result<()> {
        self.cli(POPS[i].ns, &["drain"])?;
        self.drained[i] = true;
        Ok(())
    }

    pub fn kill_backend(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(server) = self.backends[i].take() {
            server.kill()?;
            let _ = server.wait_exit(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Everything back: backends started, dead POPs' links up and agents started again (they
    /// adopt the pinned data plane), drains lifted. Returns what it restored.
    pub fn restore(&mut self) -> anyhow::Result<Vec<String>> {
        let mut done = Vec::new();
        for (i, b) in BACKENDS.iter().enumerate() {
            if self.backends[i].is_none() {
                self.backends[i] = Some(self.spawn_backend(i)?);
                done.push(format!("backend {}", b.id));
            }
        }
        for (i, pop) in POPS.iter().enumerate() {
            if self.pop_agents[i].is_none() {
                let ns = self.lab.ns(pop.ns);
                ns.exec_ok(&["ip", "link", "set", "eth0", "up"])?;
                // A link going down flushed the routes through it.
                for isp in &ISPS {
                    let lan = isp.lan.replace(".0.1", ".0.0/16");
                    ns.exec_ok(&["ip", "route", "replace", &lan, "via", isp.ix])?;
                }
                let agent = self.spawn_agent(pop.ns, "run")?;
                agent.wait_for_output("edge-agent ready", Duration::from_secs(60))?;
                self.pop_agents[i] = Some(agent);
                done.push(format!("POP {}", pop.id));
            }
            if self.drained[i] {
                self.cli(pop.ns, &["undrain"])?;
                self.drained[i] = false;
                done.push(format!("undrained {}", pop.id));
            }
        }
        Ok(done)
    }

    /// A process that should run and does not: the first one found, with its output.
    pub fn crashed(&self) -> Option<String> {
        let all = self
            .routers
            .iter()
            .chain(self.host_agents.iter())
            .chain(self.pop_agents.iter().flatten())
            .chain(self.backends.iter().flatten());
        all.into_iter()
            .find(|p| !p.is_running())
            .map(|p| format!("{} exited:\n{}", p.name(), p.output_so_far()))
    }
}

/// The exchange: one bridge joining the POPs' and the routers' ports, as an IX's switch does.
fn bridge_ix(lab: &Lab) -> anyhow::Result<()> {
    let ix = lab.ns("ix");
    ix.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"])?;
    let ports = (0..POPS.len())
        .map(|i| format!("p{i}"))
        .chain((0..ISPS.len()).map(|j| format!("r{j}")));
    for port in ports {
        ix.exec_ok(&["ip", "link", "set", &port, "master", "br0"])?;
    }
    ix.exec_ok(&["ip", "link", "set", "br0", "up"])?;
    Ok(())
}

/// Member `i`'s agent config: every member is in the 6PN mesh and reads the shared state; a
/// POP also runs the data plane on `eth0`, speaks BGP (with BFD) to both ISPs' routers, checks
/// its backends' health fast, and answers `.internal` DNS.
fn agent_config(lab: &Lab, i: usize, db: &Path, geo: &Path) -> String {
    let m = &members()[i];
    let addr = sixpn_addr(m.region, m.host_number);
    let key = lab.log_dir().join(format!("{}.key", m.ns));
    let ifname = lab.wg_ifname(i as u16);
    let sixpn = format!(
        "[sixpn]\nenabled = true\nid = \"{id}\"\nhost_number = {n}\nifname = \"{ifname}\"\n\
         listen_port = {WG_PORT}\nendpoint = \"[{under}]:{WG_PORT}\"\nkey_file = \"{key}\"\n\
         keepalive_secs = 5\n",
        id = m.id,
        n = m.host_number,
        under = underlay(i),
        key = key.display(),
    );
    let common = format!(
        "pop_id = \"{}\"\nregion = \"{}\"\nstats_log_secs = 0\n\n[state]\ndatabase = \"{}\"\n\n",
        m.id,
        m.region,
        db.display()
    );
    if !m.pop {
        return format!("{common}[dns]\nenabled = false\n\n{sixpn}");
    }
    let pop = &POPS[i];
    let mut peers = String::new();
    for isp in &ISPS {
        peers.push_str(&format!(
            "\n[[bgp.peers]]\naddress = \"{}\"\nasn = {}\n\n[bgp.peers.bfd]\nmin_tx_ms = 300\nmin_rx_ms = 300\nmultiplier = 3\n",
            isp.ix, isp.asn
        ));
    }
    format!(
        "iface = \"eth0\"\n{common}\
         [overlay]\niface = \"{ifname}\"\naddr = \"{addr}\"\n\n\
         [flows]\nmax_entries = 65536\n\n[maglev]\nmax_services = 4\n\n\
         # Each connection picks its backend afresh, so that the screen shows geo steering and\n\
         # failover as they happen rather than bindings kept from before.\n\
         [affinity]\nttl_secs = 0\n\n\
         [health]\nprofile = \"fast\"\n\n\
         [geo]\ndatabase = \"{geo}\"\n\n\
         [dns]\nlisten = [\"127.0.0.1:53\"]\n\n\
         [bgp]\nasn = {asn}\nhold_time_secs = 9\nhold_down_ms = 1000\ndrain_delay_secs = 2\ndrain_prepend = 2\n\
         {peers}\n{sixpn}",
        geo = geo.display(),
        asn = pop.asn,
    )
}

/// ISP `i`'s router: eBGP with every POP over the exchange, BFD at 300 ms x 3 (100 ms lost
/// sessions on this 2-core machine when other builds ran beside the lab), and its near
/// POP's routes preferred (LOCAL_PREF 200 against 100).
fn bird_config(i: usize, log: &Path) -> String {
    let isp = &ISPS[i];
    let mut pops = String::new();
    for (p, pop) in POPS.iter().enumerate() {
        let pref = if p == isp.near_pop { 200 } else { 100 };
        pops.push_str(&format!(
            "protocol bgp {ns} from pops {{\n  neighbor {ip} as {asn};\n  ipv4 {{ import filter {{ bgp_local_pref = {pref}; accept; }}; export none; }};\n}}\n",
            ns = pop.ns,
            ip = pop.ix,
            asn = pop.asn,
        ));
    }
    format!(
        r#"router id {ix};
log "{log}" {{ info, warning, error, fatal }};
protocol device {{ scan time 1; }}
protocol kernel k4 {{ ipv4 {{ export all; }}; }}
protocol bfd {{
  interface "ix" {{ min rx interval 300 ms; min tx interval 300 ms; multiplier 3; }};
}}
template bgp pops {{
  local {ix} as {asn};
  passive on;
  hold time 9;
  error wait time 1, 2;
  bfd on;
  ipv4 {{ import all; export none; }};
}}
{pops}"#,
        ix = isp.ix,
        asn = isp.asn,
        log = log.display(),
    )
}

/// The POP whose overlay address `peer` (the source a backend saw) is, if any.
pub fn pop_of_peer(peer: &str) -> Option<usize> {
    POPS.iter()
        .position(|p| plan::sixpn_addr(p.region, 1) == peer)
}
