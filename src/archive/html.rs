//! `tribridge export --format html`: a gateway's archive as a ZIP of self-contained HTML
//! transcripts, one page per day (UTC) of the gateway's conversation (`YYYY-MM-DD.html`), an
//! `index.html` listing the days, and the files the messages carry under `files/`. Each page has
//! its style inline and loads nothing: no script, no external style sheet, font or image; the
//! only links are to the other pages and files of the ZIP, so it reads offline and prints as it
//! shows. Every text from the store is HTML-escaped.
//!
//! Written as it is read, like the Slack export: one day's page at a time.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io::{Seek, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;

use super::conversation::{self, Post, day_of, safe_name, time_of};
use super::export::{ExportError, Selection};
use super::slack::{copy_files, zip_error};

/// The page's style: readable on screen and on paper.
const STYLE: &str = "body{font-family:sans-serif;max-width:60em;margin:1em auto;padding:0 1em;\
color:#111;background:#fff;line-height:1.4}h1{font-size:1.4em}header p{color:#555}\
.m{border-top:1px solid #ddd;padding:.4em 0;break-inside:avoid}.m.reply{margin-left:2.5em;\
border-left:3px solid #ccd;padding-left:.6em}.meta{font-size:.85em;color:#555}.who{font-weight:bold;\
color:#111}.text{white-space:pre-wrap;margin:.2em 0}.note{font-size:.85em;color:#666;font-style:italic}\
.deleted .text{text-decoration:line-through;color:#777}.reactions span{display:inline-block;\
border:1px solid #ccc;border-radius:1em;padding:0 .5em;margin-right:.3em;font-size:.85em}\
.files a{margin-right:1em}.files img{max-width:20em;max-height:15em;display:block}\
@media print{body{max-width:none;margin:0}a{color:#111}}";

/// Escape text for HTML content and attribute values.
#[must_use]
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    crate::richtext::html::escape_into(text, &mut out);
    out
}

fn page_head(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(title)
    )
}

/// One message as HTML; the stored files it carries are pushed to `files`.
fn post_html(post: &Post, files: &mut Vec<(String, String)>) -> String {
    let mut classes = vec!["m"];
    if post.thread_root.is_some() {
        classes.push("reply");
    }
    if post.deleted.is_some() {
        classes.push("deleted");
    }
    let mut html = format!(
        "<div class=\"{}\" id=\"m{}\" data-chain-hash=\"{}\"><div class=\"meta\"><span class=\"time\">{}</span> \
         <span class=\"who\">{}</span> <span class=\"where\">on {} {}</span></div>\n",
        classes.join(" "),
        post.message_id,
        escape(&post.chain_hash),
        time_of(post.created_ms),
        escape(&post.author.name),
        escape(&post.network),
        escape(&post.channel),
    );
    if let Some((root, root_ms)) = post.thread_root {
        let _ = writeln!(
            html,
            "<div class=\"note\">in the thread of <a href=\"{}.html#m{root}\">the message of {} {}</a></div>",
            day_of(root_ms),
            day_of(root_ms),
            time_of(root_ms)
        );
    }
    let text = if post.style == crate::model::TextStyle::Action {
        format!("* {} {}", post.author.name, post.text)
    } else {
        post.text.clone()
    };
    let _ = writeln!(html, "<p class=\"text\">{}</p>", escape(&text));
    if let (Some(original), Some((_, at))) = (&post.original, &post.edited) {
        let _ = writeln!(
            html,
            "<div class=\"note\">edited {} {} (first said: <q>{}</q>)</div>",
            day_of(*at),
            time_of(*at),
            escape(original)
        );
    }
    if let Some(at) = post.deleted {
        let _ = writeln!(
            html,
            "<div class=\"note\">deleted {} {}</div>",
            day_of(at),
            time_of(at)
        );
    }
    if !post.attachments.is_empty() {
        html.push_str("<div class=\"files\">");
        for attachment in &post.attachments {
            let label = escape(&attachment.label());
            match &attachment.stored {
                Some(hash) => {
                    let path = format!(
                        "files/{}/{}",
                        hash.get(..12).unwrap_or(hash),
                        safe_name(&attachment.name)
                    );
                    if attachment.is_image() {
                        let _ = write!(
                            html,
                            "<a href=\"{0}\"><img src=\"{0}\" alt=\"{label}\">{label}</a>",
                            escape(&path)
                        );
                    } else {
                        let _ = write!(html, "<a href=\"{}\">{label}</a>", escape(&path));
                    }
                    files.push((hash.clone(), path));
                }
                None => {
                    let _ = write!(html, "<span>{label} (not kept)</span>");
                }
            }
        }
        html.push_str("</div>\n");
    }
    if !post.reactions.is_empty() {
        html.push_str("<div class=\"reactions\">");
        for (key, who) in &post.reactions {
            let _ = write!(html, "<span>{} {}</span>", escape(key), who.len());
        }
        html.push_str("</div>\n");
    }
    if !post.replies.is_empty() {
        let _ = writeln!(
            html,
            "<div class=\"note\">{} {} in its thread</div>",
            post.replies.len(),
            if post.replies.len() == 1 {
                "reply"
            } else {
                "replies"
            }
        );
    }
    html.push_str("</div>\n");
    html
}

/// Write the selection as a ZIP of HTML transcripts to `out`, the stored files read from
/// `files_dir`; returns how many messages it holds. `progress` is called after each.
///
/// # Errors
/// The store's or the output's; a stored file that cannot be read is logged and left out.
pub fn html<W: Write + Seek>(
    history: &mut dyn crate::store::history::HistoryRead,
    selection: &Selection,
    bridged: &[(String, String)],
    files_dir: &Path,
    out: W,
    mut progress: impl FnMut(u64),
) -> Result<u64, ExportError> {
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let mut zip = zip::ZipWriter::new(out);
    let where_ = bridged
        .iter()
        .map(|(network, channel)| format!("{network} {channel}"))
        .collect::<Vec<_>>()
        .join(", ");
    let threads = conversation::threads(history, selection)?;
    let mut days: Vec<(String, u64)> = Vec::new();
    let mut day_files: Vec<(String, String)> = Vec::new();
    let mut written: HashSet<String> = HashSet::new();
    let mut count = 0;
    let close = |zip: &mut zip::ZipWriter<W>| zip.write_all(b"</main></body></html>\n");
    conversation::for_each_post(history, selection, &threads, |post| {
        let this_day = day_of(post.created_ms);
        if days.last().map(|(d, _)| d.as_str()) != Some(this_day.as_str()) {
            if !days.is_empty() {
                close(&mut zip)?;
                copy_files(&mut zip, options, files_dir, &mut day_files, &mut written)?;
            }
            zip.start_file(format!("{this_day}.html"), options)
                .map_err(zip_error)?;
            let title = format!("{} — {this_day}", selection.gateway);
            zip.write_all(page_head(&title).as_bytes())?;
            zip.write_all(
                format!(
                    "<header><h1>{}</h1><p>Bridged channels: {}. Times are UTC. \
                     <a href=\"index.html\">All days</a></p></header><main>\n",
                    escape(&title),
                    escape(&where_)
                )
                .as_bytes(),
            )?;
            days.push((this_day, 0));
        }
        if let Some(last) = days.last_mut() {
            last.1 += 1;
        }
        zip.write_all(post_html(&post, &mut day_files).as_bytes())?;
        count += 1;
        progress(count);
        Ok(())
    })?;
    if !days.is_empty() {
        close(&mut zip)?;
        copy_files(&mut zip, options, files_dir, &mut day_files, &mut written)?;
    }
    zip.start_file("index.html", options).map_err(zip_error)?;
    let title = format!("{} — transcript", selection.gateway);
    zip.write_all(page_head(&title).as_bytes())?;
    zip.write_all(
        format!(
            "<header><h1>{}</h1><p>Bridged channels: {}. {count} messages.</p></header><main><ul>\n",
            escape(&title),
            escape(&where_)
        )
        .as_bytes(),
    )?;
    for (day, n) in &days {
        zip.write_all(
            format!("<li><a href=\"{day}.html\">{day}</a> ({n} messages)</li>\n").as_bytes(),
        )?;
    }
    zip.write_all(b"</ul></main></body></html>\n")?;
    zip.finish().map_err(zip_error)?.flush()?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<script>alert(\"x&y\")</script> it's"),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt; it&#39;s"
        );
    }
}
