//! Continuous capture of a child's stdout and stderr.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Output shared between the reader threads and the test.
///
/// Complete lines of both streams are interleaved in arrival order; an
/// unfinished line is held per stream so that the other stream cannot split
/// it, yet is still visible to searches (prompts often lack a newline).
#[derive(Debug, Default)]
pub(crate) struct Capture {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    lines: String,
    partial: [Vec<u8>; 2],
    open_streams: usize,
}

impl State {
    fn text(&self) -> String {
        let mut text = self.lines.clone();
        for partial in &self.partial {
            text.push_str(&String::from_utf8_lossy(partial));
        }
        text
    }
}

impl Capture {
    /// Starts one detached reader thread per stream. Threads end at EOF, i.e.
    /// when the last process holding the pipe exits; they are not joined,
    /// because a stray grandchild could hold the pipe open indefinitely.
    pub(crate) fn start(
        name: &str,
        streams: [Box<dyn Read + Send>; 2],
        log: File,
    ) -> std::io::Result<Arc<Self>> {
        let capture = Arc::new(Self::default());
        let log = Arc::new(Mutex::new(log));
        capture.lock().open_streams = streams.len();
        for (index, stream) in streams.into_iter().enumerate() {
            let capture = Arc::clone(&capture);
            let log = Arc::clone(&log);
            thread::Builder::new()
                .name(format!("epl-log-{name}-{index}"))
                .spawn(move || capture.pump(index, stream, &log))?;
        }
        Ok(capture)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking reader leaves the text intact; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn pump(&self, index: usize, mut stream: Box<dyn Read + Send>, log: &Mutex<File>) {
        let mut buf = [0u8; 8192];
        loop {
            let read = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut state = self.lock();
            state.partial[index].extend_from_slice(&buf[..read]);
            if let Some(end) = state.partial[index].iter().rposition(|&b| b == b'\n') {
                let complete: Vec<u8> = state.partial[index].drain(..=end).collect();
                state.lines.push_str(&String::from_utf8_lossy(&complete));
                write_log(log, &complete);
            }
            drop(state);
            self.changed.notify_all();
        }
        let mut state = self.lock();
        let rest = std::mem::take(&mut state.partial[index]);
        state.lines.push_str(&String::from_utf8_lossy(&rest));
        write_log(log, &rest);
        state.open_streams -= 1;
        drop(state);
        self.changed.notify_all();
    }

    pub(crate) fn text(&self) -> String {
        self.lock().text()
    }

    /// Waits until every stream is closed (the process and its children are gone and the
    /// readers have everything), at most `timeout`: a process that has exited may still have
    /// output in the pipe that the reader threads have not taken yet.
    pub(crate) fn wait_closed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while state.open_streams > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poison| poison.into_inner().0);
        }
    }

    /// Waits until `needle` appears; `Err` carries the output so far.
    pub(crate) fn wait_for(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            let text = state.text();
            if text.contains(needle) {
                return Ok(());
            }
            let now = Instant::now();
            // Once both streams are closed nothing more can arrive.
            if now >= deadline || state.open_streams == 0 {
                return Err(text);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poison| poison.into_inner().0);
        }
    }
}

fn write_log(log: &Mutex<File>, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut file = log.lock().unwrap_or_else(|poison| poison.into_inner());
    // The in-memory capture is authoritative; a full disk must not stop it.
    let _ = file.write_all(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn capture_of(out: &'static str, err: &'static str) -> Arc<Capture> {
        let log = tempfile_in_tmp();
        let streams: [Box<dyn Read + Send>; 2] =
            [Box::new(Cursor::new(out)), Box::new(Cursor::new(err))];
        Capture::start("test", streams, log).unwrap_or_else(|e| panic!("start: {e}"))
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!(
            "epl-capture-test-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let file = File::create(&path).unwrap_or_else(|e| panic!("create {path:?}: {e}"));
        let _ = std::fs::remove_file(&path);
        file
    }

    #[test]
    fn finds_text_from_either_stream_including_unfinished_lines() {
        let capture = capture_of("line one\nprompt> ", "warning\n");
        assert!(capture.wait_for("prompt>", Duration::from_secs(2)).is_ok());
        assert!(capture.wait_for("warning", Duration::from_secs(2)).is_ok());
        let text = capture.text();
        assert!(text.contains("line one\n"), "{text}");
    }

    #[test]
    fn gives_up_with_the_output_once_streams_close() {
        let capture = capture_of("only this\n", "");
        let started = Instant::now();
        let err = capture.wait_for("never", Duration::from_secs(10)).err();
        assert_eq!(err.as_deref(), Some("only this\n"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
