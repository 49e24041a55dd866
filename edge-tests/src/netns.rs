//! Network namespaces as RAII guards.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::cmd::{run, run_ok, CmdOutput};
use crate::error::{LabError, Result};
use crate::logdir::LogDir;
use crate::process::LabProcess;
use crate::procfs::{kill_and_wait, pids_in_netns, NsId};

const NETNS_DIR: &str = "/run/netns";
/// How long to wait for SIGKILLed processes to leave before deleting the namespace.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// A named network namespace (`/run/netns/<name>`) with `lo` up. Dropping it
/// kills every process inside, then deletes it, which also destroys its
/// interfaces (and so the peers of its veths).
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    log_dir: Arc<LogDir>,
}

impl NetNs {
    /// Creates the namespace; process logs go to `<tmp>/<name>/`.
    pub fn create(name: &str) -> Result<Self> {
        Self::create_logging_to(name, Arc::new(LogDir::create(name)?))
    }

    pub(crate) fn create_logging_to(name: &str, log_dir: Arc<LogDir>) -> Result<Self> {
        validate_name(name)?;
        run_ok(&["ip", "netns", "add", name])?;
        let ns = Self {
            name: name.to_owned(),
            path: Path::new(NETNS_DIR).join(name),
            log_dir,
        };
        // From here on `ns` is dropped, and so deleted, on failure.
        ns.ip(&["link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, e.g. for `nsenter --net=<path>` or setns(2).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a short command inside with `ip netns exec`, whatever its exit code.
    ///
    /// `ip netns exec` gives the command a private /sys showing this namespace,
    /// which hides /sys/fs/bpf: use [`NetNs::spawn`] for anything that needs bpffs.
    pub fn exec(&self, argv: &[&str]) -> Result<CmdOutput> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// Like [`NetNs::exec`], but a non-zero exit is an error.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<CmdOutput> {
        self.exec(argv)?.ok()
    }

    /// Runs `ip -n <name> <args>`: cheaper than `exec` for ip itself.
    pub fn ip(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run_ok(&full)
    }

    /// Sets a sysctl of this namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec_ok(&["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Starts a long-running process inside, logged as `name`.
    ///
    /// Uses `nsenter --net`, which switches only the network namespace and so
    /// keeps the host's /sys/fs/bpf visible, unlike `ip netns exec`.
    pub fn spawn(&self, name: &str, argv: &[&str], envs: &[(&str, &str)]) -> Result<LabProcess> {
        let net = format!("--net={}", self.path.display());
        let mut full = vec!["nsenter", &net, "--"];
        full.extend_from_slice(argv);
        LabProcess::start(name, &full, envs, Arc::clone(&self.log_dir))
    }

    /// Runs `f` on a new thread that has entered this namespace, e.g. to open
    /// sockets from Rust without an external tool. Sockets created there stay
    /// in this namespace when returned; the calling thread is unaffected.
    pub fn run_in_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(&self.path).map_err(|e| LabError::io_path("open", &self.path, e))?;
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                // SAFETY: `file` is an open nsfs descriptor for the whole call;
                // setns(2) changes only this thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let err = std::io::Error::last_os_error();
                    return Err(LabError::io_path("setns", &self.path, err));
                }
                Ok(f())
            });
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a detached thread that enters this namespace and runs `f`, for work that lives
    /// as long as the lab (the demo's client probes). Its sockets stay in this namespace; the
    /// thread ends when `f` returns, and `f` must return once the namespace is going away.
    pub fn spawn_thread(
        &self,
        name: &str,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>> {
        let file = File::open(&self.path).map_err(|e| LabError::io_path("open", &self.path, e))?;
        let path = self.path.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // SAFETY: `file` is an open nsfs descriptor; setns(2) changes only this
                // thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    eprintln!(
                        "edge_tests: setns {}: {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    );
                    return;
                }
                drop(file);
                f();
            })
            .map_err(|e| LabError::io_path("spawn a thread for", &self.path, e))
    }

    /// Processes currently inside (zombies excluded).
    pub fn pids(&self) -> Vec<i32> {
        NsId::of(&self.path).map(pids_in_netns).unwrap_or_default()
    }

    /// SIGKILLs every process inside and waits briefly for them to be gone.
    /// Returns those that survived.
    pub fn kill_all(&self) -> Vec<i32> {
        kill_and_wait(&self.pids(), KILL_WAIT)
    }

    /// Where processes spawned here write their logs.
    pub fn log_dir(&self) -> &Path {
        self.log_dir.path()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let survivors = self.kill_all();
        if !survivors.is_empty() {
            eprintln!(
                "edge_tests: processes {survivors:?} still in {} after SIGKILL",
                self.name
            );
        }
        if let Err(e) = run_ok(&["ip", "netns", "del", &self.name]) {
            eprintln!("edge_tests: {e}");
        }
    }
}

/// Namespace names become file names and ip(8) arguments.
fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name != "."
        && name != "..";
    if valid {
        Ok(())
    } else {
        Err(LabError::Invalid {
            what: "namespace name",
            value: name.to_owned(),
            why: "use letters, digits, '-', '_' and '.'".to_owned(),
        })
    }
}
