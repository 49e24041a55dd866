//! WireGuard keys: x25519 (Curve25519) pairs, shown in base64 as `wg` shows them and written in
//! hex on the UAPI socket. The private key lives in a file only root may read.

use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    str::FromStr,
};

use base64::{engine::general_purpose::STANDARD, Engine};
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};

pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{text:?} is not a WireGuard key (44 characters of standard base64 for 32 bytes)")]
    BadKey { text: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: mode {mode:o} lets others read the private key; it must be 0600 (chmod 600)", path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("{}: {why}", path.display())]
    BadKeyFile { path: PathBuf, why: String },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> KeyError + 'a {
    move |source| KeyError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bad = || KeyError::BadKey {
        text: text.to_owned(),
    };
    // `wg` writes exactly 44 characters with one `=`; anything else is a truncated or mangled
    // copy, and a 33-byte decode must not be cut silently to 32.
    if text.len() != 44 {
        return Err(bad());
    }
    STANDARD
        .decode(text)
        .ok()
        .and_then(|bytes| <[u8; KEY_LEN]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(bad)
}

fn hex(bytes: &[u8; KEY_LEN]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A public key: what peers are told, and what the UAPI names a peer by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Lower-case hex, the form of the UAPI protocol.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 2 * KEY_LEN {
            return None;
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        decode(text).map(Self)
    }
}

/// A private key. `Debug` does not print it.
#[derive(Clone)]
pub struct PrivateKey(StaticSecret);

impl PrivateKey {
    /// A new key from the OS RNG (getrandom), clamped (RFC 7748 section 5) as `wg genkey`
    /// clamps it, so that the file reads the same as one `wg` made; X25519 clamps anyway.
    pub fn generate() -> Self {
        let mut bytes = StaticSecret::random().to_bytes();
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        Self::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(StaticSecret::from(bytes))
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(DalekPublic::from(&self.0).to_bytes())
    }

    /// Base64, the form of `wg genkey` and of the key file.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode(text).map(Self::from_bytes)
    }

    /// Lower-case hex, the form of the UAPI protocol.
    pub fn to_hex(&self) -> String {
        hex(self.0.as_bytes())
    }

    /// Loads the key at `path`, or generates one and stores it there if there is no file yet
    /// (the first start of a host). Returns the key and whether it was generated.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.store(path)?;
                Ok((key, true))
            }
            other => other.map(|key| (key, false)),
        }
    }

    /// Writes the key to a new file created with mode 0600, so that it is never readable by
    /// others, not even between creation and a chmod. Refuses to overwrite: replacing a key
    /// (rotation) is a deliberate step that must also publish the new public key.
    pub fn store(&self, path: &Path) -> Result<(), KeyError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io_err("create", path))?;
        // The umask could only have removed bits; check that nothing else made it wider.
        check_mode(path, file.metadata().map_err(io_err("stat", path))?.mode())?;
        writeln!(file, "{}", self.to_base64())
            .and_then(|()| file.sync_all())
            .map_err(io_err("write", path))
    }

    /// Reads a key file, refusing one that group or others may read or write: a key that may
    /// have leaked must be rotated, not used.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let meta = fs::metadata(path).map_err(io_err("stat", path))?;
        if !meta.is_file() {
            return Err(KeyError::BadKeyFile {
                path: path.to_owned(),
                why: "not a regular file".to_owned(),
            });
        }
        check_mode(path, meta.mode())?;
        let text = fs::read_to_string(path).map_err(io_err("read", path))?;
        Self::from_base64(text.trim()).map_err(|_| KeyError::BadKeyFile {
            path: path.to_owned(),
            why: "does not hold one base64 WireGuard key".to_owned(),
        })
    }
}

fn check_mode(path: &Path, mode: u32) -> Result<(), KeyError> {
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "a test fails loudly on any error")]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sixpn-keys-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// RFC 7748 section 6.1's Alice: private and public key.
    #[test]
    fn public_key_matches_rfc7748() {
        let private =
            PrivateKey::from_bytes(*b"\x77\x07\x6d\x0a\x73\x18\xa5\x7d\x3c\x16\xc1\x72\x51\xb2\x66\x45\xdf\x4c\x2f\x87\xeb\xc0\x99\x2a\xb1\x77\xfb\xa5\x1d\xb9\x2c\x2a");
        assert_eq!(
            private.public_key().to_hex(),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
    }

    #[test]
    fn keys_round_trip_through_base64_and_hex() {
        let private = PrivateKey::generate();
        let text = private.to_base64();
        assert_eq!(text.len(), 44);
        assert!(text.ends_with('='));
        let back = PrivateKey::from_base64(&text).unwrap();
        assert_eq!(back.to_hex(), private.to_hex());
        let public = private.public_key();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        assert_eq!(PublicKey::from_hex(&public.to_hex()), Some(public));
        assert_eq!(public.to_hex().len(), 64);
        assert_ne!(PrivateKey::generate().to_hex(), private.to_hex());
        assert!(
            !format!("{private:?}").contains(&text),
            "Debug shows the private key"
        );
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = PrivateKey::generate().public_key().to_string();
        for bad in [
            "",
            &good[..43],
            &format!("{good}A"),
            &good.replace('=', "A"),
            "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!=",
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(PublicKey::from_hex("zz"), None);
        assert_eq!(PublicKey::from_hex(&"g".repeat(64)), None);
    }

    #[test]
    fn key_file_is_created_0600_and_loaded_back() {
        let dir = temp_dir("store");
        let path = dir.join("wg.key");
        let (key, generated) = PrivateKey::load_or_generate(&path).unwrap();
        assert!(generated);
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let (again, generated) = PrivateKey::load_or_generate(&path).unwrap();
        assert!(!generated, "a second start generated a new key");
        assert_eq!(again.public_key(), key.public_key());
        assert!(key.store(&path).is_err(), "store overwrote a key");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn key_file_readable_by_others_is_refused() {
        let dir = temp_dir("exposed");
        let path = dir.join("wg.key");
        PrivateKey::generate().store(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(matches!(
            PrivateKey::load(&path),
            Err(KeyError::Exposed { mode: 0o640, .. })
        ));
        assert!(PrivateKey::load_or_generate(&path).is_err());
        fs::write(dir.join("junk"), "not a key\n").unwrap();
        fs::set_permissions(dir.join("junk"), fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            PrivateKey::load(&dir.join("junk")),
            Err(KeyError::BadKeyFile { .. })
        ));
        fs::remove_dir_all(dir).unwrap();
    }
}
