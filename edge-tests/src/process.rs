//! Long-running processes started inside a lab namespace.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::capture::Capture;
use crate::cmd::display_argv;
use crate::error::{LabError, Result};
use crate::logdir::LogDir;
use crate::procfs::send_signal;

/// How long [`Drop`] lets a process react to SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(10);

/// A child process running inside a namespace, in its own process group, with
/// its stdout and stderr captured in memory and in a log file.
///
/// Dropping it terminates the whole process group: SIGTERM, then SIGKILL
/// after a grace period.
#[derive(Debug)]
pub struct LabProcess {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    /// Set once the child has been reaped; from then on its pid may belong to
    /// someone else and must not be signalled.
    exit: Mutex<Option<ExitStatus>>,
    capture: Arc<Capture>,
    log_path: PathBuf,
    // Keeps the log directory alive as long as the process.
    _log_dir: Arc<LogDir>,
}

impl LabProcess {
    /// Starts `argv` (already wrapped to enter the namespace), logging as `name`.
    pub(crate) fn start(
        name: &str,
        argv: &[&str],
        envs: &[(&str, &str)],
        log_dir: Arc<LogDir>,
    ) -> Result<Self> {
        let cmd = display_argv(argv);
        let (program, args) = argv.split_first().ok_or_else(|| LabError::Invalid {
            what: "command",
            value: String::new(),
            why: "empty argument list".to_owned(),
        })?;
        let (log_path, log) = log_dir.open_log(name)?;
        let mut child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that kill(-pgid) also reaches what it forks.
            // A Ctrl-C at the terminal then spares it; `find_leftovers` finds it.
            .process_group(0)
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        let pid = child.id();
        let streams: std::io::Result<[Box<dyn Read + Send>; 2]> =
            match (child.stdout.take(), child.stderr.take()) {
                (Some(out), Some(err)) => Ok([Box::new(out), Box::new(err)]),
                _ => Err(std::io::Error::other("stdout/stderr pipes missing")),
            };
        let capture = match streams.and_then(|streams| Capture::start(name, streams, log)) {
            Ok(capture) => capture,
            Err(source) => {
                // An uncaptured process would be invisible to the test: stop it.
                let _ = send_signal(-(pid as i32), libc::SIGKILL);
                let _ = child.wait();
                return Err(LabError::io(format!("capture output of `{cmd}`"), source));
            }
        };
        Ok(Self {
            name: name.to_owned(),
            pid,
            child: Mutex::new(child),
            exit: Mutex::new(None),
            capture,
            log_path,
            _log_dir: log_dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Where the output is logged (under the lab's per-run temp dir).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything printed so far, stdout and stderr interleaved by line.
    pub fn output_so_far(&self) -> String {
        self.capture.text()
    }

    /// Waits until `needle` appears in stdout or stderr.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> Result<()> {
        self.capture
            .wait_for(needle, timeout)
            .map_err(|output| LabError::Timeout {
                what: format!("`{needle}` in the output of `{}`", self.name),
                timeout,
                output,
            })
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process itself.
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.reaped().is_some() {
            return Err(LabError::Exited {
                name: self.name.clone(),
                pid: self.pid,
            });
        }
        send_signal(self.pid as i32, signal)
            .map_err(|e| LabError::io(format!("signal {signal} to `{}`", self.name), e))
    }

    /// SIGKILLs the whole process group, without waiting.
    pub fn kill(&self) -> Result<()> {
        self.signal_group(libc::SIGKILL)
    }

    /// Whether the process has not exited yet.
    pub fn is_running(&self) -> bool {
        self.reaped().is_none() && !self.has_exited()
    }

    /// Waits up to `timeout` for the process to exit, and reaps it.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.reaped() {
                return Ok(status);
            }
            if self.has_exited() {
                let status = self.reap();
                // Its last lines may still be in the pipe: callers read the output next (a
                // loaded machine once had a test see "holding 300" without the summary line).
                self.capture.wait_closed(Duration::from_secs(2));
                return status;
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("`{}` (pid {}) to exit", self.name, self.pid),
                    timeout,
                    output: self.output_so_far(),
                });
            }
            thread::sleep(POLL);
        }
    }

    fn reaped(&self) -> Option<ExitStatus> {
        *lock(&self.exit)
    }

    /// Whether the child has exited, without reaping it: an unreaped zombie
    /// keeps its pid, and so its process group id, reserved for us.
    fn has_exited(&self) -> bool {
        // SAFETY: an all-zero siginfo_t is a valid value; waitid only writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` outlives the call; P_PID targets only our own child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: waitid filled `info` (si_pid stays 0 if nothing exited).
        rc != 0 || unsafe { info.si_pid() } != 0
    }

    fn reap(&self) -> Result<ExitStatus> {
        let mut exit = lock(&self.exit);
        if let Some(status) = *exit {
            return Ok(status);
        }
        let status = lock(&self.child)
            .wait()
            .map_err(|e| LabError::io(format!("wait for `{}`", self.name), e))?;
        *exit = Some(status);
        Ok(status)
    }

    fn signal_group(&self, signal: i32) -> Result<()> {
        if self.reaped().is_some() {
            return Ok(());
        }
        send_signal(-(self.pid as i32), signal)
            .map_err(|e| LabError::io(format!("signal {signal} to group of `{}`", self.name), e))
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if self.reaped().is_some() {
            return;
        }
        let _ = self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while !self.has_exited() && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        // Also reaches group members that outlived a leader which obeyed SIGTERM.
        let _ = self.signal_group(libc::SIGKILL);
        if let Err(e) = self.reap() {
            eprintln!("edge_tests: {e}");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}
