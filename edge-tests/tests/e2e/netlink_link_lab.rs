//! Link setup over rtnetlink (`NetlinkLink`) in a lab namespace: MTU, up, addresses and routes
//! land on the right interface, twice over without error, only in the namespace the socket was
//! opened in; and the WireGuard implementation check leaves nothing behind there.

use edge_agent::{
    netlink::link::LinkError, netlink::link::NetlinkLink, sixpn::wireguard::choice::Implementation,
    sixpn::wireguard::kernel::KernelError, sixpn::wireguard::kernel::KernelWg,
    sixpn::wireguard::userspace::DEFAULT_MTU,
};
use edge_tests::Topology;
use ipnet::IpNet;

use super::common::{tear_down, TestResult};

const IF: &str = "nl0";

#[test]
fn netlink_link_sets_mtu_addresses_and_routes_in_its_namespace() -> TestResult {
    let lab = Topology::new("nl")
        .ns("a")
        .ns("b")
        .veth(("a", IF), ("b", IF))
        .up()?;
    let a = lab.ns("a");
    let host6: IpNet = "fd5e:a1c0:7b3d:100:0:1:0:1/48".parse()?;
    let host4: IpNet = "10.50.1.1/16".parse()?;
    let route6: IpNet = "fd5e:a1c0:7b4d::/48".parse()?;
    // Host bits set: the route goes to the network.
    let route4: IpNet = "10.60.7.7/16".parse()?;

    // Opened inside `a`, used from this thread, which stays in the test's own namespace.
    let link = a.run_in_thread(NetlinkLink::open)??;
    for round in 0..2 {
        // The second round finds everything in place: each call must still succeed.
        link.up(IF, DEFAULT_MTU)
            .map_err(|e| format!("round {round}: {e}"))?;
        for addr in [host6, host4] {
            link.add_addr(IF, addr)
                .map_err(|e| format!("round {round}: {e}"))?;
        }
        for dest in [route6, route4] {
            link.route(IF, dest)
                .map_err(|e| format!("round {round}: {e}"))?;
        }
    }
    match link.up("nl-missing", DEFAULT_MTU) {
        Err(LinkError::NoSuchLink { ifname }) => assert_eq!(ifname, "nl-missing"),
        other => panic!("bringing up a missing link: expected NoSuchLink, got {other:?}"),
    }

    let shown = a.ip(&["-o", "link", "show", "dev", IF])?.stdout;
    assert!(
        shown.contains(&format!("mtu {DEFAULT_MTU} ")) && shown.contains(",UP"),
        "{IF} is not up with MTU {DEFAULT_MTU}:\n{shown}"
    );
    let addrs = a.ip(&["-o", "addr", "show", "dev", IF])?.stdout;
    for (family, addr) in [("inet6", host6), ("inet", host4)] {
        let lines: Vec<&str> = addrs
            .lines()
            .filter(|line| line.contains(&format!(" {family} {addr} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{addr} should be on {IF} once:\n{addrs}");
        assert!(
            !lines[0].contains("tentative"),
            "{addr} is held by duplicate address detection:\n{addrs}"
        );
    }
    for (family, dest) in [
        ("-6", route6.to_string()),
        ("-4", "10.60.0.0/16".to_owned()),
    ] {
        let routes = a.ip(&[family, "route", "show", "dev", IF])?.stdout;
        let matching = routes
            .lines()
            .filter(|line| line.starts_with(&format!("{dest} ")))
            .count();
        assert_eq!(
            matching, 1,
            "one route to {dest} via {IF} expected:\n{routes}"
        );
    }
    let other = a.ip(&["-o", "addr", "show"])?.stdout;
    let b_addrs = lab.ns("b").ip(&["-o", "addr", "show"])?.stdout;
    assert!(
        !b_addrs.contains("10.50.1.1"),
        "the other end's namespace got the address:\n{b_addrs}\n(a has:\n{other})"
    );

    // The implementation check creates and deletes a probe link here; on a kernel without
    // WireGuard it must answer userspace, and the generic netlink family must be missing too.
    let (detected, family) = a.run_in_thread(|| (Implementation::detect(), KernelWg::open(IF)))?;
    match (&detected, &family) {
        (Implementation::Kernel, Ok(_)) => {}
        (Implementation::Userspace { .. }, Err(KernelError::NoFamily)) => {}
        _ => panic!("detect says {detected}, but opening generic netlink gave {family:?}"),
    }
    let links = a.ip(&["-o", "link", "show"])?.stdout;
    let names: Vec<&str> = links
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name))
        .collect();
    assert_eq!(names, ["lo", IF], "links left after detect:\n{links}");

    drop(link);
    tear_down(lab);
    Ok(())
}
