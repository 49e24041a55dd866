//! `edge-agent explain ADDR --vip VIP:PORT`: how the data plane treats a client, read from what
//! the running agent has loaded (the pinned maps), not from the files on disk: the country and
//! class the geo tries give the address, the client's affinity binding if it has one, and the
//! backends a new connection from it can get, with each one's share of the table its class
//! uses (or, with `--port`, the one backend a connection from that source port gets).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
};

use anyhow::Context as _;
use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData};
use edge_common::{
    geo::{embedded_ipv4, AffinityKey, AffinityValue, GeoValue, GEO_CLASSES},
    ipv4_mapped, names, BackendValue, PopConfig, ServiceKey, ServiceValue,
};
use serde::Serialize;

use crate::{dataplane::maps::services::service_key, dataplane::pins::PinDir};

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub client: IpAddr,
    /// The address the geo tries were asked about (an IPv4 address embedded in a 6to4, Teredo
    /// or IPv4-mapped client address, else the client's).
    pub classified_as: IpAddr,
    /// `None`: no network of the database holds it (class 0).
    pub country: Option<String>,
    pub class: u16,
    pub vip: SocketAddr,
    pub service_id: u32,
    /// The backend the client's affinity binding names, if it has one.
    pub bound_to: Option<String>,
    /// Each backend of the class's table with its share of new connections.
    pub shares: BTreeMap<String, f64>,
    /// With `--port`: the backend a new connection from that port gets (binding aside).
    pub picked: Option<String>,
}

/// The geo value the tries give `addr` (a longest-prefix lookup, as the kernel's).
fn classify(pins: &PinDir, addr: IpAddr) -> anyhow::Result<Option<GeoValue>> {
    Ok(match addr {
        IpAddr::V4(v4) => {
            let trie: LpmTrie<MapData, [u8; 4], GeoValue> =
                LpmTrie::try_from(Map::LpmTrie(pins.open_map(names::GEO_V4)?))?;
            trie.get(&Key::new(32, v4.octets()), 0).ok()
        }
        IpAddr::V6(v6) => {
            let trie: LpmTrie<MapData, [u8; 16], GeoValue> =
                LpmTrie::try_from(Map::LpmTrie(pins.open_map(names::GEO_V6)?))?;
            trie.get(&Key::new(128, v6.octets()), 0).ok()
        }
    })
}

pub fn explain(
    pins: &PinDir,
    client: IpAddr,
    vip: SocketAddr,
    port: Option<u16>,
) -> anyhow::Result<Explanation> {
    let addr16 = match client {
        IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    };
    let classified_as = match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => embedded_ipv4(&v6.octets())
            .map_or(client, |v4| IpAddr::V4(std::net::Ipv4Addr::from(v4))),
    };
    let geo = classify(pins, classified_as)?;
    let class = geo.map_or(0, |g| g.class);
    let country = geo.and_then(|g| std::str::from_utf8(&g.country).ok().map(str::to_owned));

    let services: HashMap<MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(Map::HashMap(pins.open_map(names::SERVICES)?))?;
    let service = services
        .get(&service_key(vip.ip(), vip.port()), 0)
        .with_context(|| format!("no service on {vip} in the kernel"))?;
    let backends: Array<MapData, BackendValue> =
        Array::try_from(Map::Array(pins.open_map(names::BACKENDS)?))?;
    let name = |id: u32| -> String {
        match backends.get(&id, 0) {
            Ok(b) if b.flags != 0 => {
                SocketAddr::new(Ipv6Addr::from(b.addr).into(), u16::from_be(b.port)).to_string()
            }
            _ => format!("backend {id} (gone)"),
        }
    };
    let affinity: HashMap<MapData, AffinityKey, AffinityValue> =
        HashMap::try_from(Map::LruHashMap(pins.open_map(names::AFFINITY)?))?;
    let bound_to = affinity
        .get(
            &AffinityKey {
                service_id: service.service_id,
                client: addr16,
            },
            0,
        )
        .ok()
        .map(|v| name(v.backend_id));

    let pop: Array<MapData, PopConfig> =
        Array::try_from(Map::Array(pins.open_map(names::POP_CONFIG)?))?;
    let ring_size = pop.get(&0, 0)?.ring_size.max(1);
    let pointers: Array<MapData, u32> =
        Array::try_from(Map::Array(pins.open_map(names::SERVICE_RINGS)?))?;
    let ring = pointers.get(&(service.service_id * GEO_CLASSES + u32::from(class)), 0)?;
    let rings: Array<MapData, u32> = Array::try_from(Map::Array(pins.open_map(names::MAGLEV)?))?;
    let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
    for slot in 0..ring_size {
        let id = rings.get(&(ring * ring_size + slot), 0)?;
        if id != edge_common::service::NO_BACKEND {
            *counts.entry(id).or_default() += 1;
        }
    }
    let shares = counts
        .iter()
        .map(|(&id, &n)| (name(id), f64::from(n) / f64::from(ring_size)))
        .collect();
    let picked = match port {
        Some(port) => {
            let vip16 = match vip.ip() {
                IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
                IpAddr::V6(v6) => v6.octets(),
            };
            let hash =
                edge_common::hash::flow_hash(&addr16, &vip16, port.to_be(), vip.port().to_be());
            let id = rings.get(&(ring * ring_size + hash % ring_size), 0)?;
            Some(if id == edge_common::service::NO_BACKEND {
                "none (no eligible backend)".to_owned()
            } else {
                name(id)
            })
        }
        None => None,
    };
    Ok(Explanation {
        client,
        classified_as,
        country,
        class,
        vip,
        service_id: service.service_id,
        bound_to,
        shares,
        picked,
    })
}

pub fn print(e: &Explanation) {
    let country = e
        .country
        .as_deref()
        .unwrap_or("unknown (no network holds it)");
    println!("client      {}", e.client);
    if e.classified_as != e.client {
        println!(
            "classified  as {} (the IPv4 address it embeds)",
            e.classified_as
        );
    }
    println!("country     {country} (class {})", e.class);
    println!("service     {} (id {})", e.vip, e.service_id);
    if let Some(bound) = &e.bound_to {
        println!("bound to    {bound} (affinity: new connections go there while it is eligible)");
    }
    println!("table       {} backends", e.shares.len());
    for (backend, share) in &e.shares {
        println!("  {backend:<40} {:>6.1}%", share * 100.0);
    }
    if let Some(picked) = &e.picked {
        println!("picked      {picked}");
    }
}
