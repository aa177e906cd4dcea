//! One connection to an IRC server: the [`Session`] state, the connection loop, writing (every
//! line through the network's charset, under flood control) and the outbound queue, the
//! acknowledgement of deliveries by label, by echo order or when written, and the deadlines;
//! registration is in `registration`, inbound lines in `handlers`. **Invariants:** lines are
//! written in the order deliveries were queued, and deliveries are taken only once the session is
//! `Ready`; text is rendered only through [`super::convert`]; a delivery is acknowledged once
//! every one of its lines is confirmed, and all still in flight fail for retry when the
//! connection ends.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use irc::client::prelude::{Command, Message};
use irc::proto::message::Tag;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connector::supervisor::SessionEnd;
use crate::connector::{DeliveryError, sleep_until_opt, with_original_time};
use crate::model::{DeliveryAck, EventBody, Membership, now_ms};
use crate::richtext::edits::EditPolicy;

use super::convert::{files_as_lines, label, render_delivery};
use super::flood::TokenBucket;
use super::link::Outgoing;
use super::{
    COMMITS_IN_FLIGHT, ECHO_TIMEOUT, OutboundRequest, REGAIN_INTERVAL, TaskInfo, charset, irc_fold,
};

impl TaskInfo {
    /// A line as the codec read it (one character per byte) into its text, per `charset`.
    fn read_line(&self, message: Message) -> Message {
        let wire = message.to_string();
        if wire.is_ascii() {
            return message;
        }
        let (text, fallback) = self.charset.read_line(&wire);
        if fallback {
            let count = self
                .not_utf8_lines
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1;
            tracing::info!(network = %self.network, charset = self.charset.name(), count, "A line that is not UTF-8; read in the fallback charset.");
        }
        text.parse::<Message>().unwrap_or(message)
    }

    /// The nicks the connection falls back to when its own is taken.
    pub(super) fn alt_nicks(&self) -> Vec<String> {
        let nick = &self.config.nick;
        if let Some(role) = &self.puppet {
            // A puppet's fallback is stable: `dave[m]` → `dave[m]1`, `dave[m]2`…
            let base = &role.base;
            std::iter::once(base.clone())
                .chain((1..=9).map(|n| format!("{base}{n}")))
                .filter(|alt| alt != nick)
                .collect()
        } else {
            vec![
                format!("{nick}_"),
                format!("{nick}__"),
                format!("{nick}___"),
                format!("{nick}1"),
                format!("{nick}2"),
                format!("{nick}3"),
            ]
        }
    }

    pub(super) fn client_config(&self) -> irc::client::data::Config {
        let nick = &self.config.nick;
        let alt_nicks = self.alt_nicks();
        irc::client::data::Config {
            nickname: Some(nick.clone()),
            alt_nicks,
            username: Some(self.config.username.clone()),
            realname: Some(self.config.realname.clone()),
            server: Some(self.config.host.clone()),
            port: Some(self.config.port),
            use_tls: Some(self.config.tls),
            dangerously_accept_invalid_certs: Some(!self.config.tls_verify),
            cert_path: self
                .config
                .tls_ca_file
                .as_ref()
                .map(|p| p.display().to_string()),
            // Every byte reaches `charset` intact; it decides what the bytes mean.
            encoding: Some(charset::WIRE_LABEL.to_owned()),
            ping_time: Some(60),
            ping_timeout: Some(30),
            ..irc::client::data::Config::default()
        }
    }

    pub(super) async fn session(
        &self,
        requests: &mut mpsc::Receiver<OutboundRequest>,
    ) -> SessionEnd {
        let connected = tokio::select! {
            connected = self.connect() => connected,
            () = self.context.shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let (mut link, outgoing) = match connected {
            Ok(connected) => connected,
            Err(reason) => return SessionEnd::Lost(reason),
        };
        let mut session = Session::new(self, outgoing);
        if let Err(error) = session.begin_registration() {
            return SessionEnd::Lost(format!("cannot send registration: {error}"));
        }
        let mut regain = tokio::time::interval(REGAIN_INTERVAL);
        regain.reset();
        // The channels a reload adds or removes are joined or parted on this connection (a
        // change already seen when the session began is a no-op: it follows by difference).
        let mut channel_updates = self.context.channel_updates.clone();
        let end = loop {
            if let Err(reason) = link.flush(&session.outgoing).await {
                break SessionEnd::Lost(reason);
            }
            let flood_at = session.flood_ready_at();
            let deadline = session.next_deadline();
            tokio::select! {
                biased;
                () = self.context.shutdown.cancelled() => {
                    session.quit("tribridge shutting down");
                    // The server answers the QUIT with ERROR and closes. Wait for that, briefly.
                    let _ = tokio::time::timeout(Duration::from_secs(3), async {
                        link.flush(&session.outgoing).await?;
                        while let Some(Ok(_)) = link.next().await {}
                        Ok::<(), String>(())
                    })
                    .await;
                    break SessionEnd::Shutdown;
                }
                message = link.next() => match message {
                    Some(Ok(None)) => {}
                    Some(Ok(Some(message))) => {
                        let message = self.read_line(message);
                        if let Err(reason) = session.handle(&message).await {
                            break SessionEnd::Lost(reason);
                        }
                    }
                    Some(Err(reason)) => break SessionEnd::Lost(reason),
                    None => break SessionEnd::Lost("server closed the connection".into()),
                },
                () = sleep_until_opt(flood_at) => {
                    if let Err(reason) = session.write_queued() {
                        break SessionEnd::Lost(reason);
                    }
                }
                request = requests.recv(), if session.accepts_requests() => match request {
                    Some(request) => {
                        session.enqueue(request);
                        // Written now if flood control allows: a timer set for "now" would
                        // fire only at the runtime's next millisecond tick.
                        if let Err(reason) = session.write_queued() {
                            break SessionEnd::Lost(reason);
                        }
                    }
                    None => break SessionEnd::Shutdown,
                },
                () = sleep_until_opt(deadline) => {
                    if let Err(reason) = session.on_deadline() {
                        break SessionEnd::Lost(reason);
                    }
                }
                _ = regain.tick() => session.try_regain_nick(),
                Ok(()) = channel_updates.changed() => {
                    let wanted = channel_updates.borrow_and_update().clone();
                    if let Err(reason) = session.follow_channels(&wanted) {
                        break SessionEnd::Lost(reason);
                    }
                }
                () = sleep_until_opt(session.idle_at()) => {
                    // A puppet with nothing to say for `puppet_idle_timeout`: it quits, and
                    // its next delivery brings it back.
                    session.quit("idle");
                    let _ = tokio::time::timeout(Duration::from_secs(3), async {
                        link.flush(&session.outgoing).await?;
                        while let Some(Ok(_)) = link.next().await {}
                        Ok::<(), String>(())
                    })
                    .await;
                    break SessionEnd::Shutdown;
                }
            }
        };
        session.fail_in_flight(match &end {
            SessionEnd::Shutdown => "shutting down",
            SessionEnd::Lost(reason) => reason,
        });
        end
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// CAP negotiation and NICK/USER sent; waiting for 001.
    Registering,
    /// Registered; waiting for the end of MOTD.
    Welcomed,
    /// Waiting for `NickServ` to confirm identification.
    Identifying { until: Instant },
    /// JOINs sent; waiting for each channel.
    Joining { until: Instant },
    /// Ready to deliver.
    Ready,
}

/// Who kicked the bot from a channel, and why.
pub(super) struct Kick {
    pub(super) by: String,
    pub(super) reason: String,
}

/// A delivery whose lines are on their way.
struct InFlight {
    reply: Option<oneshot::Sender<Result<DeliveryAck, DeliveryError>>>,
    remaining: usize,
    first_msgid: Option<String>,
}

/// One line waiting for a flood-control token.
struct QueuedLine {
    message: Message,
    /// `(delivery id, line index)` when the line belongs to a delivery.
    delivery: Option<(String, usize)>,
    target: String,
}

pub(super) struct Session<'a> {
    pub(super) task: &'a TaskInfo,
    outgoing: Outgoing,
    pub(super) nick: String,
    pub(super) phase: Phase,
    pub(super) offered_caps: Vec<String>,
    pub(super) caps: HashSet<String>,
    pub(super) sasl_done: bool,
    /// folded channel → configured name
    pub(super) channels: HashMap<String, String>,
    pub(super) joined: HashSet<String>,
    pub(super) failed_joins: HashSet<String>,
    /// Channels (folded) we were kicked from and do not rejoin (`rejoin_after_kick` off).
    pub(super) kicked: HashMap<String, Kick>,
    pub(super) members: HashMap<String, HashSet<String>>,
    bucket: TokenBucket,
    queue: VecDeque<QueuedLine>,
    in_flight: HashMap<String, InFlight>,
    /// Lines sent and not yet confirmed, oldest first: (label, sent at).
    pub(super) unconfirmed: VecDeque<(String, Instant)>,
    /// Permits for inbound events queued for commit and not yet committed.
    pub(super) commits: std::sync::Arc<tokio::sync::Semaphore>,
    /// A puppet: the nick it last asked for (its person's display name may change).
    asked_nick: String,
    /// A puppet: when it was last given a delivery.
    last_delivery: Instant,
    /// A puppet: the people told, by NOTICE, that private messages are not relayed.
    pub(super) dm_noticed: HashSet<String>,
    /// History batches, our own played-back lines and the fence (`history`).
    pub(super) history: super::history::SessionHistory,
}

impl<'a> Session<'a> {
    fn new(task: &'a TaskInfo, outgoing: Outgoing) -> Self {
        // The channels now: those of the last reload, which may differ from those at start.
        let channels = task
            .context
            .channel_updates
            .borrow()
            .iter()
            .map(|c| (irc_fold(c), c.clone()))
            .collect();
        Self {
            task,
            outgoing,
            nick: task.config.nick.clone(),
            phase: Phase::Registering,
            offered_caps: Vec::new(),
            caps: HashSet::new(),
            sasl_done: false,
            channels,
            joined: HashSet::new(),
            failed_joins: HashSet::new(),
            kicked: HashMap::new(),
            members: HashMap::new(),
            bucket: TokenBucket::new(
                task.config.flood_burst,
                Duration::from_millis(task.config.flood_interval_ms),
                Instant::now(),
            ),
            queue: VecDeque::new(),
            in_flight: HashMap::new(),
            unconfirmed: VecDeque::new(),
            commits: std::sync::Arc::new(tokio::sync::Semaphore::new(COMMITS_IN_FLIGHT)),
            asked_nick: task.puppet.as_ref().map_or_else(
                || task.config.nick.clone(),
                |role| {
                    if role.own_nick {
                        task.config.nick.clone()
                    } else {
                        role.base.clone()
                    }
                },
            ),
            last_delivery: Instant::now(),
            dm_noticed: HashSet::new(),
            history: super::history::SessionHistory::default(),
        }
    }

    /// A puppet's idle deadline: `puppet_idle_timeout` after its last delivery, once nothing
    /// is queued or unconfirmed.
    fn idle_at(&self) -> Option<Instant> {
        let role = self.task.puppet.as_ref()?;
        (self.phase == Phase::Ready && self.in_flight.is_empty() && self.queue.is_empty())
            .then(|| self.last_delivery + role.idle_timeout)
    }

    /// A puppet: take the nick its person's name asks for now.
    fn puppet_rename(&mut self) -> Result<(), String> {
        let Some(role) = &self.task.puppet else {
            return Ok(());
        };
        self.last_delivery = Instant::now();
        let wanted = role.wanted();
        if wanted != self.asked_nick {
            tracing::info!(network = %self.network(), old = %self.nick, new = %wanted, "Puppet's person renamed; changing nick.");
            self.task.shared.add(&wanted);
            self.send(Command::NICK(wanted.clone()))?;
            self.asked_nick = wanted;
        }
        Ok(())
    }

    /// A puppet given its person's join, leave or rename: it joins, parts or changes nick
    /// (what IRC people see of it); nothing else is said.
    fn puppet_membership(&mut self, channel: &str, change: &Membership) -> Result<(), String> {
        match change {
            Membership::Joined => self.puppet_prepare(channel),
            Membership::Left { reason } => {
                self.puppet_rename()?;
                let folded = irc_fold(channel);
                if self.channels.remove(&folded).is_some() {
                    self.joined.remove(&folded);
                    self.send(Command::PART(channel.to_owned(), reason.clone()))?;
                }
                Ok(())
            }
            _ => self.puppet_rename(),
        }
    }

    /// A puppet, before a delivery: take the nick its person's name asks for now, and join
    /// the delivery's channel if not in it yet (the server handles both before the lines).
    fn puppet_prepare(&mut self, channel: &str) -> Result<(), String> {
        if self.task.puppet.is_none() {
            return Ok(());
        }
        self.puppet_rename()?;
        let folded = irc_fold(channel);
        if !self.channels.contains_key(&folded) {
            self.channels.insert(folded.clone(), channel.to_owned());
            self.failed_joins.remove(&folded);
            self.send(Command::JOIN(channel.to_owned(), None, None))?;
        }
        Ok(())
    }

    pub(super) fn network(&self) -> &str {
        &self.task.network
    }

    /// A reload changed the network's channels to `wanted`: part the channels no gateway
    /// links any more and join the new ones (now, once registered; else with the others). The
    /// other channels see nothing.
    pub(super) fn follow_channels(&mut self, wanted: &[String]) -> Result<(), String> {
        let wanted: HashMap<String, String> =
            wanted.iter().map(|c| (irc_fold(c), c.clone())).collect();
        let removed: Vec<(String, String)> = self
            .channels
            .iter()
            .filter(|(folded, _)| !wanted.contains_key(*folded))
            .map(|(folded, name)| (folded.clone(), name.clone()))
            .collect();
        for (folded, name) in removed {
            self.channels.remove(&folded);
            self.failed_joins.remove(&folded);
            self.kicked.remove(&folded);
            self.members.remove(&folded);
            self.task.context.status.left(&name);
            if self.joined.remove(&folded) {
                tracing::info!(network = %self.network(), channel = %name, "No gateway links this channel any more; parting.");
                self.send(Command::PART(name, Some("no longer bridged".to_owned())))?;
            }
        }
        let registered = matches!(self.phase, Phase::Joining { .. } | Phase::Ready);
        for (folded, name) in wanted {
            if self.channels.contains_key(&folded) {
                continue;
            }
            self.channels.insert(folded, name.clone());
            if registered {
                tracing::info!(network = %self.network(), channel = %name, "A gateway links this channel now; joining.");
                self.send(Command::JOIN(name, None, None))?;
            }
        }
        Ok(())
    }

    pub(super) fn send(&self, command: Command) -> Result<(), String> {
        self.write(Message::from(command))
    }

    pub(super) fn send_raw(&self, command: &str, params: &[&str]) -> Result<(), String> {
        let message = Message::new(None, command, params.to_vec())
            .map_err(|error| format!("cannot build {command}: {error}"))?;
        self.write(message)
    }

    /// Every line we send goes through here: encoded in the network's charset for the codec.
    fn write(&self, message: Message) -> Result<(), String> {
        let message = if message.to_string().is_ascii() {
            message
        } else {
            self.task
                .charset
                .write_line(&message.to_string())
                .parse::<Message>()
                .map_err(|error| format!("cannot encode a line: {error}"))?
        };
        self.outgoing.send(message)
    }

    fn quit(&self, reason: &str) {
        let _ = self.send(Command::QUIT(Some(reason.to_owned())));
    }

    fn accepts_requests(&self) -> bool {
        self.phase == Phase::Ready && self.queue.len() < super::QUEUED_LINES
    }

    fn flood_ready_at(&mut self) -> Option<Instant> {
        if self.queue.is_empty() {
            None
        } else {
            Some(self.bucket.ready_at(Instant::now()))
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let phase_deadline = match self.phase {
            Phase::Identifying { until } | Phase::Joining { until } => Some(until),
            _ => None,
        };
        let echo_deadline = self
            .unconfirmed
            .front()
            .map(|(_, sent)| *sent + ECHO_TIMEOUT);
        match (phase_deadline, echo_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_deadline(&mut self) -> Result<(), String> {
        let now = Instant::now();
        if let Some((_, sent)) = self.unconfirmed.front()
            && *sent + ECHO_TIMEOUT <= now
        {
            return Err(format!(
                "the server did not confirm a line within {ECHO_TIMEOUT:?}"
            ));
        }
        match self.phase {
            Phase::Identifying { until } if until <= now => {
                tracing::warn!(network = %self.network(), "NickServ did not confirm identification in time; joining anyway.");
                self.join_channels()
            }
            Phase::Joining { until } if until <= now => {
                let missing: Vec<&String> = self
                    .channels
                    .iter()
                    .filter(|(folded, _)| {
                        !self.joined.contains(*folded) && !self.failed_joins.contains(*folded)
                    })
                    .map(|(_, name)| name)
                    .collect();
                tracing::warn!(network = %self.network(), channels = ?missing, "Some channels were not joined in time; delivering anyway.");
                self.phase = Phase::Ready;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Expand a delivery into lines and queue them for the flood controller.
    fn enqueue(&mut self, request: OutboundRequest) {
        if request.reply.is_closed() {
            // The outbox gave up waiting (timeout); it will retry this delivery itself.
            return;
        }
        let mut delivery = files_as_lines(&request.delivery, &self.task.context.files);
        // A long text links to its whole text where the media endpoint serves it, else to the
        // message on its own platform.
        if let Some(link) = request.full_text_link.clone() {
            delivery.permalink = Some(link);
        }
        let delivery = &delivery;
        let folded = irc_fold(&delivery.destination.channel);
        if self.failed_joins.contains(&folded) {
            // A puppet's is retried soon, through the bot (`Shared::refuse`).
            let after = if self.task.puppet.is_some() {
                Duration::from_secs(1)
            } else {
                Duration::from_mins(1)
            };
            let _ = request.reply.send(Err(DeliveryError::Retry {
                after: Some(after),
                reason: format!("not in {} (join failed)", delivery.destination.channel),
            }));
            return;
        }
        if let Some(kick) = self.kicked.get(&folded) {
            // Not held for a later rejoin (a flood of old lines would greet whoever kicked the
            // bot): refused, so the outbox counts it and keeps it in the store as failed.
            let _ = request.reply.send(Err(DeliveryError::Permanent(format!(
                "kicked from {} by {} ({}); rejoin_after_kick is off",
                delivery.destination.channel, kick.by, kick.reason
            ))));
            return;
        }
        let target = delivery.destination.channel.clone();
        if self.task.puppet.is_some()
            && let EventBody::Membership(change) = &delivery.body
        {
            let result = self
                .puppet_membership(&target, change)
                .map(|()| DeliveryAck::default())
                .map_err(|reason| DeliveryError::Retry {
                    after: Some(Duration::from_secs(1)),
                    reason,
                });
            let _ = request.reply.send(result);
            return;
        }
        if let Err(error) = self.puppet_prepare(&target) {
            let _ = request.reply.send(Err(DeliveryError::Retry {
                after: Some(Duration::from_secs(1)),
                reason: error,
            }));
            return;
        }
        let labelled = self.caps.contains("labeled-response");
        let settings = self.task.context.gateway(&delivery.gateway);
        let late = with_original_time(delivery, &settings, now_ms());
        let undated = delivery;
        let delivery = late.as_ref().unwrap_or(delivery);
        if settings.edit_policy == EditPolicy::Off
            && matches!(delivery.body, EventBody::Edit { .. })
        {
            let dropped = self.task.edits_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(network = %self.network(), gateway = %delivery.gateway, dropped, "Edit not shown on IRC (edit_policy = \"off\").");
        }
        let shown = super::mentions::for_irc(
            delivery,
            self.task.context.router.people(),
            self.network(),
            &super::lock(&self.task.recent),
        );
        // A puppet is the person: no name before the text.
        let nick_format = if self.task.puppet.is_some() {
            ""
        } else {
            settings.nick_format(&self.task.context.remote_nick_format)
        };
        let lines = render_delivery(&shown, nick_format, &self.nick, labelled, &settings);
        // Written before the last connection dropped, the lines may not have been late then.
        let undated_lines = (late.is_some() && self.has_own_history(&target)).then(|| {
            let shown = super::mentions::for_irc(
                undated,
                self.task.context.router.people(),
                self.network(),
                &super::lock(&self.task.recent),
            );
            render_delivery(&shown, nick_format, &self.nick, labelled, &settings)
        });
        if lines.is_empty() {
            let _ = request.reply.send(Ok(DeliveryAck::default()));
            return;
        }
        if matches!(delivery.body, EventBody::Text { .. }) {
            super::lock(&self.task.recent).shown(
                &target,
                super::mentions::Shown::Relayed(delivery.message_id),
            );
        }
        // Lines written before the last connection dropped and found in the history since.
        let (mut found, mut first_msgid) =
            self.said_before(&target, &lines, delivery.timestamp_ms, false);
        if found == 0
            && let Some(undated_lines) = &undated_lines
        {
            (found, first_msgid) =
                self.said_before(&target, undated_lines, delivery.timestamp_ms, true);
            if found > 0 {
                found = lines.len();
            }
        }
        if found > 0 {
            tracing::info!(network = %self.network(), delivery = %delivery.id, lines = found, of = lines.len(), "A delivery's lines are in the channel's history already (written before the connection dropped); not sent again.");
        }
        if found == lines.len() {
            let _ = request.reply.send(Ok(DeliveryAck {
                remote_id: first_msgid,
            }));
            return;
        }
        let count = lines.len() - found;
        for (index, (command, text)) in lines.into_iter().enumerate().skip(found) {
            let tags =
                labelled.then(|| vec![Tag("label".into(), Some(label(&delivery.id, index)))]);
            match Message::with_tags(tags, None, command, vec![target.as_str(), text.as_str()]) {
                Ok(message) => self.queue.push_back(QueuedLine {
                    message,
                    delivery: Some((delivery.id.clone(), index)),
                    target: target.clone(),
                }),
                Err(error) => {
                    let _ = request.reply.send(Err(DeliveryError::Permanent(format!(
                        "cannot build an IRC line: {error}"
                    ))));
                    self.queue.retain(|line| {
                        line.delivery
                            .as_ref()
                            .is_none_or(|(id, _)| id != &delivery.id)
                    });
                    return;
                }
            }
        }
        self.in_flight.insert(
            delivery.id.clone(),
            InFlight {
                reply: Some(request.reply),
                remaining: count,
                first_msgid,
            },
        );
    }

    /// Write as many queued lines as flood control allows now.
    fn write_queued(&mut self) -> Result<(), String> {
        let now = Instant::now();
        while !self.queue.is_empty() && self.bucket.try_take(now) {
            let Some(line) = self.queue.pop_front() else {
                break;
            };
            if let Some((delivery_id, _)) = &line.delivery
                && self
                    .in_flight
                    .get(delivery_id)
                    .is_none_or(|f| f.reply.as_ref().is_none_or(oneshot::Sender::is_closed))
            {
                // The outbox stopped waiting for this delivery; it will send it again.
                self.in_flight.remove(delivery_id);
                continue;
            }
            self.write(line.message)?;
            if let Some((delivery_id, index)) = line.delivery {
                if self.caps.contains("echo-message") || self.caps.contains("labeled-response") {
                    self.unconfirmed
                        .push_back((label(&delivery_id, index), now));
                } else {
                    // Nothing will confirm it: written is the best we can know.
                    self.confirm(&delivery_id, None);
                }
            }
            tracing::trace!(network = %self.network(), target = %line.target, "Line written.");
        }
        Ok(())
    }

    pub(super) fn confirm(&mut self, delivery_id: &str, msgid: Option<&str>) {
        let Some(flight) = self.in_flight.get_mut(delivery_id) else {
            return;
        };
        if flight.first_msgid.is_none() {
            flight.first_msgid = msgid.map(str::to_owned);
        }
        flight.remaining = flight.remaining.saturating_sub(1);
        if flight.remaining == 0
            && let Some(flight) = self.in_flight.remove(delivery_id)
            && let Some(reply) = flight.reply
        {
            let _ = reply.send(Ok(DeliveryAck {
                remote_id: flight.first_msgid,
            }));
        }
    }

    pub(super) fn confirm_label(&mut self, label_value: &str, msgid: Option<&str>) {
        if let Some(position) = self.unconfirmed.iter().position(|(l, _)| l == label_value) {
            self.unconfirmed.remove(position);
        }
        if let Some((delivery_id, _)) = label_value.rsplit_once('.') {
            let delivery_id = delivery_id.to_owned();
            self.confirm(&delivery_id, msgid);
        }
    }

    pub(super) fn reject_label(&mut self, label_value: &str, reason: &str) {
        if let Some(position) = self.unconfirmed.iter().position(|(l, _)| l == label_value) {
            self.unconfirmed.remove(position);
        }
        if let Some((delivery_id, _)) = label_value.rsplit_once('.')
            && let Some(flight) = self.in_flight.remove(delivery_id)
        {
            self.unconfirmed
                .retain(|(l, _)| !l.starts_with(&format!("{delivery_id}.")));
            self.queue.retain(|line| {
                line.delivery
                    .as_ref()
                    .is_none_or(|(id, _)| id != delivery_id)
            });
            // A puppet's refused line is retried soon, through the bot (`Shared::refuse`).
            let after = if self.task.puppet.is_some() {
                Duration::from_secs(1)
            } else {
                Duration::from_secs(30)
            };
            if let Some(reply) = flight.reply {
                let _ = reply.send(Err(DeliveryError::Retry {
                    after: Some(after),
                    reason: reason.to_owned(),
                }));
            }
        }
    }

    fn fail_in_flight(&mut self, reason: &str) {
        for (_, flight) in self.in_flight.drain() {
            if let Some(reply) = flight.reply {
                let _ = reply.send(Err(DeliveryError::Retry {
                    after: Some(Duration::from_secs(1)),
                    reason: format!("connection ended before the server confirmed: {reason}"),
                }));
            }
        }
        self.queue.clear();
        self.unconfirmed.clear();
    }

    pub(super) fn is_me(&self, nick: &str) -> bool {
        irc_fold(nick) == irc_fold(&self.nick)
    }
}
