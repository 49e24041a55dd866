//! `cargo xtask run`, the whole v2 edge in one lab, as a user runs it (in text mode, since its
//! output is a pipe here): every client reaches its nearest POP and its tier's backend, the
//! screen shows each POP's real health view, a POP killed moves its clients to the other POP
//! (timed on the screen), and Ctrl-C leaves nothing behind.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::common::{bin, TestResult};

/// (country, nearest POP, the backend its geo tier picks there): the ISP of the Americas is
/// near the sa POP, the Europe-Asia one near the eu POP; each country's own backend, else its
/// region's (AR -> br, CA -> us, FR -> de, AU -> jp).
const HOME: [(&str, &str, &str); 8] = [
    ("BR", "pop-sa", "br"),
    ("AR", "pop-sa", "br"),
    ("US", "pop-sa", "us"),
    ("CA", "pop-sa", "us"),
    ("DE", "pop-eu", "de"),
    ("FR", "pop-eu", "de"),
    ("JP", "pop-eu", "jp"),
    ("AU", "pop-eu", "jp"),
];

/// A `landed:` line as (country, POP, backend) triples.
fn landed(line: &str) -> Option<Vec<(String, String, String)>> {
    let rest = line.strip_prefix("landed: ")?;
    rest.split("; ")
        .map(|c| {
            let mut w = c.split_whitespace().map(str::to_owned);
            Some((w.next()?, w.next()?, w.next()?))
        })
        .collect()
}

fn matches(seen: &[(String, String, String)], want: &[(&str, &str, &str)]) -> bool {
    seen.len() == want.len()
        && seen
            .iter()
            .zip(want)
            .all(|(s, w)| s.0 == w.0 && s.1 == w.1 && s.2 == w.2)
}

struct Run {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Run {
    /// Reads lines until `pred` accepts one (returned), or fails after `timeout`.
    fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) else {
                continue;
            };
            self.seen.push(line.clone());
            if pred(&line) {
                return Ok(line);
            }
        }
        let tail = self.seen.len().saturating_sub(150);
        Err(format!(
            "expected {what} within {timeout:?}; the last lines:\n{}",
            self.seen[tail..].join("\n")
        ))
    }
}

/// Seconds after `label` in an event line (`...; clients moved after 1.04 s; ...`).
fn took(line: &str, label: &str) -> Option<f64> {
    let (_, rest) = line.split_once(&format!("{label} after "))?;
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn demo_world_routes_clients_home_fails_over_and_ctrl_c_removes_everything() -> TestResult {
    let mut child = Command::new(bin("EDGE_XTASK_BIN"))
        .args(["run", "--no-setup"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel::<String>();
    let tx_err = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx_err.send(format!("stderr: {line}"));
        }
    });
    let mut run = Run {
        child,
        lines: rx,
        seen: Vec::new(),
    };
    let result = scenario(&mut run);
    // What a terminal's Ctrl-C sends, whatever the scenario found.
    // SAFETY: plain kill(2) on our own child.
    let rc = unsafe { libc::kill(run.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "sending SIGINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = run.child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.child.kill();
            panic!("xtask run did not stop within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    run.seen.extend(run.lines.try_iter());
    let run_id = result?;
    assert!(
        status.success(),
        "xtask run exited with {status}:\n{}",
        run.seen.join("\n")
    );
    assert!(
        run.seen.iter().any(|l| l.contains("nothing left behind")),
        "xtask run should confirm the teardown:\n{}",
        run.seen.join("\n")
    );
    let left = edge_tests::find_leftovers(Some(&run_id));
    assert!(left.is_empty(), "run {run_id} left objects behind:\n{left}");
    Ok(())
}

/// Up, home, a POP killed, clients moved; returns the run id.
fn scenario(run: &mut Run) -> Result<String, Box<dyn std::error::Error>> {
    let id_line = run.until("the run id", Duration::from_secs(60), |l| {
        l.starts_with("lab run id: ")
    })?;
    let run_id = id_line.trim_start_matches("lab run id: ").trim().to_owned();
    let ready = run.until("the world ready", Duration::from_secs(120), |l| {
        l.starts_with("world ready in ")
    })?;
    println!("xtask run: {ready}");
    // Every client at its nearest POP, on its tier's backend, in one sample.
    run.until("every client at home", Duration::from_secs(30), |l| {
        landed(l).is_some_and(|s| matches(&s, &HOME))
    })?;
    // Each POP's health view of a backend: up, with the time it was last checked.
    let health = run.until(
        "a backend row with real health",
        Duration::from_secs(30),
        |l| {
            let cells: Vec<&str> = l.trim_matches('│').split_whitespace().collect();
            cells.first() == Some(&"br")
                && cells.iter().filter(|c| **c == "up").count() == 2
                && cells.iter().filter(|c| **c == "ago").count() == 2
        },
    )?;
    assert!(!health.contains("never"), "{health}");
    run.until(
        "both BGP sessions of both POPs established",
        Duration::from_secs(30),
        |l| l.starts_with("│pop-") && l.matches("Established").count() == 2,
    )?;

    // The sa POP's host dies: BFD tells the routers, and its clients land on the eu POP.
    let stdin = run.child.stdin.as_mut().ok_or("no stdin")?;
    stdin.write_all(b"kill-pop pop-sa\n")?;
    stdin.flush()?;
    let event = run.until("the POP kill's timings", Duration::from_secs(30), |l| {
        l.starts_with("event: ") && l.contains("kill POP pop-sa")
    })?;
    println!("xtask run: {event}");
    let (withdrawn, moved) = (
        took(&event, "route withdrawn").ok_or_else(|| format!("no withdraw time: {event}"))?,
        took(&event, "clients moved").ok_or_else(|| format!("no move time: {event}"))?,
    );
    // BFD at 300 ms x 3 against a 9 s hold time: well under the hold time.
    assert!(
        withdrawn < 5.0 && moved < 8.0,
        "expected BFD to move the route within seconds: {event}"
    );
    let moved_home: Vec<(&str, &str, &str)> =
        HOME.iter().map(|(c, _, b)| (*c, "pop-eu", *b)).collect();
    run.until("every client at the eu POP", Duration::from_secs(15), |l| {
        landed(l).is_some_and(|s| matches(&s, &moved_home))
    })?;
    Ok(run_id)
}
