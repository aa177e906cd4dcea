//! One connection to an IRC server: registration (CAP, SASL PLAIN, `NickServ` identification
//! that waits for its confirmation), joins, nick regain, flood control, and the acknowledgement of
//! deliveries by label, by echo order, or when written. **Invariants:** lines are written in the
//! order deliveries were queued, and deliveries are taken only once the session is `Ready`; our
//! own nick's lines only confirm deliveries and are never relayed; text is read and rendered only
//! through [`super::convert`].
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use irc::client::prelude::{Client, Command, Message};
use irc::proto::message::Tag;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connector::supervisor::{SessionEnd, error_chain};
use crate::connector::{DeliveryError, sleep_until_opt, with_original_time};
use crate::model::{DeliveryAck, EventBody, Inbound, Membership, now_ms};
use crate::richtext::edits::EditPolicy;

use super::convert::{self, files_as_lines, label, render_delivery, tag};
use super::flood::TokenBucket;
use super::wire::WireLine;
use super::{
    COMMITS_IN_FLIGHT, ECHO_TIMEOUT, IDENTIFY_TIMEOUT, JOIN_TIMEOUT, OutboundRequest,
    REGAIN_INTERVAL, TaskInfo, WANTED_CAPS, charset, irc_fold,
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

    fn client_config(&self) -> irc::client::data::Config {
        let nick = &self.config.nick;
        irc::client::data::Config {
            nickname: Some(nick.clone()),
            alt_nicks: vec![
                format!("{nick}_"),
                format!("{nick}__"),
                format!("{nick}___"),
                format!("{nick}1"),
                format!("{nick}2"),
                format!("{nick}3"),
            ],
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
        let connect = Client::from_config(self.client_config());
        let client = tokio::select! {
            result = tokio::time::timeout(Duration::from_secs(30), connect) => match result {
                Ok(Ok(client)) => client,
                Ok(Err(error)) => return SessionEnd::Lost(format!("connect failed: {}", error_chain(&error))),
                Err(_) => return SessionEnd::Lost("connect timed out after 30 s".into()),
            },
            () = self.context.shutdown.cancelled() => return SessionEnd::Shutdown,
        };
        let mut client = client;
        let mut stream = match client.stream() {
            Ok(stream) => stream,
            Err(error) => return SessionEnd::Lost(format!("no stream: {error}")),
        };
        let mut session = Session::new(self, client.sender());
        if let Err(error) = session.begin_registration() {
            return SessionEnd::Lost(format!("cannot send registration: {error}"));
        }
        let mut regain = tokio::time::interval(REGAIN_INTERVAL);
        regain.reset();
        let end = loop {
            let flood_at = session.flood_ready_at();
            let deadline = session.next_deadline();
            tokio::select! {
                biased;
                () = self.context.shutdown.cancelled() => {
                    session.quit("tribridge shutting down");
                    // The QUIT is written when the stream is polled; the server answers with
                    // ERROR and closes. Wait for that, briefly.
                    let _ = tokio::time::timeout(Duration::from_secs(3), async {
                        while let Some(Ok(_)) = stream.next().await {}
                    })
                    .await;
                    break SessionEnd::Shutdown;
                }
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        let message = self.read_line(message);
                        if let Err(reason) = session.handle(&message).await {
                            break SessionEnd::Lost(reason);
                        }
                    }
                    Some(Err(error)) => break SessionEnd::Lost(error_chain(&error)),
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
enum Phase {
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

struct Session<'a> {
    task: &'a TaskInfo,
    sender: irc::client::Sender,
    nick: String,
    phase: Phase,
    offered_caps: Vec<String>,
    caps: HashSet<String>,
    sasl_done: bool,
    /// folded channel → configured name
    channels: HashMap<String, String>,
    joined: HashSet<String>,
    failed_joins: HashSet<String>,
    members: HashMap<String, HashSet<String>>,
    bucket: TokenBucket,
    queue: VecDeque<QueuedLine>,
    in_flight: HashMap<String, InFlight>,
    /// Lines sent and not yet confirmed, oldest first: (label, sent at).
    unconfirmed: VecDeque<(String, Instant)>,
    /// Permits for inbound events queued for commit and not yet committed.
    commits: std::sync::Arc<tokio::sync::Semaphore>,
}

impl<'a> Session<'a> {
    fn new(task: &'a TaskInfo, sender: irc::client::Sender) -> Self {
        let channels = task
            .context
            .channels
            .iter()
            .map(|c| (irc_fold(c), c.clone()))
            .collect();
        Self {
            task,
            sender,
            nick: task.config.nick.clone(),
            phase: Phase::Registering,
            offered_caps: Vec::new(),
            caps: HashSet::new(),
            sasl_done: false,
            channels,
            joined: HashSet::new(),
            failed_joins: HashSet::new(),
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
        }
    }

    fn network(&self) -> &str {
        &self.task.network
    }

    fn send(&self, command: Command) -> Result<(), String> {
        self.write(Message::from(command))
    }

    fn send_raw(&self, command: &str, params: &[&str]) -> Result<(), String> {
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
        self.sender
            .send(message)
            .map_err(|error| format!("write failed: {error}"))
    }

    fn begin_registration(&mut self) -> Result<(), String> {
        self.send_raw("CAP", &["LS", "302"])?;
        if let Some(password) = &self.task.config.password {
            self.send(Command::PASS(password.expose().to_owned()))?;
        }
        self.send(Command::NICK(self.task.config.nick.clone()))?;
        self.send(Command::USER(
            self.task.config.username.clone(),
            "0".into(),
            self.task.config.realname.clone(),
        ))
    }

    fn quit(&self, reason: &str) {
        let _ = self.send(Command::QUIT(Some(reason.to_owned())));
    }

    fn accepts_requests(&self) -> bool {
        self.phase == Phase::Ready && self.queue.len() < 64
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
        let delivery = &files_as_lines(&request.delivery, &self.task.context.files);
        let folded = irc_fold(&delivery.destination.channel);
        if self.failed_joins.contains(&folded) {
            let _ = request.reply.send(Err(DeliveryError::Retry {
                after: Some(Duration::from_mins(1)),
                reason: format!("not in {} (join failed)", delivery.destination.channel),
            }));
            return;
        }
        let target = delivery.destination.channel.clone();
        let labelled = self.caps.contains("labeled-response");
        let settings = self.task.context.gateway(&delivery.gateway);
        let late = with_original_time(delivery, &settings, now_ms());
        let delivery = late.as_ref().unwrap_or(delivery);
        if settings.edit_policy == EditPolicy::Off
            && matches!(delivery.body, EventBody::Edit { .. })
        {
            let dropped = self.task.edits_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::debug!(network = %self.network(), gateway = %delivery.gateway, dropped, "Edit not shown on IRC (edit_policy = \"off\").");
        }
        let lines = render_delivery(
            delivery,
            &self.task.context.remote_nick_format,
            &self.nick,
            labelled,
            &settings,
        );
        if lines.is_empty() {
            let _ = request.reply.send(Ok(DeliveryAck::default()));
            return;
        }
        let count = lines.len();
        for (index, (command, text)) in lines.into_iter().enumerate() {
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
                first_msgid: None,
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

    fn confirm(&mut self, delivery_id: &str, msgid: Option<&str>) {
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

    fn confirm_label(&mut self, label_value: &str, msgid: Option<&str>) {
        if let Some(position) = self.unconfirmed.iter().position(|(l, _)| l == label_value) {
            self.unconfirmed.remove(position);
        }
        if let Some((delivery_id, _)) = label_value.rsplit_once('.') {
            let delivery_id = delivery_id.to_owned();
            self.confirm(&delivery_id, msgid);
        }
    }

    fn reject_label(&mut self, label_value: &str, reason: &str) {
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
            if let Some(reply) = flight.reply {
                let _ = reply.send(Err(DeliveryError::Retry {
                    after: Some(Duration::from_secs(30)),
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

    fn is_me(&self, nick: &str) -> bool {
        irc_fold(nick) == irc_fold(&self.nick)
    }

    fn try_regain_nick(&self) {
        if self.phase == Phase::Ready && !self.is_me(&self.task.config.nick) {
            let _ = self.send(Command::ISON(vec![self.task.config.nick.clone()]));
        }
    }

    fn join_channels(&mut self) -> Result<(), String> {
        let channels: Vec<String> = self.channels.values().cloned().collect();
        for channel in &channels {
            self.send(Command::JOIN(channel.clone(), None, None))?;
        }
        self.phase = if channels.is_empty() {
            Phase::Ready
        } else {
            Phase::Joining {
                until: Instant::now() + JOIN_TIMEOUT,
            }
        };
        Ok(())
    }

    fn check_joined(&mut self) {
        if matches!(self.phase, Phase::Joining { .. })
            && self
                .channels
                .keys()
                .all(|c| self.joined.contains(c) || self.failed_joins.contains(c))
        {
            tracing::info!(network = %self.network(), joined = self.joined.len(), failed = self.failed_joins.len(), "Channels joined; ready.");
            self.phase = Phase::Ready;
        }
    }

    fn after_motd(&mut self) -> Result<(), String> {
        if self.phase != Phase::Welcomed {
            return Ok(());
        }
        if let Some(password) = &self.task.config.nickserv_password
            && !self.sasl_done
        {
            let account = self
                .task
                .config
                .sasl_username
                .clone()
                .unwrap_or_else(|| self.task.config.nick.clone());
            let nickserv = self.task.config.nickserv_nick.clone();
            self.send(Command::PRIVMSG(
                nickserv,
                format!("IDENTIFY {account} {}", password.expose()),
            ))?;
            self.phase = Phase::Identifying {
                until: Instant::now() + IDENTIFY_TIMEOUT,
            };
            return Ok(());
        }
        self.join_channels()
    }

    fn finish_caps(&mut self) -> Result<(), String> {
        self.send_raw("CAP", &["END"])
    }

    fn start_sasl_or_end(&mut self) -> Result<(), String> {
        if self.caps.contains("sasl") && self.task.config.sasl_password.is_some() {
            self.send(Command::AUTHENTICATE("PLAIN".into()))
        } else {
            self.finish_caps()
        }
    }

    fn send_sasl_credentials(&mut self) -> Result<(), String> {
        let Some(password) = &self.task.config.sasl_password else {
            return self.send(Command::AUTHENTICATE("*".into()));
        };
        let user = self
            .task
            .config
            .sasl_username
            .clone()
            .unwrap_or_else(|| self.task.config.nick.clone());
        let payload = base64::engine::general_purpose::STANDARD
            .encode(format!("{user}\0{user}\0{}", password.expose()));
        let bytes = payload.as_bytes();
        for chunk in bytes.chunks(400) {
            self.send(Command::AUTHENTICATE(
                String::from_utf8_lossy(chunk).into_owned(),
            ))?;
        }
        if bytes.len() % 400 == 0 {
            self.send(Command::AUTHENTICATE("+".into()))?;
        }
        Ok(())
    }

    /// Handle one message from the server. An `Err` ends the session.
    async fn handle(&mut self, message: &Message) -> Result<(), String> {
        let line = WireLine::of(message);
        let label_tag = tag(message, "label");
        match line.command.as_str() {
            "CAP" => self.handle_cap(&line)?,
            "AUTHENTICATE" if line.param(0) == Some("+") => self.send_sasl_credentials()?,
            "900" => {
                tracing::info!(network = %self.network(), "Logged in to services.");
                if matches!(self.phase, Phase::Identifying { .. }) {
                    self.join_channels()?;
                }
            }
            "903" => {
                tracing::info!(network = %self.network(), "SASL authentication succeeded.");
                self.sasl_done = true;
                self.finish_caps()?;
            }
            "902" | "904" | "905" | "906" | "907" | "908" => {
                tracing::warn!(network = %self.network(), numeric = %line.command, reason = line.last().unwrap_or(""), "SASL authentication failed; continuing without it.");
                self.finish_caps()?;
            }
            "001" => {
                if let Some(nick) = line.param(0) {
                    self.nick = nick.to_owned();
                }
                self.task
                    .context
                    .router
                    .set_account(self.network(), &self.nick);
                tracing::info!(network = %self.network(), nick = %self.nick, caps = ?self.caps, "Registered.");
                if self.phase == Phase::Registering {
                    self.phase = Phase::Welcomed;
                }
            }
            "376" | "422" => self.after_motd()?,
            "303" => {
                // ISON: an empty answer means the wanted nick is free.
                let online = line.last().unwrap_or("").trim();
                if online.is_empty() && !self.is_me(&self.task.config.nick) {
                    self.send(Command::NICK(self.task.config.nick.clone()))?;
                }
            }
            "353" => {
                // RPL_NAMREPLY: me = #channel :names
                if let (Some(channel), Some(names)) = (line.param(2), line.last()) {
                    let folded = irc_fold(channel);
                    let members = self.members.entry(folded).or_default();
                    for name in names.split(' ').filter(|n| !n.is_empty()) {
                        let nick = name.trim_start_matches(['@', '+', '%', '&', '~']);
                        let nick = nick.split('!').next().unwrap_or(nick);
                        members.insert(irc_fold(nick));
                    }
                }
            }
            "403" | "405" | "471" | "473" | "474" | "475" | "476" | "477" | "489" => {
                if let Some(channel) = line.param(1) {
                    let folded = irc_fold(channel);
                    if self.channels.contains_key(&folded) && !self.joined.contains(&folded) {
                        tracing::error!(network = %self.network(), channel, numeric = %line.command, reason = line.last().unwrap_or(""), "Cannot join channel; nothing will be relayed to or from it until a reconnect.");
                        self.failed_joins.insert(folded);
                        self.check_joined();
                    }
                }
                if let Some(label_value) = &label_tag {
                    self.reject_label(label_value, line.last().unwrap_or("refused"));
                }
            }
            "404" => {
                tracing::warn!(network = %self.network(), channel = line.param(1).unwrap_or(""), reason = line.last().unwrap_or(""), "Cannot send to channel.");
                if let Some(label_value) = &label_tag {
                    self.reject_label(label_value, line.last().unwrap_or("cannot send to channel"));
                }
            }
            "ACK" => {
                if let Some(label_value) = &label_tag {
                    self.confirm_label(label_value, None);
                }
            }
            "BATCH" => {
                // A labelled response may come as a batch; its start line carries the label.
                if let Some(label_value) = &label_tag {
                    let msgid = tag(message, "msgid");
                    self.confirm_label(label_value, msgid.as_deref());
                }
            }
            "JOIN" => self.handle_join(message, &line).await?,
            "PART" | "KICK" => self.handle_part(message, &line).await?,
            "QUIT" => self.handle_quit(message, &line).await?,
            "NICK" => self.handle_nick(message, &line).await?,
            "TOPIC" => self.handle_topic(message, &line).await?,
            "PRIVMSG" | "NOTICE" => {
                self.handle_text(message, &line, label_tag.as_deref())
                    .await?;
            }
            "ERROR" => return Err(format!("server error: {}", line.last().unwrap_or(""))),
            _ => {
                if let Some(label_value) = &label_tag
                    && line.command.starts_with(['4', '5'])
                {
                    self.reject_label(label_value, line.last().unwrap_or("refused"));
                }
            }
        }
        Ok(())
    }

    fn handle_cap(&mut self, line: &WireLine) -> Result<(), String> {
        let Some(sub) = line.param(1) else {
            return Ok(());
        };
        match sub {
            "LS" => {
                // CAP * LS * :a b c   (continuation)   or   CAP * LS :a b c   (last)
                let more = line.params.len() > 3 && line.param(2) == Some("*");
                if let Some(list) = line.last() {
                    self.offered_caps.extend(
                        list.split(' ')
                            .filter(|c| !c.is_empty())
                            .map(|c| c.split('=').next().unwrap_or(c).to_owned()),
                    );
                }
                if !more && self.phase == Phase::Registering {
                    let mut wanted: Vec<&str> = WANTED_CAPS
                        .iter()
                        .copied()
                        .filter(|cap| self.offered_caps.iter().any(|o| o == cap))
                        .collect();
                    if self.task.config.sasl_password.is_some() {
                        if self.offered_caps.iter().any(|o| o == "sasl") {
                            wanted.push("sasl");
                        } else {
                            tracing::warn!(network = %self.network(), "SASL is configured but the server does not offer it.");
                        }
                    }
                    if wanted.is_empty() {
                        self.finish_caps()?;
                    } else {
                        self.send_raw("CAP", &["REQ", &wanted.join(" ")])?;
                    }
                }
            }
            "ACK" => {
                for cap in line
                    .last()
                    .unwrap_or("")
                    .split(' ')
                    .filter(|c| !c.is_empty())
                {
                    if let Some(removed) = cap.strip_prefix('-') {
                        self.caps.remove(removed);
                    } else {
                        self.caps.insert(cap.to_owned());
                    }
                }
                if self.phase == Phase::Registering {
                    self.start_sasl_or_end()?;
                }
            }
            "NAK" => {
                tracing::warn!(network = %self.network(), caps = line.last().unwrap_or(""), "Server refused capabilities; continuing without them.");
                if self.phase == Phase::Registering {
                    self.finish_caps()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn configured(&self, channel: &str) -> Option<String> {
        self.channels.get(&irc_fold(channel)).cloned()
    }

    /// Queue an event for commit in the order it was read, without waiting for its commit:
    /// IRC has no position to acknowledge, and lines read together then share a transaction
    /// (group commit). At most [`COMMITS_IN_FLIGHT`] wait at once, so a slow store slows the
    /// reading of the connection instead of growing memory.
    async fn submit(&self, inbound: Inbound) {
        let Ok(permit) = std::sync::Arc::clone(&self.commits).acquire_owned().await else {
            return;
        };
        let committed = self.task.context.router.submit_queued(inbound);
        tokio::spawn(async move {
            committed.await;
            drop(permit);
        });
    }

    fn membership_event(
        &self,
        message: &Message,
        channel: &str,
        nick: &str,
        change: Membership,
    ) -> Option<Inbound> {
        if !self.task.config.relay_membership {
            return None;
        }
        Some(convert::inbound(
            self.network(),
            channel,
            nick,
            message,
            EventBody::Membership(change),
            now_ms(),
        ))
    }

    async fn handle_join(&mut self, message: &Message, line: &WireLine) -> Result<(), String> {
        let (Some(nick), Some(channel)) = (message.source_nickname(), line.param(0)) else {
            return Ok(());
        };
        let Some(configured) = self.configured(channel) else {
            return Ok(());
        };
        let folded = irc_fold(channel);
        self.members
            .entry(folded.clone())
            .or_default()
            .insert(irc_fold(nick));
        if self.is_me(nick) {
            tracing::info!(network = %self.network(), channel = %configured, "Joined.");
            self.joined.insert(folded);
            self.check_joined();
            return Ok(());
        }
        if let Some(event) = self.membership_event(message, &configured, nick, Membership::Joined) {
            self.submit(event).await;
        }
        Ok(())
    }

    async fn handle_part(&mut self, message: &Message, line: &WireLine) -> Result<(), String> {
        let Some(channel) = line.param(0) else {
            return Ok(());
        };
        let (nick, reason) = if line.command == "KICK" {
            (
                line.param(1).unwrap_or(""),
                line.param(2).map(str::to_owned),
            )
        } else {
            (
                message.source_nickname().unwrap_or(""),
                line.param(1).map(str::to_owned),
            )
        };
        let Some(configured) = self.configured(channel) else {
            return Ok(());
        };
        let folded = irc_fold(channel);
        if let Some(members) = self.members.get_mut(&folded) {
            members.remove(&irc_fold(nick));
        }
        if self.is_me(nick) {
            tracing::warn!(network = %self.network(), channel = %configured, "Removed from channel; rejoining.");
            self.joined.remove(&folded);
            self.send(Command::JOIN(configured, None, None))?;
            return Ok(());
        }
        if let Some(event) =
            self.membership_event(message, &configured, nick, Membership::Left { reason })
        {
            self.submit(event).await;
        }
        Ok(())
    }

    async fn handle_quit(&mut self, message: &Message, line: &WireLine) -> Result<(), String> {
        let Some(nick) = message.source_nickname() else {
            return Ok(());
        };
        let folded_nick = irc_fold(nick);
        if folded_nick == irc_fold(&self.task.config.nick) && !self.is_me(nick) {
            self.send(Command::NICK(self.task.config.nick.clone()))?;
        }
        let mut channels = Vec::new();
        for (channel, members) in &mut self.members {
            if members.remove(&folded_nick)
                && let Some(configured) = self.channels.get(channel)
            {
                channels.push(configured.clone());
            }
        }
        for channel in channels {
            let reason = line.last().map(str::to_owned);
            if let Some(event) =
                self.membership_event(message, &channel, nick, Membership::Left { reason })
            {
                self.submit(event).await;
            }
        }
        Ok(())
    }

    async fn handle_nick(&mut self, message: &Message, line: &WireLine) -> Result<(), String> {
        let (Some(old), Some(new)) = (message.source_nickname(), line.param(0)) else {
            return Ok(());
        };
        if self.is_me(old) {
            tracing::info!(network = %self.network(), old, new, "Nick changed.");
            new.clone_into(&mut self.nick);
            self.task
                .context
                .router
                .set_account(self.network(), &self.nick);
            return Ok(());
        }
        if irc_fold(old) == irc_fold(&self.task.config.nick) {
            self.send(Command::NICK(self.task.config.nick.clone()))?;
        }
        let (old_folded, new_folded) = (irc_fold(old), irc_fold(new));
        let mut channels = Vec::new();
        for (channel, members) in &mut self.members {
            if members.remove(&old_folded) {
                members.insert(new_folded.clone());
                if let Some(configured) = self.channels.get(channel) {
                    channels.push(configured.clone());
                }
            }
        }
        for channel in channels {
            if let Some(event) = self.membership_event(
                message,
                &channel,
                old,
                Membership::Renamed {
                    new_name: new.to_owned(),
                },
            ) {
                self.submit(event).await;
            }
        }
        Ok(())
    }

    async fn handle_topic(&mut self, message: &Message, line: &WireLine) -> Result<(), String> {
        let (Some(nick), Some(channel)) = (message.source_nickname(), line.param(0)) else {
            return Ok(());
        };
        if self.is_me(nick) {
            return Ok(());
        }
        if let Some(configured) = self.configured(channel) {
            let topic = convert::topic_text(line.param(1).unwrap_or(""));
            if let Some(event) =
                self.membership_event(message, &configured, nick, Membership::Topic { topic })
            {
                self.submit(event).await;
            }
        }
        Ok(())
    }

    async fn handle_text(
        &mut self,
        message: &Message,
        line: &WireLine,
        label_value: Option<&str>,
    ) -> Result<(), String> {
        let Some(nick) = message.source_nickname() else {
            return Ok(());
        };
        let (Some(target), Some(text)) = (line.param(0), line.param(1)) else {
            return Ok(());
        };
        if self.is_me(nick) {
            // Our own line coming back (echo-message): it confirms a delivery, never relayed.
            let msgid = tag(message, "msgid");
            if let Some(label_value) = label_value {
                self.confirm_label(label_value, msgid.as_deref());
            } else if self.caps.contains("echo-message")
                && !self.caps.contains("labeled-response")
                && let Some((label_value, _)) = self.unconfirmed.pop_front()
                && let Some((delivery_id, _)) = label_value.rsplit_once('.')
            {
                let delivery_id = delivery_id.to_owned();
                self.confirm(&delivery_id, msgid.as_deref());
            }
            return Ok(());
        }
        if nick.eq_ignore_ascii_case(&self.task.config.nickserv_nick) && line.command == "NOTICE" {
            let lower = text.to_lowercase();
            if let Phase::Identifying { .. } = self.phase {
                if lower.contains("identified")
                    || lower.contains("now logged in")
                    || lower.contains("recognized")
                {
                    tracing::info!(network = %self.network(), "Identified to NickServ.");
                    self.join_channels()?;
                } else if lower.contains("invalid")
                    || lower.contains("incorrect")
                    || lower.contains("not registered")
                {
                    tracing::warn!(network = %self.network(), reply = %text, "NickServ refused identification; joining anyway.");
                    self.join_channels()?;
                }
            }
            return Ok(());
        }
        let Some(channel) = self.configured(target) else {
            // Private messages and channels outside every gateway are not relayed.
            return Ok(());
        };
        let Some((style, text)) = convert::text_message(&line.command, text) else {
            // A CTCP query (VERSION, PING, ...) or a line that shows nothing.
            return Ok(());
        };
        let inbound = convert::inbound(
            self.network(),
            &channel,
            nick,
            message,
            EventBody::formatted(style, text),
            now_ms(),
        );
        self.submit(inbound).await;
        Ok(())
    }
}
