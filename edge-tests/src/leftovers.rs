//! Finding and removing lab objects left behind, e.g. by a killed test run.
//!
//! It looks everywhere a lab or its agents write outside the lab's namespaces and log
//! directory: namespaces, root-namespace interfaces, WireGuard sockets, processes, bpffs pins,
//! and the agents' files under /run/edgeproxy (a status file is removed by the agent when it
//! exits, but an agent killed with SIGKILL cannot: the lab that killed it must). Only names of
//! lab runs are matched, so that nothing of a real agent is ever touched.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd::run_ok;
use crate::error::{LabError, Result};
use crate::names::{
    mentions_run, starts_with_ns_of, AGENT_FILE_PREFIX, AGENT_RUN_DIR, BPFFS_PIN_PREFIX,
    BPFFS_ROOT, PREFIX,
};
use crate::procfs::{cmdline, kill_and_wait, netns_of, other_pids, NsId};

const NETNS_DIR: &str = "/run/netns";
const WIREGUARD_DIR: &str = "/var/run/wireguard";
const ROOT_INTERFACES: &str = "/sys/class/net";
const RUN_DIR: &str = "/run";

/// Lab objects found on the host.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// Names under /run/netns.
    pub namespaces: Vec<String>,
    /// Interfaces of the root namespace.
    pub interfaces: Vec<String>,
    /// Userspace WireGuard control sockets.
    pub wg_sockets: Vec<PathBuf>,
    pub processes: Vec<LeftoverProcess>,
    /// Pin directories of lab agents under /sys/fs/bpf.
    pub bpffs_dirs: Vec<PathBuf>,
    /// Status files (and their `.tmp`) and drain markers of lab agents under /run/edgeproxy.
    pub agent_files: Vec<PathBuf>,
    /// Files and sockets named after a lab namespace directly under /run (e.g. a lab router's
    /// BIRD control socket, which has no room under the log directory).
    pub run_files: Vec<PathBuf>,
}

/// A process inside a lab namespace, or whose command line names a lab object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftoverProcess {
    pub pid: i32,
    pub cmdline: String,
    /// The lab namespace it runs in, if any.
    pub netns: Option<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.interfaces.is_empty()
            && self.wg_sockets.is_empty()
            && self.processes.is_empty()
            && self.bpffs_dirs.is_empty()
            && self.agent_files.is_empty()
            && self.run_files.is_empty()
    }
}

impl fmt::Display for Leftovers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no lab leftovers");
        }
        for name in &self.namespaces {
            writeln!(f, "namespace {name}")?;
        }
        for name in &self.interfaces {
            writeln!(f, "interface {name}")?;
        }
        for path in &self.wg_sockets {
            writeln!(f, "wireguard socket {}", path.display())?;
        }
        for process in &self.processes {
            let place = process.netns.as_deref().unwrap_or("root namespace");
            writeln!(f, "process {} in {place}: {}", process.pid, process.cmdline)?;
        }
        for path in &self.bpffs_dirs {
            writeln!(f, "bpffs dir {}", path.display())?;
        }
        for path in &self.agent_files {
            writeln!(f, "agent file {}", path.display())?;
        }
        for path in &self.run_files {
            writeln!(f, "file {}", path.display())?;
        }
        Ok(())
    }
}

/// Lists lab objects: of the run `run_id` (as printed by [`crate::RunId`]),
/// or of every run if `None`. Unreadable places are treated as empty.
pub fn find_leftovers(run_id: Option<&str>) -> Leftovers {
    let namespaces = entries(Path::new(NETNS_DIR))
        .filter(|name| owned_by(name, run_id) && name.starts_with(&format!("{PREFIX}-")))
        .collect::<Vec<_>>();
    let interfaces = entries(Path::new(ROOT_INTERFACES))
        .filter(|name| owned_by(name, run_id))
        .collect();
    let wg_sockets = entries(Path::new(WIREGUARD_DIR))
        .filter(|name| owned_by(name, run_id))
        .map(|name| Path::new(WIREGUARD_DIR).join(name))
        .collect();
    let bpffs_dirs = entries(Path::new(BPFFS_ROOT))
        .filter(|name| {
            name.strip_prefix(BPFFS_PIN_PREFIX)
                .is_some_and(|rest| owned_by(rest, run_id))
        })
        .map(|name| Path::new(BPFFS_ROOT).join(name))
        .collect();
    let agent_files = entries(Path::new(AGENT_RUN_DIR))
        .filter(|name| {
            name.strip_prefix(AGENT_FILE_PREFIX)
                .is_some_and(|rest| starts_with_ns_of(rest, run_id))
        })
        .map(|name| Path::new(AGENT_RUN_DIR).join(name))
        .collect();
    let run_files = entries(Path::new(RUN_DIR))
        .filter(|name| starts_with_ns_of(name, run_id))
        .map(|name| Path::new(RUN_DIR).join(name))
        .collect();
    let processes = lab_processes(&namespaces, run_id);
    Leftovers {
        namespaces,
        interfaces,
        wg_sockets,
        processes,
        bpffs_dirs,
        agent_files,
        run_files,
    }
}

/// Removes every lab object of every run. Do not call it while labs are in
/// use: it cannot tell a crashed run from a live one.
pub fn clean_all() -> Result<Leftovers> {
    clean(None)
}

/// Removes the lab objects [`find_leftovers`] lists for `run_id` (all runs
/// if `None`) and returns them. Keeps going past failures and reports them
/// all at the end.
pub fn clean(run_id: Option<&str>) -> Result<Leftovers> {
    let found = find_leftovers(run_id);
    let mut failures = Vec::new();

    let pids: Vec<i32> = found.processes.iter().map(|p| p.pid).collect();
    for pid in kill_and_wait(&pids, Duration::from_secs(2)) {
        failures.push(format!("process {pid} survived SIGKILL"));
    }
    for name in &found.interfaces {
        // A veth vanishes with its peer, so a failure may just mean it is gone.
        if let Err(e) = run_ok(&["ip", "link", "del", "dev", name]) {
            if Path::new(ROOT_INTERFACES).join(name).exists() {
                failures.push(e.to_string());
            }
        }
    }
    for name in &found.namespaces {
        if let Err(e) = run_ok(&["ip", "netns", "del", name]) {
            failures.push(e.to_string());
        }
    }
    for path in &found.wg_sockets {
        remove(path, fs::remove_file(path), &mut failures);
    }
    for path in &found.bpffs_dirs {
        // Pinned links and maps are unlinked like files; the kernel detaches
        // a link once its last pin and fd are gone.
        remove(path, fs::remove_dir_all(path), &mut failures);
    }
    // After the processes: a live agent would write its status again.
    for path in found.agent_files.iter().chain(&found.run_files) {
        remove(path, fs::remove_file(path), &mut failures);
    }

    if failures.is_empty() {
        Ok(found)
    } else {
        Err(LabError::Cleanup { failures })
    }
}

fn remove(path: &Path, result: std::io::Result<()>, failures: &mut Vec<String>) {
    if let Err(e) = result {
        if e.kind() != ErrorKind::NotFound {
            failures.push(format!("remove {}: {e}", path.display()));
        }
    }
}

/// Whether an object name belongs to `run_id`'s labs (any lab if `None`):
/// `epl-<run>-...` for namespaces, `epl<run>...` for host-wide names.
fn owned_by(name: &str, run_id: Option<&str>) -> bool {
    match run_id {
        None => name.starts_with(PREFIX),
        Some(run) => name
            .strip_prefix(PREFIX)
            .map(|rest| rest.strip_prefix('-').unwrap_or(rest))
            .is_some_and(|rest| rest.starts_with(run)),
    }
}

fn entries(dir: &Path) -> impl Iterator<Item = String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter()
}

fn lab_processes(namespaces: &[String], run_id: Option<&str>) -> Vec<LeftoverProcess> {
    let lab_netns: HashMap<NsId, &String> = namespaces
        .iter()
        .filter_map(|name| Some((NsId::of(&Path::new(NETNS_DIR).join(name))?, name)))
        .collect();
    other_pids()
        .into_iter()
        .filter_map(|pid| {
            let netns = netns_of(pid)
                .and_then(|id| lab_netns.get(&id))
                .map(|n| (*n).clone());
            let cmdline = cmdline(pid);
            (netns.is_some() || mentions_run(&cmdline, run_id)).then_some(LeftoverProcess {
                pid,
                cmdline,
                netns,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_follows_the_naming_scheme() {
        assert!(owned_by("epl-abc123-geo-pop", Some("abc123")));
        assert!(owned_by("eplabc123w0", Some("abc123")));
        assert!(owned_by("eplabc123w0", None));
        assert!(!owned_by("epl-abc124-geo-pop", Some("abc123")));
        assert!(!owned_by("eth0", None));
        assert!(!owned_by("eth0", Some("abc123")));
    }

    /// The lab finds agents' files by name: the agent must name them as the lab expects.
    #[test]
    fn agent_files_are_named_as_the_lab_expects() {
        let run = crate::RunId::generate();
        let ns = crate::ns_name(&run, "bgp-popb");
        let pins = edge_agent::dataplane::pins::PinDir::new(crate::bpffs_pin_dir(&ns));
        for file in [
            pins.agent_status_file(),
            edge_agent::bgp::drain::marker(&pins),
        ] {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            assert_eq!(file.parent(), Some(Path::new(AGENT_RUN_DIR)), "{file:?}");
            assert!(
                name.strip_prefix(AGENT_FILE_PREFIX)
                    .is_some_and(|rest| starts_with_ns_of(rest, Some(run.as_str()))),
                "expected {AGENT_FILE_PREFIX}{ns}.*, the agent names it {name}"
            );
        }
    }

    #[test]
    fn display_lists_every_object() {
        let leftovers = Leftovers {
            namespaces: vec!["epl-abc123-x".into()],
            processes: vec![LeftoverProcess {
                pid: 7,
                cmdline: "sleep 100".into(),
                netns: Some("epl-abc123-x".into()),
            }],
            agent_files: vec!["/run/edgeproxy/sys_fs_bpf_edgeproxy-epl-abc123-x.json".into()],
            ..Leftovers::default()
        };
        let text = leftovers.to_string();
        assert!(
            text.contains("agent file /run/edgeproxy/sys_fs_bpf_edgeproxy-epl-abc123-x.json\n"),
            "{text}"
        );
        assert!(text.contains("namespace epl-abc123-x\n"), "{text}");
        assert!(
            text.contains("process 7 in epl-abc123-x: sleep 100"),
            "{text}"
        );
        assert_eq!(Leftovers::default().to_string(), "no lab leftovers");
    }
}
