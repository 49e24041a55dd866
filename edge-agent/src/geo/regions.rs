//! Country -> region: the second half of v1's geo rule (client IP -> country -> region), which
//! decides geo tier 1 ("same region as the client").
//!
//! The built-in table is v1's, completed to cover every country and territory. v2 has the same
//! four regions as v1 (`sa`, `us`, `eu`, `ap`), so each place goes to the one whose POPs and
//! backends it reaches fastest, which mostly means by continent:
//!
//! - North and Central America and the Caribbean -> `us`; Greenland and Saint Pierre and
//!   Miquelon too (North America, and their cables land in Canada).
//! - South America (with the Guianas and the Falklands) -> `sa`.
//! - Europe, including Russia, Turkey, Cyprus, the Caucasus and Central Asia -> `eu`.
//! - East, South-East and South Asia, Oceania and the Pacific islands (including the US
//!   territories Guam, the Northern Marianas, American Samoa and the Minor Outlying Islands)
//!   -> `ap`.
//! - **Africa and the Middle East -> `eu`.** With only four regions there is no nearby one for
//!   them; their international capacity lands mostly in Europe (Marseille, Lisbon, London,
//!   Frankfurt, by the Mediterranean, Red Sea and West African cables), and a European POP is
//!   usually a shorter round trip from there than Singapore, Tokyo, Miami or São Paulo.
//! - Antarctica and the uninhabited sub-Antarctic islands (AQ, BV, TF) are left out, so they
//!   fall to the default.
//!
//! Anything not in the table (including a client with no country at all) gets the default
//! region, `us` as in v1. Operators change single countries, or the default, from config.

use std::{collections::HashMap, fmt, str::FromStr};

use crate::model::{Country, Region};

/// v1's default for a client whose country is unknown or not in the table.
pub const DEFAULT_REGION: &str = "us";

/// The built-in table, by region. Each code appears exactly once (a test checks).
const BUILTIN: &[(&str, &[&str])] = &[
    (
        "sa",
        &[
            "BR", "AR", "CL", "CO", "PE", "VE", "EC", "BO", "PY", "UY", "GY", "SR", "GF", "FK",
            "GS",
        ],
    ),
    (
        "us",
        &[
            // North America.
            "US", "CA", "MX", "GL", "PM", "BM", //
            // Central America.
            "GT", "BZ", "SV", "HN", "NI", "CR", "PA", //
            // The Caribbean.
            "CU", "JM", "HT", "DO", "PR", "BS", "BB", "TT", "AG", "DM", "GD", "KN", "LC", "VC",
            "AI", "AW", "BQ", "CW", "SX", "MF", "BL", "KY", "TC", "VG", "VI", "MS", "GP", "MQ",
        ],
    ),
    (
        "eu",
        &[
            // Europe.
            "PT", "ES", "FR", "DE", "GB", "IE", "IT", "NL", "BE", "LU", "CH", "AT", "DK", "NO",
            "SE", "FI", "IS", "PL", "CZ", "SK", "HU", "RO", "BG", "GR", "HR", "SI", "EE", "LV",
            "LT", "UA", "RS", "AD", "AL", "BA", "BY", "CY", "LI", "MC", "MD", "ME", "MK", "MT",
            "RU", "SM", "TR", "VA", "XK", "AX", "FO", "GG", "GI", "IM", "JE", "SJ",
            // The Caucasus and Central Asia: their transit runs through Europe and Russia.
            "GE", "AM", "AZ", "KZ", "UZ", "TM", "KG", "TJ", //
            // The Middle East (see the module doc).
            "IL", "PS", "JO", "LB", "SY", "IQ", "IR", "SA", "AE", "QA", "BH", "KW", "OM", "YE",
            // Africa (see the module doc).
            "DZ", "AO", "BJ", "BW", "BF", "BI", "CV", "CM", "CF", "TD", "KM", "CD", "CG", "CI",
            "DJ", "EG", "GQ", "ER", "SZ", "ET", "GA", "GM", "GH", "GN", "GW", "KE", "LS", "LR",
            "LY", "MG", "MW", "ML", "MR", "MU", "MA", "MZ", "NA", "NE", "NG", "RW", "ST", "SN",
            "SC", "SL", "SO", "ZA", "SS", "SD", "TZ", "TG", "TN", "UG", "ZM", "ZW", "RE", "YT",
            "SH", "EH",
            // "EU" is ISO 3166's exceptionally reserved code for the European Union, which
            // some databases give to ranges registered Europe-wide.
            "EU",
        ],
    ),
    (
        "ap",
        &[
            // East and South-East Asia.
            "JP", "KR", "KP", "CN", "TW", "HK", "MO", "MN", "SG", "MY", "ID", "TH", "VN", "PH",
            "KH", "LA", "MM", "BN", "TL", //
            // South Asia.
            "IN", "PK", "BD", "LK", "NP", "BT", "MV", "AF", "IO", //
            // Oceania and the Pacific.
            "AU", "NZ", "PG", "FJ", "SB", "VU", "NC", "PF", "WS", "TO", "KI", "TV", "NR", "FM",
            "MH", "PW", "CK", "NU", "TK", "WF", "PN", "NF", "CX", "CC", "HM", "GU", "MP", "AS",
            "UM",
            // "AP" (Asia/Pacific) is the pseudo-country legacy GeoIP databases used for ranges
            // registered region-wide.
            "AP",
        ],
    ),
];

/// Country -> region, with a default for countries it does not list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionTable {
    map: HashMap<Country, Region>,
    default: Region,
}

impl RegionTable {
    /// v1's table (see the module doc), with `us` as the default.
    pub fn builtin() -> Self {
        let map = BUILTIN
            .iter()
            .flat_map(|(region, countries)| {
                let region: Region = constant(region);
                countries
                    .iter()
                    .map(move |code| (constant::<Country>(code), region.clone()))
            })
            .collect();
        RegionTable {
            map,
            default: constant(DEFAULT_REGION),
        }
    }

    /// This table with `overrides` in force: each pair sets (or moves) one country. Later pairs
    /// win over earlier ones, so config can be applied in order.
    #[must_use]
    pub fn with_overrides(
        mut self,
        overrides: impl IntoIterator<Item = (Country, Region)>,
    ) -> Self {
        self.map.extend(overrides);
        self
    }

    /// This table with another region for countries it does not list.
    #[must_use]
    pub fn with_default_region(mut self, region: Region) -> Self {
        self.default = region;
        self
    }

    /// The client's region: the table's entry for `country`, else the default.
    pub fn region_of(&self, country: Country) -> Region {
        self.get(country).unwrap_or(&self.default).clone()
    }

    /// The region of a client whose country is not in the table (or unknown).
    pub fn default_region(&self) -> Region {
        self.default.clone()
    }

    /// The table's own entry for `country`, without falling back to the default.
    pub fn get(&self, country: Country) -> Option<&Region> {
        self.map.get(&country)
    }

    /// Every entry, sorted by country (for display and for deterministic map building).
    pub fn entries(&self) -> Vec<(Country, Region)> {
        let mut entries: Vec<_> = self.map.iter().map(|(c, r)| (*c, r.clone())).collect();
        entries.sort();
        entries
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Default for RegionTable {
    fn default() -> Self {
        Self::builtin()
    }
}

// Parses one of this file's own constants. They are all valid (the tests build the table), so
// the error arm is dead; it panics rather than silently dropping a country.
fn constant<T: FromStr<Err = impl fmt::Display>>(s: &str) -> T {
    match s.parse() {
        Ok(v) => v,
        Err(e) => unreachable!("built-in region table constant {s:?}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn c(s: &str) -> Result<Country, String> {
        s.parse()
    }

    fn r(s: &str) -> Result<Region, String> {
        s.parse()
    }

    #[test]
    fn spot_checks() -> Result<(), String> {
        let t = RegionTable::builtin();
        for (country, region) in [
            ("BR", "sa"),
            ("AR", "sa"),
            ("GF", "sa"),
            ("US", "us"),
            ("CA", "us"),
            ("MX", "us"),
            ("PA", "us"),
            ("JM", "us"),
            ("DE", "eu"),
            ("PT", "eu"),
            ("GB", "eu"),
            ("UA", "eu"),
            ("RU", "eu"),
            ("ZA", "eu"),
            ("EG", "eu"),
            ("AE", "eu"),
            ("JP", "ap"),
            ("KR", "ap"),
            ("SG", "ap"),
            ("AU", "ap"),
            ("IN", "ap"),
            ("GU", "ap"),
        ] {
            assert_eq!(
                t.region_of(c(country)?),
                r(region)?,
                "{country} should be in {region}"
            );
        }
        Ok(())
    }

    #[test]
    fn unknown_goes_to_us() -> Result<(), String> {
        let t = RegionTable::builtin();
        assert_eq!(t.default_region(), r("us")?);
        // Antarctica is deliberately absent; "ZZ" is ISO's user-assigned "unknown".
        for code in ["AQ", "ZZ", "XX"] {
            assert_eq!(t.get(c(code)?), None, "{code} should not be in the table");
            assert_eq!(t.region_of(c(code)?), r("us")?);
        }
        Ok(())
    }

    #[test]
    fn overrides_win() -> Result<(), String> {
        let t = RegionTable::builtin()
            .with_overrides([(c("MX")?, r("sa")?), (c("ZA")?, r("af")?)])
            .with_overrides([(c("ZA")?, r("sa")?), (c("AQ")?, r("ap")?)])
            .with_default_region(r("eu")?);
        assert_eq!(t.region_of(c("MX")?), r("sa")?);
        assert_eq!(t.region_of(c("ZA")?), r("sa")?, "the later override wins");
        assert_eq!(
            t.region_of(c("AQ")?),
            r("ap")?,
            "a new country can be added"
        );
        assert_eq!(t.region_of(c("US")?), r("us")?, "the rest is untouched");
        assert_eq!(
            t.region_of(c("ZZ")?),
            r("eu")?,
            "the default can be changed"
        );
        Ok(())
    }

    #[test]
    fn builtin_lists_each_country_once() {
        let mut seen = HashSet::new();
        let mut total = 0;
        for (region, countries) in BUILTIN {
            for code in *countries {
                assert!(
                    seen.insert(*code),
                    "{code} is listed twice (again in {region})"
                );
                total += 1;
            }
        }
        // ISO 3166-1 has 249 codes; with XK, EU and AP and without AQ, BV and TF, 249.
        assert_eq!(total, 249);
        assert_eq!(RegionTable::builtin().len(), total);
    }
}
