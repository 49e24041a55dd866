//! Every pinned map carries BTF that names its key and value fields, so `bpftool map dump`
//! prints them by name; `edge-agent maps` lists them all.

use edge_agent::cli::maps::MAPS;
use edge_tests::{
    bpffs_pin_dir,
    pop_lab::{agent_config, start_agent, topology},
};

use super::common::{agent_bin, echo_backends, tear_down, TestResult};

#[test]
fn every_pinned_map_has_btf_with_named_fields() -> TestResult {
    let lab = topology("maps", 1).up()?;
    let _servers = echo_backends(&lab, 1)?;
    let agent = start_agent(
        &lab,
        &agent_bin(),
        &agent_config(1).to_toml()?,
        &["--reset"],
    )?;
    let pins = bpffs_pin_dir(lab.ns("pop").name());
    let out = std::process::Command::new(agent_bin())
        .arg("--bpffs-root")
        .arg(&pins)
        .args(["maps", "--output", "json"])
        .output()?;
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(rows.len(), MAPS.len());
    for (row, doc) in rows.iter().zip(MAPS) {
        assert_eq!(row["name"], doc.name);
        assert_eq!(row["pinned"], true, "{row}");
        let path = row["path"].as_str().ok_or("no path")?;
        let btf = std::process::Command::new("bpftool")
            .args(["btf", "dump", "map", "pinned", path, "kv", "format", "c"])
            .output()?;
        let text = String::from_utf8_lossy(&btf.stdout);
        assert!(
            btf.status.success(),
            "{}: {}",
            doc.name,
            String::from_utf8_lossy(&btf.stderr)
        );
        for field in doc.fields {
            let named = text.lines().any(|l| {
                l.trim_end_matches(';')
                    .split([' ', '\t', '['])
                    .any(|w| w == *field)
            });
            assert!(named, "{}: no field {field} in its BTF:\n{text}", doc.name);
        }
        // And the dump an operator runs works.
        let dump = std::process::Command::new("bpftool")
            .args(["map", "dump", "pinned", path])
            .output()?;
        assert!(
            dump.status.success(),
            "{}: {}",
            doc.name,
            String::from_utf8_lossy(&dump.stderr)
        );
    }
    drop(agent);
    tear_down(lab);
    Ok(())
}
