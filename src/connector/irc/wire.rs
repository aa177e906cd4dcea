//! Small readers over the `irc` crate's parsed messages: the command and its parameters as
//! strings (uniform for every command and numeric), and `IRCv3` `server-time` values.

use irc::client::prelude::Message;

/// A message's command and parameters, as they were on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireLine {
    /// The command or three-digit numeric.
    pub command: String,
    /// The parameters, the trailing one included.
    pub params: Vec<String>,
}

impl WireLine {
    /// Read a parsed message back into command and parameters.
    #[must_use]
    pub fn of(message: &Message) -> Self {
        Self::parse(&String::from(&message.command))
    }

    /// Parse `COMMAND p1 p2 :trailing` (no tags, no prefix).
    #[must_use]
    pub fn parse(line: &str) -> Self {
        let line = line.trim_end_matches(['\r', '\n']);
        let (head, trailing) = match line.split_once(" :") {
            Some((head, trailing)) => (head, Some(trailing)),
            None => (line, None),
        };
        let mut words = head.split(' ').filter(|w| !w.is_empty());
        let command = words.next().unwrap_or("").to_ascii_uppercase();
        let mut params: Vec<String> = words.map(str::to_owned).collect();
        if let Some(trailing) = trailing {
            params.push(trailing.to_owned());
        }
        Self { command, params }
    }

    /// Parameter `index`, if present.
    #[must_use]
    pub fn param(&self, index: usize) -> Option<&str> {
        self.params.get(index).map(String::as_str)
    }

    /// The last parameter, if any.
    #[must_use]
    pub fn last(&self) -> Option<&str> {
        self.params.last().map(String::as_str)
    }
}

/// Parse an `IRCv3` `time` tag (`YYYY-MM-DDThh:mm:ss.sssZ`) into ms since the Unix epoch.
#[must_use]
pub fn parse_server_time(value: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(value)
        .ok()
        .map(|time| time.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_params() {
        let line = WireLine::parse("PRIVMSG #a :hello there");
        assert_eq!(line.command, "PRIVMSG");
        assert_eq!(line.params, vec!["#a", "hello there"]);
        let line = WireLine::parse("CAP * LS * :a b");
        assert_eq!(line.params, vec!["*", "LS", "*", "a b"]);
    }

    #[test]
    fn server_time() {
        assert_eq!(parse_server_time("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(
            parse_server_time("2026-11-22T04:00:00.5Z"),
            Some(1_795_320_000_500)
        );
        assert_eq!(parse_server_time("garbage"), None);
        assert_eq!(parse_server_time("2026-13-22T04:00:00.000Z"), None);
    }
}
