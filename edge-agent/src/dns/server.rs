//! The DNS server: hickory-server's `Catalog` with one in-memory zone, `internal.`, on UDP and
//! TCP at every configured address. The zone's records are replaced whole at every change (one
//! swap under the zone's lock: a query sees the old or the new zone, never a mix). Other zones
//! are refused and nothing is recursed: it is not a resolver.
//!
//! UDP is hickory's server. TCP connections are accepted here, through a [`Gate`] (issue 18):
//! hickory's own TCP listener accepts without bound, one task and up to a 64 KiB message buffer
//! per connection, so slow clients could take every file and a good deal of memory. Each
//! connection is then served as hickory serves it (its `TimeoutStream`: a whole query within the
//! idle timeout, or the connection closes), by a second `Catalog` over the same zone. A message
//! that does not parse closes its connection (RFC 7766 section 6.2.4 lets servers close).

use std::{collections::BTreeMap, net::SocketAddr, str::FromStr, sync::Arc};

use futures_util::StreamExt as _;
use hickory_proto::{
    op::MessageType,
    rr::{LowerName, Name, RecordSet, RrKey},
};
use hickory_server::{
    net::{
        runtime::{iocompat::AsyncIoTokioAsStd, TokioTime},
        tcp::TcpStream as DnsTcpStream,
        xfer::Protocol,
    },
    server::{Request, RequestHandler as _, ResponseHandle, TimeoutStream},
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
    Server,
};
use thiserror::Error;
use tokio::{
    net::{TcpListener, TcpStream, UdpSocket},
    task::JoinHandle,
};

use super::zone::{Zone, ORIGIN};
use crate::listen::{accept_loop, Gate, Limits, Permit};

/// Answers that may queue per TCP connection.
const ANSWERS_QUEUED: usize = 64;

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("DNS: binding {addr}/{proto}: {source}")]
    Bind {
        addr: SocketAddr,
        proto: &'static str,
        source: std::io::Error,
    },
    #[error("DNS: the zone origin {ORIGIN} does not parse")]
    Origin,
}

pub struct DnsServer {
    zone: Arc<InMemoryZoneHandler>,
    /// hickory's UDP server, then one accept loop per TCP listener.
    tasks: Vec<JoinHandle<()>>,
    /// Where it listens (ports resolved, for listeners bound to port 0).
    pub local: Vec<SocketAddr>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A catalog serving `zone` alone.
fn catalog(origin: &Name, zone: &Arc<InMemoryZoneHandler>) -> Catalog {
    let mut catalog = Catalog::new();
    catalog.upsert(
        LowerName::from(origin),
        vec![Arc::clone(zone) as Arc<dyn ZoneHandler>],
    );
    catalog
}

/// Serves one TCP connection until the client leaves, stays idle past the limit, sends a
/// message that does not parse, or the gate needs the slot.
async fn tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    catalog: Arc<Catalog>,
) {
    let permit = Arc::new(permit);
    let idle = permit.gate().limits().header_timeout;
    let (messages, answers) =
        DnsTcpStream::from_stream_with_buffer_size(AsyncIoTokioAsStd(stream), peer, ANSWERS_QUEUED);
    let mut messages = TimeoutStream::new(messages, idle);
    let serve = async {
        while let Some(message) = messages.next().await {
            let message = match message {
                Ok(message) => message,
                Err(error) => {
                    if error.kind() == std::io::ErrorKind::TimedOut {
                        permit.gate().timed_out();
                    }
                    return;
                }
            };
            let (bytes, src) = message.into_parts();
            let Ok(request) = Request::from_bytes(bytes, src, Protocol::Tcp) else {
                return;
            };
            // Responses are not answered (reflection), as hickory's own server does.
            if request.metadata.message_type == MessageType::Response {
                continue;
            }
            let _busy = permit.busy();
            let handle = ResponseHandle::new(src, answers.clone(), Protocol::Tcp);
            catalog
                .handle_request::<_, TokioTime>(&request, handle)
                .await;
        }
    };
    tokio::select! {
        () = serve => {}
        () = permit.evicted() => {}
    }
}

/// How many ports to try when asked for port 0 (see `bind`).
const PORT_PICKS: usize = 16;

/// UDP, then TCP on the port UDP got (they differ only when asked for port 0). Asked for port
/// 0, the kernel picks a port free for UDP, which any TCP socket on the host (a client's
/// connection included) may hold: then another pick.
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let err = |addr, proto| {
        move |source| DnsError::Bind {
            addr,
            proto,
            source,
        }
    };
    let mut picks = if addr.port() == 0 { PORT_PICKS } else { 1 };
    loop {
        let udp = UdpSocket::bind(addr).await.map_err(err(addr, "udp"))?;
        let bound = udp.local_addr().map_err(err(addr, "udp"))?;
        match crate::listen::bind(bound) {
            Ok(tcp) => return Ok((udp, tcp, bound)),
            Err(e) if picks > 1 && e.kind() == std::io::ErrorKind::AddrInUse => picks -= 1,
            Err(e) => return Err(err(bound, "tcp")(e)),
        }
    }
}

fn record_map(zone: &Zone, serial: u32) -> BTreeMap<RrKey, Arc<RecordSet>> {
    let mut sets: BTreeMap<RrKey, RecordSet> = BTreeMap::new();
    for record in &zone.records {
        let key = RrKey::new(LowerName::from(&record.name), record.record_type());
        sets.entry(key)
            .or_insert_with(|| RecordSet::new(record.name.clone(), record.record_type(), serial))
            .insert(record.clone(), serial);
    }
    sets.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()
}

impl DnsServer {
    /// Binds UDP and TCP on every address of `listen` it can and starts answering (an empty
    /// zone until the first [`DnsServer::update`]); the addresses it could not bind come back
    /// as errors beside the server. TCP connections are admitted within `tcp` at each address.
    /// Must run inside a tokio runtime.
    pub async fn start(
        listen: &[SocketAddr],
        tcp: Limits,
    ) -> Result<(Self, Vec<DnsError>), DnsError> {
        let origin = Name::from_str(ORIGIN).map_err(|_| DnsError::Origin)?;
        let zone = Arc::new(InMemoryZoneHandler::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        ));
        let for_tcp = Arc::new(catalog(&origin, &zone));
        let mut server = Server::new(catalog(&origin, &zone));
        let mut local = Vec::new();
        let mut failed = Vec::new();
        let mut tasks = Vec::new();
        for &addr in listen {
            match bind(addr).await {
                Ok((udp, listener, bound)) => {
                    server.register_socket(udp);
                    let gate = Gate::new(format!("dns {bound}"), tcp);
                    let catalog = Arc::clone(&for_tcp);
                    tasks.push(tokio::spawn(accept_loop(
                        listener,
                        gate,
                        // Nothing to say: the client sees the connection close.
                        |_, _| {},
                        move |stream, peer, permit| {
                            tcp_connection(stream, peer, permit, Arc::clone(&catalog))
                        },
                    )));
                    local.push(bound);
                }
                Err(e) => failed.push(e),
            }
        }
        tasks.insert(
            0,
            tokio::spawn(async move {
                if let Err(error) = server.block_until_done().await {
                    tracing::warn!(%error, "DNS server stopped");
                }
            }),
        );
        Ok((DnsServer { zone, tasks, local }, failed))
    }

    /// Replaces the zone's records.
    pub async fn update(&self, zone: &Zone, serial: u32) {
        let map = record_map(zone, serial);
        *self.zone.records_mut().await = map;
    }

    /// For callers outside async code: the swap happens on the runtime, in call order.
    pub fn handle(&self) -> Arc<InMemoryZoneHandler> {
        Arc::clone(&self.zone)
    }

    /// What [`DnsServer::update`] writes, for [`DnsServer::handle`] users.
    pub fn records(zone: &Zone, serial: u32) -> BTreeMap<RrKey, Arc<RecordSet>> {
        record_map(zone, serial)
    }
}
