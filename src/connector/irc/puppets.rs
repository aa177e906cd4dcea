//! Puppets (`puppets = true`): every person of another network who speaks in a bridged channel
//! gets an IRC connection of their own, opened on their first message, and says their lines
//! from it (PRIVMSG, `/me`, edits per the gateway's `edit_policy`).
//!
//! A puppet is a session like the bot's (same TLS, registration, backoff, acknowledgement by
//! labelled echo), with its own flood budget; it joins only the channels its person speaks in,
//! takes `NICK` when the person's display name changes, quits after `puppet_idle_timeout` and
//! connects again only when there is something to say, paced by `puppet_connect_rate`. Past
//! `max_puppets`, a new person's lines go through the relay bot (logged once per person).
//!
//! **Ordering across connections** (the outbox keeps up to 32 deliveries of a channel in
//! flight): deliveries handed to one connection are written in order, but two connections can
//! overtake each other. So a delivery for a channel goes to a connection other than the one the
//! previous delivery of that channel went to only once every earlier delivery of that channel
//! is acknowledged (or failed): a run of lines from one speaker pipelines, a change of speaker
//! costs one round trip. The server relays what it has echoed to us before what it receives
//! afterwards, so the channel sees the outbox's order. The wait happens in the run's own chain,
//! after the delivery is handed over: the handle takes the channel's next delivery at once, and
//! a new puppet registers (paced by `puppet_connect_rate`) while earlier lines are in flight, so
//! a burst of new speakers pays their registrations side by side, not in turn.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::connector::supervisor::{Backoff, SessionEnd};
use crate::connector::{BuildContext, DeliveryError, render_sender};
use crate::model::{Delivery, DeliveryAck, EventBody, Membership};

use super::config::{IrcConfig, PuppetConfig, is_valid_nick};
use super::{OutboundRequest, TaskInfo, irc_fold, mentions};

/// The nick length assumed until the bot's connection has read the server's `NICKLEN`.
const DEFAULT_NICKLEN: usize = 30;

/// What the bot's connection and every puppet's share: the nicks of puppets (their lines and
/// membership are never relayed back) and the server's nick length.
#[derive(Debug)]
pub(super) struct Shared {
    nicks: Mutex<HashSet<String>>,
    nicklen: AtomicUsize,
    /// (person, folded channel) where the server refused the person's puppet (banned, invite
    /// only, moderated…): the bot relays that person there.
    refused: Mutex<HashSet<(PersonKey, String)>>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            nicks: Mutex::new(HashSet::new()),
            nicklen: AtomicUsize::new(DEFAULT_NICKLEN),
            refused: Mutex::new(HashSet::new()),
        }
    }
}

impl Shared {
    /// The server refused `key`'s puppet in `channel`: the bot relays them there from now on.
    pub(super) fn refuse(&self, key: &PersonKey, channel: &str) {
        if lock(&self.refused).insert((key.clone(), irc_fold(channel))) {
            tracing::warn!(person = %key.1, from = %key.0, channel, "The server refused a puppet in this channel; the relay bot speaks for this person there.");
        }
    }

    fn refused(&self, key: &PersonKey, channel: &str) -> bool {
        lock(&self.refused).contains(&(key.clone(), irc_fold(channel)))
    }

    /// Is `nick` a puppet's (now or earlier in this run)?
    pub(super) fn is_puppet(&self, nick: &str) -> bool {
        lock(&self.nicks).contains(&irc_fold(nick))
    }

    /// A puppet has (or asks for) `nick`.
    pub(super) fn add(&self, nick: &str) {
        lock(&self.nicks).insert(irc_fold(nick));
    }

    /// A puppet no longer has `nick`, a linked person's own (`[[identity]]`): the person may
    /// use it on IRC themselves, and what they say there is theirs to relay.
    pub(super) fn release(&self, nick: &str) {
        lock(&self.nicks).remove(&irc_fold(nick));
    }

    /// The server's `NICKLEN` (from `RPL_ISUPPORT`).
    pub(super) fn set_nicklen(&self, length: usize) {
        if length > 0 {
            self.nicklen.store(length, Ordering::Relaxed);
        }
    }

    fn nicklen(&self) -> usize {
        self.nicklen.load(Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The nicks puppets got, by person, kept in `state_dir/irc-<network>-puppets.json` so that a
/// puppet keeps its nick (`dave[m]1` too) across restarts. Written whole to a temporary file
/// and synced, renamed over the old one, then the folder synced.
pub(super) struct NickBook {
    path: std::path::PathBuf,
    nicks: Mutex<HashMap<String, String>>,
    /// Changes recorded so far.
    version: std::sync::atomic::AtomicU64,
    /// Writes one at a time; holds the version last written, so that a burst of changes (500
    /// puppets registering) is written a few times, not once per change.
    writing: tokio::sync::Mutex<u64>,
}

impl NickBook {
    fn open(state_dir: &std::path::Path, network: &str) -> Self {
        let path = state_dir.join(format!("irc-{network}-puppets.json"));
        let nicks = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(network, path = %path.display(), error = %error, "The puppets' nicks file is not readable JSON; puppets start from their usual nicks.");
                HashMap::new()
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(error) => {
                tracing::warn!(network, path = %path.display(), error = %error, "Cannot read the puppets' nicks; puppets start from their usual nicks.");
                HashMap::new()
            }
        };
        Self {
            path,
            nicks: Mutex::new(nicks),
            version: std::sync::atomic::AtomicU64::new(0),
            writing: tokio::sync::Mutex::new(0),
        }
    }

    fn entry(key: &PersonKey) -> String {
        format!("{}\t{}", key.0, key.1)
    }

    /// The nick the person's puppet had last, when it has the same base as `base` (a rename
    /// gives a fresh start).
    fn nick(&self, key: &PersonKey, base: &str) -> Option<String> {
        lock(&self.nicks)
            .get(&Self::entry(key))
            .filter(|nick| {
                nick.strip_prefix(base)
                    .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit()))
            })
            .cloned()
    }

    /// The person's puppet now has `nick`.
    pub(super) fn record(self: &Arc<Self>, key: &PersonKey, nick: &str) {
        let changed =
            lock(&self.nicks).insert(Self::entry(key), nick.to_owned()) != Some(nick.to_owned());
        if !changed {
            return;
        }
        let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
        let book = Arc::clone(self);
        tokio::spawn(async move {
            let mut written = book.writing.lock().await;
            if *written >= version {
                // A later write already holds this change.
                return;
            }
            let current = book.version.load(Ordering::Acquire);
            let json = match serde_json::to_vec_pretty(&*lock(&book.nicks)) {
                Ok(json) => json,
                Err(error) => {
                    tracing::warn!(error = %error, "Cannot write the puppets' nicks.");
                    return;
                }
            };
            let path = book.path.clone();
            let result = tokio::task::spawn_blocking(move || {
                crate::connector::write_state_file(&path, &json)
            })
            .await;
            match result {
                Ok(Ok(())) => *written = current,
                Ok(Err(error)) => {
                    tracing::warn!(path = %book.path.display(), error = %error, "Cannot write the puppets' nicks; a restart may give some puppets other nicks.");
                }
                Err(_) => {}
            }
        });
    }
}

/// What a puppet's session knows of being one.
pub(super) struct PuppetRole {
    /// The nick the person should have now (changes with their display name).
    pub(super) wanted: Arc<Mutex<String>>,
    /// Quit after this long without a delivery.
    pub(super) idle_timeout: Duration,
    /// `WEBIRC` parameters: password, gateway, host name, address.
    pub(super) webirc: Option<[String; 4]>,
    /// The nick its fallbacks are made from (`dave[m]` → `dave[m]1`…).
    pub(super) base: String,
    /// Where the nick it gets is kept, under its person's key.
    pub(super) book: Arc<NickBook>,
    pub(super) key: PersonKey,
    /// The connection's configured nick is the person's own IRC nick (`[[identity]]`), not a
    /// puppet nick: it is a puppet's only while the connection has it.
    pub(super) own_nick: bool,
    /// The network's TLS settings for puppets (`None` without TLS), or why they are unusable.
    pub(super) tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
}

impl PuppetRole {
    pub(super) fn wanted(&self) -> String {
        lock(&self.wanted).clone()
    }
}

/// Who a puppet stands for: (origin network, author id).
pub(super) type PersonKey = (String, String);

/// One person's puppet, as the handle sees it.
struct Puppet {
    requests: mpsc::Sender<OutboundRequest>,
    wanted: Arc<Mutex<String>>,
    /// Woken when a request is queued (a puppet that quit connects again).
    wake: Arc<Notify>,
    /// Connected or connecting (not idle).
    active: Arc<AtomicBool>,
    /// Connect now: a delivery is held for it behind another connection's lines.
    warm: Arc<AtomicBool>,
}

/// Which connection a delivery goes through: the bot (`None`) or a person's puppet.
pub(super) type Connection = Option<PersonKey>;

/// The order of one channel's deliveries across connections.
struct ChannelOrder {
    /// The connection of the current run (consecutive deliveries on one connection).
    connection: Connection,
    /// The current run's deliveries not yet acknowledged or failed.
    outstanding: Arc<watch::Sender<usize>>,
    /// The current run's chain, when it waits for the previous run.
    held: Option<mpsc::UnboundedSender<OutboundRequest>>,
}

/// The puppets of one IRC network, owned by its handle.
pub(super) struct Puppets {
    network: String,
    config: IrcConfig,
    settings: PuppetConfig,
    /// The network's context without its channels (a puppet joins only where its person
    /// speaks), shared by every puppet's session.
    context: Arc<BuildContext>,
    recent: Arc<Mutex<mentions::Recent>>,
    pub(super) shared: Arc<Shared>,
    people: Mutex<HashMap<PersonKey, Puppet>>,
    /// People relayed by the bot because of `max_puppets`, logged once each.
    overflow: Mutex<HashSet<PersonKey>>,
    /// The earliest time the next puppet connection may open.
    pacer: Arc<tokio::sync::Mutex<Instant>>,
    order: Mutex<HashMap<String, ChannelOrder>>,
    book: Arc<NickBook>,
    /// Every puppet's TLS settings (see [`super::link::puppet_tls`]).
    tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
}

impl Puppets {
    pub(super) fn new(
        network: &str,
        config: &IrcConfig,
        settings: PuppetConfig,
        context: &BuildContext,
        recent: &Arc<Mutex<mentions::Recent>>,
        shared: &Arc<Shared>,
    ) -> Self {
        Self {
            network: network.to_owned(),
            config: config.clone(),
            settings,
            context: Arc::new(BuildContext {
                channels: Vec::new(),
                // A puppet joins the channels of its deliveries, not the network's.
                channel_updates: tokio::sync::watch::channel(Vec::new()).1,
                status: crate::vocab::NetworkStatus::detached(network),
                ..context.clone()
            }),
            recent: Arc::clone(recent),
            shared: Arc::clone(shared),
            people: Mutex::new(HashMap::new()),
            overflow: Mutex::new(HashSet::new()),
            pacer: Arc::new(tokio::sync::Mutex::new(Instant::now())),
            order: Mutex::new(HashMap::new()),
            book: Arc::new(NickBook::open(&context.state_dir, network)),
            tls: super::link::puppet_tls(config).inspect_err(|error| {
                tracing::error!(network, error = %error, "Puppets cannot connect with these TLS settings.");
            }),
        }
    }

    /// The nick a person's puppet asks for: `puppet_nick_format` (by default `{NICK}[m]` for
    /// Matrix, `{NICK}[mm]` for Mattermost), sanitised to IRC's nick grammar and cut to the
    /// server's `NICKLEN` with room for one fallback digit (`dave[m]` → `dave[m]1`).
    pub(super) fn nick_for(&self, delivery: &Delivery) -> String {
        let format = self.settings.nick_format.clone().unwrap_or_else(|| {
            match delivery.origin_protocol.as_str() {
                "matrix" => "{NICK}[m]",
                "mattermost" => "{NICK}[mm]",
                _ => "{NICK}[x]",
            }
            .to_owned()
        });
        puppet_nick(&format, delivery, self.shared.nicklen())
    }

    /// The person's own nick on this network, when they are linked to one (`[[identity]]`).
    fn own_nick(&self, delivery: &Delivery) -> Option<String> {
        self.context
            .router
            .people()
            .identities()
            .account_on(&delivery.origin.network, &delivery.author.id, &self.network)
            .map(str::to_owned)
    }

    /// The connection a delivery goes through, starting the person's puppet when it has none.
    fn route(
        &self,
        delivery: &Delivery,
    ) -> Option<(PersonKey, mpsc::Sender<OutboundRequest>, Arc<Notify>)> {
        // Texts and edits; joins (the puppet joins), leaves (it parts) and renames (`NICK`) of
        // people who have a puppet, or for a join may get one.
        let starts = match &delivery.body {
            EventBody::Text { .. }
            | EventBody::Edit { .. }
            | EventBody::Membership(Membership::Joined) => true,
            EventBody::Membership(Membership::Left { .. } | Membership::Renamed { .. }) => false,
            _ => return None,
        };
        if delivery.origin.network == self.network {
            return None;
        }
        let key = (delivery.origin.network.clone(), delivery.author.id.clone());
        if self.shared.refused(&key, &delivery.destination.channel) {
            return None;
        }
        let own = self.own_nick(delivery);
        let usual = match &delivery.body {
            EventBody::Membership(Membership::Renamed { new_name }) => {
                let mut renamed = delivery.clone();
                renamed.author.display_name.clone_from(new_name);
                self.nick_for(&renamed)
            }
            _ => self.nick_for(delivery),
        };
        // A linked person keeps their own nick whatever their name here.
        let wanted = own.clone().unwrap_or_else(|| usual.clone());
        let mut people = lock(&self.people);
        if let Some(puppet) = people.get(&key)
            && !puppet.requests.is_closed()
        {
            let active = people
                .values()
                .filter(|p| p.active.load(Ordering::Relaxed))
                .count();
            if !puppet.active.load(Ordering::Relaxed) && active >= self.settings.max_puppets {
                drop(people);
                self.overflowed(&key);
                return None;
            }
            if own.is_none() {
                let mut current = lock(&puppet.wanted);
                if *current != wanted {
                    self.shared.add(&wanted);
                    current.clone_from(&wanted);
                }
            }
            return Some((key, puppet.requests.clone(), Arc::clone(&puppet.wake)));
        }
        people.retain(|_, p| !p.requests.is_closed());
        if !starts {
            return None;
        }
        let active = people
            .values()
            .filter(|p| p.active.load(Ordering::Relaxed))
            .count();
        if active >= self.settings.max_puppets {
            drop(people);
            self.overflowed(&key);
            return None;
        }
        let puppet = self.start(delivery, &key, &usual, own);
        let route = (
            key.clone(),
            puppet.requests.clone(),
            Arc::clone(&puppet.wake),
        );
        people.insert(key, puppet);
        Some(route)
    }

    fn overflowed(&self, key: &PersonKey) {
        if lock(&self.overflow).insert(key.clone()) {
            tracing::warn!(network = %self.network, person = %key.1, from = %key.0, max_puppets = self.settings.max_puppets, "max_puppets reached: this person's lines go through the relay bot.");
        }
    }

    /// Start a person's puppet task. `base` is its usual nick; `own` the person's own nick on
    /// this network (`[[identity]]`), which it asks for first, falling back to `base` when
    /// someone (the person themselves) has it.
    fn start(
        &self,
        delivery: &Delivery,
        key: &PersonKey,
        base: &str,
        own: Option<String>,
    ) -> Puppet {
        let (sender, receiver) = mpsc::channel(super::PIPELINE_WINDOW * 2);
        let own_nick = own.is_some();
        let first = if let Some(own) = own {
            // Counted as a puppet's only once the connection has it (`001`, `NICK`).
            own
        } else {
            // The nick it had before (also before a restart), else the one its name asks for.
            let first = self.book.nick(key, base).unwrap_or_else(|| base.to_owned());
            self.shared.add(&first);
            first
        };
        let wanted = Arc::new(Mutex::new(if own_nick {
            first.clone()
        } else {
            base.to_owned()
        }));
        let wake = Arc::new(Notify::new());
        let active = Arc::new(AtomicBool::new(true));
        let warm = Arc::new(AtomicBool::new(false));
        let mut config = self.config.clone();
        config.nick = first;
        config.username = ident(&delivery.origin_protocol);
        config.realname = render_sender(&self.settings.realname, delivery, str::to_owned)
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        config.sasl_username = None;
        config.sasl_password = None;
        // A linked person's own nick identifies to NickServ where they gave its password.
        config.nickserv_password = if own_nick {
            self.context
                .router
                .people()
                .identities()
                .of(&delivery.origin.network, &delivery.author.id)
                .and_then(|identity| identity.nickserv_password.clone())
        } else {
            None
        };
        config.relay_membership = false;
        config.rejoin_after_kick = true;
        let webirc = self.settings.webirc_password.as_ref().map(|password| {
            let host = format!(
                "{}.{}",
                host_label(&delivery.author.id),
                host_label(&delivery.origin.network)
            );
            [
                password.expose().to_owned(),
                "tribridge".to_owned(),
                host,
                "127.0.0.1".to_owned(),
            ]
        });
        let info = TaskInfo {
            network: self.network.clone(),
            charset: config.charset,
            config,
            context: Arc::clone(&self.context),
            edits_dropped: std::sync::atomic::AtomicU64::new(0),
            not_utf8_lines: std::sync::atomic::AtomicU64::new(0),
            recent: Arc::clone(&self.recent),
            shared: Arc::clone(&self.shared),
            cursors: Arc::default(),
            puppet: Some(PuppetRole {
                wanted: Arc::clone(&wanted),
                idle_timeout: self.settings.idle_timeout,
                webirc,
                base: base.to_owned(),
                book: Arc::clone(&self.book),
                key: key.clone(),
                own_nick,
                tls: self.tls.clone(),
            }),
        };
        tracing::info!(network = %self.network, nick = %info.config.nick, person = %delivery.author.id, from = %delivery.origin.network, "Opening a puppet connection.");
        tokio::spawn(run(
            info,
            receiver,
            Arc::clone(&wake),
            Arc::clone(&active),
            Arc::clone(&warm),
            Arc::clone(&self.pacer),
            self.settings.connect_rate,
        ));
        Puppet {
            requests: sender,
            wanted,
            wake,
            active,
            warm,
        }
    }

    /// Hand a delivery to its connection: its puppet's, or the bot's (`bot`), keeping the
    /// channel's order across connections (see the module's documentation). Returns at once:
    /// a delivery that must wait for another connection's lines is held in its run's chain
    /// while its puppet connects.
    pub(super) async fn send(
        &self,
        delivery: &Delivery,
        bot: &mpsc::Sender<OutboundRequest>,
        request: OutboundRequest,
        acknowledged: oneshot::Receiver<Result<DeliveryAck, DeliveryError>>,
    ) -> Result<oneshot::Receiver<Result<DeliveryAck, DeliveryError>>, DeliveryError> {
        let route = self.route(delivery);
        let connection: Connection = route.as_ref().map(|(key, _, _)| key.clone());
        let (target, wake) = match &route {
            Some((_, requests, wake)) => (requests.clone(), Some(Arc::clone(wake))),
            None => (bot.clone(), None),
        };
        let channel = irc_fold(&delivery.destination.channel);
        let (outstanding, held) = {
            let mut order = lock(&self.order);
            let entry = order.entry(channel).or_insert_with(|| ChannelOrder {
                connection: None,
                outstanding: Arc::new(watch::channel(0).0),
                held: None,
            });
            if entry.connection != connection {
                // A new run: it waits for the previous run's lines only if some are in flight.
                let previous =
                    std::mem::replace(&mut entry.outstanding, Arc::new(watch::channel(0).0));
                entry.held = (*previous.borrow() != 0)
                    .then(|| hold(previous.subscribe(), target.clone(), wake.clone()));
                entry.connection.clone_from(&connection);
            }
            // Counted now, so that the next run waits for this line too.
            entry.outstanding.send_modify(|count| *count += 1);
            let held = entry
                .held
                .as_ref()
                .filter(|held| !held.is_closed())
                .cloned();
            (Arc::clone(&entry.outstanding), held)
        };
        let (reply, forwarded) = oneshot::channel();
        tokio::spawn(async move {
            let mut reply = reply;
            tokio::select! {
                result = acknowledged => {
                    outstanding.send_modify(|count| *count = count.saturating_sub(1));
                    if let Ok(result) = result {
                        let _ = reply.send(result);
                    }
                }
                () = reply.closed() => {
                    outstanding.send_modify(|count| *count = count.saturating_sub(1));
                }
            }
        });
        let stopped = || DeliveryError::Retry {
            after: Some(Duration::from_secs(1)),
            reason: "the IRC connection task has stopped".into(),
        };
        if let Some(held) = held {
            // Another connection has lines of this channel in flight: they go first. The
            // puppet connects (registers) meanwhile.
            held.send(request).map_err(|_| stopped())?;
            if let (Some(wake), Some((key, _, _))) = (&wake, &route) {
                self.warm(key);
                wake.notify_one();
            }
        } else {
            target.send(request).await.map_err(|_| stopped())?;
            if let Some(wake) = &wake {
                wake.notify_one();
            }
        }
        Ok(forwarded)
    }

    /// Ask a person's puppet to connect now, before it has a line to say.
    fn warm(&self, key: &PersonKey) {
        if let Some(puppet) = lock(&self.people).get(key) {
            puppet.warm.store(true, Ordering::Relaxed);
        }
    }
}

/// A run's chain: requests that go to `target` once every line counted by `previous` (the
/// channel's previous run, on another connection) is acknowledged or failed, in order.
fn hold(
    mut previous: watch::Receiver<usize>,
    target: mpsc::Sender<OutboundRequest>,
    wake: Option<Arc<Notify>>,
) -> mpsc::UnboundedSender<OutboundRequest> {
    let (held, mut requests) = mpsc::unbounded_channel::<OutboundRequest>();
    tokio::spawn(async move {
        let _ = previous.wait_for(|count| *count == 0).await;
        while let Some(request) = requests.recv().await {
            // A stopped connection drops the request; its reply's sender with it, so the
            // outbox sees the delivery fail and retries it.
            if target.send(request).await.is_err() {
                return;
            }
            if let Some(wake) = &wake {
                wake.notify_one();
            }
        }
    });
    held
}

/// A puppet's nick from `format` for the delivery's author, valid on IRC and at most
/// `nicklen - 1` long (room for a fallback digit).
fn puppet_nick(format: &str, delivery: &Delivery, nicklen: usize) -> String {
    const MARK: char = '\u{1}';
    let shell = render_sender(&format.replace("{NICK}", "\u{1}"), delivery, str::to_owned);
    let (before, after) = shell.split_once(MARK).unwrap_or((shell.as_str(), ""));
    let keep = |text: &str| -> String {
        text.chars()
            .filter(|c| c.is_ascii_alphanumeric() || "[]\\`_^{|}-".contains(*c))
            .collect()
    };
    let (before, after) = (keep(before), keep(&after.replace(MARK, "")));
    let mut name = keep(&delivery.author.display_name.replace(' ', "_"));
    if name.is_empty() {
        name = keep(&delivery.author.id.replace(' ', "_"));
    }
    let room = nicklen
        .saturating_sub(1)
        .saturating_sub(before.len() + after.len())
        .max(1);
    name.truncate(room);
    let mut nick = format!("{before}{name}{after}");
    if !is_valid_nick(&nick) {
        nick.insert(0, '_');
    }
    nick.truncate(nicklen.saturating_sub(1).max(2));
    nick
}

/// The user name (ident) of a puppet: its person's protocol, as IRC allows.
fn ident(protocol: &str) -> String {
    let ident: String = protocol
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    if ident.is_empty() {
        "bridged".to_owned()
    } else {
        ident
    }
}

/// A piece of a host name for `WEBIRC`.
fn host_label(text: &str) -> String {
    let label: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let label = label.trim_matches('-').to_owned();
    if label.is_empty() {
        "person".to_owned()
    } else {
        label
    }
}

/// A puppet's task: connect (paced), run the session, and after an idle quit or a lost
/// connection wait until there is something to say before connecting again.
async fn run(
    info: TaskInfo,
    mut requests: mpsc::Receiver<OutboundRequest>,
    wake: Arc<Notify>,
    active: Arc<AtomicBool>,
    warm: Arc<AtomicBool>,
    pacer: Arc<tokio::sync::Mutex<Instant>>,
    rate: u32,
) {
    let shutdown = info.context.shutdown.clone();
    let policy = info.context.reconnect;
    let mut backoff = Backoff::new(policy.first, policy.max);
    let spacing = Duration::from_secs(1) / rate.max(1);
    loop {
        while requests.is_empty() && !warm.swap(false, Ordering::Relaxed) {
            active.store(false, Ordering::Relaxed);
            tokio::select! {
                () = wake.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
        active.store(true, Ordering::Relaxed);
        {
            // One connection at a time through the pacer, each `spacing` after the previous
            // one actually started (not after when it was due: a late wake-up must not bunch
            // connections), so no second ever sees more than `puppet_connect_rate`.
            let mut next = tokio::select! {
                next = pacer.lock() => next,
                () = shutdown.cancelled() => return,
            };
            tokio::select! {
                () = tokio::time::sleep_until(*next) => {}
                () = shutdown.cancelled() => return,
            }
            tracing::info!(network = %info.network, nick = %info.config.nick, "Puppet connecting.");
            *next = Instant::now() + spacing;
        }
        let started = Instant::now();
        let end = info.session(&mut requests).await;
        if info.puppet.as_ref().is_some_and(|role| role.own_nick) {
            // The person's own nick is theirs again once the connection is gone.
            info.shared.release(&info.config.nick);
        }
        // Asked to connect while it was connected: done.
        warm.store(false, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            return;
        }
        match end {
            SessionEnd::Shutdown => {
                // Idle: quit; the next delivery brings it back.
                tracing::info!(network = %info.network, nick = %info.config.nick, "Puppet idle; quit.");
                backoff.reset();
            }
            SessionEnd::Lost(reason) => {
                if started.elapsed() > policy.healthy_after {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(network = %info.network, nick = %info.config.nick, reason = %reason, delay_ms = delay.as_millis() as u64, "Puppet connection lost; connecting again when there is something to say.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(protocol: &str, name: &str) -> Delivery {
        let mut delivery = Delivery::sample(
            1,
            crate::model::ChannelRef::new("mx", "!r"),
            crate::model::ChannelRef::new("irc", "#c"),
            "hi",
        );
        delivery.origin_protocol = protocol.to_owned();
        delivery.author.display_name = name.to_owned();
        delivery
    }

    #[test]
    fn the_nick_file_is_replaced_whole() {
        let folder = std::env::temp_dir().join(format!(
            "tribridge-nickbook-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("irc-net-puppets.json");
        crate::connector::write_state_file(&path, b"{\"a\": \"dave[m]\"}").unwrap();
        crate::connector::write_state_file(&path, b"{\"a\": \"dave[m]1\"}").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\": \"dave[m]1\"}");
        let left: Vec<_> = std::fs::read_dir(&folder).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn nicks_are_valid_and_fit() {
        assert_eq!(
            puppet_nick("{NICK}[m]", &from("matrix", "dave"), 30),
            "dave[m]"
        );
        assert_eq!(
            puppet_nick("{NICK}[m]", &from("matrix", "Dave Smith"), 30),
            "Dave_Smith[m]"
        );
        assert_eq!(
            puppet_nick("{NICK}[m]", &from("matrix", "9lives"), 30),
            "_9lives[m]"
        );
        assert_eq!(
            puppet_nick("{NICK}[mm]", &from("matrix", "élodie"), 30),
            "lodie[mm]"
        );
        let long = puppet_nick("{NICK}[m]", &from("matrix", "averyveryverylongname"), 9);
        assert_eq!(long, "avery[m]");
        assert!(long.len() < 9);
    }
}
