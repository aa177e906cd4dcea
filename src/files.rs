//! Files carried between networks: a content-addressed store in the state folder, and the HTTP
//! endpoint that serves stored files to people whose network has no files (IRC) through signed,
//! expiring links.
//!
//! A connector that receives a file downloads it *before* it submits the event (so a crash
//! re-fetches it with the event), stores it here under its SHA-256, and puts the hash in the
//! event's [`Attachment`](crate::model::Attachment). A connector that delivers it reads the bytes
//! back (to upload them) or asks [`FileLinks`] for a link. Nothing here knows a protocol.
//!
//! A link is `<media_public_url>/<sha256>/<expiry>/<signature>/<file name>`; the signature is an
//! HMAC-SHA256 (key kept in the state folder, so links survive restarts) over hash and expiry.
//! The file name is cosmetic and not signed; it sets the served content type, and types a browser
//! could run (HTML, SVG) are served as plain text with a sandboxing content security policy.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use sha2::{Digest as _, Sha256};
use tokio_util::sync::CancellationToken;

/// How long a link works.
pub const LINK_LIFETIME: Duration = Duration::from_hours(24 * 7);
/// How long a link to a person's picture works: it is stored with each post that shows it.
pub const AVATAR_LINK_LIFETIME: Duration = Duration::from_hours(24 * 365);

/// The bridge's files: the store, and links when the media endpoint is configured.
pub struct Files {
    /// Stored file contents.
    pub store: FileStore,
    /// Signed links, when `media_listen` and `media_public_url` are configured.
    pub links: Option<FileLinks>,
}

impl Files {
    /// Read a stored file (off the async runtime's threads); `None` when it is gone.
    pub async fn read(self: &Arc<Self>, hash: &str) -> Option<Vec<u8>> {
        let files = Arc::clone(self);
        let hash = hash.to_owned();
        tokio::task::spawn_blocking(move || files.store.read(&hash))
            .await
            .ok()?
            .ok()
    }

    /// Store a file durably (off the async runtime's threads); returns its hash.
    pub async fn put(self: &Arc<Self>, content: Vec<u8>) -> Result<String, FileError> {
        let files = Arc::clone(self);
        tokio::task::spawn_blocking(move || files.store.put(&content))
            .await
            .map_err(|error| FileError::Io(std::io::Error::other(error)))?
    }

    /// A link to a stored file for people who cannot receive files, when links are configured.
    #[must_use]
    pub fn link(&self, hash: &str, name: &str) -> Option<String> {
        self.links
            .as_ref()
            .and_then(|links| links.link(hash, name, seconds_now(), LINK_LIFETIME))
    }

    /// Are links configured (so that storing pictures of people is worth it)?
    #[must_use]
    pub fn serves_links(&self) -> bool {
        self.links.is_some()
    }

    /// Keep the picture of `user` on `network` (replacing an earlier one), off the async
    /// runtime's threads.
    pub async fn put_avatar(
        self: &Arc<Self>,
        network: &str,
        user: &str,
        content: Vec<u8>,
    ) -> Result<(), FileError> {
        let files = Arc::clone(self);
        let name = avatar_name(network, user);
        tokio::task::spawn_blocking(move || files.store.put_named(&name, &content))
            .await
            .map_err(|error| FileError::Io(std::io::Error::other(error)))?
    }

    /// The stored picture of `user` on `network`, if any (read off the async runtime's threads).
    pub async fn avatar(self: &Arc<Self>, network: &str, user: &str) -> Option<Vec<u8>> {
        let path = self.store.path(&avatar_name(network, user))?;
        tokio::fs::read(path).await.ok()
    }

    /// When the picture of `user` on `network` was last stored (off the async runtime's threads):
    /// a cheap way to tell it changed without reading it. `None` when there is none.
    pub async fn avatar_stamp(&self, network: &str, user: &str) -> Option<std::time::SystemTime> {
        let path = self.store.dir.join(avatar_name(network, user));
        tokio::fs::metadata(path).await.ok()?.modified().ok()
    }

    /// A long-lived link to the picture of `user` on `network`, when one is stored and links
    /// are configured.
    #[must_use]
    pub fn avatar_link(&self, network: &str, user: &str) -> Option<String> {
        let links = self.links.as_ref()?;
        let name = avatar_name(network, user);
        self.store.path(&name)?;
        links.link(&name, "avatar", seconds_now(), AVATAR_LINK_LIFETIME)
    }
}

/// Why a file could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Larger than `max_file_size_mb`.
    #[error("the file has {size} bytes; the limit (max_file_size_mb) is {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The file system refused.
    #[error("cannot write to the file store: {0}")]
    Io(#[from] std::io::Error),
}

/// Stored files, named by the SHA-256 of their content, so storing twice stores once.
pub struct FileStore {
    dir: PathBuf,
    max_bytes: u64,
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

/// Is this a SHA-256 in lowercase hex?
fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Is this the name of a stored file (a content hash, or `avatar-` and a hash), and so a safe
/// file name?
fn is_stored_name(text: &str) -> bool {
    is_hash(text.strip_prefix("avatar-").unwrap_or(text))
}

/// The stored name of a person's picture: derived from network and user id, so a newer picture
/// replaces the older one.
fn avatar_name(network: &str, user: &str) -> String {
    format!(
        "avatar-{}",
        hex(&Sha256::digest(format!("{network}\0{user}").as_bytes()))
    )
}

impl FileStore {
    /// Open (creating) the store in `state_dir/files`; files over `max_bytes` are refused.
    pub fn open(state_dir: &Path, max_bytes: u64) -> std::io::Result<FileStore> {
        let dir = state_dir.join("files");
        std::fs::create_dir_all(&dir)?;
        Ok(FileStore { dir, max_bytes })
    }

    /// The largest file stored, in bytes.
    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Would a file of this size be stored?
    #[must_use]
    pub fn accepts(&self, size: u64) -> bool {
        size <= self.max_bytes
    }

    /// Store a file durably (written, synced, then renamed into place); returns its hash.
    pub fn put(&self, bytes: &[u8]) -> Result<String, FileError> {
        let size = bytes.len() as u64;
        if !self.accepts(size) {
            return Err(FileError::TooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        let hash = hex(&Sha256::digest(bytes));
        let path = self.dir.join(&hash);
        if path.exists() {
            // Stored before: it is in use again, so retention counts from now.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|file| file.set_modified(std::time::SystemTime::now()));
            return Ok(hash);
        }
        self.write(&hash, bytes)?;
        Ok(hash)
    }

    /// Store a file under a name of our own (a person's picture), replacing what was there.
    fn put_named(&self, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        let size = bytes.len() as u64;
        if !self.accepts(size) {
            return Err(FileError::TooLarge {
                size,
                limit: self.max_bytes,
            });
        }
        self.write(name, bytes)?;
        Ok(())
    }

    /// Write, sync, then rename into place: a reader never sees half a file.
    fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let temporary = self
            .dir
            .join(format!(".{name}.{}.part", uuid::Uuid::new_v4().simple()));
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, self.dir.join(name))
    }

    /// The path of a stored file, when the name is well formed and the file is there.
    #[must_use]
    pub fn path(&self, name: &str) -> Option<PathBuf> {
        let path = self.dir.join(name);
        (is_stored_name(name) && path.is_file()).then_some(path)
    }

    /// Remove a stored file (its content hash); false when it was not there.
    pub fn remove(&self, hash: &str) -> std::io::Result<bool> {
        if !is_hash(hash) {
            return Ok(false);
        }
        match std::fs::remove_file(self.dir.join(hash)) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Read a stored file.
    pub fn read(&self, hash: &str) -> std::io::Result<Vec<u8>> {
        match self.path(hash) {
            Some(path) => std::fs::read(path),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no stored file {hash}"),
            )),
        }
    }

    /// Remove files not changed for `max_age` (and unfinished writes); returns how many.
    pub fn prune(&self, max_age: Duration) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > max_age);
            if old && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Why a request for a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a link, or the file is gone.
    NotFound,
    /// The signature does not match.
    Forbidden,
    /// The link has expired.
    Gone,
}

/// Makes and checks signed links.
pub struct FileLinks {
    public_url: String,
    key: Vec<u8>,
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

impl FileLinks {
    /// Links under `public_url`, signed with the key kept in `state_dir` (made on first use,
    /// readable by the owner only).
    pub fn load_or_create(state_dir: &Path, public_url: &str) -> std::io::Result<FileLinks> {
        let path = state_dir.join("media-link.key");
        let key = match std::fs::read(&path) {
            Ok(key) if key.len() >= 32 => key,
            _ => {
                let key: [u8; 32] = rand::random();
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&path)?;
                file.write_all(&key)?;
                file.sync_all()?;
                key.to_vec()
            }
        };
        Ok(FileLinks::with_key(public_url, &key))
    }

    /// Links signed with this key.
    #[must_use]
    pub fn with_key(public_url: &str, key: &[u8]) -> FileLinks {
        FileLinks {
            public_url: public_url.trim_end_matches('/').to_owned(),
            key: key.to_vec(),
        }
    }

    fn signature(&self, hash: &str, expires: u64) -> String {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(format!("{hash}/{expires}").as_bytes());
        hex(&mac.finalize().into_bytes())
    }

    /// A link to a stored file, valid for `lifetime` from `now_s`.
    #[must_use]
    pub fn link(&self, hash: &str, name: &str, now_s: u64, lifetime: Duration) -> Option<String> {
        if !is_stored_name(hash) {
            return None;
        }
        let expires = now_s + lifetime.as_secs();
        let name = if name.is_empty() { "file" } else { name };
        Some(format!(
            "{}/{hash}/{expires}/{}/{}",
            self.public_url,
            self.signature(hash, expires),
            encode(name)
        ))
    }

    /// Check a request's path (the part after the public URL's path): the file's hash, or why
    /// not.
    pub fn verify(&self, path: &str, now_s: u64) -> Result<String, Refusal> {
        let mut segments = path.trim_start_matches('/').rsplitn(4, '/');
        let (_name, signature, expires, hash) = (
            segments.next(),
            segments.next().ok_or(Refusal::NotFound)?,
            segments.next().ok_or(Refusal::NotFound)?,
            segments.next().ok_or(Refusal::NotFound)?,
        );
        let hash = hash.rsplit('/').next().unwrap_or(hash);
        let expires: u64 = expires.parse().map_err(|_| Refusal::NotFound)?;
        if !is_stored_name(hash) {
            return Err(Refusal::NotFound);
        }
        let expected = self.signature(hash, expires);
        // Constant time: compare every byte.
        let same = expected.len() == signature.len()
            && expected
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(Refusal::Forbidden);
        }
        if now_s > expires {
            return Err(Refusal::Gone);
        }
        Ok(hash.to_owned())
    }
}

/// The content type a file is served with, from its name; never one a browser would run.
fn content_type(name: &str) -> &'static str {
    let extension = name
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "pdf" => "application/pdf",
        // HTML and SVG are served as text, never rendered: they could carry scripts.
        "txt" | "log" | "svg" | "html" | "htm" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Serve links on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    files: Arc<Files>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{StatusCode, header};
    use axum::response::{IntoResponse, Response};

    async fn answer(State(files): State<Arc<Files>>, UrlPath(path): UrlPath<String>) -> Response {
        let Some(links) = files.links.as_ref() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let hash = match links.verify(&path, seconds_now()) {
            Ok(hash) => hash,
            Err(Refusal::NotFound) => return StatusCode::NOT_FOUND.into_response(),
            Err(Refusal::Forbidden) => return StatusCode::FORBIDDEN.into_response(),
            Err(Refusal::Gone) => return StatusCode::GONE.into_response(),
        };
        let Some(file_path) = files.store.path(&hash) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let Ok(file) = tokio::fs::File::open(&file_path).await else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let length = file.metadata().await.map(|m| m.len()).unwrap_or_default();
        let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(file));
        (
            [
                (header::CONTENT_TYPE, content_type(&path).to_owned()),
                (header::CONTENT_LENGTH, length.to_string()),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
                (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
                (header::CACHE_CONTROL, "private, max-age=3600".to_owned()),
            ],
            body,
        )
            .into_response()
    }

    let app = axum::Router::new()
        .route("/{*path}", axum::routing::get(answer))
        .with_state(files);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn links_verify_until_they_expire_and_not_when_changed() {
        let links = FileLinks::with_key("https://bridge.example.org/media/", b"k");
        let link = links
            .link(HASH, "cat picture.png", 1000, LINK_LIFETIME)
            .unwrap();
        assert!(link.starts_with(&format!("https://bridge.example.org/media/{HASH}/")));
        assert!(link.ends_with("/cat%20picture.png"));
        let path = link.trim_start_matches("https://bridge.example.org/media");
        assert_eq!(links.verify(path, 1000), Ok(HASH.into()));
        let late = 1000 + LINK_LIFETIME.as_secs() + 1;
        assert_eq!(links.verify(path, late), Err(Refusal::Gone));
        let other = path.replace("0123", "0124");
        assert_eq!(links.verify(&other, 1000), Err(Refusal::Forbidden));
        let longer = path.replacen(
            &format!("/{}/", 1000 + LINK_LIFETIME.as_secs()),
            "/9999999999/",
            1,
        );
        assert_eq!(links.verify(&longer, 1000), Err(Refusal::Forbidden));
        let other_key = FileLinks::with_key("https://bridge.example.org/media", b"j");
        assert_eq!(other_key.verify(path, 1000), Err(Refusal::Forbidden));
        assert_eq!(links.verify("/x", 1000), Err(Refusal::NotFound));
        assert_eq!(links.link("../etc/passwd", "a", 0, LINK_LIFETIME), None);
    }

    #[test]
    fn stored_files_are_named_by_content_and_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path(), 10).unwrap();
        let hash = store.put(b"hello").unwrap();
        assert_eq!(store.put(b"hello").unwrap(), hash);
        assert_eq!(store.read(&hash).unwrap(), b"hello");
        assert!(matches!(
            store.put(b"more than ten"),
            Err(FileError::TooLarge {
                size: 13,
                limit: 10
            })
        ));
        assert!(store.path("../../etc/passwd").is_none());
        assert!(store.path("avatar-../x").is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("files")).unwrap().count(),
            1
        );
        assert_eq!(store.prune(Duration::from_hours(1)).unwrap(), 0);
        assert_eq!(store.prune(Duration::ZERO).unwrap(), 1);
        assert!(store.read(&hash).is_err());
    }

    #[test]
    fn files_that_could_run_in_a_browser_are_served_as_text() {
        assert_eq!(content_type("x/evil.SVG"), "text/plain; charset=utf-8");
        assert_eq!(content_type("page.html"), "text/plain; charset=utf-8");
        assert_eq!(content_type("cat.png"), "image/png");
        assert_eq!(content_type("noextension"), "application/octet-stream");
    }
}
