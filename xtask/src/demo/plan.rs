//! The world `cargo xtask run` builds, as data: POPs, the ISPs' routers in front of them, the
//! clients behind those, and the backend hosts of the 6PN mesh. Addresses and names are derived
//! here only, so the topology, the configs and the screen agree.

/// The anycast VIP every POP announces, and the service's port on it.
pub const VIP: &str = "198.18.0.10";
pub const VIP_PORT: u16 = 80;
/// The backends' `echo-server --hello NAME --say-peer` port.
pub const BACKEND_PORT: u16 = 7008;
/// The deployment's 6PN /48 (docs/6pn.md's worked example).
pub const SIXPN_PREFIX: &str = "fd5e:a1c0:7b3d::/48";
pub const WG_PORT: u16 = 51820;

/// A POP: namespace, `pop_id`, region, ASN, its address on the exchange (IX) LAN.
pub struct Pop {
    pub ns: &'static str,
    pub id: &'static str,
    pub region: &'static str,
    pub city: &'static str,
    pub asn: u32,
    pub ix: &'static str,
}

pub const POPS: [Pop; 2] = [
    Pop {
        ns: "popsa",
        id: "pop-sa",
        region: "sa",
        city: "Sao Paulo",
        asn: 65001,
        ix: "10.0.100.11",
    },
    Pop {
        ns: "popeu",
        id: "pop-eu",
        region: "eu",
        city: "Frankfurt",
        asn: 65002,
        ix: "10.0.100.12",
    },
];

/// An ISP: its router (BIRD) on the IX, the clients' LAN behind it, and the POP it is near
/// (it gives that POP's routes LOCAL_PREF 200, the others 100: hot-potato routing, as a
/// network prefers the exit closest to it).
pub struct Isp {
    pub ns: &'static str,
    pub clients_ns: &'static str,
    pub name: &'static str,
    pub asn: u32,
    pub ix: &'static str,
    /// The router's address on the clients' LAN (a /16 of which the clients hold /24s).
    pub lan: &'static str,
    pub near_pop: usize,
}

pub const ISPS: [Isp; 2] = [
    Isp {
        ns: "ispam",
        clients_ns: "clam",
        name: "ISP Americas",
        asn: 65101,
        ix: "10.0.100.1",
        lan: "10.1.0.1",
        near_pop: 0,
    },
    Isp {
        ns: "ispea",
        clients_ns: "clea",
        name: "ISP Europe-Asia",
        asn: 65102,
        ix: "10.0.100.2",
        lan: "10.2.0.1",
        near_pop: 1,
    },
];

/// A client: its address (in its ISP's /16, its own /24 in the country database), country,
/// region (v1's table), and ISP.
pub struct Client {
    pub addr: &'static str,
    pub country: &'static str,
    pub region: &'static str,
    pub isp: usize,
}

pub const CLIENTS: [Client; 8] = [
    Client {
        addr: "10.1.1.10",
        country: "BR",
        region: "sa",
        isp: 0,
    },
    Client {
        addr: "10.1.2.10",
        country: "AR",
        region: "sa",
        isp: 0,
    },
    Client {
        addr: "10.1.3.10",
        country: "US",
        region: "us",
        isp: 0,
    },
    Client {
        addr: "10.1.4.10",
        country: "CA",
        region: "us",
        isp: 0,
    },
    Client {
        addr: "10.2.1.10",
        country: "DE",
        region: "eu",
        isp: 1,
    },
    Client {
        addr: "10.2.2.10",
        country: "FR",
        region: "eu",
        isp: 1,
    },
    Client {
        addr: "10.2.3.10",
        country: "JP",
        region: "ap",
        isp: 1,
    },
    Client {
        addr: "10.2.4.10",
        country: "AU",
        region: "ap",
        isp: 1,
    },
];

/// A backend host: namespace, the backend's id (also the name it greets with), region,
/// country, and its host number in its region of the 6PN.
pub struct Backend {
    pub ns: &'static str,
    pub id: &'static str,
    pub region: &'static str,
    pub country: &'static str,
    pub host_number: u32,
}

pub const BACKENDS: [Backend; 4] = [
    Backend {
        ns: "hbr",
        id: "br",
        region: "sa",
        country: "BR",
        host_number: 2,
    },
    Backend {
        ns: "hus",
        id: "us",
        region: "us",
        country: "US",
        host_number: 1,
    },
    Backend {
        ns: "hde",
        id: "de",
        region: "eu",
        country: "DE",
        host_number: 2,
    },
    Backend {
        ns: "hjp",
        id: "jp",
        region: "ap",
        country: "JP",
        host_number: 1,
    },
];

/// A member of the 6PN mesh (the POPs first, then the backend hosts).
pub struct Member {
    pub ns: &'static str,
    pub id: String,
    pub region: &'static str,
    pub host_number: u32,
    pub pop: bool,
}

pub fn members() -> Vec<Member> {
    let pops = POPS.iter().map(|p| Member {
        ns: p.ns,
        id: p.id.to_owned(),
        region: p.region,
        host_number: 1,
        pop: true,
    });
    let hosts = BACKENDS.iter().map(|b| Member {
        ns: b.ns,
        id: format!("host-{}", b.id),
        region: b.region,
        host_number: b.host_number,
        pop: false,
    });
    pops.chain(hosts).collect()
}

/// v1's region numbers in 6PN addresses (docs/6pn.md: sa 1, us 2, eu 3, ap 4).
fn region_number(region: &str) -> u32 {
    match region {
        "sa" => 1,
        "us" => 2,
        "eu" => 3,
        _ => 4,
    }
}

/// A host's own 6PN address: `<deployment>:<region><kind 0>:<host>:0:1` (docs/6pn.md).
pub fn sixpn_addr(region: &str, host_number: u32) -> String {
    let prefix = SIXPN_PREFIX.trim_end_matches("::/48");
    format!(
        "{prefix}:{:x}00:{:x}:{:x}:0:1",
        region_number(region),
        host_number >> 16,
        host_number & 0xffff
    )
}

/// Member `i`'s address on the IPv6 underlay that carries WireGuard.
pub fn underlay(i: usize) -> String {
    format!("2001:db8:6{i}::2")
}

/// v1's geo tier of a backend for a client at a POP (lower is nearer): 0 same country, 1 same
/// region as the client, 2 the POP's region, 3 anywhere.
pub fn tier(client: &Client, backend: &Backend, pop_region: &str) -> u8 {
    if backend.country == client.country {
        0
    } else if backend.region == client.region {
        1
    } else if backend.region == pop_region {
        2
    } else {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixpn_addresses_follow_the_documented_plan() {
        // docs/6pn.md: POP 1 in sa, backend host 7 in us.
        assert_eq!(sixpn_addr("sa", 1), "fd5e:a1c0:7b3d:100:0:1:0:1");
        assert_eq!(sixpn_addr("us", 7), "fd5e:a1c0:7b3d:200:0:7:0:1");
        assert_eq!(sixpn_addr("eu", 0x1_000c), "fd5e:a1c0:7b3d:300:1:c:0:1");
    }

    #[test]
    fn every_client_has_a_tier_zero_or_one_backend() {
        for c in &CLIENTS {
            let best = BACKENDS.iter().map(|b| tier(c, b, "eu")).min();
            assert!(
                best <= Some(1),
                "{} has no backend in its region",
                c.country
            );
        }
    }
}
