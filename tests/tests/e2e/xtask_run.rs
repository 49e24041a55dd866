//! `cargo xtask run` shows counters moving, and Ctrl-C leaves nothing behind.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::common::{bin, TestResult};

/// The verdict and packets of an `ipv4 tcp` row of a printed status table, if it is one.
/// Translated packets are `pass` from the XDP hook (the kernel routes them) and `redirect`
/// from the TC hook (the program forwards them).
fn tcp_packets(line: &str) -> Option<(String, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    match fields.as_slice() {
        ["ipv4", "tcp", verdict, packets, _bytes] => {
            Some(((*verdict).to_owned(), packets.parse().ok()?))
        }
        _ => None,
    }
}

#[test]
fn demo_lab_counts_traffic_and_ctrl_c_removes_everything() -> TestResult {
    let mut child = Command::new(bin("EDGE_XTASK_BIN"))
        .args(["run", "--no-setup"])
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

    let mut seen = Vec::new();
    let mut run_id = None;
    let mut tcp_counts: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    let grew = |counts: &std::collections::BTreeMap<String, Vec<u64>>| {
        counts
            .values()
            .any(|c| c.len() >= 3 && c.windows(2).all(|w| w[1] > w[0]))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !grew(&tcp_counts) && Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(id) = line.strip_prefix("lab run id: ") {
            run_id = Some(id.trim().to_owned());
        }
        if let Some((verdict, n)) = tcp_packets(&line) {
            tcp_counts.entry(verdict).or_default().push(n);
        }
        seen.push(line);
    }
    let run_id = run_id.ok_or_else(|| format!("no run id printed:\n{}", seen.join("\n")))?;
    assert!(
        grew(&tcp_counts),
        "expected an ipv4/tcp counter to grow over three tables, saw {tcp_counts:?}:\n{}",
        seen.join("\n")
    );

    // What a terminal's Ctrl-C sends.
    // SAFETY: plain kill(2) on our own child.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0, "sending SIGINT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("xtask run did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    seen.extend(rx.try_iter());
    assert!(
        status.success(),
        "xtask run exited with {status}:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter().any(|l| l.contains("nothing left behind")),
        "xtask run should confirm the teardown:\n{}",
        seen.join("\n")
    );
    let left = edge_lab::find_leftovers(Some(&run_id));
    assert!(left.is_empty(), "run {run_id} left objects behind:\n{left}");
    Ok(())
}
