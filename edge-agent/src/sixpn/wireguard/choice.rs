//! The choice between the two WireGuard drivers: the kernel's ([`super::kernel::KernelWg`]) when
//! this kernel can create and configure a `wireguard` link, wireguard-go
//! ([`super::userspace::WireguardGo`]) otherwise.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
};

use super::kernel;
use crate::netlink::link::NetlinkLink;

/// Which WireGuard implementation the 6PN runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Implementation {
    /// The kernel's: `wireguard` links configured by [`kernel::KernelWg`].
    Kernel,
    /// wireguard-go ([`super::userspace::WireguardGo`]) over its UAPI socket; `reason` says why the kernel's
    /// cannot be used.
    Userspace { reason: String },
}

/// Probe links of one process get distinct names, in case two threads detect at once.
static PROBES: AtomicU32 = AtomicU32::new(0);

impl Implementation {
    /// Creates a throwaway link of kind `wireguard`, checks that the `wireguard` generic netlink
    /// family exists, and deletes the link again. Creating the link is the test that counts: it
    /// is what loads the module where modules can be loaded, and what fails (EOPNOTSUPP) where
    /// the kernel has no WireGuard. Acts in the calling thread's network namespace and needs
    /// CAP_NET_ADMIN there; anything that fails means userspace.
    pub fn detect() -> Self {
        let userspace = |reason: String| Self::Userspace { reason };
        let link = match NetlinkLink::open() {
            Ok(link) => link,
            Err(e) => return userspace(format!("rtnetlink is unavailable: {e}")),
        };
        let mut created = None;
        // EEXIST only if a probe of a crashed process with the same pid left its link behind.
        for _ in 0..3 {
            let name = probe_name();
            match link.create_wireguard(&name) {
                Ok(()) => {
                    created = Some(name);
                    break;
                }
                Err(e) if e.errno() == Some(libc::EEXIST) => continue,
                Err(e) => {
                    return userspace(format!("the kernel cannot create a `wireguard` link: {e}"))
                }
            }
        }
        let Some(name) = created else {
            return userspace("every probe link name was taken".to_owned());
        };
        let family = kernel::open_family().map(|(_socket, family)| family);
        if let Err(e) = link.delete(&name) {
            tracing::warn!(ifname = %name, error = %e, "the WireGuard probe link could not be deleted");
        }
        match family {
            Ok(_) => Self::Kernel,
            Err(e) => userspace(format!(
                "a `wireguard` link can be created, but configuring it cannot: {e}"
            )),
        }
    }
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel => f.write_str("kernel WireGuard"),
            Self::Userspace { reason } => write!(f, "userspace WireGuard (wireguard-go): {reason}"),
        }
    }
}

/// `6pnprobe` and up to 7 hex digits: the pid (22 bits at most on Linux) and a counter, within
/// the 15 bytes of an interface name.
fn probe_name() -> String {
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    format!(
        "6pnprobe{:x}",
        (std::process::id() | (n << 22)) & 0x0fff_ffff
    )
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use std::{io, process::Command};

    use super::*;
    use crate::sixpn::wireguard::kernel::{KernelError, KernelWg};

    const IFNAME: &str = "wg-6pn";

    /// Runs `detect` in a network namespace of its own (a thread that unshared it, so nothing can
    /// be left on the host), checks it against `ip link add ... type wireguard` there, and checks
    /// that the probe link is gone.
    #[test]
    fn detect_agrees_with_ip_and_leaves_no_link() {
        // SAFETY: geteuid(2) has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating links needs root");
            return;
        }
        let (detected, links, oracle) = std::thread::spawn(|| {
            // SAFETY: moves only this new thread into a new network namespace, which goes away
            // with it; processes it spawns start in that namespace too.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", io::Error::last_os_error());
            let detected = Implementation::detect();
            let links = Command::new("ip")
                .args(["-o", "link", "show"])
                .output()
                .unwrap();
            let oracle = Command::new("ip")
                .args(["link", "add", "6pn-oracle", "type", "wireguard"])
                .output()
                .unwrap();
            (
                detected,
                String::from_utf8_lossy(&links.stdout).into_owned(),
                oracle,
            )
        })
        .join()
        .unwrap();
        let names: Vec<&str> = links
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .collect();
        assert_eq!(names, ["lo"], "links after detect:\n{links}");
        let oracle_stderr = String::from_utf8_lossy(&oracle.stderr);
        match (&detected, oracle.status.success()) {
            (Implementation::Kernel, true) => {}
            (Implementation::Userspace { reason }, false) => {
                assert!(
                    reason.contains("wireguard"),
                    "the reason does not say what failed: {reason}"
                );
                eprintln!("{detected}; ip link add said: {}", oracle_stderr.trim());
                // Without the module there is no generic netlink family either.
                assert!(matches!(KernelWg::open(IFNAME), Err(KernelError::NoFamily)));
            }
            _ => panic!(
                "detect says {detected}, but `ip link add type wireguard` {}: {oracle_stderr}",
                if oracle.status.success() {
                    "worked"
                } else {
                    "failed"
                }
            ),
        }
    }
}
