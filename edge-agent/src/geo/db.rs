//! [`GeoDb`]: the prefixes of a country database, per address family, as the kernel's LPM
//! tries will hold them.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{normalize, GeoError};
use crate::model::Country;

/// Which kind of file a [`GeoDb`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeoFormat {
    /// A MaxMind DB; its metadata's `database_type` (e.g. `GeoLite2-Country`,
    /// `DBIP-Country-Lite`) and build time, for the operator to see which one is in force.
    Mmdb {
        database_type: String,
        build_epoch: u64,
    },
    Csv,
    /// Built in memory with [`GeoDb::from_entries`].
    Entries,
}

/// Where a [`GeoDb`] came from and what its loader left out, for the agent to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeoDbInfo {
    pub format: GeoFormat,
    /// Networks whose record names no country (GeoLite2 has some: anycast and satellite
    /// ranges, ranges registered to a whole continent). They stay unclassified, so their
    /// clients get the default region, as they did in v1.
    pub without_country: usize,
    /// Networks whose record has an `iso_code` that is not two ASCII letters; skipped the same
    /// way (and logged), rather than failing a third-party database over one odd record.
    pub bad_country: usize,
    /// IPv4 networks found under `::ffff:0:0/96` in a database where that range is a copy of
    /// its own and not an alias of `::/96`. The `::/96` copy is the one MaxMind readers answer
    /// IPv4 lookups from, so it wins and these are dropped.
    pub shadowed_ipv4: usize,
}

impl GeoDbInfo {
    pub(super) fn new(format: GeoFormat) -> Self {
        GeoDbInfo {
            format,
            without_country: 0,
            bad_country: 0,
            shadowed_ipv4: 0,
        }
    }
}

/// A country database: IPv4 and IPv6 prefixes, each with a country, sorted and without
/// duplicates. Prefixes may nest; the longest match wins, as in the kernel's LPM tries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeoDb {
    v4: Vec<(Ipv4Net, Country)>,
    v6: Vec<(Ipv6Net, Country)>,
    // The distinct prefix lengths, longest first: a lookup tries only these.
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
    info: GeoDbInfo,
}

impl Default for GeoDb {
    fn default() -> Self {
        GeoDb {
            v4: Vec::new(),
            v6: Vec::new(),
            v4_lens: Vec::new(),
            v6_lens: Vec::new(),
            info: GeoDbInfo::new(GeoFormat::Entries),
        }
    }
}

impl GeoDb {
    /// A database from prefixes in memory. IPv4-mapped IPv6 prefixes count as IPv4; a prefix
    /// with host bits set, one inside `::/96`, or the same prefix twice with different
    /// countries is an error naming the entry's index.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (IpNet, Country)>,
    ) -> Result<Self, GeoError> {
        let mut builder = Builder::default();
        for (index, (network, country)) in entries.into_iter().enumerate() {
            let net = normalize(network).map_err(|reason| GeoError::Entry {
                index,
                network,
                reason,
            })?;
            builder.push(net, country, index);
        }
        builder.finish(GeoDbInfo::new(GeoFormat::Entries), |c| GeoError::Entry {
            index: c.second.0,
            network: c.network,
            reason: format!("the same prefix is {} in entry {}", c.first.1, c.first.0),
        })
    }

    /// The country of `addr` by longest-prefix match. An IPv4-mapped IPv6 address is looked
    /// up as the IPv4 address it carries.
    pub fn lookup(&self, addr: IpAddr) -> Option<Country> {
        match addr {
            IpAddr::V4(a) => self.v4_lens.iter().find_map(|&len| {
                let net = Ipv4Net::new(a, len).ok()?.trunc();
                let i = self.v4.binary_search_by(|(n, _)| n.cmp(&net)).ok()?;
                Some(self.v4[i].1)
            }),
            IpAddr::V6(a) => {
                if let Some(v4) = a.to_ipv4_mapped() {
                    return self.lookup(IpAddr::V4(v4));
                }
                self.v6_lens.iter().find_map(|&len| {
                    let net = Ipv6Net::new(a, len).ok()?.trunc();
                    let i = self.v6.binary_search_by(|(n, _)| n.cmp(&net)).ok()?;
                    Some(self.v6[i].1)
                })
            }
        }
    }

    /// The IPv4 prefixes, sorted by address then length.
    pub fn v4_prefixes(&self) -> impl ExactSizeIterator<Item = (Ipv4Net, Country)> + '_ {
        self.v4.iter().copied()
    }

    /// The IPv6 prefixes, sorted by address then length.
    pub fn v6_prefixes(&self) -> impl ExactSizeIterator<Item = (Ipv6Net, Country)> + '_ {
        self.v6.iter().copied()
    }

    /// Every prefix, IPv4 first; the same entries [`GeoDb::from_entries`] or
    /// [`super::write_country_mmdb`] take.
    pub fn entries(&self) -> impl Iterator<Item = (IpNet, Country)> + '_ {
        let v4 = self.v4_prefixes().map(|(n, c)| (IpNet::V4(n), c));
        v4.chain(self.v6_prefixes().map(|(n, c)| (IpNet::V6(n), c)))
    }

    /// The number of prefixes, both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The distinct countries, sorted: what the kernel's country index is numbered from.
    pub fn countries(&self) -> BTreeSet<Country> {
        let v4 = self.v4.iter().map(|(_, c)| *c);
        v4.chain(self.v6.iter().map(|(_, c)| *c)).collect()
    }

    pub fn info(&self) -> &GeoDbInfo {
        &self.info
    }
}

/// Two entries for the same prefix with different countries. Each side is (origin, country),
/// the origin being whatever the builder's caller numbered entries by (a line, an index);
/// `first` is the one with the lower origin.
pub(super) struct Conflict {
    pub network: IpNet,
    pub first: (usize, Country),
    pub second: (usize, Country),
}

/// Collects normalized prefixes and turns them into a [`GeoDb`]: sorted, exact duplicates
/// with the same country merged, with a different country refused (an LPM trie holds one
/// value per prefix, and which one was meant is not ours to guess).
#[derive(Default)]
pub(super) struct Builder {
    v4: Vec<(Ipv4Net, Country, usize)>,
    v6: Vec<(Ipv6Net, Country, usize)>,
}

impl Builder {
    /// `net` must be normalized ([`normalize`]); `origin` numbers it for error messages.
    pub fn push(&mut self, net: IpNet, country: Country, origin: usize) {
        match net {
            IpNet::V4(n) => self.v4.push((n, country, origin)),
            IpNet::V6(n) => self.v6.push((n, country, origin)),
        }
    }

    pub fn v4_len(&self) -> usize {
        self.v4.len()
    }

    pub fn finish(
        self,
        info: GeoDbInfo,
        conflict: impl Fn(Conflict) -> GeoError,
    ) -> Result<GeoDb, GeoError> {
        let v4 = dedup(self.v4, &conflict)?;
        let v6 = dedup(self.v6, &conflict)?;
        Ok(GeoDb {
            v4_lens: lengths(v4.iter().map(|(n, _)| n.prefix_len())),
            v6_lens: lengths(v6.iter().map(|(n, _)| n.prefix_len())),
            v4,
            v6,
            info,
        })
    }
}

/// Sorts by prefix and merges exact duplicates (see [`Builder`]).
pub(super) fn dedup<N: Ord + Copy + Into<IpNet>>(
    mut entries: Vec<(N, Country, usize)>,
    conflict: impl Fn(Conflict) -> GeoError,
) -> Result<Vec<(N, Country)>, GeoError> {
    entries.sort_unstable_by_key(|e| (e.0, e.2));
    let mut out: Vec<(N, Country)> = Vec::with_capacity(entries.len());
    let mut last_origin = 0;
    for (net, country, origin) in entries {
        if let Some(&(prev, prev_country)) = out.last() {
            if prev == net {
                if prev_country != country {
                    return Err(conflict(Conflict {
                        network: net.into(),
                        first: (last_origin, prev_country),
                        second: (origin, country),
                    }));
                }
                continue;
            }
        }
        out.push((net, country));
        last_origin = origin;
    }
    Ok(out)
}

fn lengths(lens: impl Iterator<Item = u8>) -> Vec<u8> {
    let set: BTreeSet<u8> = lens.collect();
    set.into_iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn entry(net: &str, country: &str) -> Result<(IpNet, Country), Box<dyn std::error::Error>> {
        Ok((net.parse()?, country.parse()?))
    }

    #[test]
    fn longest_prefix_wins() -> Result<(), Box<dyn std::error::Error>> {
        let db = GeoDb::from_entries([
            entry("10.0.0.0/8", "BR")?,
            entry("10.1.0.0/16", "US")?,
            entry("10.1.2.0/24", "DE")?,
            entry("10.1.2.3/32", "JP")?,
            entry("0.0.0.0/0", "AU")?,
            entry("2001:db8::/32", "FR")?,
            entry("2001:db8:1::/48", "PT")?,
        ])?;
        for (addr, want) in [
            ("10.200.0.1", Some("BR")),
            ("10.1.200.1", Some("US")),
            ("10.1.2.4", Some("DE")),
            ("10.1.2.3", Some("JP")),
            ("192.0.2.1", Some("AU")),
            ("::ffff:10.1.2.3", Some("JP")),
            ("2001:db8:2::1", Some("FR")),
            ("2001:db8:1:ffff::1", Some("PT")),
            ("2001:db9::1", None),
        ] {
            let addr: IpAddr = addr.parse()?;
            let want = want.map(str::parse::<Country>).transpose()?;
            assert_eq!(db.lookup(addr), want, "lookup({addr})");
        }
        assert_eq!(db.len(), 7);
        assert_eq!((db.v4_prefixes().len(), db.v6_prefixes().len()), (5, 2));
        let countries: Vec<_> = db.countries().iter().map(|c| c.to_string()).collect();
        assert_eq!(countries, ["AU", "BR", "DE", "FR", "JP", "PT", "US"]);
        Ok(())
    }

    #[test]
    fn entries_are_normalized_and_deduplicated() -> Result<(), Box<dyn std::error::Error>> {
        let db = GeoDb::from_entries([
            entry("::ffff:198.51.100.0/120", "BR")?,
            entry("198.51.100.0/24", "BR")?,
            entry("2001:db8::/32", "FR")?,
        ])?;
        let v4: Vec<_> = db.v4_prefixes().collect();
        assert_eq!(v4, [("198.51.100.0/24".parse()?, "BR".parse()?)]);
        assert_eq!(
            db.lookup(Ipv4Addr::new(198, 51, 100, 9).into()),
            Some("BR".parse()?)
        );
        assert_eq!(db.lookup(Ipv6Addr::LOCALHOST.into()), None);
        Ok(())
    }

    #[test]
    fn bad_entries_are_refused() -> Result<(), Box<dyn std::error::Error>> {
        let conflict = GeoDb::from_entries([
            entry("192.0.2.0/24", "BR")?,
            entry("198.51.100.0/24", "US")?,
            entry("::ffff:192.0.2.0/120", "AR")?,
        ]);
        match conflict {
            Err(GeoError::Entry {
                index: 2, reason, ..
            }) => {
                assert!(reason.contains("BR in entry 0"), "{reason}")
            }
            other => panic!("expected a conflict at entry 2, got {other:?}"),
        }
        for (net, want) in [
            ("192.0.2.1/24", "host bits"),
            ("::1/128", "::/96"),
            ("::c000:200/120", "::/96"),
        ] {
            match GeoDb::from_entries([entry(net, "BR")?]) {
                Err(GeoError::Entry {
                    index: 0, reason, ..
                }) => {
                    assert!(reason.contains(want), "{net}: {reason}")
                }
                other => panic!("expected {net} to be refused, got {other:?}"),
            }
        }
        Ok(())
    }
}
