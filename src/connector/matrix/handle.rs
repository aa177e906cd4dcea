//! The Matrix delivery handle: what the outbox calls to put a delivery in a room (send, edit,
//! redact, react, upload), over the live session's client.
//!
//! Invariants: the transaction id of every request is the delivery id, so a retried send never
//! doubles; `M_LIMIT_EXCEEDED` becomes a retry after the server's delay for that room only; a
//! refused token asks the session to log in again instead of failing the delivery for good.
//!
//! Transaction ids are deduplicated by the homeserver per device, and only for a while: a send
//! the previous run (or the previous active instance) made but never recorded as complete would
//! be made again by this run's device. So every event carries its delivery id in its content
//! ([`content::DELIVERY_KEY`]), and before the first send into a room of a delivery that may
//! have been sent before this handle existed (one said before it was made), the handle reads the
//! bot's own recent events in that room back once ([`READ_BACK_LIMIT`] events, decrypted by the
//! SDK) and completes such a delivery found there with the event's id instead of sending it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use matrix_sdk::ruma::api::error::ErrorKind;
use matrix_sdk::ruma::{EventId, OwnedRoomId, OwnedTransactionId, RoomId};
use matrix_sdk::{Room, RoomState};
use serde_json::Value;

use super::content;
use super::session::{Live, RoomScope};
use crate::connector::supervisor::error_chain;
use crate::connector::{
    BoxFuture, BuildContext, DeliverWhole, DeliveryError, render_sender, with_original_time,
};
use crate::model::{Delivery, DeliveryAck, EventBody, now_ms};

/// The outbox's handle on a Matrix network.
#[derive(Clone)]
pub struct MatrixHandle {
    network: String,
    remote_nick_format: String,
    gateways: crate::vocab::GatewayBook,
    live: Arc<RwLock<Option<Live>>>,
    relogin: Arc<tokio::sync::Notify>,
    files: Arc<crate::files::Files>,
    people: Arc<crate::vocab::People>,
    /// Requests the handle has begun that put an event of the bot's in a room.
    writes: Arc<AtomicU64>,
    /// The session's rooms when it has a scope (appservice mode's encrypted rooms, joined for
    /// it): a room of it is used before the session has seen it in a sync.
    scope: Option<RoomScope>,
    /// Authors' pictures as uploaded, for the per-message profile's `avatar_url`.
    pictures: Arc<std::sync::Mutex<Pictures>>,
    /// When this handle was made (this connector's start), ms since the Unix epoch.
    started_ms: i64,
    /// Per room: the delivery ids found in the bot's recent events there, read back once.
    read_back: Arc<std::sync::Mutex<HashMap<OwnedRoomId, ReadBack>>>,
}

/// The delivery ids found in one room's read-back, each with the event that carries it.
type ReadBack = Arc<tokio::sync::OnceCell<HashMap<String, String>>>;

/// How many of the bot's own most recent events in a room one read-back looks at.
pub const READ_BACK_LIMIT: u32 = 100;

/// How far the clocks of the origin networks and this host may disagree: a delivery said up to
/// this long after the handle was made may still have been queued before it.
const CLOCK_SLACK_MS: i64 = 60_000;

/// The pictures of relayed people uploaded to the content repository: each stored picture is
/// read only when its time stamp changed, and the same bytes are uploaded once.
#[derive(Default)]
struct Pictures {
    /// (origin network, author id) → (time stamp of the stored picture, its `mxc://`).
    by_author: HashMap<(String, String), (std::time::SystemTime, String)>,
    /// SHA-256 of a picture → its `mxc://`.
    by_digest: HashMap<Vec<u8>, String>,
}

fn retry(after: Option<Duration>, reason: impl Into<String>) -> DeliveryError {
    DeliveryError::Retry {
        after,
        reason: reason.into(),
    }
}

/// How a failed request maps to a delivery outcome.
fn classify(error: &matrix_sdk::Error, relogin: &tokio::sync::Notify) -> DeliveryError {
    let reason = error_chain(error);
    match error.client_api_error_kind() {
        Some(ErrorKind::LimitExceeded(data)) => {
            let after = match data.retry_after {
                Some(matrix_sdk::ruma::api::error::RetryAfter::Delay(delay)) => Some(delay),
                Some(matrix_sdk::ruma::api::error::RetryAfter::DateTime(at)) => Some(
                    at.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default(),
                ),
                None => Some(Duration::from_secs(5)),
            };
            retry(after, format!("rate limited by the homeserver: {reason}"))
        }
        Some(ErrorKind::UnknownToken(_)) => {
            relogin.notify_one();
            retry(
                Some(Duration::from_secs(2)),
                format!("the access token was refused; logging in again: {reason}"),
            )
        }
        Some(
            ErrorKind::Forbidden
            | ErrorKind::BadJson
            | ErrorKind::NotJson
            | ErrorKind::TooLarge
            | ErrorKind::InvalidParam
            | ErrorKind::NotFound,
        ) => DeliveryError::Permanent(reason),
        _ => retry(None, reason),
    }
}

fn is_duplicate_annotation(error: &matrix_sdk::Error) -> bool {
    error
        .as_client_api_error()
        .is_some_and(|e| e.to_string().contains("M_DUPLICATE_ANNOTATION"))
        || error_chain(error).contains("M_DUPLICATE_ANNOTATION")
}

impl DeliverWhole for MatrixHandle {
    fn deliver_whole<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<DeliveryAck, DeliveryError>> {
        Box::pin(self.deliver(delivery))
    }
}

impl MatrixHandle {
    /// The handle of network `network`, over the session's `live` client.
    pub(super) fn new(
        network: &str,
        context: &BuildContext,
        live: Arc<RwLock<Option<Live>>>,
        relogin: Arc<tokio::sync::Notify>,
        writes: Arc<AtomicU64>,
        scope: Option<RoomScope>,
    ) -> Self {
        Self {
            network: network.to_owned(),
            remote_nick_format: context.remote_nick_format.clone(),
            gateways: context.gateways.clone(),
            live,
            relogin,
            files: Arc::clone(&context.files),
            people: Arc::clone(context.router.people()),
            writes,
            scope,
            pictures: Arc::default(),
            started_ms: now_ms(),
            read_back: Arc::default(),
        }
    }

    /// The event already in `room` for `delivery` when it may have been sent before this
    /// handle was made (by an earlier run or another instance, from another device whose
    /// transaction ids the homeserver does not compare with ours): the bot's own recent events
    /// there are read back once per room, the first time such a delivery goes to it.
    async fn already_sent(
        &self,
        room: &Room,
        delivery: &Delivery,
    ) -> Result<Option<String>, DeliveryError> {
        if delivery.timestamp_ms >= self.started_ms.saturating_add(CLOCK_SLACK_MS) {
            return Ok(None);
        }
        let cell = Arc::clone(
            self.read_back
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(room.room_id().to_owned())
                .or_default(),
        );
        let found = match cell.get_or_try_init(|| self.read_back(room)).await {
            Ok(found) => found,
            // A refusal that will not change (the room's history closed to the bot): the
            // delivery goes out as it would without the read-back, rather than never.
            Err(error) => match classify(&error, &self.relogin) {
                DeliveryError::Permanent(reason) => {
                    tracing::warn!(network = %self.network, room = %room.room_id(), delivery = %delivery.id, error = %reason, "Cannot read the room back; sending without looking for an earlier send of this delivery.");
                    return Ok(None);
                }
                DeliveryError::Retry { after, reason } => {
                    return Err(retry(
                        after,
                        format!(
                            "cannot read room {} back before a send that may be there already: {reason}",
                            room.room_id()
                        ),
                    ));
                }
            },
        };
        Ok(found.get(&delivery.id).cloned())
    }

    /// The delivery ids in the bot's [`READ_BACK_LIMIT`] most recent events in `room`, each
    /// with its event id.
    async fn read_back(&self, room: &Room) -> Result<HashMap<String, String>, matrix_sdk::Error> {
        use matrix_sdk::room::MessagesOptions;
        let started = std::time::Instant::now();
        let mut options = MessagesOptions::backward();
        options.limit = READ_BACK_LIMIT.into();
        if let Some(own) = room.client().user_id() {
            options.filter.senders = Some(vec![own.to_owned()]);
        }
        let page = room.messages(options).await?;
        let own = room.client().user_id().map(ToOwned::to_owned);
        let mut found = HashMap::new();
        for event in &page.chunk {
            let Ok(event) = event.raw().deserialize_as::<Value>() else {
                continue;
            };
            if own.as_deref().map(matrix_sdk::ruma::UserId::as_str) != event["sender"].as_str() {
                continue;
            }
            if let (Some(id), Some(event_id)) = (
                event["content"][content::DELIVERY_KEY].as_str(),
                event["event_id"].as_str(),
            ) {
                // Newest first: a delivery already doubled is completed with its latest copy.
                found
                    .entry(id.to_owned())
                    .or_insert_with(|| event_id.to_owned());
            }
        }
        tracing::info!(network = %self.network, room = %room.room_id(), events = page.chunk.len(), deliveries = found.len(), elapsed_ms = started.elapsed().as_millis(), "Read the bot's recent events in a room back before sending what may already be there.");
        Ok(found)
    }

    /// The `mxc://` of the picture the bridge keeps of the delivery's author (none from IRC),
    /// uploaded the first time; `None` without one, or when the upload failed (logged: the
    /// message goes without it).
    async fn author_picture(
        &self,
        client: &matrix_sdk::Client,
        delivery: &Delivery,
    ) -> Option<String> {
        use sha2::Digest as _;
        let origin = &delivery.origin.network;
        let author = &delivery.author.id;
        let stamp = self.files.avatar_stamp(origin, author).await?;
        let key = (origin.clone(), author.clone());
        if let Some((known, mxc)) = self
            .pictures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_author
            .get(&key)
            && *known == stamp
        {
            return Some(mxc.clone());
        }
        let picture = self.files.avatar(origin, author).await?;
        let digest = sha2::Sha256::digest(&picture).to_vec();
        let uploaded = self
            .pictures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_digest
            .get(&digest)
            .cloned();
        let mxc = if let Some(mxc) = uploaded {
            mxc
        } else {
            let mime: mime::Mime = content::image_type(&picture)
                .parse()
                .unwrap_or(mime::APPLICATION_OCTET_STREAM);
            match client.media().upload(&mime, picture, None).await {
                Ok(response) => response.content_uri.to_string(),
                Err(error) => {
                    tracing::info!(network = %self.network, author = %author, error = %error_chain(&error), "Cannot upload a relayed person's picture; their messages go without it.");
                    return None;
                }
            }
        };
        let mut pictures = self
            .pictures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pictures.by_digest.insert(digest, mxc.clone());
        pictures.by_author.insert(key, (stamp, mxc.clone()));
        Some(mxc)
    }

    /// The room of `channel` in the session's scope, if any.
    fn scoped_room(&self, channel: &str) -> Option<OwnedRoomId> {
        self.scope
            .as_ref()?
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(_, scoped)| scoped.as_str() == channel)
            .and_then(|(room_id, _)| RoomId::parse(room_id).ok())
    }

    /// Send one delivery; the homeserver's answer (an event id) is the acknowledgement.
    pub async fn deliver(&self, delivery: &Delivery) -> Result<DeliveryAck, DeliveryError> {
        let (client, room_id) = {
            let guard = self
                .live
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(live) = guard.as_ref() else {
                return Err(retry(
                    Some(Duration::from_secs(1)),
                    format!("not logged in to Matrix network {} yet", self.network),
                ));
            };
            let Some(room_id) = live
                .rooms
                .get(&delivery.destination.channel)
                .cloned()
                .or_else(|| self.scoped_room(&delivery.destination.channel))
            else {
                return Err(retry(
                    Some(Duration::from_secs(5)),
                    format!("room {} is not joined yet", delivery.destination.channel),
                ));
            };
            (live.client.clone(), room_id)
        };
        let Some(room) = client.get_room(&room_id) else {
            return Err(retry(
                Some(Duration::from_secs(5)),
                format!("room {room_id} is not known to the client yet"),
            ));
        };
        if room.state() != RoomState::Joined {
            return Err(retry(
                Some(Duration::from_secs(5)),
                format!("the bot is not in room {room_id}"),
            ));
        }
        // `@room` and the like from another network stay pings only where the gateway allows.
        let settings = self.gateways.get(&delivery.gateway).unwrap_or_default();
        let allow_mass_pings = settings.allow_mass_pings;
        // Late (after an outage): the text shows when it was said, and the event carries the
        // original time for clients and bots that read it.
        let late = with_original_time(delivery, &settings, now_ms());
        let original_time = late.as_ref().map(|late| late.timestamp_ms);
        let mut delivery = late.unwrap_or_else(|| delivery.clone());
        super::mentions::outbound(&mut delivery, &self.people, &self.network);
        let notified = super::mentions::mentioned(&delivery, &self.network);
        let mut notifies_room = false;
        if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut delivery.body {
            crate::richtext::mention::neutralise_mass_pings(text, allow_mass_pings);
            notifies_room = super::mentions::mentions_room(text);
        }
        let delivery = &delivery;
        if let Some(event_id) = self.already_sent(&room, delivery).await? {
            tracing::info!(network = %self.network, room = %room_id, delivery = %delivery.id, event = %event_id, "The delivery is already in the room (sent before a restart or a take-over); completed without sending it again.");
            return Ok(DeliveryAck {
                remote_id: Some(event_id),
            });
        }
        // The author's picture for the per-message profile (texts and edits).
        let picture = match &delivery.body {
            EventBody::Text { .. } | EventBody::Edit { .. } => {
                self.author_picture(&client, delivery).await
            }
            _ => None,
        };
        let picture = picture.as_deref();
        // Counted before the request: the homeserver tells the bot's sync about the event
        // before it answers the send.
        self.writes.fetch_add(1, Ordering::Relaxed);
        let txn_id: OwnedTransactionId = delivery.id.as_str().into();
        let sender = render_sender(
            settings.nick_format(&self.remote_nick_format),
            delivery,
            str::to_owned,
        );
        let target_event = delivery
            .target
            .as_ref()
            .and_then(|t| t.remote_id.as_deref())
            .and_then(|id| EventId::parse(id).ok());
        let reply_event = delivery
            .reply_to
            .as_ref()
            .and_then(|t| t.remote_id.as_deref())
            .and_then(|id| EventId::parse(id).ok());
        let thread_event = delivery
            .thread_root
            .as_ref()
            .and_then(|t| t.remote_id.as_deref())
            .and_then(|id| EventId::parse(id).ok());
        let related = content::Related {
            target: target_event.as_deref(),
            reply_to: reply_event.as_deref(),
            thread_root: thread_event.as_deref(),
        };
        if let EventBody::Text {
            text, attachments, ..
        } = &delivery.body
            && !attachments.is_empty()
        {
            return self
                .send_with_files(
                    &room,
                    delivery,
                    (&sender, picture),
                    (text, attachments),
                    related,
                )
                .await;
        }
        let (event_type, body) = match content::outbound(delivery, &sender, related) {
            content::Outbound::Send {
                event_type,
                mut content,
            } => {
                if let Some(original_time) = original_time {
                    content[content::ORIGINAL_TIME_KEY] = original_time.into();
                }
                content[content::DELIVERY_KEY] = delivery.id.as_str().into();
                if event_type == "m.room.message" {
                    content::set_mentions(&mut content, &notified, notifies_room);
                    content::set_per_message_profile(&mut content, delivery, picture);
                }
                (event_type, content)
            }
            content::Outbound::Redact(event_id) => {
                return match room.redact(&event_id, None, Some(txn_id)).await {
                    Ok(response) => Ok(DeliveryAck {
                        remote_id: Some(response.event_id.to_string()),
                    }),
                    Err(error) => Err(classify(&error.into(), &self.relogin)),
                };
            }
            content::Outbound::RemoveReaction { target, key } => {
                return self.remove_reaction(&room, &target, &key, txn_id).await;
            }
            content::Outbound::Nothing => {
                tracing::debug!(network = %self.network, delivery = %delivery.id, kind = delivery.body.kind_name(), "The message this acts on never reached this room; nothing to do.");
                return Ok(DeliveryAck::default());
            }
        };
        match room
            .send_raw(event_type, body)
            .with_transaction_id(&txn_id)
            .await
        {
            Ok(response) => Ok(DeliveryAck {
                remote_id: Some(response.response.event_id.to_string()),
            }),
            Err(error) if is_duplicate_annotation(&error) => Ok(DeliveryAck::default()),
            Err(error) => Err(classify(&error, &self.relogin)),
        }
    }

    /// A message with files: each stored file uploaded to the content repository and sent as
    /// its own file event (the first one carries the caption and the reply; its transaction id
    /// is the delivery id, the others' the delivery id with their index). Files that were not
    /// copied are announced in the caption. Acknowledged with the first event's id.
    async fn send_with_files(
        &self,
        room: &Room,
        delivery: &Delivery,
        (sender, picture): (&str, Option<&str>),
        (text, attachments): (&crate::richtext::FormattedText, &[crate::model::Attachment]),
        related: content::Related<'_>,
    ) -> Result<DeliveryAck, DeliveryError> {
        let mut uploaded = Vec::new();
        let mut not_copied = Vec::new();
        for attachment in attachments {
            let Some(hash) = attachment.stored.clone() else {
                not_copied.push(attachment);
                continue;
            };
            let Some(content) = self.files.read(&hash).await else {
                tracing::warn!(network = %self.network, file = %attachment.name, "A stored file is gone (past file_retention_days?); it is announced by name.");
                not_copied.push(attachment);
                continue;
            };
            let mime: mime::Mime = attachment
                .mime
                .parse()
                .unwrap_or(mime::APPLICATION_OCTET_STREAM);
            match room.client().media().upload(&mime, content, None).await {
                Ok(response) => uploaded.push((attachment, response.content_uri.to_string())),
                Err(error) => return Err(classify(&error, &self.relogin)),
            }
        }
        let caption = crate::connector::with_file_lines(text, not_copied, |_| None);
        let mut first_event = None;
        if uploaded.is_empty() {
            let mut content = content::file_caption(sender, &caption);
            content::set_per_message_profile(&mut content, delivery, picture);
            if let Some(relation) = content::message_relation(related) {
                content["m.relates_to"] = relation;
            }
            content[content::DELIVERY_KEY] = delivery.id.as_str().into();
            return self
                .send_one(room, content, delivery.id.as_str().into())
                .await;
        }
        for (index, (attachment, mxc)) in uploaded.iter().enumerate() {
            let empty = crate::richtext::FormattedText::default();
            let mut content = content::file_content(
                attachment,
                mxc,
                sender,
                if index == 0 { &caption } else { &empty },
            );
            let txn_id: OwnedTransactionId = if index == 0 {
                delivery.id.as_str().into()
            } else {
                format!("{}.{index}", delivery.id).into()
            };
            content::set_per_message_profile(&mut content, delivery, picture);
            content[content::DELIVERY_KEY] = txn_id.as_str().into();
            if index == 0
                && let Some(relation) = content::message_relation(related)
            {
                content["m.relates_to"] = relation;
            }
            let ack = self.send_one(room, content, txn_id).await?;
            first_event = first_event.or(ack.remote_id);
        }
        Ok(DeliveryAck {
            remote_id: first_event,
        })
    }

    async fn send_one(
        &self,
        room: &Room,
        content: Value,
        txn_id: OwnedTransactionId,
    ) -> Result<DeliveryAck, DeliveryError> {
        match room
            .send_raw("m.room.message", content)
            .with_transaction_id(&txn_id)
            .await
        {
            Ok(response) => Ok(DeliveryAck {
                remote_id: Some(response.response.event_id.to_string()),
            }),
            Err(error) => Err(classify(&error, &self.relogin)),
        }
    }

    /// Take back a reaction the bot made: find it among the target's annotations and redact it.
    async fn remove_reaction(
        &self,
        room: &Room,
        target: &EventId,
        key: &str,
        txn_id: OwnedTransactionId,
    ) -> Result<DeliveryAck, DeliveryError> {
        use matrix_sdk::ruma::api::client::relations::get_relating_events_with_rel_type_and_event_type as relations;
        let client = room.client();
        let Some(own) = client.user_id().map(ToOwned::to_owned) else {
            return Err(retry(Some(Duration::from_secs(1)), "not logged in"));
        };
        let mut from: Option<String> = None;
        loop {
            let mut request = relations::v1::Request::new(
                room.room_id().to_owned(),
                target.to_owned(),
                matrix_sdk::ruma::events::relation::RelationType::Annotation,
                "m.reaction".into(),
            );
            request.from.clone_from(&from);
            let response = client
                .send(request)
                .await
                .map_err(|error| classify(&error.into(), &self.relogin))?;
            for raw in &response.chunk {
                let Ok(event) = raw.deserialize_as::<Value>() else {
                    continue;
                };
                let mine = event["sender"].as_str() == Some(own.as_str());
                let same_key = event["content"]["m.relates_to"]["key"].as_str() == Some(key);
                if mine
                    && same_key
                    && let Some(id) = event["event_id"]
                        .as_str()
                        .and_then(|i| EventId::parse(i).ok())
                {
                    return match room.redact(&id, None, Some(txn_id)).await {
                        Ok(response) => Ok(DeliveryAck {
                            remote_id: Some(response.event_id.to_string()),
                        }),
                        Err(error) => Err(classify(&error.into(), &self.relogin)),
                    };
                }
            }
            match response.next_batch {
                Some(next) => from = Some(next),
                None => return Ok(DeliveryAck::default()),
            }
        }
    }
}
