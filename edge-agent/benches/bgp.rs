//! The BGP decoder under mutation: 1,000,000 mutated messages (bit flips, overwrites,
//! truncations, edge header values) through framing and decoding, each checked against the
//! answer RFC 4271 §6 names: no panic, a decoded message or the right NOTIFICATION. Printed
//! beside the cost of only making the mutations, measured in the same run.
//!
//! `cargo bench -p edge-agent --bench bgp [-- --json PATH]`

use std::time::Instant;

use edge_agent::testing::bgp_fuzz;

const MESSAGES: usize = 1_000_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = bgp_fuzz::corpus();
    let mut rng = fastrand::Rng::with_seed(2385);
    let start = Instant::now();
    let mut bytes = 0usize;
    for i in 0..MESSAGES {
        bytes += bgp_fuzz::mutate(&mut rng, &corpus[i % corpus.len()]).len();
    }
    let mutate_only = start.elapsed();

    let mut rng = fastrand::Rng::with_seed(2385);
    let (mut framed, mut header_errors, mut incomplete) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    for i in 0..MESSAGES {
        let m = bgp_fuzz::mutate(&mut rng, &corpus[i % corpus.len()]);
        match std::panic::catch_unwind(|| bgp_fuzz::check(&m)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("message {i}: {e}").into()),
            Err(_) => return Err(format!("message {i} panicked the decoder: {m:02x?}").into()),
        }
        match bgp_fuzz::expect(&m) {
            bgp_fuzz::Expect::Body(_) => framed += 1,
            bgp_fuzz::Expect::Header(_) => header_errors += 1,
            bgp_fuzz::Expect::Incomplete => incomplete += 1,
        }
    }
    let checked = start.elapsed();
    let per_msg_ns = (checked.saturating_sub(mutate_only)).as_nanos() as f64 / MESSAGES as f64;
    println!(
        "  {MESSAGES} mutated messages ({bytes} bytes): {framed} framed (decoded or a body NOTIFICATION), \
         {header_errors} header NOTIFICATIONs, {incomplete} incomplete; no panic, every answer right"
    );
    println!(
        "  {:.2} s in all ({:.2} s of it making mutations): {per_msg_ns:.0} ns per message decoded and checked",
        checked.as_secs_f64(),
        mutate_only.as_secs_f64()
    );
    if let Some(path) = std::env::args().skip_while(|a| a != "--json").nth(1) {
        let doc = serde_json::json!({
            "messages": MESSAGES,
            "framed": framed,
            "header_errors": header_errors,
            "incomplete": incomplete,
            "seconds": checked.as_secs_f64(),
            "mutate_only_seconds": mutate_only.as_secs_f64(),
            "ns_per_message": per_msg_ns,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}
