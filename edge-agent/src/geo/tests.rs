//! Round trips through the writer and the loader, checked against the `maxminddb` reader and
//! against [`GeoDb::from_entries`] as the reference; damaged files; format detection.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Instant,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use maxminddb::{path, Reader};

use super::{
    mmdb,
    writer::{encode, encode_country_mmdb, write_country_mmdb, Layout},
    *,
};
use crate::model::Country;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> Self {
        TempFile(std::env::temp_dir().join(format!("edge-geo-{}-{name}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn entries(list: &[(&str, &str)]) -> Result<Vec<(IpNet, Country)>> {
    list.iter()
        .map(|(n, c)| Ok((n.parse()?, c.parse()?)))
        .collect()
}

/// The country the `maxminddb` reader itself finds for `addr`.
fn reader_country<S: AsRef<[u8]>>(reader: &Reader<S>, addr: IpAddr) -> Result<Option<Country>> {
    let code: Option<&str> = reader
        .lookup(addr)?
        .decode_path(&path!["country", "iso_code"])?;
    Ok(code.map(str::parse).transpose()?)
}

/// Addresses at both ends and the middle of every entry, and just outside it.
fn probes(entries: &[(IpNet, Country)]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (net, _) in entries {
        match net {
            IpNet::V4(n) => {
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                for a in [
                    lo,
                    hi,
                    lo / 2 + hi / 2,
                    lo.wrapping_sub(1),
                    hi.wrapping_add(1),
                ] {
                    out.push(IpAddr::V4(Ipv4Addr::from(a)));
                }
            }
            IpNet::V6(n) => {
                let (lo, hi) = (u128::from(n.network()), u128::from(n.broadcast()));
                for a in [
                    lo,
                    hi,
                    lo / 2 + hi / 2,
                    lo.wrapping_sub(1),
                    hi.wrapping_add(1),
                ] {
                    out.push(IpAddr::V6(Ipv6Addr::from(a)));
                }
            }
        }
    }
    out
}

// The ranges that must never show up as IPv6 prefixes after loading: IPv4 space and aliases.
fn in_ipv4_alias(net: &Ipv6Net) -> Result<bool> {
    for alias in ["::/96", "::ffff:0:0/96", "2002::/16", "2001::/32"] {
        let alias: Ipv6Net = alias.parse()?;
        if alias.contains(net) || net.contains(&alias) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn mmdb_round_trip_answers_like_the_entries() -> Result {
    let list = entries(&[
        ("203.0.113.0/24", "BR"),
        ("198.51.100.0/24", "US"),
        ("192.0.2.0/25", "DE"),
        ("192.0.2.128/25", "JP"),
        // Nested: the longest prefix wins.
        ("10.0.0.0/8", "AR"),
        ("10.1.0.0/16", "CL"),
        ("10.1.1.0/24", "AU"),
        ("10.1.1.7/32", "NZ"),
        ("2001:db8::/32", "FR"),
        ("2001:db8:1::/48", "PT"),
        ("2001:db8:1::99/128", "ES"),
        ("2400:cb00::/32", "SG"),
        ("2a00:1450::/29", "GB"),
    ])?;
    let file = TempFile::new("round-trip.mmdb");
    let summary = write_country_mmdb(&file.0, &list, "Test-Country")?;
    assert_eq!((summary.ipv4_networks, summary.ipv6_networks), (8, 5));
    assert_eq!(summary.countries, 13);

    let reference = GeoDb::from_entries(list.clone())?;
    let loaded = GeoDb::load(&file.0)?;
    let reader = Reader::open_readfile(&file.0)?;
    reader.verify()?;
    assert_eq!(reader.metadata().database_type, "Test-Country");
    assert_eq!(reader.metadata().ip_version, 6);
    assert_eq!(
        loaded.info().format,
        GeoFormat::Mmdb {
            database_type: "Test-Country".into(),
            build_epoch: reader.metadata().build_epoch
        }
    );

    for addr in probes(&list) {
        let want = reference.lookup(addr);
        assert_eq!(loaded.lookup(addr), want, "loaded database at {addr}");
        assert_eq!(
            reader_country(&reader, addr)?,
            want,
            "maxminddb reader at {addr}"
        );
        // IPv4 through the aliases MaxMind readers support, straight in the file.
        if let IpAddr::V4(v4) = addr {
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            assert_eq!(reader_country(&reader, mapped)?, want, "reader at {mapped}");
            let [a, b, c, d] = v4.octets();
            let six_to_four = Ipv6Addr::new(
                0x2002,
                u16::from_be_bytes([a, b]),
                u16::from_be_bytes([c, d]),
                0,
                0,
                0,
                0,
                1,
            );
            assert_eq!(
                reader_country(&reader, six_to_four.into())?,
                want,
                "reader at {six_to_four}"
            );
        }
    }

    // Entries that nest nothing come back exactly; the rest come back as disjoint pieces.
    let v4: Vec<_> = loaded.v4_prefixes().collect();
    for want in ["203.0.113.0/24 BR", "192.0.2.0/25 DE", "10.1.1.7/32 NZ"] {
        let (net, country) = want.split_once(' ').ok_or("test table")?;
        let want = (net.parse::<Ipv4Net>()?, country.parse::<Country>()?);
        assert!(v4.contains(&want), "{want:?} missing from {v4:?}");
    }
    for pair in v4.windows(2) {
        assert!(
            !pair[0].0.contains(&pair[1].0),
            "loaded prefixes overlap: {pair:?}"
        );
    }
    // No IPv4 data came back a second time as IPv6 (through an alias).
    for (net, _) in loaded.v6_prefixes() {
        assert!(!in_ipv4_alias(&net)?, "{net} is IPv4 space or an alias");
    }
    assert_eq!(loaded.countries(), reference.countries());
    Ok(())
}

#[test]
fn ipv6_entries_do_not_answer_for_ipv4() -> Result {
    let list = entries(&[("::/0", "US"), ("192.0.2.0/24", "BR")])?;
    let (bytes, _) = encode_country_mmdb(&list, "T")?;
    let reader = Reader::from_source(bytes.clone())?;
    let loaded = mmdb::parse(Path::new("t.mmdb"), bytes)?;
    let reference = GeoDb::from_entries(list)?;
    for addr in [
        "198.51.100.1",
        "192.0.2.1",
        "2001:db8::1",
        "::ffff:198.51.100.1",
    ] {
        let addr: IpAddr = addr.parse()?;
        assert_eq!(loaded.lookup(addr), reference.lookup(addr), "{addr}");
        assert_eq!(
            reader_country(&reader, addr)?,
            reference.lookup(addr),
            "{addr}"
        );
    }
    assert_eq!(loaded.v4_prefixes().len(), 1);
    Ok(())
}

#[test]
fn all_of_ipv4_in_one_network() -> Result {
    // IPv4 as one network shares its record with IPv6 networks of the same country, the case
    // where the maxminddb walk mistakes those for aliases unless `::/96` is a node.
    let list = entries(&[
        ("0.0.0.0/0", "BR"),
        ("2001:db8::/32", "BR"),
        ("2400::/12", "BR"),
        ("2a00::/12", "DE"),
    ])?;
    let (bytes, _) = encode_country_mmdb(&list, "T")?;
    let loaded = mmdb::parse(Path::new("t.mmdb"), bytes)?;
    let v6: Vec<String> = loaded.v6_prefixes().map(|(n, _)| n.to_string()).collect();
    assert_eq!(v6, ["2001:db8::/32", "2400::/12", "2a00::/12"]);
    // Written as two halves so that `::/96` is a node (see the writer).
    let v4: Vec<String> = loaded.v4_prefixes().map(|(n, _)| n.to_string()).collect();
    assert_eq!(v4, ["0.0.0.0/1", "128.0.0.0/1"]);
    Ok(())
}

#[test]
fn ipv4_covered_by_an_ipv6_record() -> Result {
    // Not what our writer makes, but a valid database: no IPv4 subtree, and `::/8` covers
    // `::/96`, so MaxMind readers answer every IPv4 lookup with `::/8`'s record, the same
    // record as `2001:db8::/32`'s.
    let list = entries(&[("::/8", "US"), ("2001:db8::/32", "US"), ("2400::/12", "JP")])?;
    let layout = Layout {
        ipv4_subtree: false,
        ..Layout::default()
    };
    let (bytes, _) = encode(&list, "T", layout)?;
    let reader = Reader::from_source(bytes.clone())?;
    let loaded = mmdb::parse(Path::new("t.mmdb"), bytes)?;
    let v6: Vec<String> = loaded.v6_prefixes().map(|(n, _)| n.to_string()).collect();
    assert_eq!(v6, ["::/8", "2001:db8::/32", "2400::/12"]);
    let v4: Vec<String> = loaded.v4_prefixes().map(|(n, _)| n.to_string()).collect();
    assert_eq!(v4, ["0.0.0.0/0"]);
    let addr: IpAddr = "192.0.2.1".parse()?;
    assert_eq!(loaded.lookup(addr), reader_country(&reader, addr)?);
    Ok(())
}

#[test]
fn ipv4_stored_only_as_mapped_addresses() -> Result {
    // Some writers put IPv4 under `::ffff:0:0/96` and leave `::/96` empty.
    let list = entries(&[
        ("0.0.0.0/1", "GB"),
        ("192.0.2.0/24", "BR"),
        ("2001:db8::/32", "FR"),
    ])?;
    let layout = Layout {
        ipv4_subtree: false,
        ipv4_at: u128::from(IPV4_MAPPED.network()),
        ..Layout::default()
    };
    let (bytes, _) = encode(&list, "T", layout)?;
    let loaded = mmdb::parse(Path::new("t.mmdb"), bytes)?;
    assert_eq!(loaded.entries().collect::<Vec<_>>(), list);
    assert_eq!(loaded.info().shadowed_ipv4, 0);
    Ok(())
}

#[test]
fn corrupt_mmdb_is_an_error_not_a_panic() -> Result {
    let list = entries(&[
        ("203.0.113.0/24", "BR"),
        ("10.0.0.0/8", "AR"),
        ("10.1.0.0/16", "CL"),
        ("2001:db8::/32", "FR"),
        ("2400:cb00::/32", "SG"),
    ])?;
    let (good, _) = encode_country_mmdb(&list, "Test-Country")?;
    let path = Path::new("corrupt.mmdb");
    mmdb::parse(path, good.clone())?;

    // Every truncation loses (part of) the metadata.
    for len in 0..good.len() {
        match mmdb::parse(path, good[..len].to_vec()) {
            Err(GeoError::Mmdb { .. } | GeoError::Invalid { .. }) => {}
            other => panic!("truncated to {len} bytes: expected an error, got {other:?}"),
        }
    }

    let mut rng = SplitMix64(7);
    // Random bytes, and random bytes ahead of a valid metadata section.
    let metadata_at = good
        .windows(MMDB_METADATA_MARKER.len())
        .rposition(|w| w == MMDB_METADATA_MARKER)
        .ok_or("no marker in our own output")?;
    for i in 0..2000 {
        let len = (rng.next() % 4096) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 1 {
            bytes.extend_from_slice(&good[metadata_at..]);
        }
        let _ = mmdb::parse(path, bytes);
    }

    // Bit flips anywhere: any outcome but a panic (a flip inside "BR" gives another valid
    // database, most give errors).
    let (mut ok, mut err) = (0, 0);
    for _ in 0..5000 {
        let mut bytes = good.clone();
        for _ in 0..=rng.next() % 4 {
            let at = (rng.next() % bytes.len() as u64) as usize;
            bytes[at] ^= 1 << (rng.next() % 8);
        }
        match mmdb::parse(path, bytes) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    eprintln!("geo: of 5000 damaged databases, {ok} loaded and {err} were refused");
    assert!(err > 0, "no bit flip was detected ({ok} loaded)");

    // Through the file system, as the agent loads it.
    let file = TempFile::new("truncated.mmdb");
    fs::write(&file.0, &good[..good.len() / 2])?;
    assert!(matches!(GeoDb::load(&file.0), Err(GeoError::Mmdb { .. })));
    let missing = TempFile::new("missing.mmdb");
    assert!(matches!(
        GeoDb::load(&missing.0),
        Err(GeoError::Read { .. })
    ));
    Ok(())
}

#[test]
fn a_database_without_countries_is_refused() -> Result {
    // A valid MaxMind DB whose records carry no country (say, an ASN database by mistake):
    // refused rather than loaded as "everyone is unknown".
    let (mut bytes, _) = encode_country_mmdb(&entries(&[("192.0.2.0/24", "BR")])?, "T")?;
    let key = bytes
        .windows(7)
        .position(|w| w == b"country")
        .ok_or("no country key")?;
    bytes[key..key + 7].copy_from_slice(b"COUNTRY");
    match mmdb::parse(Path::new("asn.mmdb"), bytes) {
        Err(GeoError::Invalid { reason, .. }) => assert!(reason.contains("no network")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    Ok(())
}

#[test]
fn load_picks_the_format() -> Result {
    let list = entries(&[("192.0.2.0/24", "BR"), ("2001:db8::/32", "DE")])?;
    let csv_text = "192.0.2.0/24,BR\n2001:db8::/32,DE\n";
    let (mmdb_bytes, _) = encode_country_mmdb(&list, "T")?;
    let cases: Vec<(&str, &[u8], bool)> = vec![
        ("a.csv", csv_text.as_bytes(), false),
        ("a.txt", csv_text.as_bytes(), false),
        ("a.mmdb", &mmdb_bytes, true),
        ("a.MMDB", &mmdb_bytes, true),
        ("a.bin", &mmdb_bytes, true),
        ("a", &mmdb_bytes, true),
    ];
    for (name, bytes, is_mmdb) in cases {
        let file = TempFile::new(name);
        fs::write(&file.0, bytes)?;
        let db = GeoDb::load(&file.0)?;
        assert_eq!(
            matches!(db.info().format, GeoFormat::Mmdb { .. }),
            is_mmdb,
            "{name}"
        );
        assert_eq!(db.entries().collect::<Vec<_>>(), list, "{name}");
    }
    let file = TempFile::new("garbage.bin");
    fs::write(&file.0, [0xff, 0xfe, 0x00, 0x81])?;
    assert!(matches!(
        GeoDb::load(&file.0),
        Err(GeoError::UnknownFormat { .. })
    ));
    // The extension wins over the content.
    let file = TempFile::new("text.mmdb");
    fs::write(&file.0, csv_text)?;
    assert!(matches!(GeoDb::load(&file.0), Err(GeoError::Mmdb { .. })));
    Ok(())
}

type V4Entry = (Ipv4Net, Country);
type V6Entry = (Ipv6Net, Country);

/// A small deterministic generator (SplitMix64), so the large database is the same every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// One of `choices` by weight.
    fn pick<T: Copy>(&mut self, choices: &[(u64, T)]) -> T {
        let total: u64 = choices.iter().map(|(w, _)| w).sum();
        let mut r = self.next() % total;
        for &(w, v) in choices {
            if r < w {
                return v;
            }
            r -= w;
        }
        choices[choices.len() - 1].1
    }
}

/// Non-overlapping prefixes laid out in address order with random lengths and gaps, the way
/// registries allocate, in runs of one country (neighbouring ranges mostly share one).
fn generate(n4: usize, n6: usize, seed: u64) -> Result<(Vec<V4Entry>, Vec<V6Entry>)> {
    let countries: Vec<Country> = RegionTable::builtin()
        .entries()
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    let mut rng = SplitMix64(seed);
    let mut country = countries[0];
    let mut next_country = |rng: &mut SplitMix64| {
        if rng.next() % 10 < 3 {
            country = countries[(rng.next() % countries.len() as u64) as usize];
        }
        country
    };

    // IPv4 lengths roughly as in GeoLite2-Country: mostly /24 to /20.
    let v4_lens: &[(u64, u8)] = &[
        (40, 24),
        (10, 23),
        (12, 22),
        (8, 21),
        (8, 20),
        (4, 19),
        (3, 18),
        (2, 17),
        (2, 16),
        (2, 28),
        (1, 30),
        (1, 32),
    ];
    let mut v4 = Vec::with_capacity(n4);
    let mut addr: u64 = 1 << 24; // 1.0.0.0
    while v4.len() < n4 {
        let len = rng.pick(v4_lens);
        let size = 1u64 << (32 - len);
        addr = (addr + size - 1) & !(size - 1);
        if addr + size > 0xe000_0000 {
            return Err("the generated IPv4 prefixes ran past 223.255.255.255".into());
        }
        let net = Ipv4Net::new(Ipv4Addr::from(addr as u32), len)?;
        v4.push((net, next_country(&mut rng)));
        addr += size;
        if rng.next().is_multiple_of(8) {
            addr += rng.next() % 32_768;
        }
    }

    let v6_lens: &[(u64, u8)] = &[(40, 48), (10, 44), (10, 40), (10, 36), (25, 32), (5, 29)];
    let mut v6 = Vec::with_capacity(n6);
    // From 2001:200::, so the run crosses 2002::/16 (where the 6to4 alias is then left out)
    // but not 2001::/32 (which keeps its Teredo alias).
    let mut addr: u128 = 0x2001_0200 << 96;
    while v6.len() < n6 {
        let len = rng.pick(v6_lens);
        let size = 1u128 << (128 - len);
        addr = (addr + size - 1) & !(size - 1);
        let net = Ipv6Net::new(Ipv6Addr::from(addr), len)?;
        v6.push((net, next_country(&mut rng)));
        addr += size;
        if rng.next().is_multiple_of(8) {
            addr += u128::from(rng.next() % 65_536) << 80;
        }
    }
    Ok((v4, v6))
}

#[test]
fn large_database_round_trip() -> Result {
    let (v4, v6) = generate(300_000, 200_000, 0x6564_6765)?;
    let list: Vec<(IpNet, Country)> = v4
        .iter()
        .map(|&(n, c)| (IpNet::V4(n), c))
        .chain(v6.iter().map(|&(n, c)| (IpNet::V6(n), c)))
        .collect();
    let file = TempFile::new("large.mmdb");

    let start = Instant::now();
    let summary = write_country_mmdb(&file.0, &list, "Test-Country-Large")?;
    let write_time = start.elapsed();
    let start = Instant::now();
    let loaded = GeoDb::load(&file.0)?;
    let load_time = start.elapsed();
    eprintln!(
        "geo: wrote {} networks ({} IPv4, {} IPv6, {} countries) in {write_time:.2?}: {} nodes, \
         {}-bit records, {} bytes; loaded {} IPv4 + {} IPv6 prefixes in {load_time:.2?}",
        list.len(),
        summary.ipv4_networks,
        summary.ipv6_networks,
        summary.countries,
        summary.node_count,
        summary.record_size,
        summary.bytes,
        loaded.v4_prefixes().len(),
        loaded.v6_prefixes().len(),
    );

    // Non-overlapping entries come back exactly: nothing lost, nothing doubled by an alias.
    assert_eq!(loaded.v4_prefixes().len(), v4.len());
    assert_eq!(loaded.v6_prefixes().len(), v6.len());
    assert!(
        loaded.v4_prefixes().eq(v4.iter().copied()),
        "IPv4 prefixes differ"
    );
    assert!(
        loaded.v6_prefixes().eq(v6.iter().copied()),
        "IPv6 prefixes differ"
    );

    // The run crossed 2002::/16, so the 6to4 alias was left out, and the Teredo alias was
    // written and still skipped by the loader (the exact comparison above).
    let six_to_four: Ipv6Net = "2002::/16".parse()?;
    assert!(v6.iter().any(|(n, _)| six_to_four.contains(n)));
    let reader = Reader::open_readfile(&file.0)?;
    let (first, country) = v4[0];
    let [a, b, c, d] = first.network().octets();
    let teredo = Ipv6Addr::new(
        0x2001,
        0,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
        0,
        0,
        1,
    );
    assert_eq!(
        reader_country(&reader, teredo.into())?,
        Some(country),
        "Teredo alias at {teredo}"
    );

    // And the maxminddb reader agrees at random addresses inside random entries.
    let mut rng = SplitMix64(1);
    for _ in 0..20_000 {
        let (net, want) = list[(rng.next() % list.len() as u64) as usize];
        let addr = match net {
            IpNet::V4(n) => {
                let host = rng.next() as u32 & u32::from(n.hostmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
            }
            IpNet::V6(n) => {
                let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
                IpAddr::V6(Ipv6Addr::from(
                    u128::from(n.network()) | (r & u128::from(n.hostmask())),
                ))
            }
        };
        assert_eq!(
            reader_country(&reader, addr)?,
            Some(want),
            "reader at {addr} in {net}"
        );
        assert_eq!(
            loaded.lookup(addr),
            Some(want),
            "loaded database at {addr} in {net}"
        );
    }
    Ok(())
}
