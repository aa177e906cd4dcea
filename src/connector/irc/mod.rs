//! The IRC connector, on the `irc` crate's client (transport, TLS, parsing, PING handling).
//!
//! This module owns registration (CAP negotiation, SASL PLAIN, `NickServ` identification that
//! waits for the confirmation), joining, nick regain, reconnects with backoff and jitter, flood
//! control, and the conversion between IRC lines and the model. Deliveries are acknowledged by
//! the server's echo of our labelled line where the server offers `labeled-response` and
//! `echo-message`, by the echo order with `echo-message` alone, and when written otherwise.

pub mod charset;
pub mod config;
pub mod flood;
pub mod lines;
pub mod wire;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use irc::client::prelude::{Client, Command, Message};
use irc::proto::message::Tag;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::connector::supervisor::{self, SessionEnd, error_chain, supervise};
use crate::connector::{
    AckFuture, BoxFuture, BuildContext, Deliver, DeliveryError, GatewaySettings, render_sender,
    sleep_until_opt, with_original_time,
};
use crate::model::{
    Author, ChannelRef, Delivery, DeliveryAck, EventBody, Inbound, Membership, TextStyle, now_ms,
};
use crate::richtext;
use crate::richtext::FormattedText;
use crate::richtext::edits::{self, EditPolicy};
use crate::richtext::irc::{IrcRenderOptions, render as irc_render};
use crate::richtext::long_text::{self, LongTextPolicy};
use crate::richtext::mention::no_ping_nick;
pub use config::{CAPABILITIES, Irc, IrcConfig, irc_fold};

use flood::TokenBucket;
use wire::{WireLine, parse_server_time};

/// How long a delivery waits for the server's acknowledgement before the outbox retries it.
/// Deliveries one destination may have outstanding on the connection: the session writes lines
/// in the order deliveries were queued and matches acknowledgements by label.
pub const PIPELINE_WINDOW: usize = 32;

/// Inbound events one connection may have queued for commit and not yet committed.
const COMMITS_IN_FLIGHT: usize = 256;

const ACK_TIMEOUT: Duration = Duration::from_mins(2);
/// How long a sent line may stay unconfirmed before the connection is presumed broken.
const ECHO_TIMEOUT: Duration = Duration::from_mins(1);
/// How long to wait for `NickServ`'s confirmation before joining anyway.
const IDENTIFY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long joins may take before deliveries start anyway.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to check whether the wanted nick is free again.
const REGAIN_INTERVAL: Duration = Duration::from_mins(1);
/// `IRCv3` capabilities the bridge uses when offered.
const WANTED_CAPS: &[&str] = &[
    "server-time",
    "message-tags",
    "echo-message",
    "labeled-response",
    "batch",
    "multi-prefix",
];

struct OutboundRequest {
    delivery: Delivery,
    reply: oneshot::Sender<Result<DeliveryAck, DeliveryError>>,
}

/// The outbox's handle on an IRC network.
#[derive(Clone)]
pub struct IrcHandle {
    requests: mpsc::Sender<OutboundRequest>,
}

impl IrcHandle {
    /// Queue a delivery on the connection and wait for the server's acknowledgement.
    pub async fn deliver(&self, delivery: &Delivery) -> Result<DeliveryAck, DeliveryError> {
        self.enqueue(delivery).await?.await
    }

    /// Queue a delivery on the connection (lines are written in the order deliveries are
    /// queued); the returned future resolves with the server's acknowledgement.
    pub async fn enqueue(
        &self,
        delivery: &Delivery,
    ) -> Result<
        impl std::future::Future<Output = Result<DeliveryAck, DeliveryError>> + Send + 'static,
        DeliveryError,
    > {
        let (reply, acknowledged) = oneshot::channel();
        self.requests
            .send(OutboundRequest {
                delivery: delivery.clone(),
                reply,
            })
            .await
            .map_err(|_| DeliveryError::Retry {
                after: Some(Duration::from_secs(1)),
                reason: "the IRC connection task has stopped".into(),
            })?;
        Ok(async move {
            match tokio::time::timeout(ACK_TIMEOUT, acknowledged).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(DeliveryError::Retry {
                    after: None,
                    reason: "the IRC connection closed before the line was confirmed".into(),
                }),
                Err(_) => Err(DeliveryError::Retry {
                    after: None,
                    reason: format!(
                        "no acknowledgement from the IRC server within {ACK_TIMEOUT:?}"
                    ),
                }),
            }
        })
    }
}

impl Deliver for IrcHandle {
    fn send(
        self: Arc<Self>,
        delivery: Delivery,
    ) -> BoxFuture<'static, Result<AckFuture, DeliveryError>> {
        Box::pin(async move {
            let ack: AckFuture = Box::pin(self.enqueue(&delivery).await?);
            Ok(ack)
        })
    }
}

/// The connection task of an IRC network.
pub struct IrcTask {
    info: TaskInfo,
    requests: mpsc::Receiver<OutboundRequest>,
}

/// What a session reads of its task.
struct TaskInfo {
    network: String,
    config: IrcConfig,
    context: BuildContext,
    /// Edits not shown because their gateway's `edit_policy` is `off`.
    edits_dropped: AtomicU64,
    /// `config.charset`, for every line read and written.
    charset: charset::Charset,
    /// Lines that were not UTF-8 (read in the fallback charset), counted in the logs.
    not_utf8_lines: std::sync::atomic::AtomicU64,
}

/// Build the handle and the task of one IRC network.
#[must_use]
pub fn build(network: &str, config: IrcConfig, context: BuildContext) -> (IrcHandle, IrcTask) {
    let (sender, receiver) = mpsc::channel(256);
    (
        IrcHandle { requests: sender },
        IrcTask {
            info: TaskInfo {
                network: network.to_owned(),
                charset: config.charset,
                config,
                context,
                edits_dropped: AtomicU64::new(0),
                not_utf8_lines: std::sync::atomic::AtomicU64::new(0),
            },
            requests: receiver,
        },
    )
}

/// One connection of an IRC network (the supervisor reconnects).
struct IrcSession {
    info: TaskInfo,
    requests: mpsc::Receiver<OutboundRequest>,
}

impl supervisor::Session for IrcSession {
    fn label(&self) -> &'static str {
        "IRC"
    }

    async fn connect(&mut self) -> SessionEnd {
        self.info.session(&mut self.requests).await
    }
}

impl IrcTask {
    /// Connect, and reconnect under the supervisor, until shutdown.
    pub async fn run(self) {
        let IrcTask { info, requests } = self;
        let network = info.network.clone();
        let shutdown = info.context.shutdown.clone();
        let policy = info.context.reconnect;
        supervise(&network, policy, &shutdown, IrcSession { info, requests }).await;
    }
}

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

    async fn session(&self, requests: &mut mpsc::Receiver<OutboundRequest>) -> SessionEnd {
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
        Some(Inbound {
            origin: ChannelRef::new(self.network(), channel),
            remote_id: tag(message, "msgid"),
            author: Author {
                id: nick.to_owned(),
                display_name: nick.to_owned(),
            },
            timestamp_ms: tag(message, "time")
                .and_then(|t| parse_server_time(&t))
                .unwrap_or_else(now_ms),
            body: EventBody::Membership(change),
            permalink: None,
        })
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
            let topic = richtext::irc::strip_formatting(line.param(1).unwrap_or(""));
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
        let (style, body) = if let Some(ctcp) = text.strip_prefix('\x01') {
            let ctcp = ctcp.strip_suffix('\x01').unwrap_or(ctcp);
            match ctcp.split_once(' ') {
                Some((verb, rest)) if verb.eq_ignore_ascii_case("ACTION") => {
                    (TextStyle::Action, rest)
                }
                None if ctcp.eq_ignore_ascii_case("ACTION") => (TextStyle::Action, ""),
                _ => return Ok(()), // VERSION, PING, ... are not conversation
            }
        } else if line.command == "NOTICE" {
            (TextStyle::Notice, text)
        } else {
            (TextStyle::Normal, text)
        };
        let text = richtext::irc::parse(body);
        if text.to_plain_text().trim().is_empty() {
            return Ok(());
        }
        let inbound = Inbound {
            origin: ChannelRef::new(self.network(), channel),
            remote_id: tag(message, "msgid"),
            author: Author {
                id: nick.to_owned(),
                display_name: nick.to_owned(),
            },
            timestamp_ms: tag(message, "time")
                .and_then(|t| parse_server_time(&t))
                .unwrap_or_else(now_ms),
            body: EventBody::formatted(style, text),
            permalink: None,
        };
        self.submit(inbound).await;
        Ok(())
    }
}

/// An error with its causes, `a: b: c`, so that "an io error occurred" says which.
fn tag(message: &Message, name: &str) -> Option<String> {
    message
        .tags
        .as_ref()?
        .iter()
        .find(|Tag(key, _)| key == name)
        .and_then(|Tag(_, value)| value.clone())
}

/// IRC has no files: a message's files become lines after its text, with a link to the file
/// when the media endpoint is configured, else to the message on its own platform.
fn files_as_lines(delivery: &Delivery, files: &crate::files::Files) -> Delivery {
    let mut delivery = delivery.clone();
    let permalink = delivery.permalink.clone();
    if let EventBody::Text {
        text, attachments, ..
    } = &mut delivery.body
        && !attachments.is_empty()
    {
        *text = crate::connector::with_file_lines(text, attachments.iter(), |attachment| {
            attachment
                .stored
                .as_deref()
                .and_then(|hash| files.link(hash, &attachment.name))
                .or_else(|| permalink.clone())
        });
        attachments.clear();
    }
    delivery
}

fn label(delivery_id: &str, index: usize) -> String {
    format!("{delivery_id}.{index}")
}

/// The IRC lines for one delivery: `(command, text)` pairs, each safe and within the line limit,
/// per the gateway's long-text and edit policies.
#[must_use]
pub fn render_delivery(
    delivery: &Delivery,
    nick_format: &str,
    own_nick: &str,
    labelled: bool,
    settings: &GatewaySettings,
) -> Vec<(&'static str, String)> {
    let long_text = &settings.long_text;
    let sender = lines::logical_lines(&render_sender(nick_format, delivery, no_ping_nick)).concat();
    let render = |text: &FormattedText| irc_render(text, &IrcRenderOptions::default());
    let (command, ctcp, text_lines) = match &delivery.body {
        EventBody::Text { style, text, .. } => match style {
            TextStyle::Normal => ("PRIVMSG", false, render(text)),
            TextStyle::Action => ("PRIVMSG", true, render(text)),
            TextStyle::Notice => ("NOTICE", false, render(text)),
        },
        // IRC cannot edit: per the gateway's policy, the corrected text is said again, marked
        // as a correction, or a short diff of it, or nothing.
        EventBody::Edit { style, text, .. } => {
            let diff = match settings.edit_policy {
                EditPolicy::Off => return Vec::new(),
                EditPolicy::Corrected => None,
                EditPolicy::Diff => delivery.previous_text.as_ref().and_then(|previous| {
                    edits::short_diff(&previous.to_plain_text(), &text.to_plain_text())
                }),
            };
            let mut corrected = match diff {
                Some(diff) => vec![lines::logical_lines(&diff).concat()],
                None => render(text),
            };
            if let Some(first) = corrected.first_mut() {
                first.insert_str(0, "* ");
            }
            match style {
                TextStyle::Notice => ("NOTICE", false, corrected),
                TextStyle::Action => ("PRIVMSG", true, corrected),
                TextStyle::Normal => ("PRIVMSG", false, corrected),
            }
        }
        // IRC cannot delete or react; saying so in the channel would only add noise.
        EventBody::Delete { .. } | EventBody::Reaction { .. } => return Vec::new(),
        EventBody::Membership(change) => {
            let text = crate::connector::membership_text(delivery, change);
            return render_text_lines(
                &LineFrame {
                    command: "NOTICE",
                    ctcp: false,
                    sender: &format!("[{}] ", delivery.origin.network),
                    target: &delivery.destination.channel,
                    own_nick,
                    labelled,
                    delivery_id: &delivery.id,
                },
                &[text],
                long_text,
                None,
            );
        }
    };
    render_text_lines(
        &LineFrame {
            command,
            ctcp,
            sender: &sender,
            target: &delivery.destination.channel,
            own_nick,
            labelled,
            delivery_id: &delivery.id,
        },
        &text_lines,
        long_text,
        delivery.permalink.as_deref(),
    )
}

/// How the lines of one delivery are framed on the wire.
struct LineFrame<'a> {
    command: &'static str,
    ctcp: bool,
    sender: &'a str,
    target: &'a str,
    own_nick: &'a str,
    labelled: bool,
    delivery_id: &'a str,
}

/// Split rendered lines to the byte budget, apply the gateway's long-text policy, and frame
/// each piece with the sender and, for actions, CTCP.
fn render_text_lines(
    frame: &LineFrame<'_>,
    text_lines: &[String],
    long_text: &LongTextPolicy,
    permalink: Option<&str>,
) -> Vec<(&'static str, String)> {
    let LineFrame {
        command,
        ctcp,
        sender,
        target,
        own_nick,
        labelled,
        delivery_id,
    } = *frame;
    // "@label=<id>.<n> " is our only tag.
    let tag_bytes = if labelled {
        1 + 6 + delivery_id.len() + 1 + 4 + 1
    } else {
        0
    };
    let budget = lines::text_budget(
        own_nick,
        command,
        target,
        tag_bytes,
        if ctcp { 9 } else { 0 },
    );
    // A very long display name must not push the text out of the line: keep at most half.
    let mut sender_cut = sender.len().min(budget / 2);
    while !sender.is_char_boundary(sender_cut) {
        sender_cut -= 1;
    }
    let sender = &sender[..sender_cut];
    let budget = budget - sender.len();
    // The renderer's lines never hold CR, LF or NUL; `logical_lines` makes sure of it again,
    // because a second IRC command smuggled in a line is the one thing that must never happen.
    let pieces: Vec<String> = text_lines
        .iter()
        .flat_map(|line| lines::logical_lines(line))
        .flat_map(|line| lines::split_to_budget(&line, budget))
        .collect();
    // The gateway's policy: all pieces, or the first ones and a pointer to the full text (which
    // may itself need splitting when the link is long).
    let pieces: Vec<String> = long_text::apply(pieces, long_text, permalink)
        .into_iter()
        .flat_map(|piece| lines::split_to_budget(&piece, budget))
        .collect();
    let mut out = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let body = format!("{sender}{piece}");
        let body = if ctcp {
            format!("\x01ACTION {body}\x01")
        } else {
            body
        };
        out.push((command, body));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::richtext::long_text::LongTextMode;
    use proptest::prelude::*;

    fn delivery(body: EventBody, author: &str, permalink: Option<&str>) -> Delivery {
        Delivery {
            id: "0123456789abcdef0123456789abcdef".into(),
            message_id: 1,
            destination: ChannelRef::new("irc", "#dest"),
            gateway: "g".into(),
            origin: ChannelRef::new("mx", "!room"),
            origin_protocol: "matrix".into(),
            author: Author {
                id: author.into(),
                display_name: author.into(),
            },
            timestamp_ms: 0,
            body,
            target: None,
            reply_to: None,
            thread_root: None,
            previous_text: None,
            permalink: permalink.map(str::to_owned),
            attempts: 0,
        }
    }

    fn texts(lines: &[(&str, String)]) -> Vec<String> {
        lines.iter().map(|(_, text)| text.clone()).collect()
    }

    #[test]
    fn long_messages_are_split_or_truncated_with_a_link_per_gateway_policy() {
        let text = (1..=8)
            .map(|n| format!("line {n}"))
            .collect::<Vec<_>>()
            .join("\n");
        let message = delivery(
            EventBody::text(TextStyle::Normal, &text),
            "alice",
            Some("https://matrix.to/#/!room/$event"),
        );
        let split = render_delivery(
            &message,
            "<{NICK}> ",
            "bridge",
            true,
            &GatewaySettings::default(),
        );
        assert_eq!(split.len(), 8);
        assert_eq!(split[7].1, "<alice> line 8");
        let truncate = GatewaySettings {
            long_text: LongTextPolicy {
                max_lines: 3,
                mode: LongTextMode::Truncate,
            },
            ..GatewaySettings::default()
        };
        let truncated = render_delivery(&message, "<{NICK}> ", "bridge", true, &truncate);
        assert_eq!(
            texts(&truncated),
            vec![
                "<alice> line 1",
                "<alice> line 2",
                "<alice> … (6 more lines: https://matrix.to/#/!room/$event)",
            ]
        );
    }

    #[test]
    fn edits_are_marked_and_deletes_and_reactions_send_nothing() {
        let edit = delivery(
            EventBody::Edit {
                target: "$e".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("corrected"),
            },
            "alice",
            None,
        );
        let policy = GatewaySettings::default();
        assert_eq!(
            render_delivery(&edit, "<{NICK}> ", "bridge", false, &policy),
            vec![("PRIVMSG", "<alice> * corrected".to_owned())]
        );
        let delete = delivery(
            EventBody::Delete {
                target: "$e".into(),
            },
            "alice",
            None,
        );
        assert!(render_delivery(&delete, "<{NICK}> ", "bridge", false, &policy).is_empty());
    }

    #[test]
    fn the_edit_policy_decides_what_irc_sees_of_an_edit() {
        let mut edit = delivery(
            EventBody::Edit {
                target: "$e".into(),
                style: TextStyle::Normal,
                text: FormattedText::plain("this is the best message we had"),
            },
            "alice",
            None,
        );
        edit.previous_text = Some(FormattedText::plain("this is teh best message we had"));
        let with = |edit_policy| GatewaySettings {
            edit_policy,
            ..GatewaySettings::default()
        };
        let seen = |edit: &Delivery, policy| {
            texts(&render_delivery(
                edit,
                "<{NICK}> ",
                "bridge",
                false,
                &with(policy),
            ))
        };
        assert_eq!(
            seen(&edit, EditPolicy::Corrected),
            vec!["<alice> * this is the best message we had"]
        );
        assert_eq!(seen(&edit, EditPolicy::Diff), vec!["<alice> * s/teh/the/"]);
        assert!(seen(&edit, EditPolicy::Off).is_empty());
        // Without the text it replaces, a diff cannot be made: the corrected text.
        edit.previous_text = None;
        assert_eq!(
            seen(&edit, EditPolicy::Diff),
            vec!["<alice> * this is the best message we had"]
        );
    }

    proptest! {
        #[test]
        fn every_line_fits_and_is_clean(
            text in "\\PC{0,2000}|[a\r\n\0\x01 é]{0,900}",
            author in "\\PC{0,300}",
            action in any::<bool>(),
        ) {
            let style = if action { TextStyle::Action } else { TextStyle::Normal };
            let message = delivery(EventBody::text(style, &text), &author, None);
            let nick = "tribridge-bot-with-a-long-nick";
            for (command, body) in render_delivery(&message, "[{NETWORK}] <{NOPINGNICK}> ", nick, true, &GatewaySettings::default()) {
                let tags = format!("@label={}.{} ", message.id, 999);
                let ours = format!("{tags}{command} #dest :{body}\r\n");
                let relayed = format!(":{nick}!{}@{} {command} #dest :{body}\r\n", "u".repeat(10), "h".repeat(63));
                prop_assert!(!body.contains(['\r', '\n', '\0']));
                prop_assert!(ours.len() <= 512, "{} bytes", ours.len());
                prop_assert!(relayed.len() <= 512, "{} bytes", relayed.len());
            }
        }
    }
}
