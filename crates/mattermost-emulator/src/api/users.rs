//! Users, login/logout, personal access tokens and bot accounts.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{check_id, paging, path_user_id};
use crate::error::{ApiError, ApiResult};
use crate::http::{Auth, MaybeAuth, json_response, parse_json, query_map, status_ok};
use crate::hub::Broadcast;
use crate::ids::new_id;
use crate::model::{AccessToken, Session, User};
use crate::state::{App, State as St};

/// Most failed password attempts before the account locks (`MaximumLoginAttempts`).
const MAX_LOGIN_ATTEMPTS: u32 = 10;
/// `PasswordSettings.MinimumLength`.
const MIN_PASSWORD: usize = 8;

fn invalid_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "api.user.login.invalid_credentials_email_username",
        "Enter a valid email or username and/or password.",
    )
}

/// Username rules: 1–64, lowercase `[a-z0-9.\-_]`, starts with a letter, not reserved.
pub fn valid_username(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !["all", "channel", "matterbot", "system", "here"].contains(&name)
}

#[derive(Deserialize)]
struct LoginReq {
    #[serde(default)]
    login_id: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    password: String,
}

/// `POST /users/login`: 200 + `Token` header.
pub async fn login(State(app): State<App>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let req: LoginReq = parse_json(&body, "login_id")?;
    if req.password.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api.user.login.blank_pwd.app_error",
            "Password field must not be blank",
        ));
    }
    let mut st = app.lock();
    let login = if req.login_id.is_empty() {
        &req.id
    } else {
        &req.login_id
    };
    let Some(user) = st.find_user_login(login).cloned() else {
        return Err(invalid_credentials());
    };
    if user.is_bot {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api.user.login.bot_login_forbidden.app_error",
            "Bot login is forbidden.",
        ));
    }
    if user.failed_attempts >= MAX_LOGIN_ATTEMPTS {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api.user.check_user_login_attempts.too_many.app_error",
            "Your account is locked because of too many failed password attempts.",
        ));
    }
    if user.password != req.password {
        if let Some(u) = st.users.get_mut(&user.id) {
            u.failed_attempts += 1;
        }
        return Err(invalid_credentials());
    }
    if user.delete_at > 0 {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "api.user.login.inactive.app_error",
            "Login failed because your account has been deactivated.",
        ));
    }
    if let Some(u) = st.users.get_mut(&user.id) {
        u.failed_attempts = 0;
    }
    let token = new_id();
    st.sessions.insert(
        token.clone(),
        Session {
            user_id: user.id.clone(),
            token_id: String::new(),
        },
    );
    let body = user.to_json();
    drop(st);
    let mut resp = json_response(StatusCode::OK, body);
    if let Ok(v) = HeaderValue::from_str(&token) {
        resp.headers_mut().insert("Token", v);
    }
    let browser = headers
        .get("x-requested-with")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("XMLHttpRequest"));
    if browser {
        for c in [
            format!("MMAUTHTOKEN={token}; Path=/; Max-Age=2592000; HttpOnly"),
            format!("MMUSERID={}; Path=/; Max-Age=2592000", user.id),
            format!("MMCSRF={}; Path=/; Max-Age=2592000", new_id()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&c) {
                resp.headers_mut().append("Set-Cookie", v);
            }
        }
    }
    Ok(resp)
}

/// `POST /users/logout`.
pub async fn logout(State(app): State<App>, Auth(c): Auth) -> ApiResult {
    app.lock().sessions.remove(&c.token);
    Ok(status_ok())
}

#[derive(Deserialize)]
struct CreateUserReq {
    #[serde(default)]
    username: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    nickname: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default)]
    position: String,
    #[serde(default)]
    props: serde_json::Map<String, Value>,
}

/// `User.IsValid` on the free-text fields: 400 `model.user.is_valid.<field>.app_error` when
/// longer than the server keeps (nickname, first and last name 64 runes, position 128).
fn check_user_fields(fields: &[(&str, Option<&String>)]) -> Result<(), ApiError> {
    for (field, value) in fields {
        let max = if *field == "position" { 128 } else { 64 };
        if value.is_some_and(|v| v.chars().count() > max) {
            return Err(ApiError::bad_request(
                &format!("model.user.is_valid.{field}.app_error"),
                "Invalid user field.",
            ));
        }
    }
    Ok(())
}

/// Props are a string map (`StringMap`): any other value is a malformed body.
fn check_props(props: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    if props.values().all(Value::is_string) {
        Ok(())
    } else {
        Err(ApiError::invalid_body("user"))
    }
}

fn check_new_username(st: &St, name: &str) -> Result<(), ApiError> {
    if !valid_username(name) {
        return Err(ApiError::bad_request(
            "model.user.is_valid.username.app_error",
            "Username must begin with a letter, and contain between 1 to 64 lowercase characters made up of numbers, letters, and the symbols '.', '-', and '_'.",
        ));
    }
    if st.user_by_name(name).is_some() {
        return Err(ApiError::bad_request(
            "app.user.save.username_exists.app_error",
            "An account with that username already exists.",
        ));
    }
    Ok(())
}

/// `POST /users`: admin, or anyone when the server is open.
pub async fn create(
    State(app): State<App>,
    MaybeAuth(caller): MaybeAuth,
    body: Bytes,
) -> ApiResult {
    let req: CreateUserReq = parse_json(&body, "user")?;
    let mut st = app.lock();
    let allowed = caller.as_ref().is_some_and(|c| c.is_admin) || st.config.enable_open_server;
    if !allowed {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "api.user.create_user.no_open_server",
            "This server does not allow open signups. Please speak with your Administrator to receive an invitation.",
        ));
    }
    let username = req.username.to_lowercase();
    check_new_username(&st, &username)?;
    let email = req.email.to_lowercase();
    if !email.contains('@') || email.len() > 128 {
        return Err(ApiError::bad_request(
            "model.user.is_valid.email.app_error",
            "Please enter a valid email.",
        ));
    }
    if st
        .users
        .values()
        .any(|u| u.email.eq_ignore_ascii_case(&email))
    {
        return Err(ApiError::bad_request(
            "app.user.save.email_exists.app_error",
            "An account with that email already exists.",
        ));
    }
    check_user_fields(&[
        ("nickname", Some(&req.nickname)),
        ("first_name", Some(&req.first_name)),
        ("last_name", Some(&req.last_name)),
        ("position", Some(&req.position)),
    ])?;
    check_props(&req.props)?;
    if req.password.chars().count() < MIN_PASSWORD || req.password.len() > 72 {
        return Err(ApiError::bad_request(
            "model.user.is_valid.pwd_length.app_error",
            "Your password must contain at least 8 characters.",
        ));
    }
    let now = st.now();
    let mut user = User::new(new_id(), &username, &email, &req.password, now);
    user.nickname = req.nickname;
    user.first_name = req.first_name;
    user.last_name = req.last_name;
    user.position = req.position;
    user.props = req.props;
    let v = user.to_json();
    let id = user.id.clone();
    st.users.insert(id.clone(), user);
    st.publish("new_user", json!({"user_id": id}), Broadcast::default());
    Ok(json_response(StatusCode::CREATED, v))
}

/// `GET /users/{id}` (`me` allowed).
pub async fn get(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    let st = app.lock();
    let u = st.users.get(&id).ok_or_else(|| {
        ApiError::not_found("app.user.missing_account.const", "Unable to find the user.")
    })?;
    Ok(json_response(StatusCode::OK, u.to_json()))
}

/// `GET /users/username/{name}`.
pub async fn by_username(
    State(app): State<App>,
    Auth(_c): Auth,
    Path(name): Path<String>,
) -> ApiResult {
    let st = app.lock();
    let u = st.user_by_name(&name).ok_or_else(|| {
        ApiError::not_found(
            "app.user.get_by_username.app_error",
            "Unable to find an existing account matching your username for this team. This team may require an invite from the team owner to join.",
        )
    })?;
    Ok(json_response(StatusCode::OK, u.to_json()))
}

/// `POST /users/ids`: unknown ids left out, empty list 400.
pub async fn by_ids(
    State(app): State<App>,
    Auth(_c): Auth,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult {
    let ids: Vec<String> = parse_json(&body, "user_ids")?;
    if ids.is_empty() {
        return Err(ApiError::invalid_body("user_ids"));
    }
    let since: i64 = query_map(q.as_deref())
        .get("since")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let st = app.lock();
    let out: Vec<Value> = ids
        .iter()
        .filter_map(|id| st.users.get(id))
        .filter(|u| u.update_at > since)
        .map(User::to_json)
        .collect();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

/// `POST /users/usernames`.
pub async fn by_usernames(State(app): State<App>, Auth(_c): Auth, body: Bytes) -> ApiResult {
    let names: Vec<String> = parse_json(&body, "usernames")?;
    if names.is_empty() {
        return Err(ApiError::invalid_body("usernames"));
    }
    let st = app.lock();
    let out: Vec<Value> = names
        .iter()
        .filter_map(|n| st.user_by_name(n))
        .map(User::to_json)
        .collect();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

/// `POST /users/status/ids`.
pub async fn statuses(State(app): State<App>, Auth(_c): Auth, body: Bytes) -> ApiResult {
    let ids: Vec<String> = parse_json(&body, "user_ids")?;
    if ids.is_empty() {
        return Err(ApiError::invalid_body("user_ids"));
    }
    let st = app.lock();
    let map = st.statuses(Some(&ids));
    let out: Vec<Value> = ids
        .iter()
        .map(|id| json!({"user_id": id, "status": map[id], "manual": false, "last_activity_at": 0}))
        .collect();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

/// `GET /users?in_channel=&in_team=&page=&per_page=`.
pub async fn list(State(app): State<App>, Auth(c): Auth, RawQuery(q): RawQuery) -> ApiResult {
    let q = query_map(q.as_deref());
    let (page, per_page) = paging(&q)?;
    let st = app.lock();
    let mut users: Vec<&User> = if let Some(ch) = q.get("in_channel").filter(|s| !s.is_empty()) {
        st.readable_channel(ch, &c)?;
        st.member_ids(ch)
            .iter()
            .filter_map(|u| st.users.get(u))
            .collect()
    } else if let Some(t) = q.get("in_team").filter(|s| !s.is_empty()) {
        if !c.is_admin && !st.in_team(t, &c.user_id) {
            return Err(ApiError::forbidden());
        }
        st.users.values().filter(|u| st.in_team(t, &u.id)).collect()
    } else {
        st.users.values().collect()
    };
    users.sort_by(|a, b| a.username.cmp(&b.username));
    let out: Vec<Value> = users
        .into_iter()
        .skip(page.saturating_mul(per_page))
        .take(per_page)
        .map(User::to_json)
        .collect();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

#[derive(Deserialize)]
struct TokenReq {
    #[serde(default)]
    description: String,
}

/// `POST /users/{id}/tokens`: admin (or a user holding `system_user_access_token`).
pub async fn create_token(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    let req: TokenReq = parse_json(&body, "description")?;
    let mut st = app.lock();
    let may = c.is_admin
        || (id == c.user_id
            && st.users[&c.user_id]
                .roles
                .split_whitespace()
                .any(|r| r == "system_user_access_token"));
    if !may {
        return Err(ApiError::forbidden());
    }
    if req.description.is_empty() {
        return Err(ApiError::invalid_body("description"));
    }
    let Some(user) = st.users.get(&id).cloned() else {
        return Err(ApiError::not_found(
            "app.user.missing_account.const",
            "Unable to find the user.",
        ));
    };
    if !user.is_bot && !st.config.enable_user_access_tokens {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "app.user_access_token.disabled",
            "Personal access tokens are disabled on this server. Please contact your system administrator for details.",
        ));
    }
    let tok = AccessToken {
        id: new_id(),
        token: new_id(),
        user_id: id.clone(),
        description: req.description,
        is_active: true,
    };
    st.sessions.insert(
        tok.token.clone(),
        Session {
            user_id: id,
            token_id: tok.id.clone(),
        },
    );
    let v = tok.to_json(true);
    st.tokens.insert(tok.id.clone(), tok);
    Ok(json_response(StatusCode::OK, v))
}

/// `GET /users/{id}/tokens` (without the secrets).
pub async fn list_tokens(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    if !c.is_admin && id != c.user_id {
        return Err(ApiError::forbidden());
    }
    let st = app.lock();
    let out: Vec<Value> = st
        .tokens
        .values()
        .filter(|t| t.user_id == id)
        .map(|t| t.to_json(false))
        .collect();
    Ok(json_response(StatusCode::OK, Value::Array(out)))
}

#[derive(Deserialize)]
struct BotReq {
    #[serde(default)]
    username: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: String,
}

/// `POST /bots` → 201 Bot.
pub async fn create_bot(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let req: BotReq = parse_json(&body, "bot")?;
    let mut st = app.lock();
    if !st.config.enable_bot_account_creation || c.is_bot {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "api.bot.create_disabled",
            "Bot creation has been disabled.",
        ));
    }
    if !c.is_admin {
        return Err(ApiError::forbidden());
    }
    let username = req.username.to_lowercase();
    check_new_username(&st, &username)?;
    let now = st.now();
    let mut user = User::new(
        new_id(),
        &username,
        &format!("{username}@localhost"),
        "",
        now,
    );
    user.is_bot = true;
    user.first_name = req.display_name;
    user.bot_description = req.description;
    user.bot_owner_id = c.user_id.clone();
    let v = user.bot_json();
    st.users.insert(user.id.clone(), user);
    Ok(json_response(StatusCode::CREATED, v))
}

/// `GET /bots/{id}`.
pub async fn get_bot(State(app): State<App>, Auth(_c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "bot_user_id")?;
    let st = app.lock();
    match st.users.get(&id).filter(|u| u.is_bot) {
        Some(u) => Ok(json_response(StatusCode::OK, u.bot_json())),
        None => Err(ApiError::not_found(
            "store.sql_bot.get.missing.app_error",
            "Bot does not exist.",
        )),
    }
}

/// A 1×1 transparent PNG, served as every profile image.
const AVATAR_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64, 0x60, 0xf8, 0x5f,
    0x0f, 0x00, 0x02, 0x87, 0x01, 0x80, 0xeb, 0x47, 0xba, 0x92, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45,
    0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// `GET /users/{id}/image`: a PNG for any known user.
pub async fn image(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    if !app.lock().users.contains_key(&id) {
        return Err(ApiError::not_found(
            "app.user.missing_account.const",
            "Unable to find the user.",
        ));
    }
    let st = app.lock();
    let (kind, data) = match st.users.get(&id).and_then(|u| u.picture.clone()) {
        Some(p) => (image_kind(&p).unwrap_or("image/png"), p),
        None => ("image/png", AVATAR_PNG.to_vec()),
    };
    drop(st);
    Ok(crate::http::bytes_response(kind, Vec::new(), data))
}

/// The MIME type of an image the server can decode (PNG, JPEG, GIF, BMP, WebP), by its magic.
fn image_kind(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if data.starts_with(b"BM") {
        Some("image/bmp")
    } else if data.len() > 12 && data.starts_with(b"RIFF") && &data[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// `SessionHasPermissionToUser`: the user themself, or a holder of `edit_other_users` (an admin).
fn may_edit_user(c: &crate::state::Caller, id: &str) -> bool {
    c.user_id == id || c.is_admin
}

fn missing_user() -> ApiError {
    ApiError::not_found("app.user.missing_account.const", "Unable to find the user.")
}

/// `POST /users/{id}/image` (multipart, field `image`) → 200 `{"status":"OK"}`; sets
/// `last_picture_update`. 400 `no_file` without the field, 400 `decode` for a non-image.
pub async fn set_image(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> ApiResult {
    use axum::extract::{FromRequest, Multipart};
    let id = path_user_id(&id, &c.user_id)?;
    if !may_edit_user(&c, &id) {
        return Err(ApiError::forbidden());
    }
    let parse_err = || {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api.user.upload_profile_user.parse.app_error",
            "Could not parse multipart form.",
        )
    };
    let mut mp = Multipart::from_request(req, &app)
        .await
        .map_err(|_| parse_err())?;
    let mut image = None;
    while let Some(field) = mp.next_field().await.map_err(|_| parse_err())? {
        if field.name() == Some("image") && image.is_none() {
            image = Some(field.bytes().await.map_err(|_| parse_err())?.to_vec());
        }
    }
    let Some(data) = image else {
        return Err(ApiError::bad_request(
            "api.user.upload_profile_user.no_file.app_error",
            "No file under 'image' in request.",
        ));
    };
    if data.len() > crate::http::MAX_FILE_SIZE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "api.user.upload_profile_user.too_large.app_error",
            "Unable to upload profile image. File is too large.",
        ));
    }
    if image_kind(&data).is_none() {
        return Err(ApiError::bad_request(
            "api.user.upload_profile_user.decode.app_error",
            "Could not decode profile image.",
        ));
    }
    let mut st = app.lock();
    let now = st.now();
    let user = st.users.get_mut(&id).ok_or_else(missing_user)?;
    user.picture = Some(data);
    user.last_picture_update = now;
    user.update_at = now;
    let v = user.to_json();
    st.publish("user_updated", json!({"user": v}), Broadcast::default());
    Ok(status_ok())
}

#[derive(Deserialize)]
struct PatchUserReq {
    username: Option<String>,
    nickname: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    position: Option<String>,
    locale: Option<String>,
    props: Option<serde_json::Map<String, Value>>,
}

/// `PUT /users/{id}/patch` → 200 User: the fields present replace the stored ones (`props`
/// whole). The user themself or an admin; a changed username follows the username rules.
pub async fn patch(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    let req: PatchUserReq = parse_json(&body, "user")?;
    if !may_edit_user(&c, &id) {
        return Err(ApiError::forbidden());
    }
    let mut st = app.lock();
    let current = st.users.get(&id).cloned().ok_or_else(missing_user)?;
    if let Some(name) = &req.username {
        let name = name.to_lowercase();
        if name != current.username {
            check_new_username(&st, &name)?;
        }
    }
    check_user_fields(&[
        ("nickname", req.nickname.as_ref()),
        ("first_name", req.first_name.as_ref()),
        ("last_name", req.last_name.as_ref()),
        ("position", req.position.as_ref()),
    ])?;
    if let Some(props) = &req.props {
        check_props(props)?;
    }
    let now = st.now();
    let user = st.users.get_mut(&id).ok_or_else(missing_user)?;
    if let Some(v) = req.username {
        user.username = v.to_lowercase();
    }
    if let Some(v) = req.nickname {
        user.nickname = v;
    }
    if let Some(v) = req.first_name {
        user.first_name = v;
    }
    if let Some(v) = req.last_name {
        user.last_name = v;
    }
    if let Some(v) = req.position {
        user.position = v;
    }
    if let Some(v) = req.locale {
        user.locale = v;
    }
    if let Some(v) = req.props {
        user.props = v;
    }
    user.update_at = now;
    let v = user.to_json();
    st.publish(
        "user_updated",
        json!({"user": v.clone()}),
        Broadcast::default(),
    );
    Ok(json_response(StatusCode::OK, v))
}

/// `DELETE /users/{id}` (deactivate) → 200 OK: an admin for anyone else (403 otherwise). The
/// user's sessions end; their access tokens stop working (a deactivated user has no session).
pub async fn deactivate(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    if id != c.user_id && !c.is_admin {
        return Err(ApiError::forbidden());
    }
    let mut st = app.lock();
    let now = st.now();
    let user = st.users.get_mut(&id).ok_or_else(missing_user)?;
    if user.delete_at == 0 {
        user.delete_at = now;
    }
    user.update_at = now;
    let v = user.to_json();
    st.sessions
        .retain(|_, s| s.user_id != id || !s.token_id.is_empty());
    st.publish("user_updated", json!({"user": v}), Broadcast::default());
    Ok(status_ok())
}

#[derive(Deserialize)]
struct ActiveReq {
    active: bool,
}

/// `PUT /users/{id}/active` `{"active":bool}` → 200 OK: deactivates (as `DELETE /users/{id}`)
/// or reactivates; an admin for anyone else.
pub async fn set_active(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let req: ActiveReq = parse_json(&body, "active")?;
    if !req.active {
        return deactivate(State(app), Auth(c), Path(id)).await;
    }
    let id = path_user_id(&id, &c.user_id)?;
    if !c.is_admin {
        return Err(ApiError::forbidden());
    }
    let mut st = app.lock();
    let now = st.now();
    let user = st.users.get_mut(&id).ok_or_else(missing_user)?;
    user.delete_at = 0;
    user.update_at = now;
    let v = user.to_json();
    st.publish("user_updated", json!({"user": v}), Broadcast::default());
    Ok(status_ok())
}

#[derive(Deserialize)]
struct RevokeReq {
    #[serde(default)]
    token_id: String,
}

/// `POST /users/tokens/revoke` `{"token_id"}` → 200 OK: the token is deleted and its session
/// ends. The owner or an admin; unknown → 404.
pub async fn revoke_token(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let req: RevokeReq = parse_json(&body, "token_id")?;
    let token_id =
        check_id(&req.token_id, "token_id").map_err(|_| ApiError::invalid_body("token_id"))?;
    let mut st = app.lock();
    let Some(tok) = st.tokens.get(&token_id).cloned() else {
        return Err(ApiError::not_found(
            "app.user_access_token.get_by_user.app_error",
            "Unable to get user access token.",
        ));
    };
    if tok.user_id != c.user_id && !c.is_admin {
        return Err(ApiError::forbidden());
    }
    st.tokens.remove(&token_id);
    st.sessions.retain(|_, s| s.token_id != token_id);
    Ok(status_ok())
}

#[derive(Deserialize)]
struct TypingReq {
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    parent_id: String,
}

/// `POST /users/{id}/typing`: publishes `typing` to the channel, minus the typist.
pub async fn typing(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let id = path_user_id(&id, &c.user_id)?;
    let req: TypingReq = parse_json(&body, "channel_id")?;
    if id != c.user_id && !c.is_admin {
        return Err(ApiError::forbidden());
    }
    let mut st = app.lock();
    if !st.in_channel(&req.channel_id, &id) {
        return Err(ApiError::forbidden());
    }
    let mut b = Broadcast::channel(&req.channel_id);
    b.omit_users = vec![id.clone()];
    st.publish(
        "typing",
        json!({"parent_id": req.parent_id, "user_id": id}),
        b,
    );
    Ok(status_ok())
}
