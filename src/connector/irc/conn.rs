//! The IRC connection: TCP with `TCP_NODELAY`, TLS, the line codec, and the `irc` crate's
//! [`Transport`] for PING replies, keepalive PINGs and their timeout.
//!
//! The connector owns the socket instead of letting `irc::client::Client` open it, because the
//! crate does not expose it and leaves Nagle's algorithm on. A bridge writes lines back to back
//! on a connection where the server rarely answers, so each small line would wait for the
//! server's delayed acknowledgement of the one before (up to 40 ms on Linux).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Sink, Stream};
use irc::client::transport::Transport;
use irc::proto::{IrcCodec, Message};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;

/// A byte stream the codec can run on: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("{0}")]
    Tcp(#[source] std::io::Error),
    /// The TLS handshake failed (an untrusted certificate among the causes).
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    /// The host is not a name or address TLS can verify.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    /// `tls_ca_file` could not be read.
    #[error("cannot read tls_ca_file {path}: {error}")]
    CaFile {
        /// The configured path.
        path: String,
        /// What went wrong.
        #[source]
        error: std::io::Error,
    },
    /// The charset label is unknown to the codec.
    #[error("line codec: {0}")]
    Codec(String),
}

/// Where and how to connect.
pub struct Endpoint<'a> {
    /// Host name or address.
    pub host: &'a str,
    /// TCP port.
    pub port: u16,
    /// TLS on.
    pub tls: bool,
    /// Verify the server's certificate (only with `tls`).
    pub tls_verify: bool,
    /// Extra trusted roots (PEM).
    pub tls_ca_file: Option<&'a std::path::Path>,
    /// The codec's encoding label.
    pub encoding: &'a str,
    /// Send a PING after this much silence from the server.
    pub ping_time: Duration,
    /// Give up when a PING is not answered within this.
    pub ping_timeout: Duration,
}

/// The writing half: queues a line; the [`Connection`] writes it when it is next polled.
#[derive(Clone)]
pub struct Sender(mpsc::UnboundedSender<Message>);

impl Sender {
    /// Queue one line. Fails only when the connection is gone.
    pub fn send(&self, message: Message) -> Result<(), mpsc::error::SendError<Message>> {
        self.0.send(message)
    }
}

/// An open connection: a stream of the server's lines that also writes the queued ones.
pub struct Connection {
    transport: Pin<Box<Transport<Box<dyn Io>>>>,
    outgoing: mpsc::UnboundedReceiver<Message>,
    /// A line taken from the queue that the transport was not ready for yet.
    waiting: Option<Message>,
    /// Lines handed to the transport and not yet flushed.
    unflushed: bool,
}

impl Connection {
    /// Connect, with TLS if asked, and frame the stream as IRC lines.
    pub async fn open(endpoint: &Endpoint<'_>) -> Result<(Connection, Sender), ConnectError> {
        let tcp = TcpStream::connect((endpoint.host, endpoint.port))
            .await
            .map_err(ConnectError::Tcp)?;
        tcp.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let io: Box<dyn Io> = if endpoint.tls {
            let config = tls_config(endpoint)?;
            let name = ServerName::try_from(endpoint.host.to_owned())
                .map_err(|_| ConnectError::ServerName(endpoint.host.to_owned()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(ConnectError::Tls)?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let codec =
            IrcCodec::new(endpoint.encoding).map_err(|e| ConnectError::Codec(e.to_string()))?;
        let (tx, outgoing) = mpsc::unbounded_channel();
        let settings = irc::client::data::Config {
            ping_time: Some(u32::try_from(endpoint.ping_time.as_secs()).unwrap_or(u32::MAX)),
            ping_timeout: Some(u32::try_from(endpoint.ping_timeout.as_secs()).unwrap_or(u32::MAX)),
            ..irc::client::data::Config::default()
        };
        let transport = Transport::new(&settings, Framed::new(io, codec), tx.clone());
        Ok((
            Connection {
                transport: Box::pin(transport),
                outgoing,
                waiting: None,
                unflushed: false,
            },
            Sender(tx),
        ))
    }

    /// Hand queued lines to the transport and flush them, as far as the socket takes them.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), irc::error::Error> {
        loop {
            let message = match self.waiting.take() {
                Some(message) => message,
                None => match self.outgoing.poll_recv(cx) {
                    Poll::Ready(Some(message)) => message,
                    Poll::Ready(None) | Poll::Pending => break,
                },
            };
            match self.transport.as_mut().poll_ready(cx) {
                Poll::Ready(Ok(())) => {
                    self.transport.as_mut().start_send(message)?;
                    self.unflushed = true;
                }
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => {
                    self.waiting = Some(message);
                    break;
                }
            }
        }
        if self.unflushed {
            match self.transport.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(error)) => return Err(error),
                Poll::Pending => {}
            }
        }
        Ok(())
    }
}

impl Stream for Connection {
    type Item = Result<Message, irc::error::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Err(error) = this.poll_write(cx) {
            return Poll::Ready(Some(Err(error)));
        }
        this.transport.as_mut().poll_next(cx)
    }
}

/// The TLS client settings: the Mozilla roots, the system's, and `tls_ca_file`; or no
/// verification at all with `tls_verify = false`.
fn tls_config(endpoint: &Endpoint<'_>) -> Result<rustls::ClientConfig, ConnectError> {
    let builder = rustls::ClientConfig::builder();
    if !endpoint.tls_verify {
        let provider = rustls::crypto::CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = endpoint.tls_ca_file {
        let pem = std::fs::read(path).map_err(|error| ConnectError::CaFile {
            path: path.display().to_string(),
            error,
        })?;
        let (_, unusable) =
            roots.add_parsable_certificates(CertificateDer::pem_slice_iter(&pem).flatten());
        if unusable > 0 {
            tracing::error!(path = %path.display(), unusable, "Some certificates in tls_ca_file are not usable.");
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `tls_verify = false`: any certificate is accepted; its signatures are still checked, so
/// the session is at least with whoever holds the key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
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
        cert: &CertificateDer<'_>,
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
