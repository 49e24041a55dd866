//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4).
//!
//! The data plane picks a backend with one array lookup, `table[flow_hash % M]`, so all the
//! work of spreading load lives here, in the table. Maglev gives two properties a plain
//! `hash % N` does not: every backend owns an almost equal number of slots (so load is even), and
//! when a backend comes or goes only about `1/N` of the slots change owner (so established flows
//! on other backends mostly keep their backend, which matters for connections that the data
//! plane has no per-flow state for).

use std::{cmp::Reverse, collections::BinaryHeap};

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The smallest table [`default_size`] picks. Prime, and large enough that the rounding in each
/// backend's share (at most one slot) stays under 0.1% of the table.
pub const MIN_DEFAULT_SIZE: u32 = 1021;

/// The largest prime a `u32` holds; [`next_prime`] saturates here.
pub const LARGEST_U32_PRIME: u32 = 4_294_967_291;

// Marks a slot nobody has claimed yet while the table fills. No candidate can have this index:
// `build` refuses more than `u32::MAX` candidates, so indices stop at `u32::MAX - 1`.
const EMPTY: u32 = u32::MAX;

// The seeds are part of the table's format: every agent that must agree on which backend owns a
// slot (several edge nodes behind one ECMP route, or one agent across restarts) has to use the
// same ones, and changing them reshuffles every flow. Two different seeds make `offset` and
// `skip` independent, as the paper's h1/h2 are.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_2d31;
const SKIP_SEED: u64 = 0x6d61_676c_6576_2d32;

/// One backend as the table builder sees it: a stable key (its id; hashing the key, not its
/// position, is what keeps tables stable when other backends come and go) and a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub key: &'a str,
    /// Relative, not absolute: only ratios between weights matter. Zero means "no new flows".
    pub weight: u32,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaglevError {
    #[error(
        "Maglev table size {size} is not prime (the next prime is {next}); a prime size is what \
         makes every backend's preference list visit every slot",
        next = next_prime(*.size)
    )]
    NotPrime { size: u32 },
    #[error("a Maglev table of {size} slots cannot give each of {backends} backends a slot")]
    TooSmall { size: u32, backends: usize },
    #[error("no backend with a nonzero weight to build a Maglev table from")]
    NoBackends,
    #[error(
        "backend key {key:?} appears more than once; keys must be unique, since a backend's \
         slots follow from its key"
    )]
    DuplicateKey { key: String },
    #[error("{count} backends do not fit in a Maglev table's 32-bit slot entries")]
    TooManyCandidates { count: usize },
}

/// Builds a table of `size` slots (prime, and at least the number of weighted backends); each
/// slot holds an index into `candidates`.
///
/// Zero-weight candidates get no slots and do not change which slots the others get. Shares are
/// proportional to weight, so a backend whose weight is tiny next to the others' (below about
/// `max_weight / size`) can end up with no slot at all. `size` should be much larger than the
/// number of backends (the paper uses more than 100 slots per backend) for shares to be even.
///
/// The result depends on the set of (key, weight) pairs, not on the order of `candidates`: the
/// fill runs in key order, and only the returned indices refer back to positions.
pub fn build(candidates: &[Candidate<'_>], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime { size });
    }
    if u32::try_from(candidates.len()).is_err() {
        return Err(MaglevError::TooManyCandidates {
            count: candidates.len(),
        });
    }

    // The fill order breaks ties between backends (who gets a contested slot first), so it must
    // not depend on how the caller happened to list them; key order is canonical.
    let mut ranked = ranked(candidates);
    if let Some(pair) = ranked
        .windows(2)
        .find(|pair| pair[0].1.key == pair[1].1.key)
    {
        return Err(MaglevError::DuplicateKey {
            key: pair[0].1.key.to_owned(),
        });
    }
    ranked.retain(|&(_, c)| c.weight > 0);
    if ranked.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    if ranked.len() > size as usize {
        return Err(MaglevError::TooSmall {
            size,
            backends: ranked.len(),
        });
    }

    Ok(fill(&ranked, size))
}

/// Candidates with their indices, in key order.
fn ranked<'c, 'k>(candidates: &'c [Candidate<'k>]) -> Vec<(u32, &'c Candidate<'k>)> {
    let mut ranked: Vec<_> = (0u32..).zip(candidates).collect();
    ranked.sort_unstable_by_key(|&(_, c)| c.key);
    ranked
}

/// One backend's walk through its permutation `p[j] = (offset + j * skip) % M`, kept as the
/// current position rather than a precomputed `M`-long list: the paper's `permutation[i][j]`
/// table would be `N * M` entries (26 MB for 100 backends and 65537 slots), and the walk only
/// ever moves forward.
struct Walk {
    index: u32,
    weight: u64,
    position: u64,
    skip: u64,
    claimed: u64,
}

/// The population loop of the paper's Pseudocode 1, weighted the way Katran's `MaglevHashV2`
/// does it (facebookincubator/katran, `katran/lib/MaglevHashV2.cpp`): each round, every backend
/// adds its weight to a running credit and claims one slot whenever the credit reaches the
/// largest weight, paying the largest weight back. A backend of the largest weight so claims
/// every round, one of half that weight every other round, and after the fill each backend holds
/// `size * weight / sum(weights)` slots, within a slot or two. (Giving a backend `weight` turns per
/// round instead would claim in bursts, and the last, cut-short round would favour whoever comes
/// first in it by up to a whole weight's worth of slots.)
///
/// Rather than sweep every backend every round (`N` steps a round, so `N * M` steps when one
/// weight dwarfs the rest), a heap yields the next claimer directly. Backend `i`'s `k`-th claim
/// falls in round `ceil(k * max_weight / weight_i)`, the first round whose credit covers it, and
/// within a round backends go in rank order, so popping the smallest `(round, rank)` replays
/// Katran's order exactly in `O(M log N)` plus the probes past taken slots (`O(M log M)`
/// expected, per the paper).
fn fill(ranked: &[(u32, &Candidate<'_>)], size: u32) -> Vec<u32> {
    let m = u64::from(size);
    let max_weight = ranked
        .iter()
        .map(|&(_, c)| u64::from(c.weight))
        .max()
        .unwrap_or(1);
    let mut walks = walks(ranked, m);
    // `max_weight.div_ceil(weight)` is the round of each backend's first claim. Later rounds
    // stay below 2^64: claims never exceed `size` < 2^32, and weights are below 2^32.
    let mut next: BinaryHeap<Reverse<(u64, usize)>> = walks
        .iter()
        .enumerate()
        .map(|(rank, w)| Reverse((max_weight.div_ceil(w.weight), rank)))
        .collect();

    let mut table = vec![EMPTY; size as usize];
    for _ in 0..size {
        let Some(Reverse((_, rank))) = next.pop() else {
            break; // Unreachable: every pop pushes its backend back.
        };
        let walk = &mut walks[rank];
        walk.claim(&mut table, m);
        let round = ((walk.claimed + 1) * max_weight).div_ceil(walk.weight);
        next.push(Reverse((round, rank)));
    }
    table
}

fn walks(ranked: &[(u32, &Candidate<'_>)], m: u64) -> Vec<Walk> {
    ranked
        .iter()
        .map(|&(index, c)| {
            let key = c.key.as_bytes();
            Walk {
                index,
                weight: u64::from(c.weight),
                position: xxh3_64_with_seed(key, OFFSET_SEED) % m,
                // Never 0 and never a multiple of the prime `m`, so the walk is a full cycle
                // through all `m` slots and always finds an empty one while any is left.
                skip: xxh3_64_with_seed(key, SKIP_SEED) % (m - 1) + 1,
                claimed: 0,
            }
        })
        .collect()
}

impl Walk {
    /// Takes this backend's most preferred slot that is still empty; `table` must have one.
    fn claim(&mut self, table: &mut [u32], m: u64) {
        while table[self.position as usize] != EMPTY {
            self.advance(m);
        }
        table[self.position as usize] = self.index;
        self.advance(m);
        self.claimed += 1;
    }

    fn advance(&mut self, m: u64) {
        // Both terms are below `m`, so one subtraction replaces the division of `% m`.
        self.position += self.skip;
        if self.position >= m {
            self.position -= m;
        }
    }
}

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

/// Each candidate's share of `table` (count of slots / len), by index: what the load split
/// should be if client hashes are uniform.
///
/// Slots holding an index of `candidates` or more count for nobody, so the shares of a table
/// built for a different candidate list visibly sum to less than 1. An empty table gives zeros.
pub fn shares(table: &[u32], candidates: usize) -> Vec<f64> {
    let mut counts = vec![0u64; candidates];
    for &index in table {
        if let Some(count) = counts.get_mut(index as usize) {
            *count += 1;
        }
    }
    if table.is_empty() {
        return vec![0.0; candidates];
    }
    let len = table.len() as f64;
    counts.into_iter().map(|count| count as f64 / len).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), MaglevError>;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn equal(keys: &[String]) -> Vec<Candidate<'_>> {
        keys.iter()
            .map(|key| Candidate { key, weight: 1 })
            .collect()
    }

    /// The table with each index replaced by its candidate's key, so tables built from
    /// differently ordered (or different) candidate lists can be compared slot by slot.
    fn owners<'a>(table: &[u32], candidates: &[Candidate<'a>]) -> Vec<&'a str> {
        table
            .iter()
            .map(|&index| candidates[index as usize].key)
            .collect()
    }

    fn counts(table: &[u32], candidates: usize) -> Vec<usize> {
        let mut counts = vec![0; candidates];
        for &index in table {
            counts[index as usize] += 1;
        }
        counts
    }

    fn fraction(changed: usize, of: usize) -> f64 {
        changed as f64 / of as f64
    }

    #[test]
    fn equal_weights_fill_every_slot_evenly() -> TestResult {
        for (n, size) in [(3, 4099), (10, 65537), (100, 65537)] {
            let keys = keys(n);
            let candidates = equal(&keys);
            let table = build(&candidates, size)?;
            assert_eq!(table.len(), size as usize);
            assert!(
                table.iter().all(|&index| (index as usize) < n),
                "empty or out-of-range slot"
            );
            for (i, share) in shares(&table, n).into_iter().enumerate() {
                assert!(
                    (share - 1.0 / n as f64).abs() < 0.01,
                    "n={n} M={size}: backend {i} has share {share}"
                );
            }
            // Equal weights claim in lockstep rounds, so counts can differ by the one slot of
            // the final, partial round.
            let counts = counts(&table, n);
            let (min, max) = (counts.iter().min(), counts.iter().max());
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                "n={n} M={size}: counts {counts:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn shares_follow_weights() -> TestResult {
        let candidates = [
            Candidate {
                key: "a",
                weight: 1,
            },
            Candidate {
                key: "b",
                weight: 2,
            },
            Candidate {
                key: "c",
                weight: 3,
            },
        ];
        let table = build(&candidates, 4099)?;
        for (share, want) in shares(&table, 3).into_iter().zip([1.0, 2.0, 3.0]) {
            let want = want / 6.0;
            assert!((share - want).abs() < 0.001, "share {share}, want {want}");
        }

        // Only ratios matter: scaling every weight gives the same table.
        let scaled = candidates.map(|c| Candidate {
            weight: c.weight * 1_000_000,
            ..c
        });
        assert_eq!(build(&scaled, 4099)?, table);
        Ok(())
    }

    #[test]
    fn many_uneven_weights_get_proportional_shares() -> TestResult {
        let keys = keys(100);
        let candidates: Vec<Candidate<'_>> = (1u32..)
            .zip(&keys)
            .map(|(weight, key)| Candidate { key, weight })
            .collect();
        let total: u32 = candidates.iter().map(|c| c.weight).sum();
        let table = build(&candidates, 65537)?;
        for (c, share) in candidates.iter().zip(shares(&table, candidates.len())) {
            let want = f64::from(c.weight) / f64::from(total);
            // Within two slots of the exact proportion.
            assert!(
                (share - want).abs() < 2.0 / 65537.0,
                "{}: share {share}, want {want}",
                c.key
            );
        }
        Ok(())
    }

    /// Katran's round loop as written (`MaglevHashV2::generateHashRing`): every backend, every
    /// round, adds its weight to its credit and claims while the credit covers `max_weight`.
    fn katran_fill(candidates: &[Candidate<'_>], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let ranked = ranked(candidates);
        let mut walks = walks(&ranked, m);
        let max_weight = walks.iter().map(|w| w.weight).max().unwrap_or(1);
        let mut credit = vec![0; walks.len()];
        let mut table = vec![EMPTY; size as usize];
        let mut filled = 0;
        loop {
            for (walk, credit) in walks.iter_mut().zip(&mut credit) {
                *credit += walk.weight;
                if *credit >= max_weight {
                    *credit -= max_weight;
                    walk.claim(&mut table, m);
                    filled += 1;
                    if filled == size {
                        return table;
                    }
                }
            }
        }
    }

    #[test]
    fn heap_order_is_katrans_round_order() -> TestResult {
        let keys = keys(6);
        for weights in [
            [1, 1, 1, 1, 1, 1],
            [1, 2, 3, 4, 5, 6],
            [7, 3, 1, 1, 10, 2],
            [100, 99, 1, 50, 33, 3],
            [u32::MAX, 1, 12_345, u32::MAX - 7, 2, 1 << 31],
        ] {
            let candidates: Vec<Candidate<'_>> = keys
                .iter()
                .zip(weights)
                .map(|(key, weight)| Candidate { key, weight })
                .collect();
            for size in [7, 1021, 4099] {
                assert_eq!(
                    build(&candidates, size)?,
                    katran_fill(&candidates, size),
                    "weights {weights:?}, size {size}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn zero_weight_backends_get_nothing_and_change_nothing() -> TestResult {
        let keys = keys(5);
        let mut candidates = equal(&keys);
        let without = build(&candidates[1..], 1021)?;
        candidates[0].weight = 0;
        let with = build(&candidates, 1021)?;
        assert_eq!(shares(&with, 5)[0], 0.0);
        assert_eq!(
            owners(&with, &candidates),
            owners(&without, &candidates[1..])
        );
        Ok(())
    }

    #[test]
    fn extreme_weights_do_not_overflow() -> TestResult {
        let heavy = Candidate {
            key: "heavy",
            weight: u32::MAX,
        };
        // Weight 1 against u32::MAX is a share of 2^-32: rounding gives it no slot at all.
        let light = Candidate {
            key: "light",
            weight: 1,
        };
        assert_eq!(build(&[heavy, light], 1021)?, vec![0; 1021]);
        let near = Candidate {
            key: "near",
            weight: u32::MAX - 1,
        };
        let table = build(&[heavy, near], 1021)?;
        for share in shares(&table, 2) {
            assert!((share - 0.5).abs() < 0.01, "share {share}");
        }
        Ok(())
    }

    #[test]
    fn tiny_tables_still_fill() -> TestResult {
        assert_eq!(
            build(
                &[Candidate {
                    key: "only",
                    weight: 7
                }],
                2
            )?,
            vec![0, 0]
        );
        // As many slots as backends: one each.
        let keys = keys(3);
        let mut table = build(&equal(&keys), 3)?;
        table.sort_unstable();
        assert_eq!(table, vec![0, 1, 2]);
        Ok(())
    }

    #[test]
    fn removing_a_backend_mostly_moves_only_its_slots() -> TestResult {
        let keys = keys(10);
        let before_candidates = equal(&keys);
        let before = owners(&build(&before_candidates, 65537)?, &before_candidates);
        let after_candidates: Vec<_> = before_candidates
            .iter()
            .copied()
            .filter(|c| c.key != "backend-3")
            .collect();
        let after = owners(&build(&after_candidates, 65537)?, &after_candidates);

        let lost = before.iter().filter(|&&key| key == "backend-3").count();
        let collateral = before
            .iter()
            .zip(&after)
            .filter(|&(b, a)| *b != "backend-3" && b != a)
            .count();
        // The removed backend's tenth of the table has to move; the paper (figure 11) shows
        // Maglev also moving a few percent of other slots, the price of its even balance.
        assert!((fraction(lost, 65537) - 0.1).abs() < 0.01, "lost {lost}");
        assert!(
            fraction(collateral, 65537) < 0.02,
            "{collateral} other slots moved"
        );
        Ok(())
    }

    #[test]
    fn adding_a_backend_moves_about_its_share() -> TestResult {
        let keys = keys(11);
        let before_candidates = equal(&keys[..10]);
        let after_candidates = equal(&keys);
        let before = owners(&build(&before_candidates, 65537)?, &before_candidates);
        let after = owners(&build(&after_candidates, 65537)?, &after_candidates);

        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let gained = after.iter().filter(|&&key| key == "backend-10").count();
        // The newcomer takes its 1/11 and little else changes hands.
        assert!(
            (fraction(gained, 65537) - 1.0 / 11.0).abs() < 0.01,
            "gained {gained}"
        );
        assert!(
            fraction(moved - gained, 65537) < 0.02,
            "moved {moved}, of which {gained} to the new backend"
        );
        Ok(())
    }

    #[test]
    fn same_set_gives_same_owners_in_any_order() -> TestResult {
        let keys = keys(7);
        let candidates: Vec<Candidate<'_>> = (1u32..)
            .zip(&keys)
            .map(|(weight, key)| Candidate { key, weight })
            .collect();
        let table = build(&candidates, 4099)?;
        assert_eq!(build(&candidates, 4099)?, table);

        let reference = owners(&table, &candidates);
        let mut reversed = candidates.clone();
        reversed.reverse();
        let mut rotated = candidates.clone();
        rotated.rotate_left(3);
        for reordered in [reversed, rotated] {
            assert_eq!(owners(&build(&reordered, 4099)?, &reordered), reference);
        }
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() {
        let keys = keys(3);
        let candidates = equal(&keys);
        assert_eq!(
            build(&candidates, 1000),
            Err(MaglevError::NotPrime { size: 1000 })
        );
        assert_eq!(
            build(&candidates, 0),
            Err(MaglevError::NotPrime { size: 0 })
        );
        assert_eq!(
            build(&candidates, 1),
            Err(MaglevError::NotPrime { size: 1 })
        );
        assert_eq!(
            build(&candidates, 2),
            Err(MaglevError::TooSmall {
                size: 2,
                backends: 3
            })
        );
        assert_eq!(build(&[], 1021), Err(MaglevError::NoBackends));
        let idle: Vec<_> = candidates
            .iter()
            .map(|&c| Candidate { weight: 0, ..c })
            .collect();
        assert_eq!(build(&idle, 1021), Err(MaglevError::NoBackends));
        // Zero-weight backends do not count toward the size needed.
        let mut mostly_idle = idle.clone();
        mostly_idle[1].weight = 1;
        assert!(build(&mostly_idle, 2).is_ok());
        let twice = [candidates[0], candidates[1], candidates[0]];
        assert_eq!(
            build(&twice, 1021),
            Err(MaglevError::DuplicateKey {
                key: "backend-0".to_owned()
            })
        );
        let message = MaglevError::NotPrime { size: 1000 }.to_string();
        assert!(message.contains("next prime is 1009"), "{message}");
    }

    #[test]
    fn primes() {
        // Against a sieve over every size a small table could have.
        let limit = 20_000usize;
        let mut sieve = vec![true; limit];
        sieve[0] = false;
        sieve[1] = false;
        for i in 2..limit {
            if sieve[i] {
                for multiple in (i * i..limit).step_by(i) {
                    sieve[multiple] = false;
                }
            }
        }
        for (n, &prime) in (0u32..).zip(&sieve) {
            assert_eq!(is_prime(n), prime, "is_prime({n})");
        }
        for (n, want) in [
            (65537, true),
            (65535, false),
            (1_000_003, true),
            (LARGEST_U32_PRIME, true),
            (u32::MAX, false),
            // 65521^2: a square of the largest 16-bit prime, the last divisor trial division
            // reaches near u32::MAX.
            (65521 * 65521, false),
        ] {
            assert_eq!(is_prime(n), want, "is_prime({n})");
        }

        for (n, want) in [
            (0, 2),
            (1, 2),
            (2, 2),
            (4, 5),
            (1021, 1021),
            (1022, 1031),
            (65536, 65537),
            (LARGEST_U32_PRIME, LARGEST_U32_PRIME),
            (u32::MAX, LARGEST_U32_PRIME),
        ] {
            assert_eq!(next_prime(n), want, "next_prime({n})");
        }
    }

    #[test]
    fn default_sizes() {
        assert_eq!(default_size(3, 100), 1021);
        assert_eq!(default_size(0, 100), 1021);
        assert_eq!(default_size(10, 0), 1021);
        let fifty = default_size(50, 100);
        assert!(fifty >= 5000 && is_prime(fifty), "{fifty}");
        assert_eq!(fifty, 5003);
        assert_eq!(default_size(1000, 100), 100_003);
        assert_eq!(default_size(usize::MAX, u32::MAX), LARGEST_U32_PRIME);
    }

    #[test]
    fn shares_of_odd_tables() {
        assert_eq!(shares(&[], 2), vec![0.0, 0.0]);
        // An index past the candidate count counts for nobody.
        assert_eq!(shares(&[0, 1, 5, 0], 2), vec![0.5, 0.25]);
    }
}
