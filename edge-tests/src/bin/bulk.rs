//! `bulk serve ADDR` / `bulk get ADDR BYTES TIMEOUT_MS` / `bulk put ADDR BYTES TIMEOUT_MS`: one
//! large transfer over one connection, for the path-MTU labs (`pmtu_lab`).
//!
//! The server reads a request line: `get N` has it send N bytes and close; `put N` has it read
//! N bytes and answer `got N`. So each direction's large segments can be tested alone: a `get`
//! sends only a few bytes towards the server, a `put` receives only a line. The clients print
//! one JSON object, `{"bytes":..,"complete":..,"ms":..}`, and exit 0 either way: a stalled
//! transfer is a result (`complete` false after TIMEOUT_MS), not an error. The server prints
//! `bulk ready` once listening.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

const CHUNK: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["serve", addr] => serve(addr),
        [mode @ ("get" | "put"), addr, bytes, timeout_ms] => client(mode, addr, bytes, timeout_ms),
        _ => Err("usage: bulk serve ADDR | bulk get|put ADDR BYTES TIMEOUT_MS".into()),
    };
    if let Err(e) = result {
        eprintln!("bulk: {e}");
        std::process::exit(1);
    }
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| format!("{what} `{s}`: {e}"))
}

fn serve(addr: &str) -> Result<(), String> {
    let addr: SocketAddr = parse("address", addr)?;
    // A `[::]` listener is dual-stack (net.ipv6.bindv6only is 0), so it serves IPv4 too.
    let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    println!("bulk ready");
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(e) = answer(stream) {
                        eprintln!("bulk: connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("bulk: accept: {e}"),
        }
    }
    Ok(())
}

fn answer(stream: TcpStream) -> Result<(), String> {
    // A client that stalls must not hold a thread for ever.
    let limit = Some(Duration::from_secs(30));
    stream.set_read_timeout(limit).map_err(|e| e.to_string())?;
    stream.set_write_timeout(limit).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    let mut stream = stream;
    match line.trim().split_once(' ') {
        Some(("get", n)) => {
            let mut left: usize = parse("length", n)?;
            let chunk = pattern(CHUNK);
            while left > 0 {
                let n = left.min(CHUNK);
                stream.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
                left -= n;
            }
            Ok(())
        }
        Some(("put", n)) => {
            let want: u64 = parse("length", n)?;
            let got = std::io::copy(&mut reader.take(want), &mut std::io::sink())
                .map_err(|e| e.to_string())?;
            stream
                .write_all(format!("got {got}\n").as_bytes())
                .map_err(|e| e.to_string())
        }
        _ => Err(format!("bad request {line:?}")),
    }
}

/// Bytes that show a shifted or mangled stream: not all the same value.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

fn client(mode: &str, addr: &str, bytes: &str, timeout_ms: &str) -> Result<(), String> {
    let addr: SocketAddr = parse("address", addr)?;
    let bytes: usize = parse("length", bytes)?;
    let deadline = Duration::from_millis(parse("timeout", timeout_ms)?);
    let started = Instant::now();
    let mut stream =
        TcpStream::connect_timeout(&addr, deadline).map_err(|e| format!("connect {addr}: {e}"))?;
    writeln!(stream, "{mode} {bytes}").map_err(|e| e.to_string())?;
    let done = if mode == "get" {
        receive(&mut stream, bytes, started, deadline)?
    } else {
        send(&mut stream, bytes, started, deadline)?
    };
    println!(
        "{{\"bytes\":{done},\"complete\":{},\"ms\":{}}}",
        done == bytes,
        started.elapsed().as_millis()
    );
    Ok(())
}

/// Reads until `bytes` arrived, the server closed, or the deadline; checks the pattern.
fn receive(
    stream: &mut TcpStream,
    bytes: usize,
    started: Instant,
    deadline: Duration,
) -> Result<usize, String> {
    let expected = pattern(CHUNK);
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0;
    while done < bytes {
        let Some(left) = deadline.checked_sub(started.elapsed()) else {
            break;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                for (i, b) in buf[..n].iter().enumerate() {
                    if *b != expected[(done + i) % CHUNK] {
                        return Err(format!("byte {} differs", done + i));
                    }
                }
                done += n;
            }
            Err(e) if is_timeout(&e) => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(done)
}

/// Writes `bytes` and reads the server's count, within the deadline; how many the server got.
fn send(
    stream: &mut TcpStream,
    bytes: usize,
    started: Instant,
    deadline: Duration,
) -> Result<usize, String> {
    let chunk = pattern(CHUNK);
    let mut sent = 0;
    while sent < bytes {
        let Some(left) = deadline.checked_sub(started.elapsed()) else {
            return Ok(0);
        };
        stream
            .set_write_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        match stream.write(&chunk[..(bytes - sent).min(CHUNK)]) {
            Ok(n) => sent += n,
            Err(e) if is_timeout(&e) => return Ok(0),
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    let Some(left) = deadline.checked_sub(started.elapsed()) else {
        return Ok(0);
    };
    stream
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) => Ok(line
            .trim()
            .strip_prefix("got ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)),
        Err(e) if is_timeout(&e) => Ok(0),
        Err(e) => Err(format!("read: {e}")),
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}
