//! `edge-agent register`: the sidecar that registers the process beside it, heartbeats, and
//! deregisters on SIGTERM or SIGINT. (SIGKILL leaves the lease to run out: three missed
//! heartbeats.)

use std::time::Duration;

use anyhow::{bail, Context as _};
use hyper::{body::Bytes, Method, StatusCode, Uri};
use tracing::{info, warn};

use super::api::LeaseReply;
use crate::http_client;

/// The sidecar's settings (its command line).
#[derive(Clone, Debug)]
pub struct Sidecar {
    /// The agent's API, `http://host:port`.
    pub api: Uri,
    pub token: String,
    pub id: String,
    pub app: String,
    pub region: String,
    pub country: Option<String>,
    pub address: String,
    pub port: u16,
    pub weight: u32,
    /// An HTTP health check on this path instead of the service's check.
    pub health_path: Option<String>,
    pub heartbeat_secs: u32,
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// One request with a JSON body; the status and the body of the answer.
async fn call(
    api: &Uri,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let body = body.map(|b| Bytes::from(b.to_string()));
    let response = http_client::send(api, Some(token), method, path, body, TIMEOUT).await?;
    let status = response.status();
    let bytes = http_client::body(response, TIMEOUT)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((status, bytes))
}

impl Sidecar {
    fn registration(&self) -> serde_json::Value {
        let mut r = serde_json::json!({
            "id": self.id,
            "app": self.app,
            "region": self.region,
            "address": self.address,
            "port": self.port,
            "weight": self.weight,
            "heartbeat_secs": self.heartbeat_secs,
            "metadata": {"registered_by": "edge-agent register", "pid": std::process::id()},
        });
        if let Some(country) = &self.country {
            r["country"] = country.clone().into();
        }
        if let Some(path) = &self.health_path {
            r["health_check"] = serde_json::json!({"type": "http", "path": path});
        }
        r
    }

    async fn register(&self) -> anyhow::Result<LeaseReply> {
        let (status, body) = call(
            &self.api,
            &self.token,
            Method::POST,
            "/v1/registrations",
            Some(&self.registration()),
        )
        .await?;
        if status != StatusCode::CREATED {
            bail!(
                "registration refused ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }

    async fn heartbeat(&self) -> anyhow::Result<StatusCode> {
        let path = format!("/v1/registrations/{}/heartbeat", self.id);
        Ok(call(&self.api, &self.token, Method::PUT, &path, None)
            .await?
            .0)
    }

    async fn deregister(&self) -> anyhow::Result<StatusCode> {
        let path = format!("/v1/registrations/{}", self.id);
        Ok(call(&self.api, &self.token, Method::DELETE, &path, None)
            .await?
            .0)
    }

    /// Registers (retrying until the API takes it), heartbeats, and deregisters on SIGTERM or
    /// SIGINT.
    pub async fn run(self) -> anyhow::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let interval = Duration::from_secs(u64::from(self.heartbeat_secs.max(1)));
        let mut registered = false;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = tick.tick() => {}
            }
            if !registered {
                match self.register().await {
                    Ok(lease) => {
                        info!(id = %lease.id, expires_at = lease.expires_at, "registered");
                        println!("registered {}", lease.id);
                        registered = true;
                    }
                    Err(error) => {
                        warn!(error = %format!("{error:#}"), "registering failed; retrying")
                    }
                }
                continue;
            }
            match self.heartbeat().await {
                Ok(StatusCode::OK) => {}
                // The row is gone (the lease ran out and it was removed): register again.
                Ok(StatusCode::NOT_FOUND) => registered = false,
                Ok(status) => warn!(%status, "heartbeat refused"),
                Err(error) => warn!(error = %format!("{error:#}"), "heartbeat failed"),
            }
        }
        if registered {
            match self.deregister().await {
                Ok(status) if status.is_success() => {
                    info!(id = %self.id, "deregistered");
                    println!("deregistered {}", self.id);
                }
                Ok(status) => warn!(%status, "deregistration refused"),
                Err(error) => warn!(error = %format!("{error:#}"), "deregistration failed"),
            }
        }
        Ok(())
    }
}
