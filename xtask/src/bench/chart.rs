//! The end-to-end table as a picture: an SVG bar chart of each mode's ratio to `plain` per
//! metric, written beside `e2e.json` from that JSON (so an old run's file can be drawn again).
//! plotters draws it; its SVG backend needs no font files (text is left to the viewer).

use std::path::Path;

use anyhow::Context as _;
use plotters::prelude::*;
use serde_json::Value;

/// Colours per mode, in the table's order (plain first).
const PALETTE: [RGBColor; 6] = [
    RGBColor(150, 150, 150),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];

/// Short names of the metrics under their groups.
fn short(key: &str) -> &str {
    match key {
        "iperf3_1_stream" => "iperf3 1 stream",
        "iperf3_4_streams" => "iperf3 4 streams",
        "http_new_connection_per_request" => "HTTP new conn",
        "http_keepalive" => "HTTP keep-alive",
        "echo_rtt_p50" => "echo RTT p50 (lower better)",
        "echo_rtt_p99" => "echo RTT p99 (lower better)",
        other => other,
    }
}

/// Draws `doc` (what `write_json` wrote) to `path`.
pub fn write_svg(doc: &Value, path: &Path) -> anyhow::Result<()> {
    let modes: Vec<&str> = doc["modes"]
        .as_array()
        .context("no modes in the results")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let metrics = doc["metrics"]
        .as_array()
        .context("no metrics in the results")?;
    let ratios: Vec<Vec<Option<f64>>> = metrics
        .iter()
        .map(|m| {
            modes
                .iter()
                .map(|mode| m["modes"][*mode]["ratio_to_plain"].as_f64())
                .collect()
        })
        .collect();
    // A log scale: round-trip ratios reach tens when a proxy queues, throughput ones stay near
    // 1, and both must be readable on one chart.
    let measured = || ratios.iter().flatten().flatten().copied();
    let top = measured().fold(1.0_f64, f64::max) * 1.6;
    let bottom = measured().fold(1.0_f64, f64::min).min(0.5) * 0.7;
    let labels: Vec<String> = metrics
        .iter()
        .map(|m| short(m["key"].as_str().unwrap_or("?")).to_owned())
        .collect();
    let settings = &doc["settings"];
    let caption = format!(
        "edgeProxy end to end: ratio to plain routing ({} s per test, {} round(s), {} CPUs, kernel {})",
        settings["seconds_per_test"],
        settings["rounds"],
        doc["cpus"],
        doc["kernel"].as_str().unwrap_or("?")
    );

    let root = SVGBackend::new(path, (1100, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let groups = labels.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(14)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..groups, (bottom..top).log_scale())
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Labels only at each group's middle: plotters picks steps of 0.5 for 2 per group.
        .x_labels(labels.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x.fract() - 0.5).abs() < 1e-6 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("value / plain (log scale)")
        .draw()
        .map_err(draw_err)?;
    let width = 0.8 / modes.len().max(1) as f64;
    for (j, mode) in modes.iter().enumerate() {
        let color = PALETTE[j % PALETTE.len()];
        let bar = move |(i, per_mode): (usize, &Vec<Option<f64>>)| {
            let r = per_mode.get(j).copied().flatten()?;
            Some((i as f64 + 0.1 + j as f64 * width, r))
        };
        let bars = ratios
            .iter()
            .enumerate()
            .filter_map(bar)
            .map(move |(x0, r)| {
                Rectangle::new([(x0, bottom), (x0 + width * 0.9, r)], color.filled())
            });
        chart
            .draw_series(bars)
            .map_err(draw_err)?
            .label(*mode)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        let values = ratios
            .iter()
            .enumerate()
            .filter_map(bar)
            .map(move |(x0, r)| Text::new(format!("{r:.2}"), (x0, r * 1.08), ("sans-serif", 10)));
        chart.draw_series(values).map_err(draw_err)?;
    }
    // The baseline: 1.0 is as good as no balancer at all.
    chart
        .draw_series(LineSeries::new(
            [(0.0, 1.0), (groups, 1.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(draw_err)?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

fn draw_err<E: std::error::Error + Send + Sync + 'static>(
    e: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_chart_has_a_bar_per_measured_ratio_and_a_legend() -> anyhow::Result<()> {
        let doc = json!({
            "modes": ["plain", "edgeproxy"],
            "cpus": 2,
            "kernel": "6.18",
            "settings": {"seconds_per_test": 1, "rounds": 1},
            "metrics": [
                {"key": "iperf3_1_stream", "modes": {
                    "plain": {"ratio_to_plain": 1.0}, "edgeproxy": {"ratio_to_plain": 0.93}}},
                {"key": "echo_rtt_p50", "modes": {
                    "plain": {"ratio_to_plain": 1.0}, "edgeproxy": {"error": "failed"}}},
            ],
        });
        let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("e2e.svg");
        write_svg(&doc, &path)?;
        let svg = std::fs::read_to_string(&path)?;
        std::fs::remove_dir_all(&dir)?;
        assert!(svg.starts_with("<svg"), "{svg}");
        // plain: two bars and its legend swatch; edgeproxy: one bar (the failed ratio has
        // none) and its swatch.
        let rects = |fill: &str| {
            svg.lines()
                .filter(|l| l.starts_with("<rect") && l.contains(&format!("fill=\"{fill}\"")))
                .count()
        };
        assert_eq!(rects("#969696"), 3, "{svg}");
        assert_eq!(rects("#1F77B4"), 2, "{svg}");
        for text in ["edgeproxy", "iperf3 1 stream", "echo RTT p50"] {
            assert!(svg.contains(text), "no {text:?} in {svg}");
        }
        Ok(())
    }
}
