//! The DNS and registration tests' part of the harness (`dns_register.rs`): a state of one
//! service with two backends, the registration API in process over a state database of its own
//! (removed on drop), requests to it, and the log lines a test's thread writes.

use std::{net::Ipv6Addr, sync::Arc};

use axum::{body::Body, http::Request};
use edge_agent::{
    model::{Backend, BackendAddr, Service, Snapshot},
    register::api::{router, ApiState, ThisPop},
    state::SqliteState,
};
use tower::ServiceExt as _;

use super::Error;

pub fn backend(id: &str, region: &str, last: u16) -> Result<Backend, Error> {
    Ok(Backend {
        id: id.into(),
        service: "web".into(),
        region: region.parse()?,
        country: "BR".parse()?,
        addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, last)),
        port: 8080,
        weight: 1,
        soft_limit: 10,
        hard_limit: 20,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    })
}

pub fn snapshot() -> Result<Snapshot, Error> {
    Ok(Snapshot {
        services: vec![Service {
            id: "web".into(),
            vip: "198.18.0.10".parse()?,
            port: 80,
            check: None,
        }],
        backends: vec![backend("be1", "sa", 1)?, backend("be2", "us", 2)?],
        ..Snapshot::default()
    })
}

pub const TOKEN: &str = "0123456789abcdef-token";

pub struct Api {
    pub router: axum::Router,
    pub store: Arc<SqliteState>,
    /// What the API sees as the agent's last read state.
    pub snapshot: tokio::sync::watch::Sender<Arc<Snapshot>>,
    pub _dir: std::path::PathBuf,
}

impl Api {
    /// Hands the API the store's state, as the agent does after each change.
    pub fn refresh(&self) -> Result<(), Error> {
        let (snap, _) = self.store.snapshot()?;
        self.snapshot.send_replace(Arc::new(snap));
        Ok(())
    }
}

/// This POP: its overlay address and SNAT prefix are no backend's.
pub const THIS_POP: &str = "pop-a";
pub const POP_OVERLAY: &str = "fd00:0:0:ff::1";
pub const POP_SNAT: &str = "fd00:0:0:ee::/96";

impl Drop for Api {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

pub fn api(name: &str) -> Result<Api, Error> {
    let dir = std::env::temp_dir().join(format!("edge-api-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let store = Arc::new(SqliteState::open(dir.join("routing.db"))?);
    let snap = snapshot()?;
    for s in &snap.services {
        store.upsert_service(s)?;
    }
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(snap));
    let state = Arc::new(ApiState {
        token: TOKEN.into(),
        store: Arc::clone(&store) as Arc<dyn edge_agent::state::StateStore>,
        snapshot: rx,
        default_heartbeat_secs: 10,
        pop: ThisPop::new(THIS_POP, POP_OVERLAY.parse().ok(), POP_SNAT.parse().ok()),
    });
    Ok(Api {
        router: router(state),
        store,
        snapshot: tx,
        _dir: dir,
    })
}

pub async fn call(
    api: &Api,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(u16, String), Error> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        request = request.header("authorization", format!("Bearer {t}"));
    }
    let response = api
        .router
        .clone()
        .oneshot(request.body(Body::from(body.to_owned()))?)
        .await?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

pub const GOOD: &str = r#"{"id":"web-host7-8080","app":"web","region":"sa","address":"fd00:0:0:7::2","port":8080,"heartbeat_secs":2,"metadata":{"v":"1.2"}}"#;

/// Log lines, captured for the test's thread.
#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let me = self.clone();
        tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || me.clone())
                .with_ansi(false)
                .finish(),
        )
    }

    pub fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

pub fn registration(id: &str, address: &str) -> String {
    serde_json::json!({
        "id": id, "app": "web", "region": "sa", "address": address, "port": 8080,
        "heartbeat_secs": 2,
    })
    .to_string()
}
