//! `--rounds N`: one result per mode out of every round's, so that a drift in background load
//! is evened out by medians while a failure in any round stays visible.

use super::{
    metric::{Metric, ModeResult},
    modes::Mode,
};

/// One result per mode out of all rounds: the median of each metric, a failure if any round
/// failed (a failure is not averaged away), notes and errors labelled with their round.
pub(super) fn merge_rounds(modes: &[Mode], rounds: &[Vec<ModeResult>]) -> Vec<ModeResult> {
    let label = |round: usize, text: &str| {
        if rounds.len() > 1 {
            format!("round {}: {text}", round + 1)
        } else {
            text.to_owned()
        }
    };
    modes
        .iter()
        .filter_map(|&mode| {
            let runs: Vec<(usize, &ModeResult)> = rounds
                .iter()
                .enumerate()
                .filter_map(|(i, round)| round.iter().find(|r| r.mode == mode).map(|r| (i, r)))
                .collect();
            if runs.is_empty() {
                return None;
            }
            let error = runs
                .iter()
                .find_map(|(i, r)| r.error.as_deref().map(|e| label(*i, e)));
            let mut values = Vec::new();
            let mut samples = Vec::new();
            let mut pooled = Vec::new();
            for metric in Metric::ALL {
                let got: Vec<(usize, &Result<f64, String>)> = runs
                    .iter()
                    .filter_map(|(i, r)| r.value(metric).map(|v| (*i, v)))
                    .collect();
                let oks: Vec<f64> = got
                    .iter()
                    .filter_map(|(_, v)| v.as_ref().ok())
                    .copied()
                    .collect();
                let first_err = got
                    .iter()
                    .find_map(|(i, v)| v.as_ref().err().map(|e| label(*i, e)));
                if let Some(e) = first_err {
                    values.push((metric, Err(e)));
                } else if let Some(m) = median(&oks) {
                    values.push((metric, Ok(m)));
                }
                if !oks.is_empty() {
                    samples.push((metric, oks));
                }
                let every_run: Vec<f64> = runs
                    .iter()
                    .flat_map(|(_, r)| r.runs_of(metric).iter().copied())
                    .collect();
                if !every_run.is_empty() {
                    pooled.push((metric, every_run));
                }
            }
            let notes = runs
                .iter()
                .flat_map(|(i, r)| r.notes.iter().map(move |n| label(*i, n)))
                .collect();
            let background_busy = runs
                .iter()
                .filter_map(|(_, r)| r.background_busy)
                .reduce(f64::max);
            Some(ModeResult {
                mode,
                error,
                values,
                notes,
                background_busy,
                samples,
                runs: pooled,
            })
        })
        .collect()
}

pub(super) fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_merge_to_medians_and_keep_failures() {
        let round = |iperf: f64, close: Result<f64, String>, busy: f64| ModeResult {
            mode: Mode::Haproxy,
            error: None,
            values: vec![(Metric::Iperf1, Ok(iperf)), (Metric::HttpClose, close)],
            notes: vec!["n".into()],
            background_busy: Some(busy),
            samples: vec![],
            runs: vec![(Metric::Iperf1, vec![iperf - 0.5, iperf + 0.5])],
        };
        let rounds = vec![
            vec![round(3.0, Ok(10.0), 0.1)],
            vec![round(1.0, Err("wrk died".into()), 0.5)],
            vec![round(2.0, Ok(30.0), 0.0)],
        ];
        let merged = merge_rounds(&[Mode::Plain, Mode::Haproxy], &rounds);
        assert_eq!(merged.len(), 1, "plain never ran, so it has no column");
        let h = &merged[0];
        assert_eq!(h.value(Metric::Iperf1), Some(&Ok(2.0)));
        assert_eq!(
            h.value(Metric::HttpClose),
            Some(&Err("round 2: wrk died".into()))
        );
        assert_eq!(h.background_busy, Some(0.5));
        assert_eq!(h.notes.len(), 3);
        assert_eq!(
            h.samples.first(),
            Some(&(Metric::Iperf1, vec![3.0, 1.0, 2.0]))
        );
        assert_eq!(
            h.runs,
            vec![(Metric::Iperf1, vec![2.5, 3.5, 0.5, 1.5, 1.5, 2.5])],
            "every round's runs, pooled"
        );
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
