//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4).
//!
//! The data plane picks a backend with one array lookup, `table[flow_hash % M]`, so all the
//! work of spreading load lives here, in the table. Maglev gives two properties a plain
//! `hash % N` does not: every backend owns an almost equal number of slots (so load is even), and
//! when a backend comes or goes only about `1/N` of the slots change owner (so established flows
//! on other backends mostly keep their backend, which matters for connections that the data
//! plane has no per-flow state for).

mod size;
#[cfg(test)]
mod tests;

use std::{cmp::Reverse, collections::BinaryHeap};

use thiserror::Error;
use xxhash_rust::xxh3::xxh3_64_with_seed;

pub use self::size::{
    default_size, is_prime, next_prime, MaglevConfig, LARGEST_U32_PRIME, MIN_DEFAULT_SIZE,
};

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
