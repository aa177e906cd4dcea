//! The socket under one [`Session`](super::session::Session): the `irc` crate's client (the
//! relay bot), or a lean connection of our own (puppets). The lean one keeps the crate's
//! protocol types (`IrcCodec`, `Message`) but reads through a 1 KiB buffer, keeps no write
//! buffer between writes (the session's lines, a few at a time, are encoded and written after
//! each event), and does itself what the crate's client does for the bot: answers `PING`, pings
//! a silent server and gives up on it, falls back to the next nick on `433`/`432`, and connects
//! with TLS under the same verification settings (Mozilla and system roots plus `tls_ca_file`,
//! or none with `tls_verify = false`). An idle puppet then costs its socket, its TLS state and
//! its session, not the crate's two 8 KiB buffers and queue. **Invariants:** a line is written
//! whole or the connection is given up (a write is never cut short by a `select!`); at most
//! [`PENDING_LINES`] lines wait to be written.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use irc::client::prelude::{Client, Command, Message};
use irc::proto::IrcCodec;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_util::bytes::BytesMut;
use tokio_util::codec::{Encoder as _, FramedRead};

use crate::connector::supervisor::error_chain;

use super::TaskInfo;
use super::charset;

/// The read buffer of a lean connection: one IRC line is at most 512 bytes plus 8 KiB of tags,
/// and the buffer grows for a longer one, but most lines fit.
const READ_CAPACITY: usize = 1024;
/// Lines the session may have waiting to be written; more means the session is stuck.
const PENDING_LINES: usize = 256;
/// Silence after which the server is pinged, and how long it then has to answer.
const PING_AFTER: Duration = Duration::from_mins(1);
const PING_TIMEOUT: Duration = Duration::from_secs(30);
/// A write the server does not take within this long ends the connection.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a session's lines go.
pub(super) enum Outgoing {
    /// The `irc` crate's client queue.
    Client(irc::client::Sender),
    /// Lines for the lean connection to write after the current event.
    Own(Mutex<Vec<Message>>),
}

impl Outgoing {
    pub(super) fn send(&self, message: Message) -> Result<(), String> {
        match self {
            Self::Client(sender) => sender
                .send(message)
                .map_err(|error| format!("write failed: {error}")),
            Self::Own(pending) => {
                let mut pending = pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if pending.len() >= PENDING_LINES {
                    return Err(format!(
                        "more than {PENDING_LINES} lines waiting to be written"
                    ));
                }
                pending.push(message);
                Ok(())
            }
        }
    }
}

trait Socket: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Socket for T {}

/// A lean connection's state.
pub(super) struct Lean {
    reader: FramedRead<Box<dyn Socket>, IrcCodec>,
    /// The nicks to fall back to, and the next one's index.
    alt_nicks: Vec<String>,
    next_alt: usize,
    /// When something was last read, and when the server was pinged (awaiting its answer).
    last_read: Instant,
    pinged: Option<Instant>,
    /// [`PING_AFTER`] and [`PING_TIMEOUT`] (shorter in the tests).
    ping_after: Duration,
    ping_timeout: Duration,
    /// Lines of our own (`PONG`, `PING`, `NICK`) to write with the session's.
    own: Vec<Message>,
}

/// The connection under a session.
pub(super) enum Link {
    /// Boxed: a puppet's session future holds the lean variant, and the crate's stream is big.
    Client(Box<irc::client::ClientStream>),
    Lean(Lean),
}

/// A TLS client configuration for puppets, as the `irc` crate builds the bot's: the Mozilla
/// and system roots plus `tls_ca_file`, or no verification with `tls_verify = false`. `None`
/// without TLS. Built once per network: every puppet shares it.
pub(super) fn puppet_tls(
    config: &super::config::IrcConfig,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    if !config.tls {
        return Ok(None);
    }
    let builder = rustls::ClientConfig::builder();
    let tls = if config.tls_verify {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for certificate in rustls_native_certs::load_native_certs().certs {
            // Unusable system certificates are skipped, as the crate does.
            let _ = roots.add(certificate);
        }
        if let Some(path) = &config.tls_ca_file {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            let pem = std::fs::read(path)
                .map_err(|error| format!("cannot read tls_ca_file {}: {error}", path.display()))?;
            let (added, ignored) = roots.add_parsable_certificates(
                CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok),
            );
            if ignored > 0 || added == 0 {
                tracing::warn!(path = %path.display(), added, ignored, "Some certificates in tls_ca_file are not usable.");
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
            .with_no_client_auth()
    };
    Ok(Some(Arc::new(tls)))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// `tls_verify = false`: any certificate is accepted (signatures are still checked).
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl TaskInfo {
    /// Connect: a puppet through a lean connection, the bot through the `irc` crate's client.
    pub(super) async fn connect(&self) -> Result<(Link, Outgoing), String> {
        let Some(role) = &self.puppet else {
            let connect = Client::from_config(self.client_config());
            let mut client = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok(client)) => client,
                Ok(Err(error)) => return Err(format!("connect failed: {}", error_chain(&error))),
                Err(_) => return Err("connect timed out after 30 s".into()),
            };
            let stream = client
                .stream()
                .map_err(|error| format!("no stream: {error}"))?;
            return Ok((
                Link::Client(Box::new(stream)),
                Outgoing::Client(client.sender()),
            ));
        };
        let tls = role.tls.clone()?;
        let socket = tokio::time::timeout(CONNECT_TIMEOUT, self.open(tls))
            .await
            .map_err(|_| "connect timed out after 30 s".to_owned())??;
        let codec = IrcCodec::new(charset::WIRE_LABEL)
            .map_err(|error| format!("no codec: {}", error_chain(&error)))?;
        let lean = Lean {
            reader: FramedRead::with_capacity(socket, codec, READ_CAPACITY),
            alt_nicks: self.alt_nicks(),
            next_alt: 0,
            last_read: Instant::now(),
            pinged: None,
            ping_after: PING_AFTER,
            ping_timeout: PING_TIMEOUT,
            own: Vec::new(),
        };
        Ok((Link::Lean(lean), Outgoing::Own(Mutex::new(Vec::new()))))
    }

    async fn open(
        &self,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Box<dyn Socket>, String> {
        let host = self.config.host.as_str();
        let tcp = tokio::net::TcpStream::connect((host, self.config.port))
            .await
            .map_err(|error| format!("connect failed: {error}"))?;
        let Some(tls) = tls else {
            return Ok(Box::new(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|error| format!("connect failed: {host} is not a TLS server name: {error}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|error| format!("connect failed: TLS: {error}"))?;
        Ok(Box::new(stream))
    }
}

impl Link {
    /// The next line from the server (`Ok(None)`: none, but the connection has a line of its
    /// own to write); `None` when the server closed the connection.
    pub(super) async fn next(&mut self) -> Option<Result<Option<Message>, String>> {
        match self {
            Self::Client(stream) => stream
                .next()
                .await
                .map(|line| line.map(Some).map_err(|error| error_chain(&error))),
            Self::Lean(lean) => lean.next().await,
        }
    }

    /// Write what the session (and the connection itself) has to say.
    pub(super) async fn flush(&mut self, outgoing: &Outgoing) -> Result<(), String> {
        let (Self::Lean(lean), Outgoing::Own(pending)) = (self, outgoing) else {
            return Ok(());
        };
        let lines = std::mem::take(
            &mut *pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if lines.is_empty() && lean.own.is_empty() {
            return Ok(());
        }
        let mut buffer = BytesMut::new();
        for line in std::mem::take(&mut lean.own).into_iter().chain(lines) {
            lean.reader
                .decoder_mut()
                .encode(line, &mut buffer)
                .map_err(|error| format!("cannot encode a line: {error}"))?;
        }
        let socket = lean.reader.get_mut();
        tokio::time::timeout(WRITE_TIMEOUT, async {
            socket.write_all(&buffer).await?;
            socket.flush().await
        })
        .await
        .map_err(|_| format!("the server did not take a write within {WRITE_TIMEOUT:?}"))?
        .map_err(|error| format!("write failed: {error}"))
    }
}

impl Lean {
    async fn next(&mut self) -> Option<Result<Option<Message>, String>> {
        let wake = match self.pinged {
            Some(at) => at + self.ping_timeout,
            None => self.last_read + self.ping_after,
        };
        tokio::select! {
            line = self.reader.next() => {
                let message = match line? {
                    Ok(message) => message,
                    Err(error) => return Some(Err(error_chain(&error))),
                };
                self.last_read = Instant::now();
                self.pinged = None;
                match &message.command {
                    Command::PING(server, other) => {
                        self.own.push(Command::PONG(server.clone(), other.clone()).into());
                    }
                    Command::Response(response, _)
                        if matches!(
                            *response,
                            irc::proto::Response::ERR_NICKNAMEINUSE
                                | irc::proto::Response::ERR_ERRONEOUSNICKNAME
                        ) =>
                    {
                        // As the crate's client does: the next fallback nick.
                        let Some(nick) = self.alt_nicks.get(self.next_alt) else {
                            return Some(Err("no usable nick: every fallback is taken".into()));
                        };
                        self.own.push(Command::NICK(nick.clone()).into());
                        self.next_alt += 1;
                    }
                    _ => {}
                }
                Some(Ok(Some(message)))
            }
            () = tokio::time::sleep_until(wake) => {
                if self.pinged.is_some() {
                    return Some(Err(format!("the server did not answer a PING within {:?}", self.ping_timeout)));
                }
                self.pinged = Some(Instant::now());
                self.own.push(Command::PING("tribridge".into(), None).into());
                // Nothing read: the caller writes the PING and asks again.
                Some(Ok(None))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    fn lean(socket: tokio::io::DuplexStream, ping: Duration) -> Link {
        Link::Lean(Lean {
            reader: FramedRead::with_capacity(
                Box::new(socket),
                IrcCodec::new(charset::WIRE_LABEL).unwrap(),
                READ_CAPACITY,
            ),
            alt_nicks: vec!["dave[m]1".into()],
            next_alt: 0,
            last_read: Instant::now(),
            pinged: None,
            ping_after: ping,
            ping_timeout: ping,
            own: Vec::new(),
        })
    }

    async fn written(server: &mut tokio::io::DuplexStream) -> String {
        let mut buffer = vec![0; 512];
        let read = server.read(&mut buffer).await.unwrap();
        String::from_utf8_lossy(&buffer[..read]).into_owned()
    }

    #[tokio::test]
    async fn answers_ping_falls_back_on_a_taken_nick_and_writes_the_sessions_lines() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut link = lean(client, PING_AFTER);
        let outgoing = Outgoing::Own(Mutex::new(Vec::new()));
        server.write_all(b"PING :irc.test\r\n").await.unwrap();
        assert!(matches!(link.next().await, Some(Ok(Some(_)))));
        outgoing
            .send(Command::PRIVMSG("#c".into(), "hi".into()).into())
            .unwrap();
        link.flush(&outgoing).await.unwrap();
        assert_eq!(
            written(&mut server).await,
            "PONG irc.test\r\nPRIVMSG #c hi\r\n"
        );
        server
            .write_all(b":irc.test 433 * dave[m] :Nickname is already in use\r\n")
            .await
            .unwrap();
        assert!(matches!(link.next().await, Some(Ok(Some(_)))));
        link.flush(&outgoing).await.unwrap();
        assert_eq!(written(&mut server).await, "NICK dave[m]1\r\n");
        server
            .write_all(b":irc.test 433 * dave[m]1 :Nickname is already in use\r\n")
            .await
            .unwrap();
        let Some(Err(reason)) = link.next().await else {
            panic!("no fallback left ends the connection");
        };
        assert!(reason.contains("no usable nick"), "{reason}");
    }

    #[tokio::test]
    async fn pings_a_silent_server_and_gives_up_when_it_does_not_answer() {
        let (client, mut server) = tokio::io::duplex(4096);
        let mut link = lean(client, Duration::from_millis(50));
        let outgoing = Outgoing::Own(Mutex::new(Vec::new()));
        assert!(matches!(link.next().await, Some(Ok(None))));
        link.flush(&outgoing).await.unwrap();
        assert_eq!(written(&mut server).await, "PING tribridge\r\n");
        let Some(Err(reason)) = link.next().await else {
            panic!("a server that does not answer the PING ends the connection");
        };
        assert!(reason.contains("did not answer a PING"), "{reason}");
    }

    #[test]
    fn the_pending_lines_are_bounded() {
        let outgoing = Outgoing::Own(Mutex::new(Vec::new()));
        for _ in 0..PENDING_LINES {
            outgoing
                .send(Command::PING("x".into(), None).into())
                .unwrap();
        }
        assert!(
            outgoing
                .send(Command::PING("x".into(), None).into())
                .is_err()
        );
    }
}
