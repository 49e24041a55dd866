//! A rate limit on repeated warning and error lines. A peer that can make the agent log one line
//! per packet can fill its disk and bury what matters: issue 18 counted 277 warnings (hickory's
//! "unimplemented op_code", "invalid update request") from 3,000 malformed DNS messages, and a
//! file-starved accept loop logs at the rate it is refused.
//!
//! Each call site (one `warn!` or `error!` in the code, ours or a library's) may log [`BURST`]
//! lines per [`WINDOW`]; the rest are counted, not written. Every window, a [`Reporter`] logs
//! one line per call site that had lines suppressed, with the count, and
//! `edgeproxy_log_lines_suppressed_total` adds them all up. Info, debug and trace lines pass
//! untouched: they are either off by default (hickory's per-query lines) or wanted in full when
//! asked for (the kernel's debug records, `--bpf-debug-log`).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tracing::{callsite::Identifier, Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines a call site may log per window.
pub const BURST: u32 = 5;
pub const WINDOW: Duration = Duration::from_secs(10);
/// The target of the summary lines (which are not limited: one per call site and window).
const TARGET: &str = "edge_agent::process::log_limit";

static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Lines suppressed since the process started, every call site together.
pub fn suppressed_total() -> u64 {
    SUPPRESSED.load(Relaxed)
}

struct Site {
    meta: &'static Metadata<'static>,
    window_start: Instant,
    passed: u32,
    /// Suppressed since the last report.
    suppressed: u64,
}

#[derive(Default)]
struct Shared {
    sites: Mutex<HashMap<Identifier, Site>>,
}

/// The layer: add it to the subscriber (`.with(layer)`); it disables the lines over the limit
/// for every layer.
pub struct LogLimit {
    shared: Arc<Shared>,
    burst: u32,
    window: Duration,
}

/// Logs the counts of suppressed lines.
#[derive(Clone)]
pub struct Reporter {
    shared: Arc<Shared>,
    window: Duration,
}

/// A limit of `burst` lines per call site per `window`, and its reporter.
pub fn layer(burst: u32, window: Duration) -> (LogLimit, Reporter) {
    let shared = Arc::new(Shared::default());
    (
        LogLimit {
            shared: Arc::clone(&shared),
            burst,
            window,
        },
        Reporter { shared, window },
    )
}

impl<S: Subscriber> Layer<S> for LogLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Levels order by verbosity: INFO, DEBUG and TRACE are "greater" than WARN.
        if *meta.level() > Level::WARN || meta.target() == TARGET {
            return true;
        }
        let now = Instant::now();
        let mut sites = self.shared.sites.lock().unwrap_or_else(|e| e.into_inner());
        let site = sites.entry(meta.callsite()).or_insert(Site {
            meta,
            window_start: now,
            passed: 0,
            suppressed: 0,
        });
        if now.duration_since(site.window_start) >= self.window {
            site.window_start = now;
            site.passed = 0;
        }
        if site.passed < self.burst {
            site.passed += 1;
            true
        } else {
            site.suppressed += 1;
            SUPPRESSED.fetch_add(1, Relaxed);
            false
        }
    }
}

impl Reporter {
    /// Logs one line per call site with lines suppressed since the last report (through the
    /// current subscriber); the number of lines suppressed in all.
    pub fn report(&self) -> u64 {
        let counts: Vec<(&'static Metadata<'static>, u64)> = {
            let mut sites = self.shared.sites.lock().unwrap_or_else(|e| e.into_inner());
            sites
                .values_mut()
                .filter(|s| s.suppressed > 0)
                .map(|s| (s.meta, std::mem::take(&mut s.suppressed)))
                .collect()
        };
        for (meta, suppressed) in &counts {
            tracing::warn!(
                target: TARGET,
                suppressed,
                level = %meta.level(),
                of = meta.target(),
                at = %format!("{}:{}", meta.file().unwrap_or("?"), meta.line().unwrap_or(0)),
                "repeated log lines suppressed (at most {} per {} s from one place)",
                BURST,
                WINDOW.as_secs()
            );
        }
        counts.iter().map(|(_, n)| n).sum()
    }

    /// Reports every window, on a thread of its own, through the global subscriber.
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("log-limit".into())
            .spawn(move || loop {
                std::thread::sleep(self.window);
                self.report();
            })
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    #[test]
    fn a_flood_from_one_place_is_cut_to_the_burst_and_counted() {
        let out = Capture::default();
        let (limit, reporter) = layer(3, Duration::from_secs(3600));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .finish()
            .with(limit);
        let before = suppressed_total();
        let reported = tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                tracing::warn!(i, "malformed message");
                tracing::info!(i, "an info line");
            }
            tracing::error!("another place");
            reporter.report()
        });
        let text =
            String::from_utf8_lossy(&out.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
        assert_eq!(
            count("malformed message"),
            3,
            "expected the burst of 3 warnings, saw:\n{text}"
        );
        assert_eq!(count("an info line"), 100, "info lines are not limited");
        assert_eq!(
            count("another place"),
            1,
            "another call site has its own budget"
        );
        assert_eq!(reported, 97, "expected 97 suppressed lines reported");
        assert!(
            suppressed_total() >= before + 97,
            "expected the process-wide count to grow by 97"
        );
        let summary: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("repeated log lines suppressed"))
            .collect();
        assert_eq!(
            summary.len(),
            1,
            "expected one summary line, saw {summary:?}"
        );
        assert!(
            summary[0].contains("suppressed=97") && summary[0].contains("log_limit.rs"),
            "expected the count and the place in {summary:?}"
        );
    }

    #[test]
    fn a_new_window_lets_lines_through_again() {
        let out = Capture::default();
        let (limit, reporter) = layer(1, Duration::from_millis(1));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .finish()
            .with(limit);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::warn!("spaced out");
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(reporter.report(), 0, "nothing came over the limit");
        });
        let text =
            String::from_utf8_lossy(&out.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        assert_eq!(
            text.lines().filter(|l| l.contains("spaced out")).count(),
            3,
            "expected one line per window, saw:\n{text}"
        );
    }
}
