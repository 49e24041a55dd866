//! Network interface facts the agent needs: index and whether it carries Ethernet headers.

use std::ffi::CString;

/// The interface's index in this network namespace, if it exists.
pub fn ifindex(iface: &str) -> Option<u32> {
    let name = CString::new(iface).ok()?;
    // SAFETY: valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Bytes of link-layer header the interface's packets carry: 14 for Ethernet, 0 for devices
/// without one (WireGuard, TUN), read from `/sys/class/net/<iface>/type` (ARPHRD_*).
pub fn l2_header_len(iface: &str) -> u16 {
    const ARPHRD_ETHER: u32 = 1;
    let kind = std::fs::read_to_string(format!("/sys/class/net/{iface}/type"))
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok());
    match kind {
        Some(ARPHRD_ETHER) | None => 14,
        Some(_) => 0,
    }
}
