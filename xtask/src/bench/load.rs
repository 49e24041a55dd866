//! Load generators run in the client namespace (iperf3, wrk, echo-client) and the parsers of
//! their output.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context as _};
use edge_tests::NetNs;

use super::lab::{exec_bounded, exec_on_path_cpu, ECHO_PORT, HTTP_BODY, HTTP_PORT, IPERF_PORT};
use serde_json::Value;

/// Headroom over a test's own duration before `timeout` kills the tool.
const SLACK: Duration = Duration::from_secs(20);

/// wrk's shape for both HTTP tests: one thread, as the whole path runs on one CPU
/// (`lab::PATH_CPU`), and enough connections to keep every stage busy without turning the test
/// into a queueing one.
pub const WRK_THREADS: u32 = 1;
pub const WRK_CONNECTIONS: u32 = 50;

/// Round trips the echo client times, after a warm-up it does not time.
pub const ECHO_COUNT: u32 = 20_000;
pub const ECHO_WARMUP: u32 = 1_000;
pub const ECHO_SIZE: u32 = 64;

// ---------------------------------------------------------------------------------------------
// Probes: is the path through the balancer up at all?

/// One `GET /` with a fresh connection; checks for a 200 carrying the backend's body.
pub fn http_get(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    let reply = String::from_utf8_lossy(&reply);
    if !reply.starts_with("HTTP/1.1 200") || !reply.ends_with(HTTP_BODY) {
        bail!("unexpected reply from {addr}: {reply:?}");
    }
    Ok(())
}

/// One small echo round trip on a fresh connection.
pub fn echo_once(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let msg = b"edgeproxy bench probe";
    s.write_all(msg)?;
    let mut back = [0u8; 21];
    s.read_exact(&mut back)?;
    if &back != msg {
        bail!("the echo from {addr} differs from what was sent");
    }
    Ok(())
}

/// Waits until HTTP and echo both work from the client through the mode's path to the backend.
/// `alive` reports a balancer process that died meanwhile, so that its own error is shown
/// rather than a connection timeout.
pub fn probe(
    client: &NetNs,
    target: IpAddr,
    timeout: Duration,
    alive: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let http = SocketAddr::new(target, HTTP_PORT);
    let echo = SocketAddr::new(target, ECHO_PORT);
    let mut last = None;
    let done = super::lab::wait_until(timeout, || {
        alive()?;
        let attempt = client.run_in_thread(|| {
            http_get(http, Duration::from_secs(1))
                .with_context(|| format!("HTTP GET {http}"))
                .and_then(|()| {
                    echo_once(echo, Duration::from_secs(1)).with_context(|| format!("echo {echo}"))
                })
        })?;
        match attempt {
            Ok(()) => Ok(true),
            Err(e) => {
                last = Some(e);
                Ok(false)
            }
        }
    });
    match (done, last) {
        (Ok(()), _) => Ok(()),
        (Err(e), Some(last)) => Err(e.context(format!("last attempt: {last:#}"))),
        (Err(e), None) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// iperf3

#[derive(Debug, Clone, PartialEq)]
pub struct Iperf {
    /// Receiver-side goodput: what actually arrived, in Gbit/s.
    pub gbps: f64,
    /// TCP retransmissions the sender saw (a sign of drops on the path).
    pub retransmits: f64,
    /// Each stream's receiver-side Gbit/s, in the order iperf3 lists them: how evenly the
    /// streams shared the path (several streams land on CPUs by their hash).
    pub per_stream_gbps: Vec<f64>,
}

/// `cport`: the first client port of the streams (iperf3 gives the next ones to the others), so
/// that every mode of a round runs the same connections.
pub fn iperf3(
    client: &NetNs,
    target: IpAddr,
    streams: u32,
    seconds: u64,
    cport: u16,
) -> anyhow::Result<Iperf> {
    let out = exec_bounded(
        client,
        Duration::from_secs(seconds) + SLACK,
        &[
            "iperf3",
            "--cport",
            &cport.to_string(),
            "--client",
            &target.to_string(),
            "--port",
            &IPERF_PORT.to_string(),
            "--time",
            &seconds.to_string(),
            "--parallel",
            &streams.to_string(),
            "--connect-timeout",
            "3000",
            "--json",
        ],
    )?;
    parse_iperf3(&out)
}

/// Parses `iperf3 --json` client output: `end.sum_received.bits_per_second` (summed over the
/// streams, measured at the receiver), `end.sum_sent.retransmits`.
pub fn parse_iperf3(text: &str) -> anyhow::Result<Iperf> {
    let doc: Value = serde_json::from_str(text).context("iperf3 printed no JSON")?;
    if let Some(err) = doc.get("error").and_then(Value::as_str) {
        bail!("iperf3: {err}");
    }
    let bps = doc
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let retransmits = doc
        .pointer("/end/sum_sent/retransmits")
        .and_then(Value::as_f64)
        .unwrap_or(0.0);
    let per_stream_gbps = doc
        .pointer("/end/streams")
        .and_then(Value::as_array)
        .map(|streams| {
            streams
                .iter()
                .filter_map(|s| s.pointer("/receiver/bits_per_second")?.as_f64())
                .map(|b| b / 1e9)
                .collect()
        })
        .unwrap_or_default();
    Ok(Iperf {
        gbps: bps / 1e9,
        retransmits,
        per_stream_gbps,
    })
}

// ---------------------------------------------------------------------------------------------
// wrk

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Wrk {
    pub requests_per_sec: f64,
    pub requests: u64,
    /// connect + read + write + timeout socket errors.
    pub socket_errors: u64,
    pub non_2xx: u64,
}

impl Wrk {
    /// Errors as a fraction of requests: a high figure means the rate is not a rate of
    /// successful requests.
    pub fn error_ratio(&self) -> f64 {
        (self.socket_errors + self.non_2xx) as f64 / self.requests.max(1) as f64
    }
}

/// `close`: send `Connection: close`, so every request opens (and the server closes) a new TCP
/// connection: requests/s is then also new connections/s.
pub fn wrk(client: &NetNs, target: IpAddr, close: bool, seconds: u64) -> anyhow::Result<Wrk> {
    let url = format!("http://{}/", SocketAddr::new(target, HTTP_PORT));
    let threads = WRK_THREADS.to_string();
    let connections = WRK_CONNECTIONS.to_string();
    let duration = format!("{seconds}s");
    let mut argv = vec![
        "wrk",
        "--threads",
        &threads,
        "--connections",
        &connections,
        "--duration",
        &duration,
        "--timeout",
        "2s",
    ];
    if close {
        argv.extend(["--header", "Connection: close"]);
    }
    argv.push(&url);
    let out = exec_on_path_cpu(client, Duration::from_secs(seconds) + SLACK, &argv)?;
    parse_wrk(&out)
}

/// Parses wrk's text report (wrk has no machine-readable output without a Lua script).
pub fn parse_wrk(text: &str) -> anyhow::Result<Wrk> {
    let mut wrk = Wrk::default();
    let mut saw_rate = false;
    for line in text.lines().map(str::trim) {
        if let Some(rate) = line.strip_prefix("Requests/sec:") {
            wrk.requests_per_sec = rate
                .trim()
                .parse()
                .with_context(|| format!("wrk: bad Requests/sec line `{line}`"))?;
            saw_rate = true;
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            wrk.requests = count
                .trim()
                .parse()
                .with_context(|| format!("wrk: bad request count line `{line}`"))?;
        } else if let Some(errors) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 12, write 0, timeout 3"
            for part in errors.split(',') {
                let n = part
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .with_context(|| format!("wrk: bad socket errors line `{line}`"))?;
                wrk.socket_errors += n;
            }
        } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            wrk.non_2xx = n
                .trim()
                .parse()
                .with_context(|| format!("wrk: bad non-2xx line `{line}`"))?;
        }
    }
    if !saw_rate {
        bail!("wrk printed no Requests/sec line:\n{text}");
    }
    Ok(wrk)
}

// ---------------------------------------------------------------------------------------------
// echo round trips

#[derive(Debug, Clone, PartialEq)]
pub struct Echo {
    pub samples: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// `local_port`: the connection's source port, the same in every mode of a round.
pub fn echo(
    client: &NetNs,
    echo_client: &Path,
    target: IpAddr,
    local_port: u16,
) -> anyhow::Result<Echo> {
    let addr = SocketAddr::new(target, ECHO_PORT).to_string();
    let out = exec_on_path_cpu(
        client,
        Duration::from_secs(60),
        &[
            &echo_client.to_string_lossy(),
            &addr,
            &ECHO_COUNT.to_string(),
            &ECHO_WARMUP.to_string(),
            &ECHO_SIZE.to_string(),
            &local_port.to_string(),
        ],
    )?;
    parse_echo(&out)
}

/// Parses echo-client's one-line JSON report.
pub fn parse_echo(text: &str) -> anyhow::Result<Echo> {
    let doc: Value = serde_json::from_str(text.trim())
        .with_context(|| format!("echo-client printed no JSON: {text}"))?;
    let field = |k: &str| {
        doc.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("echo-client JSON has no number `{k}`: {text}"))
    };
    Ok(Echo {
        samples: field("samples")?,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
    })
}

#[cfg(test)]
mod tests {
    //! The samples in testdata/ were recorded from the tools on the lab machine (iperf3 3.12,
    //! wrk 4.1.0, this repository's echo-client) through a client / lb / backend lab.
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9 * b.abs().max(1.0)
    }

    #[test]
    fn iperf3_one_stream() {
        let got = parse_iperf3(include_str!("testdata/iperf3-1stream.json"));
        let got = got.map_err(|e| e.to_string());
        assert!(
            got.as_ref()
                .is_ok_and(|r| close(r.gbps, 4.625_150_753_532_857) && r.retransmits == 47.0),
            "{got:?}"
        );
    }

    #[test]
    fn iperf3_four_streams_sums_the_receivers() {
        let got = parse_iperf3(include_str!("testdata/iperf3-4streams.json"));
        let got = got.map_err(|e| e.to_string());
        assert!(
            got.as_ref()
                .is_ok_and(|r| close(r.gbps, 3.852_083_180_265_301) && r.retransmits == 49.0),
            "{got:?}"
        );
        let streams = got.map(|r| r.per_stream_gbps).unwrap_or_default();
        assert_eq!(streams.len(), 4, "{streams:?}");
        assert!(close(streams[0], 0.958_854_128_565_227), "{streams:?}");
    }

    #[test]
    fn iperf3_error_is_reported() {
        let got = parse_iperf3(include_str!("testdata/iperf3-refused.json"));
        let err = got.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("Connection refused"), "{err}");
    }

    #[test]
    fn iperf3_garbage_is_an_error() {
        assert!(parse_iperf3("iperf3: error - unable to connect").is_err());
    }

    #[test]
    fn wrk_keepalive() {
        let got = parse_wrk(include_str!("testdata/wrk-keepalive.txt"));
        let expected = Wrk {
            requests_per_sec: 101_353.33,
            requests: 203_751,
            socket_errors: 0,
            non_2xx: 0,
        };
        assert_eq!(got.map_err(|e| e.to_string()), Ok(expected));
    }

    #[test]
    fn wrk_connection_close() {
        let got = parse_wrk(include_str!("testdata/wrk-close.txt"));
        let expected = Wrk {
            requests_per_sec: 14_630.27,
            requests: 30_737,
            socket_errors: 0,
            non_2xx: 0,
        };
        assert_eq!(got.map_err(|e| e.to_string()), Ok(expected));
    }

    #[test]
    fn wrk_socket_errors() {
        // wrk pointed at the echo port: every reply is unparseable, so every read fails.
        let got = parse_wrk(include_str!("testdata/wrk-socket-errors.txt"));
        let expected = Wrk {
            requests_per_sec: 0.0,
            requests: 0,
            socket_errors: 14_230,
            non_2xx: 0,
        };
        let got = got.map_err(|e| e.to_string());
        assert_eq!(got, Ok(expected));
        assert!(got.is_ok_and(|w| w.error_ratio() > 1.0));
    }

    #[test]
    fn wrk_non_2xx() {
        // The line as wrk 4.1.0's src/wrk.c prints it, spliced into a recorded report.
        let text = include_str!("testdata/wrk-keepalive.txt").replace(
            "Requests/sec:",
            "  Non-2xx or 3xx responses: 17\nRequests/sec:",
        );
        let got = parse_wrk(&text).map_err(|e| e.to_string());
        assert!(got.as_ref().is_ok_and(|w| w.non_2xx == 17), "{got:?}");
    }

    #[test]
    fn wrk_without_a_rate_is_an_error() {
        assert!(parse_wrk("unable to connect to 10.0.2.2:8080 Connection refused\n").is_err());
    }

    #[test]
    fn echo_report() {
        let got = parse_echo(include_str!("testdata/echo-client.json"));
        let expected = Echo {
            samples: 2000.0,
            p50_us: 23.16,
            p99_us: 69.59,
        };
        assert_eq!(got.map_err(|e| e.to_string()), Ok(expected));
    }

    #[test]
    fn echo_report_missing_a_field_is_an_error() {
        assert!(parse_echo(r#"{"samples":10,"p50_us":1.5}"#).is_err());
    }
}
