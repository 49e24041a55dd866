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
/// without one (WireGuard, TUN). Asked of the kernel (`SIOCGIFHWADDR` gives the ARPHRD_* type)
/// in the agent's own network namespace: `/sys/class/net` shows the namespace sysfs was mounted
/// in, which for a process that only entered a namespace is another one's.
pub fn l2_header_len(iface: &str) -> u16 {
    const ARPHRD_ETHER: u16 = 1;
    match link_type(iface) {
        Some(ARPHRD_ETHER) | None => 14,
        Some(_) => 0,
    }
}

/// The interface's ARPHRD_* type.
fn link_type(iface: &str) -> Option<u16> {
    let name = CString::new(iface).ok()?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name, and outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    Some(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_not_ethernet_and_unknown_names_default_to_ethernet() {
        // lo is ARPHRD_LOOPBACK (772): no Ethernet header the programs should skip.
        assert_eq!(link_type("lo"), Some(772));
        assert_eq!(l2_header_len("lo"), 0);
        assert_eq!(l2_header_len("no-such-if-x"), 14);
    }
}
