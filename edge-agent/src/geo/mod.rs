//! Geo classification: client address -> country -> region, v1's geo rule.
//!
//! v1 looked every new connection's client up in a MaxMind country database in userspace. v2
//! classifies clients in the kernel, on the SYN path, so the database has to become something
//! the data plane can search: the agent compiles a [`GeoDb`] into two `BPF_MAP_TYPE_LPM_TRIE`
//! maps (IPv4 and IPv6), each mapping a prefix to a small country index, and the reconciler
//! turns each country into its geo class through the [`RegionTable`]. That compilation lives
//! with the map code, not here; this module only gets the data right:
//!
//! - [`GeoDb`] is a flat list of prefixes with their country, read from a MaxMind-format
//!   `.mmdb` country database (GeoLite2-Country, DB-IP Country Lite) or from a CSV of
//!   `prefix,country` lines. A flat list is what an LPM trie is filled from, and it keeps the
//!   IPv4/IPv6 split explicit: MaxMind databases keep IPv4 inside the IPv6 tree (at `::/96`,
//!   aliased from `::ffff:0:0/96`, 6to4 and Teredo), while the kernel has one trie per
//!   family. The aliases are not copied into the IPv6 trie: clients in those ranges are
//!   classified by the IPv4 address they embed (`edge_common::geo::embedded_ipv4`). Loading is all-or-nothing: any damage to the file is a [`GeoError`] and the
//!   caller keeps the database it had, since a half-read database would silently send part of
//!   the world to the wrong region.
//! - [`RegionTable`] is v1's country -> region table, overridable from config.
//! - `writer` writes a MaxMind DB, so tests can build databases with chosen prefixes and the
//!   benchmarks one of realistic size, without shipping a licensed database. It lives here
//!   because it shares the loader's normalization and de-duplication, but only the tests and the
//!   `test-support` feature build it (reached as `edge_agent::testing::mmdb_writer`): the agent
//!   never writes a database.
//!
//! [`GeoDb::lookup`] is a plain longest-prefix match in userspace: the reference the kernel's
//! answers are checked against, not a fast path.

mod classes;
mod csv;
mod db;
mod in_force;
mod load;
mod mmdb;
mod regions;
#[cfg(any(test, feature = "test-support"))]
pub(crate) mod writer;

#[cfg(test)]
mod tests;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

pub use classes::GeoClasses;
pub use db::{GeoDb, GeoDbInfo, GeoFormat};
pub use in_force::{GeoInForce, GeoRefusal, GeoSource};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
pub use regions::{RegionTable, DEFAULT_REGION};
use thiserror::Error;

/// The marker that starts a MaxMind DB's metadata section (the format spec, "Database
/// Metadata"); it sits in the last 128 KiB of every such file.
pub const MMDB_METADATA_MARKER: &[u8] = b"\xab\xcd\xefMaxMind.com";

/// Why a geo database was refused (or could not be written). Every variant names where the
/// problem is, so one log line is enough to fix it.
#[derive(Debug, Error)]
pub enum GeoError {
    #[error("geo database {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "geo database {}: neither a MaxMind DB (no metadata marker) nor a UTF-8 CSV file",
        .path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("geo database {}: not a valid MaxMind DB: {source}", .path.display())]
    Mmdb {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    #[error("geo database {}, line {line}: {reason}", .path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// The file is readable but unusable as a whole (e.g. no network has a country).
    #[error("geo database {}: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    /// An entry handed over in memory (to [`GeoDb::from_entries`] or the writer).
    #[error("geo entry {index} ({network}): {reason}")]
    Entry {
        index: usize,
        network: IpNet,
        reason: String,
    },
    #[error("writing MaxMind DB {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write a MaxMind DB: {reason}")]
    Unwritable { reason: String },
}

// Where MaxMind DBs keep IPv4 in their IPv6 tree: IPv4-compatible addresses (RFC 4291 section
// 2.5.5.1, deprecated for anything else) are the canonical place, the one the `maxminddb`
// reader walks for IPv4 lookups; IPv4-mapped addresses (section 2.5.5.2) are an alias.
const IPV4_COMPATIBLE: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 96);
const IPV4_MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);

// The IPv4 network an IPv6 network inside `within` (one of the two /96 above) stands for.
fn embedded_ipv4(net: Ipv6Net, within: Ipv6Net) -> Option<Ipv4Net> {
    if net.prefix_len() < 96 || !within.contains(&net) {
        return None;
    }
    let low = u128::from(net.network()) as u32;
    Ipv4Net::new(Ipv4Addr::from(low), net.prefix_len() - 96).ok()
}

/// Puts a prefix given by a user or a caller into the form [`GeoDb`] and the writer store:
/// host bits must be clear (a set host bit is more often a typo than intent), IPv4-mapped IPv6
/// prefixes become the IPv4 prefixes they denote, and prefixes inside `::/96` are refused
/// because MaxMind DBs reserve that range for IPv4.
fn normalize(net: IpNet) -> Result<IpNet, String> {
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set (the network is {})",
            net.trunc()
        ));
    }
    match net {
        IpNet::V4(_) => Ok(net),
        IpNet::V6(v6) => {
            if let Some(v4) = embedded_ipv4(v6, IPV4_MAPPED) {
                Ok(IpNet::V4(v4))
            } else if v6.prefix_len() >= 96 && IPV4_COMPATIBLE.contains(&v6) {
                Err(format!(
                    "{net} lies in ::/96, which MaxMind databases reserve for IPv4; write it as \
                     an IPv4 prefix"
                ))
            } else {
                Ok(net)
            }
        }
    }
}
