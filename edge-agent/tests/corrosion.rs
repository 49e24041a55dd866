//! The Corrosion source against a stand-in for Corrosion's API that answers in its recorded
//! formats (the NDJSON of `POST /v1/subscriptions` and `GET /v1/subscriptions/<id>?from=`, the
//! JSON of `POST /v1/transactions`): initial read, live changes, resume from the last change
//! after a disconnect, a full re-read when the resume is refused, the last good state kept
//! while Corrosion is down, back-off, and writes.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use edge_agent::state::{
    corrosion::{CorrosionConfig, CorrosionState},
    write, StateError, StateSource as _,
};
use serde_json::{json, Value};
use tokio::sync::broadcast;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Default)]
struct Table {
    rows: BTreeMap<u64, Vec<Value>>,
    /// (kind, rowid, values, change_id)
    log: Vec<(String, u64, Vec<Value>, u64)>,
}

struct Fake {
    tables: Mutex<BTreeMap<String, Table>>,
    live: broadcast::Sender<(String, String)>,
    /// Every request: "METHOD path", for the assertions.
    requests: Mutex<Vec<String>>,
    /// Resumes are refused (as for a subscription Corrosion already dropped).
    refuse_resume: Mutex<bool>,
    transactions: Mutex<Vec<Value>>,
    /// Bumped when Corrosion "goes down": its open streams end.
    ends: tokio::sync::watch::Sender<u64>,
    /// While set, every request gets 503, as from a node that is not serving.
    down: std::sync::atomic::AtomicBool,
}

fn table_of(sql: &str) -> String {
    sql.rsplit(" FROM ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

impl Fake {
    fn new() -> Arc<Self> {
        let mut tables = BTreeMap::new();
        for t in ["services", "backends", "pops", "health", "settings"] {
            tables.insert(t.to_owned(), Table::default());
        }
        Arc::new(Fake {
            tables: Mutex::new(tables),
            live: broadcast::channel(1024).0,
            requests: Mutex::new(Vec::new()),
            refuse_resume: Mutex::new(false),
            transactions: Mutex::new(Vec::new()),
            ends: tokio::sync::watch::channel(0).0,
            down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn change(&self, table: &str, kind: &str, rowid: u64, values: Vec<Value>) {
        let line = {
            let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
            let Some(t) = tables.get_mut(table) else {
                return;
            };
            let id = t.log.len() as u64 + 1;
            if kind == "delete" {
                t.rows.remove(&rowid);
            } else {
                t.rows.insert(rowid, values.clone());
            }
            t.log.push((kind.into(), rowid, values.clone(), id));
            json!({"change": [kind, rowid, values, id]}).to_string()
        };
        let _ = self.live.send((table.to_owned(), line));
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
        if down {
            self.ends.send_modify(|g| *g += 1);
        }
    }

    fn is_down(&self) -> bool {
        self.down.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The recorded stream: `lines` first, then live changes of `table`.
fn stream(fake: &Arc<Fake>, table: String, lines: Vec<String>, id: &str) -> Response {
    let mut live = fake.live.subscribe();
    let mut down = fake.ends.subscribe();
    let body = async_stream(lines, move |tx| async move {
        loop {
            tokio::select! {
                _ = down.changed() => return,
                next = live.recv() => {
                    let Ok((t, line)) = next else { return };
                    if t == table && tx.send(Ok(Bytes::from(line + "\n"))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut response = Response::new(body);
    if let Ok(v) = id.parse() {
        response.headers_mut().insert("corro-query-id", v);
    }
    response
}

/// A body that yields `first` and then what `rest` sends.
fn async_stream<F, Fut>(first: Vec<String>, rest: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        // Cut the recorded lines into odd chunks, as Corrosion's 10 ms flushes do.
        let text: String = first.iter().map(|l| format!("{l}\n")).collect();
        for chunk in text.as_bytes().chunks(7) {
            if tx.send(Ok(Bytes::copy_from_slice(chunk))).await.is_err() {
                return;
            }
        }
        rest(tx).await;
    });
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_core_stream::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_core_stream::from_fn(move |cx| rx.poll_recv(cx))
}

/// A minimal `Stream` over a poll function (to stay within the agent's dependencies).
mod futures_core_stream {
    pub use futures_core::Stream;
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    pub struct FromFn<F>(F);

    impl<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin> Stream for FromFn<F> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            (self.0)(cx)
        }
    }

    pub fn from_fn<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin>(f: F) -> FromFn<F> {
        FromFn(f)
    }
}

async fn subscribe(State(fake): State<Arc<Fake>>, headers: HeaderMap, body: String) -> Response {
    if fake.is_down() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    fake.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!(
            "POST /v1/subscriptions auth={:?}",
            headers.get("authorization")
        ));
    let sql: String = serde_json::from_str(&body).unwrap_or_default();
    let table = table_of(&sql);
    let lines = {
        let tables = fake.tables.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = tables.get(&table) else {
            return (StatusCode::BAD_REQUEST, r#"{"error":"no such table"}"#).into_response();
        };
        let mut lines = vec![json!({"columns": ["c"]}).to_string()];
        for (rowid, values) in &t.rows {
            lines.push(json!({"row": [rowid, values]}).to_string());
        }
        lines.push(json!({"eoq": {"time": 1e-6, "change_id": t.log.len()}}).to_string());
        lines
    };
    stream(&fake, table.clone(), lines, &format!("sub-{table}"))
}

async fn resume(
    State(fake): State<Arc<Fake>>,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, u64>>,
) -> Response {
    let from = q.get("from").copied().unwrap_or(0);
    if fake.is_down() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    fake.requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(format!("GET /v1/subscriptions/{id}?from={from}"));
    if *fake.refuse_resume.lock().unwrap_or_else(|e| e.into_inner()) {
        let body = format!(r#"{{"error":"could not find subscription with id {id}"}}"#);
        return (StatusCode::NOT_FOUND, body).into_response();
    }
    let table = id.trim_start_matches("sub-").to_owned();
    let lines = {
        let tables = fake.tables.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = tables.get(&table) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        t.log
            .iter()
            .filter(|(.., id)| *id > from)
            .map(|(k, r, v, id)| json!({"change": [k, r, v, id]}).to_string())
            .collect()
    };
    stream(&fake, table, lines, &id)
}

async fn transactions(State(fake): State<Arc<Fake>>, body: String) -> Response {
    let stmts: Value = serde_json::from_str(&body).unwrap_or_default();
    let results: Vec<Value> = stmts
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    let missing = s["params"].to_string().contains("ghost");
                    json!({"rows_affected": if missing { 0 } else { 1 }, "time": 1e-5})
                })
                .collect()
        })
        .unwrap_or_default();
    fake.transactions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(stmts);
    axum::Json(json!({"results": results, "time": 1e-4, "version": 1, "actor_id": "00"}))
        .into_response()
}

struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(fake: Arc<Fake>, addr: SocketAddr) -> Result<(Server, SocketAddr), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/v1/subscriptions", post(subscribe))
        .route("/v1/subscriptions/{id}", get(resume))
        .route("/v1/transactions", post(transactions))
        .with_state(fake);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((Server { task }, addr))
}

fn service(id: &str, port: u16) -> Vec<Value> {
    vec![
        json!(id),
        json!("198.18.0.10"),
        json!(port),
        json!("tcp"),
        json!(""),
        json!(0),
    ]
}

async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) -> Result<Duration, Error> {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(started.elapsed())
}

/// A wait's failure with what the source holds, how it feels, and what the fake was asked.
fn explain(e: impl std::fmt::Display, source: &CorrosionState, fake: &Fake) -> String {
    format!(
        "{e}: {:?} {:?} {:?}",
        ports(source),
        source.health(),
        fake.requests()
    )
}

fn ports(source: &CorrosionState) -> Vec<u16> {
    source
        .snapshot()
        .map(|(s, _)| {
            let mut ports: Vec<u16> = s.services.iter().map(|s| s.port).collect();
            ports.sort_unstable();
            ports
        })
        .unwrap_or_default()
}

fn config(addr: SocketAddr) -> CorrosionConfig {
    CorrosionConfig {
        api: format!("http://{addr}"),
        token: Some("corro-token".into()),
        max_backoff_ms: 400,
        // The stand-in answers subscriptions and transactions only; the probe has its own tests
        // (`state::corrosion::liveness`).
        probe_interval_ms: 0,
    }
}

#[tokio::test]
async fn reads_follows_and_resumes() -> Result<(), Error> {
    let fake = Fake::new();
    fake.change("services", "insert", 1, service("web", 80));
    let (_server, addr) = serve(fake.clone(), "127.0.0.1:0".parse()?).await?;
    let source = CorrosionState::start(&config(addr))?;
    let mut changes = source.changes()?;
    wait_for("the initial read", Duration::from_secs(5), || {
        ports(&source) == [80]
    })
    .await?;
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.contains("POST /v1/subscriptions") && r.contains("Bearer corro-token")),
        "{:?}",
        fake.requests()
    );

    // A live change reaches the snapshot, and the change feed says so.
    changes.changed().await;
    fake.change("services", "insert", 2, service("api", 81));
    tokio::time::timeout(Duration::from_secs(5), changes.changed()).await?;
    wait_for("a live insert", Duration::from_secs(5), || {
        ports(&source) == [80, 81]
    })
    .await
    .map_err(|e| explain(e, &source, &fake))?;

    // Corrosion goes away: the last state stays.
    fake.set_down(true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ports(&source), [80, 81], "the last good state stays");
    assert!(!source.health().connected);
    // Rows written meanwhile arrive after it comes back, by resuming from the last change.
    fake.change("services", "update", 1, service("web", 8080));
    fake.set_down(false);
    wait_for("changes made while down", Duration::from_secs(5), || {
        ports(&source) == [81, 8080]
    })
    .await
    .map_err(|e| explain(e, &source, &fake))?;
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|r| r == "GET /v1/subscriptions/sub-services?from=2"),
        "resumed from the last change seen: {requests:?}"
    );
    assert!(source.health().connected);
    Ok(())
}

#[tokio::test]
async fn a_refused_resume_reads_again_and_only_real_changes_notify() -> Result<(), Error> {
    let fake = Fake::new();
    fake.change("services", "insert", 1, service("web", 80));
    let (_server, addr) = serve(fake.clone(), "127.0.0.1:0".parse()?).await?;
    let source = CorrosionState::start(&config(addr))?;
    wait_for("the initial read", Duration::from_secs(5), || {
        ports(&source) == [80]
    })
    .await?;
    let mut changes = source.changes()?;
    // Drain the notifications of the initial read.
    while tokio::time::timeout(Duration::from_millis(300), changes.changed())
        .await
        .is_ok()
    {}

    *fake.refuse_resume.lock().unwrap_or_else(|e| e.into_inner()) = true;
    fake.set_down(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.set_down(false);
    wait_for("a re-read", Duration::from_secs(5), || {
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("POST /v1/subscriptions"))
            .count()
            // One subscription per table at the first read; more is the re-read.
            > 5
    })
    .await?;
    assert_eq!(ports(&source), [80]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), changes.changed())
            .await
            .is_err(),
        "the same rows read again are no change"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_backs_off_and_keeps_nothing_made_up() -> Result<(), Error> {
    // Nothing listens there: the source has no state (the agent keeps its maps) and retries
    // at a growing interval up to max_backoff_ms.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let source = CorrosionState::start(&config(port))?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let err = source
        .snapshot()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("not read from Corrosion yet"), "{err}");
    let health = source.health();
    // Four tables, each 250 ms, 500 ms, then 400 ms (the cap) apart, with 20% jitter: about
    // 5 attempts each in 2 s, so 16-28 in all; without back-off it would be thousands.
    assert!(
        (8..=40).contains(&health.reconnects),
        "reconnects in 2 s: {}",
        health.reconnects
    );
    assert!(health.last_error.is_some_and(|e| e.contains("connecting")));
    Ok(())
}

#[tokio::test]
async fn writes_go_through_transactions() -> Result<(), Error> {
    let fake = Fake::new();
    let (_server, addr) = serve(fake.clone(), "127.0.0.1:0".parse()?).await?;
    let source = CorrosionState::start(&config(addr))?;
    source
        .transaction(&write::renew_lease("be1", 1_700_000_000, "pop-a"))
        .await?;
    let sent = fake
        .transactions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert_eq!(
        sent[0][0]["query"],
        "UPDATE backends SET heartbeat_at = ?1, updated_at = ?1, lease_pop = ?2 \
         WHERE id = ?3 AND heartbeat_secs > 0"
    );
    assert_eq!(sent[0][0]["params"], json!([1_700_000_000, "pop-a", "be1"]));
    let missing = source
        .transaction(&write::renew_lease("ghost", 1, "pop-a"))
        .await;
    assert!(
        matches!(missing, Err(StateError::NotFound { .. })),
        "no row affected where one must be: {missing:?}"
    );
    Ok(())
}
