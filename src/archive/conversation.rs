//! A gateway's archive read as a conversation, for the exports that show it to people
//! (`slack`, `html`): each text message said in one of the gateway's channels with its latest
//! text, its edit, its deletion, its reactions, its files and the thread it belongs to, in the
//! order it was said. The bridged channels of a gateway are one conversation, so they are read
//! as one: every post says on which network and channel it was said.
//!
//! Posts are streamed from the read-only connection one at a time ([`for_each_post`]); what is
//! kept in memory besides the post at hand is the thread index ([`Threads`]: one small entry
//! per reply in a thread) and the people who spoke ([`people`]).

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::export::{ExportError, Selection};
use crate::model::{Attachment, EventBody, TextStyle};

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

const POST_COLUMNS: &str = "m.id, m.origin_network, m.origin_channel, m.origin_protocol, \
     m.origin_remote_id, m.author_id, m.author_name, m.body, m.created_ms, \
     m.reply_to_message_id, c.chain_hash";

/// The SQL of the selection's text messages, in the order they were said (`extra` narrows it).
fn posts_sql(extra: &str) -> String {
    format!(
        "SELECT {POST_COLUMNS} FROM archive_chain c JOIN messages m ON m.id = c.message_id
         WHERE c.gateway = ?1 AND c.tombstone IS NULL AND m.kind = 'text'
           AND (?2 IS NULL OR (m.origin_network = ?2 AND m.origin_channel = ?3 COLLATE NOCASE))
           AND (?4 IS NULL OR m.created_ms >= ?4) AND (?5 IS NULL OR m.created_ms < ?5)
           {extra}
         ORDER BY m.created_ms, m.id"
    )
}

fn selection_params(selection: &Selection) -> [rusqlite::types::Value; 5] {
    use rusqlite::types::Value;
    let (network, channel) = match &selection.channel {
        Some((network, channel)) => (Value::from(network.clone()), Value::from(channel.clone())),
        None => (Value::Null, Value::Null),
    };
    [
        Value::from(selection.gateway.clone()),
        network,
        channel,
        selection.since_ms.map_or(Value::Null, Value::from),
        selection.until_ms.map_or(Value::Null, Value::from),
    ]
}

/// Everyone who said, edited or reacted to something in the selection, by network and id.
///
/// # Errors
/// The store's.
pub fn people(connection: &Connection, selection: &Selection) -> Result<Vec<Person>, ExportError> {
    let mut statement = connection.prepare(
        "SELECT m.origin_network, m.author_id, m.author_name, MAX(m.id)
         FROM archive_chain c JOIN messages m ON m.id = c.message_id
         WHERE c.gateway = ?1 AND c.tombstone IS NULL
           AND (?2 IS NULL OR (m.origin_network = ?2 AND m.origin_channel = ?3 COLLATE NOCASE))
           AND (?4 IS NULL OR m.created_ms >= ?4) AND (?5 IS NULL OR m.created_ms < ?5)
         GROUP BY m.origin_network, m.author_id ORDER BY m.origin_network, m.author_id",
    )?;
    let people = statement
        .query_map(
            rusqlite::params_from_iter(selection_params(selection)),
            |row| {
                Ok(Person {
                    network: row.get(0)?,
                    id: row.get(1)?,
                    name: row.get(2)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?;
    Ok(people)
}

/// The message a thread reply or a reply belongs under: the root of `id`'s thread, or `id`.
fn root_of(connection: &Connection, id: i64) -> Result<(i64, i64), ExportError> {
    let mut current = id;
    // A thread is one level deep where the formats show it; a chain of replies is followed up
    // to its first message (bounded, in case of a cycle in a damaged store).
    for _ in 0..64 {
        let Some((created_ms, body, network, channel, reply_to)) = connection
            .prepare_cached(
                "SELECT created_ms, body, origin_network, origin_channel, reply_to_message_id
                 FROM messages WHERE id = ?1",
            )?
            .query_row(params![current], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()?
        else {
            break;
        };
        match parent(connection, &body, &network, &channel, reply_to)? {
            Some(up) if up != current => current = up,
            _ => return Ok((current, created_ms)),
        }
    }
    let created_ms = connection
        .prepare_cached("SELECT created_ms FROM messages WHERE id = ?1")?
        .query_row(params![current], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    Ok((current, created_ms))
}

/// The message a text message hangs under: its thread's root (`thread_root`, resolved through
/// the mappings of the channel it was said in), else the message it replies to.
fn parent(
    connection: &Connection,
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
        let found = connection
            .prepare_cached(
                "SELECT message_id FROM mappings WHERE network = ?1 AND channel = ?2
                 AND remote_id = ?3 LIMIT 1",
            )?
            .query_row(params![network, channel, root], |row| row.get::<_, i64>(0))
            .optional()?;
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
pub fn threads(connection: &Connection, selection: &Selection) -> Result<Threads, ExportError> {
    let mut threads = Threads::default();
    let mut statement = connection.prepare(&posts_sql(
        "AND (m.reply_to_message_id IS NOT NULL OR instr(m.body, '\"thread_root\"') > 0)",
    ))?;
    let mut rows = statement.query(rusqlite::params_from_iter(selection_params(selection)))?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let body: String = row.get(7)?;
        let network: String = row.get(1)?;
        let channel: String = row.get(2)?;
        let Some(up) = parent(connection, &body, &network, &channel, row.get(9)?)? else {
            continue;
        };
        let (root, root_ms) = root_of(connection, up)?;
        if root == id {
            continue;
        }
        threads.replies.insert(id, (root, root_ms));
        threads
            .roots
            .entry(root)
            .or_default()
            .push((id, (network, row.get(5)?), row.get(8)?));
    }
    Ok(threads)
}

/// Call `each` with every text message of the selection, in the order said.
///
/// # Errors
/// The store's, or `each`'s.
pub fn for_each_post(
    connection: &Connection,
    selection: &Selection,
    threads: &Threads,
    mut each: impl FnMut(Post) -> Result<(), ExportError>,
) -> Result<u64, ExportError> {
    let mut statement = connection.prepare(&posts_sql(""))?;
    let mut rows = statement.query(rusqlite::params_from_iter(selection_params(selection)))?;
    let mut count = 0;
    while let Some(row) = rows.next()? {
        let message_id: i64 = row.get(0)?;
        let body: String = row.get(7)?;
        let (style, text, attachments) = match serde_json::from_str::<EventBody>(&body) {
            Ok(EventBody::Text {
                style,
                text,
                attachments,
                ..
            }) => (style, text.to_plain_text(), attachments),
            // A body this version cannot read is shown as stored rather than dropped.
            _ => (TextStyle::Normal, body.clone(), Vec::new()),
        };
        let network: String = row.get(1)?;
        let mut post = Post {
            message_id,
            channel: row.get(2)?,
            protocol: row.get(3)?,
            remote_id: row.get(4)?,
            author: Person {
                network: network.clone(),
                id: row.get(5)?,
                name: row.get(6)?,
            },
            network,
            created_ms: row.get(8)?,
            style,
            text,
            original: None,
            edited: None,
            deleted: None,
            reactions: Vec::new(),
            attachments,
            thread_root: threads.replies.get(&message_id).copied(),
            replies: threads.roots.get(&message_id).cloned().unwrap_or_default(),
            chain_hash: row.get(10)?,
        };
        apply_followers(connection, &mut post)?;
        count += 1;
        each(post)?;
    }
    Ok(count)
}

/// Apply the edits, deletion and reactions that point at the post, in the order they came.
fn apply_followers(connection: &Connection, post: &mut Post) -> Result<(), ExportError> {
    let mut statement = connection.prepare_cached(
        "SELECT body, origin_network, author_id, created_ms FROM messages
         WHERE target_message_id = ?1 ORDER BY id",
    )?;
    let mut rows = statement.query(params![post.message_id])?;
    while let Some(row) = rows.next()? {
        let who: PersonRef = (row.get(1)?, row.get(2)?);
        let at: i64 = row.get(3)?;
        match serde_json::from_str::<EventBody>(&row.get::<_, String>(0)?) {
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
