//! 6PN over userspace WireGuard, built from the agent's `sixpn` library alone: two namespaces
//! joined by an IPv6 veth underlay each run wireguard-go with a generated key and their plan
//! addresses, reach each other over the overlay both ways, and leave nothing behind. Each also
//! keeps a v1 IPv4 overlay address on the same tunnel (dual stack during the transition).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    time::{Duration, SystemTime},
};

use edge_agent::{
    sixpn::wireguard::userspace::socket_path, sixpn::wireguard::userspace::DEFAULT_MTU,
    sixpn::Deployment, sixpn::DeviceConfig, sixpn::IpLink, sixpn::PeerConfig, sixpn::PrivateKey,
    sixpn::RegionNumbers, sixpn::UserspaceError, sixpn::WireguardGo,
};
use edge_tests::{Lab, Topology};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::common::{tear_down, TestResult};

const PORT: u16 = 51820;

struct Host {
    label: &'static str,
    region: &'static str,
    host: u32,
    underlay: Ipv6Addr,
    /// The host's address on v1's IPv4 overlay.
    v1: Ipv4Addr,
}

const HOSTS: [Host; 2] = [
    Host {
        label: "a",
        region: "sa",
        host: 1,
        underlay: Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1),
        v1: Ipv4Addr::new(10, 50, 1, 1),
    },
    Host {
        label: "b",
        region: "eu",
        host: 2,
        underlay: Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2),
        v1: Ipv4Addr::new(10, 50, 3, 2),
    },
];

fn region(host: &Host) -> u8 {
    RegionNumbers::default()
        .get(host.region)
        .unwrap_or_else(|| panic!("{} is a well-known region", host.region))
}

/// A peer's allowed IPs: its 6PN /96 and, while the transition lasts, its v1 address.
fn allowed_ips(deployment: &Deployment, host: &Host) -> Vec<IpNet> {
    vec![
        IpNet::V6(deployment.host_prefix(region(host), host.host)),
        IpNet::V4(Ipv4Net::from(host.v1)),
    ]
}

/// Starts wireguard-go in the host's namespace with its own key, its plan address and the other
/// host as its one peer.
fn join(
    lab: &Lab,
    deployment: &Deployment,
    n: u16,
    me: &Host,
    key: &PrivateKey,
    peer: (&Host, &PrivateKey),
) -> Result<WireguardGo, Box<dyn std::error::Error>> {
    let netns: &Path = lab.ns(me.label).path();
    let wg = WireguardGo::start(&lab.wg_ifname(n), Some(netns))?;
    let (other, other_key) = peer;
    let mut peer = PeerConfig::new(
        other_key.public_key(),
        Some(SocketAddr::new(IpAddr::V6(other.underlay), PORT)),
        allowed_ips(deployment, other),
    );
    peer.persistent_keepalive = Some(25);
    wg.uapi().set(&DeviceConfig {
        private_key: Some(key.clone()),
        listen_port: Some(PORT),
        replace_peers: true,
        peers: vec![peer],
    })?;
    // The whole deployment on-link: WireGuard's allowed IPs pick the peer.
    let addr = Ipv6Net::new(deployment.host_addr(region(me), me.host), 48)?;
    let link = IpLink::new(Some(netns));
    link.add_addr(wg.ifname(), IpNet::V6(addr))?;
    link.add_addr(wg.ifname(), IpNet::V4(Ipv4Net::new(me.v1, 16)?))?;
    link.up(wg.ifname(), DEFAULT_MTU)?;
    Ok(wg)
}

#[test]
fn two_hosts_reach_each_other_over_userspace_wireguard() -> TestResult {
    let lab = Topology::new("wg")
        .ns("a")
        .ns("b")
        .veth(("a", "ul0"), ("b", "ul0"))
        .addr("a", "ul0", "fd00:50::1/64")
        .addr("b", "ul0", "fd00:50::2/64")
        .up()?;
    let deployment = Deployment::generate()?;

    // Keys as the agent keeps them: generated on first start into a 0600 file, then loaded.
    let mut keys = Vec::new();
    for host in &HOSTS {
        let path = lab.log_dir().join(format!("{}.key", host.label));
        let (generated, fresh) = PrivateKey::load_or_generate(&path)?;
        let (loaded, fresh_again) = PrivateKey::load_or_generate(&path)?;
        assert!(fresh && !fresh_again, "the key is generated once");
        assert_eq!(loaded.public_key(), generated.public_key());
        keys.push(loaded);
    }

    let started = SystemTime::now();
    let mut wgs = Vec::new();
    for (i, host) in HOSTS.iter().enumerate() {
        let other = 1 - i;
        let n = u16::try_from(i)?;
        wgs.push(join(
            &lab,
            &deployment,
            n,
            host,
            &keys[i],
            (&HOSTS[other], &keys[other]),
        )?);
    }

    for (i, host) in HOSTS.iter().enumerate() {
        let other = &HOSTS[1 - i];
        let v6 = deployment.host_addr(region(other), other.host).to_string();
        for (family, target) in [("-6", v6), ("-4", other.v1.to_string())] {
            // The first echo waits for the handshake.
            let out = lab
                .ns(host.label)
                .exec(&["ping", family, "-c", "3", "-i", "0.2", "-W", "5", &target])?;
            assert!(
                out.success(),
                "{} could not ping {} ({target}) over the overlay:\n{}{}",
                host.label,
                other.label,
                out.stdout,
                out.stderr
            );
        }
    }

    for (i, wg) in wgs.iter().enumerate() {
        let other = &HOSTS[1 - i];
        let state = wg.uapi().get()?;
        assert_eq!(state.public_key, Some(keys[i].public_key()));
        assert_eq!(state.listen_port, Some(PORT));
        assert_eq!(state.peers.len(), 1, "{:?}", state.peers);
        let peer = state
            .peer(&keys[1 - i].public_key())
            .ok_or("the configured peer is missing from get=1")?;
        assert_eq!(
            peer.endpoint,
            Some(SocketAddr::new(IpAddr::V6(other.underlay), PORT))
        );
        assert_eq!(peer.allowed_ips, allowed_ips(&deployment, other));
        let handshake = peer.last_handshake.ok_or("no handshake reported")?;
        assert!(
            handshake + Duration::from_secs(1) >= started,
            "handshake at {handshake:?} predates the test"
        );
        // Twelve echo requests or replies of 64 bytes or more each way, plus the handshake.
        assert!(
            peer.rx_bytes >= 12 * 64 && peer.tx_bytes >= 12 * 64,
            "{} rx {} tx {} bytes",
            HOSTS[i].label,
            peer.rx_bytes,
            peer.tx_bytes
        );
    }

    for (i, wg) in wgs.into_iter().enumerate() {
        let ifname = wg.ifname().to_owned();
        wg.stop()?;
        assert!(
            !socket_path(&ifname).exists(),
            "{} still exists after stop",
            socket_path(&ifname).display()
        );
        let link = lab
            .ns(HOSTS[i].label)
            .exec(&["ip", "link", "show", "dev", &ifname])?;
        assert!(!link.success(), "{ifname} outlived its wireguard-go");
    }
    tear_down(lab);
    Ok(())
}

/// A name in use is refused rather than hijacked, and the socket a killed wireguard-go leaves
/// behind does not stop the next start.
#[test]
fn a_live_socket_is_refused_and_a_stale_one_replaced() -> TestResult {
    let lab = Topology::new("wgname").ns("a").up()?;
    let netns = lab.ns("a").path();
    let ifname = lab.wg_ifname(0);

    let first = WireguardGo::start(&ifname, Some(netns))?;
    match WireguardGo::start(&ifname, Some(netns)) {
        Err(UserspaceError::InUse { .. }) => {}
        other => panic!("a second wireguard-go on {ifname}: expected InUse, got {other:?}"),
    }
    assert!(
        first.uapi().get().is_ok(),
        "the first one stopped answering"
    );

    // SIGKILL gives wireguard-go no chance to unlink its socket.
    let pid = libc::pid_t::try_from(first.pid())?;
    // SAFETY: kill(2) on a live child of this process, which `first` has not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while lab.ns("a").pids().contains(&pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        socket_path(&ifname).exists(),
        "the killed one left no socket to test with"
    );
    drop(first);
    assert!(
        !socket_path(&ifname).exists(),
        "drop left the dead one's socket"
    );

    // Recreate a stale socket by hand: a file nobody listens on.
    let stale = std::os::unix::net::UnixListener::bind(socket_path(&ifname))?;
    drop(stale);
    let second = WireguardGo::start(&ifname, Some(netns))?;
    assert!(second.uapi().get().is_ok());
    second.stop()?;

    tear_down(lab);
    Ok(())
}
