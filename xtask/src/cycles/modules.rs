//! A crate's module tree and the references between its modules, read from its sources with
//! `syn`: every file is a module by its path (the compiler's rule), and every `use` tree and
//! path starting with `crate::`, `super::` or `self::` is a reference to the module it names.
//! Only what a build without `test` compiles counts: a test's imports say nothing about the
//! product's layout.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _};
use proc_macro2::{TokenStream, TokenTree};
use syn::{
    punctuated::Punctuated,
    visit::{self, Visit},
    Attribute, ImplItem, Item, ItemMod, ItemUse, Local, Macro, Meta, TraitItem, UseTree,
};

/// A module's path from the crate root (empty for the root itself).
pub(super) type ModPath = Vec<String>;

/// `crate` for the root, else the path as written in Rust.
pub(super) fn display(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        path.join("::")
    }
}

/// A reference from one module to another that is neither its ancestor nor its descendant
/// (those are never a cycle: a child uses its parent's items, a parent declares its children).
#[derive(Debug)]
pub(super) struct Edge {
    /// The module of the file the reference is in.
    pub from: ModPath,
    /// The longest prefix of the referenced path that is a module.
    pub to: ModPath,
    pub file: PathBuf,
    pub line: usize,
    /// The path as written (`crate::a::B`, `super::c`).
    pub text: String,
}

pub(super) struct Tree {
    pub modules: BTreeSet<ModPath>,
    pub edges: Vec<Edge>,
}

/// Reads every `.rs` file under `src` (the library's; `main.rs` and `bin/` are other crates).
pub(super) fn load(src: &Path) -> anyhow::Result<Tree> {
    let mut files = Vec::new();
    collect_rs(src, &mut files)?;
    files.sort();
    let mut parsed = Vec::new();
    let mut test_only = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src)?;
        let Some(module) = module_path(rel) else {
            continue;
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let ast = syn::parse_file(&text)
            .map_err(|e| anyhow!("{}:{}: {e}", file.display(), e.span().start().line))?;
        declarations(&ast.items, &module, false, &mut test_only);
        parsed.push((module, file, ast));
    }
    // `#[cfg(test)] mod tests;`: the file and everything under it are test code.
    parsed.retain(|(module, ..)| !test_only.iter().any(|t| module.starts_with(t)));
    let modules: BTreeSet<ModPath> = parsed.iter().map(|(m, ..)| m.clone()).collect();
    let mut edges = Vec::new();
    for (module, file, ast) in &parsed {
        let mut collector = Collector {
            module,
            scope: module.clone(),
            modules: &modules,
            file,
            edges: &mut edges,
        };
        collector.visit_file(ast);
    }
    Ok(Tree { modules, edges })
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// The module a file is, from its path under `src`: `lib.rs` the root, `a.rs` and `a/mod.rs`
/// `a`, `a/b.rs` `a::b`. `None` for the binaries' roots.
fn module_path(rel: &Path) -> Option<ModPath> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let (file, dirs) = parts.split_last()?;
    let stem = file.strip_suffix(".rs")?;
    match (dirs.first().map(String::as_str), stem) {
        (None, "lib") => return Some(Vec::new()),
        (None, "main") | (Some("bin"), _) => return None,
        _ => {}
    }
    let mut path = dirs.to_vec();
    if stem != "mod" {
        path.push(stem.to_owned());
    }
    Some(path)
}

/// Records the file modules that `items` (of module `scope`) declare for tests only.
fn declarations(items: &[Item], scope: &[String], in_test: bool, out: &mut Vec<ModPath>) {
    for item in items {
        let Item::Mod(m) = item else {
            continue;
        };
        let test = in_test || test_only(&m.attrs);
        let mut path = scope.to_vec();
        path.push(m.ident.to_string());
        match &m.content {
            None if test => out.push(path),
            None => {}
            Some((_, inner)) => declarations(inner, &path, test, out),
        }
    }
}

/// Whether `attrs` hold a `#[cfg(..)]` that is false in a build without `test`.
pub(super) fn test_only(attrs: &[Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<Meta>().ok().and_then(|m| holds(&m)) == Some(false)
    })
}

/// Whether a cfg predicate holds without `test`; `None` when it depends on something else
/// (a feature, the target), which the check then counts as compiled.
fn holds(meta: &Meta) -> Option<bool> {
    match meta {
        Meta::Path(p) if p.is_ident("test") => Some(false),
        Meta::Path(_) | Meta::NameValue(_) => None,
        Meta::List(list) => {
            let args = list
                .parse_args_with(Punctuated::<Meta, syn::Token![,]>::parse_terminated)
                .ok()?;
            let values: Vec<Option<bool>> = args.iter().map(holds).collect();
            let all = |v: bool| values.iter().all(|x| *x == Some(v));
            if list.path.is_ident("not") {
                match values.as_slice() {
                    [value] => value.map(|v| !v),
                    _ => None,
                }
            } else if list.path.is_ident("all") {
                if values.contains(&Some(false)) {
                    Some(false)
                } else {
                    all(true).then_some(true)
                }
            } else if list.path.is_ident("any") {
                if values.contains(&Some(true)) {
                    Some(true)
                } else {
                    all(false).then_some(false)
                }
            } else {
                None
            }
        }
    }
}

fn item_attrs(item: &Item) -> &[Attribute] {
    match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::ExternCrate(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::ForeignMod(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Mod(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::TraitAlias(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => &[],
    }
}

/// Walks one file, recording its references to other modules.
struct Collector<'a> {
    /// The file's module: the source of every edge, inline modules included.
    module: &'a ModPath,
    /// Where `self` and `super` point from: the file's module and the inline modules around.
    scope: ModPath,
    modules: &'a BTreeSet<ModPath>,
    file: &'a Path,
    edges: &'a mut Vec<Edge>,
}

impl Collector<'_> {
    fn record(&mut self, segments: &[String], line: usize) {
        let Some(target) = self.resolve(segments) else {
            return;
        };
        let Some(to) = (0..=target.len())
            .rev()
            .filter_map(|n| target.get(..n))
            .find(|p| self.modules.contains(*p))
        else {
            return;
        };
        if to.starts_with(self.module) || self.module.starts_with(to) {
            return;
        }
        self.edges.push(Edge {
            from: self.module.clone(),
            to: to.to_vec(),
            file: self.file.to_path_buf(),
            line,
            text: segments.join("::"),
        });
    }

    /// The absolute module path `segments` name, if they start at the crate or this module.
    fn resolve(&self, segments: &[String]) -> Option<ModPath> {
        let (first, mut rest) = segments.split_first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.scope.clone(),
            "super" => {
                let mut b = self.scope.clone();
                b.pop()?;
                b
            }
            _ => return None,
        };
        while let Some((segment, tail)) = rest.split_first() {
            if segment != "super" {
                break;
            }
            base.pop()?;
            rest = tail;
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }

    fn use_tree(&mut self, tree: &UseTree, prefix: &mut Vec<String>) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(&p.tree, prefix);
                prefix.pop();
            }
            UseTree::Name(n) => self.use_name(&n.ident, prefix),
            UseTree::Rename(r) => self.use_name(&r.ident, prefix),
            UseTree::Glob(g) => {
                let line = g.star_token.spans[0].start().line;
                self.record(&prefix.clone(), line);
            }
            UseTree::Group(g) => {
                for item in &g.items {
                    self.use_tree(item, prefix);
                }
            }
        }
    }

    fn use_name(&mut self, ident: &proc_macro2::Ident, prefix: &mut Vec<String>) {
        let line = ident.span().start().line;
        // `use crate::a::{self, ..}` names `crate::a`.
        if ident != "self" || prefix.is_empty() {
            prefix.push(ident.to_string());
            self.record(&prefix.clone(), line);
            prefix.pop();
        } else {
            self.record(&prefix.clone(), line);
        }
    }

    /// Macro arguments are tokens to `syn`: paths in them are found as `crate`, `super` or
    /// `self` followed by `::`-separated identifiers.
    fn scan(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while let Some(token) = tokens.get(i) {
            i += 1;
            match token {
                TokenTree::Group(g) => self.scan(g.stream()),
                TokenTree::Ident(id) if id == "crate" || id == "super" || id == "self" => {
                    let mut segments = vec![id.to_string()];
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(next)),
                    ) = (tokens.get(i), tokens.get(i + 1), tokens.get(i + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(next.to_string());
                        i += 3;
                    }
                    if segments.len() > 1 {
                        self.record(&segments, id.span().start().line);
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item(&mut self, item: &'ast Item) {
        if !test_only(item_attrs(item)) {
            visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, m: &'ast ItemMod) {
        // A `mod x;` names a file, read as a module of its own.
        let Some((_, items)) = &m.content else {
            return;
        };
        self.scope.push(m.ident.to_string());
        for item in items {
            self.visit_item(item);
        }
        self.scope.pop();
    }

    fn visit_item_use(&mut self, u: &'ast ItemUse) {
        if u.leading_colon.is_none() {
            self.use_tree(&u.tree, &mut Vec::new());
        }
    }

    fn visit_impl_item(&mut self, item: &'ast ImplItem) {
        let attrs = match item {
            ImplItem::Const(i) => &i.attrs,
            ImplItem::Fn(i) => &i.attrs,
            ImplItem::Type(i) => &i.attrs,
            ImplItem::Macro(i) => &i.attrs,
            _ => return visit::visit_impl_item(self, item),
        };
        if !test_only(attrs) {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_trait_item(&mut self, item: &'ast TraitItem) {
        let attrs = match item {
            TraitItem::Const(i) => &i.attrs,
            TraitItem::Fn(i) => &i.attrs,
            TraitItem::Type(i) => &i.attrs,
            TraitItem::Macro(i) => &i.attrs,
            _ => return visit::visit_trait_item(self, item),
        };
        if !test_only(attrs) {
            visit::visit_trait_item(self, item);
        }
    }

    fn visit_local(&mut self, local: &'ast Local) {
        if !test_only(&local.attrs) {
            visit::visit_local(self, local);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            if let Some(first) = path.segments.first() {
                let segments: Vec<String> =
                    path.segments.iter().map(|s| s.ident.to_string()).collect();
                self.record(&segments, first.ident.span().start().line);
            }
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast Macro) {
        visit::visit_macro(self, mac);
        self.scan(mac.tokens.clone());
    }
}
