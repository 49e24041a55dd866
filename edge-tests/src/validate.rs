//! Checks of names and addresses, done before a lab creates anything.

use std::net::IpAddr;

use crate::error::{LabError, Result};

pub(crate) fn invalid(what: &'static str, value: &str, why: &str) -> LabError {
    LabError::Invalid {
        what,
        value: value.to_owned(),
        why: why.to_owned(),
    }
}

pub(crate) fn check_label(what: &'static str, label: &str) -> Result<()> {
    let ok = !label.is_empty()
        && !label.starts_with('-')
        && label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            what,
            label,
            "use lowercase letters, digits, '-' and '_'",
        ))
    }
}

/// Interface names are limited to IFNAMSIZ - 1 bytes and must not look like paths.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "interface name",
            name,
            "1-15 characters, no '/', ':' or spaces",
        ))
    }
}

/// Parses `addr/prefix`, checking the prefix fits the family.
pub(crate) fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8)> {
    let bad = |why: &str| invalid("address", cidr, why);
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| bad("expected addr/prefix"))?;
    let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(bad("prefix too long"));
    }
    Ok((addr, prefix))
}

/// Checks the gateway parses and the destination has the same family.
pub(crate) fn check_route(dest: &str, via: &str) -> Result<IpAddr> {
    let gateway: IpAddr = via
        .parse()
        .map_err(|_| invalid("gateway", via, "not an IP address"))?;
    if dest != "default" {
        let (net, _) = parse_cidr(dest)?;
        if net.is_ipv4() != gateway.is_ipv4() {
            return Err(invalid(
                "route",
                dest,
                &format!("family differs from gateway {via}"),
            ));
        }
    }
    Ok(gateway)
}

#[cfg(test)]
mod tests {
    use crate::error::LabError;
    use crate::Topology;

    #[test]
    fn rejects_bad_descriptions_before_creating_anything() {
        let bad = [
            Topology::new("Geo").ns("a"),
            Topology::new("geo").ns("a").ns("a"),
            Topology::new("geo")
                .ns("a")
                .addr("b", "eth0", "10.0.0.1/24"),
            Topology::new("geo")
                .ns("a")
                .addr("a", "eth0", "10.0.0.1/33"),
            Topology::new("geo").ns("a").addr("a", "eth0", "10.0.0.1"),
            Topology::new("geo")
                .ns("a")
                .veth(("a", "x"), ("a", "much-too-long-name")),
            Topology::new("geo")
                .ns("a")
                .route("a", "2001:db8::/64", "10.0.0.1"),
            Topology::new("geo")
                .ns("a")
                .route("a", "default", "gateway"),
        ];
        for topology in bad {
            assert!(
                matches!(topology.validate(), Err(LabError::Invalid { .. })),
                "{topology:?}"
            );
        }
    }

    #[test]
    fn accepts_mixed_families() {
        let topology = Topology::new("geo")
            .ns("a")
            .ns("b")
            .veth(("a", "eth0"), ("b", "eth0"))
            .addr("a", "eth0", "192.0.2.1/24")
            .addr("a", "eth0", "2001:db8::1/64")
            .route("b", "default", "192.0.2.1")
            .route_dev("b", "default", "fe80::1", "eth0")
            .route("b", "2001:db8:1::/48", "2001:db8::1");
        assert!(topology.validate().is_ok());
    }
}
