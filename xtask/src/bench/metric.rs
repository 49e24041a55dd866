//! What the end-to-end section measures: its metrics, and one mode's outcome. Shared by the
//! measuring ([`super::measure`]), the merging of rounds ([`super::rounds`]) and the report
//! ([`super::report`]), so it lives apart from all three.

use super::modes::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Metric {
    Iperf1,
    Iperf4,
    HttpClose,
    HttpKeepAlive,
    EchoP50,
    EchoP99,
}

impl Metric {
    pub(super) const ALL: [Metric; 6] = [
        Metric::Iperf1,
        Metric::Iperf4,
        Metric::HttpClose,
        Metric::HttpKeepAlive,
        Metric::EchoP50,
        Metric::EchoP99,
    ];

    pub(super) fn key(self) -> &'static str {
        match self {
            Metric::Iperf1 => "iperf3_1_stream",
            Metric::Iperf4 => "iperf3_4_streams",
            Metric::HttpClose => "http_new_connection_per_request",
            Metric::HttpKeepAlive => "http_keepalive",
            Metric::EchoP50 => "echo_rtt_p50",
            Metric::EchoP99 => "echo_rtt_p99",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Metric::Iperf1 => "iperf3, 1 stream",
            Metric::Iperf4 => "iperf3, 4 streams",
            Metric::HttpClose => "HTTP, new connection per request (= new conn/s)",
            Metric::HttpKeepAlive => "HTTP, keep-alive",
            Metric::EchoP50 => "echo round trip p50 (lower is better)",
            Metric::EchoP99 => "echo round trip p99 (lower is better)",
        }
    }

    pub(super) fn unit(self) -> &'static str {
        match self {
            Metric::Iperf1 | Metric::Iperf4 => "Gbit/s",
            Metric::HttpClose | Metric::HttpKeepAlive => "req/s",
            Metric::EchoP50 | Metric::EchoP99 => "us",
        }
    }

    pub(super) fn lower_is_better(self) -> bool {
        matches!(self, Metric::EchoP50 | Metric::EchoP99)
    }

    pub(super) fn format(self, value: f64) -> String {
        match self {
            Metric::Iperf1 | Metric::Iperf4 => format!("{value:.2}"),
            Metric::HttpClose | Metric::HttpKeepAlive => format!("{value:.0}"),
            Metric::EchoP50 | Metric::EchoP99 => format!("{value:.1}"),
        }
    }
}

/// One mode's outcome: a value or an error per metric, or an error for the whole mode.
#[derive(Debug)]
pub(super) struct ModeResult {
    pub(super) mode: Mode,
    pub(super) error: Option<String>,
    pub(super) values: Vec<(Metric, Result<f64, String>)>,
    /// Facts worth a look beside the figures (retransmits, tolerated socket errors).
    pub(super) notes: Vec<String>,
    /// Share of the CPUs busy while the lab sat idle just before measuring: work that is not
    /// the benchmark's (another build, another lab) and that skews its figures.
    pub(super) background_busy: Option<f64>,
    /// Every round's value of each metric (after merging rounds; empty before).
    pub(super) samples: Vec<(Metric, Vec<f64>)>,
    /// Each run a figure is the mean of (the iperf3 runs, `measure::PLACEMENTS` per round),
    /// every round's together after merging.
    pub(super) runs: Vec<(Metric, Vec<f64>)>,
}

impl ModeResult {
    pub(super) fn value(&self, metric: Metric) -> Option<&Result<f64, String>> {
        self.values
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, v)| v)
    }

    /// The lowest and highest of the rounds' values, when there was more than one round: how
    /// far apart runs of the same code land says how much of a line is the machine's placement
    /// of the work rather than the program.
    pub(super) fn spread(&self, metric: Metric) -> Option<(f64, f64)> {
        let (_, values) = self.samples.iter().find(|(m, _)| *m == metric)?;
        if values.len() < 2 {
            return None;
        }
        let min = values.iter().copied().reduce(f64::min)?;
        let max = values.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }

    /// The runs of `metric` (none for a metric measured once per round).
    pub(super) fn runs_of(&self, metric: Metric) -> &[f64] {
        self.runs
            .iter()
            .find(|(m, _)| *m == metric)
            .map_or(&[], |(_, runs)| runs.as_slice())
    }

    /// How much one run varies from the next: the runs' standard deviation over their mean.
    /// Over every run of every round this compares how steady two modes are on far more
    /// samples than the five round figures `spread` takes its ends from.
    pub(super) fn run_variation(&self, metric: Metric) -> Option<f64> {
        let runs = self.runs_of(metric);
        if runs.len() < 2 {
            return None;
        }
        let n = runs.len() as f64;
        let mean = runs.iter().sum::<f64>() / n;
        if mean <= 0.0 {
            return None;
        }
        let variance = runs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
        Some(variance.sqrt() / mean)
    }

    pub(super) fn failed(&self) -> bool {
        self.error.is_some() || self.values.iter().any(|(_, v)| v.is_err())
    }
}
