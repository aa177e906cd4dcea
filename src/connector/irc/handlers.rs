//! Inbound lines of one connection, as methods of [`Session`]: `handle` dispatches every line
//! the server sends (registration numerics, acknowledgements, refusals, `ERROR`), and the JOIN,
//! PART/KICK, QUIT, NICK, TOPIC and PRIVMSG/NOTICE handlers keep channel membership and turn what
//! others say and do into events for the router. **Invariants:** our own nick's lines only
//! confirm deliveries and are never relayed, nor is anything outside a configured channel; text
//! is read only through [`super::convert`]; events are submitted in the order they were read.
use irc::client::prelude::{Command, Message};

use crate::model::{EventBody, Inbound, Membership, now_ms};
use crate::vocab::gateway::IrcReplies;

use super::convert::{self, tag};
use super::irc_fold;
use super::session::{Kick, Phase, Session};
use super::wire::WireLine;

impl Session<'_> {
    /// Handle one message from the server. An `Err` ends the session.
    pub(super) async fn handle(&mut self, message: &Message) -> Result<(), String> {
        let line = WireLine::of(message);
        let label_tag = tag(message, "label");
        if let Some(role) = &self.task.puppet
            && matches!(
                line.command.as_str(),
                "403" | "404" | "405" | "471" | "473" | "474" | "475" | "476" | "477" | "489"
            )
            && let Some(channel) = line.param(1)
        {
            // Banned, invite only, moderated…: the bot speaks for this person there.
            self.task.shared.refuse(&role.key, channel);
        }
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
                if let Some(role) = &self.task.puppet {
                    self.task.shared.add(&self.nick);
                    role.book.record(&role.key, &self.nick);
                } else {
                    self.task
                        .context
                        .router
                        .set_account(self.network(), &self.nick);
                    self.task.context.router.status().connected(self.network());
                }
                tracing::info!(network = %self.network(), nick = %self.nick, caps = ?self.caps, "Registered.");
                if self.phase == Phase::Registering {
                    self.phase = Phase::Welcomed;
                }
                self.history_registered().await;
            }
            "005" => self.handle_isupport(&line)?,
            "376" | "422" => self.after_motd()?,
            "303" => {
                // ISON: an empty answer means the wanted nick is free.
                let online = line.last().unwrap_or("").trim();
                if online.is_empty() && !self.is_me(&self.task.config.nick) {
                    self.send(Command::NICK(self.task.config.nick.clone()))?;
                }
            }
            "353" => {
                // RPL_NAMREPLY: me = #channel :names. A puppet relays nothing: it keeps no
                // member lists (each would hold every nick of its channels).
                if self.task.puppet.is_none()
                    && let (Some(channel), Some(names)) = (line.param(2), line.last())
                {
                    let folded = irc_fold(channel);
                    let members = self.members.entry(folded).or_default();
                    // People here are who a nick here means, before anyone relayed elsewhere
                    // under that name.
                    let task = self.task;
                    let people = task.context.router.people();
                    for name in names.split(' ').filter(|n| !n.is_empty()) {
                        let nick = name.trim_start_matches(['@', '+', '%', '&', '~']);
                        let nick = nick.split('!').next().unwrap_or(nick);
                        members.insert(irc_fold(nick));
                        if !task.shared.is_puppet(nick) {
                            people.saw(&task.network, nick, nick);
                        }
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
                } else {
                    self.history_batch(&line).await;
                }
            }
            "PONG" => self.history_pong(&line),
            "JOIN" => self.handle_join(message, &line).await?,
            "PART" | "KICK" => self.handle_part(message, &line).await?,
            "QUIT" => self.handle_quit(message, &line).await?,
            "NICK" => self.handle_nick(message, &line).await?,
            "TOPIC" => self.handle_topic(message, &line).await?,
            "PRIVMSG" | "NOTICE" => {
                if !self.history_holds(message, &line) {
                    self.handle_text(message, &line, label_tag.as_deref())
                        .await?;
                }
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

    /// `RPL_ISUPPORT`: where the server has a bot mode (`BOT=B`), the bot sets it on itself,
    /// as `IRCv3`'s bot mode asks of bots (clients then show it as one, and WHOIS says so).
    fn handle_isupport(&mut self, line: &WireLine) -> Result<(), String> {
        let tokens = line
            .params
            .iter()
            .skip(1)
            .take(line.params.len().saturating_sub(2));
        let tokens: Vec<&String> = tokens.collect();
        if let Some(length) = tokens
            .iter()
            .find_map(|token| token.strip_prefix("NICKLEN="))
            .and_then(|value| value.parse::<usize>().ok())
        {
            self.task.shared.set_nicklen(length);
        }
        if self.task.puppet.is_some() {
            // A puppet is a person, not a bot.
            return Ok(());
        }
        let Some(mode) = tokens
            .into_iter()
            .filter_map(|token| token.strip_prefix("BOT="))
            .find_map(|value| value.chars().next().filter(char::is_ascii_alphabetic))
        else {
            return Ok(());
        };
        tracing::info!(network = %self.network(), mode = %mode, "The server has a bot mode; setting it.");
        let nick = self.nick.clone();
        self.send_raw("MODE", &[&nick, &format!("+{mode}")])
    }

    pub(super) fn configured(&self, channel: &str) -> Option<String> {
        self.channels.get(&irc_fold(channel)).cloned()
    }

    /// Queue an event for commit in the order it was read, without waiting for its commit:
    /// IRC has no position to acknowledge, and lines read together then share a transaction
    /// (group commit). At most [`COMMITS_IN_FLIGHT`](super::COMMITS_IN_FLIGHT) wait at once, so
    /// a slow store slows the reading of the connection instead of growing memory.
    pub(super) async fn submit(&self, inbound: Inbound) {
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
        if !self.task.config.relay_membership
            || self.task.puppet.is_some()
            || self.task.shared.is_puppet(nick)
        {
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

    /// A person the bridge knows changed their nick: mentions of the old nick reach the new
    /// one, also after a restart. Recorded here, not only with a relayed nick change, because
    /// nick changes are relayed only with `relay_membership`.
    fn learn_rename(&self, old: &str, new: &str) {
        let context = &self.task.context;
        let people = context.router.people();
        if people.current(self.network(), old).is_none() {
            return;
        }
        people.renamed(self.network(), old, new);
        let (store, network) = (
            std::sync::Arc::clone(&context.store),
            self.network().to_owned(),
        );
        let (old, new) = (old.to_owned(), new.to_owned());
        tokio::task::spawn_blocking(move || {
            if let Err(error) = store.record_rename(&network, &old, &new) {
                tracing::warn!(network = %network, error = %error, "Could not store a nick change; mentions of the old nick reach the new one until a restart.");
            }
        });
    }

    async fn handle_join(&mut self, message: &Message, line: &WireLine) -> Result<(), String> {
        let (Some(nick), Some(channel)) = (message.source_nickname(), line.param(0)) else {
            return Ok(());
        };
        let Some(configured) = self.configured(channel) else {
            return Ok(());
        };
        let folded = irc_fold(channel);
        if self.task.puppet.is_none() {
            self.members
                .entry(folded.clone())
                .or_default()
                .insert(irc_fold(nick));
        }
        if self.task.puppet.is_none() && !self.task.shared.is_puppet(nick) {
            self.task
                .context
                .router
                .people()
                .saw(self.network(), nick, nick);
        }
        if self.is_me(nick) {
            tracing::info!(network = %self.network(), channel = %configured, "Joined.");
            if self.task.puppet.is_none() {
                self.task
                    .context
                    .router
                    .status()
                    .joined(self.network(), &configured);
            }
            self.history_joined(&configured, message).await;
            self.kicked.remove(&folded);
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
            self.joined.remove(&folded);
            if self.task.puppet.is_none() {
                self.task
                    .context
                    .router
                    .status()
                    .left(self.network(), &configured);
            }
            if line.command == "KICK" && !self.task.config.rejoin_after_kick {
                let by = message.source_nickname().unwrap_or("the server").to_owned();
                let reason = reason.unwrap_or_default();
                tracing::warn!(network = %self.network(), channel = %configured, by = %by, reason = %reason, "Kicked from channel; not rejoining (rejoin_after_kick is off). Deliveries to it fail, counted and kept in the store as failed, until the next connection; the gateway's other channels keep flowing.");
                self.kicked.insert(folded, Kick { by, reason });
                return Ok(());
            }
            if line.command == "KICK" {
                tracing::warn!(network = %self.network(), channel = %configured, by = message.source_nickname().unwrap_or("the server"), reason = reason.as_deref().unwrap_or(""), "Kicked from channel; rejoining (rejoin_after_kick).");
            } else {
                tracing::warn!(network = %self.network(), channel = %configured, "Removed from channel; rejoining.");
            }
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
        if self.task.puppet.is_none()
            && folded_nick == irc_fold(&self.task.config.nick)
            && !self.is_me(nick)
        {
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
            if let Some(role) = &self.task.puppet {
                self.task.shared.add(new);
                role.book.record(&role.key, new);
                if role.own_nick {
                    if irc_fold(old) == irc_fold(&self.task.config.nick) {
                        self.task.shared.release(old);
                    } else if irc_fold(new) == irc_fold(&self.task.config.nick) {
                        self.identify_own_nick()?;
                    }
                }
            } else {
                self.task
                    .context
                    .router
                    .set_account(self.network(), &self.nick);
            }
            return Ok(());
        }
        if self.task.puppet.is_some() || self.task.shared.is_puppet(old) {
            // Puppets' renames are ours; a puppet relays nothing.
            return Ok(());
        }
        if irc_fold(old) == irc_fold(&self.task.config.nick) {
            self.send(Command::NICK(self.task.config.nick.clone()))?;
        }
        self.learn_rename(old, new);
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
        if self.is_me(nick) || self.task.shared.is_puppet(nick) {
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

    pub(super) async fn handle_text(
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
        if self.task.shared.is_puppet(nick) && self.task.puppet.is_none() {
            // A puppet's line, seen by the bot: already where it came from.
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
        if self.task.puppet.is_some() {
            return self.puppet_heard(nick, target, &line.command);
        }
        let Some(channel) = self.configured(target) else {
            // Private messages and channels outside every gateway are not relayed.
            return Ok(());
        };
        let Some((style, mut text)) = convert::text_message(&line.command, text) else {
            // A CTCP query (VERSION, PING, ...) or a line that shows nothing.
            return Ok(());
        };
        let context = &self.task.context;
        super::mentions::detect(&mut text, context.router.people(), self.network());
        let reply_to = {
            let mut recent = super::lock(&self.task.recent);
            recent.shown(
                &channel,
                super::mentions::Shown::Said(tag(message, "msgid")),
            );
            // `nick: text` to someone relayed here a moment ago replies to their line, where a
            // gateway of the channel asks for it (`irc_replies = "reply"`).
            let origin = crate::model::ChannelRef::new(self.network(), channel.as_str());
            let wanted = context
                .router
                .topology()
                .routes(&origin)
                .iter()
                .any(|route| context.gateway(&route.gateway).irc_replies == IrcReplies::Reply);
            if wanted {
                recent.implied_reply(&channel, &text, now_ms())
            } else {
                None
            }
        };
        let body = EventBody::Text {
            style,
            text,
            reply_to,
            attachments: Vec::new(),
            thread_root: None,
        };
        let inbound = convert::inbound(self.network(), &channel, nick, message, body, now_ms());
        self.submit_line(inbound).await;
        Ok(())
    }

    /// A line a puppet receives (the bot relays everything said in channels): a private
    /// message from a person gets one NOTICE saying that private messages are not relayed.
    fn puppet_heard(&mut self, nick: &str, target: &str, command: &str) -> Result<(), String> {
        if command != "PRIVMSG"
            || !self.is_me(target)
            || nick.contains('.')
            || self.task.shared.is_puppet(nick)
            || !self.dm_noticed.insert(irc_fold(nick))
        {
            return Ok(());
        }
        tracing::info!(network = %self.network(), puppet = %self.nick, from = %nick, "A private message to a puppet; not relayed, the sender is told once.");
        self.send(Command::NOTICE(
            nick.to_owned(),
            format!(
                "{} is bridged from another network by tribridge; private messages to \
                 bridged people are not relayed. Speak in a bridged channel instead.",
                self.nick
            ),
        ))
    }
}
