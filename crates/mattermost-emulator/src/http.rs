//! HTTP plumbing: the router, the header/error/rate-limit middleware, token authentication,
//! and tolerant body/query parsing that answers bad input with AppError 400s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::header::{CONTENT_TYPE, HeaderValue};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api;
use crate::error::ApiError;
use crate::ids::new_id;
use crate::state::{App, Caller, version_id};
use crate::ws;

/// `ServiceSettings.MaximumPayloadSizeBytes`.
pub const MAX_JSON_BODY: usize = 300_000;
/// `FileSettings.MaxFileSize` (100 MiB).
pub const MAX_FILE_SIZE: usize = 100 * 1024 * 1024;

/// The whole router.
pub fn router(app: App) -> Router {
    let v4 = Router::new()
        .route("/system/ping", get(api::system::ping))
        .route("/config/client", get(api::system::client_config))
        .route("/websocket", get(ws::upgrade))
        .route("/websocket/", get(ws::upgrade))
        .route("/users/login", post(api::users::login))
        .route("/users/logout", post(api::users::logout))
        .route("/users", post(api::users::create).get(api::users::list))
        .route("/users/ids", post(api::users::by_ids))
        .route("/users/usernames", post(api::users::by_usernames))
        .route("/users/status/ids", post(api::users::statuses))
        .route("/users/username/{name}", get(api::users::by_username))
        .route(
            "/users/{id}",
            get(api::users::get).delete(api::users::deactivate),
        )
        .route("/users/{id}/patch", put(api::users::patch))
        .route("/users/{id}/active", put(api::users::set_active))
        .route("/users/tokens/revoke", post(api::users::revoke_token))
        .route(
            "/users/{id}/tokens",
            post(api::users::create_token).get(api::users::list_tokens),
        )
        .route("/users/{id}/teams", get(api::teams::of_user))
        .route("/users/{id}/channels", get(api::channels::of_user))
        .route(
            "/users/{id}/teams/{team_id}/channels",
            get(api::channels::of_user_in_team),
        )
        .route(
            "/users/{uid}/posts/{pid}/reactions/{name}",
            delete(api::reactions::remove),
        )
        .route("/bots", post(api::users::create_bot))
        .route("/bots/{id}", get(api::users::get_bot))
        .route("/teams", post(api::teams::create))
        .route("/teams/name/{name}", get(api::teams::by_name))
        .route(
            "/teams/name/{team}/channels/name/{name}",
            get(api::channels::by_team_name_and_name),
        )
        .route("/teams/{id}", get(api::teams::get))
        .route("/teams/{id}/members", post(api::teams::add_member))
        .route("/teams/{id}/channels", get(api::channels::public_in_team))
        .route(
            "/teams/{id}/channels/name/{name}",
            get(api::channels::by_name),
        )
        .route("/channels", post(api::channels::create))
        .route("/channels/direct", post(api::channels::create_direct))
        .route(
            "/channels/{id}",
            get(api::channels::get).delete(api::channels::archive),
        )
        .route("/channels/{id}/patch", put(api::channels::patch))
        .route(
            "/channels/{id}/members",
            post(api::channels::add_member).get(api::channels::list_members),
        )
        .route(
            "/channels/{id}/members/{uid}",
            get(api::channels::get_member).delete(api::channels::remove_member),
        )
        .route("/channels/{id}/posts", get(api::posts::for_channel))
        .route("/posts", post(api::posts::create))
        .route("/posts/ids", post(api::posts::by_ids))
        .route("/posts/ids/reactions", post(api::reactions::for_posts))
        .route("/channels/{id}/pinned", get(api::posts::pinned))
        .route(
            "/posts/{id}",
            get(api::posts::get)
                .put(api::posts::update)
                .delete(api::posts::delete),
        )
        .route("/posts/{id}/patch", put(api::posts::patch))
        .route("/posts/{id}/pin", post(api::posts::pin))
        .route("/posts/{id}/unpin", post(api::posts::unpin))
        .route("/commands/execute", post(api::posts::execute_command))
        .route("/posts/{id}/thread", get(api::posts::thread))
        .route("/posts/{id}/reactions", get(api::reactions::for_post))
        .route("/reactions", post(api::reactions::add))
        .route("/hooks/incoming", post(api::hooks::create))
        .route("/hooks/incoming/{id}", get(api::hooks::get))
        .route(
            "/users/{id}/image",
            get(api::users::image).post(api::users::set_image),
        )
        .route("/users/{id}/typing", post(api::users::typing))
        .route("/files", post(api::files::upload))
        .route("/files/{id}", get(api::files::download))
        .route("/files/{id}/info", get(api::files::info))
        .fallback(api_not_found);
    Router::new()
        .nest("/api/v4", v4)
        .route("/", get(root))
        .route("/hooks/{id}", post(api::hooks::execute))
        .fallback(api_not_found)
        .layer(DefaultBodyLimit::max(MAX_FILE_SIZE + 1024 * 1024))
        .layer(middleware::from_fn_with_state(app.clone(), common))
        .with_state(app)
}

async fn root() -> Response {
    (
        [(CONTENT_TYPE, "text/html")],
        "<!doctype html><title>Mattermost emulator</title>",
    )
        .into_response()
}

async fn api_not_found() -> ApiError {
    ApiError::not_found(
        "api.context.404.app_error",
        "Sorry, we could not find the page.",
    )
}

/// Headers on every response, request ids in error bodies, and the rate limiter.
async fn common(State(app): State<App>, req: Request, next: Next) -> Response {
    let request_id = new_id();
    let is_get = req.method() == Method::GET;
    let path = req.uri().path().to_owned();
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let limited = path.starts_with("/api/v4/") && !path.starts_with("/api/v4/websocket");
    let verdict = match (limited, ip) {
        (true, Some(ip)) => app
            .0
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_mut()
            .map(|rl| rl.check(ip, Instant::now())),
        _ => None,
    };
    let mut resp = if let Some(v) = verdict.filter(|v| !v.allowed) {
        let mut r = (StatusCode::TOO_MANY_REQUESTS, "limit exceeded\n").into_response();
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r.headers_mut()
            .insert("Retry-After", HeaderValue::from(v.retry_after_secs));
        r
    } else {
        next.run(req).await
    };
    let plain_rejection = path.starts_with("/api/v4/")
        && resp.status().is_client_error()
        && resp.status() != StatusCode::TOO_MANY_REQUESTS
        && resp.status() != StatusCode::METHOD_NOT_ALLOWED
        && resp.extensions().get::<ApiError>().is_none()
        && resp
            .headers()
            .get(CONTENT_TYPE)
            .is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if plain_rejection {
        let err = match resp.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::too_large(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
                ApiError::invalid_body("body")
            }
            StatusCode::NOT_FOUND => ApiError::not_found(
                "api.context.404.app_error",
                "Sorry, we could not find the page.",
            ),
            s if path.starts_with("/api/v4/websocket") => ApiError::new(
                s,
                "api.web_socket.connect.upgrade.app_error",
                "Failed to upgrade websocket connection.",
            ),
            s => ApiError::new(
                s,
                "api.context.invalid_url_param.app_error",
                "Invalid or missing parameter in request URL.",
            ),
        };
        let mut r = err.clone().into_response();
        r.extensions_mut().insert(err);
        resp = r;
    }
    if let Some(err) = resp.extensions_mut().remove::<ApiError>() {
        let status = resp.status();
        let headers = std::mem::take(resp.headers_mut());
        let mut r = (status, axum::Json(err.body(&request_id))).into_response();
        for (k, v) in &headers {
            if k != CONTENT_TYPE && k != axum::http::header::CONTENT_LENGTH {
                r.headers_mut().insert(k, v.clone());
            }
        }
        resp = r;
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("X-Request-Id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&version_id()) {
        h.insert("X-Version-Id", v);
    }
    if is_get {
        h.insert("Expires", HeaderValue::from_static("0"));
    }
    if let Some(v) = verdict {
        h.insert("X-RateLimit-Limit", HeaderValue::from(v.limit));
        h.insert("X-RateLimit-Remaining", HeaderValue::from(v.remaining));
        h.insert("X-RateLimit-Reset", HeaderValue::from(v.reset_secs));
    }
    resp
}

/// The token of a request: `Authorization: Bearer|Token <t>` (scheme case-insensitive).
pub fn token_from_headers(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let lower = auth.to_ascii_lowercase();
    if lower.starts_with("bearer ") || lower.starts_with("token ") {
        let idx = auth.find(' ')?;
        let t = auth[idx + 1..].trim();
        if !t.is_empty() {
            return Some(t.to_owned());
        }
    }
    None
}

/// An authenticated caller (401 otherwise).
pub struct Auth(pub Caller);

impl FromRequestParts<App> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        if let Some(t) = token_from_headers(&parts.headers) {
            return app
                .lock()
                .caller(&t)
                .map(Auth)
                .ok_or_else(ApiError::session_expired);
        }
        let q = query_map(parts.uri.query());
        if q.contains_key("access_token") {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "api.context.token_provided.app_error",
                "Session is not OAuth but token was provided in the query string.",
            ));
        }
        Err(ApiError::session_expired())
    }
}

/// An optional caller (anonymous allowed; a bad token is still a 401).
pub struct MaybeAuth(pub Option<Caller>);

impl FromRequestParts<App> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        match token_from_headers(&parts.headers) {
            Some(t) => app
                .lock()
                .caller(&t)
                .map(|c| MaybeAuth(Some(c)))
                .ok_or_else(ApiError::session_expired),
            None => Ok(MaybeAuth(None)),
        }
    }
}

/// Parse a JSON body: 413 over the limit, 400 `invalid_body_param` when malformed.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    if body.len() > MAX_JSON_BODY {
        return Err(ApiError::too_large());
    }
    serde_json::from_slice(body).map_err(|_| ApiError::invalid_body(what))
}

/// Decode `%xx` and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                if let Ok(b) = u8::from_str_radix(hex, 16) {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string as a map (last value wins).
pub fn query_map(q: Option<&str>) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.insert(percent_decode(k), percent_decode(v));
    }
    m
}

/// A JSON response with a status.
pub fn json_response(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// `200 {"status":"OK"}`.
pub fn status_ok() -> Response {
    json_response(StatusCode::OK, serde_json::json!({"status": "OK"}))
}

/// A raw body response.
pub fn bytes_response(
    content_type: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Response {
    let mut r = Response::new(Body::from(body));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_decodes() {
        let m = query_map(Some("a=1&b=x%20y+z&c&d=%zz"));
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "x y z");
        assert_eq!(m["c"], "");
        assert_eq!(m["d"], "%zz");
    }
}
