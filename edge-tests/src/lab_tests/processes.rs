//! Processes started in a lab: output capture, exit, and teardown.

use std::time::Duration;

use super::three_hosts;
use crate::{find_leftovers, LabError, Result, Topology};

#[test]
fn spawned_output_is_captured_and_everything_goes_with_the_lab() -> Result<()> {
    let lab = three_hosts("proc")?;
    let run = lab.run_id().to_string();
    let server = lab.ns("server");
    let talker = server.spawn(
        "talker",
        &["sh", "-c", "echo hello; echo oops >&2; sleep 100"],
        &[],
    )?;
    talker.wait_for_output("hello", Duration::from_secs(2))?;
    talker.wait_for_output("oops", Duration::from_secs(2))?;
    assert!(talker.is_running());
    assert!(server.pids().contains(&(talker.pid() as i32)));
    // Keep this one past the lab, so that the lab itself has to kill it.
    let sleeper = lab.ns("client").spawn("sleeper", &["sleep", "100"], &[])?;
    let log = talker.log_path().to_owned();
    drop(talker);
    let logged = std::fs::read_to_string(&log).map_err(|e| LabError::io("read log", e))?;
    assert!(
        logged.contains("hello\n") && logged.contains("oops\n"),
        "{logged}"
    );

    let found = find_leftovers(Some(&run));
    assert!(found.namespaces.len() == 3, "{found}");
    assert!(
        found
            .processes
            .iter()
            .any(|p| p.pid == sleeper.pid() as i32),
        "{found}"
    );
    drop(lab);

    let left = find_leftovers(Some(&run));
    assert!(left.is_empty(), "left behind:\n{left}");
    // The lab's SIGKILL, as the parent sees it: waited for rather than asked once, since a run
    // once asked a moment before waitid(2) reported the exit.
    let status = sleeper.wait_exit(Duration::from_secs(5))?;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "{status}"
    );
    // The process still holds the log directory; the last holder removes it.
    assert!(log.exists());
    drop(sleeper);
    assert!(!log.exists() || std::env::var_os(crate::KEEP_LOGS_ENV).is_some());
    Ok(())
}

#[test]
fn wait_for_output_reports_what_was_printed() -> Result<()> {
    let lab = Topology::new("wait").ns("solo").up()?;
    let quick = lab
        .ns("solo")
        .spawn("quick", &["sh", "-c", "echo partial; exit 3"], &[])?;
    match quick.wait_for_output("never printed", Duration::from_secs(5)) {
        Err(LabError::Timeout { output, .. }) => assert_eq!(output, "partial\n"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(quick.wait_exit(Duration::from_secs(2))?.code(), Some(3));
    assert!(matches!(
        quick.signal(libc::SIGTERM),
        Err(LabError::Exited { .. })
    ));
    Ok(())
}

#[test]
fn spawned_processes_see_the_hosts_mounts() -> Result<()> {
    let lab = Topology::new("mnt").ns("solo").up()?;
    // `ip netns exec` would show a fresh /sys of the namespace; nsenter keeps
    // the host's, where bpffs is mounted.
    let host_mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| LabError::io("mountinfo", e))?;
    let cat = lab
        .ns("solo")
        .spawn("mounts", &["cat", "/proc/self/mountinfo"], &[])?;
    cat.wait_exit(Duration::from_secs(2))?;
    let first_host_line = host_mounts.lines().next().unwrap_or_default();
    cat.wait_for_output(first_host_line, Duration::from_secs(2))?;
    Ok(())
}
