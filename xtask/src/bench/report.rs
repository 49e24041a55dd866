//! The end-to-end section's report: the Markdown table printed to stdout and the JSON written
//! to target/bench/e2e.json (which the chart is drawn from), plus the table layout the other
//! sections print with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::{json, Value};

use super::{
    load,
    metric::{Metric, ModeResult},
    modes::Mode,
    RunSettings,
};

/// `value / plain`, when both exist.
fn ratio(results: &[ModeResult], r: &ModeResult, metric: Metric) -> Option<f64> {
    let base = results.iter().find(|b| b.mode == Mode::Plain)?;
    let base = *base.value(metric)?.as_ref().ok()?;
    let value = *r.value(metric)?.as_ref().ok()?;
    (base > 0.0).then(|| value / base)
}

fn cell(results: &[ModeResult], r: &ModeResult, metric: Metric) -> String {
    match r.value(metric) {
        _ if r.error.is_some() && r.value(metric).is_none() => "FAILED".into(),
        None => "-".into(),
        Some(Err(_)) => "error".into(),
        Some(Ok(v)) => {
            let mut text = match ratio(results, r, metric) {
                Some(q) => format!("{} ({q:.2})", metric.format(*v)),
                None => metric.format(*v),
            };
            if let Some((min, max)) = r.spread(metric) {
                text.push_str(&format!(" [{}-{}]", metric.format(min), metric.format(max)));
            }
            text
        }
    }
}

pub(super) fn render_table(results: &[ModeResult], run: RunSettings) -> String {
    let RunSettings {
        seconds,
        rounds,
        gro,
    } = run;
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["metric".to_owned()];
    header.extend(results.iter().map(|r| r.mode.to_string()));
    rows.push(header);
    for metric in Metric::ALL {
        let mut row = vec![format!("{} [{}]", metric.label(), metric.unit())];
        row.extend(results.iter().map(|r| cell(results, r, metric)));
        rows.push(row);
    }
    let mut out = format!(
        "end-to-end, value (ratio to plain) [lowest-highest round], {}{seconds} s per iperf3/wrk test, \
         wrk {} thread(s) x {} connections and echo {} x {} B round trips with the whole path \
         on CPU {}{}:\n",
        if rounds > 1 {
            format!("median of {rounds} rounds, ")
        } else {
            String::new()
        },
        load::WRK_THREADS,
        load::WRK_CONNECTIONS,
        load::ECHO_COUNT,
        load::ECHO_SIZE,
        super::lab::PATH_CPU,
        if gro {
            ", every lab interface coalescing what it receives (GRO)"
        } else {
            ""
        }
    );
    out.push_str(&markdown_table(&rows, &[0]));
    out.push_str(
        "Throughput and request rates: higher is better. Round trips: lower is better.\n\
         The new-connection-per-request rate (wrk with `Connection: close`) is the new \
         connections per second.\n",
    );
    if !results.iter().any(|r| r.mode == Mode::Plain) {
        out.push_str("No ratios: `plain` was not among the modes.\n");
    }
    let busy: Vec<String> = results
        .iter()
        .filter_map(|r| Some(format!("{} {:.0}%", r.mode, r.background_busy? * 100.0)))
        .collect();
    if !busy.is_empty() {
        out.push_str(&format!(
            "CPUs busy with the lab idle, just before measuring (other work skews the figures): {}\n",
            busy.join(", ")
        ));
    }
    for metric in Metric::ALL {
        let each: Vec<String> = results
            .iter()
            .filter_map(|r| {
                let cv = r.run_variation(metric)?;
                let n = r.runs_of(metric).len();
                Some(format!("{} {:.1}% ({n} runs)", r.mode, cv * 100.0))
            })
            .collect();
        if !each.is_empty() {
            out.push_str(&format!(
                "{}, run to run (standard deviation / mean over every run of every round): {}\n",
                metric.label(),
                each.join(", ")
            ));
        }
    }
    for r in results {
        for note in &r.notes {
            out.push_str(&format!("note: {}: {note}\n", r.mode));
        }
        if let Some(e) = &r.error {
            out.push_str(&format!("FAILED: {}: {e}\n", r.mode));
        }
        for (metric, value) in &r.values {
            if let Err(e) = value {
                out.push_str(&format!("error: {} / {}: {e}\n", r.mode, metric.label()));
            }
        }
    }
    out
}

pub(super) fn to_json(results: &[ModeResult], run: RunSettings, elapsed: Duration) -> Value {
    let RunSettings {
        seconds,
        rounds,
        gro,
    } = run;
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let metrics: Vec<Value> = Metric::ALL
        .iter()
        .map(|&metric| {
            let per_mode: serde_json::Map<String, Value> = results
                .iter()
                .map(|r| {
                    let v = match r.value(metric) {
                        Some(Ok(v)) => json!({
                            "value": v,
                            "ratio_to_plain": ratio(results, r, metric),
                            "spread": r.spread(metric).map(|(min, max)| json!({
                                "min": min,
                                "max": max,
                                "max_over_min": if min > 0.0 { Some(max / min) } else { None },
                            })),
                            "run_variation": r.run_variation(metric),
                            "rounds": r
                                .samples
                                .iter()
                                .filter(|(m, _)| *m == metric)
                                .flat_map(|(_, v)| v.iter().copied())
                                .collect::<Vec<f64>>(),
                        }),
                        Some(Err(e)) => json!({ "error": e }),
                        None => json!({
                            "error": r.error.clone().unwrap_or_else(|| "not measured".into())
                        }),
                    };
                    (r.mode.name().to_owned(), v)
                })
                .collect();
            json!({
                "key": metric.key(),
                "label": metric.label(),
                "unit": metric.unit(),
                "better": if metric.lower_is_better() { "lower" } else { "higher" },
                "modes": per_mode,
            })
        })
        .collect();
    let failed: serde_json::Map<String, Value> = results
        .iter()
        .filter(|r| r.failed())
        .map(|r| {
            let why = r.error.clone().unwrap_or_else(|| "a metric failed".into());
            (r.mode.name().to_owned(), Value::from(why))
        })
        .collect();
    let busy: serde_json::Map<String, Value> = results
        .iter()
        .map(|r| (r.mode.name().to_owned(), json!(r.background_busy)))
        .collect();
    let notes: serde_json::Map<String, Value> = results
        .iter()
        .filter(|r| !r.notes.is_empty())
        .map(|r| (r.mode.name().to_owned(), json!(r.notes)))
        .collect();
    json!({
        "generated_by": "cargo xtask bench",
        "unix_time": unix_time,
        "duration_s": elapsed.as_secs_f64().round(),
        "kernel": kernel.trim(),
        "cpus": cpus,
        "baseline": Mode::Plain.name(),
        "settings": {
            "seconds_per_test": seconds,
            "rounds": rounds,
            "gro_on_lab_interfaces": gro,
            "wrk_threads": load::WRK_THREADS,
            "wrk_connections": load::WRK_CONNECTIONS,
            "path_cpu_for_requests_and_round_trips": super::lab::PATH_CPU,
            "echo_round_trips": load::ECHO_COUNT,
            "echo_warmup": load::ECHO_WARMUP,
            "echo_message_bytes": load::ECHO_SIZE,
        },
        "modes": results.iter().map(|r| r.mode.name()).collect::<Vec<_>>(),
        "metrics": metrics,
        "failed_modes": failed,
        "background_cpu_busy": busy,
        "notes": notes,
    })
}

pub(super) fn write_json(
    path: &std::path::Path,
    results: &[ModeResult],
    run: RunSettings,
    elapsed: Duration,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(
        path,
        serde_json::to_string_pretty(&to_json(results, run, elapsed))?,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// `rows` as a Markdown table, columns padded to their widest cell (the first left-aligned,
/// the others right-aligned), with a rule under each row listed in `rules_after`.
pub(super) fn markdown_table(rows: &[Vec<String>], rules_after: &[usize]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if rules_after.contains(&i) {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_RUN: RunSettings = RunSettings {
        seconds: 5,
        rounds: 1,
        gro: false,
    };

    fn sample() -> Vec<ModeResult> {
        vec![
            ModeResult {
                mode: Mode::Plain,
                error: None,
                values: vec![
                    (Metric::Iperf1, Ok(10.0)),
                    (Metric::HttpClose, Ok(20000.0)),
                    (Metric::EchoP50, Ok(40.0)),
                ],
                notes: vec![],
                background_busy: Some(0.02),
                samples: vec![(Metric::Iperf1, vec![9.0, 10.0, 12.5])],
                // Mean 10, sample standard deviation 1.
                runs: vec![(Metric::Iperf1, vec![9.0, 10.0, 11.0])],
            },
            ModeResult {
                mode: Mode::Haproxy,
                error: None,
                values: vec![
                    (Metric::Iperf1, Ok(5.0)),
                    (Metric::HttpClose, Err("boom".into())),
                    (Metric::EchoP50, Ok(50.0)),
                ],
                notes: vec!["x".into()],
                background_busy: None,
                samples: vec![],
                runs: vec![],
            },
            ModeResult {
                mode: Mode::EdgeProxy,
                error: Some("agent exited".into()),
                values: vec![],
                notes: vec![],
                background_busy: None,
                samples: vec![],
                runs: vec![],
            },
        ]
    }

    #[test]
    fn table_shows_values_ratios_and_failures() {
        let results = sample();
        let table = render_table(&results, TEST_RUN);
        assert!(table.contains("10.00 (1.00) [9.00-12.50]"), "{table}");
        assert!(table.contains("5.00 (0.50)"), "{table}");
        assert!(table.contains("50.0 (1.25)"), "{table}");
        assert!(table.contains("FAILED: edgeproxy: agent exited"), "{table}");
        assert!(table.contains("error: haproxy / HTTP"), "{table}");
        assert!(
            table.contains("every round): plain 10.0% (3 runs)"),
            "{table}"
        );
    }

    #[test]
    fn json_report_parses_back() {
        let results = sample();
        let text =
            serde_json::to_string_pretty(&to_json(&results, TEST_RUN, Duration::from_secs(3)))
                .unwrap_or_default();
        let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let Some(Value::Array(metrics)) = doc.get("metrics") else {
            panic!("no metrics in {text}");
        };
        let iperf = &metrics[0];
        assert_eq!(
            iperf.pointer("/modes/haproxy/ratio_to_plain"),
            Some(&json!(0.5))
        );
        assert_eq!(
            iperf
                .pointer("/modes/edgeproxy/error")
                .and_then(Value::as_str),
            Some("agent exited")
        );
        assert!(doc.pointer("/failed_modes/haproxy").is_some());
        assert_eq!(
            iperf.pointer("/modes/plain/spread/max_over_min"),
            Some(&json!(12.5 / 9.0))
        );
        assert_eq!(
            iperf.pointer("/modes/plain/run_variation"),
            Some(&json!(0.1))
        );
    }
}
