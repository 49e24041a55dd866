//! `backends` rows, operators' and registrations' alike: the address (an overlay IPv6 address
//! or a `.internal` name, never a POP's own), the limits, and a registration's lease, which
//! is read even from a row that is rejected so that the row still runs out.

use std::{collections::HashMap, net::Ipv6Addr};

use super::{
    cells::{arity, created_at, flag, port, ranged, show, text, Cell},
    columns,
    fields::{check_id, check_overlay_ip, parse_country, parse_overlay_ip, parse_region},
};
use crate::model::{dns_label, Backend, BackendAddr, CheckSpec, HostRole, Lease, Pop};

pub const MAX_WEIGHT: u32 = 1000;

/// A heartbeat interval above a day is a typo.
pub const MAX_HEARTBEAT_SECS: u32 = 86_400;

/// A DNS name ending in `.internal`, returned lower case without a trailing dot.
pub fn check_internal_name(s: &str) -> Result<String, String> {
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    let bad = |why: &str| Err(format!("address {} {why}", show(s)));
    if name.len() > 253 {
        return bad("is longer than 253 characters");
    }
    let Some(host) = name.strip_suffix(".internal") else {
        return bad("is neither an IPv6 address nor a name ending in .internal");
    };
    for label in host.split('.') {
        let ok = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return bad(
                "has a label that is not a DNS label (1-63 of a-z 0-9 -, no dash at either end)",
            );
        }
    }
    Ok(name)
}

pub fn parse_backend_addr(s: &str) -> Result<BackendAddr, String> {
    let looks_numeric = s.contains(':') || s.parse::<std::net::Ipv4Addr>().is_ok();
    if looks_numeric {
        parse_overlay_ip("address", s).map(BackendAddr::Ip)
    } else {
        check_internal_name(s).map(BackendAddr::Name)
    }
}

/// A backend address that is a POP's own (a `pops` row of role `pop`: its overlay address, or
/// its `<id>.hosts.internal` name): full NAT would send the POP's flows to itself.
pub fn check_backend_target(addr: &BackendAddr, pops: &[Pop]) -> Result<(), String> {
    PopAddresses::of(pops).check(addr)
}

/// The POPs' own addresses, gathered once for all backends of a snapshot.
pub(super) struct PopAddresses<'a> {
    ips: HashMap<Ipv6Addr, &'a str>,
    names: HashMap<String, &'a str>,
}

impl<'a> PopAddresses<'a> {
    pub(super) fn of(pops: &'a [Pop]) -> Self {
        let mut me = PopAddresses {
            ips: HashMap::new(),
            names: HashMap::new(),
        };
        for p in pops.iter().filter(|p| p.role == HostRole::Pop) {
            if let Some(ip) = p.overlay_addr {
                me.ips.insert(ip, &p.id);
            }
            if let Some(label) = dns_label(&p.id) {
                me.names.insert(format!("{label}.hosts.internal"), &p.id);
            }
        }
        me
    }

    pub(super) fn check(&self, addr: &BackendAddr) -> Result<(), String> {
        let pop = match addr {
            BackendAddr::Ip(ip) => self.ips.get(ip),
            BackendAddr::Name(name) => self.names.get(name),
        };
        match pop {
            Some(pop) => Err(format!(
                "address {} is POP {pop}'s own: the POP would forward flows to itself",
                super::fields::address_text(addr)
            )),
            None => Ok(()),
        }
    }
}

pub fn check_backend_addr(addr: &BackendAddr) -> Result<(), String> {
    match addr {
        BackendAddr::Ip(ip) => check_overlay_ip("address", *ip),
        BackendAddr::Name(name) => match check_internal_name(name) {
            Ok(normal) if normal == *name => Ok(()),
            Ok(normal) => Err(format!("address {} must be written {normal}", show(name))),
            Err(e) => Err(e),
        },
    }
}

/// What the types of [`Backend`] do not already guarantee.
pub fn check_backend(b: &Backend) -> Result<(), String> {
    check_id("id", &b.id)?;
    check_id("service_id", &b.service)?;
    check_backend_addr(&b.addr)?;
    if b.port == 0 {
        return Err("port 0 is out of range 1..=65535".to_owned());
    }
    if b.weight > MAX_WEIGHT {
        return Err(format!(
            "weight {} is out of range 0..={MAX_WEIGHT}",
            b.weight
        ));
    }
    if b.soft_limit == 0 {
        return Err("soft_limit must be at least 1".to_owned());
    }
    if b.soft_limit > b.hard_limit {
        return Err(format!(
            "soft_limit {} is above hard_limit {}",
            b.soft_limit, b.hard_limit
        ));
    }
    Ok(())
}

/// A backend and its `created_at`.
pub(super) fn backend_row(c: &[Cell<'_>]) -> Result<(Backend, i64), String> {
    arity(c, columns::BACKENDS.len())?;
    let id = text(c[0], "id")?;
    check_id("id", id)?;
    let service = text(c[1], "service_id")?;
    check_id("service_id", service)?;
    let region = parse_region(text(c[2], "region")?)?;
    let country = parse_country(text(c[3], "country")?)?;
    let addr = parse_backend_addr(text(c[4], "address")?)?;
    let port = port(c[5])?;
    let weight = ranged(c[6], "weight", 0, i64::from(MAX_WEIGHT))?;
    let soft_limit = ranged(c[7], "soft_limit", 1, i64::from(u32::MAX))?;
    let hard_limit = ranged(c[8], "hard_limit", 1, i64::from(u32::MAX))?;
    let draining = flag(c[9], "draining")?;
    let enabled = flag(c[10], "enabled")?;
    let metadata = text(c[11], "metadata")?;
    if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(metadata).is_err() {
        return Err(format!("metadata {} is not a JSON object", show(metadata)));
    }
    let check = CheckSpec::parse_column(text(c[12], "health_check")?)?;
    let heartbeat_at = ranged(c[13], "heartbeat_at", 0, i64::MAX)?;
    let heartbeat_secs = ranged(c[14], "heartbeat_secs", 0, i64::from(MAX_HEARTBEAT_SECS))?;
    let created = created_at(c[15])?;
    let lease_pop = text(c[16], "lease_pop")?;
    if !lease_pop.is_empty() {
        check_id("lease_pop", lease_pop)?;
    }
    let lease = (heartbeat_secs > 0).then(|| Lease {
        renewed_at: heartbeat_at,
        interval_secs: heartbeat_secs as u32,
        pop: lease_pop.to_owned(),
    });
    // The ranges above fit u32.
    let backend = Backend {
        id: id.to_owned(),
        service: service.to_owned(),
        region,
        country,
        addr,
        port,
        weight: weight as u32,
        soft_limit: soft_limit as u32,
        hard_limit: hard_limit as u32,
        draining,
        enabled,
        check,
        lease,
    };
    check_backend(&backend)?;
    Ok((backend, created))
}

/// The lease of a registration row that did not parse as a whole, read from the columns it
/// needs only: such a row must still go once its lease runs out. `None` for rows that are not
/// registrations, or whose lease columns themselves are unreadable (those stay for an operator).
pub(super) fn lease_of_rejected(c: &[Cell<'_>]) -> Option<(String, Lease)> {
    let id = match c.first()? {
        Cell::Text(t) => t,
        _ => return None,
    };
    let renewed_at = ranged(*c.get(13)?, "heartbeat_at", 0, i64::MAX).ok()?;
    let interval = ranged(
        *c.get(14)?,
        "heartbeat_secs",
        1,
        i64::from(MAX_HEARTBEAT_SECS),
    )
    .ok()?;
    let pop = match c.get(16) {
        Some(Cell::Text(t)) if check_id("lease_pop", t).is_ok() => (*t).to_owned(),
        _ => String::new(),
    };
    Some((
        (*id).to_owned(),
        Lease {
            renewed_at,
            interval_secs: interval as u32,
            pop,
        },
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A valid `backends` row, but for the cells `over` puts at their columns; the snapshot's
    /// tests build their rows from it too.
    pub(in crate::state::validate) fn backend_cells<'a>(
        over: &[(usize, Cell<'a>)],
    ) -> Vec<Cell<'a>> {
        let mut cells = vec![
            Cell::Text("b1"),
            Cell::Text("web"),
            Cell::Text("sa"),
            Cell::Text("BR"),
            Cell::Text("fd10:0:1::2"),
            Cell::Int(8080),
            Cell::Int(1),
            Cell::Int(100),
            Cell::Int(1000),
            Cell::Int(0),
            Cell::Int(1),
            Cell::Text("{}"),
            Cell::Text(""),
            Cell::Int(0),
            Cell::Int(0),
            Cell::Int(0),
            Cell::Text(""),
        ];
        for (i, c) in over {
            cells[*i] = *c;
        }
        cells
    }

    #[test]
    fn backend_fields_are_checked() {
        let cases: Vec<(Vec<(usize, Cell<'_>)>, &str)> = vec![
            (vec![(0, Cell::Text(""))], "not an id"),
            (vec![(0, Cell::Text("a b"))], "not an id"),
            (vec![(2, Cell::Text("South America"))], "region"),
            (vec![(3, Cell::Text("Brazil"))], "country"),
            (vec![(3, Cell::Null)], "country must be text, found NULL"),
            (vec![(4, Cell::Text("10.50.1.1"))], "is IPv4"),
            (vec![(4, Cell::Text("::ffff:10.50.1.1"))], "IPv4-mapped"),
            (vec![(4, Cell::Text("fe80::1"))], "link-local"),
            (vec![(4, Cell::Text("::"))], "unspecified"),
            (vec![(4, Cell::Text("ff02::1"))], "multicast"),
            (vec![(4, Cell::Text("fd00::zz"))], "not an IPv6 address"),
            (
                vec![(4, Cell::Text("web.example.com"))],
                "ending in .internal",
            ),
            (vec![(4, Cell::Text(".internal"))], "not a DNS label"),
            (vec![(4, Cell::Text("a_b.internal"))], "not a DNS label"),
            (vec![(4, Cell::Text("-a.internal"))], "not a DNS label"),
            (vec![(5, Cell::Int(0))], "port 0"),
            (vec![(5, Cell::Int(65536))], "port 65536"),
            (vec![(5, Cell::Text("http"))], "port must be an integer"),
            (vec![(6, Cell::Int(1001))], "weight 1001"),
            (vec![(6, Cell::Int(-1))], "weight -1"),
            (
                vec![(6, Cell::Real(1.5))],
                "weight must be an integer, found real",
            ),
            (vec![(7, Cell::Int(0))], "soft_limit 0"),
            (
                vec![(7, Cell::Int(2000))],
                "soft_limit 2000 is above hard_limit 1000",
            ),
            (vec![(8, Cell::Int(1 << 40))], "hard_limit"),
            (vec![(9, Cell::Int(2))], "draining must be 0 or 1"),
            (vec![(10, Cell::Text("yes"))], "enabled must be an integer"),
            (vec![(11, Cell::Text("[1]"))], "metadata"),
            (
                vec![(11, Cell::Blob(&[0xff, 0xfe]))],
                "metadata must be text",
            ),
            (
                vec![(12, Cell::Text("{\"type\":\"ping\"}"))],
                "health_check",
            ),
            (vec![(12, Cell::Null)], "health_check must be text"),
            (vec![(13, Cell::Int(-1))], "heartbeat_at"),
            (vec![(14, Cell::Int(86_401))], "heartbeat_secs"),
            (vec![(15, Cell::Int(-1))], "created_at"),
            (vec![(16, Cell::Text(".."))], "lease_pop"),
            (vec![(0, Cell::Text(".."))], "not an id"),
            (vec![(0, Cell::Text("-"))], "not an id"),
            (vec![(0, Cell::Text("."))], "not an id"),
        ];
        for (over, expected) in cases {
            let cells = backend_cells(&over);
            match backend_row(&cells) {
                Ok((b, _)) => {
                    panic!("{over:?}: expected a rejection mentioning {expected:?}, got {b:?}")
                }
                Err(reason) => {
                    assert!(
                        reason.contains(expected),
                        "{over:?}: reason {reason:?} does not mention {expected:?}"
                    );
                    assert!(!reason.contains('\n'), "one line: {reason:?}");
                }
            }
        }
    }

    #[test]
    fn backend_names_and_addresses_are_accepted() -> Result<(), String> {
        let (b, _) = backend_row(&backend_cells(&[(4, Cell::Text("Sa.Backends.Internal."))]))?;
        assert_eq!(b.addr, BackendAddr::Name("sa.backends.internal".to_owned()));
        let (b, _) = backend_row(&backend_cells(&[]))?;
        assert_eq!(
            b.addr,
            BackendAddr::Ip("fd10:0:1::2".parse().map_err(|_| "ip")?)
        );
        assert_eq!(b.country.code(), "BR");
        Ok(())
    }
}
