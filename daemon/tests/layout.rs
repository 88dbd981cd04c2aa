//! The daemon library's modules form a tree of dependencies, not a tangle: no module reaches
//! (through `crate::…`) into one that reaches back into it, directly or around a loop. The
//! graph is read from the sources, as a reviewer would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level module of a source file: `engine/route.rs` → `engine`, `users.rs` → `users`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in files {
        let from = module_of(&src, &f);
        if from == "bin" || from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let deps = edges.entry(from.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let to: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !to.is_empty() && to != from {
                deps.insert(to);
            }
        }
    }
    edges
}

/// A loop through `start`, if there is one.
fn cycle_from(
    g: &BTreeMap<String, BTreeSet<String>>,
    start: &str,
    at: &str,
    path: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    for next in g.get(at).into_iter().flatten() {
        if next == start {
            let mut found = path.clone();
            found.push(next.clone());
            return Some(found);
        }
        if seen.insert(next.clone()) {
            path.push(next.clone());
            if let Some(c) = cycle_from(g, start, next, path, seen) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

#[test]
fn the_library_modules_depend_on_each_other_without_a_loop() {
    let g = graph();
    assert!(g.contains_key("engine") && g.contains_key("store"), "{g:?}");
    for start in g.keys() {
        let mut path = vec![start.clone()];
        if let Some(c) = cycle_from(&g, start, start, &mut path, &mut BTreeSet::new()) {
            panic!("a loop of imports: {}", c.join(" -> "));
        }
    }
    // The edges the 2026-11 review found, gone for good.
    for (from, to) in [
        ("email", "config"),
        ("engine", "doctor"),
        ("engine", "import"),
    ] {
        assert!(!g[from].contains(to), "{from} imports {to} again");
    }
}
