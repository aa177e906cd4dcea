//! Files: multipart (or raw-body) upload, download and info, with the channel permission checks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::check_id;
use crate::error::{ApiError, ApiResult};
use crate::http::{Auth, MAX_FILE_SIZE, bytes_response, json_response, query_map};
use crate::ids::new_id;
use crate::model::{FileInfo, mime_for};
use crate::state::{App, Caller};

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "api.file.upload_file.too_large_detailed.app_error",
        "Unable to upload file. File is too large.",
    )
}

fn bad_multipart() -> ApiError {
    ApiError::bad_request(
        "api.file.upload_file.read_request.app_error",
        "Unable to upload file(s). Error reading or parsing request data.",
    )
}

fn store(
    app: &App,
    c: &Caller,
    channel_id: &str,
    name: &str,
    data: Vec<u8>,
) -> Result<Value, ApiError> {
    if data.len() > MAX_FILE_SIZE {
        return Err(too_large());
    }
    let mut st = app.lock();
    if !st.can_post(channel_id, c) {
        return Err(ApiError::forbidden());
    }
    let name = name.rsplit(['/', '\\']).next().unwrap_or(name).to_owned();
    let extension = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_lowercase())
        .unwrap_or_default();
    let now = st.now();
    let fi = FileInfo {
        id: new_id(),
        user_id: c.user_id.clone(),
        channel_id: channel_id.to_owned(),
        post_id: String::new(),
        create_at: now,
        mime_type: mime_for(&extension).to_owned(),
        name,
        extension,
        data: Arc::new(data),
    };
    let v = fi.to_json();
    st.files.insert(fi.id.clone(), fi);
    Ok(v)
}

/// `POST /files` → 201 `{file_infos, client_ids}`.
pub async fn upload(
    State(app): State<App>,
    Auth(c): Auth,
    RawQuery(q): RawQuery,
    req: Request,
) -> ApiResult {
    let q = query_map(q.as_deref());
    let is_multipart = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut infos = Vec::new();
    let mut client_ids = Vec::new();
    if is_multipart {
        let mut mp = Multipart::from_request(req, &app)
            .await
            .map_err(|_| bad_multipart())?;
        let mut channel_id = q.get("channel_id").cloned().unwrap_or_default();
        while let Some(field) = mp.next_field().await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                bad_multipart()
            }
        })? {
            match field.name().unwrap_or("") {
                "channel_id" => channel_id = field.text().await.map_err(|_| bad_multipart())?,
                "client_ids" => client_ids.push(field.text().await.map_err(|_| bad_multipart())?),
                "files" => {
                    let name = field.file_name().unwrap_or("file").to_owned();
                    if channel_id.is_empty() {
                        return Err(ApiError::invalid_param("channel_id"));
                    }
                    let data = field.bytes().await.map_err(|e| {
                        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                            too_large()
                        } else {
                            bad_multipart()
                        }
                    })?;
                    infos.push(store(&app, &c, &channel_id, &name, data.to_vec())?);
                }
                _ => {}
            }
        }
    } else {
        let channel_id = q.get("channel_id").cloned().unwrap_or_default();
        let filename = q.get("filename").cloned().unwrap_or_default();
        if channel_id.is_empty() {
            return Err(ApiError::invalid_param("channel_id"));
        }
        if filename.is_empty() {
            return Err(ApiError::invalid_param("filename"));
        }
        let body = Bytes::from_request(req, &app)
            .await
            .map_err(|_| too_large())?;
        if body.is_empty() {
            return Err(ApiError::invalid_param("Content-Length"));
        }
        infos.push(store(&app, &c, &channel_id, &filename, body.to_vec())?);
    }
    if infos.is_empty() {
        return Err(bad_multipart());
    }
    Ok(json_response(
        StatusCode::CREATED,
        json!({"file_infos": infos, "client_ids": client_ids}),
    ))
}

/// The file, if the caller may read it (uploader, or reader of the post's channel).
fn readable(app: &App, c: &Caller, id: &str) -> Result<FileInfo, ApiError> {
    let id = check_id(id, "file_id")?;
    let st = app.lock();
    let fi = st.files.get(&id).ok_or_else(|| {
        ApiError::not_found(
            "app.file_info.get.app_error",
            "Unable to get the file info.",
        )
    })?;
    let ok = fi.user_id == c.user_id
        || c.is_admin
        || (!fi.post_id.is_empty() && st.can_read_channel(&fi.channel_id, c));
    if !ok {
        return Err(ApiError::forbidden());
    }
    Ok(fi.clone())
}

/// `GET /files/{id}` (binary).
pub async fn download(
    State(app): State<App>,
    Auth(c): Auth,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult {
    let fi = readable(&app, &c, &id)?;
    let q = query_map(q.as_deref());
    let disposition =
        if q.get("download").is_some_and(|v| v == "1" || v == "true") || !fi.is_image() {
            "attachment"
        } else {
            "inline"
        };
    Ok(bytes_response(
        &fi.mime_type,
        vec![(
            "Content-Disposition",
            format!("{disposition}; filename=\"{}\"", fi.name.replace('"', "")),
        )],
        fi.data.as_ref().clone(),
    ))
}

/// `GET /files/{id}/info`.
pub async fn info(State(app): State<App>, Auth(c): Auth, Path(id): Path<String>) -> ApiResult {
    let fi = readable(&app, &c, &id)?;
    Ok(json_response(StatusCode::OK, fi.to_json()))
}
