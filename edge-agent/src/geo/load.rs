//! Reading a country database from a file: the format told by the extension or the content,
//! then parsed by `mmdb` or `csv` into a [`GeoDb`].

use std::{fs, path::Path};

use super::{csv, mmdb, GeoDb, GeoError, MMDB_METADATA_MARKER};

impl GeoDb {
    /// Loads a MaxMind DB or a `prefix,country` CSV file. The format follows the extension
    /// (`.mmdb`, `.csv`); otherwise a file with the MaxMind metadata marker in its last
    /// 128 KiB is a MaxMind DB and a UTF-8 text file a CSV.
    ///
    /// All or nothing: any unreadable, corrupt or invalid part of the file is an error, and
    /// so is a file without a single classified network (most likely the wrong file, and
    /// loading it would turn geo routing off).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, GeoError> {
        let path = path.as_ref();
        let bytes = read(path)?;
        match sniff(path, &bytes) {
            Some(Format::Mmdb) => mmdb::parse(path, bytes),
            Some(Format::Csv) => csv::parse(path, &bytes),
            None => Err(GeoError::UnknownFormat {
                path: path.to_owned(),
            }),
        }
    }

    /// Loads a MaxMind DB whatever the file is called.
    pub fn load_mmdb(path: impl AsRef<Path>) -> Result<Self, GeoError> {
        let path = path.as_ref();
        mmdb::parse(path, read(path)?)
    }

    /// Loads a `prefix,country` CSV whatever the file is called.
    pub fn load_csv(path: impl AsRef<Path>) -> Result<Self, GeoError> {
        let path = path.as_ref();
        csv::parse(path, &read(path)?)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, GeoError> {
    fs::read(path).map_err(|source| GeoError::Read {
        path: path.to_owned(),
        source,
    })
}

enum Format {
    Mmdb,
    Csv,
}

fn sniff(path: &Path, bytes: &[u8]) -> Option<Format> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext.eq_ignore_ascii_case("mmdb") {
        return Some(Format::Mmdb);
    }
    if ext.eq_ignore_ascii_case("csv") {
        return Some(Format::Csv);
    }
    // The format spec puts the metadata in the last 128 KiB.
    let tail = &bytes[bytes.len().saturating_sub(128 * 1024)..];
    if tail
        .windows(MMDB_METADATA_MARKER.len())
        .any(|w| w == MMDB_METADATA_MARKER)
    {
        Some(Format::Mmdb)
    } else if std::str::from_utf8(bytes).is_ok() {
        Some(Format::Csv)
    } else {
        None
    }
}
