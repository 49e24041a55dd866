//! Loading, attaching, pinning and adopting the kernel programs.
//!
//! Maps are always loaded through their pin paths, so a new agent reuses the maps of the previous
//! one (flows, counters and tables carry on). Each attachment is a pinned `bpf_link`: it outlives
//! the agent, and a new agent swaps its program into the existing link atomically
//! (`BPF_LINK_UPDATE`), so the interfaces are never without the data plane and no flow is lost.
//!
//! Here: the object loaded with its maps, and the whole start; `attach` attaches or adopts each
//! program, `shapes` retires pinned maps this agent would create differently.

mod attach;
mod shapes;

use aya::{
    programs::{SchedClassifier, Xdp},
    Ebpf, EbpfLoader,
};
use edge_common::{limits::MAX_BACKENDS, names};
use thiserror::Error;
use tracing::{info, warn};

use self::attach::{adopt_xdp, attach_or_adopt_tc, attach_xdp, pin_program};
pub use self::{
    attach::{Attachment, ForwardHook, Hook, XdpMode},
    shapes::{retire_mismatched_pins, MapShape, Mismatch},
};
use crate::{
    balancing::maglev::MaglevConfig, dataplane::object, dataplane::pins::BpffsError,
    dataplane::pins::PinDir,
};

/// Maps the agent pins, by the names the object declares.
pub const PINNED_MAPS: &[&str] = &[
    names::STATS_MAP,
    names::SERVICES,
    names::SERVICE_PORTS,
    names::BACKENDS,
    names::MAGLEV,
    names::FLOWS,
    names::HALF_OPEN,
    names::POP_CONFIG,
    names::SERVICE_STATS,
    names::BACKEND_STATS,
    names::DROP_STATS,
    names::GEO_V4,
    names::GEO_V4_SLASH24,
    names::GEO_V6,
    names::GEO_V6_32,
    names::GEO_V6_48,
    names::SERVICE_RINGS,
    names::AFFINITY,
];

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
    #[error("attaching {name} to {iface}: {source}")]
    Attach {
        name: &'static str,
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("{name} on {iface} is not a bpf_link (kernel older than 6.6?): {source}")]
    Link {
        name: &'static str,
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
    #[error("reading the map definitions of the eBPF object: {0}")]
    Object(#[source] Box<aya_obj::ParseError>),
    #[error("pinned map {name} at {path}: {source}")]
    PinnedMap {
        name: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("interface {iface} does not exist in this network namespace")]
    NoSuchInterface { iface: String },
}

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    pub flows: u32,
    pub half_open: u32,
    /// Slots in all Maglev tables together.
    pub maglev: u32,
    /// Client bindings.
    pub affinity: u32,
}

impl MapSizes {
    /// The maps whose capacity is set at load time rather than by the object, with it.
    fn overrides(self) -> [(&'static str, u32); 5] {
        [
            (names::FLOWS, self.flows),
            (names::HALF_OPEN, self.half_open),
            (names::MAGLEV, self.maglev),
            (names::AFFINITY, self.affinity),
            (names::BACKENDS, MAX_BACKENDS),
        ]
    }
}

impl Default for MapSizes {
    fn default() -> Self {
        let maglev = MaglevConfig::default();
        MapSizes {
            flows: edge_common::limits::DEFAULT_FLOWS,
            half_open: edge_common::limits::DEFAULT_HALF_OPEN,
            maglev: 2 * maglev.max_services * maglev.table_size,
            affinity: edge_common::limits::DEFAULT_AFFINITY,
        }
    }
}

/// Where and how to attach.
#[derive(Clone, Debug)]
pub struct Attach<'a> {
    pub public_iface: &'a str,
    pub overlay_iface: Option<&'a str>,
    pub xdp_mode: XdpMode,
    pub forward_hook: ForwardHook,
    pub reset: bool,
    pub sizes: MapSizes,
    /// Load the programs with their debug records on (`--bpf-debug-log`).
    pub debug_log: bool,
}

/// The loaded data plane. Dropping it leaves everything pinned and attached.
pub struct DataPlane {
    pub ebpf: Ebpf,
    /// The client -> backend program on the public interface, and its hook.
    pub hook: Hook,
    pub forward: Attachment,
    /// The reply program on the overlay interface.
    pub reply: Option<Attachment>,
}

/// Loads the embedded object. With `pins`, maps are created at (or reused from) their pin paths;
/// without, they are private to this load (packet tests and benchmarks).
pub fn load_object(pins: Option<&PinDir>, sizes: MapSizes) -> Result<Ebpf, DataPlaneError> {
    load_object_with(pins, sizes, false)
}

/// `load_object`, with the programs' debug records on or off. The switch is a read-only global
/// fixed at load time, so with it off the verifier removes the logging code: it costs nothing.
/// aya-log's ring buffer (`AYA_LOGS`) is created either way and never pinned: each load gets its
/// own, and the programs swapped into the pinned links write to the new one.
pub fn load_object_with(
    pins: Option<&PinDir>,
    sizes: MapSizes,
    debug_log: bool,
) -> Result<Ebpf, DataPlaneError> {
    if let Some(pins) = pins {
        for m in retire_mismatched_pins(pins, sizes)? {
            warn!(
                map = m.name,
                pinned = %m.pinned,
                wanted = %m.wanted,
                "a pinned map does not match this agent's: it is replaced by an empty one (for \
                 FLOWS, the connections it held are reset)"
            );
        }
    }
    let debug_log = u8::from(debug_log);
    let mut loader = EbpfLoader::new();
    loader.override_global(names::DEBUG_LOG, &debug_log, true);
    for (name, max_entries) in sizes.overrides() {
        loader.map_max_entries(name, max_entries);
    }
    if let Some(pins) = pins {
        for name in PINNED_MAPS {
            loader.map_pin_path(name, pins.map(name));
        }
    }
    loader
        .load(object::EDGE_EBPF)
        .map_err(|e| DataPlaneError::Load(Box::new(e)))
}

fn program_error(
    op: &'static str,
    name: &'static str,
) -> impl FnOnce(aya::programs::ProgramError) -> DataPlaneError {
    move |e| DataPlaneError::Program {
        op,
        name,
        source: Box::new(e),
    }
}

/// The loaded (not attached) XDP program `name` of `ebpf`.
pub fn xdp_program<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut Xdp, DataPlaneError> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DataPlaneError::MissingProgram { name })?
        .try_into()
        .map_err(program_error("typing", name))?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(program_error("loading (verifier)", name))?;
    }
    Ok(program)
}

/// The loaded (not attached) TC program `name` of `ebpf`.
pub fn tc_program<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut SchedClassifier, DataPlaneError> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(DataPlaneError::MissingProgram { name })?
        .try_into()
        .map_err(program_error("typing", name))?;
    if program.fd().is_err() {
        program
            .load()
            .map_err(program_error("loading (verifier)", name))?;
    }
    Ok(program)
}

/// Loads the data plane and attaches it, adopting what an earlier agent pinned.
/// `reset` first removes every pinned object (maps included) under `pins`.
pub fn start(pins: &PinDir, attach: &Attach<'_>) -> Result<DataPlane, DataPlaneError> {
    if attach.reset && pins.remove()? {
        info!(root = %pins.root().display(), "reset: removed pinned objects");
    }
    pins.create()?;
    for iface in std::iter::once(attach.public_iface).chain(attach.overlay_iface) {
        if crate::dataplane::netdev::ifindex(iface).is_none() {
            return Err(DataPlaneError::NoSuchInterface {
                iface: iface.to_owned(),
            });
        }
    }
    let mut ebpf = load_object_with(Some(pins), attach.sizes, attach.debug_log)?;

    let iface = attach.public_iface;
    let hook = Hook::resolve(attach.forward_hook, iface);
    let link_path = hook.link(pins, iface);
    let forward = match hook {
        Hook::Xdp => {
            let program = xdp_program(&mut ebpf, names::XDP_INGRESS)?;
            let attachment = match adopt_xdp(program, &link_path) {
                Some(attachment) => attachment,
                None => attach_xdp(program, iface, attach.xdp_mode, &link_path)?,
            };
            pin_program(pins, names::XDP_INGRESS, |path| program.pin(path))?;
            attachment
        }
        Hook::Tc => attach_or_adopt_tc(&mut ebpf, pins, names::TC_FORWARD, iface, &link_path)?,
    };
    // The other hook's link, from an agent configured otherwise, goes only now that this one
    // translates: for a moment both run, and the second sees already translated packets,
    // which are not for a VIP and pass.
    let other = match hook {
        Hook::Xdp => Hook::Tc,
        Hook::Tc => Hook::Xdp,
    };
    let stale = other.link(pins, iface);
    if stale.exists() {
        let _ = std::fs::remove_file(&stale);
        info!(link = %stale.display(), hook = other.name(), "detached the other hook's program");
    }

    let reply = match attach.overlay_iface {
        Some(overlay) => Some(attach_or_adopt_tc(
            &mut ebpf,
            pins,
            names::TC_REPLY,
            overlay,
            &pins.tc_link(overlay),
        )?),
        None => None,
    };
    Ok(DataPlane {
        ebpf,
        hook,
        forward,
        reply,
    })
}

/// Removes every pinned object: the programs are detached once their links are unpinned.
pub fn detach(pins: &PinDir) -> Result<bool, DataPlaneError> {
    Ok(pins.remove()?)
}
