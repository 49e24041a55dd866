//! The per-run directory holding the logs of lab processes.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::{LabError, Result};

/// Set this variable to keep log directories after a lab is dropped.
pub const KEEP_LOGS_ENV: &str = "EDGE_LAB_KEEP_LOGS";

/// A directory under the system temp dir, removed on drop unless
/// [`KEEP_LOGS_ENV`] is set or the thread is panicking: a failed assertion is
/// exactly when the full logs are wanted.
#[derive(Debug)]
pub(crate) struct LogDir {
    path: PathBuf,
}

impl LogDir {
    pub(crate) fn create(name: &str) -> Result<Self> {
        let path = std::env::temp_dir().join(name);
        fs::create_dir_all(&path).map_err(|e| LabError::io_path("create log dir", &path, e))?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `<dir>/<stem>.log` for appending, so a process started twice
    /// under one name keeps both logs.
    pub(crate) fn open_log(&self, stem: &str) -> Result<(PathBuf, File)> {
        let file_name: String = stem
            .chars()
            .map(|c| {
                if c == '/' || c.is_whitespace() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let path = self.path.join(format!("{file_name}.log"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| LabError::io_path("open log", &path, e))?;
        Ok((path, file))
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_LOGS_ENV).is_some() || std::thread::panicking() {
            eprintln!("edge_tests: logs kept in {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("edge_tests: could not remove {}: {e}", self.path.display());
            }
        }
    }
}
