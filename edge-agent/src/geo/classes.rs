//! Country classes as the kernel's geo tries number them: class 0 is "unknown", and each
//! country the database has gets a class of its own, under which the reconciler files the
//! country's Maglev tables (`SERVICE_RINGS[service * GEO_CLASSES + class]`).
//!
//! A class keeps its country for as long as the country is in the database: the tries and the
//! table pointers are written by separate map updates, and a class that changed country
//! between the two would steer clients by another country's table. A new database therefore
//! keeps the classes of the countries it shares with the old one and gives new countries
//! classes the old one did not use ([`GeoClasses::successor`]); during the switch both sets of
//! classes have tables ([`GeoClasses::union`]). A restarted agent adopts the classes the pinned
//! tries hold ([`GeoClasses::adopted`]), so that its first plan is the one already in the
//! kernel.

use std::collections::{BTreeMap, BTreeSet};

use edge_common::geo::MAX_COUNTRY_CLASS;

use crate::model::Country;

/// Country -> class, both ways.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GeoClasses {
    by_class: BTreeMap<u16, Country>,
    by_country: BTreeMap<Country, u16>,
}

impl GeoClasses {
    /// Fresh classes for `countries`, in sorted order from 1; at most `MAX_COUNTRY_CLASS` fit
    /// the kernel's tables, and countries past it stay unknown (class 0).
    pub fn new(countries: impl IntoIterator<Item = Country>) -> Self {
        GeoClasses::default().successor(&countries.into_iter().collect())
    }

    /// The classes the kernel's tries hold, as (class, country) pairs read from them. Pairs
    /// that contradict each other (two countries for one class, or the reverse) cannot be
    /// ours: the first seen wins.
    pub fn adopted(pairs: impl IntoIterator<Item = (u16, Country)>) -> Self {
        let mut classes = GeoClasses::default();
        for (class, country) in pairs {
            if class == 0
                || class > MAX_COUNTRY_CLASS
                || classes.by_class.contains_key(&class)
                || classes.by_country.contains_key(&country)
            {
                continue;
            }
            classes.insert(class, country);
        }
        classes
    }

    /// The classes for a database of `countries` that replaces this one: every country kept
    /// keeps its class; new ones get classes this one does not use, lowest first, and only when
    /// none is left one a departed country used (`reused` counts those: for them the switch is
    /// not atomic).
    pub fn successor(&self, countries: &BTreeSet<Country>) -> Self {
        self.successor_counting(countries).0
    }

    /// [`GeoClasses::successor`], with the number of classes that had to change country.
    pub fn successor_counting(&self, countries: &BTreeSet<Country>) -> (Self, usize) {
        let mut next = GeoClasses::default();
        for country in countries {
            if let Some(&class) = self.by_country.get(country) {
                next.insert(class, *country);
            }
        }
        let mut fresh = (1..=MAX_COUNTRY_CLASS).filter(|c| !self.by_class.contains_key(c));
        let mut reused = 0;
        for country in countries {
            if next.by_country.contains_key(country) {
                continue;
            }
            let class = match fresh.next() {
                Some(class) => class,
                None => match (1..=MAX_COUNTRY_CLASS).find(|c| !next.by_class.contains_key(c)) {
                    Some(class) => {
                        reused += 1;
                        class
                    }
                    // Every class taken: this country stays unknown.
                    None => continue,
                },
            };
            next.insert(class, *country);
        }
        (next, reused)
    }

    /// Both this set and `other`: what a switch from one to the other needs tables for. Where
    /// they disagree about a class, `other` wins.
    pub fn union(&self, other: &GeoClasses) -> Self {
        let mut both = self.clone();
        for (&class, &country) in &other.by_class {
            if let Some(old) = both.by_class.get(&class).copied() {
                both.by_country.remove(&old);
            }
            if let Some(old) = both.by_country.get(&country).copied() {
                both.by_class.remove(&old);
            }
            both.insert(class, country);
        }
        both
    }

    fn insert(&mut self, class: u16, country: Country) {
        self.by_class.insert(class, country);
        self.by_country.insert(country, class);
    }

    pub fn class_of(&self, country: Country) -> Option<u16> {
        self.by_country.get(&country).copied()
    }

    pub fn country_of(&self, class: u16) -> Option<Country> {
        self.by_class.get(&class).copied()
    }

    /// Countries with a class.
    pub fn len(&self) -> usize {
        self.by_class.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_class.is_empty()
    }

    /// Every class with its country (`None` for class 0), by class.
    pub fn iter(&self) -> impl Iterator<Item = (u16, Option<Country>)> + '_ {
        std::iter::once((0, None)).chain(self.by_class.iter().map(|(&c, &k)| (c, Some(k))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    fn country(code: &str) -> Result<Country> {
        Ok(code.parse()?)
    }

    fn set(codes: &[&str]) -> Result<BTreeSet<Country>> {
        codes.iter().map(|c| country(c)).collect()
    }

    #[test]
    fn fresh_classes_follow_the_sorted_countries() -> Result {
        let classes = GeoClasses::new(set(&["US", "BR", "DE"])?);
        assert_eq!(classes.class_of(country("BR")?), Some(1));
        assert_eq!(classes.class_of(country("DE")?), Some(2));
        assert_eq!(classes.class_of(country("US")?), Some(3));
        assert_eq!(classes.class_of(country("FR")?), None);
        Ok(())
    }

    #[test]
    fn a_successor_keeps_every_shared_countrys_class_and_reuses_none() -> Result {
        let old = GeoClasses::new(set(&["BR", "DE", "US"])?);
        // DE goes, AR and GB come: AR sorts before BR, but BR keeps class 1.
        let (new, reused) = old.successor_counting(&set(&["AR", "BR", "GB", "US"])?);
        assert_eq!(reused, 0);
        assert_eq!(new.class_of(country("BR")?), Some(1));
        assert_eq!(new.class_of(country("US")?), Some(3));
        assert_eq!(new.class_of(country("DE")?), None);
        for c in ["AR", "GB"] {
            let class = new.class_of(country(c)?).ok_or("no class")?;
            assert!(
                old.country_of(class).is_none(),
                "{c} took class {class}, which the old database used"
            );
        }
        // Tables for both during the switch: DE's class still means DE.
        let both = old.union(&new);
        assert_eq!(both.class_of(country("DE")?), Some(2));
        assert_eq!(both.len(), 5);
        Ok(())
    }

    #[test]
    fn a_full_class_space_reuses_departed_classes_and_says_so() -> Result {
        let all: Vec<Country> = (b'A'..=b'Z')
            .flat_map(|a| (b'A'..=b'Z').map(move |b| [a, b]))
            .map(|c| country(&String::from_utf8_lossy(&c)))
            .collect::<Result<_>>()?;
        let max = usize::from(MAX_COUNTRY_CLASS);
        let old = GeoClasses::new(all[..max].iter().copied());
        assert_eq!(old.len(), max);
        let mut next: BTreeSet<Country> = all[1..max].iter().copied().collect();
        next.insert(all[300]);
        let (new, reused) = old.successor_counting(&next);
        assert_eq!(reused, 1);
        assert_eq!(new.class_of(all[300]), old.class_of(all[0]));
        Ok(())
    }

    #[test]
    fn adopted_pairs_that_contradict_are_left_out() -> Result {
        let classes = GeoClasses::adopted([
            (1, country("BR")?),
            (1, country("DE")?),
            (2, country("BR")?),
            (0, country("FR")?),
            (3, country("US")?),
        ]);
        assert_eq!(classes.len(), 2);
        assert_eq!(classes.class_of(country("BR")?), Some(1));
        assert_eq!(classes.class_of(country("US")?), Some(3));
        Ok(())
    }
}
