//! `cargo xtask cycles`: fails when modules of the agent's library import each other in a
//! cycle (issue 21, "A layout that shows the architecture"). The module tree is a map of the
//! design only if its dependencies point one way: two modules that use each other can only be
//! read, tested and moved together, whatever the folders say. So among the crate root's
//! children, and among the children of each folder module, no cycle is allowed; a child using
//! its parent's items (or the parent its children's) is not one. `cargo xtask test` runs it
//! right after the format check, so a new cycle fails before anything is built.

mod graph;
mod modules;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use crate::shell;
use graph::{Cycle, Siblings};
use modules::display;

#[derive(clap::Args, Debug)]
pub struct CyclesArgs {
    /// The library's source directory (default: edge-agent/src of this workspace).
    #[arg(long)]
    src: Option<PathBuf>,
}

pub fn run(args: CyclesArgs) -> anyhow::Result<()> {
    check(&args.src.unwrap_or_else(default_src))
}

/// The agent's library, the crate the check is for.
pub fn default_src() -> PathBuf {
    shell::workspace_root().join("edge-agent/src")
}

/// Prints the verdict on the crate at `src`; an error if its modules import in a cycle.
pub fn check(src: &Path) -> anyhow::Result<()> {
    let src = std::fs::canonicalize(src).with_context(|| format!("reading {}", src.display()))?;
    let tree = modules::load(&src)?;
    let siblings = Siblings::lift(&tree.edges);
    let cycles = siblings.cycles();
    let name = src.parent().and_then(Path::file_name).map_or_else(
        || "the crate".to_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    let counts = format!(
        "{} modules, {} edges between siblings",
        tree.modules.len(),
        siblings.count()
    );
    if cycles.is_empty() {
        println!("import cycles: none among {name}'s modules ({counts})");
        return Ok(());
    }
    // Paths shown from the directory holding the crate's, as `edge-agent/src/agent.rs`.
    let base = src.parent().and_then(Path::parent).unwrap_or(&src);
    print!("{}", render(&cycles, base));
    bail!(
        "{} import cycle(s) among {name}'s modules ({counts}): each needs one of its edges gone",
        cycles.len()
    )
}

/// Each cycle as its modules in order, then one reference (file:line) for each of its edges.
fn render(cycles: &[Cycle<'_>], base: &Path) -> String {
    let mut out = String::new();
    for cycle in cycles {
        let among = if cycle.parent.is_empty() {
            "the crate root's modules".to_owned()
        } else {
            format!("the modules of {}", display(&cycle.parent))
        };
        let mut order: Vec<String> = cycle.steps.iter().map(|s| display(&s.from)).collect();
        order.extend(cycle.steps.first().map(|s| display(&s.from)));
        out.push_str(&format!(
            "import cycle among {among}: {}\n",
            order.join(" -> ")
        ));
        for step in &cycle.steps {
            let Some(edge) = step.edges.first() else {
                continue;
            };
            let file = edge.file.strip_prefix(base).unwrap_or(&edge.file);
            let mut line = format!(
                "  {} -> {}: {}:{} ",
                display(&step.from),
                display(&step.to),
                file.display(),
                edge.line
            );
            // The lifted ends are ancestors of the real ones: name those when they differ.
            if edge.from != step.from || edge.to != step.to {
                line.push_str(&format!("({} uses {})", display(&edge.from), edge.text));
            } else {
                line.push_str(&format!("({})", edge.text));
            }
            if step.edges.len() > 1 {
                line.push_str(&format!(", and {} more", step.edges.len() - 1));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A crate written to a directory of its own, removed when dropped.
    struct Crate(PathBuf);

    impl Crate {
        fn new(name: &str, files: &[(&str, &str)]) -> anyhow::Result<Self> {
            let dir = std::env::temp_dir()
                .join(format!("xtask-cycles-{}-{name}/krate", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for (path, text) in files {
                let path = dir.join("src").join(path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, text)?;
            }
            Ok(Crate(dir))
        }

        fn src(&self) -> PathBuf {
            self.0.join("src")
        }

        /// The cycles found, as rendered, and the sibling edges counted.
        fn analyse(&self) -> anyhow::Result<(String, usize)> {
            let src = self.src();
            let tree = modules::load(&src)?;
            let siblings = Siblings::lift(&tree.edges);
            let base = self.0.clone();
            Ok((render(&siblings.cycles(), &base), siblings.count()))
        }
    }

    impl Drop for Crate {
        fn drop(&mut self) {
            if let Some(parent) = self.0.parent() {
                let _ = std::fs::remove_dir_all(parent);
            }
        }
    }

    #[test]
    fn a_cycle_is_found_with_its_edges() -> anyhow::Result<()> {
        let krate = Crate::new(
            "found",
            &[
                ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
                ("a.rs", "use crate::b::B;\npub struct A;\n"),
                (
                    "b.rs",
                    "pub struct B;\n\npub fn f() -> crate::a::A {\n    crate::a::A\n}\n",
                ),
                ("c.rs", "pub fn g() -> crate::a::A {\n    crate::a::A\n}\n"),
            ],
        )?;
        let (report, edges) = krate.analyse()?;
        assert_eq!(
            report,
            "import cycle among the crate root's modules: a -> b -> a\n  \
             a -> b: src/a.rs:1 (crate::b::B)\n  \
             b -> a: src/b.rs:3 (crate::a::A), and 1 more\n"
        );
        assert_eq!(edges, 3, "a -> b, b -> a, c -> a");
        assert!(check(&krate.src()).is_err());
        Ok(())
    }

    #[test]
    fn a_parent_and_its_child_using_each_other_is_no_cycle() -> anyhow::Result<()> {
        let krate = Crate::new(
            "parent",
            &[
                ("lib.rs", "pub mod a;\npub fn root() {}\n"),
                (
                    "a/mod.rs",
                    "pub mod x;\nuse self::x::X;\npub fn helper() -> X {\n    crate::a::x::X\n}\n",
                ),
                (
                    "a/x.rs",
                    "pub struct X;\nfn f() {\n    super::helper();\n    crate::a::helper();\n    crate::root();\n}\n",
                ),
            ],
        )?;
        assert_eq!(krate.analyse()?, (String::new(), 0));
        check(&krate.src())
    }

    #[test]
    fn a_cycle_through_a_use_group() -> anyhow::Result<()> {
        let krate = Crate::new(
            "group",
            &[
                ("lib.rs", "pub mod a;\npub mod d;\n"),
                ("a/mod.rs", "pub mod b;\npub mod c;\n"),
                ("a/b.rs", "pub struct B;\n"),
                ("a/c.rs", "pub fn c() {\n    let _ = crate::d::D;\n}\n"),
                ("d.rs", "use crate::{\n    a::{b, c},\n};\npub struct D;\n"),
            ],
        )?;
        let (report, _) = krate.analyse()?;
        assert_eq!(
            report,
            "import cycle among the crate root's modules: a -> d -> a\n  \
             a -> d: src/a/c.rs:2 (a::c uses crate::d::D)\n  \
             d -> a: src/d.rs:2 (d uses crate::a::b), and 1 more\n"
        );
        Ok(())
    }

    #[test]
    fn super_resolves_from_the_file_and_its_inline_modules() -> anyhow::Result<()> {
        let krate = Crate::new(
            "super",
            &[
                ("lib.rs", "pub mod a;\n"),
                ("a/mod.rs", "mod b;\nmod c;\n"),
                (
                    "a/b.rs",
                    "pub fn g() {}\nmod inner {\n    use super::super::c::C;\n}\n",
                ),
                ("a/c.rs", "pub struct C;\nfn f() {\n    super::b::g();\n}\n"),
            ],
        )?;
        let (report, edges) = krate.analyse()?;
        assert_eq!(
            report,
            "import cycle among the modules of a: a::b -> a::c -> a::b\n  \
             a::b -> a::c: src/a/b.rs:3 (super::super::c::C)\n  \
             a::c -> a::b: src/a/c.rs:3 (super::b::g)\n"
        );
        assert_eq!(edges, 2);
        Ok(())
    }

    #[test]
    fn test_only_imports_are_ignored() -> anyhow::Result<()> {
        let krate = Crate::new(
            "cfgtest",
            &[
                ("lib.rs", "pub mod a;\npub mod b;\n"),
                (
                    "a/mod.rs",
                    "#[cfg(test)]\nmod testutil;\n\
                     #[cfg(all(test, feature = \"x\"))]\nuse crate::b::B;\n\
                     pub struct A;\n\
                     #[cfg(test)]\nmod tests {\n    use crate::b::B;\n}\n\
                     impl A {\n    #[cfg(test)]\n    fn t() -> crate::b::B {\n        crate::b::B\n    }\n}\n",
                ),
                ("a/testutil.rs", "pub fn u() -> crate::b::B {\n    crate::b::B\n}\n"),
                ("b.rs", "pub struct B;\npub fn f() -> crate::a::A {\n    crate::a::A\n}\n"),
            ],
        )?;
        assert_eq!(krate.analyse()?, (String::new(), 1));
        check(&krate.src())
    }

    #[test]
    fn paths_in_macros_count_and_cfg_not_test_is_compiled() -> anyhow::Result<()> {
        let krate = Crate::new(
            "macro",
            &[
                ("lib.rs", "pub mod a;\npub mod b;\n"),
                (
                    "a.rs",
                    "pub fn a() {\n    println!(\"{:?}\", crate::b::b());\n}\n",
                ),
                (
                    "b.rs",
                    "#[cfg(not(test))]\nuse crate::a::a;\npub fn b() {}\n",
                ),
            ],
        )?;
        let (report, _) = krate.analyse()?;
        assert!(report.contains("a -> b -> a"), "{report}");
        Ok(())
    }
}
