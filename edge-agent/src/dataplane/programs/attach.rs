//! Attaching the programs to the interfaces, or swapping them into the links an earlier agent
//! pinned, and the modes and hooks they attach with.

use std::{path::Path, str::FromStr};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, TcAttachType},
        xdp::XdpLink,
        SchedClassifier, Xdp,
    },
    Ebpf,
};
use edge_common::names;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::{program_error, tc_program, DataPlaneError};
use crate::dataplane::pins::PinDir;

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic mode with a warning.
    #[default]
    Auto,
    /// Native mode only.
    Driver,
    /// Generic (skb) mode: works on any interface, slower.
    Skb,
}

impl FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "driver" | "native" => Ok(XdpMode::Driver),
            "skb" | "generic" => Ok(XdpMode::Skb),
            other => Err(format!("unknown XDP mode {other:?} (auto, driver, skb)")),
        }
    }
}

/// Which hook runs the client -> backend translation on the public interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardHook {
    /// TC on veth (XDP there copies every packet out of its skb first, and the TC program
    /// forwards to the overlay itself), XDP on every other device.
    #[default]
    Auto,
    /// XDP (`xdp_mode` says how); the kernel routes the translated packets.
    Xdp,
    /// TC ingress; the program forwards the translated packets with `bpf_fib_lookup`.
    Tc,
}

impl FromStr for ForwardHook {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(ForwardHook::Auto),
            "xdp" => Ok(ForwardHook::Xdp),
            "tc" => Ok(ForwardHook::Tc),
            other => Err(format!("unknown forward hook {other:?} (auto, xdp, tc)")),
        }
    }
}

/// The hook the client -> backend translation runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    /// The configured hook for `iface`: `auto` is TC on veth, XDP elsewhere. On veth, XDP runs
    /// on a copy of every packet the stack hands over (a TCP skb is always cloned), which costs
    /// more than the whole TC path; on a NIC, XDP runs on the driver's own buffers.
    pub fn resolve(configured: ForwardHook, iface: &str) -> Hook {
        match configured {
            ForwardHook::Xdp => Hook::Xdp,
            ForwardHook::Tc => Hook::Tc,
            ForwardHook::Auto => match crate::dataplane::netdev::driver(iface).as_deref() {
                Some("veth") => Hook::Tc,
                _ => Hook::Xdp,
            },
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }

    /// The pinned link of this hook's program on `iface`.
    pub fn link(self, pins: &PinDir, iface: &str) -> std::path::PathBuf {
        match self {
            Hook::Xdp => pins.xdp_link(iface),
            Hook::Tc => pins.tc_forward_link(iface),
        }
    }
}

/// How a program came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Attached by this agent, in this mode.
    Fresh { mode: &'static str },
    /// A pinned link from an earlier agent now runs this agent's program.
    Adopted,
}

/// Attaches TC ingress program `name` to `iface`, or swaps it into the link pinned at
/// `link_path` by an earlier agent, and pins the program.
pub(super) fn attach_or_adopt_tc(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    name: &'static str,
    iface: &str,
    link_path: &Path,
) -> Result<Attachment, DataPlaneError> {
    let program = tc_program(ebpf, name)?;
    let attachment = match adopt_tc(program, link_path) {
        Some(attachment) => attachment,
        None => attach_tc(program, name, iface, link_path)?,
    };
    pin_program(pins, name, |path| program.pin(path))?;
    Ok(attachment)
}

pub(super) fn pin_program(
    pins: &PinDir,
    name: &'static str,
    pin: impl FnOnce(&Path) -> Result<(), aya::pin::PinError>,
) -> Result<(), DataPlaneError> {
    let path = pins.prog(name);
    // The previous agent's program pin would keep its program loaded for nothing.
    let _ = std::fs::remove_file(&path);
    pin(&path).map_err(|source| DataPlaneError::Pin {
        what: "program",
        path: path.display().to_string(),
        source,
    })
}

fn pin_link(fd_link: FdLink, path: &Path) -> Result<(), DataPlaneError> {
    fd_link
        .pin(path)
        .map(drop)
        .map_err(|source| DataPlaneError::Pin {
            what: "link",
            path: path.display().to_string(),
            source,
        })
}

/// The pinned link at `path` as an `FdLink`, if there is one.
fn pinned_link(path: &Path) -> Option<Result<FdLink, String>> {
    path.exists().then(|| {
        PinnedLink::from_pin(path)
            .map(FdLink::from)
            .map_err(|e| e.to_string())
    })
}

fn adopted(path: &Path, result: Result<(), String>) -> Option<Attachment> {
    match result {
        Ok(()) => {
            info!(link = %path.display(), "adopted the pinned link; program swapped atomically");
            Some(Attachment::Adopted)
        }
        Err(error) => {
            warn!(link = %path.display(), %error, "pinned link unusable; attaching afresh");
            let _ = std::fs::remove_file(path);
            None
        }
    }
}

/// Swaps `program` into the XDP link an earlier agent pinned, if there is one that still works.
pub(super) fn adopt_xdp(program: &mut Xdp, path: &Path) -> Option<Attachment> {
    let swapped = pinned_link(path)?
        .and_then(|link| XdpLink::try_from(link).map_err(|e| e.to_string()))
        .and_then(|link| program.attach_to_link(link).map_err(|e| e.to_string()))
        // The pin keeps the link; this process's handle is not needed.
        .map(|id| drop(program.take_link(id)));
    adopted(path, swapped)
}

fn adopt_tc(program: &mut SchedClassifier, path: &Path) -> Option<Attachment> {
    let swapped = pinned_link(path)?
        .and_then(|link| SchedClassifierLink::try_from(link).map_err(|e| e.to_string()))
        .and_then(|link| program.attach_to_link(link).map_err(|e| e.to_string()))
        .map(|id| drop(program.take_link(id)));
    adopted(path, swapped)
}

pub(super) fn attach_xdp(
    program: &mut Xdp,
    iface: &str,
    mode: XdpMode,
    link_path: &Path,
) -> Result<Attachment, DataPlaneError> {
    use aya::programs::XdpMode as Kernel;
    let name = names::XDP_INGRESS;
    let attempts: &[(Kernel, &'static str)] = match mode {
        XdpMode::Auto => &[(Kernel::Driver, "driver"), (Kernel::Skb, "skb")],
        XdpMode::Driver => &[(Kernel::Driver, "driver")],
        XdpMode::Skb => &[(Kernel::Skb, "skb")],
    };
    let mut last_error = None;
    for &(kernel_mode, mode_name) in attempts {
        match program.attach(iface, kernel_mode) {
            Ok(link_id) => {
                if last_error.is_some() {
                    warn!(
                        iface,
                        "native XDP unavailable; attached in generic (skb) mode"
                    );
                }
                let link = program
                    .take_link(link_id)
                    .map_err(program_error("taking the link of", name))?;
                let fd_link = FdLink::try_from(link).map_err(|source| DataPlaneError::Link {
                    name,
                    iface: iface.to_owned(),
                    source,
                })?;
                pin_link(fd_link, link_path)?;
                info!(iface, mode = mode_name, link = %link_path.display(), "XDP attached and pinned");
                return Ok(Attachment::Fresh { mode: mode_name });
            }
            Err(source) => last_error = Some(source),
        }
    }
    let source = last_error.ok_or(DataPlaneError::MissingProgram { name })?;
    Err(DataPlaneError::Attach {
        name,
        iface: iface.to_owned(),
        source: Box::new(source),
    })
}

fn attach_tc(
    program: &mut SchedClassifier,
    name: &'static str,
    iface: &str,
    link_path: &Path,
) -> Result<Attachment, DataPlaneError> {
    // Kernels before 6.6 attach through the clsact qdisc; on newer ones (tcx) it is not needed
    // and an existing one is fine.
    if let Err(error) = tc::qdisc_add_clsact(iface) {
        debug!(iface, %error, "clsact qdisc not added");
    }
    let link_id = program
        .attach(iface, TcAttachType::Ingress)
        .map_err(|source| DataPlaneError::Attach {
            name,
            iface: iface.to_owned(),
            source: Box::new(source),
        })?;
    let link = program
        .take_link(link_id)
        .map_err(program_error("taking the link of", name))?;
    let fd_link = FdLink::try_from(link).map_err(|source| DataPlaneError::Link {
        name,
        iface: iface.to_owned(),
        source,
    })?;
    pin_link(fd_link, link_path)?;
    info!(iface, program = name, link = %link_path.display(), "TC program attached and pinned");
    Ok(Attachment::Fresh { mode: "tcx" })
}
