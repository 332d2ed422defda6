//! Fetch: committed batches as Kafka RecordBatch v2, sessionless (session id 0), long-polled.
//! Every Fetch is registered when it arrives (stage 1) and answered in the reads stage (6) of
//! the round that has enough for it (`min_bytes`) or in which its `max_wait_ms` ran out; the
//! log is read again only when the readable end moved. A response holds at least one whole
//! batch however small `max_bytes` is (Kafka's rule), and a run's batches from the first one
//! holding the fetch offset.

use std::mem;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse};
use kafka_protocol::protocol::Decodable;
use raftline_log::batch::{append_kafka_record_batch, entry_batches};
use raftline_log::LogError;
use raftline_netio::net::ClientId;

use super::versions::range;
use super::{
    check_version, code, encode_response, epoch_error, Asked, Delivery, KafkaConfig, Place,
};
use crate::replica::{FatalError, Replica};

/// Batch bytes read for one partition at most, whatever the request allows (at least one
/// batch still goes out).
const FETCH_BYTES_MAX: usize = 4 << 20;

struct Waiting {
    place: Place,
    asked: Asked,
    request: FetchRequest,
    deadline: Instant,
    /// The readable end offset of the last attempt (nothing new to read until it moves).
    seen_end: Option<u64>,
}

/// The Fetch requests not answered yet.
#[derive(Default)]
pub(super) struct Fetches {
    waiting: Vec<Waiting>,
    /// Batches read from the log, reused by every fetch.
    read_buf: Vec<u8>,
}

impl Fetches {
    /// Registers a Fetch; it is answered by [`Fetches::due`].
    pub(super) fn fetch(
        &mut self,
        asked: Asked,
        place: Place,
        buf: &mut Bytes,
    ) -> Result<(), String> {
        let (min, max) = range(ApiKey::Fetch);
        check_version(asked, min, max)?;
        let request = FetchRequest::decode(buf, asked.version)
            .map_err(|e| format!("undecodable Fetch v{}: {e}", asked.version))?;
        let wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0));
        self.waiting.push(Waiting {
            place,
            asked,
            request,
            deadline: Instant::now() + wait,
            seen_end: None,
        });
        Ok(())
    }

    /// The responses of the fetches that have enough to read, an error, or no more time.
    pub(super) fn due(
        &mut self,
        cfg: &KafkaConfig,
        replica: &Replica,
    ) -> Result<Vec<Delivery>, FatalError> {
        let now = Instant::now();
        let end = replica.readable_end_offset();
        let mut done = Vec::new();
        for mut w in mem::take(&mut self.waiting) {
            let expired = now >= w.deadline;
            if !expired && w.seen_end == Some(end) {
                self.waiting.push(w);
                continue;
            }
            w.seen_end = Some(end);
            let (response, bytes, failed) = self.read(cfg, replica, w.asked, &w.request)?;
            let min_bytes = usize::try_from(w.request.min_bytes).unwrap_or(0);
            if expired || failed || bytes >= min_bytes.max(1) {
                done.push((w.place, encode_response(w.asked, &response)));
            } else {
                self.waiting.push(w);
            }
        }
        Ok(done)
    }

    pub(super) fn closed(&mut self, client: ClientId) {
        self.waiting.retain(|w| w.place.client != client);
    }

    /// The response to `request` now: its bytes of records, and whether a partition failed.
    fn read(
        &mut self,
        cfg: &KafkaConfig,
        replica: &Replica,
        asked: Asked,
        request: &FetchRequest,
    ) -> Result<(FetchResponse, usize, bool), FatalError> {
        let log = replica.log();
        let (start, log_end) = (log.start_offset(), log.next_offset());
        let high_watermark = replica.readable_end_offset();
        let bytes_max = usize::try_from(request.max_bytes)
            .unwrap_or(0)
            .clamp(1, FETCH_BYTES_MAX);
        let (mut bytes, mut failed) = (0, false);
        let mut response = FetchResponse::default();
        response.session_id = 0;
        for topic in &request.topics {
            let ours = topic.topic.0.as_str() == cfg.topic;
            let mut t = FetchableTopicResponse::default();
            t.topic = topic.topic.clone();
            for p in &topic.partitions {
                let mut data = PartitionData::default();
                data.partition_index = p.partition;
                data.high_watermark = high_watermark as i64;
                data.last_stable_offset = high_watermark as i64;
                if asked.version >= 5 {
                    data.log_start_offset = start as i64;
                }
                data.aborted_transactions = Some(Vec::new());
                data.preferred_read_replica = BrokerId(-1);
                let offset = u64::try_from(p.fetch_offset).ok();
                let error = if !ours || p.partition != 0 {
                    Some(code::UNKNOWN_TOPIC_OR_PARTITION)
                } else if let Some(error) = epoch_error(p.current_leader_epoch, replica) {
                    Some(error)
                } else {
                    // Kafka's range: an offset past the log's end (not only past the high
                    // watermark) is out of range; one between them waits.
                    offset
                        .filter(|&o| o >= start && o <= log_end)
                        .map_or(Some(code::OFFSET_OUT_OF_RANGE), |_| None)
                };
                let mut records = Vec::new();
                match (error, offset) {
                    (Some(error), _) => {
                        data.error_code = error;
                        failed = true;
                    }
                    (None, Some(offset)) if offset < high_watermark => {
                        let partition_max = usize::try_from(p.partition_max_bytes).unwrap_or(0);
                        let max = bytes_max.min(partition_max.max(1));
                        if self.read_records(replica, offset, max, &mut records)? {
                            data.error_code = code::NONE;
                        } else {
                            data.error_code = code::OFFSET_OUT_OF_RANGE;
                            failed = true;
                        }
                    }
                    (None, _) => data.error_code = code::NONE,
                }
                bytes += records.len();
                data.records = Some(Bytes::from(records));
                t.partitions.push(data);
            }
            response.responses.push(t);
        }
        Ok((response, bytes, failed))
    }

    /// Appends the committed batches from the one holding `offset` as Kafka record batches;
    /// `false` if the offset is no longer in the log (truncated since it was checked).
    fn read_records(
        &mut self,
        replica: &Replica,
        offset: u64,
        bytes_max: usize,
        out: &mut Vec<u8>,
    ) -> Result<bool, FatalError> {
        let entries = match replica.read_committed_into(offset, bytes_max, &mut self.read_buf) {
            Ok(entries) => entries,
            Err(LogError::BelowStart { .. }) => return Ok(false),
            Err(e) => return Err(FatalError::Log(e)),
        };
        // Kafka batches are the entries less their envelopes: one reservation for them all.
        out.reserve(entries.iter().map(|(_, range)| range.len()).sum());
        for (entry_header, range) in entries {
            let entry = &self.read_buf[range];
            let bad = |source| FatalError::BadEntry {
                index: entry_header.index,
                source,
            };
            for inner in entry_batches(entry) {
                let (h, inner) = inner.map_err(bad)?;
                if h.next_offset() > offset {
                    append_kafka_record_batch(&entry[inner], out).map_err(bad)?;
                }
            }
        }
        Ok(true)
    }
}
