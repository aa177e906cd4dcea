//! Rich text: one formatted-text model, and conversions between it and each platform's form.
//!
//! Owns: the model ([`model`]), parsing and rendering of IRC control codes ([`irc`]),
//! Mattermost Markdown ([`markdown`]) and Matrix `org.matrix.custom.html` ([`html`]), mention
//! mapping and mass-ping neutralising ([`mention`]), the long-text policy ([`long_text`]), and
//! how an edit is shown where messages cannot be edited ([`edits`]).
//! Must not: do I/O, know connectors or wire protocols beyond message text, or panic on any
//! input. Every parser accepts any string; every renderer accepts any tree.
//!
//! A connector converts inbound text with its platform's `parse`, the gateway maps mentions
//! with [`mention::rewrite_mentions`] and [`mention::neutralise_mass_pings`], and the
//! destination connector calls its platform's `render`:
//!
//! ```
//! use tribridge::richtext::{html, irc, markdown};
//! let text = irc::parse("\u{2}bold\u{2} and 2*3*4");
//! assert_eq!(markdown::render(&text), "**bold** and 2\\*3\\*4");
//! assert_eq!(
//!     html::render(&text).formatted_body.as_deref(),
//!     Some("<strong>bold</strong> and 2*3*4")
//! );
//! ```

mod build;
pub mod edits;
pub mod html;
pub mod irc;
pub mod long_text;
pub mod markdown;
pub mod mention;
pub mod model;

pub use model::{Block, FormattedText, Inline, Mention, MentionTarget, Rgb};
