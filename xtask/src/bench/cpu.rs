//! How busy the machine was with work that is not the benchmark's: both the end-to-end and the
//! overlay sections sample it with their lab idle, just before measuring, and call it out. And
//! where a measurement's own work ran: each CPU's softirq and busy shares over a test, which
//! tell a round whose streams shared the CPUs from one whose streams piled onto one.

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

/// Every CPU's time counters (user nice system idle iowait irq softirq steal), in jiffies.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PerCpu(Vec<[u64; 8]>);

/// One CPU's shares of a window: softirq (the data path's packet work, wherever it ran) and
/// busy (anything but idle and iowait).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct CpuShare {
    pub softirq: f64,
    pub busy: f64,
}

impl PerCpu {
    pub(super) fn sample() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        let cpus: Vec<[u64; 8]> = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .map(|l| counters(l).map(|(_, c)| c))
            .collect::<Option<_>>()?;
        (!cpus.is_empty()).then_some(Self(cpus))
    }

    /// Each CPU's shares from `self` to `later`.
    pub(super) fn shares_until(&self, later: &PerCpu) -> Vec<CpuShare> {
        self.0
            .iter()
            .zip(&later.0)
            .map(|(a, b)| {
                let d: Vec<u64> = a.iter().zip(b).map(|(x, y)| y.saturating_sub(*x)).collect();
                let total: u64 = d.iter().sum();
                let share = |n: u64| {
                    if total == 0 {
                        0.0
                    } else {
                        n as f64 / total as f64
                    }
                };
                CpuShare {
                    softirq: share(d[6]),
                    busy: share(total - d[3] - d[4]),
                }
            })
            .collect()
    }
}

/// Shares as `cpu0 softirq 41% busy 97%, cpu1 ...`.
pub(super) fn describe(shares: &[CpuShare]) -> String {
    shares
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "cpu{i} softirq {:.0}% busy {:.0}%",
                s.softirq * 100.0,
                s.busy * 100.0
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A /proc/stat CPU line's name and its first eight counters: user nice system idle iowait irq
/// softirq steal (guest time is already inside user).
fn counters(line: &str) -> Option<(&str, [u64; 8])> {
    let mut fields = line.split_whitespace();
    let name = fields.next()?;
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some((name, v.try_into().ok()?))
}

/// (busy, total) jiffies from the aggregate `cpu` line of /proc/stat; busy is all but idle and
/// iowait.
fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let ("cpu", v) = counters(line)? else {
        return None;
    };
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total))
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

    #[test]
    fn per_cpu_shares() {
        let before =
            "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\nintr 1";
        let after = "cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 0 10 0 0 0 80 0 0 0\ncpu1 0 0 10 80 10 0 0 0 0 0\nintr 2";
        let (Some(a), Some(b)) = (PerCpu::parse(before), PerCpu::parse(after)) else {
            panic!("unparsed");
        };
        let shares = a.shares_until(&b);
        assert_eq!(
            shares,
            vec![
                CpuShare {
                    softirq: 0.8,
                    busy: 1.0
                },
                CpuShare {
                    softirq: 0.0,
                    busy: 0.1
                },
            ]
        );
        assert_eq!(
            describe(&shares),
            "cpu0 softirq 80% busy 100%, cpu1 softirq 0% busy 10%"
        );
        assert_eq!(PerCpu::parse("cpu  1 2 3\nintr 1"), None);
    }
}
