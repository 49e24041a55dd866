//! The 6PN address plan: every overlay address is derived from (deployment, region, host,
//! instance), and can be read back. The layout and its reasons are in `docs/6pn.md`.
//!
//! ```text
//! | 8 bits | 40 bits   | 8 bits | 8 bits | 32 bits | 32 bits  |
//! | fd     | global ID | region | kind   | host    | instance |
//! |<------ deployment /48 ----->|<- subnet ->|     |          |
//! |<------------------ host prefix /96 ---------->|          |
//! ```

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, Read},
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

/// The subnet kind of hosts (POPs and backend hosts). The other 255 kinds are reserved, e.g.
/// for deployment-wide anycast service addresses.
pub const KIND_HOSTS: u8 = 0;

/// A host's own address is instance 1 of its /96; instance 0 would be the prefix itself.
pub const HOST_INSTANCE: u32 = 1;

/// The highest instance number that is not an SNAT address: a POP's /96 doubles as its
/// `overlay.snat_prefix`, which puts an IPv4 client in the low 32 bits. Clients never come from
/// 0.0.0.0/8 (RFC 1122 3.2.1.3: "this network", never a source on the wire), so instances below
/// 2^24 cannot collide with a translated client, on any host.
pub const MAX_INSTANCE: u32 = 0x00ff_ffff;

/// Regions with a fixed number, the four of v1. Numbers below 16 are kept for such a table;
/// other regions get the next free number from 16 on, assigned once and stored with the
/// region (see [`RegionNumbers`]).
pub const WELL_KNOWN_REGIONS: [(&str, u8); 4] = [("sa", 1), ("us", 2), ("eu", 3), ("ap", 4)];

/// The first number given to a region that is not in [`WELL_KNOWN_REGIONS`].
pub const FIRST_ASSIGNED_REGION: u8 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("{text:?} is not a deployment prefix: {why}")]
    BadDeployment { text: String, why: &'static str },
    #[error("region {region:?} already has number {number}")]
    RegionTaken { region: String, number: u8 },
    #[error("region number {number} is invalid for {region:?}: {why}")]
    BadRegionNumber {
        region: String,
        number: u8,
        why: &'static str,
    },
    #[error("no region number left for {region:?}: all 240 are assigned")]
    RegionsExhausted { region: String },
}

/// A deployment's ULA /48 (RFC 4193 section 3.1): `fd` then a random 40-bit global ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Deployment {
    global_id: u64,
}

impl Deployment {
    const GLOBAL_ID_MASK: u64 = (1 << 40) - 1;

    /// A new deployment with a global ID from the OS RNG. RFC 4193 section 3.2.2 suggests
    /// hashing a timestamp and an EUI-64; its point is that IDs are random so two deployments
    /// that are ever connected are unlikely to collide, and the kernel RNG gives that directly.
    pub fn generate() -> io::Result<Self> {
        let mut bytes = [0u8; 8];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes[3..])?;
        Ok(Self::from_global_id(u64::from_be_bytes(bytes)))
    }

    /// The deployment with this global ID; only the low 40 bits are used.
    pub fn from_global_id(global_id: u64) -> Self {
        Self {
            global_id: global_id & Self::GLOBAL_ID_MASK,
        }
    }

    pub fn global_id(&self) -> u64 {
        self.global_id
    }

    /// The whole deployment, `fdXX:XXXX:XXXX::/48`.
    pub fn prefix(&self) -> Ipv6Net {
        Self::net(self.bits(0, 0, 0, 0), 48)
    }

    /// The /96 a host owns: its own address, its instances and, on a POP, its SNAT prefix.
    pub fn host_prefix(&self, region: u8, host: u32) -> Ipv6Net {
        Self::net(self.bits(region, KIND_HOSTS, host, 0), 96)
    }

    /// The host's own overlay address (instance [`HOST_INSTANCE`]).
    pub fn host_addr(&self, region: u8, host: u32) -> Ipv6Addr {
        Ipv6Addr::from(self.bits(region, KIND_HOSTS, host, HOST_INSTANCE))
    }

    /// An instance's address on a host: `None` for 0 (the prefix) and above [`MAX_INSTANCE`]
    /// (the SNAT range).
    pub fn instance_addr(&self, region: u8, host: u32, instance: u32) -> Option<Ipv6Addr> {
        (1..=MAX_INSTANCE)
            .contains(&instance)
            .then(|| Ipv6Addr::from(self.bits(region, KIND_HOSTS, host, instance)))
    }

    /// Where an address of this deployment's hosts belongs; `None` outside the deployment or
    /// for a kind other than hosts.
    pub fn parse(&self, addr: Ipv6Addr) -> Option<Location> {
        let bits = u128::from(addr);
        if bits >> 80 != self.bits(0, 0, 0, 0) >> 80 || (bits >> 64) as u8 != KIND_HOSTS {
            return None;
        }
        Some(Location {
            region: (bits >> 72) as u8,
            host: (bits >> 32) as u32,
            instance: bits as u32,
        })
    }

    fn bits(&self, region: u8, kind: u8, host: u32, instance: u32) -> u128 {
        (0xfd_u128 << 120)
            | (u128::from(self.global_id) << 80)
            | (u128::from(region) << 72)
            | (u128::from(kind) << 64)
            | (u128::from(host) << 32)
            | u128::from(instance)
    }

    fn net(bits: u128, len: u8) -> Ipv6Net {
        // Both lengths are literals below 128, so this is always Ok.
        Ipv6Net::new(Ipv6Addr::from(bits), len).unwrap_or_default()
    }
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.prefix().fmt(f)
    }
}

/// Accepts exactly the /48 form [`Deployment`] displays, e.g. `fd5e:a1c0:7b3d::/48`: anything
/// else (another length, bits set below the /48, not `fd`) is a configuration mistake.
impl FromStr for Deployment {
    type Err = PlanError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why| PlanError::BadDeployment {
            text: text.to_owned(),
            why,
        };
        let net: Ipv6Net = text
            .parse()
            .map_err(|_| bad("not an IPv6 prefix in CIDR form"))?;
        if net.prefix_len() != 48 {
            return Err(bad("the length must be /48"));
        }
        let bits = u128::from(net.addr());
        if bits >> 120 != 0xfd {
            return Err(bad(
                "a ULA with a random global ID starts with fd (RFC 4193)",
            ));
        }
        if bits & ((1 << 80) - 1) != 0 {
            return Err(bad("bits below the /48 are set"));
        }
        Ok(Self::from_global_id((bits >> 80) as u64))
    }
}

impl TryFrom<String> for Deployment {
    type Error = PlanError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Deployment> for String {
    fn from(d: Deployment) -> Self {
        d.to_string()
    }
}

/// The parts of a host address of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub region: u8,
    pub host: u32,
    pub instance: u32,
}

impl Location {
    /// The IPv4 client an SNAT address of a POP stands for.
    pub fn snat_client(&self) -> Option<Ipv4Addr> {
        (self.instance > MAX_INSTANCE).then(|| Ipv4Addr::from(self.instance))
    }
}

/// Region ids to their 8-bit numbers. The well-known four are fixed; any other region gets
/// the next free number from [`FIRST_ASSIGNED_REGION`] the first time it is seen, and that
/// number must then be stored with the region: a number derived from the name (a hash) could
/// collide, and 240 numbers are too few for that to be rare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionNumbers {
    numbers: BTreeMap<String, u8>,
}

impl Default for RegionNumbers {
    fn default() -> Self {
        Self {
            numbers: WELL_KNOWN_REGIONS
                .iter()
                .map(|&(region, number)| (region.to_owned(), number))
                .collect(),
        }
    }
}

impl RegionNumbers {
    pub fn get(&self, region: &str) -> Option<u8> {
        self.numbers.get(region).copied()
    }

    /// Records a number read back from state.
    pub fn insert(&mut self, region: &str, number: u8) -> Result<(), PlanError> {
        let bad = |why| PlanError::BadRegionNumber {
            region: region.to_owned(),
            number,
            why,
        };
        if let Some(known) = self.get(region) {
            return if known == number {
                Ok(())
            } else {
                Err(bad("the region already has another number"))
            };
        }
        if number < FIRST_ASSIGNED_REGION {
            return Err(bad("numbers below 16 are reserved for well-known regions"));
        }
        if let Some((owner, _)) = self.numbers.iter().find(|(_, &n)| n == number) {
            return Err(PlanError::RegionTaken {
                region: owner.clone(),
                number,
            });
        }
        self.numbers.insert(region.to_owned(), number);
        Ok(())
    }

    /// The region's number, assigning the lowest free one if it has none.
    pub fn assign(&mut self, region: &str) -> Result<u8, PlanError> {
        if let Some(number) = self.get(region) {
            return Ok(number);
        }
        let number = (FIRST_ASSIGNED_REGION..=u8::MAX)
            .find(|n| !self.numbers.values().any(|used| used == n))
            .ok_or_else(|| PlanError::RegionsExhausted {
                region: region.to_owned(),
            })?;
        self.numbers.insert(region.to_owned(), number);
        Ok(number)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use super::*;

    fn example() -> Deployment {
        "fd5e:a1c0:7b3d::/48".parse().unwrap()
    }

    /// The rows of the table in docs/6pn.md.
    #[test]
    fn the_documented_examples_hold() {
        let d = example();
        assert_eq!(d.global_id(), 0x5e_a1c0_7b3d);
        assert_eq!(d.to_string(), "fd5e:a1c0:7b3d::/48");
        assert_eq!(
            d.host_prefix(1, 1).to_string(),
            "fd5e:a1c0:7b3d:100:0:1::/96"
        );
        assert_eq!(d.host_addr(1, 1).to_string(), "fd5e:a1c0:7b3d:100:0:1:0:1");
        assert_eq!(d.host_addr(2, 7).to_string(), "fd5e:a1c0:7b3d:200:0:7:0:1");
        assert_eq!(
            d.instance_addr(3, 12, 5).unwrap().to_string(),
            "fd5e:a1c0:7b3d:300:0:c:0:5"
        );
        assert_eq!(
            d.host_addr(4, 0x1_0000).to_string(),
            "fd5e:a1c0:7b3d:400:1::1"
        );
        let region = RegionNumbers::default().assign("af").unwrap();
        assert_eq!(
            d.host_addr(region, 3).to_string(),
            "fd5e:a1c0:7b3d:1000:0:3:0:1"
        );
        // A POP's /96 as SNAT prefix: the client's IPv4 in the low 32 bits.
        let client: Ipv4Addr = "203.0.113.9".parse().unwrap();
        let snat =
            Ipv6Addr::from(u128::from(d.host_prefix(1, 1).addr()) | u128::from(u32::from(client)));
        assert_eq!(snat.to_string(), "fd5e:a1c0:7b3d:100:0:1:cb00:7109");
        assert_eq!(d.parse(snat).unwrap().snat_client(), Some(client));
    }

    #[test]
    fn addresses_parse_back_to_their_parts() {
        let d = example();
        for (region, host, instance) in [(1, 1, 1), (255, u32::MAX, MAX_INSTANCE), (16, 42, 2)] {
            let addr = d.instance_addr(region, host, instance).unwrap();
            let location = d.parse(addr).unwrap();
            assert_eq!(
                location,
                Location {
                    region,
                    host,
                    instance
                }
            );
            assert_eq!(location.snat_client(), None);
            assert!(d.host_prefix(region, host).contains(&addr));
            assert!(d.prefix().contains(&addr));
        }
        assert_eq!(d.parse(d.host_addr(2, 9)).unwrap().instance, HOST_INSTANCE);
    }

    #[test]
    fn foreign_addresses_do_not_parse() {
        let d = example();
        let other = Deployment::from_global_id(d.global_id() ^ 1);
        assert_eq!(d.parse(other.host_addr(1, 1)), None);
        assert_eq!(
            d.parse("fd5e:a1c0:7b3d:101::1".parse().unwrap()),
            None,
            "kind 1"
        );
        assert_eq!(d.parse("2001:db8::1".parse().unwrap()), None);
    }

    #[test]
    fn instance_zero_and_the_snat_range_have_no_instance_address() {
        let d = example();
        assert_eq!(d.instance_addr(1, 1, 0), None);
        assert_eq!(d.instance_addr(1, 1, MAX_INSTANCE + 1), None);
    }

    #[test]
    fn deployment_text_is_checked() {
        for bad in [
            "fd5e:a1c0:7b3d::/47",
            "fd5e:a1c0:7b3d:1::/48",
            "fc5e:a1c0:7b3d::/48",
            "fd5e:a1c0:7b3d::",
            "fd00:edgeproxy::/48",
        ] {
            assert!(bad.parse::<Deployment>().is_err(), "{bad} was accepted");
        }
        let json = serde_json::to_string(&example()).unwrap();
        assert_eq!(json, "\"fd5e:a1c0:7b3d::/48\"");
        assert_eq!(
            serde_json::from_str::<Deployment>(&json).unwrap(),
            example()
        );
    }

    #[test]
    fn generated_deployments_are_valid_and_differ() {
        let a = Deployment::generate().unwrap();
        let b = Deployment::generate().unwrap();
        assert_ne!(a, b, "40 random bits twice alike");
        assert_eq!(a.to_string().parse::<Deployment>().unwrap(), a);
        assert!(a.global_id() < 1 << 40);
    }

    #[test]
    fn region_numbers_are_stable_and_unique() {
        let mut numbers = RegionNumbers::default();
        assert_eq!(numbers.get("sa"), Some(1));
        assert_eq!(numbers.get("ap"), Some(4));
        assert_eq!(numbers.assign("us").unwrap(), 2);
        assert_eq!(numbers.assign("af").unwrap(), 16);
        assert_eq!(numbers.assign("me").unwrap(), 17);
        assert_eq!(numbers.assign("af").unwrap(), 16);

        let mut loaded = RegionNumbers::default();
        loaded.insert("me", 17).unwrap();
        assert_eq!(loaded.assign("af").unwrap(), 16);
        assert_eq!(loaded.assign("oc").unwrap(), 18);
        assert!(matches!(
            loaded.insert("xx", 17),
            Err(PlanError::RegionTaken { .. })
        ));
        assert!(loaded.insert("xx", 5).is_err());
        assert!(loaded.insert("sa", 20).is_err());

        for n in 0..240 {
            let _ = loaded.assign(&format!("r{n}"));
        }
        assert!(matches!(
            loaded.assign("one-too-many"),
            Err(PlanError::RegionsExhausted { .. })
        ));
    }
}
