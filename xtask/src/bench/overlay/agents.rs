//! Lines (b), (c) and (d): the 6PN built by `edge-agent host` in every member from the rows of
//! the state file, with the POP either routing with the kernel or running the data plane
//! (`edge-agent run` with `[sixpn]`).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use edge_tests::{bpffs_pin_dir, Lab, LabProcess};
use serde_json::Value;

use super::{
    alive,
    measure::{measure_or_record, wait_ping},
    results::{Line, Results},
    topology::{Member, HA, HB, KEEPALIVE_SECS, POP, VIP4, VIP6, WG_MTU, WG_PORT},
    Ctx,
};
use crate::bench::{
    check_stop,
    lab::{wait_ready, wait_until},
};

/// (b) and (d): every member runs `edge-agent host`.
pub(super) fn hosts(ctx: &Ctx<'_>, results: &mut Results) -> anyhow::Result<()> {
    let lab = ctx.lab;
    let mut agents = Agents::new(lab, ctx.agent, ctx.db);
    for m in [&POP, &HA, &HB] {
        agents.start(m, Role::Host)?;
    }
    agents.wait_for_mesh()?;
    if results.wireguard.len() < 2 {
        if let Some(implementation) = agents.implementation(&HB) {
            results.wireguard.push(format!("agents: {implementation}"));
        }
    }
    let running = || agents.check_alive().and_then(|()| alive(ctx.iperf));
    let mut lines = [
        (Line::Agents, lab.ns(HA.ns)),
        (Line::Routed, lab.ns("client")),
    ];
    if ctx.reversed {
        lines.reverse();
    }
    for (line, ns) in lines {
        check_stop()?;
        let path = wait_ping(ns, HB.addr());
        match path {
            Ok(()) => measure_or_record(ctx, results, line, ns, IpAddr::V6(HB.addr()), &running),
            Err(e) => results.fail(&[line], ctx.round, &e),
        }
    }
    agents.stop_all()
}

/// (c) and (c6): the hosts run `edge-agent host`, the POP `edge-agent run` with the data plane.
pub(super) fn data_plane(ctx: &Ctx<'_>, results: &mut Results) -> anyhow::Result<()> {
    let lab = ctx.lab;
    let mut agents = Agents::new(lab, ctx.agent, ctx.db);
    for m in [&HA, &HB] {
        agents.start(m, Role::Host)?;
    }
    agents.start(&POP, Role::Pop)?;
    agents.wait_for_mesh()?;
    wait_ping(lab.ns(POP.ns), HB.addr())?;
    let running = || agents.check_alive().and_then(|()| alive(ctx.iperf));
    let mut lines = [
        (Line::DataPlane4, IpAddr::V4(VIP4)),
        (Line::DataPlane6, IpAddr::V6(VIP6)),
    ];
    if ctx.reversed {
        lines.reverse();
    }
    for (line, vip) in lines {
        check_stop()?;
        measure_or_record(ctx, results, line, lab.ns("client"), vip, &running);
    }
    agents.stop_all()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `edge-agent host`: the mesh only.
    Host,
    /// `edge-agent run` with `[sixpn]`: the mesh and the data plane.
    Pop,
}

struct Agents<'a> {
    lab: &'a Lab,
    agent: &'a Path,
    db: &'a Path,
    /// (namespace, WireGuard interface, process).
    running: Vec<(&'static str, String, LabProcess)>,
}

impl<'a> Agents<'a> {
    fn new(lab: &'a Lab, agent: &'a Path, db: &'a Path) -> Self {
        Agents {
            lab,
            agent,
            db,
            running: Vec::new(),
        }
    }

    /// Member `m`'s device (plain WireGuard's are 0 and 1).
    fn ifname(&self, m: &Member) -> String {
        self.lab.wg_ifname(10 + u16::from(m.underlay))
    }

    fn config(&self, m: &Member, role: Role, ifname: &str) -> String {
        let key = self.lab.log_dir().join(format!("{}.key", m.ns));
        let mut toml = format!(
            "# Written by cargo xtask bench (overlay).\n\
             pop_id = \"{ns}\"\nregion = \"{region}\"\nstats_log_secs = 0\n",
            ns = m.ns,
            region = m.region,
        );
        if role == Role::Pop {
            toml.push_str("iface = \"eth0\"\n");
        }
        let _ = write!(
            toml,
            "\n[state]\ndatabase = \"{}\"\n\n[dns]\nenabled = false\n",
            self.db.display()
        );
        if role == Role::Pop {
            let _ = write!(
                toml,
                "\n[overlay]\niface = \"{ifname}\"\naddr = \"{addr}\"\nmtu = {WG_MTU}\n\
                 # IPv4 clients appear as <POP /96>:<client IPv4> (docs/6pn.md).\n\
                 snat_prefix = \"{prefix}\"\n\n\
                 [flows]\nmax_entries = 65536\n\n[maglev]\nmax_services = 4\n\n\
                 [affinity]\nttl_secs = 0\n\n\
                 # No checks: nothing but iperf3 on the backend's port.\n\
                 [health]\nenabled = false\n",
                addr = m.addr(),
                prefix = m.prefix(),
            );
        }
        let _ = write!(
            toml,
            "\n[sixpn]\nenabled = true\nid = \"{ns}\"\nhost_number = {number}\nifname = \"{ifname}\"\n\
             listen_port = {WG_PORT}\nendpoint = \"{endpoint}\"\nkey_file = \"{key}\"\n\
             keepalive_secs = {KEEPALIVE_SECS}\nmtu = {WG_MTU}\n",
            ns = m.ns,
            number = m.number,
            endpoint = m.endpoint(),
            key = key.display(),
        );
        toml
    }

    fn pins(&self, m: &Member) -> PathBuf {
        bpffs_pin_dir(self.lab.ns(m.ns).name())
    }

    fn start(&mut self, m: &'static Member, role: Role) -> anyhow::Result<()> {
        let ifname = self.ifname(m);
        let (subcommand, ready) = match role {
            Role::Host => ("host", "edge-agent host ready"),
            Role::Pop => ("run", "edge-agent ready"),
        };
        let path = self
            .lab
            .log_dir()
            .join(format!("{}-{subcommand}.toml", m.ns));
        std::fs::write(&path, self.config(m, role, &ifname))
            .with_context(|| format!("writing {}", path.display()))?;
        let agent = self.agent.to_string_lossy();
        let pins = self.pins(m);
        let pins = pins.to_string_lossy();
        let config = path.to_string_lossy();
        let mut argv = vec![
            &*agent,
            "--bpffs-root",
            &*pins,
            "--config",
            &*config,
            subcommand,
        ];
        if role == Role::Pop {
            argv.push("--reset");
        }
        let p = self.lab.ns(m.ns).spawn(
            &format!("agent-{}-{subcommand}", m.ns),
            &argv,
            &[("EDGEPROXY_STATS_LOG_SECS", "0")],
        )?;
        wait_ready(&p, ready, Duration::from_secs(30))
            .with_context(|| format!("starting `edge-agent {subcommand}` in {}", m.ns))?;
        println!(
            "bench: overlay: `edge-agent {subcommand}` ready in {}",
            m.ns
        );
        self.running.push((m.ns, ifname, p));
        Ok(())
    }

    /// Stops every agent, then deletes its 6PN device (which the agent leaves up, as it leaves
    /// the data plane attached): wireguard-go exits with it.
    fn stop_all(mut self) -> anyhow::Result<()> {
        for (ns, ifname, p) in self.running.drain(..) {
            p.signal(libc::SIGTERM)?;
            p.wait_exit(Duration::from_secs(10))
                .with_context(|| format!("stopping the agent in {ns}"))?;
            self.lab
                .ns(ns)
                .ip(&["link", "del", &ifname])
                .with_context(|| format!("deleting {ifname} in {ns}"))?;
        }
        Ok(())
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        self.running.iter().try_for_each(|(_, _, p)| alive(p))
    }

    /// Waits until every running member lists every other as a peer.
    fn wait_for_mesh(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        let want = self.running.len() - 1;
        wait_until(Duration::from_secs(20), || {
            self.check_alive()?;
            for (ns, ifname, _) in &self.running {
                let out = self.lab.ns(ns).exec(&["wg", "show", ifname, "peers"])?;
                if out.stdout.lines().filter(|l| !l.trim().is_empty()).count() != want {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .context("the agents did not build the full mesh from the rows")?;
        println!(
            "bench: overlay: mesh of {} from rows alone after {} ms",
            self.running.len(),
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// What `edge-agent wg show` says of member `m`'s WireGuard.
    fn implementation(&self, m: &Member) -> Option<String> {
        let out = Command::new(self.agent)
            .arg("--bpffs-root")
            .arg(self.pins(m))
            .args(["wg", "show", "--output", "json"])
            .output()
            .ok()?;
        let doc: Value = serde_json::from_slice(&out.stdout).ok()?;
        doc.get("implementation")?.as_str().map(str::to_owned)
    }
}
