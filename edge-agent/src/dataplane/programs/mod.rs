//! Loading, attaching, pinning and adopting the kernel programs.
//!
//! Maps are always loaded through their pin paths, so a new agent reuses the maps of the previous
//! one (flows, counters and tables carry on). Each attachment is a pinned `bpf_link`: it outlives
//! the agent, and a new agent swaps its program into the existing link atomically
//! (`BPF_LINK_UPDATE`), so the interfaces are never without the data plane and no flow is lost.

use std::path::Path;

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, SchedClassifierLink, TcAttachType},
        xdp::XdpLink,
        SchedClassifier, Xdp,
    },
    Ebpf, EbpfLoader,
};
use edge_common::{limits::MAX_BACKENDS, names};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::{
    config::ForwardHook, config::XdpMode, dataplane::object, dataplane::pins::BpffsError,
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
        let maglev = crate::config::MaglevConfig::default();
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

/// What the kernel needs to agree on for a map to be reused: type, key and value sizes,
/// capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

impl std::fmt::Display for MapShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, {} entries",
            self.map_type, self.key_size, self.value_size, self.max_entries
        )
    }
}

/// A pinned map this agent would create differently.
#[derive(Clone, Debug)]
pub struct Mismatch {
    pub name: &'static str,
    pub pinned: MapShape,
    pub wanted: MapShape,
}

/// Unpins the maps under `pins` whose shape differs from what this agent creates with `sizes`
/// (an upgrade changed a key or value type, or `flows.max_entries` changed). aya reuses a
/// pinned map by its path without comparing, and the programs would then read and write it
/// with the wrong layout. A retired map lives on while the old programs, attached through the
/// pinned links, still use it; the new programs get a new, empty one.
pub fn retire_mismatched_pins(
    pins: &PinDir,
    sizes: MapSizes,
) -> Result<Vec<Mismatch>, DataPlaneError> {
    let object = aya_obj::Object::parse(object::EDGE_EBPF)
        .map_err(|e| DataPlaneError::Object(Box::new(e)))?;
    let mut retired = Vec::new();
    for &name in PINNED_MAPS {
        let path = pins.map(name);
        if !path.exists() {
            continue;
        }
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| DataPlaneError::PinnedMap {
            name,
            path: path.clone(),
            source,
        };
        let Some(def) = object.maps.get(name) else {
            return Err(failed("not in this agent's eBPF object".into()));
        };
        let max_entries = sizes
            .overrides()
            .into_iter()
            .find_map(|(sized, n)| (sized == name).then_some(n))
            .unwrap_or_else(|| def.max_entries());
        let wanted = MapShape {
            map_type: def.map_type(),
            key_size: def.key_size(),
            value_size: def.value_size(),
            max_entries,
        };
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| failed(Box::new(e)))?;
        let pinned = MapShape {
            map_type: info.map_type().map_err(|e| failed(Box::new(e)))? as u32,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if pinned != wanted {
            std::fs::remove_file(&path).map_err(|e| failed(Box::new(e)))?;
            retired.push(Mismatch {
                name,
                pinned,
                wanted,
            });
        }
    }
    Ok(retired)
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

/// Attaches TC ingress program `name` to `iface`, or swaps it into the link pinned at
/// `link_path` by an earlier agent, and pins the program.
fn attach_or_adopt_tc(
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

fn pin_program(
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
fn adopt_xdp(program: &mut Xdp, path: &Path) -> Option<Attachment> {
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

fn attach_xdp(
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

/// Removes every pinned object: the programs are detached once their links are unpinned.
pub fn detach(pins: &PinDir) -> Result<bool, DataPlaneError> {
    Ok(pins.remove()?)
}
