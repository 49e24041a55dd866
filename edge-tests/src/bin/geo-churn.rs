//! `geo-churn --every-ms MS --go-file PATH --from ADDR... --to ADDR...`: a stream of new
//! clients in several countries. Every MS milliseconds it opens one connection, from the next
//! source address of `--from` to the next target of `--to` (round robin over every pair), reads
//! the backend's name (the `echo-server --hello` line), has one message echoed, and closes.
//! It stops once PATH exists (or after `--secs`) and prints one JSON line: successes,
//! failures with their first errors, and for every (source, target) pair the backends reached
//! and how often.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpSocket,
};

struct Args {
    every: Duration,
    go_file: Option<PathBuf>,
    secs: Option<u64>,
    from: Vec<IpAddr>,
    to: Vec<SocketAddr>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        every: Duration::from_millis(10),
        go_file: None,
        secs: None,
        from: Vec::new(),
        to: Vec::new(),
    };
    let mut list: Option<&str> = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--every-ms" => {
                let ms: u64 = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--every-ms N")?;
                args.every = Duration::from_millis(ms.max(1));
            }
            "--go-file" => args.go_file = Some(it.next().ok_or("--go-file PATH")?.into()),
            "--secs" => args.secs = Some(it.next().and_then(|v| v.parse().ok()).ok_or("--secs N")?),
            "--from" | "--to" => list = Some(if arg == "--from" { "from" } else { "to" }),
            value => match list {
                Some("from") => args
                    .from
                    .push(value.parse().map_err(|e| format!("--from {value}: {e}"))?),
                Some(_) => args
                    .to
                    .push(value.parse().map_err(|e| format!("--to {value}: {e}"))?),
                None => return Err(format!("unexpected {value}")),
            },
        }
    }
    if args.from.is_empty() || args.to.is_empty() {
        return Err("usage: geo-churn [--every-ms MS] [--go-file PATH] [--secs N] --from ADDR... --to ADDR...".into());
    }
    Ok(args)
}

/// One client: the backend's name, or what went wrong.
async fn one(from: IpAddr, to: SocketAddr) -> Result<String, String> {
    let socket = if to.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(from, 0))
        .map_err(|e| format!("bind {from}: {e}"))?;
    let stream = socket
        .connect(to)
        .await
        .map_err(|e| format!("connect {from} -> {to}: {e}"))?;
    let mut stream = BufReader::new(stream);
    let mut name = String::new();
    stream
        .read_line(&mut name)
        .await
        .map_err(|e| format!("{from} -> {to}: hello: {e}"))?;
    if name.is_empty() {
        return Err(format!("{from} -> {to}: closed before the hello"));
    }
    stream
        .get_mut()
        .write_all(b"ping")
        .await
        .map_err(|e| format!("{from} -> {to}: write: {e}"))?;
    let mut echo = [0u8; 4];
    stream
        .read_exact(&mut echo)
        .await
        .map_err(|e| format!("{from} -> {to}: echo: {e}"))?;
    if &echo != b"ping" {
        return Err(format!("{from} -> {to}: echo garbled"));
    }
    Ok(name.trim().to_owned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let pairs: Vec<(IpAddr, SocketAddr)> = args
        .from
        .iter()
        .flat_map(|f| {
            args.to
                .iter()
                .filter(move |t| t.is_ipv4() == f.is_ipv4())
                .map(move |t| (*f, *t))
        })
        .collect();
    if pairs.is_empty() {
        return Err("no source address of a target's family".into());
    }
    let until = args
        .secs
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    let mut tick = tokio::time::interval(args.every);
    let mut clients = tokio::task::JoinSet::new();
    let mut next = 0usize;
    println!("churning over {} pairs", pairs.len());
    loop {
        tick.tick().await;
        if until.is_some_and(|u| tokio::time::Instant::now() >= u)
            || args.go_file.as_ref().is_some_and(|p| p.exists())
        {
            break;
        }
        let (from, to) = pairs[next % pairs.len()];
        next += 1;
        clients.spawn(async move {
            let result = tokio::time::timeout(Duration::from_secs(3), one(from, to))
                .await
                .unwrap_or_else(|_| Err(format!("{from} -> {to}: timed out")));
            (from, to, result)
        });
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut errors = Vec::new();
    let mut landed: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    while let Some(done) = clients.join_next().await {
        let Ok((from, to, result)) = done else {
            failed += 1;
            continue;
        };
        match result {
            Ok(backend) => {
                ok += 1;
                *landed
                    .entry(format!("{from}|{to}"))
                    .or_default()
                    .entry(backend)
                    .or_default() += 1;
            }
            Err(error) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(error);
                }
            }
        }
    }
    let doc = serde_json::json!({"ok": ok, "failed": failed, "errors": errors, "landed": landed});
    println!("{doc}");
    Ok(())
}
