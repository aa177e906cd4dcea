//! Registration of one connection, as methods of [`Session`]: CAP negotiation, SASL PLAIN,
//! `NickServ` identification after the end of the MOTD, the joins and the check that they are
//! done, and regaining the configured nick. **Invariants:** a refusal never stalls registration
//! (a NAK or a failed SASL still ends CAP negotiation, and identification and joins have
//! deadlines); the session is `Ready` only once every configured channel is joined or refused,
//! or the join timeout has passed.
use base64::Engine as _;
use irc::client::prelude::Command;
use tokio::time::Instant;

use super::session::{Phase, Session};
use super::wire::WireLine;
use super::{IDENTIFY_TIMEOUT, JOIN_TIMEOUT, WANTED_CAPS};

impl Session<'_> {
    pub(super) fn begin_registration(&mut self) -> Result<(), String> {
        if let Some([password, gateway, host, address]) = self
            .task
            .puppet
            .as_ref()
            .and_then(|role| role.webirc.as_ref())
        {
            // A puppet's own host, where the server trusts the bridge as a WEBIRC gateway.
            self.send_raw("WEBIRC", &[password, gateway, host, address])?;
        }
        self.send_raw("CAP", &["LS", "302"])?;
        if let Some(password) = &self.task.config.server_password {
            self.send(Command::PASS(password.expose().to_owned()))?;
        }
        self.send(Command::NICK(self.task.config.nick.clone()))?;
        self.send(Command::USER(
            self.task.config.username.clone(),
            "0".into(),
            self.task.config.realname.clone(),
        ))
    }

    pub(super) fn handle_cap(&mut self, line: &WireLine) -> Result<(), String> {
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

    pub(super) fn finish_caps(&mut self) -> Result<(), String> {
        self.send_raw("CAP", &["END"])
    }

    fn start_sasl_or_end(&mut self) -> Result<(), String> {
        if self.caps.contains("sasl") && self.task.config.sasl_password.is_some() {
            self.send(Command::AUTHENTICATE("PLAIN".into()))
        } else {
            self.finish_caps()
        }
    }

    pub(super) fn send_sasl_credentials(&mut self) -> Result<(), String> {
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

    pub(super) fn after_motd(&mut self) -> Result<(), String> {
        if self.phase != Phase::Welcomed {
            return Ok(());
        }
        // A puppet identifies only with the person's own nick (not its fallback).
        if let Some(password) = &self.task.config.nickserv_password
            && !self.sasl_done
            && (self.task.puppet.is_none() || self.is_me(&self.task.config.nick))
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

    /// A linked person's puppet that took their own nick after registration (it was in use
    /// before): identify it, where a password is configured.
    pub(super) fn identify_own_nick(&self) -> Result<(), String> {
        if let Some(password) = &self.task.config.nickserv_password
            && self.phase == Phase::Ready
        {
            self.send(Command::PRIVMSG(
                self.task.config.nickserv_nick.clone(),
                format!("IDENTIFY {} {}", self.task.config.nick, password.expose()),
            ))?;
        }
        Ok(())
    }

    pub(super) fn join_channels(&mut self) -> Result<(), String> {
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

    pub(super) fn check_joined(&mut self) {
        if matches!(self.phase, Phase::Joining { .. })
            && self
                .channels
                .keys()
                .all(|c| self.joined.contains(c) || self.failed_joins.contains(c))
        {
            if self.history_fence() {
                // Ready once the fence is answered: the playback is read by then.
                return;
            }
            tracing::info!(network = %self.network(), joined = self.joined.len(), failed = self.failed_joins.len(), "Channels joined; ready.");
            self.phase = Phase::Ready;
        }
    }

    pub(super) fn try_regain_nick(&self) {
        if self.phase == Phase::Ready && !self.is_me(&self.task.config.nick) {
            let _ = self.send(Command::ISON(vec![self.task.config.nick.clone()]));
        }
    }
}
