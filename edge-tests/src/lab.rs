//! A running lab: the namespaces of a [`Topology`], removed on drop.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::error::{LabError, Result};
use crate::leftovers::clean;
use crate::link::{parse_link_line, LinkInfo, Mac};
use crate::logdir::LogDir;
use crate::names::{ns_name, wg_ifname, RunId, PREFIX};
use crate::netns::NetNs;
use crate::topology::{Step, Topology};
use crate::validate::{check_route, parse_cidr};

/// A lab brought up by [`Topology::up`].
///
/// Dropping it kills every process in its namespaces, deletes the namespaces
/// (and with them their veths), removes anything else named after its run
/// (WireGuard sockets, bpffs pins, the status files of agents it killed, stray
/// processes) and its log directory.
#[derive(Debug)]
pub struct Lab {
    run: RunId,
    label: String,
    /// (label, guard) in declaration order.
    namespaces: Vec<(String, NetNs)>,
    log_dir: Arc<LogDir>,
}

impl Lab {
    pub(crate) fn bring_up(topology: Topology) -> Result<Self> {
        let run = RunId::generate();
        let log_dir = Arc::new(LogDir::create(&format!("{PREFIX}-{run}"))?);
        let mut lab = Self {
            run,
            label: topology.label,
            namespaces: Vec::new(),
            log_dir,
        };
        // `lab` owns everything created so far, so an early return removes it.
        for label in &topology.namespaces {
            let name = ns_name(&run, &format!("{}-{label}", lab.label));
            let ns = NetNs::create_logging_to(&name, Arc::clone(&lab.log_dir))
                .and_then(|ns| skip_dad(&ns).map(|()| ns))
                .map_err(|e| lab.step_failed(&format!("namespace {label}"), e))?;
            lab.namespaces.push((label.clone(), ns));
        }
        let steps = &topology.steps;
        let sets_default =
            |step: &Step| matches!(step, Step::Sysctl { key, .. } if key.contains(".default."));
        lab.apply_each(steps, sets_default)?;
        lab.apply_each(steps, |step| matches!(step, Step::Veth { .. }))?;
        lab.apply_each(steps, |step| {
            matches!(step, Step::Sysctl { .. }) && !sets_default(step)
        })?;
        lab.apply_each(steps, |step| matches!(step, Step::Offload { .. }))?;
        lab.set_links_up(steps)?;
        lab.apply_each(steps, |step| matches!(step, Step::Addr { .. }))?;
        lab.apply_each(steps, |step| matches!(step, Step::Route { .. }))?;
        Ok(lab)
    }

    /// The namespace declared as `label`.
    ///
    /// # Panics
    /// If no namespace was declared with that label: a mistake in the test itself.
    pub fn ns(&self, label: &str) -> &NetNs {
        match self.get_ns(label) {
            Some(ns) => ns,
            None => panic!(
                "lab `{}` has no namespace `{label}`; declared: {:?}",
                self.label,
                self.namespaces.iter().map(|(l, _)| l).collect::<Vec<_>>()
            ),
        }
    }

    pub fn get_ns(&self, label: &str) -> Option<&NetNs> {
        self.namespaces
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, ns)| ns)
    }

    /// Namespace guards in declaration order, with their labels.
    pub fn namespaces(&self) -> impl Iterator<Item = (&str, &NetNs)> {
        self.namespaces.iter().map(|(l, ns)| (l.as_str(), ns))
    }

    pub fn run_id(&self) -> &RunId {
        &self.run
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The per-run log directory, `<tmp>/epl-<run>/`.
    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }

    /// A host-wide unique interface name for this run, see [`crate::wg_ifname`].
    pub fn wg_ifname(&self, n: u16) -> String {
        wg_ifname(&self.run, n)
    }

    /// The MAC address of `ifname` in namespace `ns`.
    pub fn mac(&self, ns: &str, ifname: &str) -> Result<Mac> {
        self.link(ns, ifname)?.mac.ok_or_else(|| LabError::Parse {
            cmd: format!("ip -n {} -o link show dev {ifname}", self.ns(ns).name()),
            why: "interface has no Ethernet address".to_owned(),
        })
    }

    /// The interface index of `ifname` in namespace `ns`.
    pub fn ifindex(&self, ns: &str, ifname: &str) -> Result<u32> {
        Ok(self.link(ns, ifname)?.ifindex)
    }

    fn link(&self, ns: &str, ifname: &str) -> Result<LinkInfo> {
        let output = self.ns(ns).ip(&["-o", "link", "show", "dev", ifname])?;
        parse_link_line(&output.cmd, &output.stdout)
    }

    fn step_failed(&self, step: &str, source: LabError) -> LabError {
        LabError::Step {
            lab: self.label.clone(),
            run: self.run.to_string(),
            step: step.to_owned(),
            source: Box::new(source),
        }
    }

    fn apply_each(&self, steps: &[Step], selected: impl Fn(&Step) -> bool) -> Result<()> {
        for step in steps.iter().filter(|step| selected(step)) {
            self.apply(step)
                .map_err(|e| self.step_failed(&step.describe(), e))?;
        }
        Ok(())
    }

    fn set_links_up(&self, steps: &[Step]) -> Result<()> {
        let mask = rps_mask();
        for step in steps {
            if let Step::Veth { a, b } = step {
                for (ns, ifname) in [a, b] {
                    self.ns(ns)
                        .ip(&["link", "set", "dev", ifname, "up"])
                        .map_err(|e| self.step_failed(&format!("link up {ns}:{ifname}"), e))?;
                    // Steer each received flow to one CPU by its hash, as a NIC's RSS does. A
                    // veth with an XDP program receives in NAPI mode, whose poll moves between
                    // CPUs: without this, segments of one flow are reordered downstream and
                    // TCP retransmits them, which no wire would cause.
                    crate::steering::write_mask(self, ns, ifname, &mask)
                        .map_err(|e| self.step_failed(&format!("rps {ns}:{ifname}"), e))?;
                }
            }
        }
        Ok(())
    }

    fn apply(&self, step: &Step) -> Result<()> {
        match step {
            Step::Sysctl { ns, key, value } => self.ns(ns).sysctl(key, value),
            Step::Veth { a, b } => {
                // `name` is spelled out: ip(8) would read a bare `a` as `address`.
                let args = ["link", "add", "name", &a.1, "type", "veth"];
                let peer = ["peer", "name", &b.1, "netns", self.ns(&b.0).name()];
                self.ns(&a.0).ip(&[&args[..], &peer[..]].concat()).map(drop)
            }
            Step::Offload {
                ns,
                ifname,
                feature,
                on,
            } => self
                .ns(ns)
                .exec_ok(&[
                    "ethtool",
                    "-K",
                    ifname,
                    feature,
                    if *on { "on" } else { "off" },
                ])
                .map(drop),
            Step::Addr { ns, ifname, cidr } => {
                let mut args = vec!["addr", "add", cidr, "dev", ifname];
                if parse_cidr(cidr)?.0.is_ipv6() {
                    // Tentative addresses cannot be used; tests must not wait for DAD.
                    args.push("nodad");
                }
                self.ns(ns).ip(&args).map(drop)
            }
            Step::Route { ns, dest, via, dev } => {
                let family = match check_route(dest, via)? {
                    IpAddr::V4(_) => "-4",
                    IpAddr::V6(_) => "-6",
                };
                let mut args = vec![family, "route", "add", dest, "via", via];
                if let Some(dev) = dev {
                    args.extend(["dev", dev]);
                }
                self.ns(ns).ip(&args).map(drop)
            }
        }
    }
}

/// Turns off IPv6 duplicate address detection for interfaces created later.
///
/// `nodad` on global addresses is not enough: while a link-local address is
/// tentative the kernel sends no neighbour solicitation for forwarded packets,
/// so a router would drop the first second of forwarded IPv6 traffic.
/// Topology sysctls on `*.default.*` run after this and may turn it back on.
fn skip_dad(ns: &NetNs) -> Result<()> {
    ns.exec_ok(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.all.accept_dad=0",
    ])
    .map(drop)
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first, in every namespace, so that none reacts to its
        // peers' interfaces disappearing while it still runs.
        for (_, ns) in &self.namespaces {
            let survivors = ns.kill_all();
            if !survivors.is_empty() {
                eprintln!(
                    "edge_tests: processes {survivors:?} survived SIGKILL in {}",
                    ns.name()
                );
            }
        }
        self.namespaces.clear();
        // Whatever lab agents created outside the namespaces under this run's name.
        if let Err(e) = clean(Some(self.run.as_str())) {
            eprintln!("edge_tests: {e}");
        }
    }
}

/// Every online CPU, as the hex mask `rps_cpus` takes.
fn rps_mask() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cpus = cpus.min(63);
    format!("{:x}", (1u64 << cpus) - 1)
}
