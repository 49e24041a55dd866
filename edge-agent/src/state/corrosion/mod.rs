//! The replicated state source: Corrosion's HTTP API. Each table is a subscription
//! (`POST /v1/subscriptions`) mirrored in memory and resumed after a disconnect from the last
//! change seen (`GET /v1/subscriptions/<id>?from=<change_id>`); writes (health rows,
//! registrations) go through `POST /v1/transactions`.
//!
//! While Corrosion cannot be reached the mirrors keep the last state they had, so the maps do
//! too; reconnects back off exponentially (with jitter) up to `max_backoff_ms`, and the log has
//! one line per change of connection state, not one per attempt. A re-read after a gap or an
//! expired subscription only notifies when rows really differ.

pub mod events;
pub mod liveness;
pub mod mirror;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{body::Bytes, Method, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use self::{
    events::{parse, Lines},
    mirror::{Mirror, Step},
};
use super::{
    validate::{columns, Cell, SnapshotBuilder},
    write::Stmt,
    ChangeFuture, Changes, SnapshotResult, StateError, StateSource,
};
use crate::http_client;

/// The `[state.corrosion]` section of the agent's config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrosionConfig {
    /// Corrosion's API, `http://host:port`.
    pub api: String,
    /// Its bearer token (`[api] authz.bearer-token` in Corrosion's config), if it has one.
    pub token: Option<String>,
    /// Longest wait between reconnects.
    pub max_backoff_ms: u64,
    /// How often the node is asked a small query to tell a frozen node from a quiet one
    /// (`liveness`); 0 turns the probe off.
    pub probe_interval_ms: u64,
}

impl Default for CorrosionConfig {
    fn default() -> Self {
        CorrosionConfig {
            api: "http://127.0.0.1:8080".to_owned(),
            token: None,
            max_backoff_ms: 10_000,
            probe_interval_ms: 1000,
        }
    }
}

/// The tables, in the order a snapshot reads them, with the query each subscribes to.
const TABLES: [(&str, &[&str]); 5] = [
    ("services", &columns::SERVICES),
    ("backends", &columns::BACKENDS),
    ("pops", &columns::POPS),
    ("health", &columns::HEALTH),
    ("settings", &columns::SETTINGS),
];

fn query(table: &str, cols: &[&str]) -> String {
    format!("SELECT {} FROM {table}", cols.join(", "))
}

/// How the source is doing, for logs and `status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Health {
    pub connected: bool,
    /// Every table has been read once.
    pub synced: bool,
    /// Seconds since the last event from Corrosion (rows, changes), if any came.
    #[serde(skip)]
    pub last_event: Option<Instant>,
    pub last_error: Option<String>,
    pub reconnects: u64,
    /// When the node last answered the liveness probe.
    #[serde(skip)]
    pub answered: Option<Instant>,
    /// How long that answer took.
    pub probe_ms: Option<f64>,
    pub probe_failures: u64,
}

struct Shared {
    mirrors: Vec<Mirror>,
    /// What the last snapshot held, for the next one's conflicts ([`super::owners`]).
    incumbents: super::owners::Incumbents,
    health: Health,
    /// Tables whose subscription is streaming right now.
    streaming: Vec<bool>,
}

pub struct CorrosionState {
    api: Uri,
    /// How old the last probe answer may be while the state counts as current (`None`: no
    /// probe).
    probe_grace: Option<Duration>,
    token: Option<String>,
    shared: Arc<Mutex<Shared>>,
    version: watch::Sender<u64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for CorrosionState {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A JSON cell as the row validators take it.
fn cell(v: &Value) -> Cell<'_> {
    match v {
        Value::Null => Cell::Null,
        Value::Bool(b) => Cell::Int(i64::from(*b)),
        Value::Number(n) => n
            .as_i64()
            .map(Cell::Int)
            .or_else(|| n.as_f64().map(Cell::Real))
            .unwrap_or(Cell::Null),
        Value::String(s) => Cell::Text(s),
        // Blobs come as arrays of bytes; the validators refuse them with the column's name.
        Value::Array(_) | Value::Object(_) => Cell::Blob(&[]),
    }
}

impl CorrosionState {
    /// Starts the subscriptions (inside a tokio runtime). The source has no state until every
    /// table has been read once: `snapshot` says so, and the agent keeps what it had.
    pub fn start(config: &CorrosionConfig) -> Result<Self, StateError> {
        let api: Uri = config.api.parse().map_err(|e| StateError::Invalid {
            table: "config",
            key: "state.corrosion.api".into(),
            reason: format!("{:?} is not a URL: {e}", config.api),
        })?;
        let shared = Arc::new(Mutex::new(Shared {
            mirrors: TABLES.iter().map(|_| Mirror::default()).collect(),
            incumbents: Default::default(),
            health: Health::default(),
            streaming: vec![false; TABLES.len()],
        }));
        let (version, _) = watch::channel(0u64);
        let mut tasks = Vec::new();
        for (i, (table, cols)) in TABLES.iter().enumerate() {
            let sub = Subscription {
                index: i,
                table,
                sql: query(table, cols),
                api: api.clone(),
                token: config.token.clone(),
                shared: Arc::clone(&shared),
                version: version.clone(),
                max_backoff: Duration::from_millis(config.max_backoff_ms.max(100)),
            };
            tasks.push(tokio::spawn(sub.run()));
        }
        let probe_grace = (config.probe_interval_ms > 0).then(|| {
            let interval = Duration::from_millis(config.probe_interval_ms.max(100));
            tasks.push(tokio::spawn(liveness::run(
                api.clone(),
                config.token.clone(),
                Arc::clone(&shared),
                interval,
            )));
            interval + liveness::DEADLINE
        });
        Ok(CorrosionState {
            api,
            probe_grace,
            token: config.token.clone(),
            shared,
            version,
            tasks,
        })
    }

    pub fn health(&self) -> Health {
        lock(&self.shared).health.clone()
    }

    /// How far behind the state may be (see [`liveness::staleness`]).
    pub fn staleness(&self) -> Option<Duration> {
        let h = self.health();
        let answered = match self.probe_grace {
            Some(_) => h.answered,
            // No probe: the streams alone say it.
            None => None,
        };
        liveness::staleness(
            h.connected,
            h.synced,
            answered,
            h.last_event,
            self.probe_grace.unwrap_or(Duration::MAX),
            Instant::now(),
        )
    }

    /// Runs `stmts` as one transaction through Corrosion. Blocks: call it from a blocking
    /// context inside the runtime (`spawn_blocking`).
    pub fn execute(&self, stmts: &[Stmt]) -> Result<(), StateError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|e| StateError::Remote {
            what: "a Corrosion transaction".into(),
            reason: format!("no runtime: {e}"),
        })?;
        handle.block_on(self.transaction(stmts))
    }

    pub async fn transaction(&self, stmts: &[Stmt]) -> Result<(), StateError> {
        let remote = |reason: String| StateError::Remote {
            what: "a Corrosion transaction".into(),
            reason,
        };
        let body = serde_json::to_vec(stmts).map_err(|e| remote(e.to_string()))?;
        let response = http_client::send(
            &self.api,
            self.token.as_deref(),
            Method::POST,
            "/v1/transactions",
            Some(Bytes::from(body)),
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| remote(e.to_string()))?;
        let status = response.status();
        let bytes = http_client::body(response, Duration::from_secs(10))
            .await
            .map_err(remote)?;
        #[derive(Deserialize)]
        struct Result_ {
            #[serde(default)]
            rows_affected: Option<u64>,
            #[serde(default)]
            error: Option<String>,
        }
        #[derive(Deserialize)]
        struct Exec {
            results: Vec<Result_>,
        }
        let exec: Exec = serde_json::from_slice(&bytes).map_err(|_| {
            remote(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>()
            ))
        })?;
        if let Some(e) = exec.results.iter().find_map(|r| r.error.clone()) {
            return Err(remote(e));
        }
        if status != StatusCode::OK {
            return Err(remote(status.to_string()));
        }
        for (stmt, result) in stmts.iter().zip(&exec.results) {
            if let Some(error) = result.rows_affected.and_then(|n| stmt.none_error(n)) {
                return Err(error);
            }
        }
        Ok(())
    }
}

impl StateSource for CorrosionState {
    fn describe(&self) -> String {
        format!("corrosion at {}", self.api)
    }

    fn snapshot(&self) -> SnapshotResult {
        let mut shared = lock(&self.shared);
        if let Some(i) = shared.mirrors.iter().position(|m| !m.synced) {
            return Err(StateError::Remote {
                what: format!("the {} table", TABLES[i].0),
                reason: "not read from Corrosion yet".into(),
            });
        }
        let shared = &mut *shared;
        let mut b = SnapshotBuilder::with_incumbents(&shared.incumbents);
        for (i, mirror) in shared.mirrors.iter().enumerate() {
            for row in mirror.rows() {
                let cells: Vec<Cell<'_>> = row.iter().map(cell).collect();
                match i {
                    0 => b.service(&cells),
                    1 => b.backend(&cells),
                    2 => b.pop(&cells),
                    3 => b.health(&cells),
                    _ => b.setting(&cells),
                }
            }
        }
        let (snapshot, rejected) = b.finish();
        shared.incumbents = super::owners::Incumbents::of(&snapshot);
        Ok((snapshot, rejected))
    }

    fn changes(&self) -> Result<Box<dyn Changes>, StateError> {
        Ok(Box::new(Versions(self.version.subscribe())))
    }
}

struct Versions(watch::Receiver<u64>);

impl Changes for Versions {
    fn changed(&mut self) -> ChangeFuture<'_> {
        Box::pin(async move {
            if self.0.changed().await.is_err() {
                // The source is gone: no change will ever come.
                std::future::pending::<()>().await;
            }
        })
    }
}

/// One table's subscription, kept alive.
struct Subscription {
    index: usize,
    table: &'static str,
    sql: String,
    api: Uri,
    token: Option<String>,
    shared: Arc<Mutex<Shared>>,
    version: watch::Sender<u64>,
    max_backoff: Duration,
}

/// Why a stream ended.
enum End {
    /// Read again from scratch (gap, expired subscription, unknown id).
    Restart(String),
    /// Resume from the last change (connection lost).
    Resume(String),
}

impl Subscription {
    async fn run(self) {
        let mut id: Option<String> = None;
        let mut backoff = Duration::from_millis(250);
        loop {
            let from = lock(&self.shared).mirrors[self.index].last_change;
            let end = match (&id, from) {
                (Some(sub), Some(from)) => self.stream(Some((sub.clone(), from)), &mut id).await,
                _ => self.stream(None, &mut id).await,
            };
            let reason = match end {
                End::Restart(reason) => {
                    id = None;
                    reason
                }
                End::Resume(reason) => reason,
            };
            let was_connected = {
                let mut shared = lock(&self.shared);
                shared.streaming[self.index] = false;
                let was = shared.health.connected;
                shared.health.connected = shared.streaming.iter().any(|s| *s);
                shared.health.last_error = Some(format!("{}: {reason}", self.table));
                shared.health.reconnects += 1;
                was
            };
            if was_connected {
                warn!(table = self.table, %reason, "Corrosion: subscription lost; the maps keep the last state, reconnecting");
            } else {
                debug!(table = self.table, %reason, ?backoff, "Corrosion: still unreachable");
            }
            // Jitter: the four tables (and every POP) must not retry in step.
            tokio::time::sleep(backoff.mul_f64(0.8 + fastrand::f64() * 0.4)).await;
            backoff = (backoff * 2).min(self.max_backoff);
            if lock(&self.shared)
                .health
                .last_event
                .is_some_and(|t| t.elapsed() < backoff)
            {
                // Events flowed since the last failure: start over from a short wait.
                backoff = Duration::from_millis(250);
            }
        }
    }

    /// One connection: subscribe (or resume) and apply events until the stream ends.
    async fn stream(&self, resume: Option<(String, u64)>, id: &mut Option<String>) -> End {
        let (method, path, body) = match &resume {
            Some((sub, from)) => (
                Method::GET,
                format!("/v1/subscriptions/{sub}?from={from}"),
                None,
            ),
            None => (
                Method::POST,
                "/v1/subscriptions".to_owned(),
                Some(Bytes::from(Value::String(self.sql.clone()).to_string())),
            ),
        };
        let response = match http_client::send(
            &self.api,
            self.token.as_deref(),
            method,
            &path,
            body,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return End::Resume(e.to_string()),
        };
        let status = response.status();
        if status != StatusCode::OK {
            let text = http_client::body(response, Duration::from_secs(5))
                .await
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .chars()
                        .take(200)
                        .collect::<String>()
                })
                .unwrap_or_default();
            // A resume the server cannot serve (unknown id, no such subscription): read again.
            return if resume.is_some() && status.is_client_error() {
                End::Restart(format!("{status} {text}"))
            } else {
                End::Resume(format!("{status} {text}"))
            };
        }
        if resume.is_none() {
            *id = response
                .headers()
                .get("corro-query-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            lock(&self.shared).mirrors[self.index].restart();
        }
        {
            let mut shared = lock(&self.shared);
            shared.streaming[self.index] = true;
            if !shared.health.connected {
                shared.health.connected = true;
                info!(api = %self.api, table = self.table, resumed = resume.is_some(), "Corrosion: subscribed");
            }
        }
        let mut body = response.into_body();
        let mut lines = Lines::default();
        use http_body_util::BodyExt as _;
        loop {
            let frame = match body.frame().await {
                None => return End::Resume("the stream ended".into()),
                Some(Err(e)) => return End::Resume(e.to_string()),
                Some(Ok(frame)) => frame,
            };
            let Some(chunk) = frame.data_ref() else {
                continue;
            };
            let new_lines = match lines.push(chunk) {
                Ok(l) => l,
                Err(e) => return End::Restart(e),
            };
            for line in new_lines {
                let event = match parse(&line) {
                    Ok(e) => e,
                    Err(e) => return End::Restart(e),
                };
                let step = {
                    let mut shared = lock(&self.shared);
                    shared.health.last_event = Some(Instant::now());
                    let step = shared.mirrors[self.index].apply(event);
                    shared.health.synced = shared.mirrors.iter().all(|m| m.synced);
                    step
                };
                match step {
                    Step::Same => {}
                    Step::Changed => {
                        self.version.send_modify(|v| *v += 1);
                    }
                    Step::Gap { expected, got } => {
                        return End::Restart(format!("change {got} arrived, {expected} expected"))
                    }
                    Step::Failed(e) => return End::Restart(e),
                }
            }
        }
    }
}
