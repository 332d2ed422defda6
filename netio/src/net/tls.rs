//! TLS inside the event loop: a connection's byte stream through a rustls state machine, no
//! thread per connection. Bytes read from the socket go to [`TlsSession::receive`], which hands
//! the plaintext to the connection's frame decoder; queued frames are encrypted by
//! [`TlsSession::encrypt`] a slice at a time and [`TlsSession::take_ciphertext`] fills the next
//! socket send. The plaintext waiting to be encrypted stays in the connection's bounded send
//! queue (`conn.rs`): rustls itself buffers at most what one send carries.
//!
//! Configuration comes from PEM files ([`load_certs`], [`load_key`], [`load_roots`]) turned into
//! rustls configurations for a server (with or without client certificates: [`server_config`])
//! and a client ([`client_config`]); the peer port uses both ends with mutual authentication
//! ([`PeerTls`], [`PeerTlsFiles`]). TLS 1.3 only, ring's cryptography, no session resumption:
//! every connection is verified against the configuration it started with, so a CA removed from
//! the trusted bundle admits nobody new.
//!
//! A node's certificate names it: a DNS subject alternative name `raftline-node-N`
//! ([`node_name`]). A node dialling peer N verifies the server's certificate for that name, and
//! a peer connection's hello as N is admitted only if its client certificate names N
//! ([`TlsSession::peer_is_named`]).

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::Resumption;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};

/// The DNS name a node's certificate carries (as a subject alternative name) and a node dialling
/// it verifies: `raftline-node-N`.
pub fn node_name(node_id: u64) -> String {
    format!("raftline-node-{node_id}")
}

/// Why TLS material could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file holds no usable PEM item of the kind asked for.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the material (a key that does not match the certificate, ...).
    #[error("{0}")]
    Config(String),
}

fn pem_error(path: &Path, e: pem::Error) -> TlsError {
    let path = path.to_path_buf();
    match e {
        pem::Error::Io(source) => TlsError::Read { path, source },
        pem::Error::NoItemsFound => TlsError::Pem {
            path,
            what: "no PEM item of the kind needed (CERTIFICATE or PRIVATE KEY)".into(),
        },
        e => TlsError::Pem {
            path,
            what: e.to_string(),
        },
    }
}

/// The certificates of a PEM file, in order (a chain: the end entity first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// Every CA certificate of a PEM bundle, as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// Whether a TLS server asks its clients for a certificate.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// It does not ask.
    None,
    /// A client may present one, which must then chain to these roots; one without is admitted
    /// too (and has no names: [`TlsSession::peer_is_named`] is false).
    Optional(Arc<RootCertStore>),
    /// Every client must present one that chains to these roots.
    Required(Arc<RootCertStore>),
}

/// A TLS 1.3 server configuration presenting `chain` (signed with `key`) and checking client
/// certificates as `client_auth` says.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?;
    let verifier = |roots| WebPkiClientVerifier::builder_with_provider(roots, provider());
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(roots) => builder.with_client_cert_verifier(
            verifier(roots)
                .allow_unauthenticated()
                .build()
                .map_err(config_error)?,
        ),
        ClientAuth::Required(roots) => {
            builder.with_client_cert_verifier(verifier(roots).build().map_err(config_error)?)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(config_error)?;
    // No resumption: each connection is checked against the configuration of its day.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A TLS 1.3 client configuration trusting `roots`, presenting `identity` (a chain and its key)
/// when the server asks for a certificate.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(config_error)?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The peer port's three PEM files (etcd's `--peer-cert-file`, `--peer-key-file`,
/// `--peer-trusted-ca-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    /// This node's certificate (chain), naming it `raftline-node-N`.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA bundle every peer's certificate must chain to.
    pub trusted_ca: PathBuf,
}

/// What [`PeerTlsFiles::stamp`] reads: each file's modification time and size, to notice a
/// replaced file without reading it.
pub type FilesStamp = [(Option<SystemTime>, u64); 3];

impl PeerTlsFiles {
    /// Loads the three files into both ends of the peer port's mutual TLS.
    pub fn load(&self) -> Result<PeerTls, TlsError> {
        let chain = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        let roots = Arc::new(load_roots(&self.trusted_ca)?);
        Ok(PeerTls {
            server: server_config(
                chain.clone(),
                key.clone_key(),
                ClientAuth::Required(Arc::clone(&roots)),
            )?,
            client: client_config(roots, Some((chain, key)))?,
        })
    }

    /// The files' modification times and sizes now (a missing file reads as `(None, 0)`): a
    /// reload is due when this changes.
    pub fn stamp(&self) -> FilesStamp {
        [&self.cert, &self.key, &self.trusted_ca].map(|path| match std::fs::metadata(path) {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(_) => (None, 0),
        })
    }
}

/// Mutual TLS on the peer port: the server end for the connections peers open, the client end
/// for those this node opens.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// Requires a client certificate from the trusted CA.
    pub server: Arc<ServerConfig>,
    /// Presents this node's certificate and verifies the server's for `raftline-node-N`.
    pub client: Arc<ClientConfig>,
}

/// One connection's TLS state (see the module documentation).
pub(super) struct TlsSession {
    conn: Connection,
    /// Plaintext handed to rustls that the ciphertext taken so far includes: credited to the
    /// send queue when the send carrying it completes.
    encrypted_unsent: usize,
}

/// Plaintext read out of rustls per call (it holds at most one record's worth at a time).
const PLAINTEXT_CHUNK_BYTES: usize = 16 << 10;

impl TlsSession {
    /// The server end of a connection a remote opened.
    pub(super) fn server(config: &Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession::new(Connection::Server(
            rustls::ServerConnection::new(Arc::clone(config))?,
        )))
    }

    /// The client end of a connection to a server whose certificate must name `name`.
    pub(super) fn client(
        config: &Arc<ClientConfig>,
        name: &str,
    ) -> Result<TlsSession, rustls::Error> {
        let name = ServerName::try_from(name.to_owned())
            .map_err(|e| rustls::Error::General(format!("server name {name:?}: {e}")))?;
        Ok(TlsSession::new(Connection::Client(ClientConnection::new(
            Arc::clone(config),
            name,
        )?)))
    }

    fn new(mut conn: Connection) -> TlsSession {
        // The connection's own send queue bounds what waits; rustls is handed at most one
        // send's worth at a time, so its buffer needs no limit of its own (a limit would make
        // it take less than it is given).
        conn.set_buffer_limit(None);
        TlsSession {
            conn,
            encrypted_unsent: 0,
        }
    }

    /// Takes `ciphertext` from the socket and hands the plaintext it decrypts to `plaintext`
    /// (in order, possibly in several pieces). An error is fatal for the connection.
    pub(super) fn receive(
        &mut self,
        mut ciphertext: &[u8],
        mut plaintext: impl FnMut(&[u8]),
    ) -> Result<(), rustls::Error> {
        while !ciphertext.is_empty() {
            match self.conn.read_tls(&mut ciphertext) {
                Ok(0) => break, // close_notify received: nothing more is read
                Ok(_) => {}
                Err(e) => return Err(rustls::Error::General(e.to_string())),
            }
            self.conn.process_new_packets()?;
            let mut reader = self.conn.reader();
            loop {
                match reader.fill_buf() {
                    Ok([]) => break,
                    Ok(buf) => {
                        let n = buf.len().min(PLAINTEXT_CHUNK_BYTES);
                        plaintext(&buf[..n]);
                        reader.consume(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(rustls::Error::General(e.to_string())),
                }
            }
        }
        Ok(())
    }

    /// Whether the handshake is still running (no plaintext may be handed over yet).
    pub(super) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Encrypts `plain` (after the handshake): its ciphertext is in the next
    /// [`TlsSession::take_ciphertext`]. Fails only once the session has failed.
    pub(super) fn encrypt(&mut self, plain: &[u8]) -> io::Result<()> {
        debug_assert!(!self.is_handshaking(), "plaintext waits for the handshake");
        // Without a buffer limit rustls takes all of it (or fails as a whole).
        self.conn.writer().write_all(plain)?;
        self.encrypted_unsent += plain.len();
        Ok(())
    }

    /// Appends every TLS record waiting to be sent (handshake messages, alerts, encrypted
    /// plaintext) to `out`; returns the plaintext bytes the appended records carry.
    pub(super) fn take_ciphertext(&mut self, out: &mut Vec<u8>) -> usize {
        while self.conn.wants_write() {
            self.conn
                .write_tls(out)
                .expect("writing into a Vec cannot fail");
        }
        std::mem::take(&mut self.encrypted_unsent)
    }

    /// Whether the remote's certificate (verified during the handshake) names `name`: a
    /// connection without one names nothing.
    pub(super) fn peer_is_named(&self, name: &str) -> bool {
        let Some(end_entity) = self.conn.peer_certificates().and_then(|c| c.first()) else {
            return false;
        };
        let Ok(name) = ServerName::try_from(name) else {
            return false;
        };
        ParsedCertificate::try_from(end_entity)
            .and_then(|cert| rustls::client::verify_server_name(&cert, &name))
            .is_ok()
    }
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .finish()
    }
}

/// Certificates made on the spot for the unit tests, and a session pair driven in memory.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    /// A CA and the roots that trust it.
    pub(crate) struct TestCa {
        issuer: CertifiedIssuer<'static, KeyPair>,
        pub(crate) roots: Arc<RootCertStore>,
    }

    impl TestCa {
        pub(crate) fn new() -> TestCa {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let issuer =
                CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
            let mut roots = RootCertStore::empty();
            roots.add(issuer.der().clone()).unwrap();
            TestCa {
                issuer,
                roots: Arc::new(roots),
            }
        }

        /// A chain and key for DNS name `name`.
        pub(crate) fn leaf(
            &self,
            name: &str,
        ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .signed_by(&key, &self.issuer)
                .unwrap();
            let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            (vec![cert.der().clone()], key)
        }

        /// Mutual TLS for node `id` under this CA.
        pub(crate) fn peer_tls(&self, id: u64) -> PeerTls {
            let (chain, key) = self.leaf(&node_name(id));
            PeerTls {
                server: server_config(
                    chain.clone(),
                    key.clone_key(),
                    ClientAuth::Required(Arc::clone(&self.roots)),
                )
                .unwrap(),
                client: client_config(Arc::clone(&self.roots), Some((chain, key))).unwrap(),
            }
        }
    }

    /// Runs the handshake between `client` and `server` in memory; the first error either
    /// side finds, if any.
    pub(crate) fn handshake(
        client: &mut TlsSession,
        server: &mut TlsSession,
    ) -> Result<(), rustls::Error> {
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.take_ciphertext(&mut wire);
            server.receive(&wire, |_| panic!("no plaintext during the handshake"))?;
            wire.clear();
            server.take_ciphertext(&mut wire);
            client.receive(&wire, |_| panic!("no plaintext during the handshake"))?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{handshake, TestCa};
    use super::*;

    #[test]
    fn mutual_tls_carries_bytes_and_binds_the_client_certificate_to_its_node() {
        let ca = TestCa::new();
        let (one, two) = (ca.peer_tls(1), ca.peer_tls(2));
        let mut client = TlsSession::client(&one.client, &node_name(2)).unwrap();
        let mut server = TlsSession::server(&two.server).unwrap();
        handshake(&mut client, &mut server).unwrap();
        assert!(server.peer_is_named(&node_name(1)));
        assert!(
            !server.peer_is_named(&node_name(3)),
            "names only its own node"
        );
        assert!(client.peer_is_named(&node_name(2)));

        let sent: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        client.encrypt(&sent).unwrap();
        let mut wire = Vec::new();
        assert_eq!(client.take_ciphertext(&mut wire), sent.len());
        assert!(wire.len() > sent.len(), "records add their overhead");
        let mut got = Vec::new();
        server.receive(&wire, |p| got.extend_from_slice(p)).unwrap();
        assert_eq!(got, sent);
    }

    #[test]
    fn a_client_certificate_from_another_ca_is_refused_at_the_handshake() {
        let (ours, theirs) = (TestCa::new(), TestCa::new());
        let stranger = theirs.peer_tls(1);
        let mut client = TlsSession::client(&stranger.client, &node_name(2)).unwrap();
        let mut server = TlsSession::server(&ours.peer_tls(2).server).unwrap();
        // The stranger does not trust our server's certificate either: it fails first.
        let err = handshake(&mut client, &mut server).unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );

        // A stranger that trusts our CA but presents a certificate of its own CA.
        let (chain, key) = theirs.leaf(&node_name(1));
        let config = client_config(Arc::clone(&ours.roots), Some((chain, key))).unwrap();
        let mut client = TlsSession::client(&config, &node_name(2)).unwrap();
        let mut server = TlsSession::server(&ours.peer_tls(2).server).unwrap();
        let err = handshake(&mut client, &mut server).unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn a_server_certificate_for_another_node_fails_the_dial() {
        let ca = TestCa::new();
        let mut client = TlsSession::client(&ca.peer_tls(1).client, &node_name(3)).unwrap();
        let mut server = TlsSession::server(&ca.peer_tls(2).server).unwrap();
        let err = handshake(&mut client, &mut server).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::NotValidForNameContext { .. }
                    )
            ),
            "{err:?}"
        );
    }

    /// Nets on loopback, for the tests of the peer port's TLS through the event loop.
    mod over_sockets {
        use std::collections::BTreeMap;
        use std::net::SocketAddr;
        use std::time::{Duration, Instant};

        use super::super::testing::TestCa;
        use super::super::PeerTls;
        use crate::cluster_id::ClusterId;
        use crate::frame::{self, FrameHeader, FrameType};
        use crate::net::{Net, NetConfig, NetEvent};
        use crate::reactor::Backend;

        const CLUSTER: ClusterId = ClusterId(0x7150);

        fn net(id: u64, tls: PeerTls, peers: &[(u64, SocketAddr)], backend: Backend) -> Net {
            let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let peers: BTreeMap<u64, SocketAddr> = peers.iter().copied().collect();
            let mut cfg = NetConfig::new(id, CLUSTER, any, any, peers);
            cfg.backend = backend;
            cfg.peer_tls = Some(tls);
            Net::bind(cfg).unwrap()
        }

        /// Polls every net until `found` accepts an event of net `who` (or panics at a deadline).
        fn poll_until(nets: &mut [&mut Net], who: usize, mut found: impl FnMut(&NetEvent) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut events = Vec::new();
            loop {
                for (i, net) in nets.iter_mut().enumerate() {
                    net.poll(Some(Duration::from_millis(2)), &mut events)
                        .unwrap();
                    if i == who && events.iter().any(&mut found) {
                        return;
                    }
                    events.clear();
                }
                assert!(Instant::now() < deadline, "the event never came");
            }
        }

        fn peer_message(from: u64, payload: &[u8]) -> Vec<u8> {
            let header = FrameHeader {
                frame_type: FrameType::PeerMessage,
                cluster_id: CLUSTER,
                sender_id: from,
            };
            let mut out = Vec::new();
            frame::encode(&mut out, header, &[payload]).unwrap();
            out
        }

        #[test]
        fn frames_cross_a_mutual_tls_link_whole_and_in_order() {
            for backend in [Backend::Uring, Backend::Poll] {
                let ca = TestCa::new();
                let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
                let mut one = net(1, ca.peer_tls(1), &[(2, nowhere)], backend);
                let mut two = net(2, ca.peer_tls(2), &[(1, one.local_addrs().peer)], backend);
                poll_until(&mut [&mut one, &mut two], 1, |e| {
                    matches!(e, NetEvent::PeerUp { id: 1 })
                });
                let big: Vec<u8> = (0..(700 << 10) as u32).map(|i| (i % 251) as u8).collect();
                for payload in [&b"first"[..], &big, b"last"] {
                    two.send_peer(1, peer_message(2, payload)).unwrap();
                }
                let mut got = Vec::new();
                poll_until(&mut [&mut one, &mut two], 0, |e| {
                    if let NetEvent::PeerFrame { from: 2, frame, .. } = e {
                        got.push(frame.payload.clone());
                    }
                    got.len() == 3
                });
                assert_eq!(got, [b"first".to_vec(), big, b"last".to_vec()]);
            }
        }

        #[test]
        fn a_hello_as_a_node_the_certificate_does_not_name_is_refused() {
            let ca = TestCa::new();
            let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
            let mut one = net(1, ca.peer_tls(1), &[(2, nowhere)], Backend::Auto);
            // Says hello as node 2 with node 3's certificate (a real one, from the cluster's CA).
            let mut impostor = net(
                2,
                ca.peer_tls(3),
                &[(1, one.local_addrs().peer)],
                Backend::Auto,
            );
            poll_until(&mut [&mut one, &mut impostor], 1, |e| {
                matches!(e, NetEvent::PeerUp { id: 1 })
            });
            impostor.send_peer(1, peer_message(2, b"forged")).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut events = Vec::new();
            while !one.stats().closed.contains_key("peer_identity") {
                one.poll(Some(Duration::from_millis(2)), &mut events)
                    .unwrap();
                impostor
                    .poll(Some(Duration::from_millis(2)), &mut Vec::new())
                    .unwrap();
                assert!(
                    Instant::now() < deadline,
                    "never refused: {:?}",
                    one.stats()
                );
            }
            assert!(
                !events
                    .iter()
                    .any(|e| matches!(e, NetEvent::PeerFrame { .. })),
                "{events:?}"
            );
        }
    }

    #[test]
    fn pem_files_load_and_bad_ones_say_which_file_and_why() {
        let dir = std::env::temp_dir().join(format!("raftline-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(matches!(load_certs(&missing), Err(TlsError::Read { .. })));
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let err = load_certs(&garbage).unwrap_err().to_string();
        assert!(
            err.contains("garbage.pem") && err.contains("no CERTIFICATE"),
            "{err}"
        );
        assert!(load_key(&garbage).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
