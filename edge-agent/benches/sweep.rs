//! The agent's flow sweeper over a full table: 500,000 connections (1,000,000 entries, both
//! directions) in a flow table of the default size. Time and peak heap of one sweep, beside a
//! plain copy of the table through the same batch reads (what any walk of it costs). Needs root.
//!
//! `cargo bench -p edge-agent --bench sweep [-- --json PATH]`

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use aya::maps::{HashMap as BpfHashMap, IterableMap as _};
use edge_agent::{
    config::FlowConfig, dataplane::batch, dataplane::maps::flows, dataplane::maps::flows::Sweep,
    dataplane::programs, dataplane::programs::MapSizes,
};
use edge_common::{
    flow::{FLOW_REVERSE, TCP_ACK, TCP_SYN},
    ipv4_mapped, names, FlowKey, FlowValue,
};

type Error = Box<dyn std::error::Error>;

const CONNECTIONS: u32 = 500_000;

/// The system allocator, counting bytes in use and their peak.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, as given.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as allocated above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; its time in ms and the peak heap it added, in MB.
fn measured<T>(f: impl FnOnce() -> Result<T, Error>) -> Result<(f64, f64), Error> {
    let base = IN_USE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let out = f()?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let peak = PEAK.load(Ordering::Relaxed) - base;
    drop(out);
    Ok((ms, peak as f64 / 1e6))
}

fn main() -> Result<(), Error> {
    let json_path = std::env::args().skip_while(|a| a != "--json").nth(1);
    let sizes = MapSizes {
        flows: 1 << 20,
        ..MapSizes::default()
    };
    let mut ebpf = programs::load_object(None, sizes)?;
    let mut table: BpfHashMap<_, FlowKey, FlowValue> =
        BpfHashMap::try_from(ebpf.map_mut(names::FLOWS).ok_or("no FLOWS")?)?;
    let overlay = [0xfd, 0, 0, 0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let backend = [0xfd, 0, 0, 0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let vip = ipv4_mapped([198, 18, 0, 10]);
    let now = flows::monotonic_ns();
    let filled = Instant::now();
    for i in 0..CONNECTIONS {
        let client = ipv4_mapped((0x0a00_0000 + i / 50).to_be_bytes());
        let (sport, port) = ((1024 + i % 50) as u16, (10_000 + i % 50_000) as u16);
        let forward = FlowKey {
            src: client,
            dst: vip,
            sport: sport.to_be(),
            dport: 80u16.to_be(),
        };
        let out = FlowValue {
            new_src: overlay,
            new_dst: backend,
            new_sport: port.to_be(),
            new_dport: 8080u16.to_be(),
            backend_id: i % 3,
            tcp_flags: TCP_SYN | TCP_ACK,
            created_ns: now,
            last_seen_ns: now,
            ..FlowValue::default()
        };
        let back = FlowValue {
            new_src: vip,
            new_dst: client,
            new_sport: forward.dport,
            new_dport: forward.sport,
            flags: FLOW_REVERSE,
            ..out
        };
        table.insert(forward, out, 0)?;
        table.insert(out.partner_key(), back, 0)?;
    }
    let fill_s = filled.elapsed().as_secs_f64();
    let config = FlowConfig::default();
    let (copy_ms, copy_mb) = measured(|| Ok(batch::entries::<FlowKey, FlowValue>(table.map())?))?;
    let mut report = None;
    let (sweep_ms, sweep_mb) = measured(|| {
        let (r, listing) = flows::sweep(
            &table,
            flows::Table::Established,
            &config,
            flows::monotonic_ns(),
            Sweep::Expire,
        )?;
        report = Some(r);
        Ok(listing)
    })?;
    let report = report.ok_or("no sweep report")?;
    if report.connections != u64::from(CONNECTIONS) || report.expired != 0 {
        return Err(format!(
            "the sweep saw {} connections and expired {}, not {CONNECTIONS} and 0",
            report.connections, report.expired
        )
        .into());
    }
    println!(
        "{:<52} {:>9} {:>10}",
        "flow table, 1,000,000 entries (500,000 connections)", "ms", "peak MB"
    );
    println!(
        "{:<52} {copy_ms:>9.0} {copy_mb:>10.1}",
        "copy of every entry (baseline)"
    );
    println!(
        "{:<52} {sweep_ms:>9.0} {sweep_mb:>10.1}",
        "sweep (state, expiry, per-backend counts)"
    );
    println!(
        "sweep / copy: {:.2}x time, {:.2}x memory; filling the table took {fill_s:.1} s",
        sweep_ms / copy_ms,
        sweep_mb / copy_mb
    );
    if let Some(path) = json_path {
        let doc = serde_json::json!({
            "entries": report.entries,
            "copy_ms": copy_ms,
            "copy_mb": copy_mb,
            "sweep_ms": sweep_ms,
            "sweep_mb": sweep_mb,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
