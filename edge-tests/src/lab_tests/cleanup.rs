//! Nothing of a run survives it, whether it ends well or not.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cmd::run_ok;
use crate::{clean, find_leftovers, LabError, Result, Topology};

#[test]
fn a_failing_step_is_named_and_undone() {
    let result = Topology::new("bad")
        .ns("a")
        .ns("b")
        .veth(("a", "eth0"), ("b", "eth0"))
        .addr("a", "eth0", "192.0.2.1/24")
        .route("a", "198.18.0.0/15", "203.0.113.9")
        .up();
    let Err(LabError::Step {
        lab,
        run,
        step,
        source,
    }) = result
    else {
        panic!("expected a step error, got {result:?}");
    };
    assert_eq!(step, "route a: 198.18.0.0/15 via 203.0.113.9");
    assert!(
        matches!(*source, LabError::Command { ref stderr, .. } if !stderr.is_empty()),
        "{source}"
    );
    assert_eq!(lab, "bad");
    let left = find_leftovers(Some(&run));
    assert!(left.is_empty(), "left behind:\n{left}");
}

/// Removes a run's objects even when an assertion fails half-way.
struct CleanOnDrop(crate::RunId);

impl Drop for CleanOnDrop {
    fn drop(&mut self) {
        let _ = clean(Some(self.0.as_str()));
    }
}

/// Leaves behind, without guards, what a killed test run would, and checks
/// that `clean` finds and removes all of it.
#[test]
fn clean_removes_what_a_crashed_run_left() -> Result<()> {
    let run = crate::RunId::generate();
    let ns = crate::ns_name(&run, "crash-host");
    let wg = crate::wg_ifname(&run, 0);
    let io = |what: &'static str| move |e| LabError::io(what, e);
    let _cleanup = CleanOnDrop(run);
    run_ok(&["ip", "netns", "add", &ns])?;
    // Half of the veth stays in the root namespace, like a WireGuard device
    // created before being moved.
    let peer = ["peer", "name", "eth0", "netns", &ns];
    run_ok(
        &[
            &["ip", "link", "add", "name", &wg, "type", "veth"][..],
            &peer[..],
        ]
        .concat(),
    )?;
    let socket_dir = Path::new("/var/run/wireguard");
    std::fs::create_dir_all(socket_dir).map_err(io("create socket dir"))?;
    let socket = socket_dir.join(format!("{wg}.sock"));
    std::fs::write(&socket, b"").map_err(io("create socket"))?;
    // Only where bpffs is mounted: plain sysfs refuses mkdir.
    let pin_dir = crate::bpffs_pin_dir(&ns);
    let pinned = std::fs::create_dir(&pin_dir).is_ok();
    // What an agent of this namespace killed with SIGKILL leaves under /run/edgeproxy (named
    // by the agent's own code), and a socket a test put under /run.
    let pins = edge_agent::dataplane::pins::PinDir::new(&pin_dir);
    let status = pins.agent_status_file();
    let drain = edge_agent::bgp::drain::marker(&pins);
    let run_file = Path::new("/run").join(format!("{ns}.bird.ctl"));
    if let Some(dir) = status.parent() {
        std::fs::create_dir_all(dir).map_err(io("create status dir"))?;
    }
    for file in [&status, &drain, &run_file] {
        std::fs::write(file, b"{}").map_err(io("create agent file"))?;
    }
    let mut orphan = Command::new("nsenter")
        .args([&format!("--net=/run/netns/{ns}"), "--", "sleep", "100"])
        .spawn()
        .map_err(io("spawn orphan"))?;
    let orphan_pid = orphan.id() as i32;
    // Its command line names the namespace from the start, so wait for the
    // namespace itself: nsenter may not have switched yet. Wait for the exec of
    // `sleep` too: during it the command line reads empty, and the scan below
    // must see what `clean` will see.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !find_leftovers(Some(run.as_str()))
        .processes
        .iter()
        .any(|p| p.pid == orphan_pid && p.netns.is_some() && p.cmdline.starts_with("sleep"))
    {
        assert!(Instant::now() < deadline, "orphan never entered {ns}");
        std::thread::sleep(Duration::from_millis(10));
    }

    let found = find_leftovers(Some(run.as_str()));
    assert_eq!(found.namespaces, std::slice::from_ref(&ns), "{found}");
    assert_eq!(found.interfaces, [wg], "{found}");
    assert_eq!(found.wg_sockets, std::slice::from_ref(&socket), "{found}");
    assert_eq!(found.bpffs_dirs.len(), usize::from(pinned), "{found}");
    assert_eq!(
        found.agent_files,
        [drain.clone(), status.clone()],
        "{found}"
    );
    assert_eq!(found.run_files, std::slice::from_ref(&run_file), "{found}");
    assert_eq!(
        found.processes[0].netns.as_deref(),
        Some(ns.as_str()),
        "{found}"
    );

    let removed = clean(Some(run.as_str()))?;
    assert_eq!(removed, found);
    let left = find_leftovers(Some(run.as_str()));
    assert!(left.is_empty(), "left behind:\n{left}");
    assert!(orphan.wait().map_err(io("reap orphan"))?.code().is_none());
    assert!(!socket.exists() && !pin_dir.exists());
    for file in [&status, &drain, &run_file] {
        assert!(!file.exists(), "clean left {}", file.display());
    }
    Ok(())
}
