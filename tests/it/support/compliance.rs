//! The sides of the connector compliance suite (`tests/it/compliance.rs`): for each network type,
//! a [`Side`] brings up a fresh channel on that network's real test server (the shared `InspIRCd`,
//! the shared Synapse, a Mattermost emulator), a person in it and an account for the bridge,
//! writes the daemon's `[network.*]` block, and acts and looks as that person would.
//!
//! A side says what its network can show in [`Shows`]; the scenarios read that and never a
//! network's name. A side only implements the actions its network has: the default methods
//! panic, and a scenario never calls them on a side that declares it cannot show the kind.
//! Everything that waits has a deadline ([`DEADLINE`]) and panics with what it saw.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use tribridge::vocab::Capabilities;

use super::api_client::ApiClient;
use super::bridge::unique;
use super::config::{irc_network, matrix_network};
use super::irc_client::IrcClient;
use super::matrix_client::{Event, MatrixUser, local_part, register};
use super::mattermost::{MmServer, MmUser, messages};
use super::servers::{free_port, shared_inspircd, shared_synapse};

/// How long a person waits for something the bridge should show.
pub const DEADLINE: Duration = Duration::from_mins(1);

/// What a network can show a person, as the suite needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Shows {
    /// What the connector declares (its `CAPABILITIES`): edits, deletes, threads (replies) and
    /// reactions shown natively. A kind it cannot show is asserted as the documented fallback:
    /// an edit as a new line `* corrected text` (`edit_policy = "corrected"`), a reply as its
    /// text addressed to the one it answers (`nick: text`), a delete or a reaction as nothing at
    /// all.
    pub native: Capabilities,
    /// The network keeps what is said while the daemon is down, for it to read after a restart.
    pub replays_history: bool,
}

/// One message the bridge posted into the channel, as a person sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The network's id of it (post id, event id); empty where the network has none (IRC).
    pub id: String,
    /// The text shown (for Matrix the `body` without a reply's quote fallback).
    pub text: String,
    /// The message it answers or whose thread it is in, where the network shows that.
    pub reply_to: Option<String>,
}

/// One network type, from the point of view of a person in one of its channels.
///
/// Not object safe on purpose (async methods, `create`): scenarios are generic over the two
/// sides they bridge.
#[allow(async_fn_in_trait)] // only the suite implements and calls it; no Send bound needed
pub trait Side: Sized {
    /// A fresh channel with a person in it and an account for the bridge, on this network type's
    /// test server; `network` is the id of its `[network.*]` block.
    async fn create(network: &str) -> Self;
    /// What this network shows a person.
    fn shows(&self) -> Shows;
    /// The network id in the daemon's config.
    fn network(&self) -> &str;
    /// The `[network.<id>]` block for the daemon.
    fn network_block(&self) -> String;
    /// The channel as the gateway names it.
    fn channel(&self) -> &str;
    /// The person's name as the bridge shows it elsewhere (`<name> text`).
    fn person(&self) -> &str;
    /// Wait until the bridge's account is connected and in the channel (after a start, a restart
    /// or a dropped connection).
    async fn wait_bridge_present(&mut self);
    /// Wait until the bridge's account has gone (after the daemon was killed), where the network
    /// shows it.
    async fn wait_bridge_gone(&mut self) {}
    /// Drop the bridge's connection from the server's side, the cheapest real way; return once it
    /// is gone.
    async fn drop_bridge_connection(&mut self);

    /// Say `text`; returns the network's id of the message (empty where it has none).
    async fn say(&mut self, text: &str) -> String;
    /// Say each of `texts`, as fast as a person pasting them.
    async fn say_all(&mut self, texts: &[String]) {
        for text in texts {
            self.say(text).await;
        }
    }
    /// Edit one's own message.
    async fn edit(&mut self, _id: &str, _text: &str) {
        panic!("{}: this network has no edits", self.network());
    }
    /// Delete one's own message.
    async fn delete(&mut self, _id: &str) {
        panic!("{}: this network has no deletes", self.network());
    }
    /// Reply to a message; returns the reply's id.
    async fn reply(&mut self, _id: &str, _text: &str) -> String {
        panic!("{}: this network has no replies", self.network());
    }
    /// React to a message with a Unicode emoji.
    async fn react(&mut self, _id: &str, _emoji: &str) {
        panic!("{}: this network has no reactions", self.network());
    }

    /// Every message the bridge posted here since the last call, in order, up to and including
    /// the first whose text contains `marker`.
    async fn texts_until(&mut self, marker: &str) -> Vec<Seen>;
    /// Wait until the bridge's message `id` shows `text`, edited in place.
    async fn wait_edited(&mut self, _id: &str, _text: &str) {
        panic!("{}: this network shows no edits", self.network());
    }
    /// Wait until the bridge's message `id` is gone.
    async fn wait_deleted(&mut self, _id: &str) {
        panic!("{}: this network shows no deletes", self.network());
    }
    /// Wait until the bridge's account shows the reaction `emoji` (Unicode) on message `id`.
    async fn wait_reaction(&mut self, _id: &str, _emoji: &str) {
        panic!("{}: this network shows no reactions", self.network());
    }
    /// The reactions the bridge's account has put on message `id`, as far as the person has
    /// seen the channel (up to the last [`Side::texts_until`]).
    async fn reactions_by_bridge(&mut self, _id: &str) -> Vec<String> {
        panic!("{}: this network shows no reactions", self.network());
    }
}

/// IRC: a channel on the shared `InspIRCd`, a person on a raw client.
pub struct IrcSide {
    network: String,
    port: u16,
    channel: String,
    bot: String,
    person: IrcClient,
}

impl Side for IrcSide {
    async fn create(network: &str) -> IrcSide {
        let port = shared_inspircd().port;
        let channel = unique("#cp");
        let mut person = IrcClient::connect(port, &unique("ivan")).await;
        person.join(&channel).await;
        IrcSide {
            network: network.to_owned(),
            port,
            channel,
            bot: unique("brcp"),
            person,
        }
    }

    fn shows(&self) -> Shows {
        Shows {
            native: tribridge::connector::irc::CAPABILITIES,
            replays_history: false,
        }
    }

    fn network(&self) -> &str {
        &self.network
    }

    fn network_block(&self) -> String {
        irc_network(&self.network, self.port, &self.bot)
    }

    fn channel(&self) -> &str {
        &self.channel
    }

    fn person(&self) -> &str {
        &self.person.nick
    }

    async fn wait_bridge_present(&mut self) {
        self.person.wait_join(&self.bot, &self.channel).await;
    }

    async fn wait_bridge_gone(&mut self) {
        self.wait_quit().await;
    }

    /// An IRC operator's KILL: the server closes the bridge's connection.
    async fn drop_bridge_connection(&mut self) {
        self.person.raw("OPER admin adminpw");
        self.person
            .wait_for(|l| l.command == "381", DEADLINE)
            .await
            .expect("OPER accepted (381)");
        self.person.raw(&format!(
            "KILL {} :compliance: connection dropped",
            self.bot
        ));
        self.wait_quit().await;
    }

    async fn say(&mut self, text: &str) -> String {
        self.person.say(&self.channel, text);
        String::new()
    }

    async fn say_all(&mut self, texts: &[String]) {
        if texts.is_empty() {
            return;
        }
        let burst: Vec<String> = texts
            .iter()
            .map(|text| format!("PRIVMSG {} :{text}", self.channel))
            .collect();
        self.person.raw(&burst.join("\r\n"));
    }

    async fn texts_until(&mut self, marker: &str) -> Vec<Seen> {
        let lines = self.person.texts_until(&self.channel, marker).await;
        lines
            .iter()
            .filter(|line| line.source_nick.eq_ignore_ascii_case(&self.bot))
            .filter_map(|line| line.text())
            .map(|(_, text)| Seen {
                id: String::new(),
                text: text.to_owned(),
                reply_to: None,
            })
            .collect()
    }
}

impl IrcSide {
    async fn wait_quit(&mut self) {
        let bot = self.bot.to_lowercase();
        self.person
            .wait_for(
                |l| l.command == "QUIT" && l.source_nick.to_lowercase() == bot,
                DEADLINE,
            )
            .await
            .unwrap_or_else(|| panic!("{} never quit", self.bot));
    }
}

/// Matrix: a public room on the shared Synapse, a person on the client-server API. The bridge
/// reaches Synapse through a [`CutProxy`], so its connection can be dropped without restarting
/// the shared homeserver.
pub struct MatrixSide {
    network: String,
    proxy: CutProxy,
    bot: String,
    alias: String,
    room: String,
    person: MatrixUser,
    person_name: String,
    /// Every event of the room the person has synced, in order.
    log: Vec<Event>,
    /// How much of `log` [`Side::texts_until`] has handed out.
    taken: usize,
    /// Connections the proxy had accepted when it last cut them; `None` before any cut.
    accepted_at_cut: Option<usize>,
}

impl MatrixSide {
    /// Wait until an event of the room (from `log[from..]` on) satisfies `found`.
    async fn wait_event(&mut self, from: usize, found: impl Fn(&Event) -> bool) -> usize {
        if let Some(position) = self.log[from..].iter().position(&found) {
            return from + position;
        }
        let start = self.log.len();
        let new = self
            .person
            .events_until(&self.room, DEADLINE, |events| events.iter().any(&found))
            .await;
        self.log.extend(new);
        start
            + self.log[start..]
                .iter()
                .position(&found)
                .expect("the event just seen")
    }

    fn is_bot(&self, event: &Event) -> bool {
        event.sender == self.bot
    }

    /// A message a person sees as a new line (not an edit of an earlier one).
    fn is_visible_message(event: &Event) -> bool {
        event.kind == "m.room.message" && event.content["m.relates_to"]["rel_type"] != "m.replace"
    }

    fn seen(event: &Event) -> Seen {
        let relation = &event.content["m.relates_to"];
        let reply_to = relation["m.in_reply_to"]["event_id"]
            .as_str()
            .or_else(|| {
                (relation["rel_type"] == "m.thread")
                    .then(|| relation["event_id"].as_str())
                    .flatten()
            })
            .map(ToOwned::to_owned);
        let body = event.body();
        // A client shows a reply without the `> ` quote lines its fallback body starts with.
        let text = if reply_to.is_some() && body.starts_with("> ") {
            body.split_once("\n\n").map_or(body, |(_, rest)| rest)
        } else {
            body
        };
        Seen {
            id: event.event_id.clone(),
            text: text.to_owned(),
            reply_to,
        }
    }
}

impl Side for MatrixSide {
    async fn create(network: &str) -> MatrixSide {
        let synapse = shared_synapse();
        let url = synapse.url();
        let bot = unique("bot");
        register(&url, &bot, "password").await;
        let mut person = MatrixUser::new(&url, &unique("alice")).await;
        let alias_name = unique("cproom");
        let room = person.create_room(&alias_name).await;
        person.mark().await;
        let person_name = local_part(&person.user_id);
        MatrixSide {
            network: network.to_owned(),
            proxy: CutProxy::start(synapse.port).await,
            bot: format!("@{bot}:localhost"),
            alias: format!("#{alias_name}:localhost"),
            room,
            person,
            person_name,
            log: Vec::new(),
            taken: 0,
            accepted_at_cut: None,
        }
    }

    fn shows(&self) -> Shows {
        Shows {
            native: tribridge::connector::matrix::CAPABILITIES,
            replays_history: true,
        }
    }

    fn network(&self) -> &str {
        &self.network
    }

    fn network_block(&self) -> String {
        let homeserver = format!("http://127.0.0.1:{}", self.proxy.port);
        matrix_network(&self.network, &homeserver, &local_part(&self.bot))
    }

    fn channel(&self) -> &str {
        &self.alias
    }

    fn person(&self) -> &str {
        &self.person_name
    }

    async fn wait_bridge_present(&mut self) {
        let bot = self.bot.clone();
        self.wait_event(0, |e| {
            e.kind == "m.room.member" && e.content["membership"] == "join" && e.sender == bot
        })
        .await;
        if let Some(before) = self.accepted_at_cut {
            let deadline = Instant::now() + DEADLINE;
            while self.proxy.accepted() <= before {
                assert!(
                    Instant::now() < deadline,
                    "the bridge never connected to Synapse again"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Every connection between the bridge and Synapse is closed under it while its `/sync`
    /// long-poll is in flight (one waiting a second for its answer: every other request is
    /// answered in milliseconds here).
    async fn drop_bridge_connection(&mut self) {
        let (cut, accepted) = self.proxy.cut_when_waiting(Duration::from_secs(1)).await;
        self.accepted_at_cut = Some(accepted);
        assert!(cut > 0, "the bridge had no connection to Synapse to drop");
    }

    async fn say(&mut self, text: &str) -> String {
        self.person.say(&self.room, text).await
    }

    async fn edit(&mut self, id: &str, text: &str) {
        self.person
            .send_event(
                &self.room,
                "m.room.message",
                json!({"msgtype": "m.text", "body": format!("* {text}"),
                       "m.new_content": {"msgtype": "m.text", "body": text},
                       "m.relates_to": {"rel_type": "m.replace", "event_id": id}}),
            )
            .await;
    }

    async fn delete(&mut self, id: &str) {
        self.person.redact(&self.room, id).await;
    }

    async fn reply(&mut self, id: &str, text: &str) -> String {
        let quoted = self
            .log
            .iter()
            .find(|e| e.event_id == id)
            .map_or_else(String::new, |e| e.body().to_owned());
        self.person
            .send_event(
                &self.room,
                "m.room.message",
                json!({"msgtype": "m.text",
                       "body": format!("> <{}> {quoted}\n\n{text}", self.person.user_id),
                       "m.relates_to": {"m.in_reply_to": {"event_id": id}}}),
            )
            .await
    }

    async fn react(&mut self, id: &str, emoji: &str) {
        self.person
            .send_event(
                &self.room,
                "m.reaction",
                json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": id, "key": emoji}}),
            )
            .await;
    }

    async fn texts_until(&mut self, marker: &str) -> Vec<Seen> {
        let bot = self.bot.clone();
        let end = self
            .wait_event(self.taken, |e| {
                e.sender == bot
                    && Self::is_visible_message(e)
                    && Self::seen(e).text.contains(marker)
            })
            .await;
        let seen = self.log[self.taken..=end]
            .iter()
            .filter(|e| self.is_bot(e) && Self::is_visible_message(e))
            .map(Self::seen)
            .collect();
        self.taken = end + 1;
        seen
    }

    async fn wait_edited(&mut self, id: &str, text: &str) {
        let bot = self.bot.clone();
        self.wait_event(0, |e| {
            e.sender == bot
                && e.content["m.relates_to"]["rel_type"] == "m.replace"
                && e.content["m.relates_to"]["event_id"] == id
                && e.content["m.new_content"]["body"] == text
        })
        .await;
    }

    async fn wait_deleted(&mut self, id: &str) {
        let bot = self.bot.clone();
        self.wait_event(0, |e| {
            e.sender == bot && e.kind == "m.room.redaction" && e.content["redacts"] == id
        })
        .await;
    }

    async fn wait_reaction(&mut self, id: &str, emoji: &str) {
        let bot = self.bot.clone();
        self.wait_event(0, |e| {
            e.sender == bot
                && e.kind == "m.reaction"
                && e.content["m.relates_to"]["event_id"] == id
                && e.content["m.relates_to"]["key"] == emoji
        })
        .await;
    }

    async fn reactions_by_bridge(&mut self, id: &str) -> Vec<String> {
        self.log
            .iter()
            .filter(|e| {
                self.is_bot(e)
                    && e.kind == "m.reaction"
                    && e.content["m.relates_to"]["event_id"] == id
            })
            .map(|e| {
                e.content["m.relates_to"]["key"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }
}

/// A loopback TCP relay whose live connections can all be closed at once: a dropped connection
/// as the client sees it, without touching the server behind. It watches each connection for a
/// request still unanswered (bytes from the client, none back since), so a cut can be timed to
/// hit a long-poll in flight rather than idle keep-alive connections.
pub struct CutProxy {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    live: Arc<Mutex<Vec<Relayed>>>,
}

/// One relayed connection.
struct Relayed {
    task: tokio::task::AbortHandle,
    /// Since when the client has been waiting for an answer, if it is.
    waiting_since: Arc<Mutex<Option<Instant>>>,
}

impl Relayed {
    fn waiting_longer_than(&self, age: Duration) -> bool {
        !self.task.is_finished()
            && self
                .waiting_since
                .lock()
                .expect("proxy lock")
                .is_some_and(|since| since.elapsed() > age)
    }
}

/// Copy `from` to `to` until either ends, calling `on_data` before each chunk is passed on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    on_data: impl Fn(),
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        on_data();
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

impl CutProxy {
    pub async fn start(target_port: u16) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let live: Arc<Mutex<Vec<Relayed>>> = Arc::default();
        let (counter, connections) = (accepted.clone(), live.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let waiting_since: Arc<Mutex<Option<Instant>>> = Arc::default();
                let (asked, answered) = (waiting_since.clone(), waiting_since.clone());
                let task = tokio::spawn(async move {
                    let Ok(outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    let (client_read, client_write) = inbound.into_split();
                    let (server_read, server_write) = outbound.into_split();
                    tokio::join!(
                        pump(client_read, server_write, move || {
                            asked
                                .lock()
                                .expect("proxy lock")
                                .get_or_insert_with(Instant::now);
                        }),
                        pump(server_read, client_write, move || {
                            *answered.lock().expect("proxy lock") = None;
                        }),
                    );
                });
                let mut connections = connections.lock().expect("proxy lock");
                connections.retain(|c| !c.task.is_finished());
                connections.push(Relayed {
                    task: task.abort_handle(),
                    waiting_since,
                });
            }
        });
        CutProxy {
            port,
            accepted,
            live,
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Wait until a client has waited `age` for an answer on some connection (a long-poll in
    /// flight), then close every live connection (both ends). Returns how many were closed and
    /// how many connections had been accepted by then.
    pub async fn cut_when_waiting(&self, age: Duration) -> (usize, usize) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            {
                let mut connections = self.live.lock().expect("proxy lock");
                if connections.iter().any(|c| c.waiting_longer_than(age)) {
                    let live = connections.iter().filter(|c| !c.task.is_finished()).count();
                    let accepted = self.accepted();
                    for connection in connections.drain(..) {
                        connection.task.abort();
                    }
                    return (live, accepted);
                }
            }
            assert!(
                Instant::now() < deadline,
                "no request through the proxy was ever left waiting for {age:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Mattermost: a channel on its own emulator, a person over REST.
pub struct MattermostSide {
    network: String,
    server: MmServer,
    channel_name: String,
    channel_id: String,
    person: MmUser,
    person_name: String,
    /// Posts of the bridge already handed out by [`Side::texts_until`].
    taken: HashSet<String>,
}

/// Mattermost's name of a Unicode emoji, for the ones the suite uses.
fn mattermost_emoji(emoji: &str) -> &'static str {
    match emoji {
        "👍" => "+1",
        "🎉" => "tada",
        other => panic!("no Mattermost name known for {other}"),
    }
}

impl MattermostSide {
    fn seen(post: &Value) -> Seen {
        Seen {
            id: post["id"].as_str().unwrap_or_default().to_owned(),
            text: messages(std::slice::from_ref(post)).remove(0),
            reply_to: post["root_id"]
                .as_str()
                .filter(|root| !root.is_empty())
                .map(ToOwned::to_owned),
        }
    }
}

impl Side for MattermostSide {
    async fn create(network: &str) -> MattermostSide {
        let server = MmServer::start("civi").await;
        let channel_name = "town".to_owned();
        let channel_id = server.channel(&channel_name).await;
        let person_name = unique("mia");
        let person = server.user(&person_name, &channel_id).await;
        MattermostSide {
            network: network.to_owned(),
            server,
            channel_name,
            channel_id,
            person,
            person_name,
            taken: HashSet::new(),
        }
    }

    fn shows(&self) -> Shows {
        Shows {
            native: tribridge::connector::mattermost::CAPABILITIES,
            replays_history: true,
        }
    }

    fn network(&self) -> &str {
        &self.network
    }

    fn network_block(&self) -> String {
        self.server.network(&self.network, "")
    }

    fn channel(&self) -> &str {
        &self.channel_name
    }

    fn person(&self) -> &str {
        &self.person_name
    }

    async fn wait_bridge_present(&mut self) {
        self.server.wait_bot_member(&self.channel_id).await;
        self.server.wait_websocket(1).await;
    }

    async fn wait_bridge_gone(&mut self) {
        self.server.wait_websocket(0).await;
    }

    /// The emulator closes the bridge's WebSocket (it keeps the events, for a resume).
    async fn drop_bridge_connection(&mut self) {
        self.server.emu.drop_websockets();
        assert_eq!(self.server.emu.websocket_count(), 0);
    }

    async fn say(&mut self, text: &str) -> String {
        self.person.say(&self.channel_id, text).await
    }

    async fn edit(&mut self, id: &str, text: &str) {
        self.person.edit(id, text).await;
    }

    async fn delete(&mut self, id: &str) {
        self.person.delete(id).await;
    }

    async fn reply(&mut self, id: &str, text: &str) -> String {
        self.person.reply(&self.channel_id, id, text).await
    }

    async fn react(&mut self, id: &str, emoji: &str) {
        self.person.react(id, mattermost_emoji(emoji)).await;
    }

    async fn texts_until(&mut self, marker: &str) -> Vec<Seen> {
        let taken = &self.taken;
        let fresh = |post: &Value| !taken.contains(post["id"].as_str().unwrap_or_default());
        let posts = self
            .person
            .wait_posts_by(&self.channel_id, &self.server.bot_id, |posts| {
                posts
                    .iter()
                    .any(|p| fresh(p) && Self::seen(p).text.contains(marker))
            })
            .await;
        let fresh: Vec<Seen> = posts.iter().filter(|p| fresh(p)).map(Self::seen).collect();
        let end = fresh
            .iter()
            .position(|s| s.text.contains(marker))
            .expect("the marker just seen");
        let seen: Vec<Seen> = fresh[..=end].to_vec();
        self.taken.extend(seen.iter().map(|s| s.id.clone()));
        seen
    }

    async fn wait_edited(&mut self, id: &str, text: &str) {
        self.person
            .wait_post(id, |post| {
                post.is_some_and(|p| messages(std::slice::from_ref(p))[0] == text)
            })
            .await;
    }

    async fn wait_deleted(&mut self, id: &str) {
        self.person
            .wait_post(id, |post: Option<&Value>| post.is_none())
            .await;
    }

    async fn wait_reaction(&mut self, id: &str, emoji: &str) {
        self.person
            .wait_reactions(id, &[(&self.server.bot_id, mattermost_emoji(emoji))])
            .await;
    }

    async fn reactions_by_bridge(&mut self, id: &str) -> Vec<String> {
        let reactions = self
            .person
            .ok(Method::GET, &format!("/posts/{id}/reactions"), None)
            .await;
        reactions
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["user_id"] == self.server.bot_id.as_str())
            .map(|r| r["emoji_name"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// The api network: a program speaking matterbridge's HTTP API, reading what the gateway says
/// by polling `GET /api/messages` (which loses nothing across a dropped connection).
pub struct ApiSide {
    network: String,
    port: u16,
    client: ApiClient,
    person_name: String,
    /// Messages taken from the API and not yet handed out by [`Side::texts_until`].
    pending: std::collections::VecDeque<Value>,
}

impl ApiSide {
    const TOKEN: &'static str = "compliance-api-token";
    const GATEWAY: &'static str = "compliance";

    fn seen(message: &Value) -> Seen {
        Seen {
            id: message["id"].as_str().unwrap_or_default().to_owned(),
            text: format!(
                "{}{}",
                message["username"].as_str().unwrap_or_default(),
                message["text"].as_str().unwrap_or_default()
            ),
            reply_to: None,
        }
    }
}

impl Side for ApiSide {
    async fn create(network: &str) -> ApiSide {
        let port = free_port();
        ApiSide {
            network: network.to_owned(),
            port,
            client: ApiClient::new(port, Self::TOKEN),
            person_name: unique("cibot"),
            pending: std::collections::VecDeque::new(),
        }
    }

    fn shows(&self) -> Shows {
        Shows {
            native: tribridge::connector::api::CAPABILITIES,
            // A client cannot post while the daemon is down.
            replays_history: false,
        }
    }

    fn network(&self) -> &str {
        &self.network
    }

    fn network_block(&self) -> String {
        format!(
            "[network.{}]\ntype = \"api\"\nlisten = \"127.0.0.1:{}\"\ntoken = \"{}\"\n\n",
            self.network,
            self.port,
            Self::TOKEN
        )
    }

    fn channel(&self) -> &str {
        Self::GATEWAY
    }

    fn person(&self) -> &str {
        &self.person_name
    }

    async fn wait_bridge_present(&mut self) {
        self.client.wait_healthy().await;
    }

    async fn wait_bridge_gone(&mut self) {
        self.client.wait_gone().await;
    }

    /// The API has no connection of the bridge's to cut: the client's own connections go
    /// (a new HTTP client, its keep-alive pool closed).
    async fn drop_bridge_connection(&mut self) {
        self.client = ApiClient::new(self.port, Self::TOKEN);
    }

    async fn say(&mut self, text: &str) -> String {
        let answer = self
            .client
            .say(Self::GATEWAY, &self.person_name, text)
            .await;
        answer["id"].as_str().unwrap_or_default().to_owned()
    }

    async fn texts_until(&mut self, marker: &str) -> Vec<Seen> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(end) = self
                .pending
                .iter()
                .position(|m| Self::seen(m).text.contains(marker))
            {
                return self.pending.drain(..=end).map(|m| Self::seen(&m)).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{marker:?} not in /api/messages; took {:#?}",
                self.pending
            );
            let taken = self.client.messages().await;
            if taken.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.pending.extend(taken);
        }
    }
}
