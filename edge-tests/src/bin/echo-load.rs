//! `echo-load`: many concurrent TCP connections to echo servers, each sending a pseudo-random
//! payload of random size and checking every byte that comes back. The end-to-end tests run it in
//! a client namespace against the VIP.
//!
//! ```text
//! echo-load --target ADDR:PORT [--target ...] --connections N --max-bytes B [--seed S]
//!           [--hold-secs H] [--go-file PATH] [--active-ms MS] [--recheck]
//! ```
//! Connections are spread round-robin over the targets. Payloads are generated and checked as
//! streams (xorshift per connection), so memory stays flat however large they are. After every
//! connection is verified, it prints `holding`, keeps them all open for `--hold-secs` (so that a
//! test can look at them from the servers' side, or disturb the path; with `--go-file`, the hold
//! ends as soon as that file exists, so that a test decides when its disturbance is complete;
//! with `--active-ms`, every connection echoes 1 KiB every MS milliseconds during the hold),
//! with `--recheck` echoes a second payload on every one of them, then prints one JSON summary
//! line.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

struct Args {
    targets: Vec<SocketAddr>,
    connections: usize,
    max_bytes: usize,
    seed: u64,
    hold: Duration,
    go_file: Option<PathBuf>,
    active: Option<Duration>,
    recheck: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        targets: Vec::new(),
        connections: 100,
        max_bytes: 64 * 1024,
        seed: 1,
        hold: Duration::ZERO,
        go_file: None,
        active: None,
        recheck: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--recheck" {
            args.recheck = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--target" => args.targets.push(value.parse().map_err(|e| bad(&e))?),
            "--connections" => args.connections = value.parse().map_err(|e| bad(&e))?,
            "--max-bytes" => args.max_bytes = value.parse().map_err(|e| bad(&e))?,
            "--seed" => args.seed = value.parse().map_err(|e| bad(&e))?,
            "--hold-secs" => args.hold = Duration::from_secs(value.parse().map_err(|e| bad(&e))?),
            "--go-file" => args.go_file = Some(value.into()),
            "--active-ms" => {
                args.active = Some(Duration::from_millis(value.parse().map_err(|e| bad(&e))?))
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.targets.is_empty() || args.max_bytes == 0 {
        return Err("need at least one --target and --max-bytes > 0".into());
    }
    Ok(args)
}

/// xorshift64*: a fast, seedable byte stream; both ends of a check regenerate it.
struct Stream(u64);

impl Stream {
    fn new(seed: u64) -> Self {
        Stream(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// A verified connection, kept open until the hold ends.
type Open = (OwnedReadHalf, OwnedWriteHalf, usize);

async fn one(target: SocketAddr, seed: u64, len: usize) -> Result<Open, String> {
    let stream = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    let (reader, writer) = stream.into_split();
    echo(reader, writer, seed, len).await
}

/// Sends `len` bytes of the `seed` stream and checks that the same bytes come back.
async fn echo(
    mut reader: OwnedReadHalf,
    mut writer: OwnedWriteHalf,
    seed: u64,
    len: usize,
) -> Result<Open, String> {
    // Payload chunks are 8-byte aligned so that the reader regenerates the same stream.
    const CHUNK: usize = 64 * 1024;
    let write = async move {
        let mut gen = Stream::new(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = len;
        while left > 0 {
            let n = left.min(CHUNK);
            gen.fill(&mut buf[..n]);
            writer
                .write_all(&buf[..n])
                .await
                .map_err(|e| format!("write: {e}"))?;
            left -= n;
        }
        Ok::<_, String>(writer)
    };
    let read = async move {
        let mut gen = Stream::new(seed);
        let mut expected = vec![0u8; CHUNK];
        let mut got = vec![0u8; CHUNK];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK);
            gen.fill(&mut expected[..n]);
            reader
                .read_exact(&mut got[..n])
                .await
                .map_err(|e| format!("read at byte {done} of {len}: {e}"))?;
            if got[..n] != expected[..n] {
                return Err(format!("corrupt echo in bytes {done}..{}", done + n));
            }
            done += n;
        }
        Ok::<_, String>(reader)
    };
    let (writer, reader) = tokio::try_join!(write, read)?;
    Ok((reader, writer, len))
}

/// Echoes `len` bytes once more on every connection (seeds from `seed`); the ones that fail
/// are recorded in `errors` and dropped.
async fn echo_all(
    open: Vec<Open>,
    seed: u64,
    len: usize,
    when: &str,
    errors: &mut Vec<String>,
) -> Vec<Open> {
    let mut again = tokio::task::JoinSet::new();
    for (i, (reader, writer, _)) in open.into_iter().enumerate() {
        again.spawn(echo(reader, writer, seed.wrapping_add(i as u64), len));
    }
    let mut kept = Vec::new();
    while let Some(result) = again.join_next().await {
        match result {
            Ok(Ok(conn)) => kept.push(conn),
            Ok(Err(e)) => errors.push(format!("{when}: {e}")),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    kept
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("echo-load: {e}");
            std::process::exit(2);
        }
    };
    edge_tests::raise_nofile();
    let mut sizes = Stream::new(args.seed);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        let target = args.targets[i % args.targets.len()];
        let len = 1 + (sizes.next_u64() as usize) % args.max_bytes;
        let seed = args.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        tasks.spawn(one(target, seed, len));
    }
    let mut open = Vec::new();
    let mut bytes = 0usize;
    let mut errors = Vec::new();
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(conn)) => {
                bytes += conn.2;
                open.push(conn);
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("task: {e}")),
        }
    }
    let ok = open.len();
    let mut active_rounds = 0u64;
    if !args.hold.is_zero() {
        println!("holding {ok}");
        let until = Instant::now() + args.hold;
        while Instant::now() < until && !args.go_file.as_ref().is_some_and(|f| f.exists()) {
            match args.active {
                Some(every) => {
                    active_rounds += 1;
                    let seed = args
                        .seed
                        .wrapping_mul(5_000_011)
                        .wrapping_add(active_rounds);
                    open = echo_all(open, seed, 1024, "during the hold", &mut errors).await;
                    tokio::time::sleep(every).await;
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
    let mut rechecked = 0usize;
    if args.recheck {
        let seed = args.seed.wrapping_mul(7_000_003);
        open = echo_all(open, seed, 4096, "after the hold", &mut errors).await;
        rechecked = open.len();
    }
    drop(open);
    let errors_json: Vec<String> = errors.iter().take(20).map(|e| format!("{e:?}")).collect();
    println!(
        "{{\"connections\":{},\"ok\":{ok},\"rechecked\":{rechecked},\"active_rounds\":{active_rounds},\"failed\":{},\"bytes\":{bytes},\"errors\":[{}]}}",
        args.connections,
        errors.len(),
        errors_json.join(",")
    );
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
