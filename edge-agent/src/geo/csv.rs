//! The CSV geo format: one `prefix,country` per line, for operators who keep their own
//! ranges (or export them from elsewhere) rather than use a MaxMind DB.
//!
//! ```text
//! # comment; blank lines are ignored, and so is an optional `prefix,country` header
//! 203.0.113.0/24,BR
//! 2001:db8::/32, DE   # spaces around fields and trailing comments are fine
//! 198.51.100.7,US     # a bare address is a host route (/32 or /128)
//! ```
//!
//! A geo database is all or nothing, so a bad line fails the whole file with its line number;
//! skipping it would quietly send that prefix's clients to the default region.

use std::{net::IpAddr, path::Path};

use ipnet::IpNet;

use super::{
    db::{Builder, GeoDbInfo, GeoFormat},
    normalize, GeoDb, GeoError,
};
use crate::model::Country;

pub(super) fn parse(path: &Path, bytes: &[u8]) -> Result<GeoDb, GeoError> {
    let mut builder = Builder::default();
    let mut seen_data = false;
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let err = |reason: String| GeoError::Csv {
            path: path.to_owned(),
            line,
            reason,
        };
        let text = std::str::from_utf8(raw).map_err(|e| err(format!("not UTF-8 text ({e})")))?;
        // Spreadsheet exports start with a byte-order mark and end lines with CRLF.
        let text = if line == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        let content = text.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let fields: Vec<&str> = content.split(',').map(str::trim).collect();
        let [prefix, country] = fields[..] else {
            return Err(err(format!(
                "expected `prefix,country`, found {} field(s) in {content:?}",
                fields.len()
            )));
        };
        if !seen_data
            && ["prefix", "network"]
                .iter()
                .any(|h| prefix.eq_ignore_ascii_case(h))
            && country.eq_ignore_ascii_case("country")
        {
            seen_data = true;
            continue;
        }
        seen_data = true;
        let net = parse_prefix(prefix).map_err(&err)?;
        let net = normalize(net).map_err(&err)?;
        let country: Country = country.parse().map_err(&err)?;
        builder.push(net, country, line);
    }
    let db = builder.finish(GeoDbInfo::new(GeoFormat::Csv), |c| GeoError::Csv {
        path: path.to_owned(),
        line: c.second.0,
        reason: format!(
            "{} is {} here but {} on line {}",
            c.network, c.second.1, c.first.1, c.first.0
        ),
    })?;
    if db.is_empty() {
        return Err(GeoError::Invalid {
            path: path.to_owned(),
            reason: "no `prefix,country` line".to_owned(),
        });
    }
    Ok(db)
}

fn parse_prefix(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        s.parse()
            .map_err(|_| format!("{s:?} is not an IP prefix (address/length)"))
    } else {
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not an IP prefix or address"))
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn csv(text: &str) -> Result<GeoDb, GeoError> {
        parse(Path::new("test.csv"), text.as_bytes())
    }

    fn country_of(db: &GeoDb, addr: &str) -> Result<Option<String>, Box<dyn std::error::Error>> {
        Ok(db.lookup(addr.parse::<IpAddr>()?).map(|c| c.to_string()))
    }

    #[test]
    fn parses_prefixes_comments_and_blank_lines() -> Result<(), Box<dyn std::error::Error>> {
        let db = csv("\u{feff}prefix,country\r\n\
             # a comment\r\n\
             \r\n\
             203.0.113.0/24,BR\r\n\
             \t2001:db8::/32 , de   # Germany\n\
             198.51.100.7,US\n\
             ::ffff:192.0.2.0/120,AR\n\
             2001:db8:1::/48,PT\n\
             203.0.113.0/24,BR\n")?;
        assert_eq!(db.len(), 5, "the repeated line merges");
        assert_eq!(db.v4_prefixes().len(), 3);
        for (addr, want) in [
            ("203.0.113.77", Some("BR")),
            ("2001:db8:ffff::1", Some("DE")),
            ("2001:db8:1::1", Some("PT")),
            ("198.51.100.7", Some("US")),
            ("198.51.100.8", None),
            ("192.0.2.200", Some("AR")),
        ] {
            assert_eq!(country_of(&db, addr)?.as_deref(), want, "{addr}");
        }
        assert_eq!(db.info().format, GeoFormat::Csv);
        Ok(())
    }

    #[test]
    fn errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("10.0.0.0/8,BR\nbogus,BR\n", 2, "not an IP prefix"),
            ("10.0.0.0/33,BR\n", 1, "not an IP prefix"),
            ("# c\n\n10.0.0.0/8,BRA\n", 3, "alpha-2"),
            ("10.0.0.0/8,B1\n", 1, "alpha-2"),
            ("10.0.0.0/8\n", 1, "found 1 field"),
            ("10.0.0.0/8,BR,extra\n", 1, "found 3 field"),
            ("10.0.0.0/8,\n", 1, "alpha-2"),
            ("10.0.0.1/8,BR\n", 1, "host bits"),
            ("::1,US\n", 1, "::/96"),
            (
                "10.0.0.0/8,BR\n10.1.0.0/16,US\n\n10.0.0.0/8,AR\n",
                4,
                "10.0.0.0/8 is AR here but BR on line 1",
            ),
            ("10.0.0.0/8,BR\n10.1.0.0/16,\u{fffd}\n", 2, "alpha-2"),
            ("prefix,country\nprefix,country\n", 2, "not an IP prefix"),
        ];
        for (text, line, reason) in cases {
            match csv(text) {
                Err(GeoError::Csv {
                    line: l, reason: r, ..
                }) => {
                    assert_eq!(l, *line, "wrong line for {text:?}: {r}");
                    assert!(r.contains(reason), "{text:?}: {r:?} should say {reason:?}");
                }
                other => panic!("{text:?} should fail at line {line}, got {other:?}"),
            }
        }
    }

    #[test]
    fn not_utf8_names_the_line() {
        match parse(Path::new("t.csv"), b"10.0.0.0/8,BR\n10.1.0.0/16,\xff\xfe\n") {
            Err(GeoError::Csv {
                line: 2, reason, ..
            }) => assert!(reason.contains("UTF-8")),
            other => panic!("expected a UTF-8 error on line 2, got {other:?}"),
        }
    }

    #[test]
    fn a_file_without_prefixes_is_refused() {
        for text in ["", "# nothing\n\n", "prefix,country\n"] {
            match csv(text) {
                Err(GeoError::Invalid { reason, .. }) => assert!(reason.contains("no `prefix")),
                other => panic!("{text:?} should be refused, got {other:?}"),
            }
        }
    }
}
