//! What the overlay section measures (the lines of its table and the iperf3 tests on each) and
//! what it keeps of every round: samples, failures, and the medians the report shows.

use crate::bench::rounds::median;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Line {
    PlainWg,
    Agents,
    Routed,
    DataPlane4,
    DataPlane6,
}

impl Line {
    /// In the order of the table.
    pub(super) const ALL: [Line; 5] = [
        Line::PlainWg,
        Line::Agents,
        Line::Routed,
        Line::DataPlane4,
        Line::DataPlane6,
    ];

    pub(super) fn key(self) -> &'static str {
        match self {
            Line::PlainWg => "a_plain_wireguard",
            Line::Agents => "b_6pn_by_agents",
            Line::Routed => "d_pop_kernel_routing",
            Line::DataPlane4 => "c_pop_data_plane_ipv4",
            Line::DataPlane6 => "c6_pop_data_plane_ipv6",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Line::PlainWg => "(a) host -> host, plain WireGuard (wg + ip)",
            Line::Agents => "(b) host -> host, 6PN built by the agents",
            Line::Routed => "(d) IPv6 client -> POP, kernel routing -> host over 6PN",
            Line::DataPlane4 => "(c) IPv4 client -> VIP, data plane (NAT46) -> host over 6PN",
            Line::DataPlane6 => "(c6) IPv6 client -> VIP, data plane (NAT66) -> host over 6PN",
        }
    }

    pub(super) fn short(self) -> &'static str {
        match self {
            Line::PlainWg => "a",
            Line::Agents => "b",
            Line::Routed => "d",
            Line::DataPlane4 => "c",
            Line::DataPlane6 => "c6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Test {
    One,
    Four,
    Reverse,
}

impl Test {
    pub(super) const ALL: [Test; 3] = [Test::One, Test::Four, Test::Reverse];

    pub(super) fn key(self) -> &'static str {
        match self {
            Test::One => "iperf3_1_stream",
            Test::Four => "iperf3_4_streams",
            Test::Reverse => "iperf3_1_stream_reverse",
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            Test::One => "1 stream",
            Test::Four => "4 streams",
            Test::Reverse => "1 stream, reverse",
        }
    }

    pub(super) fn streams(self) -> u32 {
        match self {
            Test::Four => 4,
            Test::One | Test::Reverse => 1,
        }
    }

    pub(super) fn reverse(self) -> bool {
        self == Test::Reverse
    }
}

#[derive(Debug)]
pub(super) struct LineResult {
    pub(super) line: Line,
    /// Failures of the whole line in a round (its setup, its path), labelled with the round.
    pub(super) errors: Vec<String>,
    /// Failures of one test in a round.
    pub(super) test_errors: Vec<(Test, String)>,
    /// Every round's (Gbit/s, retransmits).
    pub(super) samples: Vec<(Test, Vec<(f64, f64)>)>,
    /// Share of the CPUs busy with the path idle just before the line's tests: the highest of
    /// the rounds.
    pub(super) background_busy: Option<f64>,
}

impl LineResult {
    /// The median over the rounds; an error if any round of the test failed (a failure is not
    /// averaged away).
    pub(super) fn value(&self, test: Test) -> Option<Result<f64, String>> {
        if let Some((_, e)) = self.test_errors.iter().find(|(t, _)| *t == test) {
            return Some(Err(e.clone()));
        }
        let gbps: Vec<f64> = self.samples(test).iter().map(|(g, _)| *g).collect();
        median(&gbps).map(Ok)
    }

    pub(super) fn ok(&self, test: Test) -> Option<f64> {
        self.value(test)?.ok()
    }

    pub(super) fn samples(&self, test: Test) -> &[(f64, f64)] {
        self.samples
            .iter()
            .find(|(t, _)| *t == test)
            .map_or(&[], |(_, s)| s.as_slice())
    }

    pub(super) fn push(&mut self, test: Test, sample: (f64, f64)) {
        match self.samples.iter_mut().find(|(t, _)| *t == test) {
            Some((_, v)) => v.push(sample),
            None => self.samples.push((test, vec![sample])),
        }
    }
}

pub(super) struct Results {
    pub(super) lines: Vec<LineResult>,
    pub(super) rounds: u32,
    /// The WireGuard implementation the agents reported, and wireguard-go's version.
    pub(super) wireguard: Vec<String>,
}

impl Results {
    pub(super) fn new(rounds: u32) -> Self {
        Results {
            lines: Line::ALL
                .iter()
                .map(|&line| LineResult {
                    line,
                    errors: Vec::new(),
                    test_errors: Vec::new(),
                    samples: Vec::new(),
                    background_busy: None,
                })
                .collect(),
            rounds,
            wireguard: Vec::new(),
        }
    }

    pub(super) fn line(&self, line: Line) -> Option<&LineResult> {
        self.lines.iter().find(|r| r.line == line)
    }

    pub(super) fn line_mut(&mut self, line: Line) -> Option<&mut LineResult> {
        self.lines.iter_mut().find(|r| r.line == line)
    }

    /// `text`, prefixed with its round when there are several.
    pub(super) fn label(&self, round: u32, text: &str) -> String {
        if self.rounds > 1 {
            format!("round {round}: {text}")
        } else {
            text.to_owned()
        }
    }

    /// Records that `lines` failed in `round` (0: outside the rounds).
    pub(super) fn fail(&mut self, lines: &[Line], round: u32, error: &anyhow::Error) {
        let text = if round == 0 {
            format!("{error:#}")
        } else {
            self.label(round, &format!("{error:#}"))
        };
        for &line in lines {
            if let Some(r) = self.line_mut(line) {
                r.errors.push(text.clone());
            }
        }
    }

    /// `line / base` for `test`, when both were measured.
    pub(super) fn ratio(&self, line: Line, base: Line, test: Test) -> Option<f64> {
        let b = self.line(base)?.ok(test)?;
        let v = self.line(line)?.ok(test)?;
        (b > 0.0).then(|| v / b)
    }

    pub(super) fn failed(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.lines {
            for e in &r.errors {
                out.push(format!("{}: {e}", r.line.label()));
            }
            for (test, e) in &r.test_errors {
                out.push(format!("{} / {}: {e}", r.line.label(), test.label()));
            }
        }
        out
    }
}

/// The ratios that isolate the data plane: each data-plane line over the routed one.
pub(super) const DATA_PLANE_RATIOS: [(Line, Line); 2] = [
    (Line::DataPlane4, Line::Routed),
    (Line::DataPlane6, Line::Routed),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_give_medians_and_keep_failures() {
        let mut results = Results::new(3);
        if let Some(r) = results.line_mut(Line::Agents) {
            for g in [0.5, 0.3, 0.4] {
                r.push(Test::One, (g, 10.0));
            }
            r.push(Test::Four, (0.6, 0.0));
            r.test_errors
                .push((Test::Four, results_label(2, "iperf3 moved no data")));
        }
        let r = results.line(Line::Agents);
        assert_eq!(r.and_then(|r| r.value(Test::One)), Some(Ok(0.4)));
        assert_eq!(
            r.and_then(|r| r.value(Test::Four)),
            Some(Err("round 2: iperf3 moved no data".into()))
        );
        assert_eq!(r.and_then(|r| r.value(Test::Reverse)), None);
        results.fail(&[Line::Routed], 3, &anyhow::anyhow!("no ping"));
        assert_eq!(
            results.failed(),
            vec![
                "(b) host -> host, 6PN built by the agents / 4 streams: round 2: iperf3 moved no data",
                "(d) IPv6 client -> POP, kernel routing -> host over 6PN: round 3: no ping",
            ]
        );
    }

    fn results_label(round: u32, text: &str) -> String {
        Results::new(3).label(round, text)
    }
}
