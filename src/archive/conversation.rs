//! A gateway's archive read as a conversation, for the exports that show it to people
//! (`slack`, `html`): each text message said in one of the gateway's channels with its latest
//! text, its edit, its deletion, its reactions, its files and the thread it belongs to, in the
//! order it was said. The bridged channels of a gateway are one conversation, so they are read
//! as one: every post says on which network and channel it was said.
//!
//! Posts are read from one snapshot of the store one at a time ([`for_each_post`]); what is
//! kept in memory besides the post at hand is the thread index ([`Threads`]: one small entry
//! per reply in a thread) and the people who spoke ([`people`]).

use std::collections::HashMap;

use super::export::{ExportError, Selection};
use crate::model::{Attachment, EventBody, TextStyle};
use crate::store::StoreError;
use crate::store::history::{HistoryRead, PostRow};

/// Someone who said something in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// The network they spoke on.
    pub network: String,
    /// Their id there.
    pub id: String,
    /// The name they last spoke under.
    pub name: String,
}

/// A person's reference: (network, id).
pub type PersonRef = (String, String);

/// One text message of the conversation as it stands now.
#[derive(Debug, Clone)]
pub struct Post {
    /// The canonical message id.
    pub message_id: i64,
    /// Where it was said.
    pub network: String,
    /// The channel it was said in.
    pub channel: String,
    /// That network's protocol.
    pub protocol: String,
    /// The network's own id of it.
    pub remote_id: Option<String>,
    /// Who said it.
    pub author: Person,
    /// When it was said (ms since the epoch).
    pub created_ms: i64,
    /// Normal, action or notice.
    pub style: TextStyle,
    /// Its text now (after its last edit).
    pub text: String,
    /// Its text as first said, when it was edited.
    pub original: Option<String>,
    /// Its last edit: who edited it, when.
    pub edited: Option<(PersonRef, i64)>,
    /// When it was deleted, if it was.
    pub deleted: Option<i64>,
    /// Reactions now on it: each key with who gave it, in the order given.
    pub reactions: Vec<(String, Vec<PersonRef>)>,
    /// The files it carries.
    pub attachments: Vec<Attachment>,
    /// The thread it replies in: its root's message id and time, when it is a reply.
    pub thread_root: Option<(i64, i64)>,
    /// When it is a thread's root: its replies (id, author, time), in order.
    pub replies: Vec<(i64, PersonRef, i64)>,
    /// Its record's chain hash in the gateway's tamper-evident chain, so that an export in
    /// any format can be checked against the chain (`export --verify`, the JSONL export).
    pub chain_hash: String,
}

/// The replies of every thread in the selection, by root message id.
#[derive(Debug, Default)]
pub struct Threads {
    roots: HashMap<i64, Vec<(i64, PersonRef, i64)>>,
    /// Reply message id → (root id, root time).
    replies: HashMap<i64, (i64, i64)>,
}

/// Every text message of the selection (only replies and thread replies when `threaded`), in
/// the order said, as the store reads it.
fn each_post_row(
    history: &mut dyn HistoryRead,
    selection: &Selection,
    threaded: bool,
    mut each: impl FnMut(&mut dyn HistoryRead, PostRow) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    let mut failure = None;
    let read = history.each_post(selection, threaded, &mut |history, row| {
        each(history, row).map_err(|error| {
            failure = Some(error);
            StoreError::Stopped
        })
    });
    match failure {
        Some(error) => Err(error),
        None => Ok(read?),
    }
}

/// Everyone who said, edited or reacted to something in the selection, by network and id.
///
/// # Errors
/// The store's.
pub fn people(
    history: &mut dyn HistoryRead,
    selection: &Selection,
) -> Result<Vec<Person>, ExportError> {
    Ok(history
        .people(selection)?
        .into_iter()
        .map(|(network, id, name)| Person { network, id, name })
        .collect())
}

/// The message a thread reply or a reply belongs under: the root of `id`'s thread, or `id`.
fn root_of(history: &mut dyn HistoryRead, id: i64) -> Result<(i64, i64), ExportError> {
    let mut current = id;
    // A thread is one level deep where the formats show it; a chain of replies is followed up
    // to its first message (bounded, in case of a cycle in a damaged store).
    for _ in 0..64 {
        let Some((created_ms, body, network, channel, reply_to)) = history.brief(current)? else {
            break;
        };
        match parent(history, &body, &network, &channel, reply_to)? {
            Some(up) if up != current => current = up,
            _ => return Ok((current, created_ms)),
        }
    }
    let created_ms = history.brief(current)?.map_or(0, |brief| brief.0);
    Ok((current, created_ms))
}

/// The message a text message hangs under: its thread's root (`thread_root`, resolved through
/// the mappings of the channel it was said in), else the message it replies to.
fn parent(
    history: &mut dyn HistoryRead,
    body: &str,
    network: &str,
    channel: &str,
    reply_to: Option<i64>,
) -> Result<Option<i64>, ExportError> {
    let thread_root = match serde_json::from_str::<EventBody>(body) {
        Ok(EventBody::Text { thread_root, .. }) => thread_root,
        _ => None,
    };
    if let Some(root) = thread_root {
        let found = history.mapped(network, channel, &root)?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(reply_to)
}

/// Index the threads of the selection: one pass over its replies.
///
/// # Errors
/// The store's.
pub fn threads(
    history: &mut dyn HistoryRead,
    selection: &Selection,
) -> Result<Threads, ExportError> {
    let mut threads = Threads::default();
    each_post_row(history, selection, true, |history, row| {
        let Some(up) = parent(
            history,
            &row.body,
            &row.network,
            &row.channel,
            row.reply_to_message_id,
        )?
        else {
            return Ok(());
        };
        let (root, root_ms) = root_of(history, up)?;
        if root == row.message_id {
            return Ok(());
        }
        threads.replies.insert(row.message_id, (root, root_ms));
        threads.roots.entry(root).or_default().push((
            row.message_id,
            (row.network, row.author_id),
            row.created_ms,
        ));
        Ok(())
    })?;
    Ok(threads)
}

/// Call `each` with every text message of the selection, in the order said.
///
/// # Errors
/// The store's, or `each`'s.
pub fn for_each_post(
    history: &mut dyn HistoryRead,
    selection: &Selection,
    threads: &Threads,
    mut each: impl FnMut(Post) -> Result<(), ExportError>,
) -> Result<u64, ExportError> {
    let mut count = 0;
    each_post_row(history, selection, false, |history, row| {
        let message_id = row.message_id;
        let (style, text, attachments) = match serde_json::from_str::<EventBody>(&row.body) {
            Ok(EventBody::Text {
                style,
                text,
                attachments,
                ..
            }) => (style, text.to_plain_text(), attachments),
            // A body this version cannot read is shown as stored rather than dropped.
            _ => (TextStyle::Normal, row.body.clone(), Vec::new()),
        };
        let mut post = Post {
            message_id,
            channel: row.channel,
            protocol: row.protocol,
            remote_id: row.remote_id,
            author: Person {
                network: row.network.clone(),
                id: row.author_id,
                name: row.author_name,
            },
            network: row.network,
            created_ms: row.created_ms,
            style,
            text,
            original: None,
            edited: None,
            deleted: None,
            reactions: Vec::new(),
            attachments,
            thread_root: threads.replies.get(&message_id).copied(),
            replies: threads.roots.get(&message_id).cloned().unwrap_or_default(),
            chain_hash: row.chain_hash,
        };
        apply_followers(history, &mut post)?;
        count += 1;
        each(post)
    })?;
    Ok(count)
}

/// Apply the edits, deletion and reactions that point at the post, in the order they came.
fn apply_followers(history: &mut dyn HistoryRead, post: &mut Post) -> Result<(), ExportError> {
    for (body, network, author, at) in history.followers(post.message_id)? {
        let who: PersonRef = (network, author);
        match serde_json::from_str::<EventBody>(&body) {
            Ok(EventBody::Edit { text, .. }) => {
                if post.original.is_none() {
                    post.original = Some(post.text.clone());
                }
                post.text = text.to_plain_text();
                post.edited = Some((who, at));
            }
            Ok(EventBody::Delete { .. }) => post.deleted = Some(at),
            Ok(EventBody::Reaction { key, removed, .. }) => {
                let index = post.reactions.iter().position(|(k, _)| *k == key);
                match (index, removed) {
                    (Some(i), false) => {
                        if !post.reactions[i].1.contains(&who) {
                            post.reactions[i].1.push(who);
                        }
                    }
                    (None, false) => post.reactions.push((key, vec![who])),
                    (Some(i), true) => {
                        post.reactions[i].1.retain(|p| *p != who);
                        if post.reactions[i].1.is_empty() {
                            post.reactions.remove(i);
                        }
                    }
                    (None, true) => {}
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The UTC day (`YYYY-MM-DD`) of a time in ms since the epoch.
#[must_use]
pub fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

/// The UTC time of day (`HH:MM:SS`) of a time in ms since the epoch.
#[must_use]
pub fn time_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%H:%M:%S")
        .to_string()
}

/// A ZIP entry name made safe: no path separators, no leading dots, printable.
#[must_use]
pub fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.').trim();
    if trimmed.is_empty() {
        "file".to_owned()
    } else {
        trimmed.chars().take(120).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{day_of, safe_name, time_of};

    #[test]
    fn days_and_names() {
        assert_eq!(day_of(1_796_515_200_000), "2026-12-06");
        assert_eq!(time_of(1_796_515_200_000 + 3_723_000), "01:02:03");
        assert_eq!(safe_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(safe_name("..."), "file");
        assert_eq!(safe_name("minutes.txt"), "minutes.txt");
    }
}
