//! Teams and team membership (joining a team also joins its default channels).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{check_id, path_user_id};
use crate::error::{ApiError, ApiResult};
use crate::http::{Auth, json_response, parse_json};
use crate::hub::Broadcast;
use crate::ids::new_id;
use crate::model::{ChannelMember, Team, team_member_json};
use crate::state::{App, Caller, State as St};

#[derive(Deserialize)]
struct CreateTeamReq {
    #[serde(default)]
    name: String,
    #[serde(default)]
    display_name: String,
    #[serde(default, rename = "type")]
    type_: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    allow_open_invite: Option<bool>,
}

fn valid_team_name(name: &str) -> bool {
    let b = name.as_bytes();
    (2..=64).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && ![
            "api",
            "admin_console",
            "signup",
            "login",
            "oauth",
            "error",
            "help",
            "plugins",
            "files",
            "hooks",
            "channels",
            "static",
        ]
        .contains(&name)
}

/// `POST /teams` → 201; the creator becomes team admin; `town-square` and `off-topic` are made.
pub async fn create(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let req: CreateTeamReq = parse_json(&body, "team")?;
    let name = req.name.to_lowercase();
    if !valid_team_name(&name) {
        return Err(ApiError::bad_request(
            "model.team.is_valid.url.app_error",
            "Team URL must be lowercase, between 2 and 64 characters, start and end with a letter or number, and not a reserved word.",
        ));
    }
    if req.display_name.is_empty() || req.display_name.chars().count() > 64 {
        return Err(ApiError::bad_request(
            "model.team.is_valid.name.app_error",
            "Invalid name.",
        ));
    }
    let type_ = if req.type_.is_empty() {
        "O".to_owned()
    } else {
        req.type_
    };
    if type_ != "O" && type_ != "I" {
        return Err(ApiError::bad_request(
            "model.team.is_valid.type.app_error",
            "Invalid type.",
        ));
    }
    let mut st = app.lock();
    if st.teams.values().any(|t| t.name == name) {
        return Err(ApiError::bad_request(
            "app.team.save.existing.app_error",
            "A team with that name already exists.",
        ));
    }
    let now = st.now();
    let team = Team {
        id: new_id(),
        create_at: now,
        update_at: now,
        delete_at: 0,
        name,
        display_name: req.display_name,
        description: req.description,
        allow_open_invite: req.allow_open_invite.unwrap_or(type_ == "O"),
        type_,
        invite_id: new_id(),
        email: st.users[&c.user_id].email.clone(),
    };
    let v = team.to_json();
    let team_id = team.id.clone();
    st.teams.insert(team_id.clone(), team);
    for (name, display) in [("town-square", "Town Square"), ("off-topic", "Off-Topic")] {
        let ch = st.new_channel(&team_id, "O", name, display, "");
        st.members.insert(ch.id.clone(), Default::default());
        st.channels.insert(ch.id.clone(), ch);
    }
    join_team(&mut st, &team_id, &c.user_id, &c.user_id, true);
    Ok(json_response(StatusCode::CREATED, v))
}

/// Add `user` to a team and its default channels (with the system posts and events).
fn join_team(st: &mut St, team_id: &str, user: &str, actor: &str, admin: bool) {
    st.team_members
        .insert((team_id.to_owned(), user.to_owned()), admin);
    let mut defaults: Vec<(String, String)> = st
        .channels
        .values()
        .filter(|ch| ch.team_id == team_id && (ch.name == "town-square" || ch.name == "off-topic"))
        .map(|ch| (ch.name.clone(), ch.id.clone()))
        .collect();
    defaults.sort();
    st.publish(
        "added_to_team",
        json!({"team_id": team_id, "user_id": user}),
        Broadcast::user(user),
    );
    let username = st.username(user);
    for (name, cid) in defaults {
        if st.in_channel(&cid, user) {
            continue;
        }
        let now = st.now();
        st.members.entry(cid.clone()).or_default().insert(
            user.to_owned(),
            ChannelMember {
                channel_id: cid.clone(),
                user_id: user.to_owned(),
                admin: false,
                last_viewed_at: 0,
                msg_count: 0,
                last_update_at: now,
            },
        );
        st.publish(
            "user_added",
            json!({"user_id": user, "team_id": team_id}),
            Broadcast::channel(&cid),
        );
        if name == "town-square" {
            if actor == user {
                st.system_post(
                    &cid,
                    user,
                    "system_join_team",
                    format!("{username} joined the team."),
                    json!({"username": username}),
                );
            } else {
                let actor_name = st.username(actor);
                st.system_post(
                    &cid,
                    actor,
                    "system_add_to_team",
                    format!("{username} added to the team by {actor_name}."),
                    json!({"userId": actor, "username": actor_name, "addedUserId": user, "addedUsername": username}),
                );
            }
        }
    }
}

fn visible_team(st: &St, team_id: &str, c: &Caller) -> Result<Value, ApiError> {
    let team = st.teams.get(team_id).ok_or_else(|| {
        ApiError::not_found(
            "app.team.get.find.app_error",
            "Unable to find the existing team.",
        )
    })?;
    let open = team.allow_open_invite && team.type_ == "O";
    if !open && !c.is_admin && !st.in_team(team_id, &c.user_id) {
        return Err(ApiError::forbidden());
    }
    Ok(team.to_json())
}

/// `GET /teams/{id}`.
pub async fn get(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "team_id")?;
    let st = app.lock();
    Ok(json_response(StatusCode::OK, visible_team(&st, &id, &c)?))
}

/// `GET /teams/name/{name}` (lowercased).
pub async fn by_name(State(app): State<App>, Auth(c): Auth, Path(name): Path<String>) -> ApiResult {
    let name = name.to_lowercase();
    let st = app.lock();
    let id = st
        .teams
        .values()
        .find(|t| t.name == name && t.delete_at == 0)
        .map(|t| t.id.clone())
        .ok_or_else(|| {
            ApiError::not_found(
                "app.team.get_by_name.missing.app_error",
                "Unable to find the existing team.",
            )
        })?;
    Ok(json_response(StatusCode::OK, visible_team(&st, &id, &c)?))
}

/// `GET /users/{id}/teams`.
pub async fn of_user(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    if id != c.user_id && !c.is_admin {
        return Err(ApiError::forbidden());
    }
    let st = app.lock();
    let mut teams: Vec<&Team> = st
        .teams
        .values()
        .filter(|t| st.in_team(&t.id, &id))
        .collect();
    teams.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(json_response(
        StatusCode::OK,
        Value::Array(teams.into_iter().map(Team::to_json).collect()),
    ))
}

#[derive(Deserialize)]
struct AddMemberReq {
    #[serde(default)]
    team_id: String,
    #[serde(default)]
    user_id: String,
}

/// `POST /teams/{id}/members` → 201 TeamMember (also when already a member).
pub async fn add_member(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = check_id(&id, "team_id")?;
    let req: AddMemberReq = parse_json(&body, "team_member")?;
    if !req.team_id.is_empty() && req.team_id != id {
        return Err(ApiError::invalid_body("team_id"));
    }
    let user = check_id(&req.user_id, "user_id").map_err(|_| ApiError::invalid_body("user_id"))?;
    let mut st = app.lock();
    let team_open = st
        .teams
        .get(&id)
        .is_some_and(|t| t.allow_open_invite && t.type_ == "O");
    let allowed = c.is_admin || st.in_team(&id, &c.user_id) || (user == c.user_id && team_open);
    if !allowed || !st.teams.contains_key(&id) {
        if c.is_admin {
            return Err(ApiError::not_found(
                "app.team.get.find.app_error",
                "Unable to find the existing team.",
            ));
        }
        return Err(ApiError::forbidden());
    }
    if !st.users.contains_key(&user) {
        return Err(ApiError::bad_request(
            "app.user.missing_account.const",
            "Unable to find the user.",
        ));
    }
    if !st.in_team(&id, &user) {
        join_team(&mut st, &id, &user, &c.user_id, false);
    }
    let admin = st
        .team_members
        .get(&(id.clone(), user.clone()))
        .copied()
        .unwrap_or(false);
    Ok(json_response(
        StatusCode::CREATED,
        team_member_json(&id, &user, admin),
    ))
}
