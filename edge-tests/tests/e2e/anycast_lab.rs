//! The anycast lab the BGP, BFD, FRR and restart tests share: a router namespace (BIRD, or
//! FRR in `frr_lab`) peering with two POPs that announce the same IPv4 and IPv6 VIPs (POP A
//! over IPv4 transport with TCP-MD5, the agent connecting; POP B over IPv6 transport, the
//! router connecting), clients behind the router, a backend behind each POP.
//!
//! ```text
//! client --c0-- router (BIRD) --ra-- popa (XDP eth0) --ovl0-- hub --b1-- bea
//!                             --rb-- popb (XDP eth0) --ovl0-- hub --b2-- beb
//! ```
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use edge_agent::{dataplane::maps::counters, dataplane::pins::PinDir};
use edge_tests::{bpffs_pin_dir, Lab, LabProcess, Topology};

use super::common::{agent_bin, tear_down, TestResult};

type Error = Box<dyn std::error::Error>;

pub(super) const VIP4: &str = "198.18.7.10";
pub(super) const VIP6: &str = "2001:db8:ff7::10";
pub(super) const MD5: &str = "edge-md5-secret";

pub(super) fn topology(label: &str) -> Topology {
    topology_with(label, false)
}

/// The lab's topology; with `switch`, POP A hangs off a bridge in namespace `swa` (`p0` to the
/// router, `p1` to POP A; [`Bgp::bridge_switch`] makes it) so that POP A's links can go down
/// while the router's stays up, as when a host dies behind a switch.
pub(super) fn topology_with(label: &str, switch: bool) -> Topology {
    let mut t = Topology::new(label)
        .ns("client")
        .ns("router")
        .ns("popa")
        .ns("popb")
        .ns("hub")
        .ns("bea")
        .ns("beb")
        .veth(("client", "eth0"), ("router", "c0"));
    t = if switch {
        t.ns("swa")
            .veth(("router", "ra"), ("swa", "p0"))
            .veth(("swa", "p1"), ("popa", "eth0"))
    } else {
        t.veth(("router", "ra"), ("popa", "eth0"))
    };
    let mut t = t
        .veth(("router", "rb"), ("popb", "eth0"))
        .veth(("popa", "ovl0"), ("hub", "upa"))
        .veth(("popb", "ovl0"), ("hub", "upb"))
        .veth(("hub", "b1"), ("bea", "eth0"))
        .veth(("hub", "b2"), ("beb", "eth0"))
        // Full checksums into the XDP programs (see TOOLCHAIN.md).
        .tx_checksum_off("client", "eth0")
        .tx_checksum_off("router", "ra")
        .tx_checksum_off("router", "rb")
        .addr("client", "eth0", "10.0.9.2/24")
        .addr("client", "eth0", "2001:db8:9::2/64")
        .addr("router", "c0", "10.0.9.1/24")
        .addr("router", "c0", "2001:db8:9::1/64")
        .addr("router", "ra", "10.0.10.1/24")
        .addr("router", "ra", "2001:db8:10::1/64")
        .addr("router", "rb", "10.0.11.1/24")
        .addr("router", "rb", "2001:db8:11::1/64")
        .addr("popa", "eth0", "10.0.10.2/24")
        .addr("popa", "eth0", "2001:db8:10::2/64")
        .addr("popb", "eth0", "10.0.11.2/24")
        .addr("popb", "eth0", "2001:db8:11::2/64")
        .addr("popa", "ovl0", "fd00:ee::1/64")
        .addr("popb", "ovl0", "fd00:ee:2::1/64")
        .addr("hub", "upa", "fd00:ee::fe/64")
        .addr("hub", "upb", "fd00:ee:2::fe/64")
        .addr("hub", "b1", "fd00:ee:1:1::1/64")
        .addr("hub", "b2", "fd00:ee:1:2::1/64")
        .addr("bea", "eth0", "fd00:ee:1:1::2/64")
        .addr("beb", "eth0", "fd00:ee:1:2::2/64")
        .route("client", "default", "10.0.9.1")
        .route("client", "default", "2001:db8:9::1")
        .route("popa", "default", "10.0.10.1")
        .route("popa", "default", "2001:db8:10::1")
        .route("popb", "default", "10.0.11.1")
        .route("popb", "default", "2001:db8:11::1")
        .route("popa", "fd00:ee:1::/48", "fd00:ee::fe")
        .route("popb", "fd00:ee:1::/48", "fd00:ee:2::fe")
        .route("bea", "default", "fd00:ee:1:1::1")
        .route("beb", "default", "fd00:ee:1:2::1");
    for ns in ["router", "popa", "popb"] {
        t = t.sysctl(ns, "net.ipv4.ip_forward", "1");
    }
    for ns in ["router", "popa", "popb", "hub"] {
        t = t.sysctl(ns, "net.ipv6.conf.all.forwarding", "1");
    }
    for ns in ["popa", "popb"] {
        // The VIPs are local: a segment with no flow is answered by the POP's kernel.
        t = t
            .addr(ns, "lo", &format!("{VIP4}/32"))
            .addr(ns, "lo", &format!("{VIP6}/128"));
    }
    t
}

/// POP `x`'s agent config: one backend, fast health checks, and its BGP session.
pub(super) fn pop_config(x: &str, bgp: &str) -> String {
    let (overlay, backend) = match x {
        "a" => ("fd00:ee::1", "fd00:ee:1:1::2"),
        _ => ("fd00:ee:2::1", "fd00:ee:1:2::2"),
    };
    format!(
        r#"iface = "eth0"
stats_log_secs = 0
pop_id = "pop{x}"

[overlay]
iface = "ovl0"
addr = "{overlay}"

[flows]
max_entries = 65536

[maglev]
max_services = 8

[health]
profile = "fast"

[health.passive]
enabled = false

[dns]
enabled = false

[metrics]
listen = "127.0.0.1:9469"

[[services]]
name = "web4"
vip = "{VIP4}"
port = 7
backends = [{{ name = "be{x}", addr = "{backend}", port = 7007 }}]

[[services]]
name = "web6"
vip = "{VIP6}"
port = 7
backends = [{{ name = "be{x}", addr = "{backend}", port = 7007 }}]

[bgp]
hold_time_secs = 9
hold_down_ms = 1000
drain_delay_secs = 2
drain_prepend = 2
communities = ["65010:7"]
{bgp}
"#
    )
}

pub(super) struct Bgp {
    pub(super) lab: Lab,
    /// The router's daemons: BIRD, or FRR's zebra, bfdd and bgpd.
    pub(super) router: Vec<LabProcess>,
    /// BIRD's control socket, or the directory of FRR's vty sockets.
    pub(super) socket: String,
    pub(super) bird_log: std::path::PathBuf,
    pub(super) agents: [Option<LabProcess>; 2],
    pub(super) backends: [Option<LabProcess>; 2],
}

impl Bgp {
    /// Bridges `p0` and `p1` in `swa` (a lab from [`topology_with`] with a switch).
    pub(super) fn bridge_switch(&self) -> Result<(), Error> {
        let sw = self.lab.ns("swa");
        sw.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"])?;
        for port in ["p0", "p1"] {
            sw.exec_ok(&["ip", "link", "set", port, "master", "br0"])?;
        }
        sw.exec_ok(&["ip", "link", "set", "br0", "up"])?;
        Ok(())
    }

    pub(super) fn birdc(&self, args: &[&str]) -> Result<String, Error> {
        let mut argv = vec!["birdc", "-s", &self.socket];
        argv.extend_from_slice(args);
        let out = self.lab.ns("router").exec(&argv)?;
        Ok(out.stdout.clone())
    }

    /// The POP (`a`/`b`) the router's kernel sends `vip` to, or `None` with no route.
    pub(super) fn chosen(&self, vip: &str) -> Result<Option<char>, Error> {
        let family = if vip.contains(':') { "-6" } else { "-4" };
        let out = self
            .lab
            .ns("router")
            .exec(&["ip", family, "route", "show", vip])?;
        let line = out.stdout.trim();
        Ok(
            if line.contains("10.0.10.2")
                || line.contains("2001:db8:10::2")
                || line.contains("dev ra")
            {
                Some('a')
            } else if line.contains("10.0.11.2")
                || line.contains("2001:db8:11::2")
                || line.contains("dev rb")
            {
                Some('b')
            } else {
                None
            },
        )
    }

    /// Waits until `pred(chosen for both VIPs)` holds; returns how long it took.
    pub(super) fn wait_route(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(Option<char>) -> bool,
    ) -> Result<Duration, Error> {
        let start = Instant::now();
        loop {
            let (v4, v6) = (self.chosen(VIP4)?, self.chosen(VIP6)?);
            if pred(v4) && pred(v6) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{what}: routes v4 {v4:?} v6 {v6:?} after {timeout:?}\n{}\n{}",
                    self.birdc(&["show", "protocols", "all"])
                        .unwrap_or_default(),
                    std::fs::read_to_string(&self.bird_log).unwrap_or_default()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// New flows POP `x`'s data plane has seen.
    pub(super) fn new_flows(&self, x: char) -> Result<u64, Error> {
        let dir = bpffs_pin_dir(self.lab.ns(&format!("pop{x}")).name());
        if !dir.exists() {
            // A lab that never started this POP's agent.
            return Ok(0);
        }
        let pins = PinDir::new(dir);
        let report = counters::nat_report(&pins)?;
        Ok(report.services.iter().map(|s| s.new_flows).sum())
    }

    /// Echoes a few bytes through both VIPs from the client; returns the POP that took them.
    pub(super) fn echo_both(&self) -> Result<char, Error> {
        let before = [self.new_flows('a')?, self.new_flows('b')?];
        for target in [format!("{VIP4}:7"), format!("[{VIP6}]:7")] {
            let addr: SocketAddr = target.parse()?;
            self.lab
                .ns("client")
                .run_in_thread(|| -> Result<(), String> {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                        .map_err(|e| format!("connect {addr}: {e}"))?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))
                        .map_err(|e| e.to_string())?;
                    let msg = b"anycast hello";
                    s.write_all(msg).map_err(|e| e.to_string())?;
                    let mut back = [0u8; 13];
                    s.read_exact(&mut back)
                        .map_err(|e| format!("echo from {addr}: {e}"))?;
                    if &back != msg {
                        return Err(format!("echo from {addr} differs"));
                    }
                    Ok(())
                })??;
        }
        let after = [self.new_flows('a')?, self.new_flows('b')?];
        match (after[0] - before[0], after[1] - before[1]) {
            (2, 0) => Ok('a'),
            (0, 2) => Ok('b'),
            other => Err(format!("new flows at (a, b): {other:?}").into()),
        }
    }

    pub(super) fn start_agent(&mut self, x: char) -> Result<(), Error> {
        let bgp = match x {
            'a' => format!(
                "asn = 65001\n\n[[bgp.peers]]\naddress = \"10.0.10.1\"\nasn = 65000\npassword = \"{MD5}\"\nnext_hop_v6 = \"2001:db8:10::2\"\n"
            ),
            _ => "asn = 65002\nrouter_id = \"10.0.11.2\"\nlisten = [\"[::]:179\"]\n\n[[bgp.peers]]\naddress = \"2001:db8:11::1\"\nasn = 65000\npassive = true\nnext_hop_v4 = \"10.0.11.2\"\n".to_owned(),
        };
        self.start_agent_with(x, &bgp)
    }

    /// Starts POP `x`'s agent with `bgp` as the rest of its `[bgp]` section.
    pub(super) fn start_agent_with(&mut self, x: char, bgp: &str) -> Result<(), Error> {
        self.start_agent_bin(x, bgp, &agent_bin())
    }

    /// [`Bgp::start_agent_with`] with the agent binary at `agent` (an upgrade on the pins).
    pub(super) fn start_agent_bin(
        &mut self,
        x: char,
        bgp: &str,
        agent: &Path,
    ) -> Result<(), Error> {
        let i = usize::from(x == 'b');
        let ns = self.lab.ns(&format!("pop{x}"));
        let config = self.lab.log_dir().join(format!("agent-{x}.toml"));
        std::fs::write(&config, pop_config(&x.to_string(), bgp))?;
        let pins = bpffs_pin_dir(ns.name());
        let argv = [
            agent.to_str().ok_or("agent path")?,
            "--bpffs-root",
            pins.to_str().ok_or("pins path")?,
            "--config",
            config.to_str().ok_or("config path")?,
            "run",
        ];
        let process = ns.spawn(&format!("agent-{x}"), &argv, &[])?;
        process.wait_for_output("edge-agent ready", Duration::from_secs(30))?;
        self.agents[i] = Some(process);
        Ok(())
    }

    pub(super) fn start_backend(&mut self, x: char) -> Result<(), Error> {
        let i = usize::from(x == 'b');
        let p = self.lab.ns(&format!("be{x}")).spawn(
            &format!("echo-{x}"),
            &[env!("CARGO_BIN_EXE_echo-server"), "[::]:7007"],
            &[],
        )?;
        p.wait_for_output("echo-server ready", Duration::from_secs(10))?;
        self.backends[i] = Some(p);
        Ok(())
    }

    /// `edge-agent <cmd>` against POP `x`'s pins.
    pub(super) fn cli(&self, x: char, args: &[&str]) -> Result<std::process::Output, Error> {
        let ns = self.lab.ns(&format!("pop{x}"));
        Ok(Command::new(agent_bin())
            .arg("--bpffs-root")
            .arg(bpffs_pin_dir(ns.name()))
            .arg("--config")
            .arg(self.lab.log_dir().join(format!("agent-{x}.toml")))
            .args(args)
            .output()?)
    }
}

/// BIRD in namespace `ns` with config `conf` (written to the lab's log directory), and its
/// control socket (for `birdc -s`), which the caller removes.
pub(super) fn spawn_bird(lab: &Lab, ns: &str, conf: &str) -> Result<(LabProcess, String), Error> {
    let conf_path = lab.log_dir().join("bird.conf");
    std::fs::write(&conf_path, conf)?;
    // A unix socket path has room for 107 bytes: not under the lab's log directory.
    let socket = format!("/run/{}.bird.ctl", lab.ns(ns).name());
    let conf_path = conf_path.to_str().ok_or("path")?;
    let bird = lab
        .ns(ns)
        .spawn("bird", &["bird", "-f", "-c", conf_path, "-s", &socket], &[])?;
    Ok((bird, socket))
}

/// Brings up `topology` with BIRD in `router` (its config from `conf`), runs `scenario`, and
/// tears everything down (with BIRD's log printed on failure).
pub(super) fn with_bird(
    topology: Topology,
    conf: fn(&Path) -> String,
    scenario: fn(&mut Bgp) -> TestResult,
) -> TestResult {
    let lab = topology.up()?;
    let bird_log = lab.log_dir().join("bird.log");
    let (bird, socket) = spawn_bird(&lab, "router", &conf(&bird_log))?;
    let mut t = Bgp {
        lab,
        router: vec![bird],
        socket,
        bird_log,
        agents: [None, None],
        backends: [None, None],
    };
    let result = scenario(&mut t);
    for p in &t.router {
        let _ = p.kill();
    }
    let _ = std::fs::remove_file(&t.socket);
    for p in t.agents.iter().chain(t.backends.iter()).flatten() {
        let _ = p.kill();
    }
    if result.is_err() {
        eprintln!(
            "BIRD log:\n{}",
            std::fs::read_to_string(&t.bird_log).unwrap_or_default()
        );
    }
    tear_down(t.lab);
    result
}
