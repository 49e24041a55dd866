//! Geo steering through the real data plane (`BPF_PROG_TEST_RUN`): a country database compiled
//! into the geo maps, the plan's per-country rings written by the reconciler, then SYNs from
//! clients in nested prefixes, each checked to reach the backend of its country. Clients are
//! placed both where the IPv4 /24 table answers alone and where a longer prefix splits the /24
//! and the trie answers; then the database is replaced, by the same agent and by a new one.

use std::{collections::HashMap, net::Ipv6Addr};

use aya::Ebpf;
use edge_agent::{
    balancer::{self, GeoClasses, Inputs},
    dataplane::{self, MapSizes},
    geo::GeoDb,
    geo_maps,
    model::{Backend, BackendAddr, Country, Region, Service, Snapshot},
    services::Reconciler,
    test_run::{lab_pop, test_run},
};
use edge_common::names;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket};

type Error = Box<dyn std::error::Error>;
type TestResult = Result<(), Error>;

const TABLE_SIZE: u32 = 1021;
const VIP: [u8; 4] = [198, 18, 0, 10];
/// Backends by the last group of their overlay address.
const BR: u16 = 2;
const DE: u16 = 3;
const US: u16 = 4;

fn backend(last: u16, region: &str, country: &str) -> Result<Backend, Error> {
    Ok(Backend {
        id: format!("be-{country}"),
        service: "web".into(),
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
        _ => "eu",
    };
    name.parse()
        .unwrap_or_else(|_| unreachable!("a fixed region name"))
}

struct Pop {
    ebpf: Ebpf,
    reconciler: Reconciler,
    written: geo_maps::Written,
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
        let mut ebpf = dataplane::load_object(None, sizes)?;
        dataplane::xdp_program(&mut ebpf, names::XDP_INGRESS)?;
        let reconciler = Reconciler::recover(&mut ebpf, TABLE_SIZE)?;
        Ok(Pop {
            ebpf,
            reconciler,
            written: geo_maps::Written::default(),
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
        let classes = GeoClasses::new(db.countries());
        geo_maps::write(&mut self.ebpf, &db, &classes, &mut self.written)?;
        let state = Snapshot {
            services: vec![Service {
                id: "web".into(),
                vip: VIP.into(),
                port: 80,
                check: None,
            }],
            backends: vec![
                backend(BR, "sa", "BR")?,
                backend(DE, "eu", "DE")?,
                backend(US, "us", "US")?,
            ],
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
        let plan = balancer::plan(&state, &inputs, &|_| None);
        self.reconciler.apply(&mut self.ebpf, &lab_pop(), &plan)?;
        Ok(())
    }

    /// The backend a new connection from `client` goes to.
    fn backend_of(&mut self, client: [u8; 4]) -> Result<u16, Error> {
        self.next_port += 1;
        let mut frame = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(client, VIP, 64)
            .tcp(self.next_port, 80, 1, 64240)
            .syn()
            .write(&mut frame, &[])?;
        let program = dataplane::xdp_program(&mut self.ebpf, names::XDP_INGRESS)?;
        let out = test_run(program.fd()?, &frame, 1)?;
        let Some(NetSlice::Ipv6(ip)) = SlicedPacket::from_ethernet(&out.data_out)?.net else {
            return Err(
                format!("SYN from {client:?} not translated: verdict {}", out.retval).into(),
            );
        };
        Ok(Ipv6Addr::from(ip.header().destination()).segments()[7])
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
    pop.written = geo_maps::Written::default();
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
