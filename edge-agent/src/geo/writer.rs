//! A MaxMind DB writer for country databases (format 2.0,
//! <https://maxmind.github.io/MaxMind-DB/>), so that tests can build databases with the
//! prefixes they need and the benchmarks one of realistic size; no licensed database has to be
//! shipped or downloaded. Only tests and the `test-support` feature build it (see
//! `crate::testing`): the agent reads databases, it never writes one.
//!
//! The output is laid out as MaxMind's own writers lay out GeoLite2-Country: an IPv6 tree
//! (`ip_version` 6) with IPv4 at `::/96`, `::ffff:0:0/96` pointing at the same subtree, and
//! likewise `2002::/16` (6to4) and `2001::/32` (Teredo) unless IPv6 entries overlap those
//! ranges. Data records are `{"country": {"iso_code": "BR"}}`, one per country, shared by all
//! its networks. Record size is the smallest of 24, 28 and 32 bits that fits.
//!
//! Entries have [`GeoDb`](super::GeoDb) semantics, so that writing a database and loading it
//! back gives the same answers: prefixes may nest (the longest wins), IPv6 entries do not
//! apply to IPv4 (an IPv6 `::/0` does not answer IPv4 lookups), and IPv4-mapped IPv6 prefixes
//! are IPv4. Non-nested entries read back exactly as written; nested ones read back as the
//! pieces the outer prefix is cut into.

use std::{
    collections::BTreeMap,
    fs,
    net::Ipv6Addr,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use ipnet::{IpNet, Ipv6Net};

use super::{db::dedup, normalize, GeoError, IPV4_MAPPED, MMDB_METADATA_MARKER};
use crate::model::Country;

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmdbSummary {
    pub ipv4_networks: usize,
    pub ipv6_networks: usize,
    pub countries: usize,
    pub node_count: u32,
    pub record_size: u16,
    pub bytes: usize,
}

/// Writes a country database for `entries` to `path`, replacing it atomically (a temporary
/// file in the same directory, then a rename), so a reader watching `path` never sees half a
/// database. `database_type` goes into the metadata (e.g. `GeoLite2-Country`).
pub fn write_country_mmdb(
    path: impl AsRef<Path>,
    entries: &[(IpNet, Country)],
    database_type: &str,
) -> Result<MmdbSummary, GeoError> {
    let path = path.as_ref();
    let (bytes, summary) = encode_country_mmdb(entries, database_type)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let write = |source| GeoError::Write {
        path: path.to_owned(),
        source,
    };
    fs::write(&tmp, &bytes).map_err(write)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        write(e)
    })?;
    Ok(summary)
}

/// The bytes of the database [`write_country_mmdb`] writes.
pub fn encode_country_mmdb(
    entries: &[(IpNet, Country)],
    database_type: &str,
) -> Result<(Vec<u8>, MmdbSummary), GeoError> {
    encode(entries, database_type, Layout::default())
}

/// Knobs the tests turn to reach layouts our writer would not choose.
#[derive(Clone, Copy)]
pub(super) struct Layout {
    /// Keep IPv6 entries out of the IPv4 space (`::/96`, `::ffff:0:0/96`) and add aliases.
    pub ipv4_subtree: bool,
    /// Where IPv4 entries go: `::/96` (0), or elsewhere to mimic other writers.
    pub ipv4_at: u128,
    pub min_record_size: u16,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            ipv4_subtree: true,
            ipv4_at: 0,
            min_record_size: 24,
        }
    }
}

pub(super) fn encode(
    entries: &[(IpNet, Country)],
    database_type: &str,
    layout: Layout,
) -> Result<(Vec<u8>, MmdbSummary), GeoError> {
    if database_type.is_empty() {
        return Err(GeoError::Unwritable {
            reason: "the database type must not be empty".to_owned(),
        });
    }
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (index, &(network, country)) in entries.iter().enumerate() {
        let net = normalize(network).map_err(|reason| GeoError::Entry {
            index,
            network,
            reason,
        })?;
        match net {
            IpNet::V4(n) => v4.push((n, country, index)),
            IpNet::V6(n) => v6.push((n, country, index)),
        }
    }
    let conflict = |c: super::db::Conflict| GeoError::Entry {
        index: c.second.0,
        network: c.network,
        reason: format!("the same prefix is {} in entry {}", c.first.1, c.first.0),
    };
    let mut v4 = dedup(v4, conflict)?;
    let mut v6 = dedup(v6, conflict)?;
    // Shorter prefixes first, so that a longer one is cut out of the shorter one containing it
    // (longest match wins). The sort is stable, so each length stays in address order.
    v4.sort_by_key(|(n, _)| n.prefix_len());
    v6.sort_by_key(|(n, _)| n.prefix_len());

    // Countries in sorted order, so the same entries give the same data section.
    let mut countries: BTreeMap<Country, u32> = v4.iter().map(|(_, c)| (*c, 0)).collect();
    countries.extend(v6.iter().map(|(_, c)| (*c, 0)));
    for (i, index) in countries.values_mut().enumerate() {
        *index = DATA | i as u32;
    }

    let mut tree = Tree::new();
    for (net, country) in &v6 {
        tree.set(
            u128::from(net.network()),
            net.prefix_len(),
            countries[country],
        )?;
    }
    if layout.ipv4_subtree {
        // Cut `::/96` out of any IPv6 entry covering it: IPv4 lookups walk that subtree.
        tree.set(0, 96, EMPTY)?;
    }
    for (net, country) in &v4 {
        let bits = layout.ipv4_at | u128::from(u32::from(net.network()));
        tree.set(bits, 96 + net.prefix_len(), countries[country])?;
    }
    if layout.ipv4_subtree {
        // Readers tell aliases from real data by the node `::/96` leads to. If that is a data
        // record (all of IPv4 is one network), every other network sharing the record looks
        // like an alias, so give `::/96` a node whose two halves carry the record.
        let ipv4 = tree.get(0, 96);
        if ipv4 & DATA != 0 {
            tree.set(0, 97, ipv4)?;
        }
        let ipv4 = tree.get(0, 96);
        tree.set(u128::from(IPV4_MAPPED.network()), 96, ipv4)?;
        for alias in [
            Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
            Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32),
        ] {
            // Only where no IPv6 entry overlaps it. An alias inside an entry's range would
            // hide the entry's data there; around it, the file would answer 6to4 or Teredo
            // clients by their embedded IPv4 address and a `GeoDb` of the same entries (and
            // the kernel) by the IPv6 entry.
            if !v6
                .iter()
                .any(|(n, _)| alias.contains(n) || n.contains(&alias))
            {
                tree.set(u128::from(alias.network()), alias.prefix_len(), ipv4)?;
            }
        }
    }

    // One data record per country.
    let mut data = Vec::new();
    let mut offsets = Vec::with_capacity(countries.len());
    for country in countries.keys() {
        offsets.push(data.len());
        country_record(&mut data, *country);
    }

    let node_count = tree.nodes.len();
    let largest = node_count + SEPARATOR + data.len();
    let record_size: u16 = match largest {
        n if n < 1 << 24 && layout.min_record_size <= 24 => 24,
        n if n < 1 << 28 && layout.min_record_size <= 28 => 28,
        n if u32::try_from(n).is_ok() => 32,
        n => {
            return Err(GeoError::Unwritable {
                reason: format!("{n} search tree nodes and data bytes exceed 32-bit records"),
            })
        }
    };
    let node_count_u32 = u32::try_from(node_count).map_err(|_| GeoError::Unwritable {
        reason: format!("{node_count} search tree nodes"),
    })?;
    let resolve = |record: u32| -> u32 {
        if record == EMPTY {
            node_count_u32
        } else if record & DATA != 0 {
            // The spec's data pointer: past the nodes and the 16-byte separator.
            let offset = offsets[(record & !DATA) as usize];
            (node_count + SEPARATOR + offset) as u32
        } else {
            record
        }
    };

    let mut out = Vec::with_capacity(node_count * usize::from(record_size) / 4 + data.len() + 512);
    for &[left, right] in &tree.nodes {
        let (l, r) = (resolve(left), resolve(right));
        match record_size {
            24 => {
                out.extend_from_slice(&l.to_be_bytes()[1..]);
                out.extend_from_slice(&r.to_be_bytes()[1..]);
            }
            28 => {
                // Each record's top nibble shares the middle byte, the left one high.
                out.extend_from_slice(&l.to_be_bytes()[1..]);
                out.push((((l >> 24) & 0x0f) << 4) as u8 | ((r >> 24) & 0x0f) as u8);
                out.extend_from_slice(&r.to_be_bytes()[1..]);
            }
            _ => {
                out.extend_from_slice(&l.to_be_bytes());
                out.extend_from_slice(&r.to_be_bytes());
            }
        }
    }
    out.extend_from_slice(&[0; SEPARATOR]);
    out.extend_from_slice(&data);
    out.extend_from_slice(MMDB_METADATA_MARKER);
    let build_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    metadata(
        &mut out,
        database_type,
        build_epoch,
        node_count_u32,
        record_size,
    );

    let summary = MmdbSummary {
        ipv4_networks: v4.len(),
        ipv6_networks: v6.len(),
        countries: countries.len(),
        node_count: node_count_u32,
        record_size,
        bytes: out.len(),
    };
    Ok((out, summary))
}

// The 16 zero bytes between the search tree and the data section.
const SEPARATOR: usize = 16;

// A record while the tree is built: `EMPTY` (no data), a node index (the root, node 0, is
// never a child, so 0 is free for `EMPTY`), or `DATA | country index`. Data pointers are only
// known once the node count is, at the end.
const EMPTY: u32 = 0;
const DATA: u32 = 1 << 31;

fn is_node(record: u32) -> bool {
    record != EMPTY && record & DATA == 0
}

/// The binary trie over 128-bit keys, each node a (0-bit, 1-bit) pair of records.
struct Tree {
    nodes: Vec<[u32; 2]>,
}

impl Tree {
    fn new() -> Self {
        Tree {
            nodes: vec![[EMPTY; 2]],
        }
    }

    fn bit(bits: u128, depth: u8) -> usize {
        ((bits >> (127 - depth)) & 1) as usize
    }

    /// Makes `value` the record for the `len`-bit prefix `bits`, replacing what was there
    /// (a whole subtree, if any). A data record met on the way is pushed down into a new node
    /// whose other half keeps it, which cuts the new prefix out of the old one.
    fn set(&mut self, bits: u128, len: u8, value: u32) -> Result<(), GeoError> {
        if len == 0 {
            self.nodes[0] = [value; 2];
            return Ok(());
        }
        let mut node = 0;
        for depth in 0..len - 1 {
            let b = Self::bit(bits, depth);
            let record = self.nodes[node][b];
            if is_node(record) {
                node = record as usize;
                continue;
            }
            if record == EMPTY && value == EMPTY {
                return Ok(());
            }
            let child = u32::try_from(self.nodes.len())
                .ok()
                .filter(|&c| c & DATA == 0)
                .ok_or_else(|| GeoError::Unwritable {
                    reason: format!("more than {DATA} search tree nodes"),
                })?;
            self.nodes.push([record; 2]);
            self.nodes[node][b] = child;
            node = child as usize;
        }
        self.nodes[node][Self::bit(bits, len - 1)] = value;
        Ok(())
    }

    /// The record for the `len`-bit prefix `bits` (1..=128), or the data or empty record
    /// above it that covers it.
    fn get(&self, bits: u128, len: u8) -> u32 {
        let mut record = 0;
        for depth in 0..len {
            record = self.nodes[record as usize][Self::bit(bits, depth)];
            if !is_node(record) {
                break;
            }
        }
        record
    }
}

// The data section's encoding (the spec's "Output Data Section"): a control byte with the type
// in its top 3 bits and the size in its low 5, an extended-type byte for types above 7, then
// any size bytes, then the payload.
const TYPE_STRING: u8 = 2;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_UINT64: u8 = 9;
const TYPE_ARRAY: u8 = 11;

fn control(out: &mut Vec<u8>, type_num: u8, size: usize) {
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, Vec::new())
    } else if size < 29 + 256 {
        (29, vec![(size - 29) as u8])
    } else if size < 285 + 65_536 {
        (30, ((size - 285) as u16).to_be_bytes().to_vec())
    } else {
        (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec())
    };
    if type_num <= 7 {
        out.push(type_num << 5 | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, TYPE_STRING, s.len());
    out.extend_from_slice(s.as_bytes());
}

// Unsigned integers are big-endian in as few bytes as they need (zero in none).
fn uint(out: &mut Vec<u8>, type_num: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = (value.leading_zeros() / 8) as usize;
    control(out, type_num, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn country_record(out: &mut Vec<u8>, country: Country) {
    control(out, TYPE_MAP, 1);
    string(out, "country");
    control(out, TYPE_MAP, 1);
    string(out, "iso_code");
    string(out, country.code());
}

fn metadata(out: &mut Vec<u8>, database_type: &str, build_epoch: u64, nodes: u32, record: u16) {
    control(out, TYPE_MAP, 9);
    string(out, "binary_format_major_version");
    uint(out, TYPE_UINT16, 2);
    string(out, "binary_format_minor_version");
    uint(out, TYPE_UINT16, 0);
    string(out, "build_epoch");
    uint(out, TYPE_UINT64, build_epoch);
    string(out, "database_type");
    string(out, database_type);
    string(out, "description");
    control(out, TYPE_MAP, 1);
    string(out, "en");
    string(out, "Country database written by edgeProxy's edge-agent");
    string(out, "ip_version");
    uint(out, TYPE_UINT16, 6);
    string(out, "languages");
    control(out, TYPE_ARRAY, 1);
    string(out, "en");
    string(out, "node_count");
    uint(out, TYPE_UINT32, u64::from(nodes));
    string(out, "record_size");
    uint(out, TYPE_UINT16, u64::from(record));
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use maxminddb::Reader;
    use serde::Deserialize;

    use super::*;

    #[test]
    fn control_bytes_follow_the_spec() {
        let mut out = Vec::new();
        control(&mut out, TYPE_STRING, 28);
        control(&mut out, TYPE_STRING, 29);
        control(&mut out, TYPE_STRING, 300);
        control(&mut out, TYPE_STRING, 70_000);
        control(&mut out, TYPE_ARRAY, 3);
        // The spec's examples: a 28-byte string, sizes with 1, 2 and 3 extra bytes, and an
        // extended type.
        assert_eq!(
            out,
            [0x5c, 0x5d, 0x00, 0x5e, 0x00, 0x0f, 0x5f, 0x00, 0x10, 0x53, 0x03, 0x04]
        );
        let mut out = Vec::new();
        uint(&mut out, TYPE_UINT16, 0);
        uint(&mut out, TYPE_UINT32, 0x1_0000);
        assert_eq!(out, [0xa0, 0xc3, 0x01, 0x00, 0x00]);
    }

    #[derive(Deserialize)]
    struct Any<'a> {
        #[serde(borrow)]
        country: BTreeMap<&'a str, &'a str>,
    }

    #[test]
    fn every_record_size_reads_back() -> Result<(), Box<dyn std::error::Error>> {
        let entries = [
            ("192.0.2.0/24".parse()?, "BR".parse()?),
            ("2001:db8::/32".parse()?, "JP".parse()?),
        ];
        for size in [24, 28, 32] {
            let layout = Layout {
                min_record_size: size,
                ..Layout::default()
            };
            let (bytes, summary) = encode(&entries, "Test-Country", layout)?;
            assert_eq!(summary.record_size, size);
            let reader = Reader::from_source(bytes)?;
            reader.verify()?;
            assert_eq!(reader.metadata().record_size, size);
            for (addr, want) in [("192.0.2.1", "BR"), ("2001:db8::1", "JP")] {
                let found = reader.lookup(addr.parse()?)?.decode::<Any>()?;
                let got = found.and_then(|r| r.country.get("iso_code").copied());
                assert_eq!(got, Some(want), "{addr} with {size}-bit records");
            }
        }
        Ok(())
    }

    #[test]
    fn bad_input_is_refused() -> Result<(), Box<dyn std::error::Error>> {
        let br: Country = "BR".parse()?;
        let bad = [
            (vec![("10.0.0.1/8".parse()?, br)], "host bits"),
            (
                vec![
                    ("10.0.0.0/8".parse()?, br),
                    ("10.0.0.0/8".parse()?, "US".parse()?),
                ],
                "BR in entry 0",
            ),
        ];
        for (entries, want) in bad {
            match encode_country_mmdb(&entries, "T") {
                Err(GeoError::Entry { reason, .. }) => assert!(reason.contains(want), "{reason}"),
                other => panic!("expected {want:?}, got {other:?}"),
            }
        }
        assert!(matches!(
            encode_country_mmdb(&[], ""),
            Err(GeoError::Unwritable { .. })
        ));
        Ok(())
    }
}
