//! Network interface facts the agent needs: index, whether it carries Ethernet headers, driver.

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
    let req = ifreq_ioctl(iface, libc::SIOCGIFHWADDR, |_| {})?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    Some(unsafe { req.ifr_ifru.ifru_hwaddr.sa_family })
}

/// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// The interface's driver as `ethtool -i` names it ("veth", "mlx5_core", ...), asked of the
/// kernel in this namespace (`ETHTOOL_GDRVINFO`).
pub fn driver(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // SAFETY: an all-zero ethtool_drvinfo is valid.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let data = (&raw mut info).cast::<libc::c_char>();
    ifreq_ioctl(iface, SIOCETHTOOL, |req| req.ifr_ifru.ifru_data = data)?;
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    let name = String::from_utf8_lossy(&info.driver[..len]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// An interface ioctl on a throwaway socket: `fill` completes the request after the name.
fn ifreq_ioctl(
    iface: &str,
    request: libc::c_ulong,
    fill: impl FnOnce(&mut libc::ifreq),
) -> Option<libc::ifreq> {
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
    fill(&mut req);
    // SAFETY: plain socket creation; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name, and it (and any buffer `fill`
    // pointed it at) outlives the call.
    let rc = unsafe { libc::ioctl(fd, request, &mut req) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    (rc == 0).then_some(req)
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

    #[test]
    fn loopback_has_no_driver_to_name_and_unknown_names_none() {
        // lo answers ETHTOOL_GDRVINFO with an empty name or not at all; either way, not "veth".
        assert_ne!(driver("lo").as_deref(), Some("veth"));
        assert_eq!(driver("no-such-if-x"), None);
    }
}
