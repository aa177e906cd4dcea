//! Tidy checks over the source tree (rust-analyzer's idea): cheap rules a reviewer would
//! otherwise have to remember.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests", "examples", "benches"] {
        if root.join(dir).exists() {
            rust_files(&root.join(dir), &mut files);
        }
    }
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .map(|path| path.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a //! comment: {missing:#?}"
    );
}

#[test]
fn only_the_irc_connector_uses_the_irc_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| !path.starts_with(root.join("src/connector/irc")))
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            text.contains("use irc::")
                || text.contains("irc::client")
                || text.contains("irc::proto")
        })
        .map(|path| path.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "wire types outside their connector: {offenders:#?}"
    );
}

#[test]
fn only_the_matrix_connector_uses_matrix_sdk_and_ruma() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| !path.starts_with(root.join("src/connector/matrix")))
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            text.contains("matrix_sdk") || text.contains("ruma::")
        })
        .map(|path| path.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "wire types outside their connector: {offenders:#?}"
    );
}

/// The text of a Rust file without its comments (line comments, doc comments included), so that
/// a path named in prose is not taken for an import, and without its unit tests (the
/// `#[cfg(test)]` module that ends a file), which may drive a module through a higher one.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let tests = lines.windows(2).position(|pair| {
        pair[0].trim() == "#[cfg(test)]" && pair[1].trim_start().starts_with("mod tests")
    });
    lines[..tests.unwrap_or(lines.len())]
        .iter()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") {
                ""
            } else {
                line.split(" // ").next().unwrap_or(line)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module of `src` a file belongs to (`router` for `src/router.rs`, `connector`
/// for `src/connector/irc/mod.rs`); `None` for the crate root and the binary.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

/// The top-level modules a piece of code names through `crate::` paths, grouped imports
/// (`crate::{a, b::c}`) included.
fn crate_references(code: &str) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let ident = |rest: &str| -> String {
        rest.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (index, _) in code.match_indices("crate::") {
        if code[..index].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `tribridge_crate::`, not ours
        }
        let rest = &code[index + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut start = true;
            for (offset, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        found.insert(ident(&group[offset..]));
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|name| !name.is_empty());
    found
}

/// The `use crate::…` graph of `src/` between top-level modules: module → modules it names.
fn module_graph(
    root: &Path,
) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        std::collections::BTreeMap::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let entry = graph.entry(module.clone()).or_default();
        for target in crate_references(&code) {
            if target != module {
                entry.insert(target);
            }
        }
    }
    graph
}

/// The layers of `src/`, lowest first: a module may name only modules of lower layers, so
/// imports run one way (connectors → vocabulary ← router, outbox, store; metrics only reads).
/// A new top-level module must be placed here.
const LAYERS: &[&[&str]] = &[
    &["richtext", "loop_breaker", "files", "import_matterbridge"],
    &["model"],
    &["vocab"],
    &["store"],
    &["group_commit", "archive"],
    &["parallel"],
    &["router", "outbox"],
    &["connector"],
    &["config"],
    &["metrics", "admin"],
    &["daemon"],
    &["service"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// Every import cycle through `node` reachable from `path`.
fn visit(
    node: &str,
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
    path: &mut Vec<String>,
    cycles: &mut Vec<String>,
) {
    if let Some(start) = path.iter().position(|n| n == node) {
        cycles.push(format!("{} -> {node}", path[start..].join(" -> ")));
        return;
    }
    path.push(node.to_owned());
    for next in graph.get(node).into_iter().flatten() {
        visit(next, graph, path, cycles);
    }
    path.pop();
}

#[test]
fn top_level_modules_import_one_way_without_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let graph = module_graph(root);
    let mut problems = Vec::new();
    for (module, targets) in &graph {
        println!(
            "{module} -> {}",
            targets.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let Some(from) = layer_of(module) else {
            problems.push(format!("`src/{module}` is in no layer of tidy.rs's LAYERS"));
            continue;
        };
        for target in targets {
            match layer_of(target) {
                Some(to) if to < from => {}
                Some(_) => problems.push(format!(
                    "`{module}` imports `{target}`, against the allowed direction (a module \
                     names only lower layers)"
                )),
                None => problems.push(format!("`{target}` is in no layer of tidy.rs's LAYERS")),
            }
        }
    }
    // A cycle, found directly (the layer rule implies there is none; this says where).
    let mut cycles = Vec::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut cycles);
    }
    cycles.sort();
    cycles.dedup();
    problems.extend(
        cycles
            .into_iter()
            .map(|cycle| format!("import cycle: {cycle}")),
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_module_graph_reader_sees_grouped_imports_and_skips_comments() {
    let code = code_of(
        "use crate::{model::Delivery, vocab::{Wake, Endpoint}};\n// use crate::daemon;\n\
         let x = crate::store::Store::open();\n#[cfg(test)]\nmod tests { use crate::router; }",
    );
    let found: Vec<String> = crate_references(&code).into_iter().collect();
    assert_eq!(found, ["model", "store", "vocab"]);
}

/// The network types, as the folders of `src/connector/`.
fn connector_folders(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("src/connector"))
        .unwrap()
        .filter_map(|entry| {
            let path = entry.unwrap().path();
            path.is_dir()
                .then(|| path.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect()
}

#[test]
fn nothing_outside_the_connectors_names_a_network() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let networks = connector_folders(root);
    assert!(networks.len() >= 3, "connector folders: {networks:?}");
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut offenders = Vec::new();
    for file in files
        .iter()
        .filter(|path| !path.starts_with(root.join("src/connector")))
        // Rich text converts between formats (IRC codes, Markdown, HTML), named by format.
        .filter(|path| !path.starts_with(root.join("src/richtext")))
        // The matterbridge importer reads another program's protocol names (`[irc.X]`) and
        // writes ours (`type = "irc"`): names as text, no connector's code.
        .filter(|path| **path != root.join("src/import_matterbridge.rs"))
    {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let name = file.strip_prefix(root).unwrap().display().to_string();
        for network in &networks {
            // A connector's module (its config, its fold function, its wire types).
            if code.contains(&format!("connector::{network}::")) {
                offenders.push(format!("{name} uses `connector::{network}::`"));
            }
            // The network by name, other than the Cargo feature that gates a connector.
            let quoted = format!("\"{network}\"");
            if code
                .replace(&format!("feature = {quoted}"), "")
                .contains(&quoted)
            {
                offenders.push(format!("{name} names {quoted}"));
            }
        }
        for word in ["irc_fold", "NetworkKind"] {
            if code.contains(word) {
                offenders.push(format!("{name} uses `{word}`"));
            }
        }
    }
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn the_router_names_no_network_type() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "src/router.rs",
        "src/outbox.rs",
        "src/store.rs",
        "src/model.rs",
        "src/parallel.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap()
            .to_lowercase();
        for name in ["\"irc\"", "\"matrix\"", "\"mattermost\"", "networkkind::"] {
            assert!(!text.contains(name), "{file} names {name}");
        }
    }
}
