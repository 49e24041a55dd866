//! Checks of values that several tables share: ids, overlay addresses, regions and countries.

use std::net::Ipv6Addr;

use super::cells::{show, MAX_ID_LEN};
use crate::model::{BackendAddr, Country, Region};

/// Ids are keys in logs, CLI arguments and DNS names: short, printable, no spaces, and with a
/// letter or digit, since a DNS label is made of those (`.`, `..` or `-` would name nothing).
/// Rows typed in keep the wider alphabet they always had; registrations must be DNS labels
/// already ([`check_registration_id`]).
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
        && id.bytes().any(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {} is not an id (1-{MAX_ID_LEN} of A-Z a-z 0-9 - _ . : @, with a letter \
             or digit)",
            show(id)
        ))
    }
}

/// A registration's id is its DNS name (`<id>.instances.internal`), so it must be a DNS label
/// as it is (RFC 1035 2.3.1: letters, digits and `-`, no `-` at either end, at most 63), not
/// something that becomes one: `..`, `-` or `a.b` are refused. Case is kept, but names are
/// case-insensitive, so two ids that differ only in case are one name: the API refuses the
/// second ([`crate::state::owners::registration_conflict`]) and the validator rejects it.
pub fn check_registration_id(id: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "id {} is not a DNS label (1-63 of A-Z a-z 0-9 -, no dash at either end): it is \
             the registration's name, <id>.instances.internal",
            show(id)
        ))
    }
}

/// An address packets can be forwarded to over the overlay.
pub fn check_overlay_ip(what: &str, ip: Ipv6Addr) -> Result<(), String> {
    let why = if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped, not an overlay address")
    } else if ip.segments()[0] & 0xffc0 == 0xfe80 {
        Some("link-local, which needs an interface")
    } else {
        None
    };
    match why {
        Some(why) => Err(format!("{what} {ip} is {why}")),
        None => Ok(()),
    }
}

pub(super) fn parse_overlay_ip(what: &str, s: &str) -> Result<Ipv6Addr, String> {
    if s.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err(format!(
            "{what} {s} is IPv4; the v2 overlay (6PN) is IPv6: give its IPv6 overlay address"
        ));
    }
    let ip: Ipv6Addr = s
        .parse()
        .map_err(|_| format!("{what} {} is not an IPv6 address", show(s)))?;
    check_overlay_ip(what, ip)?;
    Ok(ip)
}

// The model's messages quote the whole value; a long one is refused here with a short quote.
pub(crate) fn parse_region(s: &str) -> Result<Region, String> {
    if s.len() > 16 {
        return Err(format!(
            "region {} is not a region id (1-16 characters)",
            show(s)
        ));
    }
    s.parse()
}

pub(crate) fn parse_country(s: &str) -> Result<Country, String> {
    if s.len() > 2 {
        return Err(format!(
            "country {} is not an ISO 3166-1 alpha-2 code",
            show(s)
        ));
    }
    s.parse()
}

/// The address column's text (what [`backends`](super::backends) reads back): an IPv6 address or a `.internal` name.
pub fn address_text(addr: &BackendAddr) -> String {
    match addr {
        BackendAddr::Ip(ip) => ip.to_string(),
        BackendAddr::Name(name) => name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_ids_are_dns_labels() {
        for ok in ["e4b1", "E4B1", "web-host7-8080", "a", &"x".repeat(63)] {
            assert!(check_registration_id(ok).is_ok(), "{ok:?} should pass");
        }
        for bad in [
            "..",
            ".",
            "-",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "a b",
            "",
            &"x".repeat(64),
        ] {
            match check_registration_id(bad) {
                Ok(()) => panic!("{bad:?}: expected a refusal"),
                Err(reason) => assert!(reason.contains("not a DNS label"), "{reason:?}"),
            }
        }
    }
}
