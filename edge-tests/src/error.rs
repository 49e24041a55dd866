//! The one error type of the lab harness.

use std::io;
use std::path::Path;
use std::time::Duration;

/// Everything that can go wrong while building, running or tearing down a lab.
///
/// Variants carry the raw facts (command line, exit code, stderr, captured
/// output) so that a failing test prints enough to diagnose without rerunning.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran but exited unsuccessfully.
    #[error("`{cmd}` failed ({}): {}", describe_code(*.code), describe_output(.stderr, .stdout))]
    Command {
        cmd: String,
        /// `None` when the command was killed by a signal.
        code: Option<i32>,
        stderr: String,
        /// Kept because some tools (ping, curl -v) explain failures on stdout.
        stdout: String,
    },

    /// A command could not be started at all (binary missing, fork failure).
    #[error("could not start `{cmd}`: {source}")]
    Spawn { cmd: String, source: io::Error },

    /// Something expected did not happen in time.
    #[error("timed out after {timeout:?} waiting for {what}; output so far:\n{output}")]
    Timeout {
        what: String,
        timeout: Duration,
        output: String,
    },

    /// A file system or system call failed.
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },

    /// A step of [`crate::Topology::up`] failed; everything created before it was removed.
    #[error("lab `{lab}` (run {run}): step `{step}` failed: {source}")]
    Step {
        lab: String,
        run: String,
        step: String,
        source: Box<LabError>,
    },

    /// The caller described something the harness cannot build.
    #[error("invalid {what} `{value}`: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: String,
    },

    /// Output of a command did not have the expected shape.
    #[error("could not parse output of `{cmd}`: {why}")]
    Parse { cmd: String, why: String },

    /// The process was already reaped, so it can no longer be signalled.
    #[error("process `{name}` (pid {pid}) has already exited")]
    Exited { name: String, pid: u32 },

    /// An agent configuration could not be written as TOML.
    #[error("writing an agent configuration: {0}")]
    AgentConfig(#[from] toml::ser::Error),

    /// Some objects could not be removed.
    #[error("cleanup left {} object(s) behind:\n{}", failures.len(), failures.join("\n"))]
    Cleanup { failures: Vec<String> },
}

impl LabError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn io_path(action: &str, path: &Path, source: io::Error) -> Self {
        Self::io(format!("{action} {}", path.display()), source)
    }
}

fn describe_code(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

fn describe_output(stderr: &str, stdout: &str) -> String {
    match (stderr.trim_end(), stdout.trim_end()) {
        ("", "") => "no output".to_owned(),
        ("", stdout) => format!("stdout: {stdout}"),
        (stderr, _) => stderr.to_owned(),
    }
}

/// Result alias used throughout the harness.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
