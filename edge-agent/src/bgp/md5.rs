//! TCP-MD5 signatures (RFC 2385) on a BGP socket: the kernel signs and checks every segment
//! to and from one peer address once its key is set (`TCP_MD5SIG`). Set on the connecting
//! socket before `connect`, and on the listening socket for each passive peer.

use std::{io, net::IpAddr, os::fd::AsRawFd};

/// `TCP_MD5SIG_MAXKEYLEN` in the kernel's uapi.
pub const MAX_KEY_LEN: usize = 80;

/// `struct tcp_md5sig` of linux/tcp.h; the libc crate does not carry it.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; MAX_KEY_LEN],
}

/// Sets `key` for segments with `peer`; an IPv4 peer on an IPv6 socket is given as mapped.
pub fn set_key(socket: &impl AsRawFd, peer: IpAddr, v6_socket: bool, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TCP-MD5 key longer than 80 bytes",
        ));
    }
    // SAFETY: an all-zero sockaddr_storage and struct are valid values.
    let mut sig: TcpMd5Sig = unsafe { std::mem::zeroed() };
    let peer = match (peer, v6_socket) {
        (IpAddr::V4(v4), true) => IpAddr::V6(v4.to_ipv6_mapped()),
        (p, _) => p,
    };
    match peer {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            let sin = unsafe { &mut *std::ptr::addr_of_mut!(sig.addr).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
        }
        IpAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            let sin6 =
                unsafe { &mut *std::ptr::addr_of_mut!(sig.addr).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = v6.octets();
        }
    }
    sig.keylen = key.len() as u16;
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: the pointer and length describe `sig`, which outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            std::ptr::addr_of!(sig).cast(),
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
