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
    let value = value.strip_suffix('Z')?;
    let (date, time) = value.split_once('T')?;
    let mut date_parts = date.split('-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (clock, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut clock_parts = clock.split(':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: i64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let millis: i64 = format!("{:0<3}", fraction.get(..3.min(fraction.len()))?)
        .parse()
        .ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
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
