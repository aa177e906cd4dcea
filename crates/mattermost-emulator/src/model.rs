//! Stored records (users, teams, channels, members, posts, reactions, files, tokens) and their
//! wire JSON, field for field as the server's `model` package renders them.

use serde_json::{Map, Value, json};

/// A user or bot account.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub create_at: i64,
    pub update_at: i64,
    pub delete_at: i64,
    pub username: String,
    pub password: String,
    pub email: String,
    pub nickname: String,
    pub first_name: String,
    pub last_name: String,
    pub position: String,
    pub roles: String,
    pub locale: String,
    pub is_bot: bool,
    pub bot_description: String,
    pub bot_owner_id: String,
    pub failed_attempts: u32,
    pub last_password_update: i64,
    /// `props`: free string map (`PUT /users/{id}/patch` replaces it whole).
    pub props: Map<String, Value>,
    /// `last_picture_update`: set by `POST /users/{id}/image` (0: the default picture).
    pub last_picture_update: i64,
    /// The uploaded profile image, if any.
    pub picture: Option<Vec<u8>>,
}

impl User {
    /// A new active user with defaults.
    pub fn new(id: String, username: &str, email: &str, password: &str, now: i64) -> Self {
        Self {
            id,
            create_at: now,
            update_at: now,
            delete_at: 0,
            username: username.to_owned(),
            password: password.to_owned(),
            email: email.to_owned(),
            nickname: String::new(),
            first_name: String::new(),
            last_name: String::new(),
            position: String::new(),
            roles: "system_user".to_owned(),
            locale: "en".to_owned(),
            is_bot: false,
            bot_description: String::new(),
            bot_owner_id: String::new(),
            failed_attempts: 0,
            last_password_update: now,
            props: Map::new(),
            last_picture_update: 0,
            picture: None,
        }
    }

    /// Whether the user has the `system_admin` role.
    pub fn is_admin(&self) -> bool {
        self.roles.split_whitespace().any(|r| r == "system_admin")
    }

    /// The sanitized `User` JSON (no password, no auth data, omitempty fields left out).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "create_at": self.create_at,
            "update_at": self.update_at,
            "delete_at": self.delete_at,
            "username": self.username,
            "auth_data": "",
            "auth_service": "",
            "email": self.email,
            "email_verified": true,
            "nickname": self.nickname,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "position": self.position,
            "roles": self.roles,
            "notify_props": {
                "channel": "true", "comments": "never", "desktop": "mention", "desktop_sound": "true",
                "email": "true", "first_name": "false", "mention_keys": "", "push": "mention",
                "push_status": "online"
            },
            "last_password_update": self.last_password_update,
            "locale": self.locale,
            "timezone": {"automaticTimezone": "", "manualTimezone": "", "useAutomaticTimezone": "true"},
            "disable_welcome_email": false,
        });
        if !self.props.is_empty() {
            v["props"] = Value::Object(self.props.clone());
        }
        if self.last_picture_update > 0 {
            v["last_picture_update"] = json!(self.last_picture_update);
        }
        if self.is_bot {
            v["is_bot"] = json!(true);
            if !self.bot_description.is_empty() {
                v["bot_description"] = json!(self.bot_description);
            }
        }
        v
    }

    /// The `Bot` JSON for a bot account.
    pub fn bot_json(&self) -> Value {
        json!({
            "user_id": self.id,
            "username": self.username,
            "display_name": self.first_name,
            "description": self.bot_description,
            "owner_id": self.bot_owner_id,
            "create_at": self.create_at,
            "update_at": self.update_at,
            "delete_at": self.delete_at,
        })
    }
}

/// A session (password login) or personal access / bot token.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    /// Id of the `UserAccessToken` it comes from, empty for a login session.
    pub token_id: String,
}

/// A personal access token record.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub id: String,
    pub token: String,
    pub user_id: String,
    pub description: String,
    pub is_active: bool,
}

impl AccessToken {
    /// JSON as listed later: without `token`.
    pub fn to_json(&self, with_token: bool) -> Value {
        let mut v = json!({
            "id": self.id, "user_id": self.user_id, "description": self.description,
            "is_active": self.is_active,
        });
        if with_token {
            v["token"] = json!(self.token);
        }
        v
    }
}

/// A team.
#[derive(Debug, Clone)]
pub struct Team {
    pub id: String,
    pub create_at: i64,
    pub update_at: i64,
    pub delete_at: i64,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub type_: String,
    pub allow_open_invite: bool,
    pub invite_id: String,
    pub email: String,
}

impl Team {
    /// `Team` JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "create_at": self.create_at, "update_at": self.update_at,
            "delete_at": self.delete_at, "display_name": self.display_name, "name": self.name,
            "description": self.description, "email": self.email, "type": self.type_,
            "company_name": "", "allowed_domains": "", "invite_id": self.invite_id,
            "allow_open_invite": self.allow_open_invite, "scheme_id": null,
            "group_constrained": null, "policy_id": null, "cloud_limits_archived": false,
        })
    }
}

/// `TeamMember` JSON.
pub fn team_member_json(team_id: &str, user_id: &str, admin: bool) -> Value {
    json!({
        "team_id": team_id, "user_id": user_id,
        "roles": if admin { "team_user team_admin" } else { "team_user" },
        "delete_at": 0, "scheme_guest": false, "scheme_user": true, "scheme_admin": admin,
        "explicit_roles": "",
    })
}

/// A channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub id: String,
    pub create_at: i64,
    pub update_at: i64,
    pub delete_at: i64,
    pub team_id: String,
    pub type_: String,
    pub display_name: String,
    pub name: String,
    pub header: String,
    pub purpose: String,
    pub last_post_at: i64,
    pub last_root_post_at: i64,
    pub total_msg_count: i64,
    pub total_msg_count_root: i64,
    pub creator_id: String,
}

impl Channel {
    /// `Channel` JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "create_at": self.create_at, "update_at": self.update_at,
            "delete_at": self.delete_at, "team_id": self.team_id, "type": self.type_,
            "display_name": self.display_name, "name": self.name, "header": self.header,
            "purpose": self.purpose, "last_post_at": self.last_post_at,
            "total_msg_count": self.total_msg_count, "extra_update_at": 0,
            "creator_id": self.creator_id, "scheme_id": null, "props": null,
            "group_constrained": null, "shared": null,
            "total_msg_count_root": self.total_msg_count_root, "policy_id": null,
            "last_root_post_at": self.last_root_post_at,
        })
    }

    /// Direct or group message channel.
    pub fn is_dm_or_gm(&self) -> bool {
        self.type_ == "D" || self.type_ == "G"
    }
}

/// A channel membership.
#[derive(Debug, Clone)]
pub struct ChannelMember {
    pub channel_id: String,
    pub user_id: String,
    pub admin: bool,
    pub last_viewed_at: i64,
    pub msg_count: i64,
    pub last_update_at: i64,
}

impl ChannelMember {
    /// `ChannelMember` JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "channel_id": self.channel_id, "user_id": self.user_id,
            "roles": if self.admin { "channel_user channel_admin" } else { "channel_user" },
            "last_viewed_at": self.last_viewed_at, "msg_count": self.msg_count,
            "mention_count": 0, "mention_count_root": 0, "urgent_mention_count": 0,
            "msg_count_root": 0,
            "notify_props": {"desktop": "default", "email": "default",
                "ignore_channel_mentions": "default", "mark_unread": "all", "push": "default"},
            "last_update_at": self.last_update_at, "scheme_guest": false, "scheme_user": true,
            "scheme_admin": self.admin, "explicit_roles": "",
        })
    }
}

/// A post row; edit-history rows are posts too (`original_id` set, `delete_at > 0`).
#[derive(Debug, Clone)]
pub struct Post {
    pub id: String,
    pub create_at: i64,
    pub update_at: i64,
    pub edit_at: i64,
    pub delete_at: i64,
    pub is_pinned: bool,
    pub user_id: String,
    pub channel_id: String,
    pub root_id: String,
    pub original_id: String,
    pub message: String,
    pub type_: String,
    pub props: Map<String, Value>,
    pub hashtags: String,
    pub file_ids: Vec<String>,
    pub has_reactions: bool,
    /// Insertion order, to break `create_at` ties.
    pub seq: u64,
}

impl Post {
    /// Whether this is a `system_*` post.
    pub fn is_system(&self) -> bool {
        self.type_.starts_with("system_")
    }
}

/// A reaction.
#[derive(Debug, Clone)]
pub struct Reaction {
    pub user_id: String,
    pub post_id: String,
    pub emoji_name: String,
    pub create_at: i64,
    pub update_at: i64,
    pub channel_id: String,
}

impl Reaction {
    /// `Reaction` JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "user_id": self.user_id, "post_id": self.post_id, "emoji_name": self.emoji_name,
            "create_at": self.create_at, "update_at": self.update_at, "delete_at": 0,
            "remote_id": "", "channel_id": self.channel_id,
        })
    }
}

/// An uploaded file.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub id: String,
    pub user_id: String,
    pub channel_id: String,
    pub post_id: String,
    pub create_at: i64,
    pub name: String,
    pub extension: String,
    pub mime_type: String,
    pub data: std::sync::Arc<Vec<u8>>,
}

impl FileInfo {
    /// Whether the MIME type is an image.
    pub fn is_image(&self) -> bool {
        self.mime_type.starts_with("image/")
    }

    /// `FileInfo` JSON (`post_id` omitted until attached; `width`/`height` for PNG, GIF, JPEG).
    pub fn to_json(&self) -> Value {
        let dims = if self.is_image() {
            image_size(&self.data)
        } else {
            None
        };
        let mut v = json!({
            "id": self.id, "user_id": self.user_id, "channel_id": self.channel_id,
            "create_at": self.create_at, "update_at": self.create_at, "delete_at": 0,
            "name": self.name, "extension": self.extension, "size": self.data.len(),
            "mime_type": self.mime_type, "has_preview_image": dims.is_some(), "remote_id": "",
            "archived": false,
        });
        if let Some((w, h)) = dims {
            v["width"] = json!(w);
            v["height"] = json!(h);
        }
        if !self.post_id.is_empty() {
            v["post_id"] = json!(self.post_id);
        }
        v
    }
}

/// MIME type from a file extension (a small table; unknown → `application/octet-stream`).
pub fn mime_for(ext: &str) -> &'static str {
    match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "svg" => "image/svg+xml",
        "txt" | "log" => "text/plain",
        "md" => "text/markdown",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "mp4" => "video/mp4",
        _ => "application/octet-stream",
    }
}

/// An incoming webhook.
#[derive(Debug, Clone)]
pub struct IncomingHook {
    pub id: String,
    pub create_at: i64,
    pub user_id: String,
    pub channel_id: String,
    pub team_id: String,
    pub display_name: String,
    pub description: String,
    pub username: String,
    pub icon_url: String,
    pub channel_locked: bool,
}

impl IncomingHook {
    /// `IncomingWebhook` JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id, "create_at": self.create_at, "update_at": self.create_at,
            "delete_at": 0, "user_id": self.user_id, "channel_id": self.channel_id,
            "team_id": self.team_id, "display_name": self.display_name,
            "description": self.description, "username": self.username,
            "icon_url": self.icon_url, "channel_locked": self.channel_locked,
        })
    }
}

/// Width and height of a PNG, GIF or baseline/progressive JPEG, from its header.
pub fn image_size(d: &[u8]) -> Option<(u32, u32)> {
    let be16 = |i: usize| -> Option<u32> {
        Some(u32::from(u16::from_be_bytes([*d.get(i)?, *d.get(i + 1)?])))
    };
    if d.starts_with(b"\x89PNG\r\n\x1a\n") && d.len() >= 24 {
        let w = u32::from_be_bytes([d[16], d[17], d[18], d[19]]);
        let h = u32::from_be_bytes([d[20], d[21], d[22], d[23]]);
        return Some((w, h));
    }
    if (d.starts_with(b"GIF87a") || d.starts_with(b"GIF89a")) && d.len() >= 10 {
        return Some((
            u32::from(u16::from_le_bytes([d[6], d[7]])),
            u32::from(u16::from_le_bytes([d[8], d[9]])),
        ));
    }
    if d.starts_with(&[0xff, 0xd8]) {
        let mut i = 2;
        while i + 4 <= d.len() {
            if d[i] != 0xff {
                return None;
            }
            let marker = d[i + 1];
            let len = be16(i + 2)? as usize;
            if matches!(marker, 0xc0..=0xc3 | 0xc5..=0xc7 | 0xc9..=0xcb | 0xcd..=0xcf) {
                return Some((be16(i + 7)?, be16(i + 5)?));
            }
            i += 2 + len;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::image_size;

    #[test]
    fn image_sizes() {
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(&[0, 0, 2, 128, 0, 0, 1, 224]);
        assert_eq!(image_size(&png), Some((640, 480)));
        assert_eq!(image_size(b"GIF89a\x10\x00\x20\x00"), Some((16, 32)));
        let jpeg = [
            0xff, 0xd8, 0xff, 0xe0, 0, 4, 0, 0, 0xff, 0xc0, 0, 11, 8, 0, 30, 0, 40, 3,
        ];
        assert_eq!(image_size(&jpeg), Some((40, 30)));
        assert_eq!(image_size(b"not an image"), None);
        assert_eq!(image_size(&[0xff, 0xd8, 0xff]), None);
    }
}
