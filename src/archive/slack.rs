//! `tribridge export --format slack`: a gateway's archive as a Slack export ZIP, the format that
//! tools which import Slack workspaces read: `users.json`, `channels.json`, and one folder per
//! channel holding one `YYYY-MM-DD.json` per day (UTC), each an array of Slack message objects.
//!
//! The gateway's bridged channels are one conversation, so they are one Slack channel, named
//! after the gateway; each message says where it was really said in a `tribridge` field that
//! Slack readers ignore. People are Slack users with ids derived from their network and id
//! (`U` and 10 hex digits of a SHA-256), their network id in the profile's `title`. Edits give
//! `edited`, reactions `reactions`, threads `thread_ts` / `reply_count` / `replies`, a deleted
//! message is a `tombstone`; files stored by the bridge are in the ZIP under
//! `__uploads/<file id>/<name>`, which the message's `url_private` names.
//!
//! Written as it is read: a day's file is closed before the next is opened and the files that
//! day's messages carry are copied in after it, so memory holds one message at a time (plus the
//! thread index and the list of people, see [`super::conversation`]).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Seek, Write};
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use zip::write::SimpleFileOptions;

use super::conversation::{self, PersonRef, Post, day_of, safe_name};
use super::export::{ExportError, Selection};

/// The Slack user id of a person: `U` and 10 upper-case hex digits of SHA-256(network NUL id).
#[must_use]
pub fn user_id(network: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{network}\0{id}").as_bytes());
    let hex = digest[..5].iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02X}");
        out
    });
    format!("U{hex}")
}

/// A Slack `ts` for a message: its time in seconds with six decimals, the last three digits
/// taken from its id so that two messages of the same millisecond stay apart.
#[must_use]
pub fn ts(created_ms: i64, message_id: i64) -> String {
    format!(
        "{}.{:03}{:03}",
        created_ms.div_euclid(1000),
        created_ms.rem_euclid(1000),
        message_id.rem_euclid(1000)
    )
}

/// The Slack channel name of a gateway: lower case, `[a-z0-9_-]`.
#[must_use]
pub fn channel_name(gateway: &str) -> String {
    let name: String = gateway
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "gateway".to_owned()
    } else {
        name
    }
}

/// Slack escapes `&`, `<` and `>` in a message's text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn uid(person: &PersonRef) -> String {
    user_id(&person.0, &person.1)
}

fn file_id(hash: &str) -> String {
    format!("F{}", hash.get(..12).unwrap_or(hash).to_uppercase())
}

/// The Slack message object of a post; the files it carries that are in the store are pushed
/// to `files` as (hash, path in the ZIP).
fn message(post: &Post, files: &mut Vec<(String, String)>) -> Value {
    let user = user_id(&post.author.network, &post.author.id);
    let own_ts = ts(post.created_ms, post.message_id);
    let mut m = json!({
        "type": "message",
        "user": user,
        "user_name": post.author.name,
        "user_profile": { "real_name": post.author.name, "display_name": post.author.name, "name": post.author.name },
        "text": slack_escape(&post.text),
        "ts": own_ts,
        "tribridge": {
            "message_id": post.message_id,
            "network": post.network,
            "channel": post.channel,
            "protocol": post.protocol,
            "remote_id": post.remote_id,
            "author_id": post.author.id,
            "chain_hash": post.chain_hash,
        },
    });
    if post.style == crate::model::TextStyle::Action {
        m["subtype"] = json!("me_message");
    }
    if let Some(((network, id), at)) = &post.edited {
        m["edited"] = json!({ "user": user_id(network, id), "ts": ts(*at, 0) });
    }
    if post.deleted.is_some() {
        m["subtype"] = json!("tombstone");
        m["hidden"] = json!(true);
        m["text"] = json!("This message was deleted.");
    }
    if let Some((root, root_ms)) = post.thread_root {
        m["thread_ts"] = json!(ts(root_ms, root));
    }
    if !post.replies.is_empty() {
        let mut reply_users: Vec<String> = Vec::new();
        for (_, who, _) in &post.replies {
            let u = uid(who);
            if !reply_users.contains(&u) {
                reply_users.push(u);
            }
        }
        let replies: Vec<Value> = post
            .replies
            .iter()
            .map(|(id, who, at)| json!({ "user": uid(who), "ts": ts(*at, *id) }))
            .collect();
        let latest = post
            .replies
            .last()
            .map(|(id, _, at)| ts(*at, *id))
            .unwrap_or_default();
        m["thread_ts"] = json!(own_ts);
        m["reply_count"] = json!(post.replies.len());
        m["reply_users_count"] = json!(reply_users.len());
        m["reply_users"] = json!(reply_users);
        m["latest_reply"] = json!(latest);
        m["replies"] = json!(replies);
    }
    if !post.reactions.is_empty() {
        let reactions: Vec<Value> = post
            .reactions
            .iter()
            .map(|(key, who)| {
                json!({
                    "name": key.trim_matches(':'),
                    "users": who.iter().map(uid).collect::<Vec<_>>(),
                    "count": who.len(),
                })
            })
            .collect();
        m["reactions"] = json!(reactions);
    }
    if !post.attachments.is_empty() && post.deleted.is_none() {
        let listed: Vec<Value> = post
            .attachments
            .iter()
            .map(|a| {
                let mut f = json!({
                    "name": a.name,
                    "title": a.name,
                    "mimetype": a.mime,
                    "filetype": Path::new(&a.name).extension().and_then(|e| e.to_str()).unwrap_or("binary"),
                    "size": a.size,
                    "mode": "hosted",
                });
                if let Some(hash) = &a.stored {
                    let id = file_id(hash);
                    let path = format!("__uploads/{id}/{}", safe_name(&a.name));
                    f["id"] = json!(id);
                    f["url_private"] = json!(path);
                    f["url_private_download"] = json!(path);
                    files.push((hash.clone(), path));
                } else {
                    f["mode"] = json!("external");
                }
                f
            })
            .collect();
        m["files"] = json!(listed);
        if m.get("subtype").is_none() {
            m["subtype"] = json!("file_share");
        }
        m["upload"] = json!(true);
    }
    m
}

/// Write the selection as a Slack export ZIP to `out`, the stored files read from
/// `files_dir`; returns how many messages it holds. `progress` is called after each.
///
/// # Errors
/// The store's or the output's; a stored file that cannot be read is logged and left out.
pub fn slack<W: Write + Seek>(
    history: &mut dyn crate::store::history::HistoryRead,
    selection: &Selection,
    bridged: &[(String, String)],
    files_dir: &Path,
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<u64, ExportError> {
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    let mut zip = zip::ZipWriter::new(out);
    let people = conversation::people(history, selection)?;
    let name = channel_name(&selection.gateway);

    zip.start_file("users.json", options).map_err(zip_error)?;
    let users: Vec<Value> = people
        .iter()
        .map(|p| {
            json!({
                "id": user_id(&p.network, &p.id),
                "name": p.name,
                "real_name": p.name,
                "deleted": false,
                "is_bot": false,
                "profile": {
                    "real_name": p.name,
                    "display_name": p.name,
                    "title": format!("{}: {}", p.network, p.id),
                },
            })
        })
        .collect();
    serde_json::to_writer_pretty(&mut zip, &users).map_err(std::io::Error::from)?;

    zip.start_file("channels.json", options)
        .map_err(zip_error)?;
    let purpose = bridged
        .iter()
        .map(|(network, channel)| format!("{network}:{channel}"))
        .collect::<Vec<_>>()
        .join(", ");
    let channels = json!([{
        "id": format!("C{}", &user_id("gateway", &selection.gateway)[1..]),
        "name": name,
        "created": 0,
        "creator": "",
        "is_archived": false,
        "is_general": false,
        "members": people.iter().map(|p| user_id(&p.network, &p.id)).collect::<Vec<_>>(),
        "pins": [],
        "topic": { "value": "", "creator": "", "last_set": 0 },
        "purpose": { "value": format!("Bridged by tribridge: {purpose}"), "creator": "", "last_set": 0 },
    }]);
    serde_json::to_writer_pretty(&mut zip, &channels).map_err(std::io::Error::from)?;
    drop(people);

    let threads = conversation::threads(history, selection)?;
    let mut day: Option<String> = None;
    let mut day_files: Vec<(String, String)> = Vec::new();
    let mut written: HashSet<String> = HashSet::new();
    let mut count = 0;
    conversation::for_each_post(history, selection, &threads, |post| {
        let this_day = day_of(post.created_ms);
        if day.as_deref() == Some(this_day.as_str()) {
            zip.write_all(b",\n")?;
        } else {
            if day.is_some() {
                zip.write_all(b"\n]\n")?;
                copy_files(&mut zip, options, files_dir, &mut day_files, &mut written)?;
            }
            zip.start_file(format!("{name}/{this_day}.json"), options)
                .map_err(zip_error)?;
            zip.write_all(b"[\n")?;
            day = Some(this_day);
        }
        let m = message(&post, &mut day_files);
        serde_json::to_writer(&mut zip, &m).map_err(std::io::Error::from)?;
        count += 1;
        progress(count);
        Ok(())
    })?;
    if day.is_some() {
        zip.write_all(b"\n]\n")?;
        copy_files(&mut zip, options, files_dir, &mut day_files, &mut written)?;
    } else {
        // An empty conversation still has its folder, as Slack exports have.
        zip.add_directory(format!("{name}/"), options)
            .map_err(zip_error)?;
    }
    zip.finish().map_err(zip_error)?.flush()?;
    Ok(count)
}

/// Copy the stored files a day's messages carry into the ZIP (each path once), streaming.
pub(crate) fn copy_files<W: Write + Seek>(
    zip: &mut zip::ZipWriter<W>,
    options: SimpleFileOptions,
    files_dir: &Path,
    pending: &mut Vec<(String, String)>,
    written: &mut HashSet<String>,
) -> Result<(), ExportError> {
    for (hash, path) in pending.drain(..) {
        if written.contains(&path) || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            continue;
        }
        let mut file = match std::fs::File::open(files_dir.join(&hash)) {
            Ok(file) => file,
            Err(error) => {
                tracing::warn!(error = %error, file = %hash, "A stored file of the export cannot be read; left out.");
                continue;
            }
        };
        zip.start_file(path.as_str(), options).map_err(zip_error)?;
        std::io::copy(&mut file, zip)?;
        written.insert(path);
    }
    Ok(())
}

pub(crate) fn zip_error(error: zip::result::ZipError) -> ExportError {
    ExportError::Write(std::io::Error::other(error))
}

#[cfg(test)]
mod tests {
    use super::{channel_name, ts, user_id};

    #[test]
    fn ids_and_timestamps() {
        assert_eq!(ts(1_796_515_200_123, 4567), "1796515200.123567");
        assert_eq!(ts(5, 1), "0.005001");
        let id = user_id("mm", "abc");
        assert_eq!(id.len(), 11);
        assert!(id.starts_with('U'));
        assert_ne!(id, user_id("irc", "abc"));
        assert_eq!(channel_name("Town Hall!"), "town-hall-");
    }
}
