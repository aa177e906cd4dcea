//! The `/api/v4` REST handlers, one module per resource, plus the validation helpers they share.

pub mod channels;
pub mod files;
pub mod hooks;
pub mod posts;
pub mod reactions;
pub mod system;
pub mod teams;
pub mod users;

use crate::error::ApiError;
use crate::ids::is_valid_id;

/// Resolve `me` to the caller and check an id path parameter (400 if malformed).
pub fn path_user_id(raw: &str, me: &str) -> Result<String, ApiError> {
    if raw == "me" {
        return Ok(me.to_owned());
    }
    check_id(raw, "user_id")
}

/// A 26-character id from the URL, else 400 `invalid_url_param`.
pub fn check_id(raw: &str, what: &str) -> Result<String, ApiError> {
    if is_valid_id(raw) {
        Ok(raw.to_owned())
    } else {
        Err(ApiError::invalid_url(what))
    }
}

/// `page`/`per_page` query parameters (per_page default 60, clamped to 200).
pub fn paging(q: &std::collections::HashMap<String, String>) -> Result<(usize, usize), ApiError> {
    let page = match q.get("page") {
        Some(p) if !p.is_empty() => p
            .parse::<usize>()
            .map_err(|_| ApiError::invalid_url("page"))?,
        _ => 0,
    };
    let per_page = match q.get("per_page") {
        Some(p) if !p.is_empty() => p
            .parse::<usize>()
            .map_err(|_| ApiError::invalid_url("per_page"))?,
        _ => 60,
    };
    Ok((page, per_page.min(200)))
}
