//! Fuzz target: reading an IRC line off the wire. Arbitrary bytes become text through the
//! `charset` conversion (as the connector's codec hands them over, one character per byte),
//! then the command/parameter reader and the `server-time` parser.
//!
//! Owns: the byte → text → `WireLine` path and its invariants (valid UTF-8 is read as it is;
//! with the default charset, writing back what was read gives one wire character per byte).
//! Must not: open sockets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tribridge::connector::irc::charset::Charset;
use tribridge::connector::irc::wire::{WireLine, parse_server_time};

fuzz_target!(|data: &[u8]| {
    // What the codec hands over: one character per byte (windows-1252).
    let wire: String = data
        .iter()
        .map(|&b| {
            let byte = [b];
            let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(&byte);
            text.into_owned()
        })
        .collect();
    for charset in [Charset::default(), Charset::for_label("koi8-r").unwrap()] {
        let (text, fallback) = charset.read_line(&wire);
        if !fallback {
            assert_eq!(text.as_bytes(), data, "valid UTF-8 is read as it is");
            if charset == Charset::default() {
                // Written back in UTF-8: one wire character per byte again.
                assert_eq!(charset.write_line(&text).chars().count(), data.len());
            }
        }
        let line = WireLine::parse(&text);
        let _ = line.param(0);
        let _ = line.last();
        let _ = parse_server_time(&text);
    }
});
