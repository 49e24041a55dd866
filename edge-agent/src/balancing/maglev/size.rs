//! How many slots a table has: the `[maglev]` section, and the primes sizes are picked from.

use serde::{Deserialize, Serialize};

/// The `[maglev]` section: how large the kernel's tables are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaglevConfig {
    /// Slots per table; must be prime. At least 100 per backend keeps the split within about
    /// 1% of the weights (Maglev paper, section 5.3).
    pub table_size: u32,
    /// Services the kernel tables are sized for (each has two tables, for atomic swaps).
    pub max_services: u32,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        MaglevConfig {
            table_size: 4099,
            max_services: 256,
        }
    }
}

/// The smallest table [`default_size`] picks. Prime, and large enough that the rounding in each
/// backend's share (at most one slot) stays under 0.1% of the table.
pub const MIN_DEFAULT_SIZE: u32 = 1021;

/// The largest prime a `u32` holds; [`next_prime`] saturates here.
pub const LARGEST_U32_PRIME: u32 = 4_294_967_291;

/// Smallest prime >= n; [`LARGEST_U32_PRIME`] for `n` above it, since no larger prime fits.
pub fn next_prime(n: u32) -> u32 {
    (n..=LARGEST_U32_PRIME)
        .find(|&candidate| is_prime(candidate))
        .unwrap_or(LARGEST_U32_PRIME)
}

/// Trial division: table sizes are small enough (checking 65537 takes under 100 divisions) that a
/// faster test would not pay for its subtlety.
pub fn is_prime(n: u32) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    // Every prime above 3 is 6k - 1 or 6k + 1. In u64 so `d * d` cannot overflow near u32::MAX.
    let n = u64::from(n);
    let mut d = 5u64;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// The table size used when the operator does not choose one: the smallest prime giving at
/// least `per_backend` slots per backend, and at least 1021 ([`MIN_DEFAULT_SIZE`]).
pub fn default_size(backends: usize, per_backend: u32) -> u32 {
    let wanted = u64::try_from(backends)
        .unwrap_or(u64::MAX)
        .saturating_mul(u64::from(per_backend));
    next_prime(
        u32::try_from(wanted)
            .unwrap_or(u32::MAX)
            .max(MIN_DEFAULT_SIZE),
    )
}
