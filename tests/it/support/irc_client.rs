//! A raw IRC client for tests: what a person on IRC would see, line by line.
//!
//! It registers, joins, answers PING, and lets a test wait for the lines it expects, each wait
//! with a deadline (never a sleep).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One line received, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub raw: String,
    pub source_nick: String,
    pub command: String,
    pub params: Vec<String>,
}

impl Line {
    fn parse(raw: &str) -> Line {
        let mut rest = raw.trim_end_matches(['\r', '\n']);
        if rest.starts_with('@') {
            rest = rest.split_once(' ').map_or("", |(_, r)| r);
        }
        let mut source_nick = String::new();
        if let Some(stripped) = rest.strip_prefix(':') {
            let (prefix, r) = stripped.split_once(' ').unwrap_or((stripped, ""));
            prefix
                .split('!')
                .next()
                .unwrap_or("")
                .clone_into(&mut source_nick);
            rest = r;
        }
        let (head, trailing) = match rest.split_once(" :") {
            Some((h, t)) => (h, Some(t)),
            None => (rest, None),
        };
        let mut words = head.split(' ').filter(|w| !w.is_empty());
        let command = words.next().unwrap_or("").to_owned();
        let mut params: Vec<String> = words.map(str::to_owned).collect();
        if let Some(t) = trailing {
            params.push(t.to_owned());
        }
        Line {
            raw: raw.to_owned(),
            source_nick,
            command,
            params,
        }
    }

    /// For PRIVMSG/NOTICE: (target, text).
    pub fn text(&self) -> Option<(&str, &str)> {
        if self.command == "PRIVMSG" || self.command == "NOTICE" {
            Some((self.params.first()?.as_str(), self.params.get(1)?.as_str()))
        } else {
            None
        }
    }
}

pub struct IrcClient {
    pub nick: String,
    writer: mpsc::UnboundedSender<Vec<u8>>,
    incoming: mpsc::UnboundedReceiver<Line>,
    backlog: VecDeque<Line>,
}

pub const DEADLINE: Duration = Duration::from_mins(1);

impl IrcClient {
    /// Connect and register (`InspIRCd` takes about a second to register a client).
    pub async fn connect(port: u16, nick: &str) -> IrcClient {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to IRC server");
        // As interactive clients do: a line goes out at once, not held back by Nagle's
        // algorithm until the server acknowledges the previous one (up to its 40 ms
        // delayed-ACK timer).
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let (read, mut write) = stream.into_split();
        let (writer, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        let (incoming_sender, incoming) = mpsc::unbounded_channel();
        let ping_writer = writer.clone();
        tokio::spawn(async move {
            while let Some(line) = outgoing.recv().await {
                if write.write_all(&line).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(raw)) = lines.next_line().await {
                let line = Line::parse(&raw);
                if line.command == "PING" {
                    let token = line.params.first().cloned().unwrap_or_default();
                    let _ = ping_writer.send(format!("PONG :{token}\r\n").into_bytes());
                    continue;
                }
                if incoming_sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = IrcClient {
            nick: nick.to_owned(),
            writer,
            incoming,
            backlog: VecDeque::new(),
        };
        client.raw(&format!("NICK {nick}"));
        client.raw(&format!("USER {nick} 0 * :{nick} test client"));
        client
            .wait_for(|l| l.command == "001", DEADLINE)
            .await
            .unwrap_or_else(|| panic!("{nick} was not welcomed"));
        client
    }

    #[allow(dead_code)] // used by the load harness (examples/loadgen.rs)
    /// The raw line writer (each line as bytes ending with CRLF), for a load generator.
    pub fn clone_writer(&self) -> mpsc::UnboundedSender<Vec<u8>> {
        self.writer.clone()
    }

    pub fn raw(&self, line: &str) {
        let _ = self.writer.send(format!("{line}\r\n").into_bytes());
    }

    /// Write `bytes` as they are (no line ending added): for lines that are not UTF-8.
    pub fn raw_bytes(&self, bytes: &[u8]) {
        let _ = self.writer.send(bytes.to_vec());
    }

    pub async fn join(&mut self, channel: &str) {
        self.raw(&format!("JOIN {channel}"));
        let channel_lower = channel.to_lowercase();
        self.wait_for(
            |l| {
                l.command == "366"
                    && l.params
                        .get(1)
                        .is_some_and(|c| c.to_lowercase() == channel_lower)
            },
            DEADLINE,
        )
        .await
        .unwrap_or_else(|| panic!("could not join {channel}"));
    }

    pub fn say(&self, channel: &str, text: &str) {
        self.raw(&format!("PRIVMSG {channel} :{text}"));
    }

    pub fn act(&self, channel: &str, text: &str) {
        self.raw(&format!("PRIVMSG {channel} :\x01ACTION {text}\x01"));
    }

    pub fn notice(&self, channel: &str, text: &str) {
        self.raw(&format!("NOTICE {channel} :{text}"));
    }

    /// The next line matching `predicate`, keeping the others for later calls.
    pub async fn wait_for(
        &mut self,
        predicate: impl Fn(&Line) -> bool,
        within: Duration,
    ) -> Option<Line> {
        if let Some(position) = self.backlog.iter().position(&predicate) {
            return self.backlog.remove(position);
        }
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.incoming.recv()).await {
                Ok(Some(line)) => {
                    if predicate(&line) {
                        return Some(line);
                    }
                    self.backlog.push_back(line);
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Wait until `nick` joins `channel` (the bridge arriving).
    pub async fn wait_join(&mut self, nick: &str, channel: &str) {
        let nick = nick.to_lowercase();
        let channel = channel.to_lowercase();
        self.wait_for(
            |l| {
                l.command == "JOIN"
                    && l.source_nick.to_lowercase() == nick
                    && l.params
                        .first()
                        .is_some_and(|c| c.to_lowercase() == channel)
            },
            DEADLINE,
        )
        .await
        .unwrap_or_else(|| panic!("{nick} did not join {channel}"));
    }

    /// Wait until `nick` is in `channel`, whether it is there already or joins later.
    pub async fn wait_member(&mut self, nick: &str, channel: &str) {
        self.raw(&format!("NAMES {channel}"));
        let lower_nick = nick.to_lowercase();
        let lower_channel = channel.to_lowercase();
        let mut present = false;
        loop {
            let line = self
                .wait_for(
                    |l| {
                        (l.command == "353" || l.command == "366")
                            && l.params.iter().any(|p| p.to_lowercase() == lower_channel)
                    },
                    DEADLINE,
                )
                .await
                .unwrap_or_else(|| panic!("no NAMES reply for {channel}"));
            if line.command == "366" {
                break;
            }
            present |= line.params.last().is_some_and(|names| {
                names.split(' ').any(|n| {
                    n.trim_start_matches(['@', '+', '%', '&', '~'])
                        .to_lowercase()
                        == lower_nick
                })
            });
        }
        if !present {
            self.wait_join(nick, channel).await;
        }
    }

    /// Every PRIVMSG/NOTICE line in `channel`, in order, up to and including the first whose
    /// text contains `marker`. Panics if the marker does not come before the deadline.
    pub async fn texts_until(&mut self, channel: &str, marker: &str) -> Vec<Line> {
        let channel = channel.to_lowercase();
        let mut seen = Vec::new();
        // Lines already received are kept in order in the backlog.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let next = if let Some(line) = self.backlog.pop_front() {
                Some(line)
            } else {
                tokio::time::timeout_at(deadline, self.incoming.recv())
                    .await
                    .unwrap_or_default()
            };
            let Some(line) = next else {
                panic!(
                    "{}: marker {marker:?} not seen in {channel}; saw {:#?}",
                    self.nick,
                    seen.iter().map(|l: &Line| &l.raw).collect::<Vec<_>>()
                );
            };
            let Some((target, text)) = line.text() else {
                continue;
            };
            if target.to_lowercase() != channel {
                continue;
            }
            let done = text.contains(marker);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
}

impl IrcClient {
    /// Like [`IrcClient::texts_until`], until every marker has been seen, in whatever order the
    /// lines arrive (lines from different senders race).
    pub async fn texts_until_all(&mut self, channel: &str, markers: &[&str]) -> Vec<Line> {
        let mut seen: Vec<Line> = Vec::new();
        for marker in markers {
            if seen
                .iter()
                .any(|l| l.text().is_some_and(|(_, t)| t.contains(marker)))
            {
                continue;
            }
            seen.extend(self.texts_until(channel, marker).await);
        }
        seen
    }
}

impl IrcClient {
    /// Every line received so far and not yet taken, in order, without waiting.
    pub fn drain(&mut self) -> Vec<Line> {
        let mut lines: Vec<Line> = self.backlog.drain(..).collect();
        while let Ok(line) = self.incoming.try_recv() {
            lines.push(line);
        }
        lines
    }
}

/// The visible texts of lines (the part after the target).
pub fn texts(lines: &[Line]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.text().map(|(_, t)| t.to_owned()))
        .collect()
}
