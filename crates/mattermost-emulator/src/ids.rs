//! Identifier and clock helpers: Mattermost-style 26-character ids and millisecond timestamps.

use std::time::{SystemTime, UNIX_EPOCH};

/// The base32 alphabet `model.NewId()` uses.
pub const ALPHABET: &[u8; 32] = b"ybndrfg8ejkmcpqxot1uwisza345h769";

/// A new random id: 16 random bytes, base32 with [`ALPHABET`], no padding, 26 characters.
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut out = String::with_capacity(26);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// `model.IsValidId`: 26 characters, each an ASCII letter or digit.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == 26 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A strictly increasing millisecond clock, so that every write gets its own `update_at`.
#[derive(Debug, Default)]
pub struct Clock {
    last: i64,
}

impl Clock {
    /// The next timestamp: the wall clock, or one more than the previous value if that is later.
    pub fn now(&mut self) -> i64 {
        let t = wall_ms().max(self.last + 1);
        self.last = t;
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_real_shape() {
        for _ in 0..100 {
            let id = new_id();
            assert_eq!(id.len(), 26);
            assert!(id.bytes().all(|b| ALPHABET.contains(&b)));
            assert!(is_valid_id(&id));
        }
        assert!(!is_valid_id("short"));
    }

    #[test]
    fn clock_is_strictly_increasing() {
        let mut c = Clock::default();
        let a = c.now();
        let b = c.now();
        assert!(b > a);
    }
}
