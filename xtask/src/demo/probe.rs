//! What the clients see and where the routers send them, sampled continuously on threads
//! inside the lab's namespaces: each client connects to the VIP every `PROBE_EVERY` and reads
//! the backend's greeting (`NAME PEER`: which backend answered, and which POP's overlay address
//! it came from); each ISP's router's kernel route for the VIP is read every `ROUTE_EVERY`.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use edge_tests::Lab;

use super::{
    plan::{CLIENTS, ISPS, POPS, VIP, VIP_PORT},
    world::pop_of_peer,
};

const PROBE_EVERY: Duration = Duration::from_millis(200);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
const ROUTE_EVERY: Duration = Duration::from_millis(20);

/// One connection's outcome.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// The backend's name and the POP (index in `POPS`) it was reached through.
    Ok {
        backend: String,
        pop: Option<usize>,
        rtt: Duration,
    },
    Failed(String),
}

#[derive(Clone, Debug, Default)]
pub struct ClientSeen {
    pub last: Option<(Instant, Outcome)>,
    pub ok: u64,
    pub failed: u64,
}

/// Everything the samplers saw, shared with the screen.
#[derive(Default)]
pub struct Seen {
    pub clients: Vec<ClientSeen>,
    /// Per ISP: the POP its router sends the VIP to, and since when.
    pub routes: Vec<(Option<usize>, Instant)>,
}

pub struct Samplers {
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Samplers {
    pub fn start(lab: &Lab) -> anyhow::Result<Self> {
        let seen = Arc::new(Mutex::new(Seen {
            clients: vec![ClientSeen::default(); CLIENTS.len()],
            routes: vec![(None, Instant::now()); ISPS.len()],
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (i, c) in CLIENTS.iter().enumerate() {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            let from: Ipv4Addr = c.addr.parse()?;
            threads.push(
                lab.ns(ISPS[c.isp].clients_ns)
                    .spawn_thread(&format!("probe-{}", c.country), move || {
                        probe_loop(i, from, &seen, &stop)
                    })?,
            );
        }
        for (j, isp) in ISPS.iter().enumerate() {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            threads.push(
                lab.ns(isp.ns)
                    .spawn_thread(&format!("route-{}", isp.ns), move || {
                        route_loop(j, &seen, &stop)
                    })?,
            );
        }
        Ok(Samplers {
            seen,
            stop,
            threads,
        })
    }

    /// Stops and joins every sampler (before the namespaces go).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn probe_loop(i: usize, from: Ipv4Addr, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let Ok(vip) = VIP.parse::<Ipv4Addr>() else {
        return;
    };
    let vip = SocketAddr::new(vip.into(), VIP_PORT);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let outcome = probe(from, vip).unwrap_or_else(Outcome::Failed);
        if let Ok(mut s) = seen.lock() {
            let c = &mut s.clients[i];
            match outcome {
                Outcome::Ok { .. } => c.ok += 1,
                Outcome::Failed(_) => c.failed += 1,
            }
            c.last = Some((Instant::now(), outcome));
        }
        std::thread::sleep(PROBE_EVERY.saturating_sub(started.elapsed()));
    }
}

/// One connection from `from` to the VIP: the greeting line, read within the timeout.
fn probe(from: Ipv4Addr, vip: SocketAddr) -> Result<Outcome, String> {
    let started = Instant::now();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(&SocketAddr::new(from.into(), 0).into())
        .map_err(|e| format!("bind {from}: {e}"))?;
    socket
        .connect_timeout(&vip.into(), PROBE_TIMEOUT)
        .map_err(|e| format!("connect: {e}"))?;
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("no greeting: {e}"))?;
    let mut words = line.split_whitespace();
    let backend = words
        .next()
        .ok_or_else(|| "empty greeting".to_owned())?
        .to_owned();
    let pop = words.next().and_then(pop_of_peer);
    Ok(Outcome::Ok {
        backend,
        pop,
        rtt: started.elapsed(),
    })
}

fn route_loop(j: usize, seen: &Mutex<Seen>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let now = vip_next_hop();
        if let Ok(mut s) = seen.lock() {
            if s.routes[j].0 != now {
                s.routes[j] = (now, Instant::now());
            }
        }
        std::thread::sleep(ROUTE_EVERY);
    }
}

/// The POP this thread's namespace routes the VIP to: its `/32` in the kernel's table (what
/// BIRD installed), read from `/proc/thread-self/net/route` (this thread's namespace, where
/// `/proc/net` would be the process's).
fn vip_next_hop() -> Option<usize> {
    let table = std::fs::read_to_string("/proc/thread-self/net/route").ok()?;
    let vip: Ipv4Addr = VIP.parse().ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gateway, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
        // The kernel prints each address as the hex of its bytes read as a native (here
        // little-endian) u32.
        let addr = |s: &str| {
            u32::from_str_radix(s, 16)
                .ok()
                .map(|n| Ipv4Addr::from(n.to_le_bytes()))
        };
        if addr(dest)? != vip || addr(mask)? != Ipv4Addr::BROADCAST {
            return None;
        }
        let gw = addr(gateway)?;
        POPS.iter()
            .position(|p| p.ix.parse::<Ipv4Addr>().ok() == Some(gw))
    })
}
