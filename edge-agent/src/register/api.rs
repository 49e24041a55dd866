//! The registration API (axum): backends register themselves, heartbeat, and deregister;
//! everything goes through the state store, so that it replicates with the rest of the state.
//!
//! | method and path | |
//! |---|---|
//! | `POST /v1/registrations` | register (or re-register) a backend: 201 with its lease |
//! | `PUT /v1/registrations/{id}/heartbeat` | renew the lease: 200, or 404 if not registered |
//! | `DELETE /v1/registrations/{id}` | leave at once: 204, or 404 |
//! | `GET /v1/registrations[?app=NAME]` | registered backends: 200 |
//!
//! Every request needs `Authorization: Bearer <token>` (the deployment's token): 401 without
//! it, 403 with a wrong one. A body that is not valid gets 400 with what is wrong, as
//! `{"error": "..."}`; so do all other errors. A registration that would take what another
//! row holds gets 409 and a log line naming both: the id of an operator's row, the address
//! and port of a live backend of the service, a DNS name another id already makes (ids that
//! differ only in case). The token is the deployment's, so every backend holds it: the rules
//! ([`crate::state::owners`]) are what keeps one registration from displacing another's row or
//! an operator's.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::warn;

use crate::{
    health::CheckSpec,
    model::{unix_now, Backend, BackendAddr, Country, Lease, Snapshot},
    state::{owners, validate, write, StateError, StateStore},
};

/// What a backend says about itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub id: String,
    /// The service (its id) the backend serves.
    pub app: String,
    pub region: String,
    /// ISO 3166-1 alpha-2; `ZZ` (unknown) if left out.
    #[serde(default)]
    pub country: Option<String>,
    /// Its overlay address (IPv6) or a `.internal` name.
    pub address: String,
    pub port: u16,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub health_check: Option<CheckSpec>,
    /// The heartbeat interval it promises; the API's default if left out.
    #[serde(default)]
    pub heartbeat_secs: Option<u32>,
}

fn one() -> u32 {
    1
}

/// The answer to a registration or heartbeat.
#[derive(Debug, Serialize, Deserialize)]
pub struct LeaseReply {
    pub id: String,
    pub heartbeat_secs: u32,
    /// Unix seconds: without a heartbeat by then, the backend leaves the pool.
    pub expires_at: i64,
}

/// One registered backend, as listed.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub id: String,
    pub app: String,
    pub region: String,
    pub address: String,
    pub port: u16,
    pub weight: u32,
    pub expires_at: i64,
    /// Still in the pool (lease alive, enabled, not draining).
    pub in_pool: bool,
}

pub struct ApiState {
    /// The deployment's bearer token.
    pub token: String,
    pub store: Arc<dyn StateStore>,
    /// The state as the agent last read it (for the apps that exist, and the list).
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub default_heartbeat_secs: u32,
    /// The POP this API runs on.
    pub pop: ThisPop,
}

/// The POP an API runs on: who holds the leases it grants, and the addresses of its own that
/// no backend may have.
#[derive(Clone, Debug, Default)]
pub struct ThisPop {
    /// Its id (`pop_id`), recorded in the rows it accepts (`lease_pop`): this POP deletes them
    /// when their leases run out. Empty if the id is not a valid id (then any POP does, late).
    pub id: String,
    /// Its overlay address: the source of its translated flows.
    pub overlay_addr: Option<std::net::Ipv6Addr>,
    /// Its SNAT prefix (`overlay.snat_prefix`): addresses that stand for IPv4 clients.
    pub snat_prefix: Option<ipnet::Ipv6Net>,
}

impl ThisPop {
    pub fn new(
        id: &str,
        overlay_addr: Option<std::net::Ipv6Addr>,
        snat_prefix: Option<ipnet::Ipv6Net>,
    ) -> Self {
        ThisPop {
            id: Self::lease_id(id),
            overlay_addr,
            snat_prefix,
        }
    }

    /// The id registrations record for the POP `pop_id`: itself if it is a valid id, else
    /// empty (the readers would reject the rows otherwise).
    pub fn lease_id(pop_id: &str) -> String {
        match validate::check_id("pop_id", pop_id) {
            Ok(()) => pop_id.to_owned(),
            Err(_) => String::new(),
        }
    }

    /// Refuses an address of this POP's own: its overlay address, or one in its SNAT prefix.
    fn check(&self, addr: &BackendAddr) -> Result<(), String> {
        let BackendAddr::Ip(ip) = addr else {
            return Ok(());
        };
        if self.overlay_addr == Some(*ip) {
            return Err(format!(
                "address {ip} is this POP's own overlay address: it would forward flows to itself"
            ));
        }
        if let Some(prefix) = self.snat_prefix.filter(|p| p.contains(ip)) {
            return Err(format!(
                "address {ip} is in this POP's SNAT prefix {prefix}, whose addresses stand for \
                 IPv4 clients"
            ));
        }
        Ok(())
    }
}

/// An error answer: status and message, as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            if let Ok(v) = header::HeaderValue::from_str("Bearer realm=\"edgeproxy\"") {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
        }
        response
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// Why a registration is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The registration itself is wrong: 400.
    #[error("{0}")]
    Invalid(String),
    /// It would take what another row holds: 409.
    #[error("{0}")]
    Conflict(String),
}

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Refusal::Invalid(reason)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(m) => ApiError(StatusCode::BAD_REQUEST, m),
            Refusal::Conflict(m) => ApiError(StatusCode::CONFLICT, m),
        }
    }
}

/// Compares without stopping at the first difference, so that timing does not tell how much
/// of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(
    State(api): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>".into(),
        )),
        Some(token) if !same(token.trim().as_bytes(), api.token.as_bytes()) => {
            Err(ApiError(StatusCode::FORBIDDEN, "wrong token".into()))
        }
        Some(_) => Ok(next.run(request).await),
    }
}

pub fn router(api: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/registrations", post(register).get(list))
        .route("/v1/registrations/{id}/heartbeat", put(heartbeat))
        .route("/v1/registrations/{id}", axum::routing::delete(deregister))
        .route("/v1/health", get(|| async { "ok\n" }))
        .layer(middleware::from_fn_with_state(Arc::clone(&api), authorize))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(api)
}

/// Turns a registration into a backend row, or says what is wrong with it ([`Refusal`]): the
/// id must be a DNS label, the address an overlay address that is no POP's own (this POP's
/// overlay address and SNAT prefix, any POP's in state), and it must not take an address and
/// port, an id or a DNS name another row holds ([`owners::registration_conflict`]).
pub fn validate(
    r: Registration,
    snapshot: &Snapshot,
    pop: &ThisPop,
    default_heartbeat: u32,
    now: i64,
) -> Result<(Backend, String), Refusal> {
    validate::check_registration_id(&r.id)?;
    if !snapshot.services.iter().any(|s| s.id == r.app) {
        return Err(Refusal::Invalid(format!(
            "app {} is not a service of this deployment",
            validate::show(&r.app)
        )));
    }
    let region = r
        .region
        .parse()
        .map_err(|e: String| format!("region: {e}"))?;
    let country: Country = r
        .country
        .as_deref()
        .unwrap_or("ZZ")
        .parse()
        .map_err(|e: String| format!("country: {e}"))?;
    let addr = validate::parse_backend_addr(&r.address)?;
    pop.check(&addr)?;
    validate::check_backend_target(&addr, &snapshot.pops)?;
    let interval = r.heartbeat_secs.unwrap_or(default_heartbeat);
    if interval == 0 || interval > validate::MAX_HEARTBEAT_SECS {
        return Err(Refusal::Invalid(format!(
            "heartbeat_secs {interval} is out of range 1..={}",
            validate::MAX_HEARTBEAT_SECS
        )));
    }
    let backend = Backend {
        id: r.id,
        service: r.app,
        region,
        country,
        addr,
        port: r.port,
        weight: r.weight,
        soft_limit: 10_000,
        hard_limit: 100_000,
        draining: false,
        enabled: true,
        check: r.health_check,
        lease: Some(Lease {
            renewed_at: now,
            interval_secs: interval,
            pop: pop.id.clone(),
        }),
    };
    validate::check_backend(&backend)?;
    owners::registration_conflict(&backend, snapshot, now).map_err(Refusal::Conflict)?;
    let metadata = serde_json::Value::Object(r.metadata).to_string();
    Ok((backend, metadata))
}

/// Store writes in flight, for every API of the process. Each runs on a blocking thread and
/// SQLite serializes writes anyway: without a bound, a burst of requests starts a thread (and a
/// malloc arena) per request, memory the process keeps (issue 18). Requests wait here, within
/// their timeout (`crate::listen`).
static WRITES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// Runs statements on the store off the async threads.
async fn execute(api: &ApiState, stmts: Vec<write::Stmt>) -> Result<(), ApiError> {
    let _slot = WRITES
        .acquire()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let store = Arc::clone(&api.store);
    match tokio::task::spawn_blocking(move || store.execute(&stmts)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(StateError::NotFound { key, .. })) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{key:?} is not registered"),
        )),
        Ok(Err(StateError::Conflict { key, reason, .. })) => {
            Err(ApiError(StatusCode::CONFLICT, format!("{key:?}: {reason}")))
        }
        Ok(Err(e)) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn register(State(api): State<Arc<ApiState>>, body: Bytes) -> Result<Response, ApiError> {
    let registration: Registration =
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid registration: {e}")))?;
    let now = unix_now();
    let snapshot = Arc::clone(&api.snapshot.borrow());
    let id = validate::show(&registration.id);
    let refused = |status: StatusCode, reason: &str| {
        // One line per refusal, naming the id and (in the reason) the row it ran into.
        warn!(id = %id, status = status.as_u16(), %reason, "registration refused");
    };
    let (backend, metadata) = match validate(
        registration,
        &snapshot,
        &api.pop,
        api.default_heartbeat_secs,
        now,
    ) {
        Ok(ok) => ok,
        Err(refusal) => {
            let error = ApiError::from(refusal);
            refused(error.0, &error.1);
            return Err(error);
        }
    };
    let stmts =
        write::register_backend(&backend, &metadata, now).map_err(|e| bad(e.to_string()))?;
    if let Err(error) = execute(&api, stmts).await {
        if error.0 == StatusCode::CONFLICT {
            refused(error.0, &error.1);
        }
        return Err(error);
    }
    let lease = backend.lease.clone().unwrap_or(Lease {
        renewed_at: now,
        interval_secs: api.default_heartbeat_secs,
        pop: api.pop.id.clone(),
    });
    Ok((
        StatusCode::CREATED,
        Json(LeaseReply {
            id: backend.id,
            heartbeat_secs: lease.interval_secs,
            expires_at: lease.expires_at(),
        }),
    )
        .into_response())
}

async fn heartbeat(
    State(api): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<Json<LeaseReply>, ApiError> {
    validate::check_id("id", &id).map_err(bad)?;
    let now = unix_now();
    execute(&api, write::renew_lease(&id, now, &api.pop.id)).await?;
    let interval = api
        .snapshot
        .borrow()
        .leases
        .get(&id)
        .map_or(api.default_heartbeat_secs, |l| l.interval_secs);
    let lease = Lease {
        renewed_at: now,
        interval_secs: interval,
        pop: api.pop.id.clone(),
    };
    Ok(Json(LeaseReply {
        id,
        heartbeat_secs: interval,
        expires_at: lease.expires_at(),
    }))
}

async fn deregister(
    State(api): State<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    validate::check_id("id", &id).map_err(bad)?;
    execute(&api, write::deregister_backend(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ListQuery {
    app: Option<String>,
}

async fn list(State(api): State<Arc<ApiState>>, Query(q): Query<ListQuery>) -> Json<Vec<Listed>> {
    let now = unix_now();
    let snapshot = Arc::clone(&api.snapshot.borrow());
    Json(
        snapshot
            .backends
            .iter()
            .filter(|b| q.app.as_ref().is_none_or(|app| &b.service == app))
            .filter_map(|b| {
                let lease = b.lease.as_ref()?;
                Some(Listed {
                    id: b.id.clone(),
                    app: b.service.clone(),
                    region: b.region.to_string(),
                    address: validate::address_text(&b.addr),
                    port: b.port,
                    weight: b.weight,
                    expires_at: lease.expires_at(),
                    in_pool: b.in_pool(now),
                })
            })
            .collect(),
    )
}
