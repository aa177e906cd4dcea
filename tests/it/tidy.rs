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
