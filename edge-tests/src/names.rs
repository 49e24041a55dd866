//! Names of lab objects.
//!
//! Every object a lab creates carries [`PREFIX`] so that anything left behind by
//! a crashed test can be found and removed, and a per-run id so that labs of
//! parallel threads and processes never share a name.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{LabError, Result};

/// Prefix of every namespace, interface, socket and pin directory a lab creates.
pub const PREFIX: &str = "epl";

/// Length of a [`RunId`] in characters.
pub const RUN_ID_LEN: usize = 6;

const BASE36: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// 36^6: the number of distinct run ids.
const RUN_ID_SPACE: u64 = 2_176_782_336;
/// Coprime with 36^6, so successive ids visit every value once; large, so
/// consecutive runs do not look alike in listings.
const RUN_ID_STRIDE: u64 = 1_500_450_271;
const _: () = assert!(!RUN_ID_STRIDE.is_multiple_of(2) && !RUN_ID_STRIDE.is_multiple_of(3));

/// Six lowercase base36 characters identifying one lab run.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunId([u8; RUN_ID_LEN]);

impl RunId {
    /// A fresh id: distinct from every other id this process generates (the
    /// counter steps through all 36^6 values before repeating) and, with
    /// overwhelming probability, from those of other processes (each process
    /// starts at a point derived from its pid and start time).
    pub fn generate() -> Self {
        static START: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let start = *START.get_or_init(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            splitmix64((u64::from(std::process::id()) << 32) ^ nanos) % RUN_ID_SPACE
        });
        let count = COUNTER.fetch_add(1, Ordering::Relaxed) % RUN_ID_SPACE;
        Self::from_number((start + count * RUN_ID_STRIDE % RUN_ID_SPACE) % RUN_ID_SPACE)
    }

    fn from_number(mut n: u64) -> Self {
        let mut digits = [b'0'; RUN_ID_LEN];
        for digit in digits.iter_mut().rev() {
            *digit = BASE36[(n % 36) as usize];
            n /= 36;
        }
        Self(digits)
    }

    /// Parses an id as printed by [`fmt::Display`].
    pub fn parse(text: &str) -> Result<Self> {
        let bytes: [u8; RUN_ID_LEN] =
            text.as_bytes().try_into().map_err(|_| LabError::Invalid {
                what: "run id",
                value: text.to_owned(),
                why: format!("must be {RUN_ID_LEN} characters"),
            })?;
        if !bytes.iter().all(|b| BASE36.contains(b)) {
            return Err(LabError::Invalid {
                what: "run id",
                value: text.to_owned(),
                why: "must be lowercase base36".to_owned(),
            });
        }
        Ok(Self(bytes))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII base36 digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({})", self.as_str())
    }
}

impl AsRef<str> for RunId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `epl-<run>-`: the start of the name of every namespace of `run`.
pub fn ns_prefix(run: &RunId) -> String {
    format!("{PREFIX}-{run}-")
}

/// `epl-<run>-<label>`: a namespace name unique to this run.
pub fn ns_name(run: &RunId, label: &str) -> String {
    format!("{}{label}", ns_prefix(run))
}

/// An interface name unique host-wide, for interfaces whose name escapes their
/// namespace: a userspace WireGuard's control socket is
/// `/var/run/wireguard/<ifname>.sock`, shared by all namespaces.
///
/// `epl<run>w<n>` is at most 3 + 6 + 1 + 5 = 15 characters, the kernel's
/// limit (IFNAMSIZ - 1), for every `u16`.
pub fn wg_ifname(run: &RunId, n: u16) -> String {
    format!("{PREFIX}{run}w{n}")
}

/// Directory under /sys/fs/bpf where an agent running in `ns_name` should pin
/// its objects, so that [`crate::find_leftovers`] can find them.
pub fn bpffs_pin_dir(ns_name: &str) -> std::path::PathBuf {
    std::path::Path::new(BPFFS_ROOT).join(format!("{BPFFS_PIN_PREFIX}{ns_name}"))
}

pub(crate) const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// Pin directories of lab agents start with this (`edgeproxy-` + `epl`).
pub(crate) const BPFFS_PIN_PREFIX: &str = "edgeproxy-";

/// Where agents write their status file and drain marker (`edge_agent::dataplane::pins::PinDir::
/// agent_status_file`): `<pin root with '/' as '_'>.json`, `.tmp` while it is written, `.drain`.
pub const AGENT_RUN_DIR: &str = "/run/edgeproxy";
/// Files of lab agents there start with this: [`bpffs_pin_dir`] spelt as the agent spells it,
/// then the namespace name.
pub(crate) const AGENT_FILE_PREFIX: &str = "sys_fs_bpf_edgeproxy-";

/// Whether `name` starts with the name of a namespace of lab run `run` (of any run if `None`):
/// `epl-<run>-`. Stricter than a bare prefix, so that a real agent's file whose name merely
/// starts with `epl` is never taken for a lab's.
pub(crate) fn starts_with_ns_of(name: &str, run: Option<&str>) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let (Some(id), Some(after)) = (rest.get(..RUN_ID_LEN), rest.get(RUN_ID_LEN..)) else {
        return false;
    };
    after.starts_with('-')
        && match run {
            Some(run) => id == run,
            None => RunId::parse(id).is_ok(),
        }
}

/// Whether `text` names an object of a lab run (`run`, or any run if `None`):
/// it contains `epl-<run>-` (namespaces) or `epl<run>w` (host-wide interfaces).
pub(crate) fn mentions_run(text: &str, run: Option<&str>) -> bool {
    text.match_indices(PREFIX).any(|(at, _)| {
        let rest = &text[at + PREFIX.len()..];
        let (rest, dashed) = match rest.strip_prefix('-') {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let Some(id) = rest.get(..RUN_ID_LEN) else {
            return false;
        };
        let after = &rest[RUN_ID_LEN..];
        let id_matches = match run {
            Some(run) => id == run,
            None => RunId::parse(id).is_ok(),
        };
        id_matches
            && if dashed {
                after.starts_with('-')
            } else {
                after.starts_with('w')
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn run_ids_are_base36_and_distinct_across_threads() {
        let ids: Vec<RunId> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..500).map(|_| RunId::generate()).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(ids.len(), 4000);
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert!(RunId::parse(id.as_str()).is_ok(), "{id}");
        }
    }

    #[test]
    fn wg_ifname_fits_ifnamsiz() {
        let run = RunId::from_number(RUN_ID_SPACE - 1);
        let name = wg_ifname(&run, u16::MAX);
        assert_eq!(name, "eplzzzzzzw65535");
        assert!(name.len() <= 15);
        assert!(name.starts_with(PREFIX));
    }

    #[test]
    fn names_are_recognised_by_run() {
        let run = RunId::from_number(42);
        let other = RunId::from_number(43);
        let ns = ns_name(&run, "geo-pop");
        assert!(mentions_run(&ns, Some(run.as_str())));
        assert!(mentions_run(&ns, None));
        assert!(!mentions_run(&ns, Some(other.as_str())));
        let wg = format!("/var/run/wireguard/{}.sock", wg_ifname(&run, 3));
        assert!(mentions_run(&wg, Some(run.as_str())));
        assert!(!mentions_run("replace-everything", None));
        assert!(!mentions_run("epl-ABCDEF-x", None));
        assert!(!mentions_run("epl-abc", None));
    }

    #[test]
    fn namespace_prefixes_are_recognised_at_the_start_only() {
        let run = RunId::from_number(42);
        let ns = ns_name(&run, "bgp-popb");
        assert!(starts_with_ns_of(&format!("{ns}.json"), Some(run.as_str())));
        assert!(starts_with_ns_of(&ns, None));
        assert!(!starts_with_ns_of(
            &ns,
            Some(RunId::from_number(43).as_str())
        ));
        assert!(!starts_with_ns_of(&format!("x{ns}"), None));
        assert!(!starts_with_ns_of("eplanet.json", None));
        assert!(!starts_with_ns_of("epl-abcdef", None));
        assert!(!starts_with_ns_of("epl-ABCDEF-x", None));
    }

    #[test]
    fn parse_rejects_bad_ids() {
        assert!(RunId::parse("abc").is_err());
        assert!(RunId::parse("ABCDEF").is_err());
        assert!(RunId::parse("abcdef").is_ok());
    }
}
