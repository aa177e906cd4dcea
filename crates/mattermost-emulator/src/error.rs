//! The `model.AppError` JSON error body and the error ids the emulator answers with.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error, rendered as the AppError JSON body (`request_id` is filled in by the middleware).
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The AppError `id`, the only field a client should match on.
    pub id: String,
    /// Human readable English message.
    pub message: String,
}

impl ApiError {
    /// Any status, id and message.
    pub fn new(status: StatusCode, id: &str, message: &str) -> Self {
        Self {
            status,
            id: id.to_owned(),
            message: message.to_owned(),
        }
    }
    /// 401 for a missing, invalid or expired token.
    pub fn session_expired() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "api.context.session_expired.app_error",
            "Invalid or expired session, please login again.",
        )
    }
    /// 403 for missing permission (also "does not exist" where the permission check runs first).
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "api.context.permissions.app_error",
            "You do not have the appropriate permissions.",
        )
    }
    /// 400 for a malformed or missing body field.
    pub fn invalid_body(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "api.context.invalid_body_param.app_error",
            &format!("Invalid or missing {param} in request body."),
        )
    }
    /// 400 for a malformed URL parameter.
    pub fn invalid_url(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "api.context.invalid_url_param.app_error",
            &format!("Invalid or missing {param} parameter in request URL."),
        )
    }
    /// 400 for a bad query or other parameter.
    pub fn invalid_param(param: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "api.context.invalid_param.app_error",
            &format!("Invalid {param} parameter."),
        )
    }
    /// 400 with a specific id.
    pub fn bad_request(id: &str, message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, id, message)
    }
    /// 404 with a specific id.
    pub fn not_found(id: &str, message: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, id, message)
    }
    /// 413 for a JSON body over `MaximumPayloadSizeBytes`.
    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "api.context.request_body_too_large.app_error",
            "The request body is too large.",
        )
    }

    /// The JSON body, with the request id when known.
    pub fn body(&self, request_id: &str) -> serde_json::Value {
        let mut v = json!({
            "id": self.id,
            "message": self.message,
            "detailed_error": "",
            "status_code": self.status.as_u16(),
        });
        if !request_id.is_empty() {
            v["request_id"] = json!(request_id);
        }
        v
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body(""))).into_response();
        // The header middleware re-renders the body with the request id.
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Handler result type.
pub type ApiResult = Result<Response, ApiError>;
