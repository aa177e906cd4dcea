//! Catch-up over REST and the per-channel cursors: a channel's changes since its cursor
//! (`since`, paging back for new posts when the answer reaches its cap), relayed as new posts in
//! order, then edits and deletes of older ones, then reactions added meanwhile; and the cursors
//! themselves, kept in `context.store`.
//!
//! **Invariants:** a cursor moves forward only, and only past what the router has committed; it
//! is written at most once per [`CURSOR_STORE_INTERVAL`] per channel (the rest when that interval
//! ends, and when the session ends); after a store failure nothing more is stored, so the next
//! session catches up from where the store is.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use tokio::time::Instant;

use super::api::{ApiError, Post, PostList, Reaction};
use super::convert::{self, Change};
use super::session::TaskState;

/// How often, at most, a channel's cursor is written to the store.
const CURSOR_STORE_INTERVAL: Duration = Duration::from_secs(1);
/// The most rows one `since` query returns; more means some may be missing.
const SINCE_LIMIT: usize = 1000;

impl TaskState {
    pub(super) async fn load_cursor(&self, channel: &str) -> Option<i64> {
        let store = Arc::clone(&self.shared.context.store);
        let (network, channel) = (self.network().to_owned(), channel.to_owned());
        tokio::task::spawn_blocking(move || store.cursor(&network, &channel))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .and_then(|value| value.parse().ok())
    }

    pub(super) async fn store_cursor(&self, channel: &str, value: i64) {
        let store = Arc::clone(&self.shared.context.store);
        let (network, channel) = (self.network().to_owned(), channel.to_owned());
        let result = tokio::task::spawn_blocking(move || {
            store.set_cursor(&network, &channel, &value.to_string())
        })
        .await;
        if !matches!(result, Ok(Ok(()))) {
            tracing::warn!(network = %self.network(), "Could not store the channel position; some messages may be fetched again after a restart.");
        }
    }

    /// Move a channel's cursor forward to `update_at` (never back), unless something before it
    /// could not be stored.
    pub(super) async fn advance(&mut self, channel_id: &str, update_at: i64) {
        if self.store_failed {
            return;
        }
        let Some(current) = self.cursors.get(channel_id).copied() else {
            return;
        };
        if update_at <= current {
            return;
        }
        self.cursors.insert(channel_id.to_owned(), update_at);
        let now = Instant::now();
        if self.cursor_due(channel_id).is_some_and(|due| due > now) {
            self.unstored.insert(channel_id.to_owned());
        } else {
            self.store_channel_cursor(channel_id, now).await;
        }
    }

    /// When a channel's cursor may be stored again (`None`: it never was, so now).
    fn cursor_due(&self, channel_id: &str) -> Option<Instant> {
        self.stored_at
            .get(channel_id)
            .map(|&at| at + CURSOR_STORE_INTERVAL)
    }

    /// When the first cursor not stored yet is due.
    pub(super) fn next_cursor_store(&self) -> Option<Instant> {
        self.unstored
            .iter()
            .map(|channel| self.cursor_due(channel).unwrap_or_else(Instant::now))
            .min()
    }

    /// Store the cursors that are due (or, with `all`, every one not stored yet).
    pub(super) async fn store_cursors(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<String> = self
            .unstored
            .iter()
            .filter(|channel| all || self.cursor_due(channel).is_none_or(|due| due <= now))
            .cloned()
            .collect();
        for channel_id in due {
            self.store_channel_cursor(&channel_id, now).await;
        }
    }

    pub(super) async fn store_channel_cursor(&mut self, channel_id: &str, now: Instant) {
        self.unstored.remove(channel_id);
        if self.store_failed {
            return;
        }
        let (Some(&value), Some(configured)) = (
            self.cursors.get(channel_id),
            self.channels.get(channel_id).cloned(),
        ) else {
            return;
        };
        self.stored_at.insert(channel_id.to_owned(), now);
        self.store_cursor(&configured, value).await;
    }

    pub(super) async fn catch_up_all(&mut self) -> Result<(), String> {
        let channel_ids: Vec<String> = self.channels.keys().cloned().collect();
        for channel_id in channel_ids {
            self.catch_up(&channel_id)
                .await
                .map_err(|error| format!("catch-up failed: {error}"))?;
        }
        Ok(())
    }

    /// Relay what changed in a channel since its cursor: new posts in order, then edits and
    /// deletes of older ones. Edit-history rows are skipped; whatever was already bridged comes
    /// back from the router as a duplicate.
    pub(super) async fn catch_up(&mut self, channel_id: &str) -> Result<(), ApiError> {
        let Some(cursor) = self.cursors.get(channel_id).copied() else {
            return Ok(());
        };
        let list: PostList = self
            .shared
            .api
            .fetch(
                Method::GET,
                &format!("/channels/{channel_id}/posts?since={cursor}"),
                None,
            )
            .await?;
        let mut list = list;
        if list.order.len() >= SINCE_LIMIT {
            // `since` answers the newest rows only: page back through the channel so that no
            // new post is missed (edits and deletions older than the cap are).
            tracing::warn!(network = %self.network(), channel = %channel_id, "More than {SINCE_LIMIT} changes since the last position; paging back for new posts.");
            let paged = self.new_posts_by_page(channel_id, cursor).await?;
            convert::merge_posts(&mut list, paged);
        }
        let rows = convert::rows(&list);
        let newest = convert::newest_update(&rows, cursor);
        let mut relayed = 0usize;
        for (_, change, post) in convert::catch_up_changes(&rows, cursor) {
            let committed = match change {
                Change::New => self.on_posted(post, None).await,
                Change::Edited => self.on_edited(post).await,
                Change::Deleted => self.on_deleted(post).await,
            };
            relayed += usize::from(committed);
        }
        // Reactions added meanwhile (taking one back leaves no row to find).
        for post_id in convert::reacted_since(&rows, cursor) {
            let reactions: Vec<Reaction> = self
                .shared
                .api
                .fetch(Method::GET, &format!("/posts/{post_id}/reactions"), None)
                .await?;
            for reaction in convert::new_reactions(reactions, cursor) {
                relayed += usize::from(self.on_reaction(channel_id, &reaction, false).await);
            }
        }
        if relayed > 0 {
            tracing::info!(network = %self.network(), channel = %channel_id, relayed, "Caught up.");
        }
        self.advance(channel_id, newest).await;
        Ok(())
    }

    /// Every post created after `cursor` and not deleted, by plain paging (newest first).
    async fn new_posts_by_page(
        &self,
        channel_id: &str,
        cursor: i64,
    ) -> Result<Vec<Post>, ApiError> {
        const PER_PAGE: usize = 200;
        let mut found = Vec::new();
        for page in 0.. {
            let list: PostList = self
                .shared
                .api
                .fetch(
                    Method::GET,
                    &format!("/channels/{channel_id}/posts?page={page}&per_page={PER_PAGE}"),
                    None,
                )
                .await?;
            let (new, older) = convert::created_after(&list, cursor);
            found.extend(new);
            if older || list.order.len() < PER_PAGE {
                break;
            }
        }
        Ok(found)
    }
}
