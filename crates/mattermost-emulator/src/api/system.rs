//! `GET /system/ping` and `GET /config/client`.

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::error::{ApiError, ApiResult};
use crate::http::{MaybeAuth, json_response, query_map};
use crate::state::{App, BUILD, VERSION};

/// Health check, no authentication.
pub async fn ping() -> ApiResult {
    Ok(json_response(
        StatusCode::OK,
        json!({"status": "OK", "AndroidLatestVersion": "", "AndroidMinVersion": "",
               "IosLatestVersion": "", "IosMinVersion": ""}),
    ))
}

/// The flat string map of client config (`format=old` only).
pub async fn client_config(
    State(app): State<App>,
    MaybeAuth(caller): MaybeAuth,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let q = query_map(q.as_deref());
    match q.get("format").map(String::as_str) {
        None | Some("") => {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "api.config.client.old_format.app_error",
                "New format for the client configuration is not supported yet. Please specify format=old in the query string.",
            ));
        }
        Some("old") => {}
        Some(_) => return Err(ApiError::invalid_param("format")),
    }
    let cfg = app.lock().config.clone();
    let b = |x: bool| Value::String(if x { "true" } else { "false" }.to_owned());
    let mut m = Map::new();
    m.insert("Version".into(), json!(VERSION));
    m.insert("BuildNumber".into(), json!(BUILD));
    m.insert("BuildHash".into(), json!("emulator"));
    m.insert("SiteName".into(), json!("Mattermost"));
    m.insert("SiteURL".into(), json!(""));
    m.insert("DiagnosticsEnabled".into(), b(false));
    m.insert("EnableSignInWithEmail".into(), b(true));
    m.insert("EnableSignInWithUsername".into(), b(true));
    m.insert("EnableSignUpWithEmail".into(), b(true));
    m.insert("EnableOpenServer".into(), b(cfg.enable_open_server));
    m.insert("TelemetryId".into(), json!(""));
    if caller.is_some() {
        m.insert(
            "EnablePostUsernameOverride".into(),
            b(cfg.enable_post_username_override),
        );
        m.insert(
            "EnablePostIconOverride".into(),
            b(cfg.enable_post_icon_override),
        );
        m.insert(
            "EnableUserAccessTokens".into(),
            b(cfg.enable_user_access_tokens),
        );
        m.insert(
            "EnableBotAccountCreation".into(),
            b(cfg.enable_bot_account_creation),
        );
        m.insert(
            "MaxFileSize".into(),
            json!(crate::http::MAX_FILE_SIZE.to_string()),
        );
        m.insert("MaxPostSize".into(), json!(cfg.max_post_size.to_string()));
        m.insert("EnableFileAttachments".into(), b(true));
        m.insert("CollapsedThreads".into(), json!("always_on"));
        m.insert("EnableReliableWebSockets".into(), b(true));
        m.insert("ExperimentalEnableHardenedMode".into(), b(false));
    }
    Ok(json_response(StatusCode::OK, Value::Object(m)))
}
