//! Reading interface attributes from `ip -o link show`.

use std::fmt;
use std::str::FromStr;

use crate::error::{LabError, Result};

/// An Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn octets(self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = LabError;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || LabError::Invalid {
            what: "MAC address",
            value: text.to_owned(),
            why: "expected six colon-separated hex octets".to_owned(),
        };
        let mut octets = [0u8; 6];
        let mut parts = text.split(':');
        for octet in &mut octets {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *octet = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(Self(octets))
    }
}

/// What the lab needs from one line of `ip -o link show dev X`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkInfo {
    pub(crate) ifindex: u32,
    pub(crate) mac: Option<Mac>,
}

/// Parses e.g. `2: eth0@if3: <BROADCAST,...> mtu 1500 ... \    link/ether aa:bb:cc:dd:ee:ff brd ...`.
pub(crate) fn parse_link_line(cmd: &str, line: &str) -> Result<LinkInfo> {
    let parse_error = |why: &str| LabError::Parse {
        cmd: cmd.to_owned(),
        why: format!("{why} in `{}`", line.trim_end()),
    };
    let ifindex = line
        .split_once(':')
        .and_then(|(index, _)| index.trim().parse().ok())
        .ok_or_else(|| parse_error("no ifindex"))?;
    let mut words = line.split_whitespace();
    let mac = match words.find(|w| *w == "link/ether") {
        Some(_) => Some(
            words
                .next()
                .ok_or_else(|| parse_error("no address after link/ether"))?
                .parse()?,
        ),
        None => None,
    };
    Ok(LinkInfo { ifindex, mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VETH: &str = "7: cl1@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP \
        mode DEFAULT group default qlen 1000\\    link/ether ca:6b:4b:7e:5a:30 brd ff:ff:ff:ff:ff:ff link-netns epl-x";

    #[test]
    fn parses_veth_line() -> Result<()> {
        let info = parse_link_line("ip", VETH)?;
        assert_eq!(info.ifindex, 7);
        assert_eq!(info.mac, Some(Mac([0xca, 0x6b, 0x4b, 0x7e, 0x5a, 0x30])));
        assert_eq!(
            info.mac.map(|m| m.to_string()).as_deref(),
            Some("ca:6b:4b:7e:5a:30")
        );
        Ok(())
    }

    #[test]
    fn loopback_has_no_mac() -> Result<()> {
        let lo = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN \\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00";
        assert_eq!(parse_link_line("ip", lo)?.mac, None);
        Ok(())
    }

    #[test]
    fn rejects_malformed_macs() {
        for bad in [
            "",
            "aa:bb",
            "aa:bb:cc:dd:ee:ff:00",
            "aa:bb:cc:dd:ee:gg",
            "a:bb:cc:dd:ee:ff0",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
