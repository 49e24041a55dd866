//! Where the agent pins what must outlive it. Every bpffs path is built here and nowhere else.
//!
//! ```text
//! <root>/maps/<MAP_NAME>      maps, reused by the next agent (counters and state survive)
//! <root>/progs/<program>      the program last loaded, for `bpftool prog show pinned`
//! <root>/links/xdp-<iface>    the XDP attachment; while it is pinned the program stays attached
//! <root>/links/tc-<iface>     the TC reply program on the overlay interface
//! ```
//!
//! Pins outlive the agent only on a bpffs others see too. `ip netns exec` gives the agent a
//! private mount namespace with a fresh /sys, where [`ensure_mounted`] then mounts a bpffs of
//! the agent's own: its pins are invisible to the CLI on the host and vanish with the agent
//! (issue 24). [`hidden_from_host`] notices that, so the agent can say so.

use std::{
    ffi::CString,
    io,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use thiserror::Error;

/// The default root; a deployment (or a lab) running several agents gives each its own root.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/edgeproxy";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Error)]
pub enum BpffsError {
    #[error("{path} is not on a BPF filesystem; mount one with `mount -t bpf bpf /sys/fs/bpf`")]
    NotBpffs { path: PathBuf },
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The pin layout under one root directory.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    /// Where the agent pinning here writes its status (`edge-agent status` reads it): under
    /// /run, named after this root, so that agents of different roots do not collide.
    pub fn agent_status_file(&self) -> PathBuf {
        let name = self
            .root()
            .to_string_lossy()
            .trim_matches('/')
            .replace('/', "_");
        Path::new("/run/edgeproxy").join(format!("{name}.json"))
    }

    /// The state the running agent last read (services, backends, health rows), beside its
    /// status file: what `edge-agent backends` reports from, whatever the source.
    pub fn agent_state_file(&self) -> PathBuf {
        self.agent_status_file().with_extension("state.json")
    }

    /// Removes the status and state files when dropped; an agent holds one while it runs.
    pub fn status_file_guard(&self) -> StatusFileGuard {
        StatusFileGuard {
            paths: vec![self.agent_status_file(), self.agent_state_file()],
        }
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// The pinned map `name`, for the CLI commands that read the running data plane.
    pub fn open_map(&self, name: &str) -> anyhow::Result<aya::maps::MapData> {
        let path = self.map(name);
        aya::maps::MapData::from_pin(&path).map_err(|e| {
            anyhow::anyhow!("opening {}: {e}; is the data plane loaded?", path.display())
        })
    }

    pub fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }

    pub fn prog(&self, name: &str) -> PathBuf {
        self.progs().join(name)
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn xdp_link(&self, iface: &str) -> PathBuf {
        self.links().join(format!("xdp-{iface}"))
    }

    /// The reply program's link on the overlay interface.
    pub fn tc_link(&self, iface: &str) -> PathBuf {
        self.links().join(format!("tc-{iface}"))
    }

    /// The translation's link when it runs at TC ingress of the public interface.
    pub fn tc_forward_link(&self, iface: &str) -> PathBuf {
        self.links().join(format!("tcfwd-{iface}"))
    }

    /// Interfaces where the translation is attached, with its hook ("xdp" or "tc"), from the
    /// link file names.
    pub fn attached_ifaces(&self) -> Vec<(String, &'static str)> {
        let Ok(entries) = std::fs::read_dir(self.links()) else {
            return Vec::new();
        };
        let mut ifaces: Vec<(String, &'static str)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                if let Some(iface) = name.strip_prefix("xdp-") {
                    Some((iface.to_owned(), "xdp"))
                } else {
                    name.strip_prefix("tcfwd-").map(|i| (i.to_owned(), "tc"))
                }
            })
            .collect();
        ifaces.sort();
        ifaces
    }

    /// Creates the directories of the layout; the parent must be on bpffs.
    pub fn create(&self) -> Result<(), BpffsError> {
        ensure_mounted(self.root.parent().unwrap_or(Path::new("/")))?;
        for dir in [self.maps(), self.progs(), self.links()] {
            std::fs::create_dir_all(&dir).map_err(|source| BpffsError::Io {
                op: "creating",
                path: dir.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Removes every pinned object under the root. Unpinning the link detaches the program.
    pub fn remove(&self) -> Result<bool, BpffsError> {
        match std::fs::remove_dir_all(&self.root) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(BpffsError::Io {
                op: "removing",
                path: self.root.clone(),
                source,
            }),
        }
    }
}

/// Removes the agent's status file (and a half-written `.tmp`) when dropped, so that however
/// the agent ends (a return, an error, a panic that unwinds) a gone agent leaves no status. Only
/// SIGKILL skips it: whoever sends that removes the file (the lab harness does).
#[must_use = "the status file is removed when this is dropped"]
pub struct StatusFileGuard {
    paths: Vec<PathBuf>,
}

impl Drop for StatusFileGuard {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path.with_extension("tmp"));
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Writes `contents` to `path` through a temporary file beside it, so that readers see the old
/// file or the new one, never a part.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}

/// Whether `root` is on a bpffs the host does not see: seen from PID 1's mount namespace (or
/// this process's parent's, where PID 1 cannot be inspected), the same path is absent or on
/// another filesystem. False when the two cannot be compared, or share the namespace.
pub fn hidden_from_host(root: &Path) -> bool {
    let (Ok(root), Ok(own_ns)) = (
        std::fs::canonicalize(root),
        std::fs::read_link("/proc/self/ns/mnt"),
    ) else {
        return false;
    };
    let Ok(ours) = std::fs::metadata(&root) else {
        return false;
    };
    for pid in [1, std::os::unix::process::parent_id()] {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let Ok(their_ns) = std::fs::read_link(proc.join("ns/mnt")) else {
            continue;
        };
        if their_ns == own_ns {
            return false;
        }
        // The same path resolved through their root, and so through their mounts.
        let theirs = proc
            .join("root")
            .join(root.strip_prefix("/").unwrap_or(&root));
        return std::fs::metadata(theirs).map_or(true, |m| m.dev() != ours.dev());
    }
    false
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain old data; the kernel fills it on success.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `dir` (or `/sys/fs/bpf` above it) is on bpffs, mounting `/sys/fs/bpf` if it is a
/// plain directory: fresh machines of this kind boot without it.
pub fn ensure_mounted(dir: &Path) -> Result<(), BpffsError> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(parent) => probe = parent,
            None => break,
        }
    }
    if is_bpffs(probe) {
        return Ok(());
    }
    let sys_bpf = Path::new("/sys/fs/bpf");
    if dir.starts_with(sys_bpf) && !is_bpffs(sys_bpf) {
        let target = CString::new("/sys/fs/bpf").map_err(|e| BpffsError::Mount {
            path: sys_bpf.into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        let fstype = c"bpf";
        // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(BpffsError::Mount {
                path: sys_bpf.into(),
                source: io::Error::last_os_error(),
            });
        }
        return Ok(());
    }
    Err(BpffsError::NotBpffs { path: probe.into() })
}
