//! How busy the machine was with work that is not the benchmark's: both the end-to-end and the
//! overlay sections sample it with their lab idle, just before measuring, and call it out.

use std::time::Duration;

/// Share of all CPUs not idle (nor waiting for I/O) over `window`, from /proc/stat.
pub(super) fn background_busy(window: Duration) -> Option<f64> {
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_cpu_line(stat.lines().next()?)
    };
    let (busy0, total0) = sample()?;
    std::thread::sleep(window);
    let (busy1, total1) = sample()?;
    let total = total1.checked_sub(total0)?;
    (total > 0).then(|| busy1.saturating_sub(busy0) as f64 / total as f64)
}

/// (busy, total) jiffies from the aggregate `cpu` line of /proc/stat: user nice system idle
/// iowait irq softirq steal (guest time is already inside user).
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_line() {
        // Recorded from /proc/stat on the 2-core lab machine.
        let line = "cpu  113259 0 38441 98544 3429 0 11756 1226 0 0";
        let busy = 113259 + 38441 + 11756 + 1226;
        assert_eq!(parse_cpu_line(line), Some((busy, busy + 98544 + 3429)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_cpu_line("cpu  1 2 x"), None);
    }
}
