//! Running short-lived commands and reporting their failures.

use std::process::{Command, ExitStatus, Stdio};

use crate::error::{LabError, Result};

/// What a finished command printed, and how it ended.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub cmd: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `Ok(self)` if the command succeeded, otherwise a [`LabError::Command`].
    pub fn ok(self) -> Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(LabError::Command {
                cmd: self.cmd,
                code: self.status.code(),
                stderr: self.stderr,
                stdout: self.stdout,
            })
        }
    }
}

/// Runs `argv` to completion with stdin closed, capturing its output.
pub(crate) fn run(argv: &[&str]) -> Result<CmdOutput> {
    let cmd = display_argv(argv);
    let (program, args) = argv.split_first().ok_or_else(|| LabError::Invalid {
        what: "command",
        value: String::new(),
        why: "empty argument list".to_owned(),
    })?;
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    Ok(CmdOutput {
        cmd,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Runs `argv` and fails unless it exits with 0.
pub(crate) fn run_ok(argv: &[&str]) -> Result<CmdOutput> {
    run(argv)?.ok()
}

/// A command line as a shell user would type it, for error messages.
pub(crate) fn display_argv(argv: &[&str]) -> String {
    argv.iter()
        .map(|arg| {
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                (*arg).to_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_when_needed() {
        assert_eq!(
            display_argv(&["sh", "-c", "echo 'hi'; sleep 1", "a=b"]),
            r"sh -c 'echo '\''hi'\''; sleep 1' a=b"
        );
    }

    #[test]
    fn failure_reports_command_code_and_stderr() {
        let err = run_ok(&["sh", "-c", "echo oops >&2; exit 3"]).err();
        match err {
            Some(LabError::Command {
                cmd, code, stderr, ..
            }) => {
                assert!(cmd.starts_with("sh -c"), "{cmd}");
                assert_eq!(code, Some(3));
                assert_eq!(stderr, "oops\n");
            }
            other => panic!("expected a command error, got {other:?}"),
        }
    }

    #[test]
    fn missing_binary_is_a_spawn_error() {
        assert!(matches!(
            run(&["/nonexistent/epl-binary"]),
            Err(LabError::Spawn { .. })
        ));
    }
}
