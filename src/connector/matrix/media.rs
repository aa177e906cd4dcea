//! Media for IRC users, who have no files: a small HTTP endpoint of the daemon that serves a
//! Matrix file through signed, expiring links, proxying the authenticated download
//! (`/_matrix/client/v1/media/download`) with the bot's session.
//!
//! A link is `<media_public_url>/<server>/<media id>/<expiry>/<signature>/<file name>`; the
//! signature is an HMAC-SHA256 (key kept in the network's state folder, so links survive
//! restarts) over server, media id and expiry. Only `GET` and `HEAD` are answered; the file name
//! is cosmetic and not signed. Off unless `media_listen` and `media_public_url` are configured.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::ruma::OwnedMxcUri;
use matrix_sdk::ruma::events::room::MediaSource;
use sha2::Sha256;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Live;

/// How long a link works.
pub const LINK_LIFETIME: Duration = Duration::from_hours(24 * 7);
/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Makes and checks signed links.
pub struct MediaLinks {
    public_url: String,
    key: Vec<u8>,
}

fn seconds_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Percent-encode everything but unreserved characters.
fn encode(text: &str) -> String {
    use std::fmt::Write as _;
    text.bytes().fold(String::new(), |mut out, byte| {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
        out
    })
}

/// Is this a safe path segment of an MXC URI (server name or media id)?
fn is_segment(text: &str) -> bool {
    !text.is_empty()
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'[' | b']')
        })
}

/// Why a request was refused, as an HTTP status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a media link.
    NotFound,
    /// The signature does not match.
    Forbidden,
    /// The link has expired.
    Gone,
}

impl Refusal {
    fn status(self) -> &'static str {
        match self {
            Refusal::NotFound => "404 Not Found",
            Refusal::Forbidden => "403 Forbidden",
            Refusal::Gone => "410 Gone",
        }
    }
}

impl MediaLinks {
    /// Links under `public_url`, signed with the key in `dir/media.key` (created when missing).
    pub fn load_or_create(dir: &Path, public_url: &str) -> std::io::Result<MediaLinks> {
        let path = dir.join("media.key");
        let key = match std::fs::read(&path) {
            Ok(key) if key.len() >= 32 => key,
            _ => {
                std::fs::create_dir_all(dir)?;
                let key: [u8; 32] = rand::random();
                std::fs::write(&path, key)?;
                key.to_vec()
            }
        };
        Ok(MediaLinks {
            public_url: public_url.trim_end_matches('/').to_owned(),
            key,
        })
    }

    /// Links with a given key (for tests).
    #[must_use]
    pub fn with_key(public_url: &str, key: &[u8]) -> MediaLinks {
        MediaLinks {
            public_url: public_url.trim_end_matches('/').to_owned(),
            key: key.to_vec(),
        }
    }

    fn signature(&self, server: &str, media_id: &str, expires: u64) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return String::new();
        };
        mac.update(format!("{server}/{media_id}/{expires}").as_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// A link to an `mxc://server/id` file, valid for [`LINK_LIFETIME`] from `now_s`.
    #[must_use]
    pub fn link(&self, mxc: &str, filename: &str, now_s: u64) -> Option<String> {
        let (server, media_id) = mxc.strip_prefix("mxc://")?.split_once('/')?;
        if !is_segment(server) || !is_segment(media_id) {
            return None;
        }
        let expires = now_s + LINK_LIFETIME.as_secs();
        let signature = self.signature(server, media_id, expires);
        let name = if filename.is_empty() {
            "file"
        } else {
            filename
        };
        Some(format!(
            "{}/{server}/{media_id}/{expires}/{signature}/{}",
            self.public_url,
            encode(name)
        ))
    }

    /// A link made now.
    #[must_use]
    pub fn link_now(&self, mxc: &str, filename: &str) -> Option<String> {
        self.link(mxc, filename, seconds_now())
    }

    /// The `mxc://` URI a request path (its last five segments) signs for, if valid at `now_s`.
    pub fn verify(&self, path: &str, now_s: u64) -> Result<String, Refusal> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let [.., server, media_id, expires, signature, _name] = segments.as_slice() else {
            return Err(Refusal::NotFound);
        };
        if !is_segment(server) || !is_segment(media_id) {
            return Err(Refusal::NotFound);
        }
        let expires: u64 = expires.parse().map_err(|_| Refusal::NotFound)?;
        let expected = self.signature(server, media_id, expires);
        // Compare without an early exit.
        let matches = expected.len() == signature.len()
            && expected
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            return Err(Refusal::Forbidden);
        }
        if expires < now_s {
            return Err(Refusal::Gone);
        }
        Ok(format!("mxc://{server}/{media_id}"))
    }
}

/// A content type from a file name's extension.
fn content_type(path: &str) -> &'static str {
    let extension = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        // SVG is served as text, never rendered: it could carry scripts.
        "txt" | "log" | "svg" => "text/plain; charset=utf-8",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// Serve links until shutdown.
pub(super) async fn serve(
    listener: TcpListener,
    links: Arc<MediaLinks>,
    live: Arc<RwLock<Option<Live>>>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let links = Arc::clone(&links);
        let live = Arc::clone(&live);
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(Duration::from_mins(2), answer(stream, &links, &live)).await;
        });
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         X-Content-Type-Options: nosniff\r\nCache-Control: private, max-age=3600\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if !head_only {
        let _ = stream.write_all(body).await;
    }
    let _ = stream.shutdown().await;
}

async fn answer(mut stream: TcpStream, links: &MediaLinks, live: &RwLock<Option<Live>>) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        if head.len() > MAX_HEAD {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or_default().split(' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
            false,
        )
        .await;
        return;
    }
    let mxc = match links.verify(path, seconds_now()) {
        Ok(mxc) => mxc,
        Err(refusal) => {
            respond(
                &mut stream,
                refusal.status(),
                "text/plain",
                b"no such file\n",
                head_only,
            )
            .await;
            return;
        }
    };
    let client = live
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .map(|live| live.client.clone());
    let Some(client) = client else {
        respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            b"not connected\n",
            head_only,
        )
        .await;
        return;
    };
    let request = MediaRequestParameters {
        source: MediaSource::Plain(OwnedMxcUri::from(mxc.as_str())),
        format: MediaFormat::File,
    };
    match client.media().get_media_content(&request, false).await {
        Ok(bytes) => respond(&mut stream, "200 OK", content_type(path), &bytes, head_only).await,
        Err(error) => {
            tracing::warn!(mxc = %mxc, error = %error, "Could not fetch a Matrix file for a media link.");
            respond(
                &mut stream,
                "502 Bad Gateway",
                "text/plain",
                b"cannot fetch the file\n",
                head_only,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_until_they_expire_and_not_when_changed() {
        let links = MediaLinks::with_key("https://bridge.example.org/media/", b"k");
        let link = links
            .link("mxc://example.org/abcDEF", "cat picture.png", 1000)
            .unwrap();
        assert!(link.starts_with("https://bridge.example.org/media/example.org/abcDEF/"));
        assert!(link.ends_with("/cat%20picture.png"));
        let path = link.trim_start_matches("https://bridge.example.org");
        assert_eq!(
            links.verify(path, 1000),
            Ok("mxc://example.org/abcDEF".into())
        );
        let late = 1000 + LINK_LIFETIME.as_secs() + 1;
        assert_eq!(links.verify(path, late), Err(Refusal::Gone));
        let other = path.replace("abcDEF", "abcDEG");
        assert_eq!(links.verify(&other, 1000), Err(Refusal::Forbidden));
        let other_key = MediaLinks::with_key("https://bridge.example.org/media", b"j");
        assert_eq!(other_key.verify(path, 1000), Err(Refusal::Forbidden));
        assert_eq!(links.verify("/media/x", 1000), Err(Refusal::NotFound));
        assert_eq!(links.link("https://x/y", "a", 0), None);
        assert_eq!(links.link("mxc://x/../y", "a", 0), None);
    }
}
