//! Metadata and ListOffsets: where the partition is led and which offsets it holds.

use bytes::Bytes;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use raftline_log::batch::leader_epoch;

use super::versions::range;
use super::{check_version, code, encode_response, epoch_error, Asked, KafkaConfig};
use crate::replica::Replica;

/// ListOffsets' timestamp for the log start offset.
const EARLIEST_TIMESTAMP: i64 = -2;
/// ListOffsets' timestamp for the high watermark.
const LATEST_TIMESTAMP: i64 = -1;
/// ListOffsets' timestamp (v7 on) for the first record with the largest timestamp.
const MAX_TIMESTAMP: i64 = -3;

/// A found record's offset and its timestamp as Kafka's i64.
fn as_found(found: Option<(u64, u64)>) -> Option<(u64, i64)> {
    found.map(|(offset, ts)| (offset, i64::try_from(ts).unwrap_or(i64::MAX)))
}

fn broker_id(id: u64) -> BrokerId {
    BrokerId(i32::try_from(id).unwrap_or(i32::MAX))
}

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// `host:port` as Metadata announces it (`None` if it is not one).
fn host_port(address: &str) -> Option<(String, i32)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

/// Answers Metadata: every node with an advertised Kafka address as a broker, our topic with
/// its one partition led by the Raft leader (LEADER_NOT_AVAILABLE during an election), any
/// other topic asked for UNKNOWN_TOPIC_OR_PARTITION (topics are never created).
pub(super) fn metadata(
    cfg: &KafkaConfig,
    replica: &Replica,
    asked: Asked,
    buf: &mut Bytes,
) -> Result<Vec<u8>, String> {
    let (min, max) = range(ApiKey::Metadata);
    check_version(asked, min, max)?;
    let request = MetadataRequest::decode(buf, asked.version)
        .map_err(|e| format!("undecodable Metadata v{}: {e}", asked.version))?;
    let raft = replica.raft();
    let leader = raft.leader();
    let mut response = MetadataResponse::default();
    response.brokers = cfg
        .advertised
        .iter()
        .filter_map(|(&id, address)| {
            let (host, port) = host_port(address)?;
            let mut b = MetadataResponseBroker::default();
            b.node_id = broker_id(id);
            b.host = StrBytes::from_string(host);
            b.port = port;
            Some(b)
        })
        .collect();
    // Fields a version does not have must keep their defaults, or encoding refuses.
    if asked.version >= 2 {
        response.cluster_id = Some(StrBytes::from_string(cfg.cluster_name.clone()));
    }
    if asked.version >= 1 {
        response.controller_id = leader.map_or(BrokerId(-1), broker_id);
    }
    // v0 asks for every topic with an empty list, later versions with a null one.
    let names: Vec<String> = match request.topics {
        None => vec![cfg.topic.clone()],
        Some(topics) if topics.is_empty() && asked.version == 0 => vec![cfg.topic.clone()],
        Some(topics) => topics
            .into_iter()
            .map(|t| t.name.map(|n| n.0.to_string()).unwrap_or_default())
            .collect(),
    };
    let replicas: Vec<BrokerId> = cfg.voters.iter().map(|&id| broker_id(id)).collect();
    response.topics = names
        .into_iter()
        .map(|name| {
            let mut topic = MetadataResponseTopic::default();
            if name != cfg.topic {
                topic.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                topic.name = Some(topic_name(&name));
                return topic;
            }
            let mut partition = MetadataResponsePartition::default();
            partition.partition_index = 0;
            partition.error_code = if leader.is_some() {
                code::NONE
            } else {
                code::LEADER_NOT_AVAILABLE
            };
            partition.leader_id = leader.map_or(BrokerId(-1), broker_id);
            if asked.version >= 7 {
                partition.leader_epoch = leader_epoch(raft.term());
            }
            partition.replica_nodes = replicas.clone();
            // The voters stand in for the in-sync set: any majority of them holds every
            // committed record.
            partition.isr_nodes = replicas.clone();
            topic.error_code = code::NONE;
            topic.name = Some(topic_name(&cfg.topic));
            topic.partitions = vec![partition];
            topic
        })
        .collect();
    encode_response(asked, &response)
}

/// Answers ListOffsets: earliest (the log start offset), latest (the high watermark), the first
/// committed record whose timestamp is at least the one asked for (other negative timestamps
/// match from the first record, as Kafka's broker does), and the first with the largest
/// timestamp; the time index (`time_index.rs`) says where to read.
pub(super) fn list_offsets(
    cfg: &KafkaConfig,
    replica: &Replica,
    asked: Asked,
    buf: &mut Bytes,
) -> Result<Vec<u8>, String> {
    let (min, max) = range(ApiKey::ListOffsets);
    check_version(asked, min, max)?;
    let request = ListOffsetsRequest::decode(buf, asked.version)
        .map_err(|e| format!("undecodable ListOffsets v{}: {e}", asked.version))?;
    let epoch = leader_epoch(replica.raft().term());
    let mut response = ListOffsetsResponse::default();
    response.topics = request
        .topics
        .into_iter()
        .map(|topic| {
            let ours = topic.name.0.as_str() == cfg.topic;
            let mut t = ListOffsetsTopicResponse::default();
            t.name = topic.name;
            t.partitions = topic
                .partitions
                .into_iter()
                .map(|p| {
                    let mut r = ListOffsetsPartitionResponse::default();
                    r.partition_index = p.partition_index;
                    r.timestamp = -1;
                    r.offset = -1;
                    r.error_code = if !ours || p.partition_index != 0 {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    } else if let Some(error) = epoch_error(p.current_leader_epoch, replica) {
                        error
                    } else {
                        let found = match p.timestamp {
                            EARLIEST_TIMESTAMP => Ok(Some((replica.log().start_offset(), -1))),
                            LATEST_TIMESTAMP => Ok(Some((replica.readable_end_offset(), -1))),
                            MAX_TIMESTAMP => replica.find_by_timestamp(None).map(as_found),
                            t => replica
                                .find_by_timestamp(Some(t.max(0) as u64))
                                .map(as_found),
                        };
                        match found {
                            Ok(Some((offset, timestamp))) => {
                                r.offset = offset as i64;
                                r.timestamp = timestamp;
                                if asked.version >= 4 {
                                    r.leader_epoch = epoch;
                                }
                                code::NONE
                            }
                            // No record that late: offset and timestamp -1, as Kafka answers.
                            Ok(None) => code::NONE,
                            Err(e) => {
                                tracing::error!(error = %e, "ListOffsets could not read the log");
                                code::KAFKA_STORAGE_ERROR
                            }
                        }
                    };
                    r
                })
                .collect();
            t
        })
        .collect();
    encode_response(asked, &response)
}
