//! The /24 table and the IPv6 directories answer as the database does.

use std::net::{IpAddr, Ipv4Addr};

use edge_common::geo::GEO_V4_DEEPER;
use ipnet::{IpNet, Ipv4Net};

use super::{slash24_class, slash24_table};
use crate::{balancing::plan::GeoClasses, geo::GeoDb, model::Country};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn net(s: &str) -> Result<Ipv4Net> {
    Ok(s.parse()?)
}

#[test]
fn longer_prefixes_paint_over_the_ones_that_cover_them_in_any_order() -> Result {
    let table = slash24_table([
        (net("10.1.2.0/24")?, 3),
        (net("10.1.0.0/16")?, 2),
        (net("10.0.0.0/8")?, 1),
        (net("10.1.2.128/25")?, 4),
        (net("10.9.9.9/32")?, 5),
    ]);
    let class = |a: [u8; 4]| slash24_class(&table, Ipv4Addr::from(a));
    assert_eq!(class([10, 200, 0, 1]), Some(1));
    assert_eq!(class([10, 1, 7, 1]), Some(2));
    // A /24 split by a /25: the trie answers for the whole /24, both halves.
    assert_eq!(class([10, 1, 2, 1]), Some(GEO_V4_DEEPER));
    assert_eq!(class([10, 1, 2, 200]), Some(GEO_V4_DEEPER));
    assert_eq!(class([10, 9, 9, 1]), Some(GEO_V4_DEEPER));
    assert_eq!(class([10, 9, 8, 1]), Some(1));
    assert_eq!(class([11, 0, 0, 1]), Some(0));
    assert_eq!(class([255, 255, 255, 255]), Some(0));
    Ok(())
}

#[test]
fn the_whole_space_and_its_last_slash24_are_covered() -> Result {
    let table = slash24_table([(net("0.0.0.0/0")?, 7), (net("255.255.255.0/24")?, 8)]);
    assert_eq!(slash24_class(&table, Ipv4Addr::new(0, 0, 0, 0)), Some(7));
    assert_eq!(slash24_class(&table, Ipv4Addr::new(128, 3, 4, 5)), Some(7));
    assert_eq!(
        slash24_class(&table, Ipv4Addr::new(255, 255, 255, 9)),
        Some(8)
    );
    Ok(())
}

#[test]
fn a_class_that_would_read_as_deeper_is_stored_as_unknown() -> Result {
    let table = slash24_table([(net("10.0.0.0/8")?, 255), (net("11.0.0.0/8")?, 300)]);
    assert_eq!(slash24_class(&table, Ipv4Addr::new(10, 1, 1, 1)), Some(0));
    assert_eq!(slash24_class(&table, Ipv4Addr::new(11, 1, 1, 1)), Some(0));
    Ok(())
}

/// Random nested IPv6 prefixes of /16 to /64: wherever a directory gives a class, it is
/// the database's own longest-prefix answer, and each level answers for some.
#[test]
fn the_ipv6_directories_answer_as_the_database_does() -> Result {
    use std::net::Ipv6Addr;

    use ipnet::Ipv6Net;

    use super::{v6_directories, v6_directory_class};

    let countries: Vec<Country> = ["AR", "BR", "DE", "JP", "US"]
        .iter()
        .map(|c| c.parse())
        .collect::<std::result::Result<_, _>>()?;
    let mut rng = fastrand::Rng::with_seed(48);
    // Clustered in 2a01::/20 so that prefixes nest and split /32s and /48s.
    let base: u128 = 0x2a01 << 112;
    let random = |rng: &mut fastrand::Rng| base | u128::from(rng.u64(..1 << 40)) << 68;
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3000 {
        let len = [16, 22, 29, 32, 36, 40, 44, 48, 56, 64][rng.usize(..10)];
        let net = Ipv6Net::new(Ipv6Addr::from(random(&mut rng)), len)?.trunc();
        if seen.insert(net) {
            entries.push((IpNet::V6(net), countries[rng.usize(..countries.len())]));
        }
    }
    let db = GeoDb::from_entries(entries)?;
    let classes = GeoClasses::new(db.countries());
    let class_of = |c: Country| classes.class_of(c).unwrap_or(0);
    let d = v6_directories(db.v6_prefixes().map(|(n, c)| (n, class_of(c))));
    let (mut answered, mut trie) = (0, 0);
    for _ in 0..50_000 {
        let addr = Ipv6Addr::from(random(&mut rng) | u128::from(rng.u64(..)));
        let expected = db.lookup(IpAddr::V6(addr)).map_or(0, class_of);
        match v6_directory_class(&d, addr) {
            Some(class) => {
                assert_eq!(u16::from(class), expected, "{addr}");
                answered += 1;
            }
            None => trie += 1,
        }
    }
    let split = d.slash32.values().filter(|&&c| c == GEO_V4_DEEPER).count();
    assert!(
        answered > 10_000 && trie > 1_000 && split > 100 && d.slash48.len() > 1_000,
        "{answered} answered, {trie} left to the trie, {split} split /32s, {} /48s",
        d.slash48.len()
    );
    Ok(())
}

/// Every entry is in its line or counted as left out, and a lookup finds what was placed.
#[test]
fn directory_lines_hold_what_fits_and_count_the_rest() -> Result {
    use std::collections::HashMap;

    use edge_common::geo::{v6_dir_find, v6_dir_line};

    use super::v6_directory_lines;

    // 4 lines of 8 slots for 40 keys: some lines overflow.
    let entries: HashMap<u64, u8> = (0..40u64)
        .map(|k| (0x2a01_0000 + k * 7, (k % 250) as u8))
        .collect();
    let (table, full) = v6_directory_lines(&entries, 4);
    let found = entries
        .iter()
        .filter(|(&key, &class)| {
            let line = &table[v6_dir_line(key, 4) as usize];
            match v6_dir_find(line, key) {
                Some(c) => {
                    assert_eq!(c, class, "{key:x}");
                    true
                }
                None => false,
            }
        })
        .count();
    assert_eq!(found, 32, "every slot used");
    assert_eq!(full, 8, "the rest counted");
    // Class 0 and 255 are values like any other.
    let entries = HashMap::from([(1u64, 0u8), (2, 255)]);
    let (table, full) = v6_directory_lines(&entries, 1 << 10);
    assert_eq!(full, 0);
    for (key, class) in entries {
        assert_eq!(
            v6_dir_find(&table[v6_dir_line(key, 1 << 10) as usize], key),
            Some(class)
        );
    }
    Ok(())
}

/// Random nested prefixes: wherever the table gives a class, it is the database's own
/// longest-prefix answer.
#[test]
fn the_table_answers_as_the_database_does() -> Result {
    let countries: Vec<Country> = ["AR", "BR", "DE", "JP", "US"]
        .iter()
        .map(|c| c.parse())
        .collect::<std::result::Result<_, _>>()?;
    let mut rng = fastrand::Rng::with_seed(24);
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3000 {
        // Clustered in 10.0.0.0/12 so that prefixes nest and split /24s.
        let addr = Ipv4Addr::from(0x0a00_0000 | rng.u32(..1 << 20));
        let len = rng.u8(12..=30);
        let net = Ipv4Net::new(addr, len)?.trunc();
        if seen.insert(net) {
            entries.push((IpNet::V4(net), countries[rng.usize(..countries.len())]));
        }
    }
    let db = GeoDb::from_entries(entries)?;
    let classes = GeoClasses::new(db.countries());
    let class_of = |c: Country| classes.class_of(c).unwrap_or(0);
    let table = slash24_table(db.v4_prefixes().map(|(n, c)| (n, class_of(c))));
    let (mut direct, mut deeper) = (0, 0);
    for _ in 0..50_000 {
        let addr = Ipv4Addr::from(0x0a00_0000 | rng.u32(..1 << 21));
        let expected = db.lookup(IpAddr::V4(addr)).map_or(0, class_of);
        match slash24_class(&table, addr) {
            Some(GEO_V4_DEEPER) => deeper += 1,
            Some(class) => {
                assert_eq!(u16::from(class), expected, "{addr}");
                direct += 1;
            }
            None => return Err(format!("{addr}: outside the table").into()),
        }
    }
    assert!(
        direct > 10_000 && deeper > 1_000,
        "{direct} direct, {deeper} deeper"
    );
    Ok(())
}
