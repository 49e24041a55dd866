//! `edge-agent drain` and `undrain`: a marker file beside the agent's status file, holding the
//! unix time in milliseconds the drain began (whole seconds would let a drain noticed a tick
//! late look expired, and skip the graceful-shutdown announcement). A file (not a signal) so
//! that a drain outlives an agent restart, and the CLI needs no connection to the agent. It
//! lives under /run: a reboot undrains.

use std::{
    io,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::dataplane::pins::PinDir;

pub fn marker(pins: &PinDir) -> PathBuf {
    pins.agent_status_file().with_extension("drain")
}

fn since_ms(pins: &PinDir) -> Option<u64> {
    let text = std::fs::read_to_string(marker(pins)).ok()?;
    // A marker that cannot be read still drains: the operator asked for it.
    Some(text.trim().parse().unwrap_or(0))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Since when (unix seconds) this POP has been draining, if it is.
pub fn since(pins: &PinDir) -> Option<i64> {
    since_ms(pins).map(|ms| i64::try_from(ms / 1000).unwrap_or(i64::MAX))
}

/// How long this POP has been draining, if it is.
pub fn draining_for(pins: &PinDir) -> Option<Duration> {
    since_ms(pins).map(|ms| Duration::from_millis(now_ms().saturating_sub(ms)))
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
    let now = now_ms();
    std::fs::write(&path, now.to_string())?;
    Ok(i64::try_from(now / 1000).unwrap_or(i64::MAX))
}

/// Ends a drain; false when none was running.
pub fn stop(pins: &PinDir) -> io::Result<bool> {
    match std::fs::remove_file(marker(pins)) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
