//! Writes as statements with parameters: the local file executes them, and a Corrosion source
//! can send the very same statements to `POST /v1/transactions`, a JSON array of Corrosion's
//! verbose statements `{"query": sql, "params": [...]}`, which is how a [`Stmt`] serializes. Each builder refuses a value the readers would reject, so that the
//! agent never writes a row it would then throw away.

use serde::Serialize;

use super::{validate, StateError};
use crate::model::{Backend, CheckSpec, Health, Pop, Service};

/// A statement parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Param {
    Null,
    Int(i64),
    Text(String),
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(match self {
            Param::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Param::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Param::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl From<&str> for Param {
    fn from(s: &str) -> Self {
        Param::Text(s.to_owned())
    }
}

impl From<String> for Param {
    fn from(s: String) -> Self {
        Param::Text(s)
    }
}

impl From<i64> for Param {
    fn from(i: i64) -> Self {
        Param::Int(i)
    }
}

impl From<u32> for Param {
    fn from(i: u32) -> Self {
        Param::Int(i64::from(i))
    }
}

impl From<u16> for Param {
    fn from(i: u16) -> Self {
        Param::Int(i64::from(i))
    }
}

impl From<bool> for Param {
    fn from(b: bool) -> Self {
        Param::Int(i64::from(b))
    }
}

impl<T: Into<Param>> From<Option<T>> for Param {
    fn from(v: Option<T>) -> Self {
        v.map_or(Param::Null, Into::into)
    }
}

/// One statement of a write. A write is a list of them, applied in one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stmt {
    #[serde(rename = "query")]
    pub sql: &'static str,
    pub params: Vec<Param>,
    /// Which row the statement targets, for [`StateError::NotFound`] when it must exist.
    #[serde(skip)]
    pub must_exist: Option<(&'static str, String)>,
    /// When set, a row that must exist but was not changed is there and not the writer's:
    /// [`StateError::Conflict`] with this reason instead of `NotFound`.
    #[serde(skip)]
    pub conflict: Option<String>,
}

impl Stmt {
    fn new(sql: &'static str, params: Vec<Param>) -> Self {
        Stmt {
            sql,
            params,
            must_exist: None,
            conflict: None,
        }
    }

    fn must_exist(mut self, table: &'static str, key: &str) -> Self {
        self.must_exist = Some((table, key.to_owned()));
        self
    }

    fn or_conflict(mut self, reason: &str) -> Self {
        self.conflict = Some(reason.to_owned());
        self
    }

    /// The error `rows` changed rows make, for a statement whose row must exist.
    pub fn none_error(&self, rows: u64) -> Option<StateError> {
        let (table, key) = self.must_exist.as_ref().filter(|_| rows == 0)?;
        let (table, key) = (*table, key.clone());
        Some(match &self.conflict {
            Some(reason) => StateError::Conflict {
                table,
                key,
                reason: reason.clone(),
            },
            None => StateError::NotFound { table, key },
        })
    }
}

fn invalid(table: &'static str, key: &str) -> impl FnOnce(String) -> StateError {
    let key = key.to_owned();
    move |reason| StateError::Invalid { table, key, reason }
}

/// `created_at` is set when the row is first written, and kept by every later write: who
/// keeps a contested VIP goes by it ([`super::owners`]). A row from before the column keeps 0
/// (not known) rather than look new.
pub fn upsert_service(s: &Service, now: i64) -> Result<Vec<Stmt>, StateError> {
    validate::check_service(s).map_err(invalid("services", &s.id))?;
    Ok(vec![Stmt::new(
        "INSERT INTO services (id, vip, port, proto, health_check, updated_at, created_at) \
         VALUES (?1, ?2, ?3, 'tcp', ?4, ?5, ?5) \
         ON CONFLICT (id) DO UPDATE SET vip = excluded.vip, port = excluded.port, \
         proto = excluded.proto, health_check = excluded.health_check, \
         updated_at = excluded.updated_at",
        vec![
            s.id.as_str().into(),
            s.vip.to_string().into(),
            s.port.into(),
            CheckSpec::column(s.check.as_ref()).into(),
            now.into(),
        ],
    )])
}

/// Inserts or replaces every column but `metadata`, which belongs to the backend's own
/// registration and is kept, and `created_at` (see [`upsert_service`]). An operator's write: it
/// replaces a registration of the same id too (operators own every row).
pub fn upsert_backend(b: &Backend, now: i64) -> Result<Vec<Stmt>, StateError> {
    validate::check_backend(b).map_err(invalid("backends", &b.id))?;
    Ok(vec![Stmt::new(UPSERT_BACKEND, backend_params(b, now))])
}

/// The upsert of a backend row; the registration's adds a condition to its update.
macro_rules! upsert_backend_sql {
    () => {
        "INSERT INTO backends (id, service_id, region, country, address, port, weight, \
         soft_limit, hard_limit, draining, enabled, health_check, heartbeat_at, heartbeat_secs, \
         updated_at, created_at, lease_pop) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?16) \
         ON CONFLICT (id) DO UPDATE SET service_id = excluded.service_id, \
         region = excluded.region, country = excluded.country, address = excluded.address, \
         port = excluded.port, weight = excluded.weight, soft_limit = excluded.soft_limit, \
         hard_limit = excluded.hard_limit, draining = excluded.draining, \
         enabled = excluded.enabled, health_check = excluded.health_check, \
         heartbeat_at = excluded.heartbeat_at, heartbeat_secs = excluded.heartbeat_secs, \
         updated_at = excluded.updated_at, lease_pop = excluded.lease_pop"
    };
}

const UPSERT_BACKEND: &str = upsert_backend_sql!();

/// [`UPSERT_BACKEND`] for a registration: the update only applies to a row that is a
/// registration itself, so a registration never overwrites an operator's row of its id.
const REGISTER_BACKEND: &str = concat!(upsert_backend_sql!(), " WHERE backends.heartbeat_secs > 0");

fn backend_params(b: &Backend, now: i64) -> Vec<Param> {
    vec![
        b.id.as_str().into(),
        b.service.as_str().into(),
        b.region.as_str().into(),
        b.country.code().into(),
        validate::address_text(&b.addr).into(),
        b.port.into(),
        b.weight.into(),
        b.soft_limit.into(),
        b.hard_limit.into(),
        b.draining.into(),
        b.enabled.into(),
        CheckSpec::column(b.check.as_ref()).into(),
        b.lease.as_ref().map_or(0, |l| l.renewed_at).into(),
        b.lease.as_ref().map_or(0, |l| l.interval_secs).into(),
        now.into(),
        b.lease.as_ref().map_or("", |l| l.pop.as_str()).into(),
    ]
}

fn set_backend(sql: &'static str, id: &str, value: Param, now: i64) -> Vec<Stmt> {
    vec![Stmt::new(sql, vec![value, now.into(), id.into()]).must_exist("backends", id)]
}

pub fn set_backend_enabled(id: &str, enabled: bool, now: i64) -> Vec<Stmt> {
    set_backend(
        "UPDATE backends SET enabled = ?1, updated_at = ?2 WHERE id = ?3",
        id,
        enabled.into(),
        now,
    )
}

pub fn set_backend_draining(id: &str, draining: bool, now: i64) -> Vec<Stmt> {
    set_backend(
        "UPDATE backends SET draining = ?1, updated_at = ?2 WHERE id = ?3",
        id,
        draining.into(),
        now,
    )
}

pub fn set_backend_weight(id: &str, weight: u32, now: i64) -> Result<Vec<Stmt>, StateError> {
    if weight > validate::MAX_WEIGHT {
        return Err(StateError::Invalid {
            table: "backends",
            key: id.to_owned(),
            reason: format!(
                "weight {weight} is out of range 0..={}",
                validate::MAX_WEIGHT
            ),
        });
    }
    Ok(set_backend(
        "UPDATE backends SET weight = ?1, updated_at = ?2 WHERE id = ?3",
        id,
        weight.into(),
        now,
    ))
}

/// A backend's own registration: every column, its metadata (a JSON object) included. The
/// lease's POP is the one whose API accepted it. On an operator's row of the same id it
/// changes nothing and fails with [`StateError::Conflict`].
pub fn register_backend(b: &Backend, metadata: &str, now: i64) -> Result<Vec<Stmt>, StateError> {
    validate::check_backend(b).map_err(invalid("backends", &b.id))?;
    if b.lease.is_none() {
        return Err(StateError::Invalid {
            table: "backends",
            key: b.id.clone(),
            reason: "a registration has a lease".to_owned(),
        });
    }
    if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(metadata).is_err() {
        return Err(StateError::Invalid {
            table: "backends",
            key: b.id.clone(),
            reason: "metadata is not a JSON object".to_owned(),
        });
    }
    Ok(vec![
        Stmt::new(REGISTER_BACKEND, backend_params(b, now)),
        Stmt::new(
            "UPDATE backends SET metadata = ?1, updated_at = ?2 WHERE id = ?3 \
             AND heartbeat_secs > 0",
            vec![metadata.into(), now.into(), b.id.as_str().into()],
        )
        .must_exist("backends", &b.id)
        .or_conflict("an operator's backend row has this id; a registration cannot replace it"),
    ])
}

/// A heartbeat: renews the lease of a registered backend (one that has a lease), which
/// becomes `pop`'s (the POP whose API took the heartbeat deletes the row if it stops).
pub fn renew_lease(id: &str, now: i64, pop: &str) -> Vec<Stmt> {
    vec![Stmt::new(
        "UPDATE backends SET heartbeat_at = ?1, updated_at = ?1, lease_pop = ?2 \
         WHERE id = ?3 AND heartbeat_secs > 0",
        vec![now.into(), pop.into(), id.into()],
    )
    .must_exist("backends", id)]
}

/// Deletes a registration whose lease ran out, with every POP's health rows about it, if
/// its lease is still the one that ran out (renewed at `renewed_at`): a heartbeat that came
/// in meanwhile keeps it. Nothing to delete is not an error: another POP may have done it.
pub fn delete_expired(id: &str, renewed_at: i64) -> Vec<Stmt> {
    vec![
        Stmt::new(
            "DELETE FROM health WHERE backend_id = ?1 AND backend_id IN \
             (SELECT id FROM backends WHERE id = ?1 AND heartbeat_secs > 0 \
             AND heartbeat_at = ?2)",
            vec![id.into(), renewed_at.into()],
        ),
        Stmt::new(
            "DELETE FROM backends WHERE id = ?1 AND heartbeat_secs > 0 AND heartbeat_at = ?2",
            vec![id.into(), renewed_at.into()],
        ),
    ]
}

/// A registered backend leaves: like [`delete_backend`], for rows with a lease only (a row
/// typed in by an operator is not the API's to remove).
pub fn deregister_backend(id: &str) -> Vec<Stmt> {
    vec![
        Stmt::new(
            "DELETE FROM health WHERE backend_id = ?1 \
             AND backend_id IN (SELECT id FROM backends WHERE heartbeat_secs > 0)",
            vec![id.into()],
        ),
        Stmt::new(
            "DELETE FROM backends WHERE id = ?1 AND heartbeat_secs > 0",
            vec![id.into()],
        )
        .must_exist("backends", id),
    ]
}

/// Removes the backend and every POP's health rows about it: they would only be rejected as
/// rows of an unknown backend.
pub fn delete_backend(id: &str) -> Vec<Stmt> {
    vec![
        Stmt::new("DELETE FROM health WHERE backend_id = ?1", vec![id.into()]),
        Stmt::new("DELETE FROM backends WHERE id = ?1", vec![id.into()]).must_exist("backends", id),
    ]
}

pub fn upsert_pop(p: &Pop, now: i64) -> Result<Vec<Stmt>, StateError> {
    validate::check_pop(p).map_err(invalid("pops", &p.id))?;
    Ok(vec![Stmt::new(
        "INSERT INTO pops (id, region, overlay_addr, public_key, endpoint, updated_at, role, \
         host_number, overlay_ipv4) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
         ON CONFLICT (id) DO UPDATE SET region = excluded.region, \
         overlay_addr = excluded.overlay_addr, public_key = excluded.public_key, \
         endpoint = excluded.endpoint, updated_at = excluded.updated_at, \
         role = excluded.role, host_number = excluded.host_number, \
         overlay_ipv4 = excluded.overlay_ipv4",
        vec![
            p.id.as_str().into(),
            p.region.as_str().into(),
            p.overlay_addr.map(|a| a.to_string()).into(),
            p.public_key.clone().into(),
            p.endpoint.clone().into(),
            now.into(),
            p.role.as_str().into(),
            i64::from(p.host_number).into(),
            p.overlay_ipv4.map(|a| a.to_string()).into(),
        ],
    )])
}

/// Removes a POP or host (and so its peer from every 6PN mesh).
pub fn delete_pop(id: &str) -> Vec<Stmt> {
    vec![Stmt::new("DELETE FROM pops WHERE id = ?1", vec![id.into()]).must_exist("pops", id)]
}

pub fn upsert_setting(key: &str, value: &str, now: i64) -> Result<Vec<Stmt>, StateError> {
    validate::check_setting(key, value).map_err(invalid("settings", key))?;
    Ok(vec![Stmt::new(
        "INSERT INTO settings (key, value, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        vec![key.into(), value.into(), now.into()],
    )])
}

pub fn upsert_health(h: &Health) -> Result<Vec<Stmt>, StateError> {
    let key = format!("{}/{}", h.pop_id, h.backend_id);
    validate::check_health(h).map_err(invalid("health", &key))?;
    // Only while the backend is there: a row written after another node deleted the backend
    // (before this POP learned of it) would otherwise outlive it.
    Ok(vec![Stmt::new(
        "INSERT INTO health (pop_id, backend_id, status, rtt_us, checked_at, reason) \
         SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM backends WHERE id = ?2) \
         ON CONFLICT (pop_id, backend_id) DO UPDATE SET status = excluded.status, \
         rtt_us = excluded.rtt_us, checked_at = excluded.checked_at, reason = excluded.reason",
        vec![
            h.pop_id.as_str().into(),
            h.backend_id.as_str().into(),
            validate::status_str(h.status).into(),
            h.rtt_us.into(),
            h.checked_at.into(),
            h.reason.as_str().into(),
        ],
    )])
}

/// Removes a POP's health row about a backend that is gone (one written before the delete
/// reached the node that took it).
pub fn forget_orphan_health(pop_id: &str, backend_id: &str) -> Stmt {
    Stmt::new(
        "DELETE FROM health WHERE pop_id = ?1 AND backend_id = ?2 \
         AND NOT EXISTS (SELECT 1 FROM backends WHERE id = ?2)",
        vec![pop_id.into(), backend_id.into()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_serialize_for_corrosion() -> anyhow::Result<()> {
        let stmts = set_backend_weight("b1", 7, 1_700_000_000)?;
        let json = serde_json::to_string(&stmts[0])?;
        assert_eq!(
            json,
            r#"{"query":"UPDATE backends SET weight = ?1, updated_at = ?2 WHERE id = ?3","params":[7,1700000000,"b1"]}"#
        );
        assert!(set_backend_weight("b1", 1001, 0).is_err());
        Ok(())
    }
}
