//! One live v1 row into the v2 backend it becomes, with the health its `healthy` column says
//! and notes of what changed on the way, or the reason it is skipped.

use std::net::Ipv4Addr;

use super::ImportOptions;
use crate::{
    model::{Backend, BackendAddr, HealthStatus},
    state::validate::{self, found, show, Cell},
};

/// v2's defaults (the schema's), for v1 rows with NULL limits.
const DEFAULT_WEIGHT: u32 = 1;
const DEFAULT_SOFT_LIMIT: u32 = 100;
const DEFAULT_HARD_LIMIT: u32 = 1000;

pub(super) struct Planned {
    pub(super) backend: Backend,
    pub(super) status: HealthStatus,
    pub(super) notes: Vec<String>,
}

fn opt_limit(
    cell: Cell<'_>,
    col: &str,
    lo: i64,
    hi: i64,
    default: u32,
    notes: &mut Vec<String>,
) -> Result<u32, String> {
    match cell {
        Cell::Null => {
            notes.push(format!("{col} was NULL: v2 default {default}"));
            Ok(default)
        }
        Cell::Int(v) if (lo..=hi).contains(&v) => Ok(v as u32),
        Cell::Int(v) => Err(format!("{col} {v} is out of range {lo}..={hi}")),
        other => Err(format!("{col} must be an integer, found {}", found(other))),
    }
}

fn text<'a>(cell: Cell<'a>, col: &str) -> Result<&'a str, String> {
    match cell {
        Cell::Text(t) if !t.is_empty() => Ok(t),
        Cell::Text(_) | Cell::Null => Err(format!("{col} is empty")),
        other => Err(format!("{col} must be text, found {}", found(other))),
    }
}

pub(super) fn plan_row(c: &[Cell<'_>], opts: &ImportOptions) -> Result<Planned, String> {
    let mut notes = Vec::new();
    let id = text(c[0], "id")?;
    validate::check_id("id", id)?;
    let app = text(c[1], "app")?;
    validate::check_id("app", app)?;
    if !opts.vips.contains_key(app) {
        return Err(format!("no VIP given for app {}", show(app)));
    }
    let region = validate::parse_region(text(c[2], "region")?)?;
    let country = match c[3] {
        Cell::Null | Cell::Text("") => {
            return Err("no country; v2 needs one for the geo tiers".to_owned())
        }
        cell => validate::parse_country(text(cell, "country")?)?,
    };
    let wg_ip = text(c[4], "wg_ip")?;
    let addr = match wg_ip.parse::<Ipv4Addr>() {
        Ok(v4) => {
            let v6 = opts.ipv4.map(v4)?;
            validate::check_overlay_ip("derived address", v6)?;
            notes.push(format!("address {v6} derived from wg_ip {v4}"));
            BackendAddr::Ip(v6)
        }
        Err(_) => validate::parse_backend_addr(wg_ip)?,
    };
    let port = match c[5] {
        Cell::Int(p) if (1..=65535).contains(&p) => p as u16,
        Cell::Int(p) => return Err(format!("port {p} is out of range 1..=65535")),
        other => return Err(format!("port must be an integer, found {}", found(other))),
    };
    let status = match c[6] {
        Cell::Int(0) => HealthStatus::Down,
        Cell::Int(_) => HealthStatus::Up,
        _ => {
            notes.push("healthy was not an integer: health unknown".to_owned());
            HealthStatus::Unknown
        }
    };
    let weight = opt_limit(
        c[7],
        "weight",
        0,
        i64::from(validate::MAX_WEIGHT),
        DEFAULT_WEIGHT,
        &mut notes,
    )?;
    if weight > u32::from(u8::MAX) {
        notes.push(format!(
            "weight {weight}: v1 read it as {} (it kept weights in a u8)",
            weight % 256
        ));
    }
    let soft_limit = opt_limit(
        c[8],
        "soft_limit",
        1,
        i64::from(u32::MAX),
        DEFAULT_SOFT_LIMIT,
        &mut notes,
    )?;
    let hard_limit = opt_limit(
        c[9],
        "hard_limit",
        1,
        i64::from(u32::MAX),
        DEFAULT_HARD_LIMIT,
        &mut notes,
    )?;
    let backend = Backend {
        id: id.to_owned(),
        service: app.to_owned(),
        region,
        country,
        addr,
        port,
        weight,
        soft_limit,
        hard_limit,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    };
    validate::check_backend(&backend)?;
    Ok(Planned {
        backend,
        status,
        notes,
    })
}
