//! Geo steering through the real data plane (`BPF_PROG_TEST_RUN`): a country database compiled
//! into the geo maps, the plan's per-country rings written by the reconciler, then SYNs from
//! clients in nested prefixes, each checked to reach the backend of its country. Clients are
//! placed both where the IPv4 /24 table answers alone and where a longer prefix splits the /24
//! and the trie answers; then the database is replaced, by the same agent and by a new one.
//! IPv6 clients that embed an IPv4 address (6to4, Teredo, IPv4-mapped) are classified by it,
//! in the kernel and in `edge-agent flows`' listing alike.

mod support;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use aya::maps::{lpm_trie::LpmTrie, Array, HashMap as BpfHashMap};
use aya::Ebpf;
use edge_agent::{
    balancing::plan, balancing::plan::GeoClasses, balancing::plan::Inputs, config::FlowConfig,
    dataplane::maps::flows, dataplane::maps::geo, dataplane::maps::services::Reconciler,
    dataplane::programs::MapSizes, geo::GeoDb, model::Backend, model::BackendAddr, model::Country,
    model::Region, model::Service, model::Snapshot, testing::lab_pop,
    testing::mmdb_writer::write_country_mmdb,
};
use edge_common::{
    geo::{V6_DIR_SLOTS, V6_DIR_USED},
    names, FlowKey, FlowValue,
};
use support::{Error, TestResult};

const TABLE_SIZE: u32 = 1021;
const VIP: [u8; 4] = [198, 18, 0, 10];
const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
/// Backends by the last group of their overlay address.
const BR: u16 = 2;
const DE: u16 = 3;
const US: u16 = 4;
/// In a region of its own ("uk"), so that only GB clients reach it.
const GB: u16 = 5;

fn backend(service: &str, last: u16, region: &str, country: &str) -> Result<Backend, Error> {
    Ok(Backend {
        id: format!("{service}-{country}"),
        service: service.into(),
        region: region.parse()?,
        country: country.parse()?,
        addr: BackendAddr::Ip(Ipv6Addr::new(0xfd00, 0xee, 0, 0, 0, 0, 0, last)),
        port: 8080,
        weight: 1,
        soft_limit: 1000,
        hard_limit: 2000,
        draining: false,
        enabled: true,
        check: None,
        lease: None,
    })
}

fn region_of(country: Country) -> Region {
    let name = match &country.bytes() {
        b"BR" => "sa",
        b"US" => "us",
        b"GB" => "uk",
        _ => "eu",
    };
    name.parse()
        .unwrap_or_else(|_| unreachable!("a fixed region name"))
}

/// An IPv6 directory's entries: key (`v6_key32`, `v6_key48`) -> class.
type Directory = HashMap<u64, u8>;

struct Pop {
    ebpf: Ebpf,
    reconciler: Reconciler,
    written: geo::Written,
    next_port: u16,
}

impl Pop {
    fn new() -> Result<Self, Error> {
        let sizes = MapSizes {
            flows: 1 << 14,
            half_open: 1 << 14,
            maglev: 16 * TABLE_SIZE,
            affinity: 1024,
        };
        let (ebpf, reconciler) = support::serving(sizes, TABLE_SIZE)?;
        Ok(Pop {
            ebpf,
            reconciler,
            written: geo::Written::default(),
            next_port: 20000,
        })
    }

    /// Loads `entries` as the country database and plans the service for its countries.
    fn load(&mut self, entries: &[(&str, &str)]) -> TestResult {
        let db = GeoDb::from_entries(
            entries
                .iter()
                .map(|(net, country)| Ok::<_, Error>((net.parse()?, country.parse()?)))
                .collect::<Result<Vec<_>, _>>()?,
        )?;
        self.load_db(&db)
    }

    /// Loads `db` and plans two services (an IPv4 and an IPv6 VIP) for its countries.
    fn load_db(&mut self, db: &GeoDb) -> TestResult {
        let classes = GeoClasses::new(db.countries());
        geo::write(&mut self.ebpf, db, &classes, &mut self.written)?;
        let mut services = Vec::new();
        let mut backends = Vec::new();
        for (id, vip) in [("web", IpAddr::from(VIP)), ("web6", IpAddr::from(VIP6))] {
            services.push(Service {
                id: id.into(),
                vip,
                port: 80,
                check: None,
            });
            backends.extend([
                backend(id, BR, "sa", "BR")?,
                backend(id, DE, "eu", "DE")?,
                backend(id, US, "us", "US")?,
                backend(id, GB, "uk", "GB")?,
            ]);
        }
        let state = Snapshot {
            services,
            backends,
            ..Snapshot::default()
        };
        let eu: Region = "eu".parse()?;
        let inputs = Inputs {
            pop_id: "pop",
            pop_region: &eu,
            region_of: &region_of,
            unknown_region: &eu,
            classes: &classes,
            active: &HashMap::new(),
            health: &HashMap::new(),
            now_unix: 0,
        };
        let plan = plan::plan(&state, &inputs, &|_| None);
        self.reconciler.apply(&mut self.ebpf, &lab_pop(), &plan)?;
        Ok(())
    }

    /// The backend a new connection from `client` goes to.
    fn backend_of(&mut self, client: [u8; 4]) -> Result<u16, Error> {
        self.next_port += 1;
        let frame = support::syn4_from(client, VIP, self.next_port)?;
        let out = support::xdp(&mut self.ebpf, &frame)?;
        let Some(backend) = support::ipv6_destination(&out)? else {
            return Err(
                format!("SYN from {client:?} not translated: verdict {}", out.retval).into(),
            );
        };
        Ok(backend.segments()[7])
    }

    /// The backend a new connection from IPv6 `client` to the IPv6 VIP goes to.
    fn backend_of6(&mut self, client: Ipv6Addr) -> Result<u16, Error> {
        self.next_port += 1;
        let frame = support::syn6_from(client, VIP6, self.next_port)?;
        let out = support::xdp(&mut self.ebpf, &frame)?;
        let Some(dst) = support::ipv6_destination(&out)? else {
            return Err(format!("SYN from {client} not translated: verdict {}", out.retval).into());
        };
        if dst.octets() == VIP6 {
            return Err(format!("SYN from {client} passed untranslated").into());
        }
        Ok(dst.segments()[7])
    }

    /// Every half-open connection's client and the country `edge-agent flows` shows for it.
    fn listed_countries(&self) -> Result<HashMap<String, Option<String>>, Error> {
        let table: BpfHashMap<_, FlowKey, FlowValue> =
            BpfHashMap::try_from(self.ebpf.map(names::HALF_OPEN).ok_or("no HALF_OPEN")?)?;
        let (_, mut listing) = flows::sweep(
            &table,
            flows::Table::HalfOpen,
            &FlowConfig::default(),
            flows::monotonic_ns(),
            flows::Sweep::List,
        )?;
        let v4: LpmTrie<_, [u8; 4], _> =
            LpmTrie::try_from(self.ebpf.map(names::GEO_V4).ok_or("no GEO_V4")?)?;
        let v6: LpmTrie<_, [u8; 16], _> =
            LpmTrie::try_from(self.ebpf.map(names::GEO_V6).ok_or("no GEO_V6")?)?;
        flows::classify_with(&mut listing, Some(&v4), Some(&v6));
        Ok(listing
            .into_iter()
            .map(|f| {
                let ip = f
                    .client
                    .parse::<std::net::SocketAddr>()
                    .map_or(f.client.clone(), |a| a.ip().to_string());
                (ip, f.country)
            })
            .collect())
    }

    /// What the IPv6 directories hold: key (`v6_key32`, `v6_key48`) -> class.
    fn directories(&self) -> Result<(Directory, Directory), Error> {
        let read = |name: &str| -> Result<Directory, Error> {
            let lines: Array<_, [u64; V6_DIR_SLOTS]> =
                Array::try_from(self.ebpf.map(name).ok_or("no IPv6 directory")?)?;
            let mut held = HashMap::new();
            for line in lines.iter() {
                for slot in line? {
                    if slot & V6_DIR_USED != 0 {
                        held.insert(slot >> 16, slot as u8);
                    }
                }
            }
            Ok(held)
        };
        Ok((read(names::GEO_V6_32)?, read(names::GEO_V6_48)?))
    }

    /// The class the last database gave `country`, as the kernel's maps hold it.
    fn class_of(&self, country: &str) -> Result<u8, Error> {
        let v6: LpmTrie<_, [u8; 16], edge_common::geo::GeoValue> =
            LpmTrie::try_from(self.ebpf.map(names::GEO_V6).ok_or("no GEO_V6")?)?;
        for entry in v6.iter() {
            let (_, value) = entry?;
            if value.country == country.as_bytes() {
                return Ok(u8::try_from(value.class)?);
            }
        }
        Err(format!("no {country} in GEO_V6").into())
    }

    fn expect(&mut self, cases: &[([u8; 4], u16, &str)]) -> TestResult {
        for &(client, backend, why) in cases {
            assert_eq!(self.backend_of(client)?, backend, "{client:?}: {why}");
        }
        Ok(())
    }
}

const NESTED: [(&str, &str); 4] = [
    ("10.0.0.0/8", "US"),
    ("10.1.0.0/16", "BR"),
    ("10.1.2.128/25", "US"),
    ("10.2.3.0/24", "BR"),
];

#[test]
fn clients_reach_their_countrys_backend_whether_the_table_or_the_trie_answers() -> TestResult {
    let mut pop = Pop::new()?;
    pop.load(&NESTED)?;
    pop.expect(&[
        ([10, 200, 0, 1], US, "/8, from the /24 table"),
        ([10, 1, 7, 1], BR, "/16 inside the /8, from the table"),
        ([10, 2, 3, 4], BR, "a /24 of its own"),
        ([10, 1, 2, 200], US, "/25 inside the /16: the trie"),
        (
            [10, 1, 2, 5],
            BR,
            "the other half of that /24: the trie, then the /16",
        ),
        ([11, 0, 0, 1], DE, "unknown: the POP's region"),
    ])
}

#[test]
fn a_reload_and_a_new_agent_leave_only_the_new_database() -> TestResult {
    let mut pop = Pop::new()?;
    pop.load(&NESTED)?;
    pop.expect(&[([10, 1, 2, 200], US, "first database")])?;

    // The same agent, a new database: the /16 and the /25 are gone, the /24 is now DE.
    pop.load(&[("10.0.0.0/8", "US"), ("10.2.3.0/24", "DE")])?;
    pop.expect(&[
        ([10, 1, 7, 1], US, "the /16 removed"),
        ([10, 1, 2, 200], US, "the /25 removed: the /8"),
        ([10, 1, 2, 5], US, "the /25 removed: the /8"),
        ([10, 2, 3, 4], DE, "the /24 changed country"),
    ])?;

    // A new agent on the same (pinned) maps, with a database that has none of the old
    // prefixes: what the previous agent wrote must not answer any more.
    pop.written = geo::Written::default();
    // (US keeps a class, the one the old /8 was written with.)
    pop.load(&[("10.1.2.0/28", "BR"), ("10.3.0.0/16", "US")])?;
    pop.expect(&[
        ([10, 1, 2, 3], BR, "the new /28, from the trie"),
        ([10, 3, 0, 1], US, "the new /16"),
        ([10, 1, 2, 200], DE, "the rest of that /24: unknown"),
        ([10, 200, 0, 1], DE, "the old /8 gone from the table"),
        ([10, 2, 3, 4], DE, "the old /24 gone from the table"),
    ])
}

/// IPv6 prefixes at every level of the lookup: a /12 only the trie knows (shorter than the /32
/// directory takes), a /24 spread over 256 /32s, a /32 inside it, a /48 in a /32 split by it, a
/// /56 splitting a /48.
const NESTED6: [(&str, &str); 5] = [
    ("2a00::/12", "US"),
    ("2a01:100::/24", "BR"),
    ("2a01:101::/32", "US"),
    ("2a01:103:5::/48", "GB"),
    ("2a01:103:6:100::/56", "US"),
];

#[test]
fn ipv6_clients_reach_their_countrys_backend_whichever_level_answers() -> TestResult {
    let mut pop = Pop::new()?;
    pop.load(&NESTED6)?;
    let cases: [(&str, u16, &str); 8] = [
        ("2a0f::1", US, "the /12: no directory entry, the trie"),
        ("2a01:100:5::1", BR, "the /24, from the /32 directory"),
        (
            "2a01:101::1",
            US,
            "the /32 inside the /24, from the /32 directory",
        ),
        ("2a01:103:5::1", GB, "the /48, from the /48 directory"),
        (
            "2a01:103:7::1",
            BR,
            "the split /32's other /48s: the trie, then the /24",
        ),
        ("2a01:103:6:100::1", US, "the /56 splitting a /48: the trie"),
        (
            "2a01:103:6:200::1",
            BR,
            "that /48's rest: the trie, then the /24",
        ),
        ("2001:db8::1", DE, "unknown: the POP's region"),
    ];
    for (client, backend, why) in cases {
        assert_eq!(
            pop.backend_of6(client.parse()?)?,
            backend,
            "{client}: {why}"
        );
    }
    let (d32, d48) = pop.directories()?;
    assert_eq!(d32.get(&0x2a01_0103), Some(&255), "the split /32: {d32:?}");
    assert_eq!(d48.get(&0x2a01_0103_0006), Some(&255), "{d48:?}");
    assert!(d48.contains_key(&0x2a01_0103_0005), "{d48:?}");
    assert_eq!(d32.len(), 256, "the /24's /32s, one of them split: {d32:?}");
    assert_eq!(d48.len(), 2, "{d48:?}");

    // A new database without the /48 and the /56: their entries go, the /24 answers.
    pop.load(&[("2a01:100::/24", "BR"), ("2a01:101::/32", "US")])?;
    for client in ["2a01:103:5::1", "2a01:103:6:100::1"] {
        assert_eq!(
            pop.backend_of6(client.parse()?)?,
            BR,
            "{client} after the reload"
        );
    }
    let (d32, d48) = pop.directories()?;
    assert_eq!(d32.get(&0x2a01_0103), Some(&pop.class_of("BR")?), "{d32:?}");
    assert!(d48.is_empty(), "nothing split any more: {d48:?}");
    Ok(())
}

/// Where MaxMind's test databases (GeoIP2-Country-Test) put 81.2.69.142, and two more of their
/// networks, written by the project's writer with the aliases MaxMind's writers make
/// (`::ffff:0:0/96`, `2002::/16`, `2001::/32` pointing at the IPv4 subtree).
const MAXMIND_TEST: [(&str, &str); 3] = [
    ("81.2.69.142/31", "GB"),
    ("216.160.83.56/29", "US"),
    ("2a02:cf40::/29", "BR"),
];

#[test]
fn clients_embedding_ipv4_are_classified_by_it_in_the_kernel_and_the_listing() -> TestResult {
    let entries = MAXMIND_TEST
        .iter()
        .map(|(net, country)| Ok::<_, Error>((net.parse()?, country.parse()?)))
        .collect::<Result<Vec<_>, _>>()?;
    let path = std::env::temp_dir().join(format!("edge-geo-embedded-{}.mmdb", std::process::id()));
    write_country_mmdb(&path, &entries, "GeoIP2-Country-Test")?;
    let loaded = GeoDb::load(&path);
    // The file itself answers 6to4 through its alias (the case this test is about).
    let reader = maxminddb::Reader::open_readfile(&path);
    let _ = std::fs::remove_file(&path);
    let (db, reader) = (loaded?, reader?);
    let six_to_four: Ipv6Addr = "2002:5102:458e::9".parse()?;
    let in_file = reader
        .lookup(IpAddr::V6(six_to_four))?
        .decode_path::<&str>(&maxminddb::path!["country", "iso_code"])?;
    assert_eq!(
        in_file,
        Some("GB"),
        "the written database must alias 6to4 to the IPv4 data"
    );
    // And Teredo, by the server's address in bits 32..64: the answer the kernel must match.
    let teredo: Ipv6Addr = "2001:0:5102:458e::9".parse()?;
    let in_file = reader
        .lookup(IpAddr::V6(teredo))?
        .decode_path::<&str>(&maxminddb::path!["country", "iso_code"])?;
    assert_eq!(
        in_file,
        Some("GB"),
        "the written database must alias Teredo to the IPv4 data by the server's address"
    );

    let mut pop = Pop::new()?;
    pop.load_db(&db)?;
    assert_eq!(pop.backend_of([81, 2, 69, 142])?, GB, "81.2.69.142 itself");
    // (client, expected backend, expected country in the listing, why)
    let cases: [(&str, u16, Option<&str>, &str); 7] = [
        ("2002:5102:458e::9", GB, Some("GB"), "6to4 of 81.2.69.142"),
        (
            "2001:0:5102:458e::9",
            GB,
            Some("GB"),
            "Teredo with server 81.2.69.142 (bits 32..64), as MaxMind's alias answers it",
        ),
        (
            "2001:0:4136:e378:8000:63bf:aefd:ba71",
            DE,
            None,
            "Teredo with server 65.54.227.120 (unknown): the client's own 81.2.69.142 in the \
             last 32 bits does not classify it",
        ),
        ("2002:d8a0:5338::1", US, Some("US"), "6to4 of 216.160.83.56"),
        (
            "::ffff:216.160.83.57",
            US,
            Some("US"),
            "an IPv4-mapped source in an IPv6 packet",
        ),
        ("2a02:cf40::1", BR, Some("BR"), "native IPv6: the IPv6 trie"),
        ("2002:a00:1::1", DE, None, "6to4 of an unknown 10.0.0.1"),
    ];
    for (client, backend, _, why) in cases {
        let seen = pop.backend_of6(client.parse()?)?;
        assert_eq!(
            seen, backend,
            "{client} ({why}): expected backend {backend}, seen {seen}"
        );
    }
    let listed = pop.listed_countries()?;
    for (client, _, country, why) in cases {
        let client: Ipv6Addr = client.parse()?;
        // The listing shows an IPv4-mapped client as IPv4.
        let shown = client
            .to_ipv4_mapped()
            .map_or(client.to_string(), |v4| v4.to_string());
        let seen = listed
            .get(&shown)
            .ok_or_else(|| format!("{shown} not in the listing: {listed:?}"))?;
        assert_eq!(
            seen.as_deref(),
            country,
            "{shown} ({why}): expected country {country:?} in the listing, seen {seen:?}"
        );
    }
    Ok(())
}
