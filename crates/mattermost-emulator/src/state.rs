//! The in-memory server state: every record, the sessions, the dedupe table, the WebSocket hub,
//! the permission rules, and publishing events to the right connections.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::Config;
use crate::error::ApiError;
use crate::hub::{Broadcast, Hub};
use crate::ids::{Clock, new_id};
use crate::model::IncomingHook;
use crate::model::{
    AccessToken, Channel, ChannelMember, FileInfo, Post, Reaction, Session, Team, User,
};
use crate::ratelimit::RateLimiter;

/// Server version reported in `X-Version-Id`, `hello` and the client config.
pub const VERSION: &str = "9.11.0";
/// Build number part of `X-Version-Id`.
pub const BUILD: &str = "12345";

/// The `X-Version-Id` value: `<version>.<build>.<config hash>.<licensed>`.
pub fn version_id() -> String {
    format!("{VERSION}.{BUILD}.4f1c0e9a7b2d3c5e6f708192a3b4c5d6.false")
}

/// State shared by all handlers.
#[derive(Clone)]
pub struct App(pub Arc<Inner>);

/// The shared parts.
pub struct Inner {
    pub state: Mutex<State>,
    pub rate: Mutex<Option<RateLimiter>>,
}

impl App {
    /// A new server with one system admin.
    pub fn new(admin_user: &str, admin_password: &str, config: Config) -> Self {
        let mut state = State {
            config,
            clock: Clock::default(),
            seq: 0,
            users: HashMap::new(),
            sessions: HashMap::new(),
            tokens: HashMap::new(),
            teams: HashMap::new(),
            team_members: BTreeMap::new(),
            channels: HashMap::new(),
            members: HashMap::new(),
            posts: HashMap::new(),
            channel_posts: HashMap::new(),
            thread_posts: HashMap::new(),
            reactions: HashMap::new(),
            files: HashMap::new(),
            pending: HashMap::new(),
            pending_pruned_at: Instant::now(),
            hooks: HashMap::new(),
            hub: Hub::default(),
        };
        state.hub.version = version_id();
        let now = state.clock.now();
        let mut admin = User::new(
            new_id(),
            &admin_user.to_lowercase(),
            &format!("{}@localhost", admin_user.to_lowercase()),
            admin_password,
            now,
        );
        admin.roles = "system_admin system_user".to_owned();
        state.users.insert(admin.id.clone(), admin);
        Self(Arc::new(Inner {
            state: Mutex::new(state),
            rate: Mutex::new(None),
        }))
    }

    /// Lock the state (a poisoned lock is taken over: the state is plain data).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.0
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A `pending_post_id` dedupe entry.
#[derive(Clone)]
pub enum Pending {
    /// The first request is still being handled.
    InFlight(Instant),
    /// Created this post.
    Done(String, Instant),
}

impl Pending {
    /// How long ago the entry was made.
    fn since(&self, now: Instant) -> Duration {
        match self {
            Pending::InFlight(t) | Pending::Done(_, t) => now.duration_since(*t),
        }
    }
}

/// How long a `pending_post_id` is remembered.
pub const PENDING_TTL: Duration = Duration::from_secs(30);
/// How often, at most, expired `pending_post_id`s are dropped.
const PENDING_PRUNE_INTERVAL: Duration = Duration::from_secs(1);

/// Everything the server knows.
pub struct State {
    pub config: Config,
    pub clock: Clock,
    pub seq: u64,
    pub users: HashMap<String, User>,
    pub sessions: HashMap<String, Session>,
    pub tokens: HashMap<String, AccessToken>,
    pub teams: HashMap<String, Team>,
    /// (team id, user id) → is team admin.
    pub team_members: BTreeMap<(String, String), bool>,
    pub channels: HashMap<String, Channel>,
    /// channel id → user id → member.
    pub members: HashMap<String, BTreeMap<String, ChannelMember>>,
    pub posts: HashMap<String, Post>,
    /// channel id → post ids (history rows included) in insertion order.
    pub channel_posts: HashMap<String, Vec<String>>,
    /// root post id → ids of the posts with that root (history rows included) in insertion
    /// order: the server keeps a thread's counts on its row, so reading them does not walk
    /// the channel.
    pub thread_posts: HashMap<String, Vec<String>>,
    /// post id → reactions in insertion order.
    pub reactions: HashMap<String, Vec<Reaction>>,
    pub files: HashMap<String, FileInfo>,
    pub pending: HashMap<String, Pending>,
    /// When `pending` was last cleared of expired entries (see [`State::pending_entry`]).
    pub pending_pruned_at: Instant,
    pub hooks: HashMap<String, IncomingHook>,
    pub hub: Hub,
}

/// The caller of an authenticated request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub token: String,
    pub is_bot: bool,
    pub is_admin: bool,
    pub username: String,
}

impl State {
    /// Next timestamp.
    pub fn now(&mut self) -> i64 {
        self.clock.now()
    }

    /// Resolve a token to its caller.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let session = self.sessions.get(token)?;
        let user = self.users.get(&session.user_id)?;
        if user.delete_at > 0 {
            return None;
        }
        if !session.token_id.is_empty() {
            let tok = self.tokens.get(&session.token_id)?;
            if !tok.is_active || (!user.is_bot && !self.config.enable_user_access_tokens) {
                return None;
            }
        }
        Some(Caller {
            user_id: user.id.clone(),
            token: token.to_owned(),
            is_bot: user.is_bot,
            is_admin: user.is_admin(),
            username: user.username.clone(),
        })
    }

    /// User by id, username or email (lowercased).
    pub fn find_user_login(&self, login: &str) -> Option<&User> {
        let l = login.to_lowercase();
        self.users
            .values()
            .find(|u| u.username == l || u.email.to_lowercase() == l || u.id == login)
    }

    /// User by username.
    pub fn user_by_name(&self, name: &str) -> Option<&User> {
        let l = name.to_lowercase();
        self.users.values().find(|u| u.username == l)
    }

    /// Username of a user id (empty if unknown).
    pub fn username(&self, id: &str) -> String {
        self.users
            .get(id)
            .map(|u| u.username.clone())
            .unwrap_or_default()
    }

    /// Whether `user` is in `team`.
    pub fn in_team(&self, team: &str, user: &str) -> bool {
        self.team_members
            .contains_key(&(team.to_owned(), user.to_owned()))
    }

    /// Team admin (or system admin).
    pub fn is_team_admin(&self, team: &str, c: &Caller) -> bool {
        c.is_admin
            || self
                .team_members
                .get(&(team.to_owned(), c.user_id.clone()))
                .copied()
                .unwrap_or(false)
    }

    /// Whether `user` is in `channel`.
    pub fn in_channel(&self, channel: &str, user: &str) -> bool {
        self.members
            .get(channel)
            .is_some_and(|m| m.contains_key(user))
    }

    /// `read_channel`: admin, member, or a team member for a public channel. Unknown → false.
    pub fn can_read_channel(&self, channel_id: &str, c: &Caller) -> bool {
        let Some(ch) = self.channels.get(channel_id) else {
            return false;
        };
        c.is_admin
            || self.in_channel(channel_id, &c.user_id)
            || (ch.type_ == "O" && self.in_team(&ch.team_id, &c.user_id))
    }

    /// `create_post`: admin or member. Unknown → false.
    pub fn can_post(&self, channel_id: &str, c: &Caller) -> bool {
        self.channels.contains_key(channel_id)
            && (c.is_admin || self.in_channel(channel_id, &c.user_id))
    }

    /// Channel members' user ids.
    pub fn member_ids(&self, channel_id: &str) -> HashSet<String> {
        self.members
            .get(channel_id)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Publish an event to whoever `broadcast` names.
    pub fn publish(&mut self, event: &str, data: Value, broadcast: Broadcast) {
        self.publish_with(event, &data, &broadcast, None);
    }

    /// Publish with per-recipient data.
    pub fn publish_with(
        &mut self,
        event: &str,
        data: &Value,
        broadcast: &Broadcast,
        data_for: Option<&dyn Fn(&str) -> Value>,
    ) {
        let mut recipients: HashSet<String> = if !broadcast.user_id.is_empty() {
            HashSet::from([broadcast.user_id.clone()])
        } else if !broadcast.channel_id.is_empty() {
            self.member_ids(&broadcast.channel_id)
        } else if !broadcast.team_id.is_empty() {
            self.team_members
                .keys()
                .filter(|(t, _)| *t == broadcast.team_id)
                .map(|(_, u)| u.clone())
                .collect()
        } else {
            self.users.keys().cloned().collect()
        };
        for u in &broadcast.omit_users {
            recipients.remove(u);
        }
        self.hub.send(event, data, broadcast, &recipients, data_for);
    }

    /// Number of replies in the thread of `root_id` (not deleted, not history).
    /// The live replies of the thread `root_id` (no edit-history rows), oldest first.
    pub fn live_replies(&self, root_id: &str) -> impl Iterator<Item = &Post> {
        self.thread_posts
            .get(root_id)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(|id| &self.posts[id])
            .filter(|p| p.delete_at == 0 && p.original_id.is_empty())
    }

    fn thread_stats(&self, root_id: &str) -> (i64, i64) {
        self.live_replies(root_id).fold((0, 0), |(count, last), p| {
            (count + 1, last.max(p.create_at))
        })
    }

    /// A post's JSON as `PreparePostForClient` renders it. Deleted posts are blanked.
    pub fn post_json(&self, p: &Post, pending_post_id: &str) -> Value {
        let root = if p.root_id.is_empty() {
            &p.id
        } else {
            &p.root_id
        };
        let (reply_count, last_reply_at) = if p.original_id.is_empty() {
            self.thread_stats(root)
        } else {
            (0, 0)
        };
        // `PreparePostForClient` blanks every row with `delete_at > 0`, edit-history rows included.
        let deleted = p.delete_at > 0;
        let mut metadata = Map::new();
        if !deleted {
            let files: Vec<Value> = p
                .file_ids
                .iter()
                .filter_map(|f| self.files.get(f))
                .map(FileInfo::to_json)
                .collect();
            if !files.is_empty() {
                metadata.insert("files".into(), Value::Array(files));
            }
            if let Some(rs) = self.reactions.get(&p.id)
                && !rs.is_empty()
            {
                metadata.insert(
                    "reactions".into(),
                    Value::Array(rs.iter().map(Reaction::to_json).collect()),
                );
            }
        }
        let mut v = json!({
            "id": p.id, "create_at": p.create_at, "update_at": p.update_at, "edit_at": p.edit_at,
            "delete_at": p.delete_at, "is_pinned": p.is_pinned, "user_id": p.user_id,
            "channel_id": p.channel_id, "root_id": p.root_id, "original_id": p.original_id,
            "message": if deleted { "" } else { p.message.as_str() }, "type": p.type_,
            "props": p.props, "hashtags": p.hashtags, "pending_post_id": pending_post_id,
            "reply_count": reply_count, "last_reply_at": if p.root_id.is_empty() { last_reply_at } else { 0 },
            "participants": null, "metadata": metadata,
        });
        if !deleted && !p.file_ids.is_empty() {
            v["file_ids"] = json!(p.file_ids);
        }
        if p.has_reactions {
            v["has_reactions"] = json!(true);
        }
        v
    }

    /// The live `pending_post_id` entry for `pending`, if one is younger than [`PENDING_TTL`].
    /// Expired entries are dropped at most once a second, not on every post: the server keeps
    /// them in an expiring cache, and a walk over a busy minute's worth per post would make
    /// every post slower the more have been made.
    pub fn pending_entry(&mut self, pending: &str, now: Instant) -> Option<Pending> {
        if now.duration_since(self.pending_pruned_at) >= PENDING_PRUNE_INTERVAL {
            self.pending_pruned_at = now;
            self.pending.retain(|_, p| p.since(now) < PENDING_TTL);
        }
        self.pending
            .get(pending)
            .filter(|p| p.since(now) < PENDING_TTL)
            .cloned()
    }

    /// Store a new post row and bump channel counters (no events).
    pub fn insert_post(&mut self, mut p: Post) -> String {
        self.seq += 1;
        p.seq = self.seq;
        let id = p.id.clone();
        if p.original_id.is_empty()
            && let Some(ch) = self.channels.get_mut(&p.channel_id)
        {
            ch.last_post_at = ch.last_post_at.max(p.create_at);
            ch.total_msg_count += 1;
            if p.root_id.is_empty() {
                ch.last_root_post_at = ch.last_root_post_at.max(p.create_at);
                ch.total_msg_count_root += 1;
            }
        }
        self.channel_posts
            .entry(p.channel_id.clone())
            .or_default()
            .push(id.clone());
        if !p.root_id.is_empty() {
            self.thread_posts
                .entry(p.root_id.clone())
                .or_default()
                .push(id.clone());
        }
        self.posts.insert(id.clone(), p);
        id
    }

    /// Data of a `posted` event (without the per-recipient `mentions`).
    pub fn posted_data(&self, post_id: &str, pending_post_id: &str, set_online: bool) -> Value {
        let p = &self.posts[post_id];
        let ch = &self.channels[&p.channel_id];
        let sender = self.username(&p.user_id);
        let from_webhook = p.props.get("from_webhook").and_then(Value::as_str) == Some("true");
        let sender_name = if p.is_system() {
            "System".to_owned()
        } else if self.config.enable_post_username_override
            && from_webhook
            && ch.type_ != "D"
            && let Some(o) = p.props.get("override_username").and_then(Value::as_str)
        {
            o.to_owned()
        } else {
            format!("@{sender}")
        };
        let display = match ch.type_.as_str() {
            "D" => format!("@{sender}"),
            "G" => {
                let mut names: Vec<String> = self
                    .member_ids(&ch.id)
                    .iter()
                    .map(|u| self.username(u))
                    .collect();
                names.sort();
                names.join(", ")
            }
            _ => ch.display_name.clone(),
        };
        let mut data = json!({
            "post": self.post_json(p, pending_post_id).to_string(),
            "channel_display_name": display,
            "channel_name": ch.name,
            "channel_type": ch.type_,
            "sender_name": sender_name,
            "team_id": ch.team_id,
            "set_online": set_online,
        });
        let files: Vec<&FileInfo> = p
            .file_ids
            .iter()
            .filter_map(|f| self.files.get(f))
            .collect();
        if files.iter().any(|f| f.is_image()) {
            data["image"] = json!("true");
        }
        if files.iter().any(|f| !f.is_image()) {
            data["otherFile"] = json!("true");
        }
        data
    }

    /// Publish `posted` for a stored post, with `mentions` specialised per recipient.
    pub fn publish_posted(&mut self, post_id: &str, pending_post_id: &str, set_online: bool) {
        let data = self.posted_data(post_id, pending_post_id, set_online);
        let p = &self.posts[post_id];
        let channel_id = p.channel_id.clone();
        let mut mentioned: HashSet<String> = HashSet::new();
        if !p.is_system() {
            let words: HashSet<String> = p
                .message
                .split(|c: char| {
                    !(c.is_alphanumeric() || c == '@' || c == '.' || c == '-' || c == '_')
                })
                .filter_map(|w| w.strip_prefix('@'))
                .map(|w| w.trim_end_matches('.').to_lowercase())
                .collect();
            let all = words.contains("all") || words.contains("channel") || words.contains("here");
            for uid in self.member_ids(&channel_id) {
                if uid != p.user_id && (all || words.contains(&self.username(&uid))) {
                    mentioned.insert(uid);
                }
            }
            if self.channels[&channel_id].type_ == "D" {
                for uid in self.member_ids(&channel_id) {
                    if uid != p.user_id {
                        mentioned.insert(uid);
                    }
                }
            }
        }
        let base = data.clone();
        let f = move |uid: &str| {
            let mut d = base.clone();
            if mentioned.contains(uid) {
                d["mentions"] = json!(json!([uid]).to_string());
            }
            d
        };
        self.publish_with("posted", &data, &Broadcast::channel(&channel_id), Some(&f));
    }

    /// Create and publish a `system_*` post.
    pub fn system_post(
        &mut self,
        channel_id: &str,
        user_id: &str,
        type_: &str,
        message: String,
        props: Value,
    ) {
        let now = self.now();
        let post = Post {
            id: new_id(),
            create_at: now,
            update_at: now,
            edit_at: 0,
            delete_at: 0,
            is_pinned: false,
            user_id: user_id.to_owned(),
            channel_id: channel_id.to_owned(),
            root_id: String::new(),
            original_id: String::new(),
            message,
            type_: type_.to_owned(),
            props: props.as_object().cloned().unwrap_or_default(),
            hashtags: String::new(),
            file_ids: Vec::new(),
            has_reactions: false,
            seq: 0,
        };
        let id = self.insert_post(post);
        self.publish_posted(&id, "", true);
    }

    /// Add a user to a channel (no-op if already there); system post + `user_added`.
    /// Returns whether they were added.
    pub fn add_channel_member(
        &mut self,
        channel_id: &str,
        user_id: &str,
        actor: &str,
        post: bool,
    ) -> bool {
        if self.in_channel(channel_id, user_id) {
            return false;
        }
        let now = self.now();
        self.members
            .entry(channel_id.to_owned())
            .or_default()
            .insert(
                user_id.to_owned(),
                ChannelMember {
                    channel_id: channel_id.to_owned(),
                    user_id: user_id.to_owned(),
                    admin: false,
                    last_viewed_at: 0,
                    msg_count: 0,
                    last_update_at: now,
                },
            );
        let team_id = self.channels[channel_id].team_id.clone();
        self.publish(
            "user_added",
            json!({"user_id": user_id, "team_id": team_id}),
            Broadcast::channel(channel_id),
        );
        if post {
            let username = self.username(user_id);
            if actor == user_id {
                self.system_post(
                    channel_id,
                    user_id,
                    "system_join_channel",
                    format!("{username} joined the channel."),
                    json!({"username": username}),
                );
            } else {
                let actor_name = self.username(actor);
                self.system_post(
                    channel_id,
                    actor,
                    "system_add_to_channel",
                    format!("{username} added to the channel by {actor_name}."),
                    json!({"userId": actor, "username": actor_name, "addedUserId": user_id, "addedUsername": username}),
                );
            }
        }
        true
    }

    /// A new channel record.
    pub fn new_channel(
        &mut self,
        team_id: &str,
        type_: &str,
        name: &str,
        display_name: &str,
        creator: &str,
    ) -> Channel {
        let now = self.now();
        Channel {
            id: new_id(),
            create_at: now,
            update_at: now,
            delete_at: 0,
            team_id: team_id.to_owned(),
            type_: type_.to_owned(),
            display_name: display_name.to_owned(),
            name: name.to_owned(),
            header: String::new(),
            purpose: String::new(),
            last_post_at: 0,
            last_root_post_at: 0,
            total_msg_count: 0,
            total_msg_count_root: 0,
            creator_id: creator.to_owned(),
        }
    }

    /// Look up a channel the caller may read: 403 when unknown or unreadable.
    pub fn readable_channel(&self, channel_id: &str, c: &Caller) -> Result<&Channel, ApiError> {
        if !self.can_read_channel(channel_id, c) {
            if c.is_admin {
                return Err(ApiError::not_found(
                    "app.channel.get.existing.app_error",
                    "Unable to find the existing channel.",
                ));
            }
            return Err(ApiError::forbidden());
        }
        Ok(&self.channels[channel_id])
    }

    /// Register an authenticated socket with the hub; a user coming online gets a
    /// `status_change` on their own connections right after `hello`.
    pub fn attach_socket(
        &mut self,
        user_id: &str,
        resume: Option<(String, i64)>,
        tx: tokio::sync::mpsc::UnboundedSender<crate::hub::Out>,
    ) -> crate::hub::Attached {
        let was_online = self.hub.online_users().contains(user_id);
        let attached = self.hub.attach(user_id, resume, tx);
        if !attached.resumed && !was_online {
            self.publish(
                "status_change",
                json!({"status": "online", "user_id": user_id}),
                Broadcast::user(user_id),
            );
        }
        attached
    }

    /// Statuses by user id: `online` with a live socket, else `offline`.
    pub fn statuses(&self, ids: Option<&[String]>) -> Value {
        let online = self.hub.online_users();
        let mut m = Map::new();
        let all: Vec<String> = match ids {
            Some(ids) => ids.to_vec(),
            None => self.users.keys().cloned().collect(),
        };
        for id in all {
            let s = if online.contains(&id) {
                "online"
            } else {
                "offline"
            };
            m.insert(id, json!(s));
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_post_id_is_forgotten_after_its_ttl_though_pruned_only_once_a_second() {
        let app = App::new("admin", "pw", Config::default());
        let mut st = app.lock();
        // Times from the future, so the test needs no clock that has run for 30 s.
        let old = Instant::now();
        let now = old + PENDING_TTL + Duration::from_secs(1);
        st.pending
            .insert("old".into(), Pending::Done("p1".into(), old));
        st.pending.insert("new".into(), Pending::InFlight(now));
        // Pruned just now: the expired entry is still stored, but no longer answered.
        st.pending_pruned_at = now;
        assert!(st.pending_entry("old", now).is_none());
        assert!(matches!(
            st.pending_entry("new", now),
            Some(Pending::InFlight(_))
        ));
        assert_eq!(st.pending.len(), 2);
        // An interval later the expired entry is dropped.
        let later = now + PENDING_PRUNE_INTERVAL;
        assert!(st.pending_entry("new", later).is_some());
        assert_eq!(st.pending.len(), 1);
    }
}
