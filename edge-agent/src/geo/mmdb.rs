//! Reading a MaxMind DB (<https://maxmind.github.io/MaxMind-DB/>) country database into a
//! [`GeoDb`], by walking every network in its search tree.
//!
//! A MaxMind DB is one binary trie over 128-bit keys. IPv4 lives in it at `::/96`, and the
//! writers make `::ffff:0:0/96`, `2002::/16` (6to4) and `2001::/32` (Teredo) point at that
//! same subtree, so a naive walk meets every IPv4 network four times. The `maxminddb` reader's
//! walk skips a subtree when it is the `::/96` node reached by another path, which is exactly
//! the aliases; what remains is sorted out here into IPv4 and IPv6 prefixes.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use ipnet::{IpNet, Ipv4Net};
use maxminddb::{path, LookupResult, MaxMindDbError, Reader, WithinOptions};

use super::{
    db::{Builder, GeoDbInfo, GeoFormat},
    embedded_ipv4, GeoDb, GeoError, IPV4_COMPATIBLE, IPV4_MAPPED,
};
use crate::model::Country;

/// What a data record says about the country.
#[derive(Clone, Copy)]
enum Record {
    Country(Country),
    NoCountry,
    BadCode,
}

pub(super) fn parse(path: &Path, bytes: Vec<u8>) -> Result<GeoDb, GeoError> {
    let mmdb = |source| GeoError::Mmdb {
        path: path.to_owned(),
        source,
    };
    let reader = Reader::from_source(bytes).map_err(mmdb)?;
    let metadata = reader.metadata();
    let mut info = GeoDbInfo::new(GeoFormat::Mmdb {
        database_type: metadata.database_type.clone(),
        build_epoch: metadata.build_epoch,
    });

    // The reader recognises an alias by comparing the node it reaches with the node `::/96`
    // leads to. When `::/96` leads to a data record rather than to a subtree (a database
    // whose IPv4 space is one network, or an IPv6-only one with a record covering `::/96`),
    // that comparison also matches every other network sharing the record, and the default
    // walk silently drops them. Such a tree has no subtree to alias, so walk everything.
    let options = if ipv4_is_one_record(&reader).map_err(mmdb)? {
        WithinOptions::default().include_aliased_networks()
    } else {
        WithinOptions::default()
    };

    // Country databases have a few hundred distinct records behind hundreds of thousands of
    // networks: decode each once.
    let mut records: HashMap<usize, Record> = HashMap::new();
    let mut builder = Builder::default();
    let mut mapped = Builder::default();
    let mut bad_example = None;
    for (origin, item) in reader.networks(options).map_err(mmdb)?.enumerate() {
        let item = item.map_err(mmdb)?;
        let Some(offset) = item.offset() else {
            continue;
        };
        let record = match records.get(&offset) {
            Some(r) => *r,
            None => {
                let r = decode_country(&item, &mut bad_example).map_err(mmdb)?;
                records.insert(offset, r);
                r
            }
        };
        let country = match record {
            Record::Country(c) => c,
            Record::NoCountry => {
                info.without_country += 1;
                continue;
            }
            Record::BadCode => {
                info.bad_country += 1;
                continue;
            }
        };
        let network = item.network().map_err(mmdb)?;
        let net = IpNet::new(network.ip(), network.prefix()).map_err(|e| GeoError::Invalid {
            path: path.to_owned(),
            reason: format!("network {network}: {e}"),
        })?;
        match net {
            IpNet::V4(_) => builder.push(net.trunc(), country, origin),
            IpNet::V6(v6) => {
                let v6 = v6.trunc();
                if let Some(v4) = embedded_ipv4(v6, IPV4_COMPATIBLE) {
                    builder.push(v4.into(), country, origin);
                } else if let Some(v4) = embedded_ipv4(v6, IPV4_MAPPED) {
                    mapped.push(v4.into(), country, origin);
                } else {
                    builder.push(v6.into(), country, origin);
                    // A record above `::/96` answers every IPv4 lookup in MaxMind readers.
                    let all_v4 = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0));
                    if v6.contains(&IPV4_COMPATIBLE) {
                        builder.push(all_v4, country, origin);
                    }
                    if v6.contains(&IPV4_MAPPED) {
                        mapped.push(all_v4, country, origin);
                    }
                }
            }
        }
    }

    // Databases whose `::ffff:0:0/96` is not an alias: IPv4 readers use `::/96`, so that copy
    // is the database's answer, and the mapped one only stands in when `::/96` is empty.
    let mapped = mapped.finish(GeoDbInfo::new(GeoFormat::Entries), |c| conflict(path, c))?;
    if builder.v4_len() == 0 {
        for (net, country) in mapped.v4_prefixes() {
            builder.push(net.into(), country, 0);
        }
    } else {
        info.shadowed_ipv4 = mapped.len();
    }

    if info.bad_country > 0 {
        tracing::warn!(
            path = %path.display(),
            networks = info.bad_country,
            example = bad_example.as_deref().unwrap_or(""),
            "geo database: skipped networks whose country code is not ISO 3166-1 alpha-2"
        );
    }
    let db = builder.finish(info, |c| conflict(path, c))?;
    if db.is_empty() {
        return Err(GeoError::Invalid {
            path: path.to_owned(),
            reason: "no network has a country (`country.iso_code` or \
                     `registered_country.iso_code`): is it a country database?"
                .to_owned(),
        });
    }
    Ok(db)
}

// Whether IPv4 lookups land on one data record at or above `::/96`, i.e. there is no IPv4
// subtree (see the call). Such a lookup reports an IPv6 network; a subtree gives an IPv4 one.
fn ipv4_is_one_record<S: AsRef<[u8]>>(reader: &Reader<S>) -> Result<bool, MaxMindDbError> {
    if reader.metadata().ip_version != 6 {
        return Ok(false);
    }
    let found = reader.lookup(IpAddr::V4(Ipv4Addr::UNSPECIFIED))?;
    Ok(found.has_data() && found.network()?.ip().is_ipv6())
}

// GeoLite2 and DB-IP put the client's country in `country`; networks without one (anycast,
// some EU-wide ranges) may still have the registrant's, which is the best guess left.
fn decode_country<S: AsRef<[u8]>>(
    item: &LookupResult<'_, S>,
    bad_example: &mut Option<String>,
) -> Result<Record, MaxMindDbError> {
    for key in ["country", "registered_country"] {
        if let Some(code) = item.decode_path::<&str>(&path![key, "iso_code"])? {
            return Ok(match code.parse() {
                Ok(country) => Record::Country(country),
                Err(_) => {
                    bad_example.get_or_insert_with(|| code.to_owned());
                    Record::BadCode
                }
            });
        }
    }
    Ok(Record::NoCountry)
}

fn conflict(path: &Path, c: super::db::Conflict) -> GeoError {
    // The tree gives each network once, so this means the IPv4 projections collided.
    GeoError::Invalid {
        path: path.to_owned(),
        reason: format!(
            "{} is both {} and {} (IPv4 data in two places of the tree)",
            c.network, c.first.1, c.second.1
        ),
    }
}
