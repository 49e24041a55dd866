//! Loading, attaching, pinning and adopting the kernel programs.
//!
//! Maps are always loaded through their pin paths, so a new agent reuses the maps of the previous
//! one (counters and state carry on). The XDP attachment is a pinned `bpf_link`: it outlives the
//! agent, and a new agent swaps its program into the existing link atomically
//! (`BPF_LINK_UPDATE`), so the interface is never without the data plane.

use aya::{
    programs::{links::FdLink, links::PinnedLink, xdp::XdpLink, Xdp},
    Ebpf, EbpfLoader,
};
use edge_common::names;
use thiserror::Error;
use tracing::{info, warn};

use crate::{
    bpffs::{BpffsError, PinDir},
    config::XdpMode,
    object,
};

/// Maps the agent pins, by the names the object declares.
pub const PINNED_MAPS: &[&str] = &[names::STATS_MAP];

#[derive(Debug, Error)]
pub enum DataPlaneError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("{op} program {name}: {source}")]
    Program {
        op: &'static str,
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching XDP to {iface} in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("XDP on {iface} is not a bpf_link (kernel older than 5.9?): {source}")]
    Link {
        iface: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {what} at {path}: {source}")]
    Pin {
        what: &'static str,
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("interface {iface} does not exist in this network namespace")]
    NoSuchInterface { iface: String },
}

/// How the XDP program came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Attached by this agent, in this mode.
    Fresh { mode: &'static str },
    /// A pinned link from an earlier agent now runs this agent's program.
    Adopted,
}

/// The loaded data plane. Dropping it leaves everything pinned and attached.
pub struct DataPlane {
    pub ebpf: Ebpf,
    pub attachment: Attachment,
}

/// Loads the embedded object. With `pins`, maps are created at (or reused from) their pin paths;
/// without, they are private to this load (packet tests and benchmarks).
pub fn load_object(pins: Option<&PinDir>) -> Result<Ebpf, DataPlaneError> {
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    loader
        .load(object::EDGE_EBPF)
        .map_err(|e| DataPlaneError::Load(Box::new(e)))
}

/// The loaded (not attached) XDP ingress program of `ebpf`.
pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataPlaneError> {
    let name = names::XDP_INGRESS;
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataPlaneError::MissingProgram { name })?
        .try_into()
        .map_err(|e| DataPlaneError::Program {
            op: "typing",
            name,
            source: Box::new(e),
        })?;
    if program.fd().is_err() {
        program.load().map_err(|e| DataPlaneError::Program {
            op: "loading (verifier)",
            name,
            source: Box::new(e),
        })?;
    }
    Ok(program)
}

/// Loads the data plane and attaches it to `iface`, adopting what an earlier agent pinned.
/// `reset` first removes every pinned object (maps included) under `pins`.
pub fn start(
    pins: &PinDir,
    iface: &str,
    mode: XdpMode,
    reset: bool,
) -> Result<DataPlane, DataPlaneError> {
    if reset && pins.remove()? {
        info!(root = %pins.root().display(), "reset: removed pinned objects");
    }
    pins.create()?;
    if !iface_exists(iface) {
        return Err(DataPlaneError::NoSuchInterface {
            iface: iface.to_owned(),
        });
    }
    let mut ebpf = load_object(Some(pins))?;
    let program = xdp_program(&mut ebpf)?;

    let link_path = pins.xdp_link(iface);
    let attachment = match adopt(program, &link_path) {
        Some(attachment) => attachment,
        None => attach(program, iface, mode, &link_path)?,
    };

    let prog_path = pins.prog(names::XDP_INGRESS);
    // The previous agent's program pin would keep its program loaded for nothing.
    let _ = std::fs::remove_file(&prog_path);
    program
        .pin(&prog_path)
        .map_err(|source| DataPlaneError::Pin {
            what: "program",
            path: prog_path.display().to_string(),
            source,
        })?;
    Ok(DataPlane { ebpf, attachment })
}

/// Swaps `program` into the link an earlier agent pinned, if there is one that still works.
fn adopt(program: &mut Xdp, link_path: &std::path::Path) -> Option<Attachment> {
    if !link_path.exists() {
        return None;
    }
    let swapped = PinnedLink::from_pin(link_path)
        .map_err(|e| e.to_string())
        .and_then(|pinned| XdpLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string()))
        .and_then(|link| program.attach_to_link(link).map_err(|e| e.to_string()));
    match swapped {
        Ok(link_id) => {
            // The pin keeps the link; this process's handle is not needed.
            drop(program.take_link(link_id));
            info!(link = %link_path.display(), "adopted the pinned XDP link; program swapped atomically");
            Some(Attachment::Adopted)
        }
        Err(error) => {
            warn!(link = %link_path.display(), %error, "pinned XDP link unusable; attaching afresh");
            let _ = std::fs::remove_file(link_path);
            None
        }
    }
}

fn attach(
    program: &mut Xdp,
    iface: &str,
    mode: XdpMode,
    link_path: &std::path::Path,
) -> Result<Attachment, DataPlaneError> {
    use aya::programs::XdpMode as Kernel;
    let attempts: &[(Kernel, &'static str)] = match mode {
        XdpMode::Auto => &[(Kernel::Driver, "driver"), (Kernel::Skb, "skb")],
        XdpMode::Driver => &[(Kernel::Driver, "driver")],
        XdpMode::Skb => &[(Kernel::Skb, "skb")],
    };
    let mut last_error = None;
    for &(kernel_mode, name) in attempts {
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
                    .map_err(|e| DataPlaneError::Program {
                        op: "taking the link of",
                        name: names::XDP_INGRESS,
                        source: Box::new(e),
                    })?;
                let fd_link = FdLink::try_from(link).map_err(|source| DataPlaneError::Link {
                    iface: iface.to_owned(),
                    source,
                })?;
                fd_link
                    .pin(link_path)
                    .map_err(|source| DataPlaneError::Pin {
                        what: "XDP link",
                        path: link_path.display().to_string(),
                        source,
                    })?;
                info!(iface, mode = name, link = %link_path.display(), "XDP attached and pinned");
                return Ok(Attachment::Fresh { mode: name });
            }
            Err(source) => last_error = Some((name, source)),
        }
    }
    let (mode, source) = last_error.ok_or(DataPlaneError::MissingProgram {
        name: names::XDP_INGRESS,
    })?;
    Err(DataPlaneError::Attach {
        iface: iface.to_owned(),
        mode,
        source: Box::new(source),
    })
}

/// Removes every pinned object: the program is detached once its link is unpinned.
pub fn detach(pins: &PinDir) -> Result<bool, DataPlaneError> {
    Ok(pins.remove()?)
}

fn iface_exists(iface: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return false;
    };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}
