//! One blocking connection to one node: frames requests out, reassembles responses in; over
//! TLS (a blocking `rustls::StreamOwned` on the socket) when the configuration has it.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use crate::client::{ClientConfig, Error};
use crate::client_proto::{
    decode_response, encode_append, encode_request, AccessRole, AckMode, ClientProtoError, Request,
    Response,
};
use crate::frame::{FrameDecoder, FrameType};

/// The byte stream to a node: the socket, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The socket under it (timeouts and blocking mode are set there).
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Tls(tls) => &tls.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(buf),
            Stream::Tls(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Tls(tls) => tls.flush(),
        }
    }
}

/// The name a node's certificate must carry when it is dialled at `address` (`host:port`): the
/// host, a DNS name or an IP address.
fn server_name(address: &str) -> io::Result<ServerName<'static>> {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} cannot name a TLS server: {e}"),
        )
    })
}

/// Runs the TLS handshake on `socket` (bounded by its timeouts), verifying the node's
/// certificate for `address`'s host.
fn handshake(
    socket: TcpStream,
    config: &Arc<rustls::ClientConfig>,
    address: &str,
) -> io::Result<Stream> {
    let session = rustls::ClientConnection::new(Arc::clone(config), server_name(address)?)
        .map_err(io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(session, socket);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(Stream::Tls(Box::new(tls)))
}

/// A TCP (or TLS) connection to one node's client port.
pub(crate) struct Connection {
    stream: Stream,
    address: String,
    decoder: FrameDecoder,
    send_buf: Vec<u8>,
    cluster_id: crate::cluster_id::ClusterId,
}

impl Connection {
    /// Connects to `address` (host:port; every resolved address is tried in turn) and, with a
    /// token configured, authenticates before anything else is sent.
    pub(crate) fn open(address: &str, config: &ClientConfig) -> Result<Connection, Error> {
        let mut conn = Connection::connect(address, config)?;
        if let Some(token) = &config.token {
            conn.authenticate(token, config.request_timeout)?;
        }
        Ok(conn)
    }

    /// Sends `Authenticate` and waits for the node to accept the token.
    fn authenticate(&mut self, token: &str, timeout: Duration) -> Result<AccessRole, Error> {
        // Id 0: the credential belongs to the connection, not to a request.
        self.send(&Request::Authenticate {
            request_id: 0,
            token: token.to_string(),
        })?;
        let address = self.address.clone();
        match self.recv(timeout)? {
            Some(Response::Authenticated { role, .. }) => Ok(role),
            Some(Response::Error { error, .. }) => Err(Error::Refused { address, error }),
            Some(other) => Err(Error::Protocol {
                address,
                why: format!("expected an answer to Authenticate, got {other:?}"),
            }),
            None => Err(Error::Timeout { address, timeout }),
        }
    }

    fn connect(address: &str, config: &ClientConfig) -> Result<Connection, Error> {
        let io_err = |source| Error::Io {
            address: address.to_string(),
            source,
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for addr in address.to_socket_addrs().map_err(io_err)? {
            match TcpStream::connect_timeout(&addr, config.connect_timeout) {
                Ok(socket) => {
                    socket.set_nodelay(true).map_err(io_err)?;
                    socket
                        .set_write_timeout(Some(config.request_timeout))
                        .map_err(io_err)?;
                    let stream = match &config.tls {
                        None => Stream::Plain(socket),
                        Some(tls) => {
                            socket
                                .set_read_timeout(Some(config.request_timeout))
                                .map_err(io_err)?;
                            handshake(socket, tls, address).map_err(io_err)?
                        }
                    };
                    return Ok(Connection {
                        stream,
                        address: address.to_string(),
                        decoder: FrameDecoder::new(config.frame_payload_bytes_max),
                        send_buf: Vec::new(),
                        cluster_id: config.cluster_id,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(io_err(last))
    }

    /// The address this connection was opened to.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// Sends one request (blocks until the kernel took it, at most the write timeout).
    pub(crate) fn send(&mut self, request: &Request) -> Result<(), Error> {
        let cluster_id = self.cluster_id;
        self.send_with(|out| encode_request(out, cluster_id, request))
    }

    /// Sends an append of a borrowed batch.
    pub(crate) fn send_append(
        &mut self,
        request_id: u64,
        ack: AckMode,
        batch: &[u8],
    ) -> Result<(), Error> {
        let cluster_id = self.cluster_id;
        self.send_with(|out| encode_append(out, cluster_id, request_id, ack, batch))
    }

    fn send_with(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), ClientProtoError>,
    ) -> Result<(), Error> {
        self.send_buf.clear();
        encode(&mut self.send_buf).map_err(|e| Error::Protocol {
            address: self.address.clone(),
            why: e.to_string(),
        })?;
        self.stream
            .write_all(&self.send_buf)
            .and_then(|()| self.stream.flush())
            .map_err(|source| Error::Io {
                address: self.address.clone(),
                source,
            })
    }

    /// The next response, waiting at most `timeout` (`Duration::ZERO`: only what has arrived);
    /// `Ok(None)` if none came in time.
    pub(crate) fn recv(&mut self, timeout: Duration) -> Result<Option<Response>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(response) = self.next_buffered()? {
                return Ok(Some(response));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let read = if remaining.is_zero() {
                self.read_nonblocking()
            } else {
                self.stream
                    .socket()
                    .set_read_timeout(Some(remaining))
                    .and_then(|()| self.decoder.fill_from(&mut self.stream))
            };
            match read {
                Ok(0) => {
                    return Err(Error::Disconnected {
                        address: self.address.clone(),
                    })
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) => {
                    if remaining.is_zero() || Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        address: self.address.clone(),
                        source,
                    })
                }
            }
        }
    }

    fn read_nonblocking(&mut self) -> io::Result<usize> {
        self.stream.socket().set_nonblocking(true)?;
        let result = self.decoder.fill_from(&mut self.stream);
        self.stream.socket().set_nonblocking(false)?;
        result
    }

    /// The next whole response already buffered; keepalives are skipped.
    fn next_buffered(&mut self) -> Result<Option<Response>, Error> {
        loop {
            let frame = self.decoder.next_frame().map_err(|e| Error::Protocol {
                address: self.address.clone(),
                why: e.to_string(),
            })?;
            let Some(frame) = frame else {
                return Ok(None);
            };
            if frame.header.cluster_id != self.cluster_id {
                return Err(Error::Protocol {
                    address: self.address.clone(),
                    why: format!(
                        "the node belongs to cluster {}, not {}",
                        frame.header.cluster_id, self.cluster_id
                    ),
                });
            }
            if frame.header.frame_type == FrameType::Keepalive {
                continue;
            }
            return decode_response(frame)
                .map(Some)
                .map_err(|e| Error::Protocol {
                    address: self.address.clone(),
                    why: e.to_string(),
                });
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
