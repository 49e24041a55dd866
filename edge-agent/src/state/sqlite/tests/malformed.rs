//! Ten thousand malformed rows of every kind beside valid ones: each rejected with a reason
//! that says why, the valid ones all kept, and memory flat over repeated snapshots.

use rusqlite::Connection;

use crate::state::{
    testutil::{rss_kib, TempDir},
    SqliteState,
};

/// A generated malformed row: its key, what it breaks, and the word the reason must hold.
struct Bad {
    table: &'static str,
    key: String,
    sql: String,
    expect: &'static str,
}

fn malformed(i: usize) -> Bad {
    let id = format!("bad-{i:05}");
    let row = |cols: &str, vals: String| {
        format!("INSERT INTO backends (id, service_id, region, country, address, port{cols}) VALUES ('{id}', 'svc-{}', 'sa', 'BR', {vals})", i % 10)
    };
    let (sql, expect) = match i % 20 {
        0 => (row("", "'10.50.1.1', 80".into()), "IPv4"),
        1 => (row("", "'not-an-address', 80".into()), "internal"),
        2 => (row("", format!("'fd10::{:x}', 0", i)), "port 0"),
        3 => (row("", format!("'fd10::{:x}', 70000", i)), "port 70000"),
        4 => (row(", weight", format!("'fd10::{:x}', 80, 1001", i)), "weight 1001"),
        5 => (row(", weight", format!("'fd10::{:x}', 80, -3", i)), "weight -3"),
        6 => (
            row(", soft_limit, hard_limit", format!("'fd10::{:x}', 80, 500, 10", i)),
            "above hard_limit",
        ),
        7 => (
            format!("INSERT INTO backends (id, service_id, region, country, address, port) VALUES ('{id}', 'svc-{}', 'sa', 'Brazil', 'fd10::{:x}', 80)", i % 10, i),
            "country",
        ),
        8 => (
            format!("INSERT INTO backends (id, service_id, region, country, address, port) VALUES ('{id}', 'svc-{}', 'South America', 'BR', 'fd10::{:x}', 80)", i % 10, i),
            "region",
        ),
        9 => (
            format!("INSERT INTO backends (id, service_id, region, country, address, port) VALUES ('{id}', 'missing', 'sa', 'BR', 'fd10::{:x}', 80)", i),
            "unknown service",
        ),
        10 => (row(", enabled", format!("'fd10::{:x}', 80, 'yes'", i)), "enabled"),
        11 => (row(", draining", format!("'fd10::{:x}', 80, 7", i)), "draining"),
        12 => (row(", metadata", format!("'fd10::{:x}', 80, 'not json'", i)), "metadata"),
        13 => (row("", format!("'fd10::{:x}', 'eighty'", i)), "port must be an integer"),
        14 => (row("", "'-bad-.internal', 80".into()), "DNS label"),
        15 => (row("", "X'deadbeef', 80".into()), "address must be text"),
        16 => (
            format!("INSERT INTO services (id, vip, port) VALUES ('{id}', '999.1.1.1', 80)"),
            "vip",
        ),
        17 => (
            format!("INSERT INTO services (id, vip, port, proto) VALUES ('{id}', '198.51.100.{}', {}, 'udp')", i % 250, 1000 + i),
            "tcp only",
        ),
        18 => (
            format!("INSERT INTO health (pop_id, backend_id, status) VALUES ('pop-1', '{id}', 'sick')"),
            "status",
        ),
        _ => (
            format!("INSERT INTO pops (id, region, overlay_addr) VALUES ('{id}', 'sa', '10.50.0.{}')", i % 250),
            "IPv4",
        ),
    };
    let table = match i % 20 {
        16 | 17 => "services",
        18 => "health",
        19 => "pops",
        _ => "backends",
    };
    let key = if table == "health" {
        format!("pop-1/{id}")
    } else {
        id
    };
    Bad {
        table,
        key,
        sql,
        expect,
    }
}

#[test]
fn ten_thousand_malformed_rows_are_rejected_and_memory_stays_flat() -> anyhow::Result<()> {
    const BAD: usize = 10_000;
    const GOOD: usize = 2_000;
    let dir = TempDir::new("malformed")?;
    let path = dir.path().join("routing.db");
    let state = SqliteState::open(&path)?;
    let mut conn = Connection::open(&path)?;
    let tx = conn.transaction()?;
    for s in 0..10 {
        tx.execute(
            "INSERT INTO services (id, vip, port) VALUES (?1, ?2, 80)",
            (format!("svc-{s}"), format!("203.0.113.{}", s + 1)),
        )?;
    }
    for g in 0..GOOD {
        tx.execute(
            "INSERT INTO backends (id, service_id, region, country, address, port, weight) \
             VALUES (?1, ?2, 'eu', 'DE', ?3, 8080, ?4)",
            (
                format!("good-{g:05}"),
                format!("svc-{}", g % 10),
                format!("fd20::{g:x}"),
                (g % 1001) as i64,
            ),
        )?;
        // Valid health rows for half of them, from two POPs.
        if g % 2 == 0 {
            tx.execute(
                "INSERT INTO health (pop_id, backend_id, status, rtt_us, checked_at) \
                 VALUES (?1, ?2, 'up', 900, 1700000000)",
                (format!("pop-{}", g % 4 / 2), format!("good-{g:05}")),
            )?;
        }
    }
    let bad: Vec<Bad> = (0..BAD).map(malformed).collect();
    for b in &bad {
        tx.execute(&b.sql, [])?;
    }
    tx.commit()?;

    let started = std::time::Instant::now();
    let (snap, rejected) = state.snapshot()?;
    let first = started.elapsed();

    let good_ids: Vec<String> = (0..GOOD).map(|g| format!("good-{g:05}")).collect();
    let got: Vec<&str> = snap.backends.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(got, good_ids, "every valid backend, and nothing else");
    assert_eq!(snap.services.len(), 10);
    assert_eq!(snap.health.len(), GOOD / 2);
    assert_eq!(rejected.len(), BAD, "one rejection per malformed row");
    let by_key: std::collections::HashMap<(&str, &str), &str> = rejected
        .iter()
        .map(|r| ((r.table, r.key.as_str()), r.reason.as_str()))
        .collect();
    for b in &bad {
        let Some(reason) = by_key.get(&(b.table, b.key.as_str())) else {
            panic!("{} {} was not rejected ({})", b.table, b.key, b.sql);
        };
        assert!(
            reason.contains(b.expect) && !reason.contains('\n'),
            "{} {}: reason {reason:?} should mention {:?}",
            b.table,
            b.key,
            b.expect
        );
    }

    // Memory: repeated snapshots must not accumulate.
    for _ in 0..5 {
        state.snapshot()?;
    }
    let before = rss_kib().unwrap_or(0);
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = std::time::Instant::now();
        let (snap, rejected) = state.snapshot()?;
        times.push(t.elapsed());
        assert_eq!((snap.backends.len(), rejected.len()), (GOOD, BAD));
    }
    let after = rss_kib().unwrap_or(0);
    times.sort();
    println!(
        "malformed rows: {} rows per snapshot, first {first:?}, median {:?}; \
         RSS after 5 warm-up snapshots {before} KiB, after 50 more {after} KiB ({:+} KiB)",
        GOOD + BAD + 10 + GOOD / 2,
        times[times.len() / 2],
        after as i64 - before as i64,
    );
    // A leak of even one snapshot's rows per round would add hundreds of MiB over 50
    // rounds; this bound leaves room for the other tests running in this process.
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB over 50 snapshots"
    );
    Ok(())
}
