//! Deliveries to an api network: each becomes a matterbridge message ([`ApiMessage`]) and is
//! committed to the network's buffer; the acknowledgement (the delivery id as the remote id)
//! comes only after that commit, so the outbox forgets nothing a client has not been able to
//! read. A full buffer refuses the delivery for a retry: it waits in the outbox, counted and
//! logged (once per time the buffer fills), until a client reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::buffer::Pushed;
use super::build::Shared;
use super::convert::{
    ApiMessage, EVENT_JOIN_LEAVE, EVENT_NONE, EVENT_USER_ACTION, MessageExtra, MessageFile, rfc3339,
};
use crate::connector::{BoxFuture, DeliverWhole, membership_text, render_sender, with_file_lines};
use crate::model::{Delivery, DeliveryAck, EventBody, TextStyle, now_ms};
use crate::richtext::FormattedText;
use crate::richtext::edits::{self, EditPolicy};
use crate::richtext::markdown;
use crate::richtext::mention::{neutralise_mass_pings, no_ping_nick, rewrite_mentions};
use crate::vocab::DeliveryError;

/// When a delivery refused by a full buffer is tried again.
const FULL_RETRY: Duration = Duration::from_secs(2);

/// The outbox's side of an api network.
pub struct ApiHandle {
    shared: Arc<Shared>,
    /// Whether the buffer was full at the last delivery (to log a filling once).
    full: AtomicBool,
}

impl ApiHandle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            full: AtomicBool::new(false),
        }
    }

    /// The message clients get for `delivery`; `None` for what the API does not show
    /// (deletes, reactions, an edit under `edit_policy = "off"`).
    async fn message(&self, delivery: &Delivery) -> Option<ApiMessage> {
        let shared = &self.shared;
        let settings = shared.context.gateway(&delivery.gateway);
        let (event, text, attachments) = match &delivery.body {
            EventBody::Text {
                style,
                text,
                attachments,
                ..
            } => {
                let event = if *style == TextStyle::Action {
                    EVENT_USER_ACTION
                } else {
                    EVENT_NONE
                };
                let mut shown = self.markdown(text, settings.allow_mass_pings);
                // A reply is addressed to the one it answers, as on IRC: `nick: text`.
                if let Some(replied) = &delivery.replied {
                    shown.insert_str(0, &format!("{}: ", replied.author.display_name));
                }
                (event, shown, attachments.as_slice())
            }
            EventBody::Edit { style, text, .. } => {
                let shown = match settings.edit_policy {
                    EditPolicy::Off => return None,
                    EditPolicy::Corrected => None,
                    EditPolicy::Diff => delivery.previous_text.as_ref().and_then(|previous| {
                        edits::short_diff(&previous.to_plain_text(), &text.to_plain_text())
                    }),
                };
                let shown = shown.unwrap_or_else(|| self.markdown(text, settings.allow_mass_pings));
                let event = if *style == TextStyle::Action {
                    EVENT_USER_ACTION
                } else {
                    EVENT_NONE
                };
                (event, format!("* {shown}"), &[][..])
            }
            EventBody::Delete { .. } | EventBody::Reaction { .. } => return None,
            EventBody::Membership(change) => {
                (EVENT_JOIN_LEAVE, membership_text(delivery, change), &[][..])
            }
        };
        let mut files = Vec::new();
        let mut unsent = Vec::new();
        for attachment in attachments {
            let stored = match attachment.stored.as_deref() {
                Some(hash) => shared
                    .context
                    .files
                    .read(hash)
                    .await
                    .map(|bytes| (hash, bytes)),
                None => None,
            };
            match stored {
                Some((hash, bytes)) => files.push(MessageFile::new(&attachment.name, &bytes, hash)),
                None => unsent.push(attachment.clone()),
            }
        }
        // Files the bridge did not keep are announced by name, with a link where it has one.
        let text = if unsent.is_empty() {
            text
        } else {
            let lines = with_file_lines(&FormattedText::plain(&text), unsent.iter(), |_| {
                delivery.permalink.clone()
            });
            lines.to_plain_text()
        };
        let format = settings.nick_format(&shared.context.remote_nick_format);
        let username = render_sender(format, delivery, no_ping_nick);
        Some(ApiMessage {
            text,
            channel: delivery.destination.channel.clone(),
            username,
            userid: delivery.author.id.clone(),
            avatar: String::new(),
            account: format!("{}.{}", delivery.origin_protocol, delivery.origin.network),
            event: event.to_owned(),
            protocol: delivery.origin_protocol.clone(),
            gateway: delivery.destination.channel.clone(),
            parent_id: String::new(),
            timestamp: rfc3339(delivery.timestamp_ms),
            id: delivery.id.clone(),
            extra: MessageExtra { file: files },
        })
    }

    /// `text` as Markdown for API clients: people of other networks by the names they are
    /// shown under, mass pings neutralised unless the gateway allows them.
    fn markdown(&self, text: &FormattedText, allow_mass_pings: bool) -> String {
        let mut text = text.clone();
        let people = self.shared.context.router.people();
        rewrite_mentions(
            &mut text,
            &self.shared.network,
            &|_, _| None,
            &|network, user_id| people.current(network, user_id).map(|(_, shown)| shown),
        );
        neutralise_mass_pings(&mut text, allow_mass_pings);
        markdown::render(&text)
    }

    async fn deliver(&self, delivery: &Delivery) -> Result<DeliveryAck, DeliveryError> {
        let Some(message) = self.message(delivery).await else {
            return Ok(DeliveryAck::default());
        };
        let shared = Arc::clone(&self.shared);
        let json = serde_json::to_string(&message)
            .map_err(|error| DeliveryError::Permanent(format!("cannot encode: {error}")))?;
        let delivery_id = delivery.id.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            let buffer = shared.buffer.as_ref()?;
            let pushed = buffer.push(&delivery_id, &json, now_ms());
            shared
                .metrics
                .buffered
                .store(buffer.unread(), Ordering::Relaxed);
            Some(pushed)
        })
        .await
        .map_err(|error| retry(format!("buffer task failed: {error}")))?;
        let shared = &self.shared;
        match pushed {
            None => Err(retry("the API's buffer could not be opened".to_owned())),
            Some(Err(error)) => Err(retry(error.to_string())),
            Some(Ok(Pushed::Full)) => {
                shared.metrics.held.fetch_add(1, Ordering::Relaxed);
                if !self.full.swap(true, Ordering::Relaxed) {
                    tracing::warn!(network = %shared.network, buffer = shared.config.buffer, "The API's buffer is full (no client has read it); deliveries wait in the outbox until one does.");
                }
                Err(DeliveryError::Retry {
                    after: Some(FULL_RETRY),
                    reason: "the API's buffer is full".to_owned(),
                })
            }
            Some(Ok(Pushed::Stored(seq))) => {
                if self.full.swap(false, Ordering::Relaxed) {
                    tracing::info!(network = %shared.network, "The API's buffer has room again; deliveries resume.");
                }
                shared.newest.send_replace(seq);
                Ok(DeliveryAck {
                    remote_id: Some(delivery.id.clone()),
                })
            }
            Some(Ok(Pushed::Already)) => Ok(DeliveryAck {
                remote_id: Some(delivery.id.clone()),
            }),
        }
    }
}

fn retry(reason: String) -> DeliveryError {
    DeliveryError::Retry {
        after: None,
        reason,
    }
}

impl DeliverWhole for ApiHandle {
    fn deliver_whole<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<DeliveryAck, DeliveryError>> {
        Box::pin(self.deliver(delivery))
    }
}
