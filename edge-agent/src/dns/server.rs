//! The DNS server: hickory-server's `Catalog` with one in-memory zone, `internal.`, on UDP and
//! TCP at every configured address. The zone's records are replaced whole at every change (one
//! swap under the zone's lock: a query sees the old or the new zone, never a mix). Other zones
//! are refused and nothing is recursed: it is not a resolver.

use std::{collections::BTreeMap, net::SocketAddr, str::FromStr, sync::Arc, time::Duration};

use hickory_proto::rr::{LowerName, Name, RecordSet, RrKey};
use hickory_server::{
    store::in_memory::InMemoryZoneHandler,
    zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType},
    Server,
};
use thiserror::Error;
use tokio::{
    net::{TcpListener, UdpSocket},
    task::JoinHandle,
};

use super::zone::{Zone, ORIGIN};

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
    task: JoinHandle<()>,
    /// Where it listens (ports resolved, for listeners bound to port 0).
    pub local: Vec<SocketAddr>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// UDP, then TCP on the port UDP got (they differ only when asked for port 0).
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener, SocketAddr), DnsError> {
    let err = |addr, proto| {
        move |source| DnsError::Bind {
            addr,
            proto,
            source,
        }
    };
    let udp = UdpSocket::bind(addr).await.map_err(err(addr, "udp"))?;
    let bound = udp.local_addr().map_err(err(addr, "udp"))?;
    let tcp = TcpListener::bind(bound).await.map_err(err(bound, "tcp"))?;
    Ok((udp, tcp, bound))
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
    /// as errors beside the server. Must run inside a tokio runtime.
    pub async fn start(listen: &[SocketAddr]) -> Result<(Self, Vec<DnsError>), DnsError> {
        let origin = Name::from_str(ORIGIN).map_err(|_| DnsError::Origin)?;
        let zone = Arc::new(InMemoryZoneHandler::empty(
            origin.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        ));
        let mut catalog = Catalog::new();
        catalog.upsert(
            LowerName::from(&origin),
            vec![Arc::clone(&zone) as Arc<dyn ZoneHandler>],
        );
        let mut server = Server::new(catalog);
        let mut local = Vec::new();
        let mut failed = Vec::new();
        for &addr in listen {
            match bind(addr).await {
                Ok((udp, tcp, bound)) => {
                    server.register_socket(udp);
                    // A TCP client idle this long is dropped; 64 answers may queue per
                    // connection.
                    server.register_listener(tcp, Duration::from_secs(5), 64);
                    local.push(bound);
                }
                Err(e) => failed.push(e),
            }
        }
        let task = tokio::spawn(async move {
            if let Err(error) = server.block_until_done().await {
                tracing::warn!(%error, "DNS server stopped");
            }
        });
        Ok((DnsServer { zone, task, local }, failed))
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
