//! The layout tree that opens `docs/architecture.md` is read by people deciding where code goes,
//! so it is checked against the folders it describes: a folder added, moved or removed under
//! `edge-agent/src` without its line in the tree fails the test suite.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
};

/// The folders under `edge-agent/src` that the tree names, as paths relative to it.
fn documented_folders(doc: &str) -> BTreeSet<PathBuf> {
    let mut in_tree = false;
    let mut in_block = false;
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut folders = BTreeSet::new();
    for line in doc.lines() {
        if line.starts_with("## ") {
            in_tree = line == "## Layout";
            continue;
        }
        if !in_tree {
            continue;
        }
        if line.starts_with("```") {
            if in_block {
                break;
            }
            in_block = true;
            continue;
        }
        if !in_block {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if indent == 0 {
            stack.clear();
            if name == "edge-agent/src/" {
                stack.push((0, String::new()));
            }
            continue;
        }
        if stack.is_empty() || !name.ends_with('/') {
            continue;
        }
        while stack.last().is_some_and(|(depth, _)| *depth >= indent) {
            stack.pop();
        }
        let parent: PathBuf = stack.iter().map(|(_, name)| name.as_str()).collect();
        let folder = name.trim_end_matches('/').to_string();
        folders.insert(parent.join(&folder));
        stack.push((indent, folder));
    }
    folders
}

fn folders_on_disk(root: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(root.join(rel))? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            let child = rel.join(entry.file_name());
            folders_on_disk(root, &child, out)?;
            out.insert(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_architecture_tree_names_every_agent_folder_and_no_other() -> std::io::Result<()> {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let doc = fs::read_to_string(workspace.join("docs/architecture.md"))?;
        let documented = documented_folders(&doc);
        let mut actual = BTreeSet::new();
        folders_on_disk(
            &workspace.join("edge-agent/src"),
            Path::new(""),
            &mut actual,
        )?;
        let missing: Vec<_> = actual.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&actual).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/architecture.md's layout tree and edge-agent/src differ: folders without a line \
             {missing:?}, lines without a folder {stale:?}"
        );
        Ok(())
    }

    #[test]
    fn nesting_follows_indentation() {
        let doc = "## Layout\n```\nedge-agent/src/\n  a/   x\n    b/  y\n  main.rs  z\n  c/  w\n\
                   other/src/  v\n  d/  u\n```\n## Next\n```\nedge-agent/src/\n  e/\n```\n";
        let got: Vec<_> = documented_folders(doc).into_iter().collect();
        let want: Vec<PathBuf> = ["a", "a/b", "c"].iter().map(PathBuf::from).collect();
        assert_eq!(got, want);
    }
}
