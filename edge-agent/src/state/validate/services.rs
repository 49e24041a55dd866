//! `services` rows: an id, a unicast VIP and port, TCP only, and the health check.

use std::net::IpAddr;

use super::{
    cells::{arity, created_at, port, show, text, Cell},
    columns,
    fields::check_id,
};
use crate::model::{CheckSpec, Service};

pub fn check_vip(ip: IpAddr) -> Result<(), String> {
    let bad = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.to_ipv4_mapped().is_some(),
    };
    if bad {
        Err(format!(
            "vip {ip} is not a unicast address (IPv4 VIPs are written in IPv4 form)"
        ))
    } else {
        Ok(())
    }
}

fn parse_vip(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("vip {} is not an IP address", show(s)))?;
    check_vip(ip)?;
    Ok(ip)
}

/// What the types of [`Service`] do not already guarantee.
pub fn check_service(s: &Service) -> Result<(), String> {
    check_id("id", &s.id)?;
    check_vip(s.vip)?;
    if s.port == 0 {
        return Err("port 0 is out of range 1..=65535".to_owned());
    }
    Ok(())
}

/// A service and its `created_at`.
pub(super) fn service_row(c: &[Cell<'_>]) -> Result<(Service, i64), String> {
    arity(c, columns::SERVICES.len())?;
    let id = text(c[0], "id")?;
    check_id("id", id)?;
    let vip = parse_vip(text(c[1], "vip")?)?;
    let port = port(c[2])?;
    let proto = text(c[3], "proto")?;
    if proto != "tcp" {
        return Err(format!("proto {} is not supported (tcp only)", show(proto)));
    }
    let check = CheckSpec::parse_column(text(c[4], "health_check")?)?;
    let created = created_at(c[5])?;
    Ok((
        Service {
            id: id.to_owned(),
            vip,
            port,
            check,
        },
        created,
    ))
}
