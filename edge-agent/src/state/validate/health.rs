//! `health` rows: one POP's verdict on one backend, with a reason cut to a readable length.

use super::{
    cells::{arity, ranged, show, text, Cell},
    columns,
    fields::check_id,
};
use crate::model::{Health, HealthStatus};

/// Longer health reasons are cut: they are for people to read.
pub const MAX_REASON: usize = 512;

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

/// What the types of [`Health`] do not already guarantee.
pub fn check_health(h: &Health) -> Result<(), String> {
    check_id("pop_id", &h.pop_id)?;
    check_id("backend_id", &h.backend_id)?;
    if h.checked_at < 0 {
        return Err(format!("checked_at {} is before 1970", h.checked_at));
    }
    Ok(())
}

pub(super) fn health_row(c: &[Cell<'_>]) -> Result<Health, String> {
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
