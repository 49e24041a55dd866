//! `pops` rows: the 6PN's hosts, POPs and backend hosts, with their overlay address, WireGuard
//! key and endpoint.

use std::net::SocketAddr;

use super::{
    cells::{arity, int, opt_text, show, text, Cell},
    columns,
    fields::{check_id, check_overlay_ip, parse_overlay_ip, parse_region},
};
use crate::model::{HostRole, Pop};

/// A WireGuard key: 32 bytes in standard base64 (44 characters, one `=` of padding).
pub fn check_public_key(key: &str) -> Result<(), String> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = key.as_bytes();
    // 32 bytes use only the top 4 bits of the 43rd character: its base64 index is a multiple
    // of 4, else the key has trailing bits and is not canonical.
    let ok = bytes.len() == 44
        && bytes[43] == b'='
        && bytes[..43].iter().all(|b| B64.contains(b))
        && B64
            .iter()
            .position(|b| *b == bytes[42])
            .is_some_and(|i| i % 4 == 0);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "public_key {} is not a WireGuard key (32 bytes, base64)",
            show(key)
        ))
    }
}

/// A WireGuard endpoint: `ip:port`, `[ipv6]:port` or `host:port`.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || Err(format!("endpoint {} is not host:port", show(endpoint)));
    let Some((host, port)) = endpoint.rsplit_once(':') else {
        return bad();
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            (1..=63).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        bad()
    }
}

/// What the types of [`Pop`] do not already guarantee.
pub fn check_pop(p: &Pop) -> Result<(), String> {
    check_id("id", &p.id)?;
    if let Some(ip) = p.overlay_addr {
        check_overlay_ip("overlay_addr", ip)?;
    }
    if let Some(key) = &p.public_key {
        check_public_key(key)?;
    }
    if let Some(endpoint) = &p.endpoint {
        check_endpoint(endpoint)?;
    }
    Ok(())
}

pub(super) fn pop_row(c: &[Cell<'_>]) -> Result<Pop, String> {
    arity(c, columns::POPS.len())?;
    let id = text(c[0], "id")?;
    check_id("id", id)?;
    let region = parse_region(text(c[1], "region")?)?;
    let overlay_addr = opt_text(c[2], "overlay_addr")?
        .map(|s| parse_overlay_ip("overlay_addr", s))
        .transpose()?;
    let public_key = opt_text(c[3], "public_key")?;
    if let Some(key) = public_key {
        check_public_key(key)?;
    }
    let endpoint = opt_text(c[4], "endpoint")?;
    if let Some(endpoint) = endpoint {
        check_endpoint(endpoint)?;
    }
    let role = match text(c[5], "role")? {
        "pop" => HostRole::Pop,
        "host" => HostRole::Host,
        other => return Err(format!("role {other:?}: expected pop or host")),
    };
    let host_number = int(c[6], "host_number")?;
    let host_number = u32::try_from(host_number)
        .map_err(|_| format!("host_number {host_number} is outside 0..2^32"))?;
    let overlay_ipv4 = opt_text(c[7], "overlay_ipv4")?
        .map(|s| {
            s.parse::<std::net::Ipv4Addr>()
                .map_err(|_| format!("overlay_ipv4 {s:?} is not an IPv4 address"))
        })
        .transpose()?;
    Ok(Pop {
        id: id.to_owned(),
        region,
        overlay_addr,
        public_key: public_key.map(str::to_owned),
        endpoint: endpoint.map(str::to_owned),
        role,
        host_number,
        overlay_ipv4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::validate::health::health_row;

    #[test]
    fn pop_and_health_fields_are_checked() {
        let key = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=";
        let pop = |addr, pk, ep| {
            pop_row(&[
                Cell::Text("pop-1"),
                Cell::Text("sa"),
                addr,
                pk,
                ep,
                Cell::Text("pop"),
                Cell::Int(3),
                Cell::Null,
            ])
        };
        let host = |role, n, ipv4| {
            pop_row(&[
                Cell::Text("h"),
                Cell::Text("sa"),
                Cell::Null,
                Cell::Null,
                Cell::Null,
                Cell::Text(role),
                Cell::Int(n),
                ipv4,
            ])
        };
        let role = |role, n| host(role, n, Cell::Null);
        assert_eq!(
            role("host", 7).map(|p| (p.role, p.host_number)),
            Ok((HostRole::Host, 7))
        );
        assert!(pop(Cell::Null, Cell::Null, Cell::Null).is_ok());
        assert!(pop(
            Cell::Text("fd10::1"),
            Cell::Text(key),
            Cell::Text("pop1.example.net:51820")
        )
        .is_ok());
        assert!(pop(
            Cell::Text(""),
            Cell::Text(key),
            Cell::Text("[2001:db8::1]:51820")
        )
        .is_ok());
        let bad = [
            (pop(Cell::Text("10.50.0.1"), Cell::Null, Cell::Null), "IPv4"),
            (pop(Cell::Null, Cell::Text("abc"), Cell::Null), "public_key"),
            (
                pop(
                    Cell::Null,
                    Cell::Text("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmn="),
                    Cell::Null,
                ),
                "public_key",
            ),
            (pop(Cell::Null, Cell::Null, Cell::Text("host")), "endpoint"),
            (
                pop(Cell::Null, Cell::Null, Cell::Text("host:0")),
                "endpoint",
            ),
            (role("router", 1), "role"),
            (role("host", -1), "host_number"),
            (role("host", 1 << 40), "host_number"),
            (host("host", 1, Cell::Text("10.50.1")), "overlay_ipv4"),
        ];
        for (result, expected) in bad {
            match result {
                Ok(p) => panic!("expected a rejection mentioning {expected}, got {p:?}"),
                Err(reason) => assert!(reason.contains(expected), "{reason:?} vs {expected:?}"),
            }
        }
        let health = |status, rtt, at| {
            health_row(&[
                Cell::Text("pop-1"),
                Cell::Text("b1"),
                status,
                rtt,
                at,
                Cell::Text(""),
            ])
        };
        assert!(health(Cell::Text("up"), Cell::Null, Cell::Int(1)).is_ok());
        for (result, expected) in [
            (health(Cell::Text("UP"), Cell::Null, Cell::Int(1)), "status"),
            (
                health(Cell::Text("up"), Cell::Int(-5), Cell::Int(1)),
                "rtt_us",
            ),
            (
                health(Cell::Text("up"), Cell::Null, Cell::Int(-1)),
                "checked_at",
            ),
        ] {
            match result {
                Ok(h) => panic!("expected a rejection mentioning {expected}, got {h:?}"),
                Err(reason) => assert!(reason.contains(expected), "{reason:?} vs {expected:?}"),
            }
        }
    }
}
