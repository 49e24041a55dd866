//! BFD's UDP sockets (RFC 5881): one receiving socket per family on port 3784 that reports each
//! datagram's TTL or hop limit (IP_RECVTTL / IPV6_RECVHOPLIMIT control messages), and a sending
//! socket per session from a port in 49152-65535 with TTL / hop limit 255 (the GTSM check of
//! §5: only a neighbour one hop away can send a packet that still has 255).

use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{io::Interest, net::UdpSocket};

/// RFC 5881 §4: the destination port of single-hop Control packets.
pub const PORT: u16 = 3784;
/// RFC 5881 §4: the source port range.
pub const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// RFC 5881 §5: sent with, and required on receipt.
pub const TTL: u8 = 255;

/// The socket that receives every session's packets of one family.
pub fn receiver(v6: bool) -> io::Result<UdpSocket> {
    let (domain, addr) = if v6 {
        (
            Domain::IPV6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)),
        )
    } else {
        (
            Domain::IPV4,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
        )
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v6 {
        // IPv4 peers have their own socket: both bound to the port need v6-only here.
        socket.set_only_v6(true)?;
        socket.set_recv_hoplimit_v6(true)?;
    } else {
        set_int(&socket, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
    }
    // Every session's packets (and any flood) meet here: room for bursts, and the kernel's
    // count of what overflowed anyway (SO_RXQ_OVFL), so that no drop goes uncounted.
    socket.set_recv_buffer_size(1 << 20)?;
    set_int(&socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    UdpSocket::from_std(socket.into())
}

/// A session's sending socket, from `local` (or the address the route picks) and a port of
/// [`SOURCE_PORTS`] that is free.
pub fn sender(peer: IpAddr, local: Option<IpAddr>) -> io::Result<UdpSocket> {
    let v6 = peer.is_ipv6();
    let socket = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if v6 {
        socket.set_unicast_hops_v6(u32::from(TTL))?;
    } else {
        socket.set_ttl_v4(u32::from(TTL))?;
    }
    socket.set_nonblocking(true)?;
    let ip = local.unwrap_or(if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    });
    let span = u32::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let first = fastrand::u32(..span);
    let mut last = io::Error::from(io::ErrorKind::AddrInUse);
    // From a random port onwards: sessions of several agents on one host do not collide.
    for i in 0..span {
        let port = SOURCE_PORTS.start() + ((first + i) % span) as u16;
        match socket.bind(&SockAddr::from(SocketAddr::new(ip, port))) {
            Ok(()) => return UdpSocket::from_std(socket.into()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

fn set_int(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt(2) on a descriptor `socket` owns, reading one c_int.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One datagram: its length in `buf`, where it came from, and its TTL or hop limit when the
/// kernel said (it always does once the socket asked, but a missing one is not trusted).
pub struct Datagram {
    pub len: usize,
    pub from: IpAddr,
    pub ttl: Option<u8>,
    /// Datagrams the socket's buffer dropped so far (a running count), when asked for.
    pub overflowed: Option<u32>,
}

/// Receives the next datagram into `buf` (a longer one is cut to `buf`'s length).
pub async fn recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Datagram> {
    socket
        .async_io(Interest::READABLE, || recvmsg(socket.as_raw_fd(), buf))
        .await
}

fn recvmsg(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<Datagram> {
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut control = [0u64; 16];
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut from: libc::sockaddr_storage = unsafe { zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = std::ptr::from_mut(&mut from).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>();
    // SAFETY: every pointer in `msg` points at a live buffer of the length given beside it.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (n as usize).min(buf.len());
    let from = match libc::c_int::from(from.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for an AF_INET socket.
            let sin: libc::sockaddr_in = unsafe { *std::ptr::from_ref(&from).cast() };
            IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for an AF_INET6 socket.
            let sin6: libc::sockaddr_in6 = unsafe { *std::ptr::from_ref(&from).cast() };
            IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "no source address",
            ))
        }
    };
    let mut ttl = None;
    let mut overflowed = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, bounded by
    // msg_controllen; each data read is of the c_int the option is documented to carry.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let (level, ty) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
            if (level == libc::IPPROTO_IP && ty == libc::IP_TTL)
                || (level == libc::IPPROTO_IPV6 && ty == libc::IPV6_HOPLIMIT)
            {
                let value: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                ttl = u8::try_from(value).ok();
            } else if level == libc::SOL_SOCKET && ty == libc::SO_RXQ_OVFL {
                overflowed = Some(std::ptr::read_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<u32>(),
                ));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Datagram {
        len,
        from,
        ttl,
        overflowed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_receiver_sees_the_ttl_it_was_sent_with() -> Result<(), Box<dyn std::error::Error>>
    {
        // Any port on loopback: the test may run beside a real BFD speaker.
        for v6 in [false, true] {
            let (domain, lo): (Domain, IpAddr) = if v6 {
                (Domain::IPV6, Ipv6Addr::LOCALHOST.into())
            } else {
                (Domain::IPV4, Ipv4Addr::LOCALHOST.into())
            };
            let rx = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            if v6 {
                rx.set_recv_hoplimit_v6(true)?;
            } else {
                set_int(&rx, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?;
            }
            rx.set_nonblocking(true)?;
            rx.bind(&SockAddr::from(SocketAddr::new(lo, 0)))?;
            let rx = UdpSocket::from_std(rx.into())?;
            let to = rx.local_addr()?;
            for ttl in [255u8, 254, 1] {
                let tx = std::net::UdpSocket::bind(SocketAddr::new(lo, 0))?;
                let tx = Socket::from(tx);
                if v6 {
                    tx.set_unicast_hops_v6(u32::from(ttl))?;
                } else {
                    tx.set_ttl_v4(u32::from(ttl))?;
                }
                tx.send_to(b"hello", &SockAddr::from(to))?;
                let mut buf = [0u8; 64];
                let d = recv(&rx, &mut buf).await?;
                assert_eq!((d.len, d.from, d.ttl), (5, lo, Some(ttl)), "v6 {v6}");
            }
            let s = sender(lo, Some(lo))?;
            let port = s.local_addr()?.port();
            assert!(SOURCE_PORTS.contains(&port), "source port {port}");
            s.send_to(b"x", to).await?;
            let mut buf = [0u8; 64];
            assert_eq!(recv(&rx, &mut buf).await?.ttl, Some(TTL), "v6 {v6}");
        }
        Ok(())
    }
}
