//! Starting and stopping each balancer in the lb namespace.

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use edge_tests::{Lab, LabProcess};

use super::lab::{
    self, wait_ready, Tools, BACKEND_OVERLAY_V6, BACKEND_V4, LB, LB_OVERLAY_V6, PORTS, VIP,
    WIRE_MTU,
};

/// The configurations compared, in the order of the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Mode {
    /// No balancer: the client targets the backend itself, routed by lb.
    Plain,
    /// No balancer, over IPv6 end to end: the client targets the backend's overlay address,
    /// routed by lb. What IPv6 itself costs the client's and backend's stacks, beside `plain`:
    /// edgeproxy's path ends in IPv6 at the backend (NAT46), nftables DNAT's in IPv4.
    Plain6,
    /// The kernel's own NAT: nftables on lb DNATs VIP:port to the backend.
    NftDnat,
    /// HAProxy in TCP mode on lb.
    Haproxy,
    /// A userspace tokio proxy (what edgeProxy v1 did).
    TokioProxy,
    /// The edgeProxy v2 agent as configured by default (`forward_hook = "auto"`: TC on these veth
    /// interfaces): full NAT from the VIP to the backend's overlay address.
    #[value(name = "edgeproxy")]
    EdgeProxy,
    /// The edgeProxy v2 agent with its translation in XDP (`forward_hook = "xdp"`), for the
    /// comparison that made `auto` choose TC on veth.
    #[value(name = "edgeproxy-xdp")]
    EdgeProxyXdp,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Plain,
        Mode::Plain6,
        Mode::NftDnat,
        Mode::Haproxy,
        Mode::TokioProxy,
        Mode::EdgeProxy,
        Mode::EdgeProxyXdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Plain6 => "plain6",
            Mode::NftDnat => "nft-dnat",
            Mode::Haproxy => "haproxy",
            Mode::TokioProxy => "tokio-proxy",
            Mode::EdgeProxy => "edgeproxy",
            Mode::EdgeProxyXdp => "edgeproxy-xdp",
        }
    }

    /// An edgeProxy agent runs in this mode.
    pub fn is_edgeproxy(self) -> bool {
        matches!(self, Mode::EdgeProxy | Mode::EdgeProxyXdp)
    }

    /// Whether the VIP goes on the lb's `lo`.
    pub fn has_vip(self) -> bool {
        !matches!(self, Mode::Plain | Mode::Plain6)
    }

    /// The address the client connects to: the VIP in every mode but `plain6` (in `plain` the
    /// backend owns it and the lb routes it), so that those modes' connections have the same
    /// addresses and ports and meet the same placements.
    pub fn target(self) -> IpAddr {
        match self {
            Mode::Plain6 => IpAddr::V6(BACKEND_OVERLAY_V6),
            _ => IpAddr::V4(VIP),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a mode needs from outside the lab.
pub struct Inputs<'a> {
    pub tools: &'a Tools,
    /// The release edge-agent, or why there is none (a failed build fails only this mode).
    pub agent: &'a Result<PathBuf, String>,
    /// `--seconds`, `--rounds`, `--gro`.
    pub run: super::RunSettings,
}

/// A running balancer; dropping it stops its processes (the lab's teardown removes the rest:
/// nftables rules and the agent's bpffs pins die with the namespace and the run's pin dir).
pub struct Balancer {
    processes: Vec<LabProcess>,
}

impl Balancer {
    fn none() -> Self {
        Self {
            processes: Vec::new(),
        }
    }

    /// Fails, with the process's output, if a balancer process has exited.
    pub fn check_alive(&self) -> anyhow::Result<()> {
        for p in &self.processes {
            if !p.is_running() {
                bail!("`{}` exited; its output:\n{}", p.name(), p.output_so_far());
            }
        }
        Ok(())
    }
}

pub fn start(mode: Mode, lab: &Lab, inputs: &Inputs<'_>) -> anyhow::Result<Balancer> {
    match mode {
        Mode::Plain | Mode::Plain6 => Ok(Balancer::none()),
        Mode::NftDnat => nft_dnat(lab),
        Mode::Haproxy => haproxy(lab),
        Mode::TokioProxy => tokio_proxy(lab, inputs.tools),
        Mode::EdgeProxy | Mode::EdgeProxyXdp => {
            let agent = inputs
                .agent
                .as_ref()
                .map_err(|e| anyhow::anyhow!("no edge-agent binary: {e}"))?;
            let hook = if mode == Mode::EdgeProxyXdp {
                "xdp"
            } else {
                "auto"
            };
            edgeproxy(lab, agent, hook)
        }
    }
}

fn ports_set() -> String {
    PORTS
        .iter()
        .map(|(_, p)| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Destination NAT only. No masquerade is needed: the backend's default route is the lb, so its
/// replies come back through the lb's conntrack, which un-NATs them; the backend sees the
/// client's own address, as with no balancer at all.
fn nft_dnat(lab: &Lab) -> anyhow::Result<Balancer> {
    let rules = format!(
        "# Written by cargo xtask bench.\n\
         table ip edgebench {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {VIP} tcp dport {{ {ports} }} dnat to {BACKEND_V4}\n\
         \t}}\n\
         }}\n",
        ports = ports_set(),
    );
    let path = lab.log_dir().join("nft-dnat.nft");
    std::fs::write(&path, rules).with_context(|| format!("writing {}", path.display()))?;
    lab.ns(LB)
        .exec_ok(&["nft", "-f", &path.to_string_lossy()])
        .context("loading the nftables DNAT rules")?;
    Ok(Balancer::none())
}

/// HAProxy in plain TCP mode, one `listen` section per service, in the foreground (`-db`), with
/// two threads (one per core) and room for the HTTP test's connection churn.
fn haproxy(lab: &Lab) -> anyhow::Result<Balancer> {
    let maxconn = haproxy_maxconn(nofile_hard_limit());
    let mut cfg = format!(
        "# Written by cargo xtask bench.\n\
         global\n\
         \tmaxconn {maxconn}\n\
         \tnbthread 2\n\
         defaults\n\
         \tmode tcp\n\
         \tmaxconn {maxconn}\n\
         \ttimeout connect 5s\n\
         \ttimeout client 60s\n\
         \ttimeout server 60s\n",
    );
    for (name, port) in PORTS {
        cfg.push_str(&format!(
            "listen {name}\n\tbind {VIP}:{port}\n\tserver be1 {BACKEND_V4}:{port}\n"
        ));
    }
    let path = lab.log_dir().join("haproxy.cfg");
    std::fs::write(&path, cfg).with_context(|| format!("writing {}", path.display()))?;
    let ns = lab.ns(LB);
    ns.exec_ok(&["haproxy", "-c", "-f", &path.to_string_lossy()])
        .context("haproxy rejected its configuration")?;
    let process = ns.spawn(
        "haproxy",
        &["haproxy", "-db", "-f", &path.to_string_lossy()],
        &[],
    )?;
    let balancer = Balancer {
        processes: vec![process],
    };
    // HAProxy prints nothing when it starts well: wait for its listeners instead.
    wait_listening(lab, &balancer)?;
    Ok(balancer)
}

/// HAProxy needs two descriptors per connection and refuses to start when `maxconn` does not
/// fit under the hard `RLIMIT_NOFILE` (20000 on the machines this was written on, where
/// `maxconn 20000` failed with "Cannot raise FD limit to 40019, limit is 20000"). The benchmark
/// holds at most ~60 connections at a time, so anything in the thousands is ample.
fn haproxy_maxconn(nofile_hard: u64) -> u64 {
    (nofile_hard.saturating_sub(200) / 2).clamp(256, 10_000)
}

fn nofile_hard_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_max
}

fn tokio_proxy(lab: &Lab, tools: &Tools) -> anyhow::Result<Balancer> {
    let pairs: Vec<String> = PORTS
        .iter()
        .map(|(_, port)| format!("{VIP}:{port}={BACKEND_V4}:{port}"))
        .collect();
    let mut argv = vec![tools.tokio_proxy.to_string_lossy().into_owned()];
    argv.extend(pairs);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let process = lab.ns(LB).spawn("tokio-proxy", &argv, &[])?;
    wait_ready(&process, "tokio-proxy ready", Duration::from_secs(10))?;
    Ok(Balancer {
        processes: vec![process],
    })
}

/// The agent's configuration: the translation on the client-facing `eth0` in `hook`, full NAT
/// of each service on the VIP to the backend's overlay address through `ovl0`.
pub fn agent_config(hook: &str) -> String {
    let mut toml = format!(
        "# Written by cargo xtask bench.\n\
         iface = \"eth0\"\n\
         forward_hook = \"{hook}\"\n\n\
         [overlay]\n\
         iface = \"ovl0\"\n\
         addr = \"{LB_OVERLAY_V6}\"\n\
         mtu = {WIRE_MTU}\n\
         # IPv4 clients keep their address and port (no port pool, no TIME_WAIT collisions);\n\
         # the backend's default route already leads back to the lb.\n\
         snat_prefix = \"fd00:ee:ff::/96\"\n"
    );
    for (name, port) in PORTS {
        toml.push_str(&format!(
            "\n[[services]]\n\
             name = \"{name}\"\n\
             vip = \"{VIP}\"\n\
             port = {port}\n\
             backends = [{{ name = \"be1\", addr = \"{BACKEND_OVERLAY_V6}\", port = {port}, weight = 1 }}]\n"
        ));
    }
    toml
}

fn edgeproxy(lab: &Lab, agent: &Path, hook: &str) -> anyhow::Result<Balancer> {
    let ns = lab.ns(LB);
    let config = lab.log_dir().join("edge-agent.toml");
    std::fs::write(&config, agent_config(hook))
        .with_context(|| format!("writing {}", config.display()))?;
    // Under the run's name, so that the lab's teardown (and `find_leftovers`) covers the pins.
    let pins = edge_tests::bpffs_pin_dir(ns.name());
    let process = ns.spawn(
        "edge-agent",
        &[
            &agent.to_string_lossy(),
            "--bpffs-root",
            &pins.to_string_lossy(),
            "run",
            "--config",
            &config.to_string_lossy(),
            "--reset",
        ],
        // No periodic counter dumps in the middle of a measurement.
        &[("EDGEPROXY_STATS_LOG_SECS", "0")],
    )?;
    wait_ready(&process, "edge-agent ready", Duration::from_secs(30))?;
    // Which hook `auto` chose, for the record.
    let output = process.output_so_far();
    if let Some(chosen) = output
        .split("hook=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
    {
        println!("bench: edge-agent translates in {}", chosen.to_uppercase());
    }
    Ok(Balancer {
        processes: vec![process],
    })
}

/// Waits until something in lb listens on every service port of the VIP.
fn wait_listening(lab: &Lab, balancer: &Balancer) -> anyhow::Result<()> {
    let ns = lab.ns(LB);
    lab::wait_until(Duration::from_secs(10), || {
        balancer.check_alive()?;
        let out = ns.exec_ok(&["ss", "-Hltn"])?;
        Ok(PORTS
            .iter()
            .all(|(_, port)| out.stdout.contains(&format!("{VIP}:{port} "))))
    })
    .context("waiting for the balancer's listeners")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_maxconn_fits_the_descriptor_limit() {
        assert_eq!(haproxy_maxconn(20_000), 9_900);
        assert_eq!(haproxy_maxconn(1_024), 412);
        assert_eq!(haproxy_maxconn(100), 256);
        assert_eq!(haproxy_maxconn(u64::MAX), 10_000);
    }

    #[test]
    fn agent_config_lists_every_service() {
        let toml = agent_config("tc");
        assert!(toml.starts_with("# Written"));
        assert!(toml.contains("iface = \"eth0\"\nforward_hook = \"tc\"\n"));
        assert!(toml.contains("[overlay]\niface = \"ovl0\"\naddr = \"fd00:ee::1\"\nmtu = 1500\n"));
        assert!(toml.contains("snat_prefix = \"fd00:ee:ff::/96\""));
        for port in [5201, 8080, 7007] {
            assert!(toml.contains(&format!(
                "vip = \"198.18.0.10\"\nport = {port}\nbackends = [{{ name = \"be1\", addr = \"fd00:ee::2\", port = {port}, weight = 1 }}]"
            )), "{toml}");
        }
    }
}
