//! The Rust client: find and follow the leader, append (one batch at a time or pipelined with
//! client-side batching), subscribe from an offset with fail-over, ask every node's status.
//!
//! Blocking, on `std::net::TcpStream`: a client is a handful of connections driven by the
//! caller's thread, so an async runtime would add a dependency and a scheduler to every user
//! for no gain; pipelining comes from a bounded window of requests in flight on one connection,
//! not from threads. Every wait is bounded by a configured timeout.
//!
//! **Retries are the client's.** An answer that says "not stored, try again" (`NotLeader` with
//! its leader hint, `Busy`) or leaves the outcome open (`Timeout`, `Unavailable`, a lost
//! connection) makes the client resend the batch itself, to the (new) leader, the same bytes;
//! the caller sees only acknowledgements and the refusals retrying cannot fix (`TooLarge`,
//! `BadRequest`, ...), or an error once no leader is found within `failover_timeout` or a batch
//! was sent `attempts_max` times. A producer under leader changes and membership changes sees
//! no errors (`tools/tests/membership.rs`).
//!
//! **Delivery guarantee of appends: exactly once per idempotent producer** (the default, see
//! [`Producer`]): a resent batch carries its producer id and sequence, and the leader stores it
//! once and answers it with the original offsets. A plain producer (`idempotent: false`) and
//! [`Client::append`] are at-least-once: after an ambiguous failure a resent record may be
//! stored twice, never lost, and lands after batches that were sent later but not resent.

pub mod admin;
mod connection;
mod leader;
mod pipeline;
mod producer;
mod state_subscription;
mod subscription;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use raftline_log::{Batch, BatchError, Record};

use crate::client_proto::{AckMode, ClientError, NodeStatus, Request, Response, StartFrom};
use crate::cluster_id::ClusterId;
use crate::frame::PAYLOAD_BYTES_MAX_DEFAULT;

pub use producer::{Producer, RecordAck};
pub use state_subscription::{StateEvent, StateMode, StateSubscription};
pub use subscription::{ConsumedBatch, ConsumedRecord, Subscription};

use connection::Connection;
use leader::LeaderLink;
use pipeline::Pipeline;

/// Everything a client needs to know; [`ClientConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Client addresses (host:port) of some nodes of the cluster; any one reachable suffices.
    pub bootstrap: Vec<String>,
    /// The cluster to talk to; nodes of another cluster are refused.
    pub cluster_id: ClusterId,
    /// Longest wait for one TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for one answer (an append's answer waits for its commit).
    pub request_timeout: Duration,
    /// How long to keep looking for a leader (or another node to read from) after a failure.
    pub failover_timeout: Duration,
    /// First pause between rounds over the nodes; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest pause between rounds over the nodes.
    pub backoff_max: Duration,
    /// When appends are acknowledged.
    pub ack: AckMode,
    /// Appends in flight at once on the leader connection (pipelining window).
    pub window_appends: usize,
    /// Producer: a batch is sent once it holds this many records...
    pub batch_records_max: usize,
    /// ...or this many bytes of record data...
    pub batch_bytes_max: usize,
    /// ...or its first record waited this long (checked on every `send`/`poll`).
    pub linger: Duration,
    /// Attempts per batch (first send included) before the producer gives up on it.
    pub attempts_max: u32,
    /// Subscription: bytes of batches the node may send ahead of consumption (back-pressure).
    pub subscribe_window_bytes: u64,
    /// Subscription: with nothing received for this long, probe the node with a status request.
    pub idle_probe_interval: Duration,
    /// Largest frame payload accepted from a node.
    pub frame_payload_bytes_max: u32,
    /// Producer: idempotent (the default): the producer takes an id from the cluster and every
    /// batch carries it with its sequence, so the leader stores a resent batch once and answers
    /// it with the original offsets (exactly once per producer session). `false`: plain
    /// batches, at-least-once.
    pub idempotent: bool,
    /// Token sent (`Authenticate`) first on every connection, for nodes with an auth file; a
    /// node that refuses it fails the connection with `BadCredentials`, at once, on every path
    /// (no fail-over can fix a wrong token). `None`: no authentication.
    pub token: Option<String>,
    /// TLS to every node (`tls::client_config`: the CA the nodes' client-port certificates chain
    /// to, and a client certificate if nodes should know this client by it); each node's
    /// certificate must name the host it is dialled at. `None`: plaintext.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl ClientConfig {
    /// A configuration with LAN defaults for the cluster `cluster_id` reached at `bootstrap`.
    pub fn new(bootstrap: Vec<String>, cluster_id: ClusterId) -> ClientConfig {
        ClientConfig {
            bootstrap,
            cluster_id,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            failover_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ack: AckMode::Quorum,
            window_appends: 16,
            batch_records_max: 1000,
            batch_bytes_max: 256 << 10,
            linger: Duration::from_millis(5),
            attempts_max: 10,
            subscribe_window_bytes: 4 << 20,
            idle_probe_interval: Duration::from_secs(2),
            frame_payload_bytes_max: PAYLOAD_BYTES_MAX_DEFAULT,
            idempotent: true,
            token: None,
            tls: None,
        }
    }
}

/// What went wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No node answered as leader within the fail-over timeout.
    #[error("no leader reachable at {addresses} ({last}): is the cluster running? try `raftline status`")]
    NoLeader {
        /// The addresses tried.
        addresses: String,
        /// The last failure seen.
        last: String,
    },
    /// No node could serve a subscription within the fail-over timeout.
    #[error(
        "no node reachable at {addresses} ({last}): is the cluster running? try `raftline status`"
    )]
    NoNode {
        /// The addresses tried.
        addresses: String,
        /// The last failure seen.
        last: String,
    },
    /// A socket operation failed.
    #[error("{address}: {source}")]
    Io {
        /// The node's address.
        address: String,
        /// The OS error.
        source: io::Error,
    },
    /// The node closed the connection.
    #[error("{address} closed the connection")]
    Disconnected {
        /// The node's address.
        address: String,
    },
    /// The node did not answer in time.
    #[error("{address} did not answer within {timeout:?}")]
    Timeout {
        /// The node's address.
        address: String,
        /// How long the client waited.
        timeout: Duration,
    },
    /// The node refused the request with a typed error that retrying cannot fix.
    #[error("{address} refused the request: {error}")]
    Refused {
        /// The node's address.
        address: String,
        /// The node's reason.
        error: ClientError,
    },
    /// The node sent something that is not the protocol (or belongs to another cluster).
    #[error("protocol error from {address}: {why}")]
    Protocol {
        /// The node's address.
        address: String,
        /// What was wrong.
        why: String,
    },
    /// The records do not make a valid batch (e.g. too large).
    #[error("cannot build a batch: {0}")]
    Batch(#[from] BatchError),
    /// A batch was given up after `attempts_max` attempts.
    #[error("gave up on a batch after {attempts} attempts; last failure: {last}")]
    AttemptsExhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

impl Error {
    /// Whether the node refused this client's credentials (a bad token, or a role too low for
    /// the request): every node would, so fail-over does not try another.
    pub fn is_access_refused(&self) -> bool {
        matches!(
            self,
            Error::Refused {
                error: ClientError::BadCredentials | ClientError::Forbidden { .. },
                ..
            }
        )
    }
}

/// Offsets of an acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOffsets {
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record (`base_offset - 1` for an empty append).
    pub last_offset: u64,
}

/// The status answer of one node, or why it gave none.
#[derive(Debug)]
pub struct NodeStatusResult {
    /// The address asked.
    pub address: String,
    /// Its status, or the failure.
    pub result: Result<NodeStatus, Error>,
}

/// A client of one cluster: appends go to the leader (followed across elections).
pub struct Client {
    config: ClientConfig,
    pipeline: Pipeline,
}

impl Client {
    /// Finds the cluster's leader among `config.bootstrap` and connects to it.
    pub fn connect(config: ClientConfig) -> Result<Client, Error> {
        let mut pipeline = Pipeline::new(config.clone(), 1);
        pipeline.connect()?;
        Ok(Client { config, pipeline })
    }

    /// The configuration this client runs with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Appends `records` as one batch and waits for its acknowledgement (at-least-once: see the
    /// module documentation). After an error the outcome is unknown (the batch may have been
    /// committed); this client does not send it again by itself.
    pub fn append(&mut self, records: &[Record]) -> Result<AppendOffsets, Error> {
        let batch = Batch::encode(records)?.into_bytes();
        let sent = self
            .pipeline
            .submit(batch, records.len() as u64, 0)
            .and_then(|()| self.pipeline.drain());
        if let Err(e) = sent {
            self.pipeline.abandon();
            return Err(e);
        }
        let mut completed = self.pipeline.take_completed();
        assert_eq!(completed.len(), 1, "one batch given, one answered");
        let done = completed.pop().expect("length checked");
        let base_offset = done.result.map_err(|error| Error::Refused {
            address: done.address,
            error,
        })?;
        Ok(AppendOffsets {
            base_offset,
            last_offset: (base_offset + records.len() as u64).wrapping_sub(1),
        })
    }

    /// A pipelined producer with client-side batching, on its own leader connection.
    pub fn producer(&self) -> Producer {
        Producer::new(self.config.clone())
    }

    /// Subscribes to committed records from `from`, on any node; fails over to another node
    /// and resumes after the last record delivered.
    pub fn subscribe(&self, from: StartFrom) -> Result<Subscription, Error> {
        Subscription::open(self.config.clone(), from)
    }

    /// Calls `on_record` for every committed record from `from` until it returns
    /// `ControlFlow::Break` (then `Ok`) or the subscription fails for good.
    pub fn subscribe_with(
        &self,
        from: StartFrom,
        on_record: impl FnMut(ConsumedRecord) -> std::ops::ControlFlow<()>,
    ) -> Result<(), Error> {
        self.subscribe(from)?.for_each_record(on_record)
    }

    /// The status of every bootstrap node (each asked separately; unreachable ones give errors).
    pub fn status(&self) -> Vec<NodeStatusResult> {
        status_of_all(&self.config)
    }
}

/// Asks every bootstrap node of `config` for its status (needs no leader).
pub fn status_of_all(config: &ClientConfig) -> Vec<NodeStatusResult> {
    config
        .bootstrap
        .iter()
        .map(|address| NodeStatusResult {
            address: address.clone(),
            result: status_of(address, config),
        })
        .collect()
}

/// Asks the node at `address` for its status.
pub fn status_of(address: &str, config: &ClientConfig) -> Result<NodeStatus, Error> {
    StatusClient::open(address, config)?.ask()
}

/// Asks the node at `address` to take a snapshot of everything it applied and waits (at most
/// `wait`) until it is durable: its index and the offset the log continues at.
pub fn snapshot_now(
    address: &str,
    config: &ClientConfig,
    wait: Duration,
) -> Result<(u64, u64), Error> {
    let mut conn = Connection::open(address, config)?;
    conn.send(&Request::SnapshotNow { request_id: 1 })?;
    match conn.recv(wait)? {
        Some(Response::SnapshotTaken {
            index, cut_offset, ..
        }) => Ok((index, cut_offset)),
        Some(Response::Error { error, .. }) => Err(Error::Refused {
            address: address.to_string(),
            error,
        }),
        Some(other) => Err(Error::Protocol {
            address: address.to_string(),
            why: format!("expected a snapshot answer, got {other:?}"),
        }),
        None => Err(Error::Timeout {
            address: address.to_string(),
            timeout: wait,
        }),
    }
}

/// Finds the leader the way producers do (bounded by `failover_timeout`) and returns its
/// client address.
pub fn leader_address(config: &ClientConfig) -> Result<String, Error> {
    let mut link = LeaderLink::new(config.clone());
    Ok(link.connection()?.address().to_string())
}

/// A persistent status connection to one node: each [`StatusClient::ask`] is one `Status`
/// request on the same TCP connection, so a monitor sampling a node every millisecond does not
/// leave thousands of connections in TIME_WAIT.
pub struct StatusClient {
    conn: Connection,
    config: ClientConfig,
    next_request_id: u64,
}

impl StatusClient {
    /// Connects to the node at `address` (bounded by `config.connect_timeout`).
    pub fn open(address: &str, config: &ClientConfig) -> Result<StatusClient, Error> {
        Ok(StatusClient {
            conn: Connection::open(address, config)?,
            config: config.clone(),
            next_request_id: 1,
        })
    }

    /// The node's status now (bounded by `config.request_timeout`).
    pub fn ask(&mut self) -> Result<NodeStatus, Error> {
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        ask_status(&mut self.conn, &self.config, request_id)
    }
}

/// Sends a status request on `conn` and waits for its answer.
fn ask_status(
    conn: &mut Connection,
    config: &ClientConfig,
    request_id: u64,
) -> Result<NodeStatus, Error> {
    conn.send(&Request::Status { request_id })?;
    match conn.recv(config.request_timeout)? {
        Some(Response::StatusReply {
            request_id: id,
            status,
        }) if id == request_id => Ok(status),
        Some(Response::Error { error, .. }) => Err(Error::Refused {
            address: conn.address().to_string(),
            error,
        }),
        Some(other) => Err(Error::Protocol {
            address: conn.address().to_string(),
            why: format!("expected a status reply, got {other:?}"),
        }),
        None => Err(Error::Timeout {
            address: conn.address().to_string(),
            timeout: config.request_timeout,
        }),
    }
}
