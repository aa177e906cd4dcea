//! Fuzz target: the configuration parser and validator. Every input either validates or gives
//! located issues; it never panics.
//!
//! Owns: feeding arbitrary UTF-8 as a `bridges.toml`. Must not: give the validator an
//! environment or a base folder with anything in it (a `*_file` key may name any path; the
//! validator only reads it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let base = std::path::Path::new("/nonexistent-tribridge-fuzz");
        if let Err(issues) = tribridge::config::parse(text, base, &[]) {
            assert!(!issues.is_empty());
            for issue in &issues {
                let _ = issue.display_with(std::path::Path::new("bridges.toml"));
            }
        }
    }
});
