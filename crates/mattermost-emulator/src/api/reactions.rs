//! Reactions: add (idempotent, 50 distinct emoji per post), remove, list; each bumps the post's
//! `update_at` and `has_reactions` and fires `reaction_added`/`reaction_removed`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{check_id, path_user_id};
use crate::error::{ApiError, ApiResult};
use crate::http::{Auth, json_response, parse_json, status_ok};
use crate::hub::Broadcast;
use crate::model::Reaction;
use crate::state::{App, Caller, State as St};

/// `UniqueEmojiReactionLimitPerPost`.
const UNIQUE_EMOJI_LIMIT: usize = 50;

fn valid_emoji(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'+' || b == b'_')
}

/// The channel of a live post the caller can read, else 403.
fn reactable(st: &St, post_id: &str, c: &Caller) -> Result<String, ApiError> {
    let p = st
        .posts
        .get(post_id)
        .filter(|p| p.delete_at == 0 && p.original_id.is_empty())
        .ok_or_else(ApiError::forbidden)?;
    if !st.can_read_channel(&p.channel_id, c) || st.channels[&p.channel_id].delete_at > 0 {
        return Err(ApiError::forbidden());
    }
    Ok(p.channel_id.clone())
}

fn touch_post(st: &mut St, post_id: &str) {
    let now = st.now();
    let has = st.reactions.get(post_id).is_some_and(|r| !r.is_empty());
    if let Some(p) = st.posts.get_mut(post_id) {
        p.has_reactions = has;
        p.update_at = now;
    }
}

#[derive(Deserialize)]
struct AddReq {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    post_id: String,
    #[serde(default)]
    emoji_name: String,
}

/// `POST /reactions` → 200 Reaction.
pub async fn add(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let req: AddReq = parse_json(&body, "reaction")?;
    if req.user_id != c.user_id {
        return Err(ApiError::forbidden());
    }
    check_id(&req.post_id, "post_id").map_err(|_| ApiError::invalid_body("post_id"))?;
    if !valid_emoji(&req.emoji_name) {
        return Err(ApiError::invalid_body("emoji_name"));
    }
    let mut st = app.lock();
    let channel_id = reactable(&st, &req.post_id, &c)?;
    let existing = st.reactions.get(&req.post_id).and_then(|rs| {
        rs.iter()
            .find(|r| r.user_id == c.user_id && r.emoji_name == req.emoji_name)
            .cloned()
    });
    if let Some(r) = existing {
        return Ok(json_response(StatusCode::OK, r.to_json()));
    }
    let distinct: std::collections::HashSet<&str> = st
        .reactions
        .get(&req.post_id)
        .map(|rs| rs.iter().map(|r| r.emoji_name.as_str()).collect())
        .unwrap_or_default();
    if !distinct.contains(req.emoji_name.as_str()) && distinct.len() >= UNIQUE_EMOJI_LIMIT {
        return Err(ApiError::bad_request(
            "app.reaction.save.too_many_reactions.app_error",
            "Reaction limit has been reached for this post.",
        ));
    }
    let now = st.now();
    let r = Reaction {
        user_id: c.user_id.clone(),
        post_id: req.post_id.clone(),
        emoji_name: req.emoji_name,
        create_at: now,
        update_at: now,
        channel_id: channel_id.clone(),
    };
    let v = r.to_json();
    st.reactions.entry(req.post_id.clone()).or_default().push(r);
    touch_post(&mut st, &req.post_id);
    st.publish(
        "reaction_added",
        json!({"reaction": v.to_string()}),
        Broadcast::channel(&channel_id),
    );
    Ok(json_response(StatusCode::OK, v))
}

/// `DELETE /users/{uid}/posts/{pid}/reactions/{name}` → 200 OK.
pub async fn remove(
    State(app): State<App>,
    Auth(c): Auth,
    Path((uid, pid, name)): Path<(String, String, String)>,
) -> ApiResult {
    let uid = path_user_id(&uid, &c.user_id)?;
    let pid = check_id(&pid, "post_id")?;
    if !valid_emoji(&name) {
        return Err(ApiError::invalid_url("emoji_name"));
    }
    if uid != c.user_id && !c.is_admin {
        return Err(ApiError::forbidden());
    }
    let mut st = app.lock();
    let channel_id = reactable(&st, &pid, &c)?;
    let removed = st.reactions.get_mut(&pid).and_then(|rs| {
        let i = rs
            .iter()
            .position(|r| r.user_id == uid && r.emoji_name == name)?;
        Some(rs.remove(i))
    });
    if let Some(mut r) = removed {
        touch_post(&mut st, &pid);
        r.update_at = st.posts[&pid].update_at;
        let mut v = r.to_json();
        v["delete_at"] = json!(r.update_at);
        st.publish(
            "reaction_removed",
            json!({"reaction": v.to_string()}),
            Broadcast::channel(&channel_id),
        );
    }
    Ok(status_ok())
}

/// `GET /posts/{id}/reactions`.
pub async fn for_post(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "post_id")?;
    let st = app.lock();
    reactable(&st, &id, &c)?;
    let out: Vec<Value> = st
        .reactions
        .get(&id)
        .map(|rs| rs.iter().map(Reaction::to_json).collect())
        .unwrap_or_default();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

/// `POST /posts/ids/reactions` `[ids]` → `{post_id: [Reaction]}` (readable posts only).
pub async fn for_posts(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let ids: Vec<String> = parse_json(&body, "post_ids")?;
    if ids.is_empty() {
        return Err(ApiError::invalid_body("post_ids"));
    }
    let st = app.lock();
    let mut out = serde_json::Map::new();
    for id in ids {
        if reactable(&st, &id, &c).is_ok() {
            let rs: Vec<Value> = st
                .reactions
                .get(&id)
                .map(|rs| rs.iter().map(Reaction::to_json).collect())
                .unwrap_or_default();
            out.insert(id, Value::Array(rs));
        }
    }
    Ok(json_response(StatusCode::OK, Value::Object(out)))
}
