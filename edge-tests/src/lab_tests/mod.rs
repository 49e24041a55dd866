//! Tests that build real labs; they need root, like the harness itself.

mod cleanup;
mod pinning;
mod processes;
mod steering;
mod traffic;
mod wire_hash;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::{Lab, LabError, Result, Topology};

const CLIENT_V4: &str = "198.51.100.2";
const SERVER_V4: &str = "203.0.113.2";
const CLIENT_V6: &str = "2001:db8:1::2";
const SERVER_V6: &str = "2001:db8:2::2";

/// client -- router -- server, dual-stack, forwarding on the router.
fn three_hosts(label: &str) -> Result<Lab> {
    Topology::new(label)
        .ns("client")
        .ns("router")
        .ns("server")
        .sysctl("router", "net.ipv4.ip_forward", "1")
        .sysctl("router", "net.ipv6.conf.all.forwarding", "1")
        .veth(("client", "eth0"), ("router", "cl"))
        .veth(("router", "sv"), ("server", "eth0"))
        .tx_checksum_off("router", "sv")
        .addr("client", "eth0", &format!("{CLIENT_V4}/24"))
        .addr("client", "eth0", &format!("{CLIENT_V6}/64"))
        .addr("router", "cl", "198.51.100.1/24")
        .addr("router", "cl", "2001:db8:1::1/64")
        .addr("router", "sv", "203.0.113.1/24")
        .addr("router", "sv", "2001:db8:2::1/64")
        .addr("server", "eth0", &format!("{SERVER_V4}/24"))
        .addr("server", "eth0", &format!("{SERVER_V6}/64"))
        .route("client", "default", "198.51.100.1")
        .route("client", "default", "2001:db8:1::1")
        .route("server", "default", "203.0.113.1")
        .route("server", "default", "2001:db8:2::1")
        .up()
}

/// ICMP through `ping` where installed; minimal machines lack iputils.
fn ping(lab: &Lab, from: &str, to: &str) -> Result<()> {
    if !Path::new("/usr/bin/ping").exists() && !Path::new("/bin/ping").exists() {
        eprintln!("ping not installed: ICMP check to {to} skipped");
        return Ok(());
    }
    lab.ns(from).exec_ok(&["ping", "-c1", "-W1", to]).map(drop)
}

/// A TCP round trip from namespace `from` to `to` at `addr`, with sockets
/// opened in Rust inside the namespaces, so that it needs no tool. Returns
/// the client address the server saw.
fn tcp_echo(lab: &Lab, from: &str, to: &str, addr: &str) -> Result<IpAddr> {
    let io = |what: &'static str| move |e| LabError::io(what, e);
    let ip: IpAddr = addr.parse().map_err(|_| LabError::Invalid {
        what: "IP address",
        value: addr.to_owned(),
        why: "unparsable".to_owned(),
    })?;
    let listener = lab
        .ns(to)
        .run_in_thread(|| TcpListener::bind(SocketAddr::new(ip, 0)))?
        .map_err(io("bind"))?;
    let target = listener.local_addr().map_err(io("local_addr"))?;
    let server = std::thread::spawn(move || -> std::io::Result<IpAddr> {
        let (mut conn, peer) = listener.accept()?;
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf)?;
        conn.write_all(&buf)?;
        Ok(peer.ip())
    });
    let mut conn = lab
        .ns(from)
        .run_in_thread(|| TcpStream::connect_timeout(&target, Duration::from_secs(2)))?
        .map_err(io("connect"))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io("set timeout"))?;
    conn.write_all(b"hello").map_err(io("write"))?;
    let mut echoed = [0u8; 5];
    conn.read_exact(&mut echoed).map_err(io("read"))?;
    assert_eq!(&echoed, b"hello");
    server
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        .map_err(io("serve"))
}
