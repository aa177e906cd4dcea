//! Channels (public, private, direct), lookups by name, membership with its system posts and
//! events, and the header/purpose/display-name patch.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{check_id, paging, path_user_id};
use crate::error::{ApiError, ApiResult};
use crate::http::{Auth, json_response, parse_json, query_map, status_ok};
use crate::hub::Broadcast;
use crate::model::{Channel, ChannelMember};
use crate::state::{App, Caller, State as St};

fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn missing_by_name() -> ApiError {
    ApiError::not_found(
        "app.channel.get_by_name.missing.app_error",
        "Channel does not exist.",
    )
}

#[derive(Deserialize)]
struct CreateReq {
    #[serde(default)]
    team_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default, rename = "type")]
    type_: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    header: String,
}

/// `POST /channels` → 201; the creator is the first member (channel admin).
pub async fn create(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let req: CreateReq = parse_json(&body, "channel")?;
    let mut st = app.lock();
    if req.type_ != "O" && req.type_ != "P" {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.type.app_error",
            "Invalid type.",
        ));
    }
    if !st.teams.contains_key(&req.team_id) || !(c.is_admin || st.in_team(&req.team_id, &c.user_id))
    {
        return Err(ApiError::forbidden());
    }
    if !valid_channel_name(&req.name) {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.2_or_more.app_error",
            "Name must be 1 or more lowercase alphanumeric characters.",
        ));
    }
    if req.display_name.is_empty() || req.display_name.chars().count() > 64 {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.display_name.app_error",
            "Invalid display name.",
        ));
    }
    if req.header.chars().count() > 1024 || req.purpose.chars().count() > 250 {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.header.app_error",
            "Invalid header or purpose.",
        ));
    }
    if st
        .channels
        .values()
        .any(|ch| ch.team_id == req.team_id && ch.name == req.name)
    {
        return Err(ApiError::bad_request(
            "store.sql_channel.save_channel.exists.app_error",
            "A channel with that name already exists on the same team.",
        ));
    }
    let mut ch = st.new_channel(
        &req.team_id,
        &req.type_,
        &req.name,
        &req.display_name,
        &c.user_id,
    );
    ch.header = req.header;
    ch.purpose = req.purpose;
    let id = ch.id.clone();
    let v = ch.to_json();
    let now = st.now();
    st.channels.insert(id.clone(), ch);
    st.members.entry(id.clone()).or_default().insert(
        c.user_id.clone(),
        ChannelMember {
            channel_id: id.clone(),
            user_id: c.user_id.clone(),
            admin: true,
            last_viewed_at: now,
            msg_count: 0,
            last_update_at: now,
        },
    );
    st.publish(
        "channel_created",
        json!({"channel_id": id, "team_id": req.team_id}),
        Broadcast::user(&c.user_id),
    );
    Ok(json_response(StatusCode::CREATED, v))
}

/// `POST /channels/direct` `[id, id]` → 201 (the existing DM if there is one).
pub async fn create_direct(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let ids: Vec<String> = parse_json(&body, "user_ids")?;
    if ids.len() != 2 {
        return Err(ApiError::invalid_body("user_ids"));
    }
    let mut st = app.lock();
    if !c.is_admin && !ids.contains(&c.user_id) {
        return Err(ApiError::forbidden());
    }
    if ids.iter().any(|i| !st.users.contains_key(i)) {
        return Err(ApiError::bad_request(
            "api.channel.create_direct_channel.invalid_user.app_error",
            "Invalid user ID for direct channel creation.",
        ));
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let name = format!("{}__{}", sorted[0], sorted[1]);
    if let Some(ch) = st
        .channels
        .values()
        .find(|ch| ch.type_ == "D" && ch.name == name)
    {
        return Ok(json_response(StatusCode::CREATED, ch.to_json()));
    }
    let ch = st.new_channel("", "D", &name, "", &c.user_id);
    let id = ch.id.clone();
    let v = ch.to_json();
    st.channels.insert(id.clone(), ch);
    let now = st.now();
    for u in &sorted {
        st.members.entry(id.clone()).or_default().insert(
            u.clone(),
            ChannelMember {
                channel_id: id.clone(),
                user_id: u.clone(),
                admin: false,
                last_viewed_at: 0,
                msg_count: 0,
                last_update_at: now,
            },
        );
    }
    let teammate = sorted
        .iter()
        .find(|u| **u != c.user_id)
        .cloned()
        .unwrap_or_else(|| c.user_id.clone());
    st.publish(
        "direct_added",
        json!({"creator_id": c.user_id, "teammate_id": teammate}),
        Broadcast::user(&teammate),
    );
    Ok(json_response(StatusCode::CREATED, v))
}

/// `GET /channels/{id}`: 403 if unknown or unreadable.
pub async fn get(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let st = app.lock();
    Ok(json_response(
        StatusCode::OK,
        st.readable_channel(&id, &c)?.to_json(),
    ))
}

fn lookup_by_name(
    st: &St,
    team_id: &str,
    name: &str,
    c: &Caller,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let name = name.to_lowercase();
    let include_deleted = q.get("include_deleted").is_some_and(|v| v == "true");
    let ch = st
        .channels
        .values()
        .find(|ch| ch.team_id == team_id && ch.name == name)
        .filter(|ch| include_deleted || ch.delete_at == 0)
        .ok_or_else(missing_by_name)?;
    if ch.type_ == "O" {
        if !c.is_admin && !st.in_team(team_id, &c.user_id) {
            return Err(ApiError::forbidden());
        }
    } else if !c.is_admin && !st.in_channel(&ch.id, &c.user_id) {
        return Err(missing_by_name());
    }
    Ok(ch.to_json())
}

/// `GET /teams/{team_id}/channels/name/{name}`.
pub async fn by_name(
    State(app): State<App>,
    Auth(c): Auth,
    Path((team_id, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let team_id = check_id(&team_id, "team_id")?;
    let q = query_map(q.as_deref());
    let st = app.lock();
    Ok(json_response(
        StatusCode::OK,
        lookup_by_name(&st, &team_id, &name, &c, &q)?,
    ))
}

/// `GET /teams/name/{team}/channels/name/{name}`.
pub async fn by_team_name_and_name(
    State(app): State<App>,
    Auth(c): Auth,
    Path((team, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let q = query_map(q.as_deref());
    let st = app.lock();
    let team = team.to_lowercase();
    let team_id = st
        .teams
        .values()
        .find(|t| t.name == team)
        .map(|t| t.id.clone())
        .ok_or_else(|| {
            ApiError::not_found(
                "app.team.get_by_name.missing.app_error",
                "Unable to find the existing team.",
            )
        })?;
    Ok(json_response(
        StatusCode::OK,
        lookup_by_name(&st, &team_id, &name, &c, &q)?,
    ))
}

fn channel_list(st: &St, filter: impl Fn(&Channel) -> bool) -> Value {
    let mut chans: Vec<&Channel> = st.channels.values().filter(|c| filter(c)).collect();
    chans.sort_by(|a, b| a.name.cmp(&b.name));
    Value::Array(chans.into_iter().map(Channel::to_json).collect())
}

/// `GET /users/{id}/channels`: the user's channels across teams.
pub async fn of_user(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    if id != c.user_id && !c.is_admin {
        return Err(ApiError::forbidden());
    }
    let st = app.lock();
    Ok(json_response(
        StatusCode::OK,
        channel_list(&st, |ch| ch.delete_at == 0 && st.in_channel(&ch.id, &id)),
    ))
}

/// `GET /users/{id}/teams/{team_id}/channels`.
pub async fn of_user_in_team(
    State(app): State<App>,
    Auth(c): Auth,
    Path((id, team_id)): Path<(String, String)>,
) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    let team_id = check_id(&team_id, "team_id")?;
    let st = app.lock();
    if (id != c.user_id || !st.in_team(&team_id, &id)) && !c.is_admin {
        return Err(ApiError::forbidden());
    }
    Ok(json_response(
        StatusCode::OK,
        channel_list(&st, |ch| {
            ch.delete_at == 0
                && (ch.team_id == team_id || ch.team_id.is_empty())
                && st.in_channel(&ch.id, &id)
        }),
    ))
}

/// `GET /teams/{id}/channels`: public channels of a team.
pub async fn public_in_team(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult {
    let id = check_id(&id, "team_id")?;
    let st = app.lock();
    if !c.is_admin && !st.in_team(&id, &c.user_id) {
        return Err(ApiError::forbidden());
    }
    Ok(json_response(
        StatusCode::OK,
        channel_list(&st, |ch| {
            ch.team_id == id && ch.type_ == "O" && ch.delete_at == 0
        }),
    ))
}

#[derive(Deserialize)]
struct AddMemberReq {
    #[serde(default)]
    user_id: String,
}

/// `POST /channels/{id}/members` → 201 ChannelMember (also when already a member).
pub async fn add_member(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let req: AddMemberReq = parse_json(&body, "user_id")?;
    let user = check_id(&req.user_id, "user_id").map_err(|_| ApiError::invalid_body("user_id"))?;
    let mut st = app.lock();
    let ch = st.channels.get(&id).cloned().ok_or_else(|| {
        ApiError::not_found(
            "app.channel.get.existing.app_error",
            "Unable to find the existing channel.",
        )
    })?;
    if ch.is_dm_or_gm() {
        return Err(ApiError::bad_request(
            "api.channel.add_user_to_channel.type.app_error",
            "Can not add user to this channel type.",
        ));
    }
    let allowed = c.is_admin
        || match ch.type_.as_str() {
            "O" => st.in_team(&ch.team_id, &c.user_id),
            _ => st.in_channel(&id, &c.user_id),
        };
    if !allowed {
        return Err(ApiError::forbidden());
    }
    if ch.delete_at > 0 {
        return Err(ApiError::bad_request(
            "api.channel.add_user.to.channel.failed.deleted.app_error",
            "Failed to add user to channel because channel has been archived.",
        ));
    }
    if !st.users.contains_key(&user) {
        return Err(ApiError::not_found(
            "app.user.missing_account.const",
            "Unable to find the user.",
        ));
    }
    if !st.in_team(&ch.team_id, &user) {
        return Err(ApiError::forbidden());
    }
    st.add_channel_member(&id, &user, &c.user_id, true);
    let m = st.members[&id][&user].to_json();
    Ok(json_response(StatusCode::CREATED, m))
}

/// `GET /channels/{id}/members`.
pub async fn list_members(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let (page, per_page) = paging(&query_map(q.as_deref()))?;
    let st = app.lock();
    st.readable_channel(&id, &c)?;
    let out: Vec<Value> = st
        .members
        .get(&id)
        .map(|m| {
            m.values()
                .skip(page.saturating_mul(per_page))
                .take(per_page)
                .map(ChannelMember::to_json)
                .collect()
        })
        .unwrap_or_default();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

/// `GET /channels/{id}/members/{user_id}` (`me` allowed).
pub async fn get_member(
    State(app): State<App>,
    Auth(c): Auth,
    Path((id, uid)): Path<(String, String)>,
) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let uid = path_user_id(&uid, &c.user_id)?;
    let st = app.lock();
    st.readable_channel(&id, &c)?;
    match st.members.get(&id).and_then(|m| m.get(&uid)) {
        Some(m) => Ok(json_response(StatusCode::OK, m.to_json())),
        None => Err(ApiError::not_found(
            "app.channel.get_member.missing.app_error",
            "No channel member found for that user ID and channel ID.",
        )),
    }
}

/// `DELETE /channels/{id}/members/{user_id}`: leave or remove, with system post and two
/// `user_removed` events.
pub async fn remove_member(
    State(app): State<App>,
    Auth(c): Auth,
    Path((id, uid)): Path<(String, String)>,
) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let uid = path_user_id(&uid, &c.user_id)?;
    let mut st = app.lock();
    let Some(ch) = st.channels.get(&id).cloned() else {
        return Err(ApiError::forbidden());
    };
    let is_channel_admin = st
        .members
        .get(&id)
        .and_then(|m| m.get(&c.user_id))
        .is_some_and(|m| m.admin);
    let allowed = c.is_admin
        || uid == c.user_id && st.in_channel(&id, &c.user_id)
        || (ch.type_ == "O" && st.in_channel(&id, &c.user_id))
        || is_channel_admin;
    if !allowed {
        return Err(ApiError::forbidden());
    }
    if ch.is_dm_or_gm() {
        return Err(ApiError::bad_request(
            "api.channel.remove_user_from_channel.type.app_error",
            "Can not remove user from this channel type.",
        ));
    }
    if ch.name == "town-square" {
        return Err(ApiError::bad_request(
            "api.channel.remove.default.app_error",
            "Unable to remove user from the default channel town-square.",
        ));
    }
    if !st.in_channel(&id, &uid) {
        return Err(ApiError::not_found(
            "app.channel.get_member.missing.app_error",
            "No channel member found for that user ID and channel ID.",
        ));
    }
    let username = st.username(&uid);
    // The system post goes out while the user is still a member, as the server does it.
    if uid == c.user_id {
        st.system_post(
            &id,
            &uid,
            "system_leave_channel",
            format!("{username} left the channel."),
            json!({"username": username}),
        );
    } else {
        st.system_post(
            &id,
            &c.user_id,
            "system_remove_from_channel",
            format!("{username} was removed from the channel."),
            json!({"removedUserId": uid, "removedUsername": username}),
        );
    }
    st.publish(
        "user_removed",
        json!({"channel_id": id, "remover_id": c.user_id}),
        Broadcast::user(&uid),
    );
    if let Some(m) = st.members.get_mut(&id) {
        m.remove(&uid);
    }
    st.publish(
        "user_removed",
        json!({"user_id": uid, "remover_id": c.user_id}),
        Broadcast::channel(&id),
    );
    Ok(status_ok())
}

#[derive(Deserialize)]
struct PatchReq {
    header: Option<String>,
    purpose: Option<String>,
    display_name: Option<String>,
    name: Option<String>,
}

/// `PUT /channels/{id}/patch` → 200 Channel; system posts and `channel_updated`.
pub async fn patch(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let req: PatchReq = parse_json(&body, "channel")?;
    let mut st = app.lock();
    let Some(old) = st.channels.get(&id).cloned() else {
        return Err(ApiError::forbidden());
    };
    let allowed = c.is_admin || st.in_channel(&id, &c.user_id);
    if !allowed {
        return Err(ApiError::forbidden());
    }
    if old.delete_at > 0 {
        return Err(ApiError::bad_request(
            "api.channel.patch_update_channel.forbidden.app_error",
            "Failed to patch the channel.",
        ));
    }
    if req
        .header
        .as_ref()
        .is_some_and(|h| h.chars().count() > 1024)
    {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.header.app_error",
            "Invalid header.",
        ));
    }
    if req
        .purpose
        .as_ref()
        .is_some_and(|h| h.chars().count() > 250)
    {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.purpose.app_error",
            "Invalid purpose.",
        ));
    }
    if req
        .display_name
        .as_ref()
        .is_some_and(|d| d.is_empty() || d.chars().count() > 64)
    {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.display_name.app_error",
            "Invalid display name.",
        ));
    }
    if req.name.as_ref().is_some_and(|n| !valid_channel_name(n)) {
        return Err(ApiError::bad_request(
            "model.channel.is_valid.2_or_more.app_error",
            "Name must be 1 or more lowercase alphanumeric characters.",
        ));
    }
    let now = st.now();
    let ch = st.channels.get_mut(&id).expect("checked above");
    if let Some(h) = &req.header {
        ch.header.clone_from(h);
    }
    if let Some(p) = &req.purpose {
        ch.purpose.clone_from(p);
    }
    if let Some(d) = &req.display_name {
        ch.display_name.clone_from(d);
    }
    if let Some(n) = &req.name {
        ch.name.clone_from(n);
    }
    ch.update_at = now;
    let new = ch.clone();
    let username = c.username.clone();
    if new.header != old.header {
        let message = if new.header.is_empty() {
            format!(
                "{username} removed the channel header (was: {})",
                old.header
            )
        } else {
            format!("{username} updated the channel header to: {}", new.header)
        };
        st.system_post(
            &id,
            &c.user_id,
            "system_header_change",
            message,
            json!({"username": username, "old_header": old.header, "new_header": new.header}),
        );
    }
    if new.purpose != old.purpose {
        st.system_post(
            &id,
            &c.user_id,
            "system_purpose_change",
            format!("{username} updated the channel purpose to: {}", new.purpose),
            json!({"username": username, "old_purpose": old.purpose, "new_purpose": new.purpose}),
        );
    }
    if new.display_name != old.display_name {
        st.system_post(
            &id,
            &c.user_id,
            "system_displayname_change",
            format!("{username} updated the channel display name from: {} to: {}", old.display_name, new.display_name),
            json!({"username": username, "old_displayname": old.display_name, "new_displayname": new.display_name}),
        );
    }
    let v = new.to_json();
    st.publish(
        "channel_updated",
        json!({"channel": v.to_string()}),
        Broadcast::channel(&id),
    );
    Ok(json_response(StatusCode::OK, v))
}

/// `DELETE /channels/{id}`: archive; `system_channel_deleted` post and `channel_deleted` event.
pub async fn archive(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "channel_id")?;
    let mut st = app.lock();
    let Some(ch) = st.channels.get(&id).cloned() else {
        return Err(ApiError::forbidden());
    };
    if !(c.is_admin || st.in_channel(&id, &c.user_id)) {
        return Err(ApiError::forbidden());
    }
    if ch.is_dm_or_gm() {
        return Err(ApiError::bad_request(
            "api.channel.delete_channel.type.invalid",
            "Unable to delete direct or group message channels.",
        ));
    }
    if ch.name == "town-square" {
        return Err(ApiError::bad_request(
            "api.channel.delete_channel.cannot.app_error",
            "Unable to delete the default channel town-square.",
        ));
    }
    if ch.delete_at > 0 {
        return Err(ApiError::bad_request(
            "api.channel.delete_channel.deleted.app_error",
            "The channel has been archived or deleted.",
        ));
    }
    let username = c.username.clone();
    st.system_post(
        &id,
        &c.user_id,
        "system_channel_deleted",
        format!("{username} archived the channel"),
        json!({"username": username}),
    );
    let now = st.now();
    if let Some(ch) = st.channels.get_mut(&id) {
        ch.delete_at = now;
        ch.update_at = now;
    }
    let mut b = Broadcast::default();
    b.team_id.clone_from(&ch.team_id);
    st.publish(
        "channel_deleted",
        json!({"channel_id": id, "delete_at": now}),
        b,
    );
    Ok(status_ok())
}
