//! The module graph of `src/` has no cycle: a module may use its own
//! children (a parent is its children's facade), and otherwise only modules
//! that do not use it back, directly or through others. A cycle is what
//! made one change ripple through thirty files; this test names the first
//! one it finds with the `use` that closes it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use regex::Regex;

/// Module path (`["router", "plan"]`) to its source, `#[cfg(test)]` tests
/// and comment lines left out.
fn modules() -> BTreeMap<Vec<String>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src/") {
            let path = entry.expect("read src/ entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).expect("under src/");
            let mut parts: Vec<String> = relative
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            modules.insert(parts, code);
        }
    }
    modules
}

/// The deepest module `path` names (an item path resolves to its module).
fn resolve(modules: &BTreeMap<Vec<String>, String>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains_key(prefix))
}

/// Each module's uses of other modules, with the line that makes each.
fn graph(
    modules: &BTreeMap<Vec<String>, String>,
) -> BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>> {
    // `crate::a::b::{C, d::E}` or `super::a::{...}`: the prefix, the path, the group.
    let path = Regex::new(
        r"\b(crate|super)::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)?(?:::)?(?:\{([^}]*)\})?",
    )
    .expect("valid regex");
    let mut edges = BTreeMap::new();
    for (module, code) in modules {
        let mut uses: BTreeMap<Vec<String>, String> = BTreeMap::new();
        // Over the whole source, not line by line: a `use` group may span
        // several lines (`use super::{\n    Ack,\n    Incoming,\n};`).
        for found in path.captures_iter(code) {
            let statement = found[0].split_whitespace().collect::<Vec<_>>().join(" ");
            let mut base: Vec<String> = match &found[1] {
                "crate" => Vec::new(),
                _ => module[..module.len() - 1].to_vec(),
            };
            if let Some(rest) = found.get(2) {
                base.extend(rest.as_str().split("::").map(str::to_owned));
            }
            let targets: Vec<Vec<String>> = match found.get(3) {
                Some(group) => group
                    .as_str()
                    .split(',')
                    .filter(|item| !item.trim().is_empty())
                    .map(|item| {
                        let mut path = base.clone();
                        path.extend(item.trim().split("::").next().map(str::to_owned));
                        path
                    })
                    .collect(),
                None => vec![base],
            };
            for target in targets {
                let Some(target) = resolve(modules, &target) else {
                    continue;
                };
                // Itself, or one of its own children: not a dependency.
                if target.starts_with(module) {
                    continue;
                }
                uses.entry(target).or_insert_with(|| statement.clone());
            }
        }
        edges.insert(module.clone(), uses);
    }
    edges
}

/// A cycle as the modules on it, found by depth-first search.
fn find_cycle(
    edges: &BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>,
) -> Option<Vec<Vec<String>>> {
    fn visit(
        at: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>,
        path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(start) = path.iter().position(|m| m == at) {
            return Some(path[start..].to_vec());
        }
        if done.contains(at) {
            return None;
        }
        path.push(at.clone());
        for next in edges.get(at).into_iter().flat_map(|uses| uses.keys()) {
            if let Some(cycle) = visit(next, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(at.clone());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|module| visit(module, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let modules = modules();
    assert!(modules.len() > 50, "found only {} modules", modules.len());
    let edges = graph(&modules);
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .iter()
            .zip(cycle.iter().cycle().skip(1))
            .map(|(from, to)| {
                format!(
                    "  {} -> {}   ({})",
                    from.join("::"),
                    to.join("::"),
                    edges[from][to]
                )
            })
            .collect();
        panic!("import cycle among src/ modules:\n{}", steps.join("\n"));
    }
}

#[test]
fn the_check_sees_a_use_of_a_parent_from_a_sibling() {
    // The graph must see real edges, or the test above could never fail.
    let edges = graph(&modules());
    let plan = edges
        .get(&vec!["router".to_owned(), "plan".to_owned()])
        .expect("router::plan is a module");
    assert!(plan.contains_key(&vec!["backends".to_owned()]), "{plan:?}");
    let batch = &edges[&vec!["router".to_owned(), "batch".to_owned()]];
    assert!(batch.contains_key(&vec!["router".to_owned()]), "{batch:?}");
    // A `use` group over several lines counts too: transport/redis/mod.rs
    // takes `Capabilities` from its parent only in one.
    let redis = &edges[&vec!["transport".to_owned(), "redis".to_owned()]];
    let parent = redis.get(&vec!["transport".to_owned()]);
    assert!(
        parent.is_some_and(|statement| statement.contains("Capabilities")),
        "{redis:?}"
    );
}
