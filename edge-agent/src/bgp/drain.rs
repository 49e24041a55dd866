//! `edge-agent drain` and `undrain`: a marker file beside the agent's status file, holding the
//! unix time the drain began. A file (not a signal) so that a drain outlives an agent restart,
//! and the CLI needs no connection to the agent. It lives under /run: a reboot undrains.

use std::{io, path::PathBuf};

use crate::bpffs::PinDir;

pub fn marker(pins: &PinDir) -> PathBuf {
    pins.agent_status_file().with_extension("drain")
}

/// Since when this POP has been draining, if it is.
pub fn since(pins: &PinDir) -> Option<i64> {
    let text = std::fs::read_to_string(marker(pins)).ok()?;
    // A marker that cannot be read still drains: the operator asked for it.
    Some(text.trim().parse().unwrap_or(0))
}

/// Starts a drain (keeping the start time of one already running).
pub fn start(pins: &PinDir) -> io::Result<i64> {
    if let Some(at) = since(pins) {
        return Ok(at);
    }
    let path = marker(pins);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let now = crate::model::unix_now();
    std::fs::write(&path, now.to_string())?;
    Ok(now)
}

/// Ends a drain; false when none was running.
pub fn stop(pins: &PinDir) -> io::Result<bool> {
    match std::fs::remove_file(marker(pins)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
