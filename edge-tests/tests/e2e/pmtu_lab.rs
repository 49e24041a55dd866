//! Path MTU discovery through the translation (issue 22): a path narrower than the segments the
//! MSS allows, on the client side and inside the overlay. A 1 MiB transfer through each VIP
//! first stalls while the narrow link's router sends no errors (nftables drops them there; the
//! data plane before issue 22 dropped them at the POP, with the same effect on both ends),
//! then completes once the router's Packet Too Big / Fragmentation Needed is let through and
//! translated: seen at the far end as the route MTU its kernel learned.
//!
//! ```text
//! client --eth0/c-- router --p/eth0-- pop --ovl0/up-- hub --n/up-- mid --b/eth0-- be1
//!  1500   1400 (IPv6 1280)       VIPs on lo            1280 (inside)
//! ```
//! Client side: the router's `c` is 1400 bytes (IPv6 1280), the client's own link 1500, so its
//! SYN announces an MSS the path cannot carry; the POP's `overlay.mtu` is 1500 (MSS clamp
//! 1440), so the backend's segments are 1500-byte IPv6 packets (1480 after NAT64). Inside: the
//! hub-mid link is 1280, narrower than the `overlay.mtu` of 1500 the POP clamps to.

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use edge_agent::sixpn::{DeviceConfig, IpLink, PeerConfig, PrivateKey, WireguardGo};
use edge_tests::{
    agent_config::{Health, Service},
    bpffs_pin_dir,
    pop_lab::start_agent,
    AgentConfig, Lab, Topology,
};
use ipnet::{IpNet, Ipv6Net};

use super::common::{agent_bin, agent_json, tear_down, TestResult};

const VIP4: &str = "198.18.0.10";
const VIP6: &str = "2001:db8:ff::10";
const OVERLAY: &str = "fd00:ee::1";
const BACKEND: &str = "fd00:ee:1:1::2";
const MIB: &str = "1048576";

fn topology(label: &str) -> Topology {
    Topology::new(label)
        .ns("client")
        .ns("router")
        .ns("pop")
        .ns("hub")
        .ns("mid")
        .ns("be1")
        .veth(("client", "eth0"), ("router", "c"))
        .veth(("router", "p"), ("pop", "eth0"))
        .veth(("pop", "ovl0"), ("hub", "up"))
        .veth(("hub", "n"), ("mid", "up"))
        .veth(("mid", "b"), ("be1", "eth0"))
        // What a wire delivers: full checksums into the data plane (see TOOLCHAIN.md).
        .tx_checksum_off("client", "eth0")
        .tx_checksum_off("router", "p")
        .sysctl("router", "net.ipv4.ip_forward", "1")
        .sysctl("router", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("pop", "net.ipv4.ip_forward", "1")
        .sysctl("pop", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("hub", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("mid", "net.ipv6.conf.all.forwarding", "1")
        .addr("client", "eth0", "10.0.1.2/24")
        .addr("client", "eth0", "2001:db8:1::2/64")
        .addr("router", "c", "10.0.1.1/24")
        .addr("router", "c", "2001:db8:1::1/64")
        .addr("router", "p", "10.0.2.1/24")
        .addr("router", "p", "2001:db8:2::1/64")
        .addr("pop", "eth0", "10.0.2.2/24")
        .addr("pop", "eth0", "2001:db8:2::2/64")
        .addr("pop", "lo", &format!("{VIP4}/32"))
        .addr("pop", "lo", &format!("{VIP6}/128"))
        .addr("pop", "ovl0", &format!("{OVERLAY}/64"))
        .addr("hub", "up", "fd00:ee::fe/64")
        .addr("hub", "n", "fd00:ee:9::1/64")
        .addr("mid", "up", "fd00:ee:9::2/64")
        .addr("mid", "b", "fd00:ee:1:1::1/64")
        .addr("be1", "eth0", &format!("{BACKEND}/64"))
        .route("client", "default", "10.0.1.1")
        .route("client", "default", "2001:db8:1::1")
        .route("router", &format!("{VIP4}/32"), "10.0.2.2")
        .route("router", &format!("{VIP6}/128"), "2001:db8:2::2")
        .route("pop", "default", "10.0.2.1")
        .route("pop", "default", "2001:db8:2::1")
        .route("pop", "fd00:ee:1::/48", "fd00:ee::fe")
        .route("hub", "fd00:ee:1::/48", "fd00:ee:9::2")
        .route("mid", "default", "fd00:ee:9::1")
        .route("be1", "default", "fd00:ee:1:1::1")
}

/// One backend serving `bulk` on the echo port of both VIPs; an overlay MTU of 1500.
fn config() -> edge_tests::Result<String> {
    config_on("ovl0", 1500)
}

/// The same with the overlay on `iface`, of `mtu` bytes.
fn config_on(iface: &str, mtu: u16) -> edge_tests::Result<String> {
    let bulk = |name: &str, vip: &str| Service::new(name, vip, 7).backend("be1", BACKEND, 7007);
    AgentConfig::pop()
        .overlay(iface, OVERLAY)
        .overlay_mtu(mtu)
        .health(Health::off())
        .service(bulk("bulk4", VIP4))
        .service(bulk("bulk6", VIP6))
        .to_toml()
}

/// Drops the ICMP errors `ns` itself sends (a router that does not report), or lets them go.
fn block_errors(lab: &Lab, ns: &str, block: bool) -> TestResult {
    let ns = lab.ns(ns);
    if !block {
        ns.exec_ok(&["nft", "delete", "table", "inet", "mute"])?;
        return Ok(());
    }
    ns.exec_ok(&["nft", "add", "table", "inet", "mute"])?;
    ns.exec_ok(&[
        "nft",
        "add chain inet mute out { type filter hook output priority 0; }",
    ])?;
    ns.exec_ok(&[
        "nft",
        "add rule inet mute out icmp type destination-unreachable drop",
    ])?;
    ns.exec_ok(&[
        "nft",
        "add rule inet mute out icmpv6 type packet-too-big drop",
    ])?;
    Ok(())
}

/// `bulk get|put` of 1 MiB from the client to `target` within `timeout_ms`: (bytes, complete).
fn transfer(lab: &Lab, mode: &str, target: &str, timeout_ms: u32) -> Result<(u64, bool), String> {
    let out = lab
        .ns("client")
        .exec_ok(&[
            env!("CARGO_BIN_EXE_bulk"),
            mode,
            target,
            MIB,
            &timeout_ms.to_string(),
        ])
        .map_err(|e| format!("bulk {mode} {target}: {e}"))?;
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .map_err(|e| format!("bulk {mode} {target}: {e}: {}", out.stdout))?;
    // The figures of the run, for the record.
    eprintln!("bulk {mode} {target}: {doc}");
    Ok((
        doc["bytes"].as_u64().unwrap_or(0),
        doc["complete"].as_bool().unwrap_or(false),
    ))
}

/// Both VIPs' transfers at once (the stalls take their whole timeout: in parallel, once).
fn both(lab: &Lab, mode: &str, timeout_ms: u32) -> Result<[(u64, bool); 2], String> {
    let targets = [format!("{VIP4}:7"), format!("[{VIP6}]:7")];
    std::thread::scope(|s| {
        let runs = targets
            .each_ref()
            .map(|t| s.spawn(move || transfer(lab, mode, t, timeout_ms)));
        let [a, b] = runs.map(|h| h.join().map_err(|_| "transfer thread panicked".to_owned()));
        Ok([a??, b??])
    })
}

/// The route MTU `ns`'s kernel holds towards `dst` (a learned path MTU shows as `mtu N`).
/// A 1 MiB transfer (`mode`) through `target` completes, and namespace `ns` then has path MTU
/// `mtu` towards `dst`: what the translated error taught it.
fn arrives_and_teaches(
    lab: &Lab,
    mode: &str,
    target: &str,
    (ns, dst, mtu): (&str, &str, u32),
    what: &str,
) -> TestResult {
    let (bytes, complete) = transfer(lab, mode, target, 10_000)?;
    assert!(complete, "{target}: {bytes} of 1 MiB arrived");
    assert_eq!(route_mtu(lab, ns, dst)?, Some(mtu), "{what}");
    Ok(())
}

fn route_mtu(lab: &Lab, ns: &str, dst: &str) -> Result<Option<u32>, Box<dyn std::error::Error>> {
    let out = lab.ns(ns).exec_ok(&["ip", "route", "get", dst])?;
    let mut words = out.stdout.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            return Ok(words.next().and_then(|m| m.parse().ok()));
        }
    }
    Ok(None)
}

fn drops(lab: &Lab) -> Result<serde_json::Value, String> {
    let doc = agent_json(&bpffs_pin_dir(lab.ns("pop").name()), &["status"])?;
    Ok(doc["drops"].clone())
}

fn client_side(name: &str, hook: &str) -> TestResult {
    let lab = topology(name).up()?;
    // The router's link towards the client: 1400 bytes, IPv6 1280; the client's own stays 1500.
    lab.ns("router")
        .ip(&["link", "set", "dev", "c", "mtu", "1400"])?;
    lab.ns("router").sysctl("net.ipv6.conf.c.mtu", "1280")?;
    let server = lab.ns("be1").spawn(
        "bulk",
        &[env!("CARGO_BIN_EXE_bulk"), "serve", "[::]:7007"],
        &[],
    )?;
    server.wait_for_output("bulk ready", Duration::from_secs(10))?;
    let agent = start_agent(
        &lab,
        &agent_bin(),
        &config()?,
        &["--reset", "--forward-hook", hook],
    )?;

    block_errors(&lab, "router", true)?;
    let stalled = both(&lab, "get", 1500)?;
    assert!(
        stalled.iter().all(|&(_, complete)| !complete),
        "without the router's errors the 1 MiB responses must stall (IPv4, IPv6): {stalled:?}"
    );
    assert_eq!(
        route_mtu(&lab, "be1", OVERLAY)?,
        None,
        "the backend learned nothing"
    );
    block_errors(&lab, "router", false)?;

    arrives_and_teaches(
        &lab,
        "get",
        &format!("{VIP4}:7"),
        ("be1", OVERLAY, 1420),
        "the backend learned the IPv4 path's 1400 bytes plus NAT64's 20",
    )?;
    arrives_and_teaches(
        &lab,
        "get",
        &format!("[{VIP6}]:7"),
        ("be1", OVERLAY, 1280),
        "and the IPv6 path's 1280",
    )?;
    let drops = drops(&lab)?;
    eprintln!("{hook}: stalled without errors {stalled:?}; drops {drops}");
    assert!(
        drops["icmp_to_backend"].as_u64().unwrap_or(0) >= 2,
        "{drops}"
    );
    drop(agent);
    tear_down(lab);
    Ok(())
}

#[test]
fn client_side_path_mtu_reaches_the_backend_translated() -> TestResult {
    client_side("pmtu", "tc")
}

#[test]
fn client_side_path_mtu_reaches_the_backend_through_the_xdp_hook() -> TestResult {
    client_side("pmtux", "xdp")
}

#[test]
fn overlay_path_mtu_reaches_the_client_translated() -> TestResult {
    let lab = topology("pmtuo").up()?;
    // A link inside the overlay narrower than the 1500 bytes the POP's MSS clamp assumes.
    lab.ns("hub")
        .ip(&["link", "set", "dev", "n", "mtu", "1280"])?;
    lab.ns("mid")
        .ip(&["link", "set", "dev", "up", "mtu", "1280"])?;
    let server = lab.ns("be1").spawn(
        "bulk",
        &[env!("CARGO_BIN_EXE_bulk"), "serve", "[::]:7007"],
        &[],
    )?;
    server.wait_for_output("bulk ready", Duration::from_secs(10))?;
    let agent = start_agent(&lab, &agent_bin(), &config()?, &["--reset"])?;

    block_errors(&lab, "hub", true)?;
    let stalled = both(&lab, "put", 1500)?;
    assert!(
        stalled.iter().all(|&(_, complete)| !complete),
        "without the hub's errors the 1 MiB uploads must stall (IPv4, IPv6): {stalled:?}"
    );
    block_errors(&lab, "hub", false)?;

    arrives_and_teaches(
        &lab,
        "put",
        &format!("{VIP4}:7"),
        ("client", VIP4, 1260),
        "the IPv4 client learned the overlay's 1280 less NAT46's 20",
    )?;
    arrives_and_teaches(
        &lab,
        "put",
        &format!("[{VIP6}]:7"),
        ("client", VIP6, 1280),
        "the IPv6 client, 1280",
    )?;
    let drops = drops(&lab)?;
    eprintln!("overlay: stalled without errors {stalled:?}; drops {drops}");
    assert!(
        drops["icmp_to_client"].as_u64().unwrap_or(0) >= 2,
        "{drops}"
    );
    drop(agent);
    tear_down(lab);
    Ok(())
}

/// The overlay over WireGuard (an L3 device: no link header on the reply program's side): the
/// POP and the hub are WireGuard peers over a veth underlay, the hub-mid link (1280) narrower
/// than the tunnel's 1420 the POP clamps to. The hub's Packet Too Big comes back through the
/// tunnel and reaches both clients translated.
#[test]
fn overlay_path_mtu_reaches_the_client_through_wireguard() -> TestResult {
    let lab = Topology::new("pmtuw")
        .ns("client")
        .ns("pop")
        .ns("hub")
        .ns("mid")
        .ns("be1")
        .veth(("client", "eth0"), ("pop", "eth0"))
        .veth(("pop", "ul0"), ("hub", "ul0"))
        .veth(("hub", "n"), ("mid", "up"))
        .veth(("mid", "b"), ("be1", "eth0"))
        .tx_checksum_off("client", "eth0")
        .sysctl("pop", "net.ipv4.ip_forward", "1")
        .sysctl("pop", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("hub", "net.ipv6.conf.all.forwarding", "1")
        .sysctl("mid", "net.ipv6.conf.all.forwarding", "1")
        .addr("client", "eth0", "10.0.1.2/24")
        .addr("client", "eth0", "2001:db8:1::2/64")
        .addr("pop", "eth0", "10.0.1.1/24")
        .addr("pop", "eth0", "2001:db8:1::1/64")
        .addr("pop", "lo", &format!("{VIP4}/32"))
        .addr("pop", "lo", &format!("{VIP6}/128"))
        .addr("pop", "ul0", "fd00:50::1/64")
        .addr("hub", "ul0", "fd00:50::2/64")
        .addr("hub", "n", "fd00:ee:9::1/64")
        .addr("mid", "up", "fd00:ee:9::2/64")
        .addr("mid", "b", "fd00:ee:1:1::1/64")
        .addr("be1", "eth0", &format!("{BACKEND}/64"))
        .route("client", "default", "10.0.1.1")
        .route("client", "default", "2001:db8:1::1")
        .route("hub", "fd00:ee:1::/48", "fd00:ee:9::2")
        .route("mid", "default", "fd00:ee:9::1")
        .route("be1", "default", "fd00:ee:1:1::1")
        .up()?;
    lab.ns("hub")
        .ip(&["link", "set", "dev", "n", "mtu", "1280"])?;
    lab.ns("mid")
        .ip(&["link", "set", "dev", "up", "mtu", "1280"])?;
    let (pop_key, hub_key) = (PrivateKey::generate(), PrivateKey::generate());
    let underlay = |last: u16| {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, last)),
            51820,
        )
    };
    let any: IpNet = "::/0".parse()?;
    let tunnel = |ns: &str,
                  n: u16,
                  key: &PrivateKey,
                  peer: &PrivateKey,
                  to: SocketAddr,
                  addr: &str|
     -> Result<WireguardGo, Box<dyn std::error::Error>> {
        let netns = lab.ns(ns).path();
        let wg = WireguardGo::start(&lab.wg_ifname(n), Some(netns))?;
        wg.uapi().set(&DeviceConfig {
            private_key: Some(key.clone()),
            listen_port: Some(51820),
            replace_peers: true,
            peers: vec![PeerConfig::new(peer.public_key(), Some(to), vec![any])],
        })?;
        let link = IpLink::new(Some(netns));
        link.add_addr(wg.ifname(), IpNet::V6(addr.parse::<Ipv6Net>()?))?;
        link.up(wg.ifname(), 1420)?;
        Ok(wg)
    };
    let pop_wg = tunnel(
        "pop",
        1,
        &pop_key,
        &hub_key,
        underlay(2),
        &format!("{OVERLAY}/64"),
    )?;
    let hub_wg = tunnel("hub", 2, &hub_key, &pop_key, underlay(1), "fd00:ee::fe/64")?;
    lab.ns("pop").ip(&[
        "-6",
        "route",
        "add",
        "fd00:ee:1::/48",
        "dev",
        pop_wg.ifname(),
    ])?;
    let server = lab.ns("be1").spawn(
        "bulk",
        &[env!("CARGO_BIN_EXE_bulk"), "serve", "[::]:7007"],
        &[],
    )?;
    server.wait_for_output("bulk ready", Duration::from_secs(10))?;
    let agent = start_agent(
        &lab,
        &agent_bin(),
        &config_on(pop_wg.ifname(), 1420)?,
        &["--reset"],
    )?;

    arrives_and_teaches(
        &lab,
        "put",
        &format!("{VIP4}:7"),
        ("client", VIP4, 1260),
        "the IPv4 client learned 1280 - 20",
    )?;
    arrives_and_teaches(
        &lab,
        "put",
        &format!("[{VIP6}]:7"),
        ("client", VIP6, 1280),
        "the IPv6 client, 1280",
    )?;
    let drops = drops(&lab)?;
    eprintln!("wireguard: drops {drops}");
    assert!(
        drops["icmp_to_client"].as_u64().unwrap_or(0) >= 2,
        "{drops}"
    );
    drop(agent);
    drop((pop_wg, hub_wg));
    tear_down(lab);
    Ok(())
}
