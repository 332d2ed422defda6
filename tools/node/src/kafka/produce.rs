//! Produce: a Kafka producer's batch becomes one staged append (`Appends::stage`), proposed,
//! committed and decided exactly like a native one; its answer comes back through
//! `Appends::take_kafka_answers` and is ordered among its connection's responses here.
//! InitProducerId hands idempotent producers their id and epoch; their batches are judged by
//! the leader like native ones (`producers.rs`).

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    ProducerId, TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use raftline_log::kafka::KafkaBatchError;
use raftline_log::{Batch, BatchError};
use raftline_netio::client_proto::AckMode;
use raftline_netio::net::{ClientId, Net};

use super::versions::range;
use super::{append_error_code, check_version, code, encode_response, Asked, ErrorCode};
use super::{Delivery, KafkaConfig, Place};
use crate::appends::{Appends, GrantError, Outcome, Requester};
use crate::replica::Replica;

/// One partition of one Produce request: what the append's answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceTicket {
    client: ClientId,
    place: u64,
    /// Its position among the request's partitions.
    partition: usize,
}

struct PartitionResult {
    topic: usize,
    index: i32,
    error: ErrorCode,
    message: Option<String>,
    base_offset: i64,
}

/// A Produce request waiting for its appends.
struct Pending {
    asked: Asked,
    topics: Vec<TopicName>,
    partitions: Vec<PartitionResult>,
    outstanding: usize,
}

/// The Produce requests of every connection waiting for their appends.
#[derive(Default)]
pub(super) struct Produces {
    pending: HashMap<(ClientId, u64), Pending>,
}

pub(super) fn decode(asked: Asked, buf: &mut Bytes) -> Result<ProduceRequest, String> {
    let (min, max) = range(ApiKey::Produce);
    check_version(asked, min, max)?;
    ProduceRequest::decode(buf, asked.version)
        .map_err(|e| format!("undecodable Produce v{}: {e}", asked.version))
}

/// The Kafka answer to a batch the leader refuses, and why.
fn batch_error_code(error: &BatchError) -> ErrorCode {
    match error {
        BatchError::Kafka(KafkaBatchError::UnsupportedCompression(_)) => {
            code::UNSUPPORTED_COMPRESSION_TYPE
        }
        BatchError::Kafka(
            KafkaBatchError::Transactional
            | KafkaBatchError::Control
            | KafkaBatchError::Magic(_)
            | KafkaBatchError::ProducerFields { .. },
        ) => code::INVALID_RECORD,
        BatchError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
        _ => code::CORRUPT_MESSAGE,
    }
}

impl Produces {
    /// Validates and stages every batch of a Produce request; returns its response at once
    /// when nothing was staged (every partition refused), `None` when the answer waits for the
    /// appends or when there is none (acks=0, `place` is `None`; then a refused partition is
    /// an `Err`, which closes the connection).
    #[allow(clippy::too_many_arguments)] // the round's parts this request touches
    pub(super) fn produce(
        &mut self,
        net: &mut Net,
        cfg: &KafkaConfig,
        replica: &Replica,
        appends: &mut Appends,
        asked: Asked,
        client: ClientId,
        place: Option<Place>,
        request: ProduceRequest,
    ) -> Option<Result<Vec<u8>, String>> {
        let ack = match request.acks {
            0 => Some(AckMode::None),
            1 => Some(AckMode::Leader),
            -1 => Some(AckMode::Quorum),
            _ => None,
        };
        let mut pending = Pending {
            asked,
            topics: Vec::new(),
            partitions: Vec::new(),
            outstanding: 0,
        };
        for topic in request.topic_data {
            let ours = topic.name.0.as_str() == cfg.topic;
            pending.topics.push(topic.name);
            for data in topic.partition_data {
                let mut result = PartitionResult {
                    topic: pending.topics.len() - 1,
                    index: data.index,
                    error: code::NONE,
                    message: None,
                    base_offset: -1,
                };
                let mut refuse = |error, why: String| {
                    result.error = error;
                    result.message = Some(why);
                };
                match (ack, data.records) {
                    (None, _) => refuse(
                        code::INVALID_REQUIRED_ACKS,
                        format!("acks must be 0, 1 or -1, not {}", request.acks),
                    ),
                    _ if !ours || data.index != 0 => refuse(
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                        format!("this cluster serves topic {:?}, partition 0", cfg.topic),
                    ),
                    (_, None) => refuse(code::CORRUPT_MESSAGE, "no records".into()),
                    (_, Some(records)) if records.len() > appends.batch_bytes_max() => refuse(
                        code::MESSAGE_TOO_LARGE,
                        format!("at most {} bytes per batch", appends.batch_bytes_max()),
                    ),
                    (Some(ack), Some(records)) => match Batch::from_kafka(&records) {
                        Ok(batch) => {
                            let requester = match place {
                                Some(place) => Requester::Kafka(ProduceTicket {
                                    client,
                                    place: place.place,
                                    partition: pending.partitions.len(),
                                }),
                                None => Requester::KafkaNoAck(client),
                            };
                            appends.stage(net, requester, ack, batch);
                            pending.outstanding += 1;
                        }
                        Err(e) => refuse(batch_error_code(&e), e.to_string()),
                    },
                }
                if let Some(why) = &result.message {
                    tracing::debug!(%client, why, "Kafka produce refused");
                }
                pending.partitions.push(result);
            }
        }
        let Some(place) = place else {
            // acks=0 is never answered: a refused partition closes the connection instead.
            let refused = pending.partitions.iter().find_map(|p| p.message.as_ref());
            return refused
                .map(|why| Err(format!("a Kafka produce with acks=0 was refused: {why}")));
        };
        if pending.outstanding == 0 {
            return Some(response(replica, pending));
        }
        self.pending.insert((client, place.place), pending);
        None
    }

    /// Takes the decided appends; returns the responses of the requests now complete.
    pub(super) fn decided(
        &mut self,
        replica: &Replica,
        answers: Vec<(ProduceTicket, Outcome)>,
    ) -> Vec<Delivery> {
        let mut done = Vec::new();
        for (ticket, outcome) in answers {
            let key = (ticket.client, ticket.place);
            let Some(pending) = self.pending.get_mut(&key) else {
                continue; // its connection closed
            };
            let result = &mut pending.partitions[ticket.partition];
            match outcome {
                Ok(base_offset) => result.base_offset = base_offset as i64,
                Err(e) => {
                    result.error = append_error_code(&e);
                    result.message = Some(e.to_string());
                }
            }
            pending.outstanding -= 1;
            if pending.outstanding == 0 {
                let pending = self.pending.remove(&key).expect("just found");
                let place = Place {
                    client: ticket.client,
                    place: ticket.place,
                };
                done.push((place, response(replica, pending)));
            }
        }
        done
    }

    pub(super) fn closed(&mut self, client: ClientId) {
        self.pending.retain(|(c, _), _| *c != client);
    }
}

fn response(replica: &Replica, pending: Pending) -> Result<Vec<u8>, String> {
    let log_start_offset = replica.log().start_offset() as i64;
    let version = pending.asked.version;
    let mut response = ProduceResponse::default();
    response.responses = pending
        .topics
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut topic = TopicProduceResponse::default();
            topic.name = name.clone();
            topic.partition_responses = pending
                .partitions
                .iter()
                .filter(|p| p.topic == i)
                .map(|p| {
                    let mut r = PartitionProduceResponse::default();
                    r.index = p.index;
                    r.error_code = p.error;
                    r.base_offset = p.base_offset;
                    r.log_append_time_ms = -1;
                    // Fields a version does not have must keep their defaults.
                    if version >= 5 {
                        r.log_start_offset = log_start_offset;
                    }
                    if version >= 8 {
                        r.error_message = p.message.clone().map(StrBytes::from_string);
                    }
                    r
                })
                .collect();
            topic
        })
        .collect();
    encode_response(pending.asked, &response)
}

/// Answers InitProducerId (versions 0-4) on any node: an idempotent producer's id and epoch
/// (`Appends::grant_producer`). A transactional id is refused with
/// `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`: transactions are not offered.
pub(super) fn init_producer_id(
    asked: Asked,
    buf: &mut Bytes,
    replica: &Replica,
    appends: &mut Appends,
) -> Result<Vec<u8>, String> {
    let (min, max) = range(ApiKey::InitProducerId);
    check_version(asked, min, max)?;
    let request = InitProducerIdRequest::decode(buf, asked.version)
        .map_err(|e| format!("undecodable InitProducerId v{}: {e}", asked.version))?;
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request
        .transactional_id
        .as_ref()
        .is_some_and(|t| !t.0.is_empty())
    {
        tracing::warn!(
            transactional_id = ?request.transactional_id,
            "a Kafka producer asked for a transactional id: transactions are not offered (idempotence is)"
        );
        response.error_code = code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED;
        return encode_response(asked, &response);
    }
    let given = request.producer_id.0;
    let bump = (given >= 0).then_some((given as u64, request.producer_epoch));
    match appends.grant_producer(replica, bump) {
        Ok((producer_id, epoch)) => {
            response.error_code = code::NONE;
            response.producer_id = ProducerId(producer_id as i64);
            response.producer_epoch = epoch;
        }
        Err(GrantError::Fenced { .. }) => response.error_code = code::INVALID_PRODUCER_EPOCH,
        Err(GrantError::Unavailable(_)) => response.error_code = code::UNKNOWN_SERVER_ERROR,
        Err(GrantError::DiskFull(_)) => response.error_code = code::KAFKA_STORAGE_ERROR,
    }
    encode_response(asked, &response)
}
