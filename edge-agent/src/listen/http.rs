//! HTTP/1.1 servers (the registration API, `/metrics`) behind a [`Gate`]: hyper's connection
//! builder directly, rather than `axum::serve`, because `axum::serve` sets no timer, so hyper's
//! header read timeout never runs (slow clients were never dropped), and it accepts without
//! bound. Here each connection has:
//!
//! - hyper's `header_read_timeout` (with tokio's timer): the head of every request, and the
//!   wait for the next one on a kept-alive connection, within `header_timeout`;
//! - the whole request, body included, and its answer within `request_timeout`, else 408 and
//!   the connection closed (a tokio timeout around the service: tower-http's `TimeoutLayer` does
//!   the same, but the wrapper also marks the connection busy, so one crate less);
//! - a read buffer of at most 16 KiB (hyper's default grows to about 400 KiB): a longer head is
//!   refused with 431; bodies are limited by the routers (the API's 64 KiB: 413);
//! - HTTP/1 only: both servers' clients speak it, and HTTP/2 would bring its own attack surface
//!   (rapid reset, stream floods) for nothing.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use axum::{body::Body, http, Router};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

use super::{accept_loop, Gate, Limits, Permit, Refusal};

/// The largest request head (and read buffer) a connection may hold.
const MAX_HEAD: usize = 16 * 1024;

/// What a refused connection is told before it is closed; written without waiting (a socket
/// just accepted has room for it), so a refusal never holds the accept loop.
fn refuse(stream: &TcpStream, refusal: Refusal) {
    let answer: &[u8] = match refusal {
        Refusal::Full => {
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
        Refusal::Source => {
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        }
    };
    let _ = stream.try_write(answer);
}

/// Listens on `addr` and serves `app` there on a task of its own, through a gate named
/// `<server> <address>` with `limits`; the address bound.
pub async fn start(
    server: &str,
    addr: SocketAddr,
    limits: Limits,
    app: Router,
) -> std::io::Result<SocketAddr> {
    let listener = super::bind(addr)?;
    let bound = listener.local_addr()?;
    let gate = Gate::new(format!("{server} {bound}"), limits);
    tokio::spawn(serve(listener, gate, app));
    Ok(bound)
}

/// Serves `app` on `listener` through `gate` until the task is dropped.
pub async fn serve(listener: TcpListener, gate: Arc<Gate>, app: Router) {
    accept_loop(listener, gate, refuse, move |stream, _peer, permit| {
        connection(stream, permit, app.clone())
    })
    .await;
}

fn timeout_answer() -> http::Response<Body> {
    let mut answer = http::Response::new(Body::from("request timeout\n"));
    *answer.status_mut() = http::StatusCode::REQUEST_TIMEOUT;
    answer.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    answer
}

async fn connection(stream: TcpStream, permit: Permit, app: Router) {
    let permit = Arc::new(permit);
    let limits = permit.gate().limits();
    let for_requests = Arc::clone(&permit);
    let service = service_fn(move |request: http::Request<Incoming>| {
        let busy = for_requests.busy();
        let app = app.clone();
        let permit = Arc::clone(&for_requests);
        async move {
            let answer = tokio::time::timeout(limits.request_timeout, app.oneshot(request)).await;
            drop(busy);
            match answer {
                Ok(Ok(answer)) => Ok::<_, Infallible>(answer),
                Ok(Err(never)) => match never {},
                Err(_) => {
                    permit.gate().timed_out();
                    Ok(timeout_answer())
                }
            }
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        result = served => {
            if result.is_err_and(|e| e.is_timeout()) {
                permit.gate().timed_out();
            }
        }
        // Dropping the connection closes it; it had no request in progress.
        () = permit.evicted() => {}
    }
}
