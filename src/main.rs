//! The `tribridge` command: `check` validates a configuration file, `run` runs the bridge.
fn main() {}
