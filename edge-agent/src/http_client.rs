//! HTTP/1.1 requests from the agent (to Corrosion, HTTP health checks, and the sidecar to the
//! agent's API): one connection per request through hyper's connection API (so each says
//! `Connection: close`), bounded by a timeout for the answer's head; the body is the caller's
//! to read (and may stream for as long as it lasts).

use std::time::Duration;

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    Method, Request, Response, Uri,
};
use thiserror::Error;
use tokio::net::TcpStream;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("{0} has no host")]
    NoHost(Uri),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{addr}: {source}")]
    Http { addr: String, source: hyper::Error },
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
}

const USER_AGENT: &str = concat!("edgeproxy/", env!("CARGO_PKG_VERSION"));

/// Sends one request to `base` (`http://host:port`) for `path` (with its query).
pub async fn send(
    base: &Uri,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    timeout: Duration,
) -> Result<Response<Incoming>, HttpError> {
    let authority = base
        .authority()
        .ok_or_else(|| HttpError::NoHost(base.clone()))?;
    let addr = authority.as_str().to_owned();
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(80);
    let timed_out = || HttpError::Timeout {
        addr: addr.clone(),
        timeout,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| HttpError::Connect {
            addr: addr.clone(),
            source,
        })?;
    let http = |source| HttpError::Http {
        addr: addr.clone(),
        source,
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(http)?;
    // Lives as long as the response body is read.
    tokio::spawn(conn);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::USER_AGENT, USER_AGENT)
        .header(hyper::header::CONNECTION, "close");
    if body.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    if let Some(token) = token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(body.unwrap_or_default()))?;
    tokio::time::timeout(timeout, sender.send_request(request))
        .await
        .map_err(|_| timed_out())?
        .map_err(http)
}

/// Reads a whole (small) body within `timeout`.
pub async fn body(response: Response<Incoming>, timeout: Duration) -> Result<Bytes, String> {
    use http_body_util::BodyExt as _;
    match tokio::time::timeout(timeout, response.into_body().collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the body did not arrive within {timeout:?}")),
    }
}
