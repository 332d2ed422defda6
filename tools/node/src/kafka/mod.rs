//! Kafka clients on the raft thread: the log as one topic with one partition, served over
//! Kafka's wire protocol (request and response messages by the `kafka-protocol` crate; record
//! batches never go through it: `raftline_log::kafka` keeps them byte for byte).
//!
//! Offsets are raftline's offsets, the leader epoch is the Raft term, the high watermark (and
//! the last stable offset: there are no transactions) is the readable end (committed and
//! durable here), the log start offset is the log's (it follows snapshot-and-truncate).
//!
//! Every request of a connection takes the next place in its response order when it arrives;
//! a response leaves only once every earlier one has (a Produce waiting for its commit holds
//! back the answers of later requests on that connection), as Kafka clients expect. A Produce
//! with acks=0 takes no place: it is never answered. Bytes that are no request (an unknown API,
//! an unserved version, an undecodable header or body) close that connection with the reason
//! logged.
//!
//! More topics would map onto more raftline logs (one Raft group per partition); this slice
//! serves exactly one.

mod fetch;
mod metadata;
mod produce;
mod versions;

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
use raftline_netio::client_proto::ClientError;
use raftline_netio::net::{ClientId, Net};

use crate::appends::{Appends, Outcome};
use crate::replica::{FatalError, Replica};

pub use produce::ProduceTicket;

/// What the Kafka listener serves.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// The cluster's name (Metadata's cluster id).
    pub cluster_name: String,
    /// The one topic's name.
    pub topic: String,
    /// The Kafka address Metadata announces for each node (`host:port`).
    pub advertised: BTreeMap<u64, String>,
    /// Every voter (the partition's replicas).
    pub voters: Vec<u64>,
}

/// A Kafka error code (`kafka_protocol::ResponseError`'s numbers).
type ErrorCode = i16;

mod code {
    //! The Kafka error codes raftline answers with.
    use super::ErrorCode;
    use kafka_protocol::ResponseError as E;
    pub const NONE: ErrorCode = 0;
    pub const OFFSET_OUT_OF_RANGE: ErrorCode = E::OffsetOutOfRange.code();
    pub const CORRUPT_MESSAGE: ErrorCode = E::CorruptMessage.code();
    pub const UNKNOWN_TOPIC_OR_PARTITION: ErrorCode = E::UnknownTopicOrPartition.code();
    pub const LEADER_NOT_AVAILABLE: ErrorCode = E::LeaderNotAvailable.code();
    pub const NOT_LEADER_OR_FOLLOWER: ErrorCode = E::NotLeaderOrFollower.code();
    pub const REQUEST_TIMED_OUT: ErrorCode = E::RequestTimedOut.code();
    pub const MESSAGE_TOO_LARGE: ErrorCode = E::MessageTooLarge.code();
    pub const INVALID_REQUIRED_ACKS: ErrorCode = E::InvalidRequiredAcks.code();
    pub const UNSUPPORTED_VERSION: ErrorCode = E::UnsupportedVersion.code();
    pub const FENCED_LEADER_EPOCH: ErrorCode = E::FencedLeaderEpoch.code();
    pub const UNKNOWN_LEADER_EPOCH: ErrorCode = E::UnknownLeaderEpoch.code();
    pub const UNSUPPORTED_COMPRESSION_TYPE: ErrorCode = E::UnsupportedCompressionType.code();
    pub const INVALID_RECORD: ErrorCode = E::InvalidRecord.code();
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: ErrorCode = E::OutOfOrderSequenceNumber.code();
    pub const INVALID_PRODUCER_EPOCH: ErrorCode = E::InvalidProducerEpoch.code();
    pub const UNKNOWN_PRODUCER_ID: ErrorCode = E::UnknownProducerId.code();
    pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: ErrorCode =
        E::TransactionalIdAuthorizationFailed.code();
    pub const TOPIC_AUTHORIZATION_FAILED: ErrorCode = E::TopicAuthorizationFailed.code();
    pub const UNKNOWN_SERVER_ERROR: ErrorCode = E::UnknownServerError.code();
    pub const KAFKA_STORAGE_ERROR: ErrorCode = E::KafkaStorageError.code();
    pub const POLICY_VIOLATION: ErrorCode = E::PolicyViolation.code();
}

/// The Kafka answer to an append that failed.
fn append_error_code(error: &ClientError) -> ErrorCode {
    match error {
        ClientError::NotLeader { .. } | ClientError::Unavailable { .. } => {
            code::NOT_LEADER_OR_FOLLOWER
        }
        ClientError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
        // Kafka's own answer when a broker cannot write its log dir (retriable: clients back
        // off and retry, and the node resumes by itself once there is room).
        ClientError::DiskFull { .. } => code::KAFKA_STORAGE_ERROR,
        // Both retriable: the append may still commit, or the leader is backed up.
        ClientError::Timeout | ClientError::Busy => code::REQUEST_TIMED_OUT,
        ClientError::OffsetOutOfRange { .. }
        | ClientError::WrongCluster { .. }
        | ClientError::BadRequest { .. } => code::CORRUPT_MESSAGE,
        // Not retriable: the record is refused by the state's bound.
        ClientError::StateFull { .. } => code::POLICY_VIOLATION,
        ClientError::OutOfOrderSequence { .. } => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
        ClientError::InvalidProducerEpoch { .. } => code::INVALID_PRODUCER_EPOCH,
        ClientError::UnknownProducer { .. } => code::UNKNOWN_PRODUCER_ID,
        // Membership refusals never answer an append.
        ClientError::ChangeNotNow { .. }
        | ClientError::LearnerBehind { .. }
        | ClientError::WouldLoseQuorum { .. }
        | ClientError::MembershipRefused { .. } => code::CORRUPT_MESSAGE,
        // The Kafka port has no authentication (a node with an auth file has no Kafka port).
        ClientError::Forbidden { .. } | ClientError::BadCredentials => {
            code::TOPIC_AUTHORIZATION_FAILED
        }
    }
}

/// One Kafka connection's response order.
#[derive(Default)]
struct Connection {
    /// Place of the next request.
    next_place: u64,
    /// Place of the next response to leave.
    next_out: u64,
    /// Responses that are ready but wait for an earlier one.
    ready: BTreeMap<u64, Vec<u8>>,
}

/// Where a request's answer goes: its connection and place in that connection's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Place {
    client: ClientId,
    place: u64,
}

/// A response for a place, or why it could not be encoded.
type Delivery = (Place, Result<Vec<u8>, String>);

/// A decoded request's header fields a response needs.
#[derive(Debug, Clone, Copy)]
struct Asked {
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
}

/// Every Kafka connection of the node.
pub struct Kafka {
    cfg: KafkaConfig,
    conns: HashMap<ClientId, Connection>,
    produces: produce::Produces,
    fetches: fetch::Fetches,
}

impl Kafka {
    /// No connections yet.
    pub fn new(cfg: KafkaConfig) -> Kafka {
        Kafka {
            cfg,
            conns: HashMap::new(),
            produces: produce::Produces::default(),
            fetches: fetch::Fetches::default(),
        }
    }

    /// Handles one request of a Kafka connection (stage 1 of the round): answers it, stages
    /// its batch, or parks it (a long-poll Fetch).
    pub fn request(
        &mut self,
        net: &mut Net,
        replica: &Replica,
        appends: &mut Appends,
        client: ClientId,
        frame: Vec<u8>,
    ) {
        if let Err(why) = self.try_request(net, replica, appends, client, frame) {
            tracing::warn!(%client, why, "closing a Kafka connection that sent bad bytes");
            net.close_client(client, &why);
            self.closed(client);
        }
    }

    fn try_request(
        &mut self,
        net: &mut Net,
        replica: &Replica,
        appends: &mut Appends,
        client: ClientId,
        frame: Vec<u8>,
    ) -> Result<(), String> {
        let mut buf = Bytes::from(frame);
        let Some(key_version) = buf.first_chunk::<4>() else {
            return Err(format!("a Kafka request of {} bytes", buf.len()));
        };
        let key = i16::from_be_bytes([key_version[0], key_version[1]]);
        let api_key = ApiKey::try_from(key).map_err(|()| format!("unknown Kafka API key {key}"))?;
        let header: RequestHeader = decode_request_header_from_buffer(&mut buf)
            .map_err(|e| format!("undecodable {api_key:?} request header: {e}"))?;
        let asked = Asked {
            api_key,
            version: header.request_api_version,
            correlation_id: header.correlation_id,
        };
        match api_key {
            ApiKey::ApiVersions => {
                let place = self.place(client);
                let response = versions::api_versions(asked, &mut buf)?;
                self.respond(net, place, response);
            }
            ApiKey::Metadata => {
                let place = self.place(client);
                let response = metadata::metadata(&self.cfg, replica, asked, &mut buf)?;
                self.respond(net, place, response);
            }
            ApiKey::ListOffsets => {
                let place = self.place(client);
                let response = metadata::list_offsets(&self.cfg, replica, asked, &mut buf)?;
                self.respond(net, place, response);
            }
            ApiKey::Produce => {
                let request = produce::decode(asked, &mut buf)?;
                // acks=0 is never answered, so it takes no place in the order.
                let place = (request.acks != 0).then(|| self.place(client));
                let response = self.produces.produce(
                    net, &self.cfg, replica, appends, asked, client, place, request,
                );
                match (place, response) {
                    (Some(place), Some(response)) => self.respond(net, place, response?),
                    (None, Some(Err(why))) => return Err(why),
                    _ => {}
                }
            }
            ApiKey::InitProducerId => {
                let place = self.place(client);
                let response = produce::init_producer_id(asked, &mut buf, replica, appends)?;
                self.respond(net, place, response);
            }
            ApiKey::Fetch => {
                let place = self.place(client);
                self.fetches.fetch(asked, place, &mut buf)?;
            }
            other => return Err(format!("Kafka API {other:?} is not served")),
        }
        Ok(())
    }

    /// Answers the Produce requests whose appends were decided (stage 5 of the round).
    pub fn answer_produces(
        &mut self,
        net: &mut Net,
        replica: &Replica,
        answers: Vec<(ProduceTicket, Outcome)>,
    ) {
        for (place, response) in self.produces.decided(replica, answers) {
            self.deliver(net, place, response);
        }
    }

    /// Answers the long-poll Fetch requests that have data now or whose wait is over (stage 6
    /// of the round).
    pub fn serve_fetches(&mut self, net: &mut Net, replica: &Replica) -> Result<(), FatalError> {
        for (place, response) in self.fetches.due(&self.cfg, replica)? {
            self.deliver(net, place, response);
        }
        Ok(())
    }

    /// Forgets a closed connection (its staged produces still commit; their answers are
    /// dropped).
    pub fn closed(&mut self, client: ClientId) {
        self.conns.remove(&client);
        self.produces.closed(client);
        self.fetches.closed(client);
    }

    fn place(&mut self, client: ClientId) -> Place {
        let conn = self.conns.entry(client).or_default();
        let place = conn.next_place;
        conn.next_place += 1;
        Place { client, place }
    }

    /// Queues a response built after its request was taken; one that could not be encoded
    /// closes the connection (its place could never be filled).
    fn deliver(&mut self, net: &mut Net, place: Place, response: Result<Vec<u8>, String>) {
        match response {
            Ok(bytes) => self.respond(net, place, bytes),
            Err(why) => {
                tracing::error!(client = %place.client, why, "closing a Kafka connection");
                net.close_client(place.client, &why);
                self.closed(place.client);
            }
        }
    }

    /// Queues `response` at its place: it leaves with every ready response after it once all
    /// before it have left.
    fn respond(&mut self, net: &mut Net, place: Place, response: Vec<u8>) {
        let Some(conn) = self.conns.get_mut(&place.client) else {
            return;
        };
        conn.ready.insert(place.place, response);
        while let Some(bytes) = conn.ready.remove(&conn.next_out) {
            conn.next_out += 1;
            if let Err(e) = net.send_client(place.client, bytes) {
                // A client that does not read its answers is not kept.
                net.close_client(place.client, &format!("Kafka response refused: {e}"));
                self.closed(place.client);
                return;
            }
        }
    }
}

/// Encodes a whole response: size prefix, response header (the version Kafka's schema gives
/// the API; ApiVersions always v0), body; into a buffer of its exact size (a Fetch response
/// holds up to megabytes of batches: no reallocation and copy as it grows).
fn encode_response(asked: Asked, body: &impl Encodable) -> Result<Vec<u8>, String> {
    let header_version = asked.api_key.response_header_version(asked.version);
    let mut header = kafka_protocol::messages::ResponseHeader::default();
    header.correlation_id = asked.correlation_id;
    let encoded = header.compute_size(header_version).and_then(|header_size| {
        let size = header_size + body.compute_size(asked.version)?;
        let mut out = Vec::with_capacity(4 + size);
        out.extend_from_slice(&(size as i32).to_be_bytes());
        header.encode(&mut out, header_version)?;
        body.encode(&mut out, asked.version)?;
        debug_assert_eq!(out.len(), 4 + size, "compute_size agrees with encode");
        Ok(out)
    });
    encoded.map_err(|e| format!("cannot encode the {:?} response: {e}", asked.api_key))
}

/// Refuses a version this node does not serve (clients pick from ApiVersions' answer).
fn check_version(asked: Asked, min: i16, max: i16) -> Result<(), String> {
    if asked.version < min || asked.version > max {
        return Err(format!(
            "{:?} v{} is not served (v{min}-v{max} are)",
            asked.api_key, asked.version
        ));
    }
    Ok(())
}

/// The partition-level check of a request's current leader epoch (-1: none given).
fn epoch_error(current_leader_epoch: i32, replica: &Replica) -> Option<ErrorCode> {
    let ours = raftline_log::batch::leader_epoch(replica.raft().term());
    match current_leader_epoch {
        -1 => None,
        e if e < ours => Some(code::FENCED_LEADER_EPOCH),
        e if e > ours => Some(code::UNKNOWN_LEADER_EPOCH),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_kafkas_retriable_storage_error() {
        let full = ClientError::DiskFull {
            path: "/data/log".into(),
            free_bytes: 0,
        };
        let code = append_error_code(&full);
        let error = kafka_protocol::ResponseError::try_from_code(code).expect("an error");
        assert_eq!(error, kafka_protocol::ResponseError::KafkaStorageError);
        assert!(error.is_retriable(), "clients back off and retry");
    }
}
