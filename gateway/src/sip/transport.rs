//! SIP transports (RFC 3261 §18): UDP datagrams, and TCP or TLS streams framed by
//! Content-Length. Stream connections are tasks that hand whole messages to the endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::message::{Frame, frame};

/// SIP transport for a trunk (RFC 3261 §18; TLS per RFC 5630).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Datagrams; requests are retransmitted by the transaction layer.
    Udp,
    /// One TCP connection per trunk address.
    Tcp,
    /// TCP with TLS (rustls); the certificate is checked against the address's host name.
    Tls,
}

impl Transport {
    /// The token used in Via headers and `transport=` URI parameters.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The port a SIP URI or address without one means: 5061 for TLS, else 5060 (§19.1.2).
    pub fn default_port(self) -> u16 {
        if self == Transport::Tls { 5061 } else { 5060 }
    }

    /// True for transports that deliver reliably (no SIP retransmission, §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// Largest message accepted on a stream before the connection is dropped as hostile.
const MAX_STREAM_MESSAGE: usize = 64 * 1024;

/// How long a TLS handshake may take, either way; a peer that opens a connection and says
/// nothing must not hold a task and a socket for ever.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection on which nothing arrives for this long is closed (trunks send keep-alive
/// CRLFs or OPTIONS far more often, RFC 5626 §4.4.1; the next request reconnects).
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// How long one write may wait for the peer to read.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Messages queued for one connection; a peer that does not read them is dropped.
pub const WRITE_QUEUE: usize = 256;

/// Splits `host[:port]` (with `[v6]:port`), applying the transport's default port
/// (5060, or 5061 for TLS, §19.1.2).
pub fn split_host_port(address: &str, transport: Transport) -> Option<(String, u16)> {
    let default_port = transport.default_port();
    let address = address.trim();
    if address.is_empty() || address.contains(char::is_whitespace) || address.contains('/') {
        return None;
    }
    if let Some(rest) = address.strip_prefix('[') {
        let (host, tail) = rest.split_once(']')?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if tail.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_string(), port.parse().ok()?)),
        Some(_) => Some((address.to_string(), default_port)), // bare IPv6
        None => Some((address.to_string(), default_port)),
    }
}

/// Where a request goes: a resolved address, the transport, and the host name for TLS.
#[derive(Clone)]
pub struct Target {
    /// Resolved peer address.
    pub addr: SocketAddr,
    /// Transport to use.
    pub transport: Transport,
    /// Host name as configured (TLS server name, Request-URI host).
    pub host: String,
    /// Client TLS settings, for `Transport::Tls`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host,
            self.addr.port(),
            self.transport.via_token()
        )
    }
}

/// What stream tasks report to the endpoint.
#[derive(Debug)]
pub enum StreamEvent {
    /// A connection is up (accepted or connected) and takes outgoing messages on `tx`.
    Up {
        /// Peer address.
        peer: SocketAddr,
        /// Transport of the connection.
        transport: Transport,
        /// Outgoing message queue (bounded: [`WRITE_QUEUE`]).
        tx: mpsc::Sender<Vec<u8>>,
    },
    /// One framed message arrived.
    Message {
        /// Peer address.
        peer: SocketAddr,
        /// Transport of the connection.
        transport: Transport,
        /// The message bytes.
        bytes: Vec<u8>,
    },
    /// The connection closed or could not be made.
    Down {
        /// Peer address.
        peer: SocketAddr,
    },
}

/// Builds the TLS client settings for a trunk: public roots plus an optional private CA.
pub fn tls_client_config(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("unusable certificate in {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Builds the TLS server settings from PEM files.
pub fn tls_server_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("cannot read {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate in {}: {e}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| format!("bad key in {}: {e}", key.display()))?
        .ok_or_else(|| format!("no private key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

/// Connects to `target` and runs the connection until it closes; reports through `events`.
pub async fn connect(
    target: Target,
    events: mpsc::UnboundedSender<StreamEvent>,
    first: Vec<Vec<u8>>,
) {
    let peer = target.addr;
    let tcp = match TcpStream::connect(peer).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "SIP connection failed");
            let _ = events.send(StreamEvent::Down { peer });
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    match (target.transport, target.tls) {
        (Transport::Tls, Some(tls)) => {
            let name = match rustls::pki_types::ServerName::try_from(target.host.clone()) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(host = %target.host, error = %e, "not a valid TLS server name");
                    let _ = events.send(StreamEvent::Down { peer });
                    return;
                }
            };
            let handshake = tokio_rustls::TlsConnector::from(tls).connect(name, tcp);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            {
                Ok(stream) => run_stream(stream, peer, Transport::Tls, events, first).await,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "TLS handshake with trunk failed");
                    let _ = events.send(StreamEvent::Down { peer });
                }
            }
        }
        _ => run_stream(tcp, peer, Transport::Tcp, events, first).await,
    }
}

/// Runs one established stream: frames incoming messages, writes queued ones.
pub async fn run_stream<S>(
    stream: S,
    peer: SocketAddr,
    transport: Transport,
    events: mpsc::UnboundedSender<StreamEvent>,
    first: Vec<Vec<u8>>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(WRITE_QUEUE);
    for msg in first {
        let _ = tx.try_send(msg);
    }
    if events
        .send(StreamEvent::Up {
            peer,
            transport,
            tx,
        })
        .is_err()
    {
        return;
    }
    let write = async move {
        while let Some(msg) = rx.recv().await {
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&msg)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    tracing::warn!(%peer, "SIP peer does not read what we send; closing");
                    break;
                }
            }
        }
    };
    let events_r = events.clone();
    let read = async move {
        let mut buf = Vec::with_capacity(8192);
        let mut chunk = [0u8; 8192];
        loop {
            let n = match tokio::time::timeout(IDLE_TIMEOUT, reader.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return,
                Ok(Ok(n)) => n,
                Err(_) => {
                    tracing::debug!(%peer, "SIP connection idle; closing");
                    return;
                }
            };
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match frame(&buf) {
                    Ok(Frame::Complete(len)) => {
                        let bytes: Vec<u8> = buf.drain(..len).collect();
                        if bytes.iter().all(|b| *b == b'\r' || *b == b'\n') {
                            continue;
                        }
                        if events_r
                            .send(StreamEvent::Message {
                                peer,
                                transport,
                                bytes,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(Frame::Incomplete) if buf.len() > MAX_STREAM_MESSAGE => {
                        tracing::warn!(%peer, "SIP message over {MAX_STREAM_MESSAGE} bytes on stream; closing");
                        return;
                    }
                    Ok(Frame::Incomplete) => break,
                    Err(e) => {
                        // A stream cannot be resynchronised after a framing error (§18.3).
                        tracing::warn!(%peer, error = %e, "unframeable SIP on stream; closing");
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = write => {}
        _ = read => {}
    }
    let _ = events.send(StreamEvent::Down { peer });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("10.0.0.1:5080", Transport::Udp),
            Some(("10.0.0.1".into(), 5080))
        );
        assert_eq!(
            split_host_port("pbx.example.com", Transport::Tls),
            Some(("pbx.example.com".into(), 5061))
        );
        assert_eq!(
            split_host_port("[::1]:5062", Transport::Tcp),
            Some(("::1".into(), 5062))
        );
        assert_eq!(split_host_port("pbx:port", Transport::Udp), None);
        assert_eq!(split_host_port("", Transport::Udp), None);
        assert_eq!(split_host_port("sip:pbx", Transport::Udp), None);
    }
}
