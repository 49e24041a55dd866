//! `hostile-client`: the attacks of issue 18 on the agent's own servers, for the lab tests. No
//! credentials are needed for any of them.
//!
//! ```text
//! hostile-client slow-http --target ADDR:PORT --from IP [--from IP ...] --connections N
//!                [--interval-ms MS] [--secs S] [--connects-per-sec R]
//! hostile-client dns-junk --udp ADDR:PORT --tcp ADDR:PORT --count N [--seed S]
//! hostile-client http-flood --target ADDR:PORT --token T --requests N [--concurrency C]
//!                [--app APP] [--ids K] [--from IP]
//! ```
//!
//! `slow-http` keeps `N` connections trying to be open (spread over the `--from` source
//! addresses), each sending a partial request head one byte every interval (a "slowloris"); a
//! connection the server closes or refuses is opened again at its next tick, as a persistent
//! attacker would, with new connections paced at `R` a second in all (1,000 by default; the
//! ramp to `N` and the retries alike, as slowhttptest's `-r`). `dns-junk` sends `N` malformed DNS messages over UDP and `N / 10` over TCP
//! connections of 10 messages each (see [`junk`]). `http-flood` sends registration API requests: valid
//! registrations of `K` ids over and over, and as many with a wrong token, without one, with a
//! bad body, and for unknown ids. Each prints one JSON line of what it saw.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream, UdpSocket},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flags as `--name value` pairs (repeatable ones keep every value).
struct Flags(BTreeMap<String, Vec<String>>);

impl Flags {
    fn parse(args: &[String]) -> Result<Self, Error> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let name = flag
                .strip_prefix("--")
                .ok_or_else(|| format!("expected a --flag, got {flag:?}"))?;
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            map.entry(name.to_owned()).or_default().push(value.clone());
        }
        Ok(Flags(map))
    }

    fn all<T: std::str::FromStr>(&self, name: &str) -> Result<Vec<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        self.0
            .get(name)
            .into_iter()
            .flatten()
            .map(|v| v.parse().map_err(|e| format!("--{name} {v}: {e}").into()))
            .collect()
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: Option<T>) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        match self.all(name)?.pop() {
            Some(v) => Ok(v),
            None => default.ok_or_else(|| format!("--{name} is required").into()),
        }
    }
}

/// xorshift64*: reproducible junk.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default)]
struct SlowStats {
    /// Slots that made their first attempt.
    started: AtomicU64,
    connects: AtomicU64,
    connect_failed: AtomicU64,
    /// Closed by the server without a word.
    closed: AtomicU64,
    /// Answered with a status (a refusal or a timeout): counted by status.
    answered: std::sync::Mutex<BTreeMap<String, u64>>,
    open: AtomicU64,
    max_open: AtomicU64,
    bytes: AtomicU64,
}

const SLOW_HEAD: &[u8] =
    b"POST /v1/registrations HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\nX-Slow: ";

/// A connection to `target` from `from` (any address of the namespace if `None`).
async fn connect_from(target: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }?;
    if let Some(from) = from {
        socket.bind(SocketAddr::new(from, 0))?;
    }
    socket.connect(target).await
}

/// New connections, first and repeated, at most at the pacer's rate (as slowhttptest's
/// `-r`): a slot waits here before each attempt.
type Pacer = Arc<tokio::sync::Mutex<tokio::time::Interval>>;

/// One attacker slot: connect, trickle, and when let go, connect again (at the slot's next
/// tick, and within the pacer's rate).
async fn slow_slot(
    target: SocketAddr,
    from: IpAddr,
    interval: Duration,
    until: Instant,
    pacer: Pacer,
    stats: Arc<SlowStats>,
    total: usize,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    while Instant::now() < until {
        tick.tick().await;
        pacer.lock().await.tick().await;
        if std::mem::take(&mut first) && stats.started.fetch_add(1, Relaxed) + 1 == total as u64 {
            println!("slow-http: all {total} attackers started");
        }
        let mut stream =
            match tokio::time::timeout(Duration::from_secs(2), connect_from(target, Some(from)))
                .await
            {
                Ok(Ok(stream)) => stream,
                _ => {
                    stats.connect_failed.fetch_add(1, Relaxed);
                    continue;
                }
            };
        stats.connects.fetch_add(1, Relaxed);
        let now = stats.open.fetch_add(1, Relaxed) + 1;
        stats.max_open.fetch_max(now, Relaxed);
        let mut sent = 0usize;
        let mut buf = [0u8; 256];
        loop {
            // The head never ends: after the prefix, one more `a` every tick.
            let byte = SLOW_HEAD.get(sent).copied().unwrap_or(b'a');
            if stream.write_all(&[byte]).await.is_err() {
                stats.closed.fetch_add(1, Relaxed);
                break;
            }
            sent += 1;
            stats.bytes.fetch_add(1, Relaxed);
            if Instant::now() >= until {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {}
                read = stream.read(&mut buf) => {
                    match read {
                        Ok(n) if n > 0 => {
                            let text = String::from_utf8_lossy(&buf[..n]);
                            let status = text
                                .split_whitespace()
                                .nth(1)
                                .unwrap_or("?")
                                .to_owned();
                            *stats
                                .answered
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .entry(status)
                                .or_default() += 1;
                        }
                        _ => {
                            stats.closed.fetch_add(1, Relaxed);
                        }
                    }
                    break;
                }
            }
        }
        stats.open.fetch_sub(1, Relaxed);
    }
}

async fn slow_http(flags: &Flags) -> Result<String, Error> {
    let target: SocketAddr = flags.get("target", None)?;
    let from: Vec<IpAddr> = flags.all("from")?;
    if from.is_empty() {
        return Err("slow-http needs at least one --from".into());
    }
    let connections: usize = flags.get("connections", None)?;
    let interval = Duration::from_millis(flags.get("interval-ms", Some(2000))?);
    let secs: u64 = flags.get("secs", Some(20))?;
    let rate: u64 = flags.get("connects-per-sec", Some(1000))?;
    let until = Instant::now() + Duration::from_secs(secs);
    let stats = Arc::new(SlowStats::default());
    let mut pace = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pacer: Pacer = Arc::new(tokio::sync::Mutex::new(pace));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        tasks.spawn(slow_slot(
            target,
            from[i % from.len()],
            interval,
            until,
            Arc::clone(&pacer),
            Arc::clone(&stats),
            connections,
        ));
    }
    while tasks.join_next().await.is_some() {}
    let answered = stats
        .answered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(format!(
        "{{\"connects\":{},\"connect_failed\":{},\"closed\":{},\"answered\":{{{answered}}},\"max_open\":{},\"bytes\":{}}}",
        stats.connects.load(Relaxed),
        stats.connect_failed.load(Relaxed),
        stats.closed.load(Relaxed),
        stats.max_open.load(Relaxed),
        stats.bytes.load(Relaxed),
    ))
}

/// A DNS message no server should be asked: a query header with random flags (so a random
/// opcode); half of them a bare header that parses (an opcode the server does not implement, an
/// update with no zone), the other half followed by up to 300 random bytes.
fn junk(rng: &mut Rng) -> Vec<u8> {
    let mut message: Vec<u8> = (0..12).map(|_| rng.next() as u8).collect();
    // QR = 0: a query (servers drop responses silently).
    message[2] &= 0x7f;
    if rng.next().is_multiple_of(2) {
        message[4..12].fill(0);
    } else {
        let len = (rng.next() % 300) as usize;
        message.extend((0..len).map(|_| rng.next() as u8));
    }
    message
}

async fn dns_junk(flags: &Flags) -> Result<String, Error> {
    let udp_target: SocketAddr = flags.get("udp", None)?;
    let tcp_target: SocketAddr = flags.get("tcp", None)?;
    let count: usize = flags.get("count", None)?;
    let mut rng = Rng(flags.get::<u64>("seed", Some(18))? | 1);
    let bind: SocketAddr = match udp_target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    let udp = UdpSocket::bind(bind).await?;
    udp.connect(udp_target).await?;
    let mut udp_answers = 0u64;
    let mut buf = [0u8; 4096];
    for i in 0..count {
        udp.send(&junk(&mut rng)).await?;
        // Paced in bursts of 100, reading what came back meanwhile.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            while let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(1), udp.recv(&mut buf)).await
            {
                udp_answers += 1;
            }
        }
    }
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), udp.recv(&mut buf)).await
    {
        udp_answers += 1;
    }
    let (mut tcp_sent, mut tcp_conns) = (0u64, 0u64);
    for _ in 0..count / 100 {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(tcp_target)).await
        else {
            continue;
        };
        tcp_conns += 1;
        for _ in 0..10 {
            let message = junk(&mut rng);
            let mut framed = (message.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&message);
            if stream.write_all(&framed).await.is_err() {
                break;
            }
            tcp_sent += 1;
        }
        let _ = stream.shutdown().await;
    }
    Ok(format!(
        "{{\"udp_sent\":{count},\"udp_answers\":{udp_answers},\"tcp_connections\":{tcp_conns},\"tcp_sent\":{tcp_sent}}}"
    ))
}

/// One HTTP/1.1 request on a kept-alive connection; the status of the answer.
async fn request(stream: &mut TcpStream, head: &str, body: &str) -> Result<u16, Error> {
    let text = format!(
        "{head}\r\nHost: edge\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err("connection closed".into());
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if got.len() >= end + 4 + length {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            return Ok(status);
        }
    }
}

async fn http_flood(flags: &Flags) -> Result<String, Error> {
    let target: SocketAddr = flags.get("target", None)?;
    let token: String = flags.get("token", None)?;
    let requests: usize = flags.get("requests", None)?;
    let concurrency: usize = flags.get("concurrency", Some(8))?;
    let app: String = flags.get("app", Some("flood".to_owned()))?;
    let ids: usize = flags.get("ids", Some(20))?;
    let from: Option<IpAddr> = flags.all("from")?.pop();
    let next = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(std::sync::Mutex::new(BTreeMap::<u16, u64>::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (next, statuses, token, app) = (
            Arc::clone(&next),
            Arc::clone(&statuses),
            token.clone(),
            app.clone(),
        );
        tasks.spawn(async move {
            let mut stream: Option<TcpStream> = None;
            loop {
                let i = next.fetch_add(1, Relaxed) as usize;
                if i >= requests {
                    break;
                }
                let id = format!("flood-{}", i % ids);
                let registration = format!(
                    "{{\"id\":\"{id}\",\"app\":\"{app}\",\"region\":\"us\",\"address\":\"fd00:ee:9::{:x}\",\"port\":7007,\"heartbeat_secs\":30}}",
                    i % ids + 1
                );
                let (head, body) = match i % 5 {
                    0 => (
                        format!("POST /v1/registrations HTTP/1.1\r\nAuthorization: Bearer {token}"),
                        registration,
                    ),
                    1 => (
                        "POST /v1/registrations HTTP/1.1\r\nAuthorization: Bearer wrong-token-0123456789".to_owned(),
                        registration,
                    ),
                    2 => ("POST /v1/registrations HTTP/1.1".to_owned(), registration),
                    3 => (
                        format!("POST /v1/registrations HTTP/1.1\r\nAuthorization: Bearer {token}"),
                        format!("{{\"id\":\"{id}\",\"app\":"),
                    ),
                    _ => (
                        format!("PUT /v1/registrations/nobody-{i}/heartbeat HTTP/1.1\r\nAuthorization: Bearer {token}"),
                        String::new(),
                    ),
                };
                if stream.is_none() {
                    stream = connect_from(target, from).await.ok();
                }
                let status = match stream.as_mut() {
                    Some(s) => match tokio::time::timeout(
                        Duration::from_secs(5),
                        request(s, &head, &body),
                    )
                    .await
                    {
                        Ok(Ok(status)) => status,
                        _ => {
                            stream = None;
                            0
                        }
                    },
                    None => 0,
                };
                *statuses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(status)
                    .or_default() += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let statuses = statuses
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(format!("{{\"statuses\":{{{statuses}}}}}"))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    edge_tests::raise_nofile();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((mode, rest)) => match Flags::parse(rest) {
            Ok(flags) => match mode.as_str() {
                "slow-http" => slow_http(&flags).await,
                "dns-junk" => dns_junk(&flags).await,
                "http-flood" => http_flood(&flags).await,
                other => Err(format!("unknown mode {other}").into()),
            },
            Err(e) => Err(e),
        },
        None => Err("usage: hostile-client slow-http|dns-junk|http-flood --flags".into()),
    };
    match result {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("hostile-client: {e}");
            std::process::exit(2);
        }
    }
}
