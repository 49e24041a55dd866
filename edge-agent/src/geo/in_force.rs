//! Which country database the kernel's tries hold, as `edge-agent status`, `/metrics` and the
//! log report it: a file this agent loaded, the classification a previous agent left pinned,
//! or none; and the last file refused, if any.

use serde::{Deserialize, Serialize};

use super::{GeoDb, GeoFormat};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeoSource {
    /// No database configured and none pinned: every client is of unknown country.
    #[default]
    None,
    /// Loaded from `path` by this agent.
    File,
    /// What the pinned tries held when this agent started (a previous agent's database), kept
    /// because the configured file could not be read.
    Pinned,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoInForce {
    pub source: GeoSource,
    /// The file, for `File`.
    pub path: Option<String>,
    /// `mmdb`, `csv` or `entries`.
    pub format: Option<String>,
    /// A MaxMind DB's `database_type` and build time (seconds since 1970).
    pub database_type: Option<String>,
    pub build_epoch: Option<u64>,
    /// Networks in the tries, both families.
    pub networks: usize,
    pub countries: usize,
    /// When this agent put it in force (seconds since 1970).
    pub since: i64,
    /// The last database refused, and why; cleared by the next one loaded.
    pub refused: Option<GeoRefusal>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoRefusal {
    pub path: String,
    pub error: String,
    pub at: i64,
}

impl GeoInForce {
    pub fn loaded(path: &std::path::Path, db: &GeoDb, countries: usize, now: i64) -> Self {
        let (format, database_type, build_epoch) = match &db.info().format {
            GeoFormat::Mmdb {
                database_type,
                build_epoch,
            } => ("mmdb", Some(database_type.clone()), Some(*build_epoch)),
            GeoFormat::Csv => ("csv", None, None),
            GeoFormat::Entries => ("entries", None, None),
        };
        GeoInForce {
            source: GeoSource::File,
            path: Some(path.display().to_string()),
            format: Some(format.to_owned()),
            database_type,
            build_epoch,
            networks: db.len(),
            countries,
            since: now,
            refused: None,
        }
    }

    pub fn pinned(networks: usize, countries: usize, now: i64) -> Self {
        GeoInForce {
            source: if networks == 0 {
                GeoSource::None
            } else {
                GeoSource::Pinned
            },
            networks,
            countries,
            since: now,
            ..GeoInForce::default()
        }
    }
}
