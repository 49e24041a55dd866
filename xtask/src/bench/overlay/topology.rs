//! The overlay lab's addressing and wiring: the three members of the mesh with their 6PN
//! addresses (the plan of docs/6pn.md), the client, the underlay router, and the state file the
//! agents build the mesh from. Every phase measures over this same lab.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
};

use anyhow::bail;
use edge_tests::{Lab, Topology};

use super::run_with_input;

/// The deployment's /48 (the example of docs/6pn.md): its three first groups.
pub(super) const DEPLOYMENT: [u16; 3] = [0xfd5e, 0xa1c0, 0x7b3d];
pub(super) const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 10);
pub(super) const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0x10);
pub(super) const IPERF_PORT: u16 = 5201;
pub(super) const WG_PORT: u16 = 51820;
pub(super) const KEEPALIVE_SECS: u16 = 25;
/// What the agent sets on its device (1500 less IPv6, UDP and WireGuard headers).
pub(super) const WG_MTU: u16 = 1420;

/// A member of the mesh: its namespace, region (and the region's number in 6PN addresses),
/// number in the region, and index on the underlay (`2001:db8:6<i>::2`).
pub(super) struct Member {
    pub(super) ns: &'static str,
    pub(super) region: &'static str,
    pub(super) region_number: u8,
    pub(super) number: u32,
    pub(super) underlay: u8,
}

pub(super) const POP: Member = Member {
    ns: "pop",
    region: "sa",
    region_number: 1,
    number: 1,
    underlay: 0,
};
pub(super) const HA: Member = Member {
    ns: "ha",
    region: "us",
    region_number: 2,
    number: 1,
    underlay: 1,
};
pub(super) const HB: Member = Member {
    ns: "hb",
    region: "eu",
    region_number: 3,
    number: 1,
    underlay: 2,
};

impl Member {
    /// Instance `instance` of the member's /96 (1 is the host itself).
    pub(super) fn instance(&self, instance: u32) -> Ipv6Addr {
        let [d0, d1, d2] = DEPLOYMENT;
        Ipv6Addr::new(
            d0,
            d1,
            d2,
            u16::from(self.region_number) << 8,
            (self.number >> 16) as u16,
            (self.number & 0xffff) as u16,
            (instance >> 16) as u16,
            (instance & 0xffff) as u16,
        )
    }

    /// The host's 6PN address.
    pub(super) fn addr(&self) -> Ipv6Addr {
        self.instance(1)
    }

    /// The host's /96: its allowed IPs as a peer.
    pub(super) fn prefix(&self) -> String {
        format!("{}/96", self.instance(0))
    }

    pub(super) fn underlay(&self) -> String {
        format!("2001:db8:6{}::2", self.underlay)
    }

    pub(super) fn endpoint(&self) -> String {
        format!("[{}]:{WG_PORT}", self.underlay())
    }
}

pub(super) fn deployment() -> String {
    let [d0, d1, d2] = DEPLOYMENT;
    format!("{d0:x}:{d1:x}:{d2:x}::/48")
}

/// The client's IPv6 address for line (d): a workload address in the POP's /96, so that the
/// backend's WireGuard accepts it from the POP and sends the replies back to the POP.
pub(super) fn client_6pn() -> Ipv6Addr {
    POP.instance(2)
}

pub(super) fn topology() -> Topology {
    let mut t = Topology::new("ovl")
        .ns("client")
        .ns("net")
        .veth(("client", "eth0"), (POP.ns, "eth0"))
        // A wire delivers full checksums into the XDP program (TOOLCHAIN.md), on every line.
        .tx_checksum_off("client", "eth0")
        .addr("client", "eth0", "10.0.1.2/24")
        .addr("client", "eth0", "2001:db8:1::2/64")
        .addr("client", "eth0", &format!("{}/128", client_6pn()))
        .addr(POP.ns, "eth0", "10.0.1.1/24")
        .addr(POP.ns, "eth0", "2001:db8:1::1/64")
        .addr(POP.ns, "lo", &format!("{VIP4}/32"))
        .addr(POP.ns, "lo", &format!("{VIP6}/128"))
        .route("client", "default", "10.0.1.1")
        .route("client", "default", "2001:db8:1::1")
        // The client's 6PN address is on the POP's eth0 side, not behind its WireGuard device
        // (where the rest of the /48 is).
        .route(POP.ns, &format!("{}/128", client_6pn()), "2001:db8:1::2")
        .sysctl("net", "net.ipv6.conf.all.forwarding", "1")
        .sysctl(POP.ns, "net.ipv4.ip_forward", "1")
        .sysctl(POP.ns, "net.ipv6.conf.all.forwarding", "1");
    for m in [&POP, &HA, &HB] {
        let i = m.underlay;
        t = t
            .ns(m.ns)
            .veth((m.ns, "u0"), ("net", &format!("m{i}")))
            .addr(m.ns, "u0", &format!("{}/64", m.underlay()))
            .addr("net", &format!("m{i}"), &format!("2001:db8:6{i}::1/64"))
            .route(m.ns, "2001:db8:60::/44", &format!("2001:db8:6{i}::1"));
    }
    t
}

/// The state file: the schema, the deployment's prefix, and one service per VIP whose backend
/// is hb's iperf3 on its 6PN address. The members publish their own rows.
pub(super) fn write_state(lab: &Lab) -> anyhow::Result<PathBuf> {
    let db = lab.log_dir().join("state.db");
    let mut sql = String::from(include_str!("../../../../edge-agent/schema/edgeproxy.sql"));
    let _ = writeln!(
        sql,
        "INSERT INTO settings (key, value) VALUES ('sixpn.prefix', '{}');",
        deployment()
    );
    for (id, vip) in [("iperf4", IpAddr::V4(VIP4)), ("iperf6", IpAddr::V6(VIP6))] {
        let _ = writeln!(
            sql,
            "INSERT INTO services (id, vip, port) VALUES ('{id}', '{vip}', {IPERF_PORT});\n\
             INSERT INTO backends (id, service_id, region, country, address, port, soft_limit, hard_limit) \
             VALUES ('{id}-hb', '{id}', '{}', 'DE', '{}', {IPERF_PORT}, 1000, 10000);",
            HB.region,
            HB.addr()
        );
    }
    let out = run_with_input(Command::new("sqlite3").arg(&db), sql.as_bytes())?;
    if !out.status.success() {
        bail!(
            "sqlite3 {} failed ({}): {}",
            db.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_documented_plan() {
        // docs/6pn.md, "Worked examples": POP 1 in sa.
        assert_eq!(POP.addr().to_string(), "fd5e:a1c0:7b3d:100:0:1:0:1");
        assert_eq!(POP.prefix(), "fd5e:a1c0:7b3d:100:0:1::/96");
        assert_eq!(HB.addr().to_string(), "fd5e:a1c0:7b3d:300:0:1:0:1");
        assert_eq!(client_6pn().to_string(), "fd5e:a1c0:7b3d:100:0:1:0:2");
        assert_eq!(deployment(), "fd5e:a1c0:7b3d::/48");
        assert_eq!(HA.endpoint(), "[2001:db8:61::2]:51820");
    }
}
