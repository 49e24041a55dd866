//! `bfd` in a `[[bgp.peers]]` table: on, off, or the timers, checked against the bounds RFC
//! 5880 leaves to the implementation.

use serde::{Deserialize, Serialize};

use super::machine::Timing;

/// `bfd = true`, or a table of timers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BfdSetting {
    Switch(bool),
    Options(BfdConfig),
}

/// By hand rather than `untagged`: a mistyped key in the table is then reported as such, not as
/// "data did not match any variant".
impl<'de> Deserialize<'de> for BfdSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Setting;
        impl<'de> serde::de::Visitor<'de> for Setting {
            type Value = BfdSetting;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "true, false, or a table with min_tx_ms, min_rx_ms, multiplier, strict and \
                     strict_hold_ms",
                )
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<BfdSetting, E> {
                Ok(BfdSetting::Switch(on))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BfdSetting, A::Error> {
                BfdConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(BfdSetting::Options)
            }
        }
        d.deserialize_any(Setting)
    }
}

impl BfdSetting {
    /// The timers when BFD is on.
    pub fn config(&self) -> Option<BfdConfig> {
        match self {
            BfdSetting::Switch(true) => Some(BfdConfig::default()),
            BfdSetting::Switch(false) => None,
            BfdSetting::Options(c) => Some(*c),
        }
    }
}

/// `[bgp.peers.bfd]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BfdConfig {
    /// How often this side wants to send once Up (the peer may ask for slower).
    pub min_tx_ms: u32,
    /// How often this side can receive.
    pub min_rx_ms: u32,
    /// Missed packets before the peer declares this side down (its detection time is this
    /// times the agreed interval).
    pub multiplier: u8,
    /// The BGP session sends its OPEN only once BFD is Up (see `bfd/mod.rs`): off, a router
    /// without BFD for this session still gets one.
    pub strict: bool,
    /// With `strict`, how long BFD must have stayed Up before the OPEN.
    pub strict_hold_ms: u32,
}

impl Default for BfdConfig {
    /// 300 ms x 3: FRR's and BIRD's defaults (BIRD: 100 ms tx, 100 ms rx, multiplier 5).
    fn default() -> Self {
        BfdConfig {
            min_tx_ms: 300,
            min_rx_ms: 300,
            multiplier: 3,
            strict: true,
            strict_hold_ms: 500,
        }
    }
}

/// The fastest interval allowed (the 100 ms x 3).
pub const MIN_INTERVAL_MS: u32 = 100;
pub const MAX_INTERVAL_MS: u32 = 60_000;

impl BfdConfig {
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("min_tx_ms", self.min_tx_ms), ("min_rx_ms", self.min_rx_ms)] {
            if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&v) {
                return Err(format!(
                    "bfd.{name} must be {MIN_INTERVAL_MS} to {MAX_INTERVAL_MS}, not {v}"
                ));
            }
        }
        if self.multiplier == 0 {
            return Err("bfd.multiplier must be at least 1".into());
        }
        if self.strict_hold_ms > MAX_INTERVAL_MS {
            return Err(format!(
                "bfd.strict_hold_ms must be at most {MAX_INTERVAL_MS}, not {}",
                self.strict_hold_ms
            ));
        }
        Ok(())
    }

    pub(super) fn timing(&self) -> Timing {
        Timing {
            min_tx_us: self.min_tx_ms * 1000,
            min_rx_us: self.min_rx_ms * 1000,
            multiplier: self.multiplier,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_a_switch_or_timers() -> Result<(), Box<dyn std::error::Error>> {
        #[derive(Deserialize)]
        struct P {
            bfd: BfdSetting,
        }
        let on: P = toml::from_str("bfd = true")?;
        assert_eq!(on.bfd.config(), Some(BfdConfig::default()));
        let off: P = toml::from_str("bfd = false")?;
        assert_eq!(off.bfd.config(), None);
        let fast: P = toml::from_str("[bfd]\nmin_tx_ms = 100\nmin_rx_ms = 100\nmultiplier = 3")?;
        let c = fast.bfd.config().ok_or("on")?;
        c.validate()?;
        assert_eq!((c.min_tx_ms, c.min_rx_ms, c.multiplier), (100, 100, 3));
        assert!(c.strict, "strict unless said otherwise");
        let loose: P = toml::from_str("[bfd]\nstrict = false")?;
        assert_eq!(
            loose.bfd.config().map(|c| (c.strict, c.min_tx_ms)),
            Some((false, 300))
        );
        let too_fast = BfdConfig { min_tx_ms: 50, ..c };
        assert!(too_fast.validate().is_err());
        assert!(BfdConfig { multiplier: 0, ..c }.validate().is_err());
        assert!(BfdConfig {
            strict_hold_ms: 61_000,
            ..c
        }
        .validate()
        .is_err());
        let typo = toml::from_str::<P>("[bfd]\nmin_tx = 100")
            .err()
            .map(|e| e.to_string());
        assert!(
            typo.as_deref().is_some_and(|e| e.contains("min_tx")),
            "a mistyped key is named: {typo:?}"
        );
        Ok(())
    }
}
