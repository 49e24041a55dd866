//! Turns rows into validated state. Source-agnostic: the local file and a Corrosion
//! subscription both hand over rows as [`Cell`]s in the column order of [`columns`].
//!
//! Every rejection is one [`RejectedRow`] with a one-line reason; values from the row are
//! quoted and shortened in reasons so that a hostile row cannot forge or flood log lines.
//! Where rows conflict (one VIP and port, one backend address and port, one DNS name), who
//! keeps it is decided by [`super::owners`], and the loser's reason names the winner.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use rusqlite::types::ValueRef;

use super::owners::{self, Claim, Incumbents, Standing};
use crate::model::{
    dns_label, Backend, BackendAddr, CheckSpec, Country, Health, HealthStatus, HostRole, Lease,
    Pop, Region, RejectedRow, Service, Snapshot,
};

/// The columns a source selects from each table, in the order the row parsers expect.
pub mod columns {
    pub const SERVICES: [&str; 6] = ["id", "vip", "port", "proto", "health_check", "created_at"];
    pub const BACKENDS: [&str; 17] = [
        "id",
        "service_id",
        "region",
        "country",
        "address",
        "port",
        "weight",
        "soft_limit",
        "hard_limit",
        "draining",
        "enabled",
        "metadata",
        "health_check",
        "heartbeat_at",
        "heartbeat_secs",
        "created_at",
        "lease_pop",
    ];
    pub const POPS: [&str; 8] = [
        "id",
        "region",
        "overlay_addr",
        "public_key",
        "endpoint",
        "role",
        "host_number",
        "overlay_ipv4",
    ];
    pub const SETTINGS: [&str; 2] = ["key", "value"];
    pub const HEALTH: [&str; 6] = [
        "pop_id",
        "backend_id",
        "status",
        "rtt_us",
        "checked_at",
        "reason",
    ];
}

pub const MAX_WEIGHT: u32 = 1000;

/// A heartbeat interval above a day is a typo.
pub const MAX_HEARTBEAT_SECS: u32 = 86_400;

/// Longer health reasons are cut: they are for people to read.
pub const MAX_REASON: usize = 512;
const MAX_ID_LEN: usize = 128;
const SHOWN_CHARS: usize = 64;

/// One value of a row, borrowed from wherever the row lives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cell<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    /// A blob, or text that is not UTF-8.
    Blob(&'a [u8]),
}

impl<'a> From<ValueRef<'a>> for Cell<'a> {
    fn from(v: ValueRef<'a>) -> Self {
        match v {
            ValueRef::Null => Cell::Null,
            ValueRef::Integer(i) => Cell::Int(i),
            ValueRef::Real(f) => Cell::Real(f),
            ValueRef::Text(t) => std::str::from_utf8(t).map_or(Cell::Blob(t), Cell::Text),
            ValueRef::Blob(b) => Cell::Blob(b),
        }
    }
}

/// A value from a row, quoted (control characters escaped) and shortened, for a reason line.
pub fn show(s: &str) -> String {
    let mut shown: String = s.chars().take(SHOWN_CHARS).collect();
    if shown.len() < s.len() {
        shown.push_str("...");
    }
    format!("{shown:?}")
}

pub(crate) fn found(cell: Cell<'_>) -> String {
    match cell {
        Cell::Null => "NULL".to_owned(),
        Cell::Int(i) => format!("integer {i}"),
        Cell::Real(f) => format!("real {f}"),
        Cell::Text(t) => format!("text {}", show(t)),
        Cell::Blob(b) => format!("a blob or non-UTF-8 text of {} bytes", b.len()),
    }
}

fn text<'a>(cell: Cell<'a>, col: &str) -> Result<&'a str, String> {
    match cell {
        Cell::Text(t) => Ok(t),
        other => Err(format!("{col} must be text, found {}", found(other))),
    }
}

/// NULL and the empty string both mean "not set".
fn opt_text<'a>(cell: Cell<'a>, col: &str) -> Result<Option<&'a str>, String> {
    match cell {
        Cell::Null | Cell::Text("") => Ok(None),
        other => text(other, col).map(Some),
    }
}

fn int(cell: Cell<'_>, col: &str) -> Result<i64, String> {
    match cell {
        Cell::Int(i) => Ok(i),
        other => Err(format!("{col} must be an integer, found {}", found(other))),
    }
}

fn ranged(cell: Cell<'_>, col: &str, lo: i64, hi: i64) -> Result<i64, String> {
    let v = int(cell, col)?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{col} {v} is out of range {lo}..={hi}"))
    }
}

fn flag(cell: Cell<'_>, col: &str) -> Result<bool, String> {
    match int(cell, col)? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(format!("{col} must be 0 or 1, found {v}")),
    }
}

fn port(cell: Cell<'_>) -> Result<u16, String> {
    let v = int(cell, "port")?;
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {v} is out of range 1..=65535"))
}

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
/// second ([`super::owners::registration_conflict`]) and the validator rejects it.
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

fn parse_overlay_ip(what: &str, s: &str) -> Result<Ipv6Addr, String> {
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
struct PopAddresses<'a> {
    ips: HashMap<Ipv6Addr, &'a str>,
    names: HashMap<String, &'a str>,
}

impl<'a> PopAddresses<'a> {
    fn of(pops: &'a [Pop]) -> Self {
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

    fn check(&self, addr: &BackendAddr) -> Result<(), String> {
        let pop = match addr {
            BackendAddr::Ip(ip) => self.ips.get(ip),
            BackendAddr::Name(name) => self.names.get(name),
        };
        match pop {
            Some(pop) => Err(format!(
                "address {} is POP {pop}'s own: the POP would forward flows to itself",
                crate::state::write::address_text(addr)
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

pub fn status_str(status: HealthStatus) -> &'static str {
    match status {
        HealthStatus::Unknown => "unknown",
        HealthStatus::Up => "up",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Down => "down",
    }
}

fn parse_status(s: &str) -> Result<HealthStatus, String> {
    match s {
        "unknown" => Ok(HealthStatus::Unknown),
        "up" => Ok(HealthStatus::Up),
        "degraded" => Ok(HealthStatus::Degraded),
        "down" => Ok(HealthStatus::Down),
        other => Err(format!(
            "status {} is not one of unknown, up, degraded, down",
            show(other)
        )),
    }
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

/// What the types of [`Health`] do not already guarantee.
pub fn check_health(h: &Health) -> Result<(), String> {
    check_id("pop_id", &h.pop_id)?;
    check_id("backend_id", &h.backend_id)?;
    if h.checked_at < 0 {
        return Err(format!("checked_at {} is before 1970", h.checked_at));
    }
    Ok(())
}

/// The row's key for a [`RejectedRow`]: the id as written when it is plain, else quoted.
pub(crate) fn key_text(cell: Cell<'_>) -> String {
    match cell {
        Cell::Text(t) if t.len() <= MAX_ID_LEN && t.bytes().all(|b| b.is_ascii_graphic()) => {
            t.to_owned()
        }
        Cell::Text(t) => show(t),
        Cell::Int(i) => i.to_string(),
        other => format!("<{}>", found(other)),
    }
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

fn arity(cells: &[Cell<'_>], n: usize) -> Result<(), String> {
    if cells.len() == n {
        Ok(())
    } else {
        Err(format!("expected {n} columns, found {}", cells.len()))
    }
}

/// A row's `created_at`: 0 (not known) or Unix seconds.
fn created_at(cell: Cell<'_>) -> Result<i64, String> {
    ranged(cell, "created_at", 0, i64::MAX)
}

/// A service and its `created_at`.
fn service_row(c: &[Cell<'_>]) -> Result<(Service, i64), String> {
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

/// A backend and its `created_at`.
fn backend_row(c: &[Cell<'_>]) -> Result<(Backend, i64), String> {
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
fn lease_of_rejected(c: &[Cell<'_>]) -> Option<(String, Lease)> {
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

fn pop_row(c: &[Cell<'_>]) -> Result<Pop, String> {
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

/// What a settings row must be: a key, and a value of sane length.
pub fn check_setting(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 {
        return Err("key must have 1 to 128 bytes".into());
    }
    if value.len() > 4096 {
        return Err("value longer than 4096 bytes".into());
    }
    Ok(())
}

fn setting_row(c: &[Cell<'_>]) -> Result<(String, String), String> {
    arity(c, columns::SETTINGS.len())?;
    let key = text(c[0], "key")?;
    let value = text(c[1], "value")?;
    check_setting(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

fn health_row(c: &[Cell<'_>]) -> Result<Health, String> {
    arity(c, columns::HEALTH.len())?;
    let pop_id = text(c[0], "pop_id")?;
    check_id("pop_id", pop_id)?;
    let backend_id = text(c[1], "backend_id")?;
    check_id("backend_id", backend_id)?;
    let status = parse_status(text(c[2], "status")?)?;
    let rtt_us = match c[3] {
        Cell::Null => None,
        other => Some(ranged(other, "rtt_us", 0, i64::from(u32::MAX))? as u32),
    };
    let checked_at = ranged(c[4], "checked_at", 0, i64::MAX)?;
    let reason = text(c[5], "reason")?;
    Ok(Health {
        pop_id: pop_id.to_owned(),
        backend_id: backend_id.to_owned(),
        status,
        rtt_us,
        checked_at,
        reason: reason.chars().take(MAX_REASON).collect(),
    })
}

/// A row that can contend for a key.
trait Contender {
    fn id(&self) -> &str;
    fn standing(&self, now_unix: i64) -> Standing;
}

impl Contender for Service {
    fn id(&self) -> &str {
        &self.id
    }

    fn standing(&self, _: i64) -> Standing {
        // Only operators write services.
        Standing::Operator
    }
}

impl Contender for Backend {
    fn id(&self) -> &str {
        &self.id
    }

    fn standing(&self, now_unix: i64) -> Standing {
        Standing::of(self, now_unix)
    }
}

/// Settles the contests over `key` among `rows` (with their `created_at`): the winners in
/// their order, and one rejection per loser, whose reason (`reason`, given the winner's id)
/// names the winner and says why it won.
fn settle<T: Contender, K: std::hash::Hash + Eq>(
    table: &'static str,
    rows: Vec<(T, i64)>,
    now_unix: i64,
    key: impl Fn(&T) -> Option<K>,
    incumbents: &HashMap<K, String>,
    reason: impl Fn(&T, &str) -> String,
) -> (Vec<(T, i64)>, Vec<RejectedRow>) {
    let mut losing: HashMap<usize, String> = HashMap::new();
    {
        let claims: Vec<(Claim<'_>, Option<K>)> = rows
            .iter()
            .map(|(row, created)| {
                let claim = Claim {
                    id: row.id(),
                    standing: row.standing(now_unix),
                    created_at: *created,
                };
                (claim, key(row))
            })
            .collect();
        for l in owners::contests(&claims, incumbents) {
            let winner = claims[l.winner].0.id;
            let text = format!("{} ({})", reason(&rows[l.loser].0, winner), l.why);
            losing.insert(l.loser, text);
        }
    }
    let mut kept = Vec::with_capacity(rows.len());
    let mut rejected = Vec::new();
    for (i, (row, created)) in rows.into_iter().enumerate() {
        match losing.remove(&i) {
            Some(reason) => rejected.push(RejectedRow {
                table,
                key: row.id().to_owned(),
                reason,
            }),
            None => kept.push((row, created)),
        }
    }
    (kept, rejected)
}

/// Collects rows of all tables in any order (a replicated source may deliver a backend before
/// its service), then checks what spans rows.
#[derive(Debug, Default)]
pub struct SnapshotBuilder<'i> {
    /// Rows with their `created_at`.
    services: Vec<(Service, i64)>,
    backends: Vec<(Backend, i64)>,
    pops: Vec<Pop>,
    health: Vec<Health>,
    settings: std::collections::BTreeMap<String, String>,
    leases: std::collections::BTreeMap<String, Lease>,
    rejected: Vec<RejectedRow>,
    rejected_services: HashSet<String>,
    rejected_backends: HashSet<String>,
    /// Who held what in the source's previous snapshot.
    incumbents: Option<&'i Incumbents>,
    /// Unix seconds the leases are judged at; `None`: the clock, when finishing.
    now: Option<i64>,
}

impl<'i> SnapshotBuilder<'i> {
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder that knows what the source's previous snapshot held (see
    /// [`super::owners`]): sources keep the [`Incumbents`] of the snapshot they last handed
    /// out and pass them here.
    pub fn with_incumbents(incumbents: &'i Incumbents) -> Self {
        SnapshotBuilder {
            incumbents: Some(incumbents),
            ..Self::default()
        }
    }

    /// Judges leases at `now_unix` instead of the clock (tests).
    pub fn at(mut self, now_unix: i64) -> Self {
        self.now = Some(now_unix);
        self
    }

    fn reject(&mut self, table: &'static str, key: String, reason: String) {
        self.rejected.push(RejectedRow { table, key, reason });
    }

    /// Records the losers of [`settle`]: their backends (or health rows) go with them.
    fn lost(&mut self, lost: Vec<RejectedRow>) {
        for r in lost {
            match r.table {
                "services" => self.rejected_services.insert(r.key.clone()),
                _ => self.rejected_backends.insert(r.key.clone()),
            };
            self.rejected.push(r);
        }
    }

    /// A `services` row, columns as in [`columns::SERVICES`].
    pub fn service(&mut self, cells: &[Cell<'_>]) {
        match service_row(cells) {
            Ok(row) => self.services.push(row),
            Err(reason) => {
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.rejected_services.insert(key.clone());
                self.reject("services", key, reason);
            }
        }
    }

    /// A `backends` row, columns as in [`columns::BACKENDS`].
    pub fn backend(&mut self, cells: &[Cell<'_>]) {
        match backend_row(cells) {
            Ok(row) => {
                if let Some(lease) = &row.0.lease {
                    self.leases.insert(row.0.id.clone(), lease.clone());
                }
                self.backends.push(row);
            }
            Err(reason) => {
                if let Some((id, lease)) = lease_of_rejected(cells) {
                    self.leases.insert(id, lease);
                }
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.rejected_backends.insert(key.clone());
                self.reject("backends", key, reason);
            }
        }
    }

    /// A `settings` row, columns as in [`columns::SETTINGS`].
    pub fn setting(&mut self, cells: &[Cell<'_>]) {
        match setting_row(cells) {
            Ok((k, v)) => {
                self.settings.insert(k, v);
            }
            Err(reason) => {
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.reject("settings", key, reason);
            }
        }
    }

    /// A `pops` row, columns as in [`columns::POPS`].
    pub fn pop(&mut self, cells: &[Cell<'_>]) {
        match pop_row(cells) {
            Ok(p) => self.pops.push(p),
            Err(reason) => {
                let key = cells.first().map_or_else(String::new, |c| key_text(*c));
                self.reject("pops", key, reason);
            }
        }
    }

    /// A `health` row, columns as in [`columns::HEALTH`].
    pub fn health(&mut self, cells: &[Cell<'_>]) {
        match health_row(cells) {
            Ok(h) => self.health.push(h),
            Err(reason) => {
                let part = |i: usize| cells.get(i).map_or_else(String::new, |c| key_text(*c));
                let key = format!("{}/{}", part(0), part(1));
                self.reject("health", key, reason);
            }
        }
    }

    pub fn finish(mut self) -> (Snapshot, Vec<RejectedRow>) {
        let mut snap = Snapshot::default();
        let now = self.now.unwrap_or_else(crate::model::unix_now);
        let none = Incumbents::default();
        let incumbents = self.incumbents.unwrap_or(&none);

        // Sorted so that the output, and the order of rejections, do not depend on the order
        // rows arrived in; who wins a conflict is [`owners`]' verdict, not this order.
        self.services.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let mut unique = Vec::new();
        for (s, created) in std::mem::take(&mut self.services) {
            if unique
                .last()
                .is_some_and(|(last, _): &(Service, i64)| last.id == s.id)
            {
                self.reject("services", s.id, "duplicate id".to_owned());
            } else {
                unique.push((s, created));
            }
        }
        let (unique, lost) = settle(
            "services",
            unique,
            now,
            |s| Some((s.vip, s.port)),
            &incumbents.vips,
            |s, winner| {
                format!(
                    "{} is also service {winner}, which keeps it",
                    SocketAddr::new(s.vip, s.port)
                )
            },
        );
        self.lost(lost);
        let (unique, lost) = settle(
            "services",
            unique,
            now,
            |s| dns_label(&s.id),
            &incumbents.service_labels,
            |s, winner| {
                format!(
                    "its DNS name {}.services.internal is also service {winner}'s (ids that \
                     differ only in case or punctuation are one name), which keeps it",
                    dns_label(&s.id).unwrap_or_default()
                )
            },
        );
        self.lost(lost);
        let services: HashSet<String> = unique.iter().map(|(s, _)| s.id.clone()).collect();
        snap.services = unique.into_iter().map(|(s, _)| s).collect();

        // POPs before backends: a backend may not be a POP's own address.
        self.pops.sort_by(|a, b| a.id.cmp(&b.id));
        for p in std::mem::take(&mut self.pops) {
            if snap.pops.last().is_some_and(|last| last.id == p.id) {
                self.reject("pops", p.id, "duplicate id".to_owned());
            } else {
                snap.pops.push(p);
            }
        }

        self.backends.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let pop_addresses = PopAddresses::of(&snap.pops);
        let mut kept: Vec<(Backend, i64)> = Vec::new();
        let mut last_id: Option<String> = None;
        for (b, created) in std::mem::take(&mut self.backends) {
            if last_id.as_ref() == Some(&b.id) {
                self.rejected_backends.insert(b.id.clone());
                self.reject("backends", b.id, "duplicate id".to_owned());
                continue;
            }
            last_id = Some(b.id.clone());
            let reason = if self.rejected_services.contains(&b.service) {
                Some(format!("its service {} is rejected", show(&b.service)))
            } else if !services.contains(&b.service) {
                Some(format!("unknown service {}", show(&b.service)))
            } else {
                pop_addresses.check(&b.addr).err()
            };
            match reason {
                Some(reason) => {
                    self.rejected_backends.insert(b.id.clone());
                    self.reject("backends", b.id, reason);
                }
                None => kept.push((b, created)),
            }
        }
        let (kept, lost) = settle(
            "backends",
            kept,
            now,
            |b| Some((b.service.clone(), b.addr.clone(), b.port)),
            &incumbents.endpoints,
            |b, winner| {
                format!(
                    "same address and port as backend {winner} of its service {}, which keeps \
                     them",
                    b.service
                )
            },
        );
        self.lost(lost);
        let (kept, lost) = settle(
            "backends",
            kept,
            now,
            |b| dns_label(&b.id),
            &incumbents.backend_labels,
            |b, winner| {
                format!(
                    "its DNS name {}.instances.internal is also backend {winner}'s (ids that \
                     differ only in case or punctuation are one name), which keeps it",
                    dns_label(&b.id).unwrap_or_default()
                )
            },
        );
        self.lost(lost);
        let backends: HashSet<String> = kept.iter().map(|(b, _)| b.id.clone()).collect();
        snap.backends = kept.into_iter().map(|(b, _)| b).collect();

        snap.settings = std::mem::take(&mut self.settings);
        snap.leases = std::mem::take(&mut self.leases);

        self.health
            .sort_by(|a, b| (&a.pop_id, &a.backend_id).cmp(&(&b.pop_id, &b.backend_id)));
        for h in std::mem::take(&mut self.health) {
            let key = || format!("{}/{}", h.pop_id, h.backend_id);
            let reason = if snap
                .health
                .last()
                .is_some_and(|l| l.pop_id == h.pop_id && l.backend_id == h.backend_id)
            {
                Some("duplicate key".to_owned())
            } else if self.rejected_backends.contains(&h.backend_id) {
                Some(format!("its backend {} is rejected", show(&h.backend_id)))
            } else if !backends.contains(&h.backend_id) {
                Some(format!("unknown backend {}", show(&h.backend_id)))
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    let key = key();
                    self.reject("health", key, reason);
                }
                None => snap.health.push(h),
            }
        }

        (snap, self.rejected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend_cells<'a>(over: &[(usize, Cell<'a>)]) -> Vec<Cell<'a>> {
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

    #[test]
    fn hostile_values_stay_on_one_short_line() {
        let long = format!("evil\nINFO forged line {}", "x".repeat(10_000));
        let mut builder = SnapshotBuilder::new();
        builder.backend(&backend_cells(&[(0, Cell::Text(&long))]));
        for column in [2, 3, 4, 11] {
            builder.backend(&backend_cells(&[(column, Cell::Text(&long))]));
        }
        let (_, rejected) = builder.finish();
        assert_eq!(rejected.len(), 5, "{rejected:#?}");
        for r in &rejected {
            assert!(!r.key.contains('\n') && !r.reason.contains('\n'), "{r:?}");
            assert!(r.key.len() < 200 && r.reason.len() < 300, "{r:?}");
        }
    }

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

    #[test]
    fn cross_row_rules() {
        let mut b = SnapshotBuilder::new();
        // Backends and health first: the order of arrival does not matter.
        b.backend(&backend_cells(&[]));
        b.backend(&backend_cells(&[(0, Cell::Text("b2"))]));
        b.backend(&backend_cells(&[
            (0, Cell::Text("b3")),
            (1, Cell::Text("nope")),
        ]));
        b.backend(&backend_cells(&[
            (0, Cell::Text("b4")),
            (1, Cell::Text("web2")),
        ]));
        b.health(&[
            Cell::Text("p"),
            Cell::Text("b1"),
            Cell::Text("up"),
            Cell::Null,
            Cell::Int(0),
            Cell::Text(""),
        ]);
        b.health(&[
            Cell::Text("p"),
            Cell::Text("b3"),
            Cell::Text("up"),
            Cell::Null,
            Cell::Int(0),
            Cell::Text(""),
        ]);
        b.health(&[
            Cell::Text("p"),
            Cell::Text("gone"),
            Cell::Text("up"),
            Cell::Null,
            Cell::Int(0),
            Cell::Text(""),
        ]);
        b.service(&[
            Cell::Text("web"),
            Cell::Text("192.0.2.1"),
            Cell::Int(80),
            Cell::Text("tcp"),
            Cell::Text(""),
            Cell::Int(0),
        ]);
        // Neither age nor a previous snapshot tells: the lower id wins a contested VIP,
        // whichever row came first.
        b.service(&[
            Cell::Text("web2"),
            Cell::Text("192.0.2.1"),
            Cell::Int(80),
            Cell::Text("tcp"),
            Cell::Text(""),
            Cell::Int(0),
        ]);
        b.service(&[
            Cell::Text("udp"),
            Cell::Text("192.0.2.2"),
            Cell::Int(53),
            Cell::Text("udp"),
            Cell::Text(""),
            Cell::Int(0),
        ]);
        let (snap, rejected) = b.finish();
        let ids: Vec<&str> = snap.backends.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["b1"]);
        assert_eq!(snap.services.len(), 1);
        assert_eq!(snap.health.len(), 1);
        let reason = |table: &str, key: &str| {
            rejected
                .iter()
                .find(|r| r.table == table && r.key == key)
                .map(|r| r.reason.clone())
                .unwrap_or_default()
        };
        assert!(reason("services", "web2").contains("is also service web"));
        assert!(reason("services", "udp").contains("tcp only"));
        assert!(reason("backends", "b2").contains("same address and port as backend b1"));
        assert!(reason("backends", "b3").contains("unknown service"));
        assert!(reason("backends", "b4").contains("service \"web2\" is rejected"));
        assert!(reason("health", "p/b3").contains("backend \"b3\" is rejected"));
        assert!(reason("health", "p/gone").contains("unknown backend"));
        assert_eq!(rejected.len(), 7, "{rejected:#?}");
    }

    const NOW: i64 = 1_700_000_000;

    fn service_cells<'a>(id: &'a str, vip: &'a str, created: i64) -> [Cell<'a>; 6] {
        [
            Cell::Text(id),
            Cell::Text(vip),
            Cell::Int(80),
            Cell::Text("tcp"),
            Cell::Text(""),
            Cell::Int(created),
        ]
    }

    /// A registration's cells: a lease of 10 s renewed at `renewed`, accepted by pop-a.
    fn registration<'a>(id: &'a str, addr: &'a str, renewed: i64, created: i64) -> Vec<Cell<'a>> {
        backend_cells(&[
            (0, Cell::Text(id)),
            (4, Cell::Text(addr)),
            (13, Cell::Int(renewed)),
            (14, Cell::Int(10)),
            (15, Cell::Int(created)),
            (16, Cell::Text("pop-a")),
        ])
    }

    fn reason_of(rejected: &[RejectedRow], table: &str, key: &str) -> String {
        rejected
            .iter()
            .find(|r| r.table == table && r.key == key)
            .map(|r| r.reason.clone())
            .unwrap_or_else(|| panic!("expected {table} {key:?} rejected, got {rejected:#?}"))
    }

    fn ids(snap: &Snapshot) -> Vec<&str> {
        snap.backends.iter().map(|b| b.id.as_str()).collect()
    }

    #[test]
    fn registrations_never_displace_an_operators_backend() {
        // The case: registrations whose ids sort first (and which are older, and held
        // the endpoint before) on the address and port of an operator's row.
        let mut previous = Snapshot::default();
        let mut b = SnapshotBuilder::new().at(NOW);
        b.service(&service_cells("web", "192.0.2.1", 0));
        b.backend(&backend_cells(&[
            (0, Cell::Text("web-op")),
            (15, Cell::Int(NOW)),
        ]));
        b.backend(&registration("E4B1", "fd10:0:1::2", NOW, 5));
        b.backend(&registration("00", "fd10:0:1::2", NOW, 1));
        let (snap, rejected) = b.finish();
        assert_eq!(ids(&snap), ["web-op"], "{rejected:#?}");
        for loser in ["E4B1", "00"] {
            let reason = reason_of(&rejected, "backends", loser);
            assert!(
                reason.contains("backend web-op")
                    && reason.contains("an operator's row wins over a live registration"),
                "{loser}: expected a reason naming web-op and why, got {reason:?}"
            );
        }
        // Even when the registration held the endpoint in the previous snapshot.
        previous.backends = snap.backends.clone();
        previous.backends[0].id = "E4B1".into();
        previous.backends[0].lease = snap.leases.get("E4B1").cloned();
        let held = Incumbents::of(&previous);
        let mut b = SnapshotBuilder::with_incumbents(&held).at(NOW);
        b.service(&service_cells("web", "192.0.2.1", 0));
        b.backend(&registration("E4B1", "fd10:0:1::2", NOW, 5));
        b.backend(&backend_cells(&[(0, Cell::Text("web-op"))]));
        let (snap, _) = b.finish();
        assert_eq!(
            ids(&snap),
            ["web-op"],
            "the operator's row wins over an incumbent"
        );
    }

    #[test]
    fn a_new_service_row_does_not_take_a_live_services_vip() {
        // Ages known: the older keeps it, whatever the ids.
        let mut b = SnapshotBuilder::new().at(NOW);
        b.service(&service_cells("web", "192.0.2.1", 1000));
        b.service(&service_cells("0-takeover", "192.0.2.1", 2000));
        let (snap, rejected) = b.finish();
        assert_eq!(snap.services.len(), 1);
        assert_eq!(snap.services[0].id, "web", "{rejected:#?}");
        let reason = reason_of(&rejected, "services", "0-takeover");
        assert!(
            reason.contains("is also service web") && reason.contains("it is older"),
            "{reason:?}"
        );

        // A row typed in without created_at on a live service, and services from before the
        // column: the one live in the previous snapshot keeps it.
        let (live, _) = {
            let mut b = SnapshotBuilder::new().at(NOW);
            b.service(&service_cells("web", "192.0.2.1", 1000));
            b.finish()
        };
        for web_created in [1000, 0] {
            let held = Incumbents::of(&live);
            let mut b = SnapshotBuilder::with_incumbents(&held).at(NOW);
            b.service(&service_cells("0-takeover", "192.0.2.1", 0));
            b.service(&service_cells("web", "192.0.2.1", web_created));
            let (snap, rejected) = b.finish();
            assert_eq!(
                snap.services
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>(),
                ["web"],
                "web created_at {web_created}: {rejected:#?}"
            );
            let reason = reason_of(&rejected, "services", "0-takeover");
            assert!(reason.contains("held it before"), "{reason:?}");
        }
    }

    #[test]
    fn ids_that_differ_in_case_are_one_name_never_two_backends() {
        let mut b = SnapshotBuilder::new().at(NOW);
        b.service(&service_cells("web", "192.0.2.1", 0));
        b.service(&service_cells("WEB", "192.0.2.2", 5));
        b.backend(&registration("e4b1", "fd10:0:1::2", NOW, 10));
        b.backend(&registration("E4b1", "fd10:0:1::3", NOW, 20));
        b.backend(&registration("e4_b1", "fd10:0:1::4", NOW, 30));
        b.backend(&registration("E4-B1", "fd10:0:1::5", NOW, 40));
        let (snap, rejected) = b.finish();
        assert_eq!(ids(&snap), ["e4_b1", "e4b1"], "{rejected:#?}");
        for (twin, name, winner) in [("E4b1", "e4b1", "e4b1"), ("E4-B1", "e4-b1", "e4_b1")] {
            let reason = reason_of(&rejected, "backends", twin);
            assert!(
                reason.contains(&format!(
                    "{name}.instances.internal is also backend {winner}'s"
                )) && reason.contains("it is older"),
                "{twin}: {reason:?}"
            );
        }
        let reason = reason_of(&rejected, "services", "WEB");
        assert!(
            reason.contains("web.services.internal is also service web's"),
            "{reason:?}"
        );
    }

    #[test]
    fn a_lease_that_ran_out_holds_nothing_and_is_listed_for_deletion() {
        let mut b = SnapshotBuilder::new().at(NOW);
        b.service(&service_cells("web", "192.0.2.1", 0));
        // Older, but its lease ran out (renewed 31 s ago, 10 s interval).
        b.backend(&registration("aaa", "fd10:0:1::2", NOW - 31, 1));
        b.backend(&registration("zzz", "fd10:0:1::2", NOW, 100));
        // A registration that no longer parses still has a lease to run out.
        b.backend(&backend_cells(&[
            (0, Cell::Text("broken")),
            (4, Cell::Text("not an address")),
            (13, Cell::Int(NOW - 100)),
            (14, Cell::Int(10)),
            (16, Cell::Text("pop-b")),
        ]));
        let (snap, rejected) = b.finish();
        assert_eq!(ids(&snap), ["zzz"], "{rejected:#?}");
        let reason = reason_of(&rejected, "backends", "aaa");
        assert!(
            reason.contains("a live registration wins over a registration whose lease ran out"),
            "{reason:?}"
        );
        let leases: Vec<(&str, i64, &str)> = snap
            .leases
            .iter()
            .map(|(id, l)| (id.as_str(), l.renewed_at, l.pop.as_str()))
            .collect();
        assert_eq!(
            leases,
            [
                ("aaa", NOW - 31, "pop-a"),
                ("broken", NOW - 100, "pop-b"),
                ("zzz", NOW, "pop-a")
            ],
            "every registration's lease, rejected rows' too"
        );
    }

    #[test]
    fn a_backend_at_a_pops_own_address_is_rejected() {
        let pop = |id, role, addr| {
            [
                Cell::Text(id),
                Cell::Text("sa"),
                Cell::Text(addr),
                Cell::Null,
                Cell::Null,
                Cell::Text(role),
                Cell::Int(1),
                Cell::Null,
            ]
        };
        let mut b = SnapshotBuilder::new().at(NOW);
        b.service(&service_cells("web", "192.0.2.1", 0));
        b.pop(&pop("pop-1", "pop", "fd10::1"));
        b.pop(&pop("host-1", "host", "fd10::9"));
        b.backend(&backend_cells(&[
            (0, Cell::Text("at-pop")),
            (4, Cell::Text("fd10::1")),
        ]));
        b.backend(&backend_cells(&[
            (0, Cell::Text("named-pop")),
            (4, Cell::Text("pop-1.hosts.internal")),
        ]));
        b.backend(&backend_cells(&[
            (0, Cell::Text("on-host")),
            (4, Cell::Text("host-1.hosts.internal")),
        ]));
        let (snap, rejected) = b.finish();
        assert_eq!(ids(&snap), ["on-host"], "{rejected:#?}");
        for id in ["at-pop", "named-pop"] {
            let reason = reason_of(&rejected, "backends", id);
            assert!(reason.contains("POP pop-1's own"), "{id}: {reason:?}");
        }
    }

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
