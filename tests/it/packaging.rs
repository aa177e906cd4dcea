//! The release packaging stays true without building a release: the Debian package's metadata
//! in Cargo.toml (`[package.metadata.deb]`, read by `cargo deb`), the systemd unit it ships and
//! the README's Install section must agree on where the binary, the unit, the configuration and
//! the secrets file are.

use std::path::Path;

/// Where systemd (239 and later) looks for a command named without a folder, in its order.
const SYSTEMD_SEARCH_PATH: [&str; 4] =
    ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One `[source, destination, mode]` of the package's assets, the destination made absolute
/// (a destination ending in `/` is a folder: the source's file name is added).
struct Asset {
    source: String,
    installed: String,
    mode: u32,
}

fn deb_metadata() -> toml::Table {
    let text = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    manifest["package"]["metadata"]["deb"]
        .as_table()
        .expect("[package.metadata.deb]")
        .clone()
}

fn assets(deb: &toml::Table) -> Vec<Asset> {
    deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|asset| {
            let fields: Vec<&str> = asset
                .as_array()
                .expect("[source, destination, mode]")
                .iter()
                .map(|v| v.as_str().expect("a string"))
                .collect();
            let [source, destination, mode] = fields[..] else {
                panic!("an asset is [source, destination, mode]: {fields:?}");
            };
            let installed = if destination.ends_with('/') {
                let name = Path::new(source).file_name().unwrap().to_str().unwrap();
                format!("/{destination}{name}")
            } else {
                format!("/{destination}")
            };
            Asset {
                source: source.to_owned(),
                installed,
                mode: u32::from_str_radix(mode, 8).expect("an octal mode"),
            }
        })
        .collect()
}

fn installed_from<'a>(assets: &'a [Asset], source: &str) -> &'a Asset {
    assets
        .iter()
        .find(|asset| asset.source == source)
        .unwrap_or_else(|| panic!("the package does not install {source}"))
}

/// The unit's `Key=value` lines (comments left out).
fn unit_lines(key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(root().join("systemd/tribridge.service")).unwrap();
    unit.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
        .collect()
}

/// Where systemd finds `command` in a root whose files are `present`.
fn systemd_resolves(command: &str, present: &[&str]) -> Option<String> {
    if command.starts_with('/') {
        return present.contains(&command).then(|| command.to_owned());
    }
    SYSTEMD_SEARCH_PATH
        .iter()
        .map(|folder| format!("{folder}/{command}"))
        .find(|path| present.contains(&path.as_str()))
}

#[test]
fn the_debian_package_installs_what_its_unit_runs_and_reads() {
    let deb = deb_metadata();
    let assets = assets(&deb);
    // Every source is in the repository, except the release binary, which must be this
    // package's binary.
    for asset in &assets {
        if let Some(name) = asset.source.strip_prefix("target/release/") {
            assert_eq!(name, "tribridge", "the package ships an unknown binary");
        } else {
            assert!(
                root().join(&asset.source).is_file(),
                "asset {} is not in the repository",
                asset.source
            );
        }
    }
    let binary = installed_from(&assets, "target/release/tribridge");
    assert_eq!(binary.mode, 0o755);
    let unit = installed_from(&assets, "systemd/tribridge.service");
    assert_eq!(unit.installed, "/usr/lib/systemd/system/tribridge.service");
    let config = installed_from(&assets, "bridges.toml.example");
    let secrets = installed_from(&assets, "systemd/tribridge.env");
    // The commands of the unit run the package's binary, with the package's configuration.
    let files: Vec<&str> = assets.iter().map(|a| a.installed.as_str()).collect();
    let commands: Vec<String> = ["ExecStartPre", "ExecStart", "ExecReload"]
        .iter()
        .flat_map(|key| unit_lines(key))
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    for command in &commands {
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(
            systemd_resolves(words[0], &files).as_deref(),
            Some(binary.installed.as_str()),
            "{command}"
        );
        let at = words
            .iter()
            .position(|w| *w == "--config")
            .expect("--config");
        assert_eq!(words[at + 1], config.installed, "{command}");
    }
    // The secrets file is the unit's environment file, private to root; the configuration is
    // readable by the unit's made-up user.
    assert_eq!(
        unit_lines("EnvironmentFile"),
        vec![format!("-{}", secrets.installed)]
    );
    assert_eq!(secrets.mode, 0o600);
    assert_eq!(unit_lines("DynamicUser"), vec!["yes"]);
    assert_eq!(config.mode & 0o004, 0o004, "DynamicUser= cannot read it");
    // Both files under /etc are conffiles: an upgrade keeps the admin's edits.
    let conffiles: Vec<&str> = deb["conf-files"]
        .as_array()
        .expect("conf-files")
        .iter()
        .filter_map(toml::Value::as_str)
        .collect();
    for asset in &assets {
        assert_eq!(
            asset.installed.starts_with("/etc/"),
            conffiles.contains(&asset.installed.as_str()),
            "{} and conf-files",
            asset.installed
        );
    }
}

#[test]
fn the_readme_installs_where_the_unit_looks() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let install = readme
        .split("\n## Install\n")
        .nth(1)
        .expect("README has an Install section")
        .split("\n## ")
        .next()
        .unwrap();
    let deb = deb_metadata();
    let assets = assets(&deb);
    // By hand: the binary into a folder on systemd's search path, found before the package's.
    let by_hand = install
        .lines()
        .find(|line| line.contains("install -m 0755 target/release/tribridge"))
        .expect("README installs the binary by hand");
    let folder = by_hand
        .split_whitespace()
        .last()
        .unwrap()
        .trim_end_matches('/');
    let position = |folder: &str| SYSTEMD_SEARCH_PATH.iter().position(|f| *f == folder);
    let package_folder = Path::new(&installed_from(&assets, "target/release/tribridge").installed)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        position(folder) < position(&package_folder) && position(folder).is_some(),
        "{by_hand}"
    );
    // `cargo install --root R` puts the binary in R/bin: also on the search path.
    let cargo_install = install
        .lines()
        .find(|line| line.contains("cargo install --path . --locked --root"))
        .expect("README installs with cargo install");
    let cargo_root = cargo_install
        .split("--root ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .trim_end_matches('`');
    assert!(
        position(&format!("{cargo_root}/bin")).is_some(),
        "{cargo_install}"
    );
    // The files the README places by hand are the package's, at the same paths (the unit in
    // the admin's folder of units rather than the packages').
    for asset in assets.iter().filter(|a| !a.source.starts_with("target/")) {
        let folder = match asset.source.as_str() {
            "README.md" => continue,
            "systemd/tribridge.service" => "/etc/systemd/system/",
            _ => asset.installed.as_str(),
        };
        assert!(
            install
                .lines()
                .any(|line| line.contains(&asset.source) && line.contains(folder)),
            "README's Install section does not place {} at {folder}",
            asset.source,
        );
    }
    // And it names the package's own commands.
    assert!(
        install.contains("cargo deb"),
        "README: how to build the package"
    );
    assert!(
        install.contains("dpkg -i"),
        "README: how to install the package"
    );
}
