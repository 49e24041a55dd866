//! The table's properties: even shares, minimal disruption, weights, order independence, sizes.

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
