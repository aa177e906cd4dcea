//! Posts: create (permission before existence, `pending_post_id` dedupe, files, override props),
//! read, patch vs full update (with edit-history rows), delete (a root takes its replies, one
//! event), threads, and channel paging (`page`, `before`, `after`, and the `since` catch-up).

use std::collections::HashMap;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{check_id, paging};
use crate::error::{ApiError, ApiResult};
use crate::http::{Auth, json_response, parse_json, query_map, status_ok};
use crate::hub::Broadcast;
use crate::ids::new_id;
use crate::model::Post;
use crate::state::{App, Caller, Pending, State as St};

/// Most rows a `since` query returns.
const SINCE_LIMIT: usize = 1000;

fn root_id_error() -> ApiError {
    ApiError::bad_request(
        "api.post.create_post.root_id.app_error",
        "Invalid RootId parameter.",
    )
}

fn post_missing() -> ApiError {
    ApiError::not_found("app.post.get.app_error", "Unable to get the post.")
}

fn check_type(t: &str) -> Result<(), ApiError> {
    if t.starts_with("system_") {
        return Err(ApiError::invalid_param("post.type"));
    }
    if !(t.is_empty() || t == "me" || t == "slack_attachment" || t.starts_with("custom_")) {
        return Err(ApiError::bad_request(
            "model.post.is_valid.type.app_error",
            "Invalid type.",
        ));
    }
    Ok(())
}

fn check_message(st: &St, message: &str) -> Result<(), ApiError> {
    if message.chars().count() > st.config.max_post_size {
        return Err(ApiError::bad_request(
            "model.post.is_valid.msg.app_error",
            "Invalid Message.",
        ));
    }
    Ok(())
}

fn check_file_ids(ids: &[String]) -> Result<(), ApiError> {
    if json!(ids).to_string().chars().count() > 300 {
        return Err(ApiError::bad_request(
            "model.post.is_valid.file_ids.app_error",
            "Invalid file ids. Note that uploads are limited to 10 files maximum.",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct CreateReq {
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    root_id: String,
    #[serde(default)]
    file_ids: Vec<String>,
    #[serde(default)]
    props: Option<Map<String, Value>>,
    #[serde(default)]
    pending_post_id: String,
    #[serde(default, rename = "type")]
    type_: String,
    #[serde(default)]
    create_at: i64,
}

/// `POST /posts` → 201; `posted` is published before the response is written.
pub async fn create(
    State(app): State<App>,
    Auth(c): Auth,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let req: CreateReq = parse_json(&body, "post")?;
    let q = query_map(q.as_deref());
    let set_online_param = q.get("set_online").is_none_or(|v| v != "false");
    let (v, delay, pending, id) = match create_locked(&app, &c, req, set_online_param)? {
        Created::Repeat(v) => return Ok(json_response(StatusCode::CREATED, v)),
        Created::New {
            v,
            delay,
            pending,
            id,
        } => (v, delay, pending, id),
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    if !pending.is_empty() {
        app.lock()
            .pending
            .insert(pending, Pending::Done(id, Instant::now()));
    }
    Ok(json_response(StatusCode::CREATED, v))
}

enum Created {
    Repeat(Value),
    New {
        v: Value,
        delay: Option<std::time::Duration>,
        pending: String,
        id: String,
    },
}

fn create_locked(
    app: &App,
    c: &Caller,
    req: CreateReq,
    set_online_param: bool,
) -> Result<Created, ApiError> {
    let mut st = app.lock();
    if !st.can_post(&req.channel_id, c) {
        return Err(ApiError::forbidden());
    }
    if st.channels[&req.channel_id].delete_at > 0 {
        return Err(ApiError::bad_request(
            "api.post.create_post.can_not_post_to_deleted.error",
            "Can not post to deleted channel.",
        ));
    }
    check_type(&req.type_)?;
    if !req.root_id.is_empty() {
        let ok = st.posts.get(&req.root_id).is_some_and(|r| {
            r.root_id.is_empty()
                && r.original_id.is_empty()
                && r.delete_at == 0
                && r.channel_id == req.channel_id
        });
        if !ok {
            return Err(root_id_error());
        }
    }
    check_message(&st, &req.message)?;
    check_file_ids(&req.file_ids)?;
    let pending = req.pending_post_id.clone();
    if !pending.is_empty() {
        let now = Instant::now();
        match st.pending_entry(&pending, now) {
            Some(Pending::Done(id, _)) => {
                if let Some(p) = st.posts.get(&id) {
                    return Ok(Created::Repeat(st.post_json(p, &pending)));
                }
            }
            Some(Pending::InFlight(_)) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api.post.deduplicate_create_post.pending",
                    "Rejected post since another client is making the same request.",
                ));
            }
            None => {}
        }
        st.pending.insert(pending.clone(), Pending::InFlight(now));
    }
    let mut props = req.props.unwrap_or_default();
    props.remove("add_channel_member");
    if c.is_bot {
        props.insert("from_bot".into(), json!("true"));
    }
    let from_webhook = props.get("from_webhook").and_then(Value::as_str) == Some("true");
    let now = st.now();
    let create_at = if c.is_admin && req.create_at > 0 {
        req.create_at
    } else {
        now
    };
    let file_ids: Vec<String> = req
        .file_ids
        .iter()
        .filter(|f| {
            st.files.get(*f).is_some_and(|fi| {
                fi.user_id == c.user_id && fi.post_id.is_empty() && fi.channel_id == req.channel_id
            })
        })
        .cloned()
        .collect();
    let post = Post {
        id: new_id(),
        create_at,
        update_at: create_at,
        edit_at: 0,
        delete_at: 0,
        is_pinned: false,
        user_id: c.user_id.clone(),
        channel_id: req.channel_id.clone(),
        root_id: req.root_id.clone(),
        original_id: String::new(),
        message: req.message,
        type_: req.type_,
        props,
        hashtags: String::new(),
        file_ids: file_ids.clone(),
        has_reactions: false,
        seq: 0,
    };
    let id = st.insert_post(post);
    for f in &file_ids {
        if let Some(fi) = st.files.get_mut(f) {
            fi.post_id.clone_from(&id);
        }
    }
    if !req.root_id.is_empty()
        && let Some(root) = st.posts.get_mut(&req.root_id)
    {
        root.update_at = root.update_at.max(create_at);
    }
    let set_online = set_online_param && !c.is_bot && !from_webhook;
    st.publish_posted(&id, &pending, set_online);
    if !c.is_bot && !from_webhook && req.root_id.is_empty() {
        let channel_id = req.channel_id.clone();
        if let Some(m) = st
            .members
            .get_mut(&channel_id)
            .and_then(|m| m.get_mut(&c.user_id))
        {
            m.last_viewed_at = now;
        }
        st.publish(
            "multiple_channels_viewed",
            json!({"channel_times": {channel_id: now}}),
            Broadcast::user(&c.user_id),
        );
    }
    let v = st.post_json(&st.posts[&id], &pending);
    let delay = st.config.post_response_delay;
    Ok(Created::New {
        v,
        delay,
        pending,
        id,
    })
}

/// `GET /posts/{id}`: 404 if missing/deleted, 403 without channel access.
pub async fn get(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let id = check_id(&id, "post_id")?;
    let include_deleted = c.is_admin
        && query_map(q.as_deref())
            .get("include_deleted")
            .is_some_and(|v| v == "true");
    let st = app.lock();
    let p = st
        .posts
        .get(&id)
        .filter(|p| include_deleted || (p.delete_at == 0 && p.original_id.is_empty()))
        .ok_or_else(post_missing)?;
    if !st.can_read_channel(&p.channel_id, &c) {
        return Err(ApiError::forbidden());
    }
    Ok(json_response(StatusCode::OK, st.post_json(p, "")))
}

/// `POST /posts/ids`.
pub async fn by_ids(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let ids: Vec<String> = parse_json(&body, "post_ids")?;
    if ids.is_empty() {
        return Err(ApiError::invalid_body("post_ids"));
    }
    let st = app.lock();
    let out: Vec<Value> = ids
        .iter()
        .filter_map(|id| st.posts.get(id))
        .filter(|p| p.original_id.is_empty() && st.can_read_channel(&p.channel_id, &c))
        .map(|p| st.post_json(p, ""))
        .collect();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

/// The post a caller may edit: 403 if missing, deleted or not theirs (non-admin).
fn editable(st: &St, id: &str, c: &Caller) -> Result<Post, ApiError> {
    let p = st
        .posts
        .get(id)
        .filter(|p| p.delete_at == 0 && p.original_id.is_empty())
        .ok_or_else(ApiError::forbidden)?;
    let allowed = if p.user_id == c.user_id {
        c.is_admin || st.in_channel(&p.channel_id, &c.user_id)
    } else {
        c.is_admin
    };
    if !allowed {
        return Err(ApiError::forbidden());
    }
    if p.is_system() {
        return Err(ApiError::bad_request(
            "api.post.update_post.system_message.app_error",
            "Unable to update system message.",
        ));
    }
    Ok(p.clone())
}

/// Store an edited post: a history row when the message changed, `post_edited`, root bump.
fn save_edit(st: &mut St, old: &Post, mut new: Post) -> Value {
    let now = st.now();
    if new.message != old.message || new.file_ids != old.file_ids {
        let mut hist = old.clone();
        hist.id = new_id();
        hist.original_id.clone_from(&old.id);
        hist.delete_at = now;
        hist.update_at = now;
        st.insert_post(hist);
        new.edit_at = now;
    }
    new.update_at = now;
    let id = new.id.clone();
    let root_id = new.root_id.clone();
    let channel_id = new.channel_id.clone();
    st.posts.insert(id.clone(), new);
    if !root_id.is_empty()
        && let Some(root) = st.posts.get_mut(&root_id)
    {
        root.update_at = now;
    }
    let v = st.post_json(&st.posts[&id], "");
    st.publish(
        "post_edited",
        json!({"post": v.to_string()}),
        Broadcast::channel(&channel_id),
    );
    v
}

#[derive(Deserialize)]
struct PatchReq {
    message: Option<String>,
    is_pinned: Option<bool>,
    props: Option<Map<String, Value>>,
    file_ids: Option<Vec<String>>,
    has_reactions: Option<bool>,
}

/// `PUT /posts/{id}/patch`: only the fields sent change (props, when sent, replace the map).
pub async fn patch(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = check_id(&id, "post_id")?;
    let req: PatchReq = parse_json(&body, "post")?;
    let mut st = app.lock();
    let old = editable(&st, &id, &c)?;
    let mut new = old.clone();
    if let Some(m) = req.message {
        check_message(&st, &m)?;
        new.message = m;
    }
    if let Some(p) = req.is_pinned {
        new.is_pinned = p;
    }
    if let Some(p) = req.props {
        new.props = p;
    }
    if let Some(f) = req.file_ids {
        check_file_ids(&f)?;
        new.file_ids = f;
    }
    if let Some(h) = req.has_reactions {
        new.has_reactions = h;
    }
    let v = save_edit(&mut st, &old, new);
    Ok(json_response(StatusCode::OK, v))
}

#[derive(Deserialize)]
struct UpdateReq {
    #[serde(default)]
    id: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    is_pinned: bool,
    #[serde(default)]
    props: Option<Map<String, Value>>,
    file_ids: Option<Vec<String>>,
    #[serde(default)]
    has_reactions: bool,
}

/// `PUT /posts/{id}`: the full update; `props`, `is_pinned` and `has_reactions` are replaced
/// wholesale by the body's values (absent props wipe the existing ones).
pub async fn update(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = check_id(&id, "post_id")?;
    let req: UpdateReq = parse_json(&body, "post")?;
    if req.id != id {
        return Err(ApiError::invalid_body("id"));
    }
    let mut st = app.lock();
    let old = editable(&st, &id, &c)?;
    check_message(&st, &req.message)?;
    let mut new = old.clone();
    new.message = req.message;
    new.is_pinned = req.is_pinned;
    new.has_reactions = req.has_reactions;
    new.props = req.props.unwrap_or_default();
    if let Some(f) = req.file_ids {
        check_file_ids(&f)?;
        new.file_ids = f;
    }
    let v = save_edit(&mut st, &old, new);
    Ok(json_response(StatusCode::OK, v))
}

/// `DELETE /posts/{id}`: soft-deletes the post and, for a root, all its replies; one event.
pub async fn delete(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "post_id")?;
    let mut st = app.lock();
    let p = st
        .posts
        .get(&id)
        .filter(|p| p.delete_at == 0 && p.original_id.is_empty())
        .cloned()
        // A missing or already deleted post fails the permission check first.
        .ok_or_else(ApiError::forbidden)?;
    let team_id = st.channels[&p.channel_id].team_id.clone();
    let allowed = if p.user_id == c.user_id {
        c.is_admin || st.in_channel(&p.channel_id, &c.user_id)
    } else {
        st.is_team_admin(&team_id, &c)
    };
    if !allowed {
        return Err(ApiError::forbidden());
    }
    if st.channels[&p.channel_id].delete_at > 0 {
        return Err(ApiError::bad_request(
            "api.post.delete_post.can_not_delete_post_in_deleted.error",
            "Can not delete a post in a deleted channel.",
        ));
    }
    // The event carries the store's pre-delete row: no metadata.
    let mut before = st.post_json(&p, "");
    if let Some(o) = before.as_object_mut() {
        o.remove("metadata");
    }
    let now = st.now();
    // The post and, for a root, its live replies.
    let targets: Vec<String> = std::iter::once(&p)
        .filter(|q| q.delete_at == 0)
        .chain(st.live_replies(&id))
        .map(|q| q.id.clone())
        .collect();
    for pid in targets {
        if let Some(q) = st.posts.get_mut(&pid) {
            q.delete_at = now;
            q.update_at = now;
            q.props.insert("deleteBy".into(), json!(c.user_id));
        }
    }
    let admins: Vec<String> = st
        .users
        .values()
        .filter(|u| u.is_admin())
        .map(|u| u.id.clone())
        .collect();
    let deleter = c.user_id.clone();
    let data = json!({"post": before.to_string()});
    let for_admin = json!({"post": before.to_string(), "delete_by": deleter});
    let f = move |uid: &str| {
        if admins.iter().any(|a| a == uid) {
            for_admin.clone()
        } else {
            data.clone()
        }
    };
    let data = json!({"post": before.to_string()});
    st.publish_with(
        "post_deleted",
        &data,
        &Broadcast::channel(&p.channel_id),
        Some(&f),
    );
    Ok(status_ok())
}

fn post_list(
    st: &St,
    order: &[String],
    extra: &[String],
    next: &str,
    prev: &str,
    has_next: bool,
) -> Value {
    let mut posts = Map::new();
    for id in order.iter().chain(extra) {
        if let Some(p) = st.posts.get(id) {
            posts.insert(id.clone(), st.post_json(p, ""));
        }
    }
    json!({
        "order": order, "posts": posts, "next_post_id": next, "prev_post_id": prev,
        "has_next": has_next, "first_inaccessible_post_time": 0,
    })
}

/// Roots of replies in `ids` that are not themselves in `ids`.
fn missing_roots(st: &St, ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for id in ids {
        let p = &st.posts[id];
        if !p.root_id.is_empty()
            && !ids.contains(&p.root_id)
            && !out.contains(&p.root_id)
            && st.posts.contains_key(&p.root_id)
        {
            out.push(p.root_id.clone());
        }
    }
    out
}

/// `GET /posts/{id}/thread`: root and replies, newest first.
pub async fn thread(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "post_id")?;
    let st = app.lock();
    let p = st
        .posts
        .get(&id)
        .filter(|p| p.delete_at == 0 && p.original_id.is_empty())
        .ok_or_else(post_missing)?;
    if !st.can_read_channel(&p.channel_id, &c) {
        return Err(ApiError::forbidden());
    }
    let root = if p.root_id.is_empty() {
        p.id.clone()
    } else {
        p.root_id.clone()
    };
    let mut rows: Vec<&Post> = st
        .posts
        .get(&root)
        .filter(|q| q.delete_at == 0 && q.original_id.is_empty())
        .into_iter()
        .chain(st.live_replies(&root))
        .collect();
    rows.sort_by_key(|q| std::cmp::Reverse((q.create_at, q.seq)));
    let order: Vec<String> = rows.iter().map(|q| q.id.clone()).collect();
    Ok(json_response(
        StatusCode::OK,
        post_list(&st, &order, &[], "", "", false),
    ))
}

/// `GET /channels/{id}/posts`: `since` wins, then `after`, then `before`, then plain paging.
pub async fn for_channel(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let q: HashMap<String, String> = query_map(q.as_deref());
    let (page, per_page) = paging(&q)?;
    let since = match q.get("since").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| ApiError::invalid_url("since"))?,
        ),
        None => None,
    };
    let cursor = |name: &str| -> Result<Option<String>, ApiError> {
        match q.get(name).filter(|s| !s.is_empty()) {
            Some(v) => check_id(v, name).map(Some),
            None => Ok(None),
        }
    };
    let after = cursor("after")?;
    let before = cursor("before")?;
    let skip_threads = q.get("skipFetchThreads").is_some_and(|v| v == "true");
    let crt = q.get("collapsedThreads").is_some_and(|v| v == "true");
    let st = app.lock();
    if !st.can_read_channel(&id, &c) {
        return Err(ApiError::forbidden());
    }
    let all: &[String] = st.channel_posts.get(&id).map_or(&[], Vec::as_slice);
    if let Some(since) = since.filter(|s| *s > 0) {
        let mut rows: Vec<&Post> = all
            .iter()
            .map(|i| &st.posts[i])
            .filter(|p| p.update_at > since)
            // With collapsed threads only live roots come back: deletions are invisible.
            .filter(|p| {
                !crt || (p.root_id.is_empty() && p.delete_at == 0 && p.original_id.is_empty())
            })
            .collect();
        rows.sort_by_key(|p| std::cmp::Reverse((p.create_at, p.seq)));
        rows.truncate(SINCE_LIMIT);
        let order: Vec<String> = rows.iter().map(|p| p.id.clone()).collect();
        let extra = if skip_threads {
            Vec::new()
        } else {
            missing_roots(&st, &order)
        };
        return Ok(json_response(
            StatusCode::OK,
            post_list(&st, &order, &extra, "", "", false),
        ));
    }
    // Plain paging: an ETag from the newest change in the channel; If-None-Match → 304.
    let etag = (after.is_none() && before.is_none()).then(|| {
        let last = all.iter().map(|i| st.posts[i].update_at).max().unwrap_or(0);
        format!("{}.{last}.{crt}", crate::state::VERSION)
    });
    if let Some(e) = &etag
        && headers
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == e)
    {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(e) {
            r.headers_mut().insert("ETag", v);
        }
        return Ok(r);
    }
    // Live posts, newest first.
    let mut live: Vec<&Post> = all
        .iter()
        .map(|i| &st.posts[i])
        .filter(|p| p.delete_at == 0 && p.original_id.is_empty())
        .collect();
    live.sort_by_key(|p| std::cmp::Reverse((p.create_at, p.seq)));
    // The cursor post may itself be deleted: its position comes from its row, not the live list.
    let anchor = |pid: &str| {
        st.posts
            .get(pid)
            .filter(|p| p.channel_id == id)
            .map(|p| (p.create_at, p.seq))
    };
    let empty = || {
        Ok(json_response(
            StatusCode::OK,
            post_list(&st, &[], &[], "", "", false),
        ))
    };
    // [start, end) in the newest-first list.
    let (start, end) = if let Some(a) = &after {
        let Some(key) = anchor(a) else {
            return empty();
        };
        // Newer than `after`: the first `newer` entries, taken from the oldest side.
        let newer = live.iter().filter(|p| (p.create_at, p.seq) > key).count();
        let end = newer.saturating_sub(page.saturating_mul(per_page));
        (end.saturating_sub(per_page), end)
    } else if let Some(b) = &before {
        let Some(key) = anchor(b) else {
            return empty();
        };
        let not_older = live.iter().filter(|p| (p.create_at, p.seq) >= key).count();
        let start = not_older
            .saturating_add(page.saturating_mul(per_page))
            .min(live.len());
        (start, (start + per_page).min(live.len()))
    } else {
        let start = page.saturating_mul(per_page).min(live.len());
        (start, (start + per_page).min(live.len()))
    };
    let order: Vec<String> = live[start..end].iter().map(|p| p.id.clone()).collect();
    let mut next = if start > 0 && start <= live.len() && !order.is_empty() {
        live[start - 1].id.clone()
    } else {
        String::new()
    };
    let mut prev = if end < live.len() && !order.is_empty() {
        live[end].id.clone()
    } else {
        String::new()
    };
    if page == 0 {
        if let Some(a) = &after {
            prev.clone_from(a);
        }
        if let Some(b) = &before {
            next.clone_from(b);
        }
    }
    let has_next = end < live.len();
    let extra = if skip_threads {
        Vec::new()
    } else {
        missing_roots(&st, &order)
    };
    let mut r = json_response(
        StatusCode::OK,
        post_list(&st, &order, &extra, &next, &prev, has_next),
    );
    if let Some(e) = etag
        && let Ok(v) = HeaderValue::from_str(&e)
    {
        r.headers_mut().insert("ETag", v);
    }
    Ok(r)
}

/// `POST /posts/{id}/pin` and `/unpin`: `is_pinned` changes, `update_at` bumps, `post_edited`.
async fn set_pinned(app: &App, c: &Caller, id: &str, pinned: bool) -> ApiResult {
    let id = check_id(id, "post_id")?;
    let mut st = app.lock();
    let p = st
        .posts
        .get(&id)
        .filter(|p| p.delete_at == 0 && p.original_id.is_empty())
        .cloned()
        .ok_or_else(ApiError::forbidden)?;
    if !st.can_post(&p.channel_id, c) {
        return Err(ApiError::forbidden());
    }
    let mut new = p.clone();
    new.is_pinned = pinned;
    save_edit(&mut st, &p, new);
    Ok(status_ok())
}

/// `POST /posts/{id}/pin`.
pub async fn pin(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    set_pinned(&app, &c, &id, true).await
}

/// `POST /posts/{id}/unpin`.
pub async fn unpin(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    set_pinned(&app, &c, &id, false).await
}

#[derive(Deserialize)]
struct CommandReq {
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    root_id: String,
}

/// `POST /commands/execute`: only the built-in `/me` (a `type: "me"` post with `*text*`).
pub async fn execute_command(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let req: CommandReq = parse_json(&body, "command")?;
    let (trigger, rest) = req
        .command
        .trim_start()
        .split_once(' ')
        .unwrap_or((req.command.trim(), ""));
    if !trigger.starts_with('/') {
        return Err(ApiError::invalid_body("command"));
    }
    if trigger != "/me" {
        return Err(ApiError::not_found(
            "api.command.execute_command.not_found.app_error",
            "Command with a trigger of '{{.Trigger}}' not found.",
        ));
    }
    let post = CreateReq {
        channel_id: req.channel_id,
        message: format!("*{}*", rest.trim()),
        root_id: req.root_id,
        file_ids: Vec::new(),
        props: None,
        pending_post_id: String::new(),
        type_: "me".to_owned(),
        create_at: 0,
    };
    match create_locked(&app, &c, post, true)? {
        Created::Repeat(_) | Created::New { .. } => {}
    }
    Ok(json_response(
        StatusCode::OK,
        json!({"response_type": "", "text": "", "username": "", "channel_id": "", "icon_url": "",
               "goto_location": "", "skip_slack_parsing": false}),
    ))
}

/// `GET /channels/{id}/pinned`: the channel's pinned live posts as a PostList.
pub async fn pinned(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let st = app.lock();
    if !st.can_read_channel(&id, &c) {
        return Err(ApiError::forbidden());
    }
    let mut rows: Vec<&Post> = st
        .channel_posts
        .get(&id)
        .map(|ids| ids.iter().map(|i| &st.posts[i]).collect())
        .unwrap_or_default();
    rows.retain(|p| p.is_pinned && p.delete_at == 0 && p.original_id.is_empty());
    rows.sort_by_key(|p| std::cmp::Reverse((p.create_at, p.seq)));
    let order: Vec<String> = rows.iter().map(|p| p.id.clone()).collect();
    Ok(json_response(
        StatusCode::OK,
        post_list(&st, &order, &[], "", "", false),
    ))
}
