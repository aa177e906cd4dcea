//! Incoming webhooks: `POST /api/v4/hooks/incoming` to create one, and the unauthenticated
//! `POST /hooks/{id}` that posts as the hook's creator with `from_webhook` and the override props
//! (only when the server settings allow them), redirects by `channel`, converts Slack links and
//! splits long text.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::check_id;
use crate::error::{ApiError, ApiResult};
use crate::http::{Auth, bytes_response, json_response, parse_json, query_map};
use crate::ids::new_id;
use crate::model::{ChannelMember, IncomingHook, Post};
use crate::state::App;

#[derive(Deserialize)]
struct CreateReq {
    #[serde(default)]
    channel_id: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    icon_url: String,
    #[serde(default)]
    channel_locked: bool,
}

/// `POST /hooks/incoming` → 201 IncomingWebhook (team or system admins).
pub async fn create(State(app): State<App>, Auth(c): Auth, body: Bytes) -> ApiResult {
    let req: CreateReq = parse_json(&body, "incoming_webhook")?;
    let mut st = app.lock();
    let Some(ch) = st.channels.get(&req.channel_id).cloned() else {
        return Err(ApiError::bad_request(
            "api.incoming_webhook.invalid_channel.app_error",
            "Invalid channel.",
        ));
    };
    if !st.is_team_admin(&ch.team_id, &c) || !st.can_read_channel(&ch.id, &c) {
        return Err(ApiError::forbidden());
    }
    let hook = IncomingHook {
        id: new_id(),
        create_at: st.now(),
        user_id: c.user_id.clone(),
        channel_id: ch.id.clone(),
        team_id: ch.team_id.clone(),
        display_name: req.display_name,
        description: req.description,
        username: req.username,
        icon_url: req.icon_url,
        channel_locked: req.channel_locked,
    };
    let v = hook.to_json();
    st.hooks.insert(hook.id.clone(), hook);
    Ok(json_response(StatusCode::CREATED, v))
}

/// `GET /hooks/incoming/{id}`.
pub async fn get(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let id = check_id(&id, "hook_id")?;
    let st = app.lock();
    let hook = st.hooks.get(&id).ok_or_else(|| {
        ApiError::not_found(
            "app.webhooks.get_incoming.app_error",
            "Unable to get the webhook.",
        )
    })?;
    if !st.is_team_admin(&hook.team_id, &c) {
        return Err(ApiError::forbidden());
    }
    Ok(json_response(StatusCode::OK, hook.to_json()))
}

#[derive(Deserialize, Default)]
struct Payload {
    #[serde(default)]
    text: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    icon_url: String,
    #[serde(default)]
    icon_emoji: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    props: Option<Map<String, Value>>,
    #[serde(default)]
    attachments: Option<Vec<Value>>,
    #[serde(default, rename = "type")]
    type_: String,
}

/// Slack-style `<url|text>` → `[text](url)` and `<url>` → `url`.
fn convert_slack_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('>') {
            Some(end) if after[..end].contains("://") || after[..end].starts_with("mailto:") => {
                let inner = &after[..end];
                match inner.split_once('|') {
                    Some((url, label)) => out.push_str(&format!("[{label}]({url})")),
                    None => out.push_str(inner),
                }
                rest = &after[end + 1..];
            }
            _ => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Split into pieces of at most `max` characters.
fn split_text(text: &str, max: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return vec![text.to_owned()];
    }
    chars
        .chunks(max.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

fn hook_error(id: &str, message: &str) -> ApiError {
    ApiError::bad_request(id, message)
}

/// `POST /hooks/{id}` (no `/api/v4`, no auth) → 200 `text/plain` `ok`.
pub async fn execute(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let ctype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let payload: Payload = if ctype.starts_with("application/x-www-form-urlencoded") {
        let form = query_map(Some(&String::from_utf8_lossy(&body)));
        let raw = form.get("payload").cloned().unwrap_or_default();
        serde_json::from_str(&raw).map_err(|_| {
            hook_error(
                "api.webhook.incoming.error",
                "Could not decode the multipart payload of incoming webhook.",
            )
        })?
    } else {
        parse_json(&body, "payload").map_err(|e| {
            if e.status == StatusCode::PAYLOAD_TOO_LARGE {
                e
            } else {
                hook_error(
                    "api.webhook.incoming.error",
                    "Could not decode the payload of incoming webhook.",
                )
            }
        })?
    };
    let mut st = app.lock();
    let Some(hook) = st.hooks.get(&id).cloned() else {
        return Err(hook_error(
            "web.incoming_webhook.invalid.app_error",
            "Invalid webhook.",
        ));
    };
    let has_attachments = payload.attachments.as_ref().is_some_and(|a| !a.is_empty());
    if payload.text.is_empty() && !has_attachments {
        return Err(hook_error(
            "web.incoming_webhook.text.app_error",
            "No text specified.",
        ));
    }
    if payload.type_.starts_with("system_") {
        return Err(ApiError::invalid_param("type"));
    }
    let hook_channel_name = st.channels[&hook.channel_id].name.clone();
    let channel_id = if payload.channel.is_empty() || payload.channel == hook_channel_name {
        hook.channel_id.clone()
    } else if hook.channel_locked {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "web.incoming_webhook.channel_locked.app_error",
            "This webhook is not permitted to post to the requested channel.",
        ));
    } else if let Some(name) = payload.channel.strip_prefix('@') {
        let Some(other) = st.user_by_name(name).map(|u| u.id.clone()) else {
            return Err(hook_error(
                "web.incoming_webhook.user.app_error",
                "Couldn't find the user.",
            ));
        };
        let mut ids = [hook.user_id.clone(), other];
        ids.sort();
        let name = format!("{}__{}", ids[0], ids[1]);
        match st
            .channels
            .values()
            .find(|c| c.type_ == "D" && c.name == name)
        {
            Some(c) => c.id.clone(),
            None => {
                let ch = st.new_channel("", "D", &name, "", &hook.user_id);
                let cid = ch.id.clone();
                st.channels.insert(cid.clone(), ch);
                let now = st.now();
                for u in &ids {
                    st.members.entry(cid.clone()).or_default().insert(
                        u.clone(),
                        ChannelMember {
                            channel_id: cid.clone(),
                            user_id: u.clone(),
                            admin: false,
                            last_viewed_at: 0,
                            msg_count: 0,
                            last_update_at: now,
                        },
                    );
                }
                cid
            }
        }
    } else {
        let name = payload.channel.to_lowercase();
        match st
            .channels
            .values()
            .find(|c| c.team_id == hook.team_id && c.name == name && c.delete_at == 0)
        {
            Some(c) => c.id.clone(),
            None => {
                return Err(hook_error(
                    "web.incoming_webhook.channel.app_error",
                    "Couldn't find the channel.",
                ));
            }
        }
    };
    if st.channels[&channel_id].delete_at > 0 {
        return Err(hook_error(
            "api.post.create_post.can_not_post_to_deleted.error",
            "Can not post to deleted channel.",
        ));
    }
    let mut props = payload.props.unwrap_or_default();
    props.insert("from_webhook".into(), json!("true"));
    props.insert("webhook_display_name".into(), json!(hook.display_name));
    if st.config.enable_post_username_override {
        let name = [payload.username.as_str(), hook.username.as_str()]
            .into_iter()
            .find(|n| !n.is_empty())
            .unwrap_or("webhook");
        props.insert("override_username".into(), json!(name));
    }
    if st.config.enable_post_icon_override {
        let icon = [payload.icon_url.as_str(), hook.icon_url.as_str()]
            .into_iter()
            .find(|n| !n.is_empty());
        if let Some(icon) = icon {
            props.insert("override_icon_url".into(), json!(icon));
        }
        if !payload.icon_emoji.is_empty() {
            props.insert("override_icon_emoji".into(), json!(payload.icon_emoji));
        }
    }
    let mut type_ = payload.type_;
    if let Some(a) = payload.attachments.filter(|a| !a.is_empty()) {
        props.insert("attachments".into(), Value::Array(a));
        if type_.is_empty() {
            type_ = "slack_attachment".to_owned();
        }
    }
    let text = convert_slack_links(&payload.text);
    for part in split_text(&text, st.config.max_post_size) {
        let now = st.now();
        let post = Post {
            id: new_id(),
            create_at: now,
            update_at: now,
            edit_at: 0,
            delete_at: 0,
            is_pinned: false,
            user_id: hook.user_id.clone(),
            channel_id: channel_id.clone(),
            root_id: String::new(),
            original_id: String::new(),
            message: part,
            type_: type_.clone(),
            props: props.clone(),
            hashtags: String::new(),
            file_ids: Vec::new(),
            has_reactions: false,
            seq: 0,
        };
        let pid = st.insert_post(post);
        st.publish_posted(&pid, "", false);
    }
    Ok(bytes_response("text/plain", Vec::new(), b"ok".to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_links() {
        assert_eq!(
            convert_slack_links("see <https://x.org|X> and <https://y.org> a<b"),
            "see [X](https://x.org) and https://y.org a<b"
        );
    }

    #[test]
    fn splitting() {
        assert_eq!(split_text("abcde", 2), ["ab", "cd", "e"]);
        assert_eq!(split_text("ab", 2), ["ab"]);
    }
}
