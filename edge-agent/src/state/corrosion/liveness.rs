//! Whether the Corrosion node still answers. Its subscriptions say nothing when no row changes:
//! a node frozen (stopped, swapping, its disk hung) keeps their connections open and silent,
//! and the state would look current forever. So a small query (`SELECT 1` on `/v1/queries`)
//! goes out every `probe_interval_ms` with a deadline; while the answers come, the state is as
//! current as the node; once they stop, `status` and `/metrics` count the staleness from the
//! last answer.
//!
//! A node that answers but is cut off from its cluster (partitioned, or rejoining after a
//! restart and still catching up) passes this probe; see docs/corrosion.md.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::{body::Bytes, Method, StatusCode, Uri};
use tracing::{info, warn};

use super::{lock, Shared};
use crate::http_client;

/// How long an answer may take; later than this, the node is counted as not answering.
pub const DEADLINE: Duration = Duration::from_secs(1);

/// One probe: the time the node took to answer, or why it did not within [`DEADLINE`].
pub async fn probe(api: &Uri, token: Option<&str>) -> Result<Duration, String> {
    let started = Instant::now();
    let response = http_client::send(
        api,
        token,
        Method::POST,
        "/v1/queries",
        Some(Bytes::from_static(b"\"SELECT 1\"")),
        DEADLINE,
    )
    .await
    .map_err(|e| e.to_string())?;
    let status = response.status();
    let left = DEADLINE.saturating_sub(started.elapsed());
    http_client::body(response, left).await?;
    if status != StatusCode::OK {
        return Err(format!("answered {status}"));
    }
    Ok(started.elapsed())
}

/// How far behind the state may be: zero while the subscriptions stream, every table has been
/// read and the node answered a probe within `grace`; else the time since the later of the last
/// answer and the last event; `None` when nothing has come from the node yet.
pub fn staleness(
    connected: bool,
    synced: bool,
    answered: Option<Instant>,
    last_event: Option<Instant>,
    grace: Duration,
    now: Instant,
) -> Option<Duration> {
    let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
    match since(answered) {
        Some(age) if connected && synced && age <= grace => Some(Duration::ZERO),
        Some(age) if connected && synced => Some(age),
        None if connected && synced => Some(Duration::ZERO),
        answered => match (answered, since(last_event)) {
            (Some(a), Some(e)) => Some(a.min(e)),
            (a, e) => a.or(e),
        },
    }
}

/// Probes every `interval` until the runtime ends, recording answers in `shared`.
pub(super) async fn run(
    api: Uri,
    token: Option<String>,
    shared: Arc<Mutex<Shared>>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let result = probe(&api, token.as_deref()).await;
        let mut shared = lock(&shared);
        match result {
            Ok(took) => {
                shared.health.answered = Some(Instant::now());
                shared.health.probe_ms = Some(took.as_secs_f64() * 1000.0);
                if failing {
                    failing = false;
                    info!(api = %api, "the Corrosion node answers again");
                }
            }
            Err(error) => {
                shared.health.probe_failures += 1;
                if !failing {
                    failing = true;
                    warn!(api = %api, %error, "the Corrosion node does not answer; the state counts as stale from its last answer");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_is_current_only_while_the_node_answers() {
        let now = Instant::now();
        let grace = Duration::from_secs(2);
        let ago = |s: u64| now.checked_sub(Duration::from_secs(s));
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(staleness(true, true, ago(1), ago(30), grace, now), secs(0));
        assert_eq!(staleness(true, true, None, None, grace, now), secs(0));
        // Frozen: the streams look connected, the probes go unanswered.
        assert_eq!(staleness(true, true, ago(5), ago(30), grace, now), secs(5));
        // Disconnected: from the later of the last answer and the last event.
        assert_eq!(staleness(false, true, ago(9), ago(4), grace, now), secs(4));
        assert_eq!(staleness(false, false, None, ago(7), grace, now), secs(7));
        assert_eq!(staleness(false, false, None, None, grace, now), None);
    }

    /// A node that stops answering (here: accepts and never replies) fails the probe within its
    /// deadline; one that answers passes.
    #[tokio::test]
    async fn a_silent_node_fails_the_probe_within_the_deadline() -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            for n in 0.. {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                if n == 0 {
                    let body =
                        "{\"columns\":[\"1\"]}\n{\"row\":[1,[1]]}\n{\"eoq\":{\"time\":0.0}}\n";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                } else {
                    held.push(stream);
                }
            }
        });
        let api: Uri = format!("http://{addr}").parse()?;
        let took = probe(&api, None).await.map_err(anyhow::Error::msg)?;
        assert!(took < DEADLINE);
        let started = Instant::now();
        assert!(probe(&api, None).await.is_err(), "a silent node fails");
        assert!(started.elapsed() < DEADLINE + Duration::from_millis(500));
        server.abort();
        Ok(())
    }
}
