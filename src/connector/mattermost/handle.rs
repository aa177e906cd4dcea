//! The outbox's handle on a Mattermost network: each delivery is one REST call (or a few: the
//! thread root, file uploads, then the post), acknowledged by the server's answer.
//!
//! **Invariants:** a create carries the delivery id as `pending_post_id` and is marked in flight
//! until its call returns, so that its `posted` echo is never relayed and a retried create
//! returns the same post; rate limits and server errors become retries for this destination
//! only; what a post says is computed in [`super::convert`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::Shared;
use super::api::{ApiError, Post};
use super::convert::{self, PostContent, SenderShown};
use super::emoji;
use super::remote::{RemoteUser, Unavailable};
use crate::connector::{BoxFuture, DeliverWhole, DeliveryError, render_sender};
use crate::model::{Attachment, Delivery, DeliveryAck, EventBody, TextStyle, now_ms};
use crate::richtext::FormattedText;

/// The outbox's handle on a Mattermost network.
#[derive(Clone)]
pub struct MattermostHandle {
    shared: Arc<Shared>,
}

/// A failed call as a delivery's outcome: rate limits, server errors, an expired session and
/// no answer are retried; other refusals are permanent.
fn delivery_error(error: &ApiError) -> DeliveryError {
    match error {
        ApiError::RateLimited { after } => DeliveryError::Retry {
            after: Some(*after),
            reason: error.to_string(),
        },
        ApiError::Status { status, .. } if *status >= 500 || *status == 401 => {
            DeliveryError::Retry {
                after: None,
                reason: error.to_string(),
            }
        }
        ApiError::Status { .. } => DeliveryError::Permanent(error.to_string()),
        ApiError::Transport(_) | ApiError::Decode(_) => DeliveryError::Retry {
            after: None,
            reason: error.to_string(),
        },
    }
}

/// A failed create as a delivery's outcome ([`delivery_error`], with two more retries).
fn create_error(error: &ApiError) -> DeliveryError {
    match error {
        // The same pending_post_id is still being created by an earlier attempt.
        ApiError::Status { id, .. } if id == "api.post.deduplicate_create_post.pending" => {
            DeliveryError::Retry {
                after: Some(Duration::from_secs(1)),
                reason: error.to_string(),
            }
        }
        // Not (or no longer) allowed to post there, e.g. removed from the channel: the
        // connection rejoins; keep the message until then.
        ApiError::Status { status: 403, .. } => DeliveryError::Retry {
            after: Some(Duration::from_secs(10)),
            reason: error.to_string(),
        },
        _ => delivery_error(error),
    }
}

impl DeliverWhole for MattermostHandle {
    fn deliver_whole<'a>(
        &'a self,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<DeliveryAck, DeliveryError>> {
        Box::pin(self.deliver(delivery))
    }
}

impl MattermostHandle {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Send one delivery over REST; acknowledged when the server answered.
    pub async fn deliver(&self, delivery: &Delivery) -> Result<DeliveryAck, DeliveryError> {
        let shared = &self.shared;
        let (Some(me), Some(channel_id)) = (
            shared.me(),
            shared.channel_id(&delivery.destination.channel),
        ) else {
            return Err(DeliveryError::Retry {
                after: Some(Duration::from_secs(1)),
                reason: "not connected to Mattermost yet".into(),
            });
        };
        // The person's own account (remote_users), for what a person does; the bridge's
        // account for membership notices and whenever the feature is off or refused.
        let as_user = match &delivery.body {
            EventBody::Membership(_) => None,
            _ => match shared
                .remote
                .ensure(
                    &shared.api,
                    &shared.context.files,
                    &delivery.origin.network,
                    &delivery.author.id,
                    &delivery.author.display_name,
                    &channel_id,
                )
                .await
            {
                Ok(user) => Some(user),
                Err(Unavailable::Fallback) => None,
                Err(Unavailable::Retry(error)) => return Err(delivery_error(&error)),
            },
        };
        let result = self
            .deliver_as(delivery, &me, &channel_id, as_user.as_ref())
            .await;
        // A remote user's token refused (401), or the user no longer in the channel (403): what
        // the bridge remembers of it is checked again on the retry.
        if let (Some(user), Err(DeliveryError::Retry { reason, .. })) = (&as_user, &result) {
            if reason.starts_with("HTTP 401") {
                shared.remote.token_refused(&user.user_id);
            } else if reason.starts_with("HTTP 403") {
                shared.remote.membership_refused(&user.user_id, &channel_id);
            }
        }
        result
    }

    /// [`MattermostHandle::deliver`] once the account to act with is known (`as_user`: the
    /// person's remote user, else the bridge's account).
    async fn deliver_as(
        &self,
        delivery: &Delivery,
        me: &str,
        channel_id: &str,
        as_user: Option<&RemoteUser>,
    ) -> Result<DeliveryAck, DeliveryError> {
        let shared = &self.shared;
        let token = as_user.map(|user| user.token.as_str());
        match &delivery.body {
            EventBody::Text {
                style,
                text,
                attachments,
                ..
            } => {
                let root_id = match convert::thread_anchor(delivery) {
                    Some(id) => self.thread_root(&id).await?,
                    None => None,
                };
                let (file_ids, not_copied) =
                    self.upload_files(token, channel_id, attachments).await?;
                let text = crate::connector::with_file_lines(text, not_copied, |_| None);
                let content = self.render(delivery, *style, &text, as_user.is_some());
                let post = self
                    .create_post(token, delivery, channel_id, content, root_id, &file_ids)
                    .await?;
                Ok(DeliveryAck {
                    remote_id: Some(post.id),
                })
            }
            EventBody::Edit { style, text, .. } => {
                let Some(post_id) = delivery.target.as_ref().and_then(|t| t.remote_id.clone())
                else {
                    tracing::debug!(network = %shared.network, "Edit of a message never delivered here; skipped.");
                    return Ok(DeliveryAck::default());
                };
                let path = format!("/posts/{post_id}/patch");
                let as_author = self.render(delivery, *style, text, as_user.is_some());
                let body = convert::patch_body(&as_author.message);
                match shared
                    .api
                    .call_as::<Value>(token, Method::PUT, &path, Some(&body))
                    .await
                {
                    // A post the bridge's account made (before `remote_users`, or as a
                    // fallback): edited by that account, the sender shown as it was.
                    Err(ApiError::Status { status: 403, .. }) if token.is_some() => {
                        let content = self.render(delivery, *style, text, false);
                        shared
                            .api
                            .call::<Value>(
                                Method::PUT,
                                &path,
                                Some(&convert::patch_body(&content.message)),
                            )
                            .await
                            .map_err(|e| delivery_error(&e))?;
                    }
                    Err(error) => return Err(delivery_error(&error)),
                    Ok(_) => {}
                }
                Ok(DeliveryAck::default())
            }
            EventBody::Delete { .. } => {
                let Some(post_id) = delivery.target.as_ref().and_then(|t| t.remote_id.clone())
                else {
                    return Ok(DeliveryAck::default());
                };
                match self
                    .as_author_or_bridge(token, Method::DELETE, &format!("/posts/{post_id}"), None)
                    .await
                {
                    // Already gone (deleted here too, or with its thread root).
                    Ok(_) => Ok(DeliveryAck::default()),
                    Err(error) if error.status() == Some(404) => Ok(DeliveryAck::default()),
                    Err(error) => Err(delivery_error(&error)),
                }
            }
            EventBody::Reaction { key, removed, .. } => {
                let Some(post_id) = delivery.target.as_ref().and_then(|t| t.remote_id.clone())
                else {
                    return Ok(DeliveryAck::default());
                };
                let Some(name) = emoji::to_name(key) else {
                    let count = shared.dropped_reactions.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(network = %shared.network, key = %key, dropped_so_far = count, "Reaction has no Mattermost emoji; not relayed.");
                    return Ok(DeliveryAck::default());
                };
                let reactor = as_user.as_ref().map_or(me, |user| user.user_id.as_str());
                let result = if *removed {
                    shared
                        .api
                        .call_as::<Value>(
                            token,
                            Method::DELETE,
                            &format!("/users/{reactor}/posts/{post_id}/reactions/{name}"),
                            None,
                        )
                        .await
                } else {
                    shared
                        .api
                        .call_as::<Value>(
                            token,
                            Method::POST,
                            "/reactions",
                            Some(&convert::reaction_body(reactor, &post_id, &name)),
                        )
                        .await
                };
                match result {
                    Ok(_) => Ok(DeliveryAck::default()),
                    Err(error) if *removed && error.status() == Some(404) => {
                        Ok(DeliveryAck::default())
                    }
                    Err(error) => Err(delivery_error(&error)),
                }
            }
            EventBody::Membership(change) => {
                let content = convert::membership_content(delivery, change);
                let post = self
                    .create_post(None, delivery, channel_id, content, None, &[])
                    .await?;
                Ok(DeliveryAck {
                    remote_id: Some(post.id),
                })
            }
        }
    }

    /// A change to a post as its author's remote user (`token`), or as the bridge's account
    /// when there is none or the post is not theirs (made by the bridge before `remote_users`
    /// was on: a 403 for the remote user, which an admin's account may still do).
    async fn as_author_or_bridge(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let api = &self.shared.api;
        match api
            .call_as::<Value>(token, method.clone(), path, body)
            .await
        {
            Err(ApiError::Status { status: 403, .. }) if token.is_some() => {
                api.call::<Value>(method, path, body).await
            }
            other => other,
        }
    }

    /// The post type, message and props for a text: the sender as an override where the
    /// server allows it, else prefixed by `remote_nick_format`.
    fn render(
        &self,
        delivery: &Delivery,
        style: TextStyle,
        text: &FormattedText,
        as_author: bool,
    ) -> PostContent {
        let context = &self.shared.context;
        let settings = context.gateway(&delivery.gateway);
        let sender = if as_author {
            // Posted by the person's own account: the author is shown by the server.
            SenderShown::Prefix(String::new())
        } else if self.shared.config.sender_override {
            SenderShown::Override {
                icon_url: context
                    .files
                    .avatar_link(&delivery.origin.network, &delivery.author.id),
            }
        } else {
            SenderShown::Prefix(render_sender(
                settings.nick_format(&context.remote_nick_format),
                delivery,
                str::to_owned,
            ))
        };
        let mut text = text.clone();
        let remote = &self.shared.remote;
        super::mentions::outbound_text_with(
            &mut text,
            context.router.people(),
            &self.shared.network,
            &|origin, author| remote.username_of(origin, author),
        );
        convert::post_content(delivery, style, &text, &settings, now_ms(), sender)
    }

    /// Upload a message's stored files to the channel: the new file ids, and the files that
    /// stay announced by name (not copied by the bridge, or refused by the server as too large
    /// or not allowed).
    async fn upload_files<'a>(
        &self,
        token: Option<&str>,
        channel_id: &str,
        attachments: &'a [Attachment],
    ) -> Result<(Vec<String>, Vec<&'a Attachment>), DeliveryError> {
        let shared = &self.shared;
        let mut file_ids = Vec::new();
        let mut not_copied = Vec::new();
        for attachment in attachments {
            // The server attaches at most 10 files to one post.
            let Some(hash) = attachment.stored.as_deref().filter(|_| file_ids.len() < 10) else {
                not_copied.push(attachment);
                continue;
            };
            let Some(content) = shared.context.files.read(hash).await else {
                tracing::warn!(network = %shared.network, file = %attachment.name, "A stored file is gone (past file_retention_days?); it is announced by name.");
                not_copied.push(attachment);
                continue;
            };
            match shared
                .api
                .upload(
                    token,
                    channel_id,
                    &attachment.name,
                    &attachment.mime,
                    &content,
                )
                .await
            {
                Ok(id) => file_ids.push(id),
                // 413 too large, 403 attachments disabled, 400 image too large: say it in text.
                Err(ApiError::Status { status, id, .. }) if matches!(status, 400 | 403 | 413) => {
                    tracing::info!(network = %shared.network, file = %attachment.name, status, reason = %id, "Mattermost refused a file; it is announced by name.");
                    not_copied.push(attachment);
                }
                Err(error) => return Err(delivery_error(&error)),
            }
        }
        Ok((file_ids, not_copied))
    }

    /// The thread root to reply under: the post itself, or its root when it is a reply.
    async fn thread_root(&self, post_id: &str) -> Result<Option<String>, DeliveryError> {
        match self
            .shared
            .api
            .call::<Post>(Method::GET, &format!("/posts/{post_id}"), None)
            .await
        {
            Ok(post) => Ok(Some(convert::thread_root_of(post))),
            // Deleted or not visible: say it without a thread rather than not at all.
            Err(error @ ApiError::Status { status, .. }) if status < 500 && status != 429 => {
                tracing::debug!(network = %self.shared.network, error = %error, "Reply target is gone; posting outside the thread.");
                Ok(None)
            }
            Err(error) => Err(delivery_error(&error)),
        }
    }

    async fn create_post(
        &self,
        token: Option<&str>,
        delivery: &Delivery,
        channel_id: &str,
        content: PostContent,
        root_id: Option<String>,
        file_ids: &[String],
    ) -> Result<Post, DeliveryError> {
        let shared = &self.shared;
        let body = convert::create_body(channel_id, &content, root_id, &delivery.id, file_ids);
        shared
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(delivery.id.clone());
        let result = shared
            .api
            .call_as::<Post>(token, Method::POST, "/posts", Some(&body))
            .await;
        shared
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&delivery.id);
        result.map_err(|error| create_error(&error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, id: &str) -> ApiError {
        ApiError::Status {
            status,
            id: id.into(),
            message: String::new(),
        }
    }

    /// A retry after `after`, or (`None`) a permanent refusal, as the test expects it.
    fn outcome(error: &DeliveryError) -> Result<Option<Duration>, String> {
        match error {
            DeliveryError::Retry { after, .. } => Ok(*after),
            DeliveryError::Permanent(reason) => Err(reason.clone()),
        }
    }

    #[test]
    fn failed_calls_are_retried_unless_refused() {
        let limited = ApiError::RateLimited {
            after: Duration::from_secs(3),
        };
        assert_eq!(
            outcome(&delivery_error(&limited)),
            Ok(Some(Duration::from_secs(3)))
        );
        assert_eq!(outcome(&delivery_error(&status(502, ""))), Ok(None));
        assert_eq!(outcome(&delivery_error(&status(401, ""))), Ok(None));
        assert_eq!(
            outcome(&delivery_error(&ApiError::Transport("reset".into()))),
            Ok(None)
        );
        assert!(outcome(&delivery_error(&status(400, ""))).is_err());
        assert!(outcome(&delivery_error(&status(403, ""))).is_err());
    }

    #[test]
    fn creates_wait_for_a_pending_twin_and_for_a_rejoin() {
        let pending = status(400, "api.post.deduplicate_create_post.pending");
        assert_eq!(
            outcome(&create_error(&pending)),
            Ok(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            outcome(&create_error(&status(403, ""))),
            Ok(Some(Duration::from_secs(10)))
        );
        assert!(outcome(&create_error(&status(400, ""))).is_err());
    }
}
