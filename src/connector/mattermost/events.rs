//! Live events and their submission: posts (new, edited, deleted, membership changes),
//! reactions and the account's removal from a bridged channel, made into an `Inbound` by
//! [`super::convert`] with the author's name and picture and the post's files fetched as needed,
//! then submitted to the router; a catch-up hands its rows to the same functions.
//!
//! **Invariants:** the account's own posts and reactions, and the echoes of creates in flight,
//! are never submitted, nor anything from a channel that is not bridged; a failed submit marks
//! the store as failed (the cursor stays where it was); a deleted root post means a catch-up of
//! its channel, its replies having gone without an event each.

use std::sync::Arc;

use reqwest::Method;
use serde_json::Value;

use super::api::{self, Post, Reaction};
use super::convert::{self, Envelope};
use super::session::TaskState;
use crate::model::{Attachment, Author, ChannelRef, EventBody, Inbound};
use crate::richtext;

impl TaskState {
    pub(super) async fn on_event(
        &mut self,
        event: &str,
        envelope: &Envelope,
    ) -> Result<(), String> {
        match event {
            "posted" | "post_edited" | "post_deleted" => {
                let Some(post) = envelope.post() else {
                    tracing::debug!(network = %self.network(), event, "Event without a readable post; ignored.");
                    return Ok(());
                };
                if !self.channels.contains_key(&post.channel_id) {
                    return Ok(());
                }
                let sender = envelope.sender_name();
                match event {
                    "posted" => {
                        self.on_posted(&post, sender.as_deref()).await;
                    }
                    "post_edited" => {
                        self.on_edited(&post).await;
                    }
                    _ => {
                        self.on_deleted(&post).await;
                    }
                }
                self.advance(&post.channel_id, post.update_at).await;
                if event == "post_deleted" && post.root_id.is_empty() {
                    // Its replies went with it without an event each; the catch-up sees them.
                    self.catch_up(&post.channel_id)
                        .await
                        .map_err(|error| format!("catch-up failed: {error}"))?;
                }
            }
            "reaction_added" | "reaction_removed" => {
                let Some(reaction) = envelope.reaction() else {
                    return Ok(());
                };
                let channel_id = envelope.broadcast_channel_id();
                self.on_reaction(channel_id, &reaction, event == "reaction_removed")
                    .await;
            }
            "user_updated" => {
                if let Some(user) = envelope.updated_user()
                    && user.delete_at > 0
                {
                    self.shared
                        .remote
                        .deactivated(&self.shared.api, &user.id)
                        .await;
                }
            }
            "user_removed" => {
                let me = self.shared.me().unwrap_or_default();
                if envelope.removes(&me, |channel| self.channels.contains_key(channel)) {
                    return Err("removed from a bridged channel; rejoining".into());
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn username(&mut self, user_id: &str) -> String {
        if let Some(name) = self.users.get(user_id) {
            return name.clone();
        }
        match self
            .shared
            .api
            .fetch::<api::User>(Method::GET, &format!("/users/{user_id}"), None)
            .await
        {
            Ok(user) => {
                self.users.insert(user.id, user.username.clone());
                user.username
            }
            Err(error) => {
                tracing::debug!(network = %self.network(), error = %error, "Cannot look up a user; showing the id.");
                user_id.to_owned()
            }
        }
    }

    fn is_own(&self, user_id: &str, pending_post_id: &str) -> bool {
        self.shared.me().as_deref() == Some(user_id)
            || self.shared.is_in_flight(pending_post_id)
            || self.shared.remote.is_remote(user_id)
    }

    async fn author_of(&mut self, post: &Post, sender_name: Option<&str>) -> Author {
        let display_name = if let Some(name) = convert::webhook_name(post) {
            name.to_owned()
        } else if let Some(name) = sender_name.and_then(|s| s.strip_prefix('@')) {
            self.users.insert(post.user_id.clone(), name.to_owned());
            name.to_owned()
        } else {
            self.username(&post.user_id).await
        };
        if self.shared.context.files.serves_links() && self.avatars.insert(post.user_id.clone()) {
            self.store_avatar(&post.user_id).await;
        }
        Author {
            id: post.user_id.clone(),
            display_name,
        }
    }

    /// Keep a person's profile picture, for destinations that show the sender's picture.
    async fn store_avatar(&self, user_id: &str) {
        let picture = match self
            .shared
            .api
            .download_path(&format!("/users/{user_id}/image"))
            .await
        {
            Ok(picture) => picture,
            Err(error) => {
                tracing::debug!(network = %self.network(), user_id, error = %error, "No profile picture.");
                return;
            }
        };
        if let Err(error) = self
            .shared
            .context
            .files
            .put_avatar(self.network(), user_id, picture)
            .await
        {
            tracing::debug!(network = %self.network(), user_id, error = %error, "A profile picture was not kept.");
        }
    }

    async fn submit(&mut self, mut inbound: Inbound) -> bool {
        if let EventBody::Text { text, .. } | EventBody::Edit { text, .. } = &mut inbound.body {
            let remote = &self.shared.remote;
            super::mentions::inbound_with(
                text,
                self.shared.context.router.people(),
                self.network(),
                &|username| remote.person_of_username(username),
            );
        }
        match self.shared.context.router.submit(inbound).await {
            Ok(crate::store::CommitOutcome::Committed { message_id, .. }) => message_id > 0,
            Ok(_) => false,
            Err(error) => {
                // The cursor stays where it is; the session restarts and catches up from there.
                tracing::error!(network = %self.network(), error = %error, "Could not store an event; reconnecting to fetch it again.");
                self.store_failed = true;
                false
            }
        }
    }

    /// A new post. Returns whether something was committed.
    pub(super) async fn on_posted(&mut self, post: &Post, sender_name: Option<&str>) -> bool {
        if self.is_own(&post.user_id, &post.pending_post_id) {
            return false;
        }
        let Some(channel) = self.channels.get(&post.channel_id).cloned() else {
            return false;
        };
        let origin = ChannelRef::new(self.network(), channel);
        if let Some((name, change)) = convert::membership_change(self.network(), post) {
            if !self.shared.config.relay_membership {
                return false;
            }
            let name = match name {
                Some(name) => name,
                None => self.username(&post.user_id).await,
            };
            let permalink = self.permalink(&post.id);
            return self
                .submit(convert::membership_inbound(
                    origin, post, name, change, permalink,
                ))
                .await;
        }
        if post.kind.starts_with("system_") {
            return false;
        }
        let (style, text) = convert::post_text(self.network(), post);
        let attachments = self.fetch_files(post).await;
        if text.is_empty() && attachments.is_empty() {
            return false;
        }
        let author = self.author_of(post, sender_name).await;
        let permalink = self.permalink(&post.id);
        self.submit(convert::text_inbound(
            origin,
            post,
            author,
            permalink,
            (style, text),
            attachments,
        ))
        .await
    }

    /// The post's permalink (for "read the full text" links elsewhere).
    fn permalink(&self, post_id: &str) -> String {
        richtext::long_text::mattermost_permalink(
            self.shared.api.base(),
            &self.shared.config.team,
            post_id,
        )
    }

    /// A post's files, copied into the bridge's file store (within the size limit). A file
    /// that cannot be read is still announced by name, and the reason logged.
    async fn fetch_files(&self, post: &Post) -> Vec<Attachment> {
        let shared = &self.shared;
        let mut attachments = Vec::new();
        for file_id in &post.file_ids {
            let info = shared
                .api
                .fetch::<Value>(Method::GET, &format!("/files/{file_id}/info"), None)
                .await;
            let info = match info {
                Ok(info) => info,
                Err(error) => {
                    tracing::warn!(network = %shared.network, file_id = %file_id, error = %error, "Cannot read a Mattermost file's details; it is announced as a file.");
                    Value::Null
                }
            };
            let mut attachment = convert::attachment_from_info(&info);
            let files = Arc::clone(&shared.context.files);
            if info.is_null()
                || attachment
                    .size
                    .is_some_and(|size| !files.store.accepts(size))
            {
                attachments.push(attachment);
                continue;
            }
            match shared.api.download(file_id).await {
                Ok(content) => {
                    attachment.size = Some(content.len() as u64);
                    match files.put(content).await {
                        Ok(hash) => attachment.stored = Some(hash),
                        Err(error) => {
                            tracing::warn!(network = %shared.network, file_id = %file_id, error = %error, "A Mattermost file was not copied; it is announced by name.");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(network = %shared.network, file_id = %file_id, error = %error, "Cannot download a Mattermost file; it is announced by name.");
                }
            }
            attachments.push(attachment);
        }
        attachments
    }

    pub(super) async fn on_edited(&mut self, post: &Post) -> bool {
        if post.edit_at == 0 || post.delete_at > 0 || self.is_own(&post.user_id, "") {
            return false;
        }
        let Some(channel) = self.channels.get(&post.channel_id).cloned() else {
            return false;
        };
        let author = self.author_of(post, None).await;
        let origin = ChannelRef::new(self.network(), channel);
        let permalink = self.permalink(&post.id);
        self.submit(convert::edit_inbound(origin, post, author, permalink))
            .await
    }

    pub(super) async fn on_deleted(&mut self, post: &Post) -> bool {
        if self.is_own(&post.user_id, "") {
            return false;
        }
        let Some(channel) = self.channels.get(&post.channel_id).cloned() else {
            return false;
        };
        let author = self.author_of(post, None).await;
        let origin = ChannelRef::new(self.network(), channel);
        self.submit(convert::delete_inbound(origin, post, author))
            .await
    }

    pub(super) async fn on_reaction(
        &mut self,
        channel_id: &str,
        reaction: &Reaction,
        removed: bool,
    ) -> bool {
        if self.is_own(&reaction.user_id, "") {
            return false;
        }
        let Some(channel) = self.channels.get(channel_id).cloned() else {
            tracing::debug!(network = %self.network(), channel_id, "A reaction in a channel that is not bridged; ignored.");
            return false;
        };
        let display_name = self.username(&reaction.user_id).await;
        let origin = ChannelRef::new(self.network(), channel);
        self.submit(convert::reaction_inbound(
            origin,
            reaction,
            display_name,
            removed,
        ))
        .await
    }
}
