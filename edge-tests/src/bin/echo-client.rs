//! `echo-client ADDR [COUNT [WARMUP [SIZE [LOCAL_PORT]]]]`: round-trip latency through a TCP echo
//! service, for `cargo xtask bench`. LOCAL_PORT fixes the connection's source port, so that runs
//! through different balancers are the same connection (and land on the same CPUs).
//!
//! One connection; SIZE-byte messages (default 64) are ping-ponged WARMUP times (default 1000,
//! not measured: caches, the flow table and the scheduler settle), then COUNT times (default
//! 20000), each timed from just before the write to just after the whole echo is read. Prints
//! one JSON object: `{"samples":N,"p50_us":..,"p99_us":..,"min_us":..,"max_us":..,"mean_us":..}`.
//!
//! Blocking sockets on purpose: an async runtime's wake-ups would add to every sample.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);

fn main() {
    if let Err(e) = run() {
        eprintln!("echo-client: {e}");
        std::process::exit(1);
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match args.get(i) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|e| format!("argument {i} `{s}`: {e}")),
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(addr) = args.first() else {
        return Err("usage: echo-client ADDR [COUNT [WARMUP [SIZE [LOCAL_PORT]]]]".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("address {addr}: {e}"))?;
    let count: usize = arg(&args, 1, 20_000)?;
    let warmup: usize = arg(&args, 2, 1_000)?;
    let size: usize = arg(&args, 3, 64)?;
    if count == 0 || size == 0 {
        return Err("COUNT and SIZE must be positive".into());
    }

    let local_port: u16 = arg(&args, 4, 0)?;
    let mut stream = connect(addr, local_port).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // A broken path must fail the run, not hang it.
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;

    let mut out = vec![0u8; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        // Vary the payload so that a stale or misrouted echo is caught.
        out.iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = (i + j) as u8);
        let start = Instant::now();
        stream
            .write_all(&out)
            .map_err(|e| format!("write (round trip {i}): {e}"))?;
        stream
            .read_exact(&mut back)
            .map_err(|e| format!("read (round trip {i}): {e}"))?;
        let elapsed = start.elapsed();
        if back != out {
            return Err(format!(
                "round trip {i}: the echo differs from what was sent"
            ));
        }
        if i >= warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    samples.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len() as f64;
    println!(
        "{{\"samples\":{},\"p50_us\":{:.2},\"p99_us\":{:.2},\"min_us\":{:.2},\"max_us\":{:.2},\"mean_us\":{:.2}}}",
        samples.len(),
        us(percentile(&samples, 50.0)),
        us(percentile(&samples, 99.0)),
        us(samples.first().copied().unwrap_or_default()),
        us(samples.last().copied().unwrap_or_default()),
        mean / 1000.0,
    );
    Ok(())
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A connection to `addr` from `local_port` (0: any).
fn connect(addr: SocketAddr, local_port: u16) -> std::io::Result<TcpStream> {
    if local_port == 0 {
        return TcpStream::connect_timeout(&addr, TIMEOUT);
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    let unspecified: std::net::IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    socket.bind(&SocketAddr::new(unspecified, local_port).into())?;
    socket.connect_timeout(&addr.into(), TIMEOUT)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
    }
}
