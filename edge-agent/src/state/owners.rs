//! Who keeps a contested key when rows claim the same one: a service's `vip:port`, a backend's
//! address and port within its service, a DNS label (ids that differ only in case or
//! punctuation name one label, see [`dns_label`]).
//!
//! Rows come from several writers, operators (rows typed in, or written by the CLI) and
//! backends registering themselves through any POP's API, and every POP reads the same rows. A
//! verdict that depended on how ids sort let a registration with id `..` or `E4B1` push an
//! operator's backend out, and a new service row take a live service's VIP; one that depended
//! on arrival order would let two POPs serve different services on one anycast VIP. So, in
//! order:
//!
//! 1. **Standing**, a property of the row itself: an operator's row (no lease) beats a
//!    registration, and a registration whose lease is live beats one whose lease ran out. A
//!    registration never displaces a row it does not own, whatever its id.
//! 2. **Age**, when every contender's is known: the oldest row by `created_at` (set when the
//!    row is first written, kept by every later write), equal ages settled as below. A
//!    newcomer never takes a key from a row that was there first, and every POP reading the
//!    same rows reaches the same verdict: this is why age comes before incumbency.
//! 3. **Incumbency**, when some age is not known (`created_at` 0: rows from before the column,
//!    or typed in without it): the row that held the key in the previous snapshot this source
//!    handed out keeps it. That is one POP's memory (a POP that just started has none), so it
//!    only decides where the rows cannot: a row typed in on a live service's VIP without a
//!    `created_at` loses on every POP that was serving the live one.
//! 4. Else rows of unknown age count as older than rows of known age (they predate the
//!    column), and the lowest id among them wins, so that the verdict never depends on the
//!    order rows arrived in.
//!
//! The verdict is a function of the whole set of contenders, not of pairwise comparisons,
//! which with rules 2-4 mixed would not be transitive. A row that moves onto a key held by a
//! younger row takes it (rule 2); the registration API refuses such a move for registrations
//! up front ([`registration_conflict`]), and for operators it is their own write.

use std::{collections::HashMap, hash::Hash, net::IpAddr};

use crate::model::{dns_label, Backend, BackendAddr, Snapshot};

/// What a row is, as far as contests go; lower wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// A row without a lease: typed in by an operator, or written by the CLI.
    Operator,
    /// A registration whose lease is live.
    Registered,
    /// A registration whose lease has run out (it is deleted soon).
    Expired,
}

impl Standing {
    pub fn of(backend: &Backend, now_unix: i64) -> Self {
        match &backend.lease {
            None => Standing::Operator,
            Some(lease) if lease.expired(now_unix) => Standing::Expired,
            Some(_) => Standing::Registered,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Standing::Operator => "an operator's row",
            Standing::Registered => "a live registration",
            Standing::Expired => "a registration whose lease ran out",
        }
    }
}

/// One row's claim on a key.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    pub id: &'a str,
    pub standing: Standing,
    /// Unix seconds; 0 or less: not known.
    pub created_at: i64,
}

impl Claim<'_> {
    fn age_known(&self) -> bool {
        self.created_at > 0
    }
}

/// Why the winner of a contest won, for the loser's log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Standing {
        winner: Standing,
        loser: Standing,
    },
    Older {
        winner: i64,
        loser: i64,
    },
    Incumbent,
    /// The winner's age is not known: it predates recorded creation times.
    Predates,
    LowerId,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Standing { winner, loser } => {
                write!(f, "{} wins over {}", winner.describe(), loser.describe())
            }
            Why::Older { winner, loser } => {
                write!(f, "it is older: created_at {winner}, this row's {loser}")
            }
            Why::Incumbent => f.write_str("it held it before this row came"),
            Why::Predates => f.write_str("it predates recorded creation times"),
            Why::LowerId => f.write_str("neither age nor incumbency tells, and its id is lower"),
        }
    }
}

/// The index of the claim that keeps the key (the rules of the module doc); `None` for no
/// claims. `incumbent` is the id that held the key in the previous snapshot, if any.
pub fn winner(claims: &[Claim<'_>], incumbent: Option<&str>) -> Option<usize> {
    let best = claims.iter().map(|c| c.standing).min()?;
    let field = || {
        claims
            .iter()
            .enumerate()
            .filter(move |(_, c)| c.standing == best)
    };
    let is_incumbent = |c: &Claim<'_>| incumbent.is_some_and(|i| i == c.id);
    if field().all(|(_, c)| c.age_known()) {
        return field()
            .min_by(|(_, a), (_, b)| {
                a.created_at
                    .cmp(&b.created_at)
                    .then_with(|| is_incumbent(b).cmp(&is_incumbent(a)))
                    .then_with(|| a.id.cmp(b.id))
            })
            .map(|(i, _)| i);
    }
    if let Some((i, _)) = field().find(|(_, c)| is_incumbent(c)) {
        return Some(i);
    }
    field()
        .filter(|(_, c)| !c.age_known())
        .min_by(|(_, a), (_, b)| a.id.cmp(b.id))
        .map(|(i, _)| i)
}

/// Why `winner` beat `loser` (both from one contest that [`winner`] settled).
pub fn why(winner: &Claim<'_>, loser: &Claim<'_>, incumbent: Option<&str>) -> Why {
    if winner.standing != loser.standing {
        Why::Standing {
            winner: winner.standing,
            loser: loser.standing,
        }
    } else if winner.age_known() && loser.age_known() && winner.created_at != loser.created_at {
        Why::Older {
            winner: winner.created_at,
            loser: loser.created_at,
        }
    } else if incumbent == Some(winner.id) {
        Why::Incumbent
    } else if !winner.age_known() && loser.age_known() {
        Why::Predates
    } else {
        Why::LowerId
    }
}

/// One lost contest: the loser's and the winner's indexes into the claims, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    pub loser: usize,
    pub winner: usize,
    pub why: Why,
}

/// Settles every key claimed more than once. `claims[i].1` is row i's key (`None`: it claims
/// none); `incumbents` maps a key to the id that held it in the previous snapshot.
pub fn contests<K: Hash + Eq>(
    claims: &[(Claim<'_>, Option<K>)],
    incumbents: &HashMap<K, String>,
) -> Vec<Lost> {
    let mut by_key: HashMap<&K, Vec<usize>> = HashMap::new();
    for (i, (_, key)) in claims.iter().enumerate() {
        if let Some(key) = key {
            by_key.entry(key).or_default().push(i);
        }
    }
    let mut lost = Vec::new();
    for (key, rows) in by_key {
        if rows.len() < 2 {
            continue;
        }
        let field: Vec<Claim<'_>> = rows.iter().map(|&i| claims[i].0).collect();
        let incumbent = incumbents.get(key).map(String::as_str);
        let Some(w) = winner(&field, incumbent) else {
            continue;
        };
        for (j, &row) in rows.iter().enumerate() {
            if j != w {
                lost.push(Lost {
                    loser: row,
                    winner: rows[w],
                    why: why(&field[w], &field[j], incumbent),
                });
            }
        }
    }
    // The order of a HashMap's keys is not the state's: sorted, so that logs are stable.
    lost.sort_by_key(|l| l.loser);
    lost
}

/// Which row held each contested key in the last snapshot a source handed out: what rule 3
/// (incumbency) reads.
#[derive(Clone, Debug, Default)]
pub struct Incumbents {
    pub vips: HashMap<(IpAddr, u16), String>,
    pub service_labels: HashMap<String, String>,
    pub endpoints: HashMap<(String, BackendAddr, u16), String>,
    pub backend_labels: HashMap<String, String>,
}

impl Incumbents {
    /// The keys every accepted row of `snapshot` holds.
    pub fn of(snapshot: &Snapshot) -> Self {
        let mut me = Incumbents::default();
        for s in &snapshot.services {
            me.vips.insert((s.vip, s.port), s.id.clone());
            if let Some(label) = dns_label(&s.id) {
                me.service_labels.insert(label, s.id.clone());
            }
        }
        for b in &snapshot.backends {
            me.endpoints
                .insert((b.service.clone(), b.addr.clone(), b.port), b.id.clone());
            if let Some(label) = dns_label(&b.id) {
                me.backend_labels.insert(label, b.id.clone());
            }
        }
        me
    }
}

/// Whether a new registration of `b` would lose to a row already in `snapshot`, and to which:
/// the rules above for a newcomer, which is the youngest row and held nothing, so it loses to
/// any row of its standing or better (an operator's row, a live registration) on its address
/// and port or its DNS label. Re-registering the same id is not a conflict with itself; an id
/// that is an operator's row is, since the registration would overwrite it.
///
/// The snapshot may be a moment old; the validator settles what this misses the same way, so
/// this only makes the common refusal immediate and explicit.
pub fn registration_conflict(
    b: &Backend,
    snapshot: &Snapshot,
    now_unix: i64,
) -> Result<(), String> {
    let label = dns_label(&b.id);
    for other in &snapshot.backends {
        let standing = Standing::of(other, now_unix);
        if other.id == b.id {
            if standing == Standing::Operator {
                return Err(format!(
                    "id {} is a backend row an operator wrote; a registration cannot replace it",
                    b.id
                ));
            }
            continue;
        }
        if standing == Standing::Expired {
            continue;
        }
        if other.service == b.service && other.addr == b.addr && other.port == b.port {
            return Err(format!(
                "address and port are backend {}'s ({}) in service {}: it keeps them",
                other.id,
                standing.describe(),
                b.service
            ));
        }
        if label.is_some() && dns_label(&other.id) == label {
            return Err(format!(
                "id {} and backend {} ({}) make one DNS name, {}.instances.internal: ids \
                 that differ only in case or punctuation are one name, and it is taken",
                b.id,
                other.id,
                standing.describe(),
                label.as_deref().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(id: &str, standing: Standing, created_at: i64) -> Claim<'_> {
        Claim {
            id,
            standing,
            created_at,
        }
    }

    fn won<'a>(claims: &[Claim<'a>], incumbent: Option<&str>) -> &'a str {
        winner(claims, incumbent).map_or("<none>", |i| claims[i].id)
    }

    #[test]
    fn standing_beats_age_incumbency_and_ids() {
        use Standing::*;
        // The registration is older, holds the key and sorts first: the operator still wins.
        let c = [claim("..", Registered, 1), claim("zz", Operator, 50)];
        assert_eq!(
            won(&c, Some("..")),
            "zz",
            "operator's row over a registration"
        );
        let c = [claim("a", Expired, 1), claim("b", Registered, 50)];
        assert_eq!(won(&c, Some("a")), "b", "a live lease over a run-out one");
    }

    #[test]
    fn age_then_incumbency_then_unknown_ages_then_id() {
        use Standing::Operator as O;
        // Known ages: the oldest, whatever the ids and the incumbent.
        let c = [claim("aaa", O, 200), claim("zzz", O, 100)];
        assert_eq!(won(&c, Some("aaa")), "zzz", "older row keeps the key");
        // Equal ages: the incumbent, then the lower id.
        let c = [claim("aaa", O, 100), claim("zzz", O, 100)];
        assert_eq!(won(&c, Some("zzz")), "zzz");
        assert_eq!(won(&c, None), "aaa");
        // An unknown age: the incumbent keeps it, known age or not.
        let c = [claim("aaa", O, 0), claim("zzz", O, 100)];
        assert_eq!(
            won(&c, Some("zzz")),
            "zzz",
            "a row typed in without created_at"
        );
        let c = [claim("aaa", O, 100), claim("zzz", O, 0)];
        assert_eq!(
            won(&c, Some("zzz")),
            "zzz",
            "a live row from before the column"
        );
        // No incumbent: unknown ages predate known ones, then the lower id.
        let c = [claim("aaa", O, 100), claim("mmm", O, 0), claim("bbb", O, 0)];
        assert_eq!(won(&c, None), "bbb");
        assert_eq!(winner(&[], None), None);
    }

    #[test]
    fn the_verdict_does_not_depend_on_order() {
        use Standing::*;
        // The three rows that make pairwise rules go round in a circle: m beats z by id, z
        // beats a by age, a beats m by id.
        let rows = [
            claim("m", Operator, 0),
            claim("z", Operator, 5),
            claim("a", Operator, 10),
            claim("q", Registered, 1),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for rotation in 0..rows.len() {
            for reversed in [false, true] {
                let mut c = rows.to_vec();
                c.rotate_left(rotation);
                if reversed {
                    c.reverse();
                }
                seen.insert(won(&c, None).to_owned());
            }
        }
        assert_eq!(seen.len(), 1, "one winner in every order, got {seen:?}");
    }

    #[test]
    fn contests_name_the_winner_and_why() {
        use Standing::*;
        let claims = vec![
            (claim("E4B1", Registered, 10), Some("k")),
            (claim("op", Operator, 20), Some("k")),
            (claim("..", Registered, 5), Some("k")),
            (claim("alone", Registered, 5), Some("j")),
            (claim("none", Registered, 5), None),
        ];
        let lost = contests(&claims, &HashMap::new());
        assert_eq!(
            lost,
            vec![
                Lost {
                    loser: 0,
                    winner: 1,
                    why: Why::Standing {
                        winner: Operator,
                        loser: Registered
                    }
                },
                Lost {
                    loser: 2,
                    winner: 1,
                    why: Why::Standing {
                        winner: Operator,
                        loser: Registered
                    }
                },
            ]
        );
        let text = lost[0].why.to_string();
        assert!(
            text.contains("operator's row wins over a live registration"),
            "{text}"
        );
    }
}
