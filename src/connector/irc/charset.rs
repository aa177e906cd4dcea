//! Text encodings on the IRC wire. IRC lines are bytes with no declared encoding: most networks
//! speak UTF-8, older ones (and older clients on any network) latin-1, cp1251, koi8-r...
//!
//! The `irc` crate's codec runs with [`WIRE_LABEL`] (windows-1252 as the WHATWG standard defines
//! it, which gives each of the 256 byte values a character of its own), so every byte of a line
//! reaches this module intact. [`Charset::read_line`] turns those bytes into text: as UTF-8 when
//! they are valid UTF-8, otherwise in the network's `charset` (or, when that is UTF-8 itself,
//! latin-1: windows-1252), a lossless fallback where every byte still becomes a character, never
//! a U+FFFD. [`Charset::write_line`] does the reverse for what we send: our text encoded in the
//! network's charset, then carried byte for byte through the codec.
//!
//! Owns: the byte ⇄ text conversions of whole lines. Must not: know IRC commands (it works on
//! lines as strings) or do I/O.

use encoding_rs::{Encoding, UTF_8, WINDOWS_1252};

/// The label the `irc` crate's codec is configured with: one character per byte, both ways.
pub const WIRE_LABEL: &str = "windows-1252";

/// How a network's text is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charset {
    /// What we send, and what invalid UTF-8 is read as when it is not UTF-8 itself.
    encoding: &'static Encoding,
}

/// Why a `charset` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CharsetError {
    /// Not a WHATWG encoding label.
    #[error(
        "unknown charset `{0}`; use a WHATWG label such as utf-8, latin1, iso-8859-15, windows-1251, koi8-r or shift_jis"
    )]
    Unknown(String),
    /// UTF-16 and the like: IRC needs ASCII for commands.
    #[error(
        "charset `{0}` is not ASCII-compatible, so IRC commands could not be read in it; use utf-8 or an 8-bit charset"
    )]
    NotAsciiCompatible(String),
}

impl Default for Charset {
    fn default() -> Self {
        Self { encoding: UTF_8 }
    }
}

impl Charset {
    /// The charset a `charset` value names.
    pub fn for_label(label: &str) -> Result<Self, CharsetError> {
        let encoding = Encoding::for_label_no_replacement(label.trim().as_bytes())
            .ok_or_else(|| CharsetError::Unknown(label.to_owned()))?;
        if !encoding.is_ascii_compatible() {
            return Err(CharsetError::NotAsciiCompatible(label.to_owned()));
        }
        Ok(Self { encoding })
    }

    /// The canonical name (`UTF-8`, `windows-1252`, `ISO-8859-15`...).
    #[must_use]
    pub fn name(self) -> &'static str {
        self.encoding.name()
    }

    /// The encoding invalid UTF-8 is read as.
    fn fallback(self) -> &'static Encoding {
        if self.encoding == UTF_8 {
            WINDOWS_1252
        } else {
            self.encoding
        }
    }

    /// Turn a line as the codec decoded it (one character per byte) into its text. Returns the
    /// text and whether the fallback was used (the bytes were not UTF-8).
    #[must_use]
    pub fn read_line(self, wire: &str) -> (String, bool) {
        let bytes = wire_bytes(wire);
        match String::from_utf8(bytes) {
            Ok(text) => (text, false),
            Err(error) => {
                let bytes = error.into_bytes();
                let (text, _) = self.fallback().decode_without_bom_handling(&bytes);
                (text.into_owned(), true)
            }
        }
    }

    /// Turn a line of our text into what the codec must be given (one character per byte of
    /// the line in this charset). A character the charset lacks becomes `?`.
    #[must_use]
    pub fn write_line(self, text: &str) -> String {
        if text.is_ascii() {
            return text.to_owned();
        }
        let bytes = if self.encoding == UTF_8 {
            text.as_bytes().to_vec()
        } else {
            let mut bytes = Vec::with_capacity(text.len());
            for character in text.chars() {
                let mut buffer = [0u8; 4];
                let (encoded, _, unmappable) =
                    self.encoding.encode(character.encode_utf8(&mut buffer));
                if unmappable {
                    bytes.push(b'?');
                } else {
                    bytes.extend_from_slice(&encoded);
                }
            }
            bytes
        };
        WINDOWS_1252
            .decode_without_bom_handling(&bytes)
            .0
            .into_owned()
    }
}

/// The bytes of a line the codec decoded as [`WIRE_LABEL`].
fn wire_bytes(wire: &str) -> Vec<u8> {
    if wire.is_ascii() {
        return wire.as_bytes().to_vec();
    }
    WINDOWS_1252.encode(wire).0.into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_of(bytes: &[u8]) -> String {
        WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned()
    }

    #[test]
    fn every_byte_survives_the_wire_mapping() {
        let all: Vec<u8> = (0u8..=255).collect();
        assert_eq!(wire_bytes(&wire_of(&all)), all);
    }

    #[test]
    fn utf8_is_read_as_utf8_and_anything_else_falls_back_without_loss() {
        let utf8 = Charset::default();
        assert_eq!(
            utf8.read_line(&wire_of("café ☕".as_bytes())),
            ("café ☕".to_owned(), false)
        );
        assert_eq!(
            utf8.read_line(&wire_of(b"caf\xe9")),
            ("café".to_owned(), true)
        );
        let cyrillic = Charset::for_label("koi8-r").unwrap();
        assert_eq!(
            cyrillic.read_line(&wire_of(b"\xf0\xd2\xc9\xd7\xc5\xd4")).0,
            "Привет"
        );
        assert_eq!(
            cyrillic.read_line(&wire_of("Привет".as_bytes())).0,
            "Привет"
        );
    }

    #[test]
    fn what_we_write_is_encoded_in_the_networks_charset() {
        assert_eq!(
            wire_bytes(&Charset::default().write_line("café ☕")),
            "café ☕".as_bytes()
        );
        let latin = Charset::for_label("latin1").unwrap();
        assert_eq!(wire_bytes(&latin.write_line("café ☕")), b"caf\xe9 ?");
    }

    #[test]
    fn labels_are_checked() {
        assert_eq!(Charset::for_label("UTF-8").unwrap().name(), "UTF-8");
        assert_eq!(Charset::for_label("latin1").unwrap().name(), "windows-1252");
        assert!(matches!(
            Charset::for_label("klingon"),
            Err(CharsetError::Unknown(_))
        ));
        assert!(matches!(
            Charset::for_label("utf-16le"),
            Err(CharsetError::NotAsciiCompatible(_))
        ));
    }
}
