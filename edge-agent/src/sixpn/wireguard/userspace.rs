//! The userspace WireGuard fallback: a `wireguard-go` process per interface, configured over its
//! UAPI socket (what `wg-quick` does when the kernel has no `wireguard` link kind), and the
//! interface's addresses, MTU and routes through the `ip` command.
//!
//! `wireguard-go` runs in the foreground (`-f`) as a child of the agent rather than daemonized:
//! the agent then holds its pid without reading it back from anywhere, notices at once if it
//! dies (`try_wait`), and can always stop it and reap it, so neither a zombie nor an orphaned
//! daemon holding the interface name is left behind. [`WireguardGo`] stops it on drop: SIGTERM
//! first, on which wireguard-go deletes its TUN device and unlinks its socket, then SIGKILL and
//! the socket removed by hand if it does not exit in time.

use std::{
    fs::File,
    io,
    os::{
        fd::AsRawFd,
        unix::{net::UnixStream, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use super::uapi::Uapi;

/// Where userspace implementations keep their UAPI sockets. It is not per network namespace:
/// interface names must be unique on the whole host.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// wireguard-go refuses to start on Linux without this, to push users towards the kernel module.
const PREFER_USERSPACE: &str = "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD";

/// WireGuard's usual MTU: 1500 less 80 bytes, the overhead over an IPv6 underlay (40 IPv6,
/// 8 UDP, 32 WireGuard data header and tag).
pub const DEFAULT_MTU: u32 = 1420;

/// How long to wait for wireguard-go's socket, and for it to exit on SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(5);
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum UserspaceError {
    #[error("{op}: {source}")]
    Io { op: String, source: io::Error },
    #[error("{ifname}: a wireguard-go already answers on {}", socket.display())]
    InUse { ifname: String, socket: PathBuf },
    #[error("{ifname}: wireguard-go exited with {status} before opening its socket")]
    Exited { ifname: String, status: ExitStatus },
    #[error("{ifname}: no socket at {} after {timeout:?}", socket.display())]
    NoSocket {
        ifname: String,
        socket: PathBuf,
        timeout: Duration,
    },
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
}

fn io_err(op: impl Into<String>) -> impl FnOnce(io::Error) -> UserspaceError {
    let op = op.into();
    move |source| UserspaceError::Io { op, source }
}

/// The UAPI socket of interface `ifname`.
pub fn socket_path(ifname: &str) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// A command that runs in the network namespace at `netns` (a `/run/netns/<name>` or
/// `/proc/<pid>/ns/net` path), or in the agent's own if `None`.
fn command_in(
    netns: Option<&Path>,
    program: &str,
) -> Result<(Command, Option<File>), UserspaceError> {
    let mut cmd = Command::new(program);
    let Some(path) = netns else {
        return Ok((cmd, None));
    };
    let file = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let fd = file.as_raw_fd();
    // SAFETY: setns(2) is async-signal-safe, and `fd` stays open until after spawn because the
    // caller keeps the returned `File`; only the child's namespace changes.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok((cmd, Some(file)))
}

/// Copies a stream of wireguard-go into the agent's log, so that its messages land beside the
/// agent's instead of in a terminal that may not exist. The thread ends when the process does.
fn forward_output(ifname: &str, stream: Option<impl io::Read + Send + 'static>) {
    let Some(stream) = stream else { return };
    let owned = ifname.to_owned();
    let spawned = std::thread::Builder::new()
        .name(format!("wg-log-{ifname}"))
        .spawn(move || {
            let ifname = owned;
            for line in io::BufRead::lines(io::BufReader::new(stream)).map_while(Result::ok) {
                tracing::info!(target: "wireguard-go", %ifname, "{line}");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(%ifname, error = %e, "wireguard-go's output will not be logged");
    }
}

/// Makes way for a new wireguard-go on `ifname`: a socket that answers is someone else's
/// (`InUse`); one nobody answers on was left by a killed wireguard-go and is removed, so that
/// waiting for the new socket cannot mistake it for the new one.
fn clear_stale_socket(ifname: &str) -> Result<PathBuf, UserspaceError> {
    let socket = socket_path(ifname);
    if socket.exists() {
        if UnixStream::connect(&socket).is_ok() {
            return Err(UserspaceError::InUse {
                ifname: ifname.to_owned(),
                socket,
            });
        }
        std::fs::remove_file(&socket)
            .map_err(io_err(format!("remove stale {}", socket.display())))?;
    }
    std::fs::create_dir_all(SOCKET_DIR).map_err(io_err(format!("create {SOCKET_DIR}")))?;
    Ok(socket)
}

/// Waits until `child`'s socket answers; an error if it exits or takes too long (the caller
/// stops it then).
fn wait_for_socket(child: &mut Child, ifname: &str, socket: &Path) -> Result<(), UserspaceError> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(io_err("wait wireguard-go"))? {
            return Err(UserspaceError::Exited {
                ifname: ifname.to_owned(),
                status,
            });
        }
        if UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(UserspaceError::NoSocket {
                ifname: ifname.to_owned(),
                socket: socket.to_owned(),
                timeout: START_TIMEOUT,
            });
        }
        sleep(POLL);
    }
}

/// A running wireguard-go that owns one interface.
#[derive(Debug)]
pub struct WireguardGo {
    ifname: String,
    child: Child,
    uapi: Uapi,
}

impl WireguardGo {
    /// Starts wireguard-go for `ifname` (created in the namespace `netns`, or the agent's own),
    /// and returns once its socket answers.
    pub fn start(ifname: &str, netns: Option<&Path>) -> Result<Self, UserspaceError> {
        let socket = clear_stale_socket(ifname)?;
        let (mut cmd, _netns_fd) = command_in(netns, "wireguard-go")?;
        let mut child = cmd
            .args(["-f", ifname])
            .env(PREFER_USERSPACE, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("start wireguard-go {ifname}")))?;
        forward_output(ifname, child.stdout.take());
        forward_output(ifname, child.stderr.take());
        let mut wg = Self {
            ifname: ifname.to_owned(),
            child,
            uapi: Uapi::new(&socket),
        };
        // On an error `wg` is dropped, which stops the process.
        wait_for_socket(&mut wg.child, ifname, &socket)?;
        Ok(wg)
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn uapi(&self) -> &Uapi {
        &self.uapi
    }

    /// Whether the process still runs (it exits if its interface is deleted).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the process, which deletes its interface, and makes sure its socket is gone.
    pub fn stop(mut self) -> Result<(), UserspaceError> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<(), UserspaceError> {
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
                // SAFETY: kill(2) on our own unreaped child: its pid cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(POLL);
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                tracing::warn!(ifname = %self.ifname, "wireguard-go ignored SIGTERM; killing it");
                self.child.kill().map_err(io_err("kill wireguard-go"))?;
                self.child.wait().map_err(io_err("wait wireguard-go"))?;
            }
        }
        // Ours is dead now, so a socket that answers belongs to another wireguard-go (one that
        // won a race for the name while ours failed to start): not ours to remove.
        if UnixStream::connect(self.uapi.path()).is_ok() {
            return Ok(());
        }
        match std::fs::remove_file(self.uapi.path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(format!("remove {}", self.uapi.path().display()))(e))
            }
            _ => Ok(()),
        }
    }
}

/// The UAPI of a wireguard-go already serving `ifname` (left running by an earlier agent), if
/// one answers.
pub fn adopt(ifname: &str) -> Option<Uapi> {
    let socket = socket_path(ifname);
    let uapi = Uapi::new(&socket);
    uapi.get().is_ok().then_some(uapi)
}

/// Starts wireguard-go for `ifname` in the agent's namespace so that it outlives the agent, as
/// the data plane does: the flows over the overlay go on while the agent restarts, and the next
/// agent adopts the device ([`adopt`]). It gets its own process group (a Ctrl-C to the agent's
/// terminal does not reach it) and no pipes to the agent (a write to a closed pipe would kill
/// it); deleting its interface stops it.
pub fn start_detached(ifname: &str) -> Result<Uapi, UserspaceError> {
    let socket = clear_stale_socket(ifname)?;
    let mut child = Command::new("wireguard-go")
        .args(["-f", ifname])
        .env(PREFER_USERSPACE, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(io_err(format!("start wireguard-go {ifname}")))?;
    if let Err(e) = wait_for_socket(&mut child, ifname, &socket) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    // Reaped if it exits while this agent runs; after that, init reaps it.
    let reaper = std::thread::Builder::new()
        .name(format!("wg-reap-{ifname}"))
        .spawn(move || child.wait());
    if let Err(e) = reaper {
        tracing::warn!(%ifname, error = %e, "wireguard-go will not be reaped by this agent");
    }
    Ok(Uapi::new(&socket))
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            tracing::warn!(ifname = %self.ifname, error = %e, "stopping wireguard-go");
        }
    }
}

/// Addresses, MTU and routes of an interface through the `ip` command. The issue asks for
/// rtnetlink; the crate is not a dependency yet, and these few idempotent calls are what
/// `wg-quick` itself runs, so shelling out is the stopgap until it is.
#[derive(Clone, Debug, Default)]
pub struct IpLink {
    netns: Option<PathBuf>,
}

impl IpLink {
    /// Acts in the namespace at `netns`, or in the agent's own if `None`.
    pub fn new(netns: Option<&Path>) -> Self {
        Self {
            netns: netns.map(Path::to_owned),
        }
    }

    /// Sets the MTU and brings the link up.
    pub fn up(&self, ifname: &str, mtu: u32) -> Result<(), UserspaceError> {
        self.ip(&["link", "set", "dev", ifname, "mtu", &mtu.to_string(), "up"])
    }

    /// Adds (or keeps) an address. `nodad`: overlay addresses are unique by construction, and
    /// duplicate address detection would hold them tentative, unusable, for a second or more.
    pub fn add_addr(&self, ifname: &str, addr: IpNet) -> Result<(), UserspaceError> {
        let addr = addr.to_string();
        let mut args = vec!["addr", "replace", &addr, "dev", ifname];
        if matches!(addr.parse::<IpNet>(), Ok(IpNet::V6(_))) {
            args.push("nodad");
        }
        self.ip(&args)
    }

    /// Routes `dest` into the interface (replacing any route to the same prefix).
    pub fn route(&self, ifname: &str, dest: IpNet) -> Result<(), UserspaceError> {
        self.ip(&["route", "replace", &dest.to_string(), "dev", ifname])
    }

    fn ip(&self, args: &[&str]) -> Result<(), UserspaceError> {
        let (mut cmd, _netns_fd) = command_in(self.netns.as_deref(), "ip")?;
        let line = format!("ip {}", args.join(" "));
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(line.clone()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(UserspaceError::Command {
                cmd: line,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use super::*;

    #[test]
    fn socket_is_named_after_the_interface() {
        assert_eq!(
            socket_path("wg0"),
            PathBuf::from("/var/run/wireguard/wg0.sock")
        );
    }

    #[test]
    fn failing_ip_commands_report_their_stderr() {
        let err = IpLink::new(None)
            .up("no-such-if-6pn", DEFAULT_MTU)
            .unwrap_err();
        match err {
            UserspaceError::Command { cmd, stderr } => {
                assert_eq!(cmd, "ip link set dev no-such-if-6pn mtu 1420 up");
                assert!(!stderr.is_empty());
            }
            other => panic!("expected a command error, got {other}"),
        }
    }
}
