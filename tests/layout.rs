//! The crate's layout has no import cycles: among the modules of one parent (the top-level
//! modules of the crate, the files of `providers/`, of `budget/`, ...), module A using module B
//! and B using A is a failure here. A parent and its own children may use each other (a
//! `gateway/` file uses `Gateway` from `gateway/mod.rs`); siblings may not go round in a circle.
//!
//! The check reads the `crate::…` and `super::…` paths of every file under `src/` (not
//! `main.rs`, the binary, and not the files' `#[cfg(test)] mod tests`) —
//! a text scan, so it needs no tool beyond `cargo test`. A path resolves to the longest module
//! it names, so an item a parent re-exports from one child (`pub use hybrid::*`) counts as the
//! parent's: a sibling cycle hidden behind such a re-export is not seen.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root: `["providers", "http"]`; the root is `[]`.
type ModPath = Vec<String>;

fn src_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every library source file and the module it defines.
fn modules() -> BTreeMap<ModPath, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = src_dir();
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap().with_extension("");
        let mut path: ModPath = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.first().is_some_and(|p| p == "bin") || path == ["main"] {
            continue;
        }
        if path.last().is_some_and(|p| p == "mod" || p == "lib") {
            path.pop();
        }
        modules.insert(path, file);
    }
    modules
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths of a `use` tree or path expression starting at `text` (just after `crate::` or
/// `super::`): `a::b::C` gives `[a, b, C]`; `{a::b, c::{d, e}}` gives `[a, b]`, `[c, d]`, `[c, e]`.
fn paths(text: &str) -> Vec<Vec<String>> {
    fn parse(
        chars: &[char],
        mut i: usize,
        prefix: Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) -> usize {
        let mut path = prefix;
        loop {
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i < chars.len() && chars[i] == '{' {
                i += 1;
                loop {
                    i = parse(chars, i, path.clone(), out);
                    while i < chars.len() && (chars[i].is_whitespace() || chars[i] == ',') {
                        i += 1;
                    }
                    if i >= chars.len() || chars[i] == '}' {
                        return i + 1;
                    }
                }
            }
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            if i == start {
                out.push(path);
                return i;
            }
            path.push(chars[start..i].iter().collect());
            if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i += 2;
            } else {
                // `as NAME` and whatever follows end this path.
                out.push(path);
                while i < chars.len() && !matches!(chars[i], ',' | '}' | ';') {
                    i += 1;
                }
                return i;
            }
        }
    }
    let chars: Vec<char> = text.chars().take(4000).collect();
    let mut out = Vec::new();
    parse(&chars, 0, Vec::new(), &mut out);
    out
}

/// The code of a file as the check reads it: without its unit tests and comment lines.
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path `module`'s code names through `crate::` or `super::`.
fn references(module: &ModPath, code: &str) -> Vec<ModPath> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue; // `vra_crate::` or the like
        }
        found.extend(paths(&code[at + "crate::".len()..]));
    }
    for (at, _) in code.match_indices("super::") {
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_ident(c) || c == ':')
        {
            continue; // the second `super` of `super::super::`, counted from the first
        }
        let mut base = module.clone();
        let mut rest = &code[at..];
        while let Some(r) = rest.strip_prefix("super::") {
            base.pop();
            rest = r;
        }
        for p in paths(rest) {
            found.push(base.iter().cloned().chain(p).collect());
        }
    }
    found
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(modules: &BTreeMap<ModPath, PathBuf>, path: &[String]) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains_key(p))
        .unwrap_or_default()
}

#[test]
fn sibling_modules_never_import_each_other_in_a_circle() {
    let modules = modules();
    assert!(modules.len() > 20, "found the sources: {modules:?}");
    // parent -> (child A -> child B -> why: "file uses path").
    let mut edges: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    for (module, file) in &modules {
        for target in references(module, &code(file)) {
            let to = resolve(&modules, &target);
            let common = module.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == module.len() || common == to.len() {
                continue; // itself, an ancestor or a descendant
            }
            edges
                .entry(module[..common].to_vec())
                .or_default()
                .entry(module[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_insert_with(|| {
                    format!(
                        "{} uses crate::{}",
                        file.strip_prefix(src_dir()).unwrap().display(),
                        target.join("::")
                    )
                });
        }
    }
    let mut cycles = Vec::new();
    for (parent, graph) in &edges {
        for start in graph.keys() {
            // A path back to `start`, by depth-first search.
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((node, trail)) = stack.pop() {
                for next in graph.get(&node).into_iter().flat_map(|n| n.keys()) {
                    if next == start && trail.iter().all(|n| n >= start) {
                        let steps: Vec<String> = trail
                            .iter()
                            .zip(trail.iter().skip(1).chain([start]))
                            .map(|(a, b)| format!("    {}", graph[a][b]))
                            .collect();
                        cycles.push(format!(
                            "in crate::{}: {} -> {start}\n{}",
                            parent.join("::"),
                            trail.join(" -> "),
                            steps.join("\n")
                        ));
                    } else if next != start && seen.insert(next.clone()) {
                        let mut trail = trail.clone();
                        trail.push(next.clone());
                        stack.push((next.clone(), trail));
                    }
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles among sibling modules:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_scanner_reads_use_trees_and_relative_paths() {
    let p = |s: &str| -> Vec<String> { s.split("::").map(str::to_string).collect() };
    assert_eq!(
        paths("{a::b, c::{d, e as f}, g};"),
        vec![p("a::b"), p("c::d"), p("c::e"), p("g")]
    );
    assert_eq!(paths("x::Y::new(1)"), vec![p("x::Y::new")]);
    let module = p("providers::http");
    assert_eq!(
        references(&module, "use super::pool::Pool;\nlet c = crate::config::X;"),
        vec![p("config::X"), p("providers::pool::Pool")]
    );
    assert_eq!(
        references(&p("a::b::c"), "use super::super::d::E;"),
        vec![p("a::d::E")]
    );
}
