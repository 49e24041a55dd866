//! Declarative description of a lab: namespaces, veths, addresses, routes.

use crate::error::Result;
use crate::lab::Lab;
use crate::validate::{check_ifname, check_label, check_route, invalid, parse_cidr};

/// A lab to be built by [`Topology::up`]. Steps may be declared in any order;
/// `up` applies them in dependency order (see [`Topology::up`]).
#[derive(Debug, Clone)]
pub struct Topology {
    pub(crate) label: String,
    pub(crate) namespaces: Vec<String>,
    pub(crate) steps: Vec<Step>,
}

/// One interface: (namespace label, interface name).
pub type End<'a> = (&'a str, &'a str);

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Sysctl {
        ns: String,
        key: String,
        value: String,
    },
    Veth {
        a: (String, String),
        b: (String, String),
    },
    /// `ethtool -K <ifname> <feature> on|off`.
    Offload {
        ns: String,
        ifname: String,
        feature: &'static str,
        on: bool,
    },
    Addr {
        ns: String,
        ifname: String,
        cidr: String,
    },
    Route {
        ns: String,
        dest: String,
        via: String,
        dev: Option<String>,
    },
}

impl Step {
    /// Namespaces the step touches, for validation.
    fn namespaces(&self) -> Vec<&str> {
        match self {
            Step::Veth { a, b } => vec![&a.0, &b.0],
            Step::Sysctl { ns, .. }
            | Step::Offload { ns, .. }
            | Step::Addr { ns, .. }
            | Step::Route { ns, .. } => vec![ns],
        }
    }

    /// A short human description, used in error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Step::Sysctl { ns, key, value } => format!("sysctl {ns}: {key}={value}"),
            Step::Veth { a, b } => format!("veth {}:{} <-> {}:{}", a.0, a.1, b.0, b.1),
            Step::Offload {
                ns,
                ifname,
                feature,
                on,
            } => format!("{feature} {} {ns}:{ifname}", if *on { "on" } else { "off" }),
            Step::Addr { ns, ifname, cidr } => format!("addr {ns}:{ifname} {cidr}"),
            Step::Route { ns, dest, via, dev } => match dev {
                Some(dev) => format!("route {ns}: {dest} via {via} dev {dev}"),
                None => format!("route {ns}: {dest} via {via}"),
            },
        }
    }
}

impl Topology {
    /// `label` appears in every namespace name: `epl-<run>-<label>-<ns>`.
    pub fn new(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            namespaces: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// A namespace, referred to by `label` in the other steps and in [`Lab::ns`].
    pub fn ns(mut self, label: &str) -> Self {
        self.namespaces.push(label.to_owned());
        self
    }

    /// Sets a sysctl in a namespace. `*.default.*` keys are applied before the
    /// veths exist (they only affect interfaces created later); all others
    /// after, so that per-interface keys find their interface.
    pub fn sysctl(mut self, ns: &str, key: &str, value: &str) -> Self {
        self.steps.push(Step::Sysctl {
            ns: ns.to_owned(),
            key: key.to_owned(),
            value: value.to_owned(),
        });
        self
    }

    /// A veth pair whose ends are created directly in their namespaces, so
    /// interface names need only be unique within a namespace.
    pub fn veth(mut self, a: End<'_>, b: End<'_>) -> Self {
        self.steps.push(Step::Veth {
            a: (a.0.to_owned(), a.1.to_owned()),
            b: (b.0.to_owned(), b.1.to_owned()),
        });
        self
    }

    /// Turns off tx checksum offload on an interface (`ethtool -K <if> tx off`),
    /// so that packets rewritten by XDP/TC carry real checksums.
    pub fn tx_checksum_off(self, ns: &str, ifname: &str) -> Self {
        self.offload(ns, ifname, "tx", false)
    }

    /// Turns on receive coalescing (`ethtool -K <if> gro on`; a veth then receives through
    /// NAPI), as a NIC's driver does by default: a TC program on it sees coalesced segments.
    pub fn gro_on(self, ns: &str, ifname: &str) -> Self {
        self.offload(ns, ifname, "gro", true)
    }

    fn offload(mut self, ns: &str, ifname: &str, feature: &'static str, on: bool) -> Self {
        self.steps.push(Step::Offload {
            ns: ns.to_owned(),
            ifname: ifname.to_owned(),
            feature,
            on,
        });
        self
    }

    /// Adds an IPv4 or IPv6 address in CIDR form; IPv6 ones skip duplicate
    /// address detection so they are usable at once.
    pub fn addr(mut self, ns: &str, ifname: &str, cidr: &str) -> Self {
        self.steps.push(Step::Addr {
            ns: ns.to_owned(),
            ifname: ifname.to_owned(),
            cidr: cidr.to_owned(),
        });
        self
    }

    /// A route to `dest` (CIDR or `"default"`) via `via`; the family follows the gateway.
    pub fn route(self, ns: &str, dest: &str, via: &str) -> Self {
        self.push_route(ns, dest, via, None)
    }

    /// Like [`Topology::route`] with an explicit device, as IPv6 link-local gateways need.
    pub fn route_dev(self, ns: &str, dest: &str, via: &str, dev: &str) -> Self {
        self.push_route(ns, dest, via, Some(dev))
    }

    fn push_route(mut self, ns: &str, dest: &str, via: &str, dev: Option<&str>) -> Self {
        self.steps.push(Step::Route {
            ns: ns.to_owned(),
            dest: dest.to_owned(),
            via: via.to_owned(),
            dev: dev.map(str::to_owned),
        });
        self
    }

    /// Builds the lab: namespaces, `*.default.*` sysctls, veths, other
    /// sysctls, checksum settings, links up, addresses, routes.
    ///
    /// The description is checked before anything is created. If a step
    /// fails, everything created so far is removed and the error names the
    /// step and carries the failing command's stderr.
    pub fn up(self) -> Result<Lab> {
        self.validate()?;
        Lab::bring_up(self)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_label("lab label", &self.label)?;
        for (i, ns) in self.namespaces.iter().enumerate() {
            check_label("namespace label", ns)?;
            if self.namespaces[..i].contains(ns) {
                return Err(invalid("namespace label", ns, "declared twice"));
            }
        }
        for step in &self.steps {
            for ns in step.namespaces() {
                if !self.namespaces.iter().any(|n| n == ns) {
                    return Err(invalid(
                        "namespace",
                        ns,
                        &format!("not declared ({})", step.describe()),
                    ));
                }
            }
            match step {
                Step::Veth { a, b } => {
                    check_ifname(&a.1)?;
                    check_ifname(&b.1)?;
                }
                Step::Offload { ifname, .. } => check_ifname(ifname)?,
                Step::Addr { ifname, cidr, .. } => {
                    check_ifname(ifname)?;
                    parse_cidr(cidr)?;
                }
                Step::Route { dest, via, dev, .. } => {
                    check_route(dest, via)?;
                    if let Some(dev) = dev {
                        check_ifname(dev)?;
                    }
                }
                Step::Sysctl { key, .. } => {
                    if key.is_empty() || key.contains(['=', ' ', '/']) {
                        return Err(invalid("sysctl key", key, "expected dotted form"));
                    }
                }
            }
        }
        Ok(())
    }
}
