//! The overlay section's report: the table printed to stdout (ratios to plain WireGuard, and
//! the data plane's over kernel routing) and the JSON written to target/bench/overlay.json.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};

use super::{
    results::{Line, Results, Test, DATA_PLANE_RATIOS},
    topology::{deployment, WG_MTU},
    Settings,
};
use crate::bench::{report::markdown_table, rounds::median};

fn cell(results: &Results, line: Line, test: Test) -> String {
    let Some(r) = results.line(line) else {
        return "-".into();
    };
    match r.value(test) {
        None if !r.errors.is_empty() => "FAILED".into(),
        None => "-".into(),
        Some(Err(_)) => "error".into(),
        Some(Ok(v)) => match results.ratio(line, Line::PlainWg, test) {
            Some(q) => format!("{v:.2} ({q:.2})"),
            None => format!("{v:.2}"),
        },
    }
}

pub(super) fn render_table(results: &Results, settings: Settings) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["path".to_owned()];
    header.extend(Test::ALL.iter().map(|t| format!("iperf3, {}", t.label())));
    rows.push(header);
    for line in Line::ALL {
        let mut row = vec![line.label().to_owned()];
        row.extend(Test::ALL.iter().map(|&t| cell(results, line, t)));
        rows.push(row);
    }
    for (line, base) in DATA_PLANE_RATIOS {
        let mut row = vec![format!(
            "data plane over kernel routing, ({})/({})",
            line.short(),
            base.short()
        )];
        row.extend(Test::ALL.iter().map(|&t| {
            results
                .ratio(line, base, t)
                .map_or_else(|| "-".to_owned(), |q| format!("{q:.2}"))
        }));
        rows.push(row);
    }
    let mut out = format!(
        "overlay throughput, Gbit/s (ratio to plain WireGuard, line a), {} s per iperf3 test{}:\n",
        settings.seconds,
        if settings.rounds > 1 {
            format!(
                ", median of {} rounds (phases in alternating order)",
                settings.rounds
            )
        } else {
            String::new()
        }
    );
    out.push_str(&markdown_table(&rows, &[0, Line::ALL.len()]));
    out.push_str(
        "Reverse: the backend sends (iperf3 --reverse). Lines a and b run between two backend \
         hosts; d, c and c6 from a client through the POP to one of them.\n",
    );
    for w in &results.wireguard {
        let _ = writeln!(out, "WireGuard: {w}");
    }
    let busy: Vec<String> = results
        .lines
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{} {:.0}%",
                r.line.short(),
                r.background_busy? * 100.0
            ))
        })
        .collect();
    if !busy.is_empty() {
        let _ = writeln!(
            out,
            "CPUs busy with the path idle, just before measuring: {}",
            busy.join(", ")
        );
    }
    for r in &results.lines {
        let parts: Vec<String> = Test::ALL
            .iter()
            .filter_map(|&t| {
                let n: Vec<f64> = r.samples(t).iter().map(|(_, n)| *n).collect();
                Some(format!("{:.0} ({})", median(&n)?, t.label()))
            })
            .collect();
        if !parts.is_empty() {
            let _ = writeln!(
                out,
                "note: ({}) iperf3 retransmits{}: {}",
                r.line.short(),
                if settings.rounds > 1 { ", median" } else { "" },
                parts.join(", ")
            );
        }
    }
    for problem in results.failed() {
        let _ = writeln!(out, "FAILED: {problem}");
    }
    out
}

pub(super) fn to_json(results: &Results, settings: Settings, elapsed: Duration) -> Value {
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let lines: Vec<Value> = results
        .lines
        .iter()
        .map(|r| {
            let tests: serde_json::Map<String, Value> = Test::ALL
                .iter()
                .map(|&t| {
                    let v = match r.value(t) {
                        Some(Ok(v)) => json!({
                            "gbit_per_s": v,
                            "ratio_to_plain_wireguard": results.ratio(r.line, Line::PlainWg, t),
                            "rounds": r.samples(t).iter().map(|(g, _)| *g).collect::<Vec<f64>>(),
                            "retransmits": r.samples(t).iter().map(|(_, n)| *n).collect::<Vec<f64>>(),
                        }),
                        Some(Err(e)) => json!({ "error": e }),
                        None => json!({
                            "error": r.errors.first().cloned().unwrap_or_else(|| "not measured".into())
                        }),
                    };
                    (t.key().to_owned(), v)
                })
                .collect();
            json!({
                "key": r.line.key(),
                "label": r.line.label(),
                "background_cpu_busy": r.background_busy,
                "errors": r.errors,
                "tests": tests,
            })
        })
        .collect();
    let data_plane: serde_json::Map<String, Value> = DATA_PLANE_RATIOS
        .iter()
        .map(|&(line, base)| {
            let per_test: serde_json::Map<String, Value> = Test::ALL
                .iter()
                .map(|&t| (t.key().to_owned(), json!(results.ratio(line, base, t))))
                .collect();
            (
                format!("{}_over_{}", line.short(), base.short()),
                Value::Object(per_test),
            )
        })
        .collect();
    json!({
        "generated_by": "cargo xtask bench --only overlay",
        "unix_time": unix_time,
        "duration_s": elapsed.as_secs_f64().round(),
        "kernel": kernel.trim(),
        "cpus": cpus,
        "wireguard": results.wireguard,
        "baseline": Line::PlainWg.key(),
        "settings": {
            "seconds_per_test": settings.seconds,
            "rounds": settings.rounds,
            "wireguard_mtu": WG_MTU,
            "deployment": deployment(),
        },
        "lines": lines,
        "data_plane_over_kernel_routing": data_plane,
        "failed": results.failed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_ratios_to_plain_wireguard_and_of_the_data_plane() {
        let mut results = Results::new(1);
        let set = |results: &mut Results, line, v: f64| {
            if let Some(r) = results.line_mut(line) {
                for t in Test::ALL {
                    r.push(t, (v, 0.0));
                }
            }
        };
        set(&mut results, Line::PlainWg, 2.0);
        set(&mut results, Line::Agents, 1.9);
        set(&mut results, Line::Routed, 1.6);
        set(&mut results, Line::DataPlane4, 0.8);
        results.fail(&[Line::DataPlane6], 1, &anyhow::anyhow!("agent exited"));
        let settings = Settings {
            seconds: 5,
            rounds: 1,
        };
        let table = render_table(&results, settings);
        assert!(table.contains("2.00 (1.00)"), "{table}");
        assert!(table.contains("1.90 (0.95)"), "{table}");
        assert!(
            table.contains("| data plane over kernel routing, (c)/(d)"),
            "{table}"
        );
        assert!(table.contains("0.80 (0.40)"), "{table}");
        assert!(table.contains("FAILED: (c6)"), "{table}");
        let doc = to_json(&results, settings, Duration::from_secs(1));
        assert_eq!(
            doc.pointer("/data_plane_over_kernel_routing/c_over_d/iperf3_1_stream"),
            Some(&json!(0.5))
        );
        assert!(doc
            .pointer("/lines/4/tests/iperf3_1_stream/error")
            .is_some());
    }
}
