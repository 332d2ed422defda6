//! Consumers on the raft thread: subscriptions streaming committed, locally durable batches
//! straight from the log under the client's byte credit, and snapshot reads streaming the
//! records of the served snapshot (the state below the log's start) under the same credit. A
//! stream sends while it has credit and the connection's queue accepts, and resumes on
//! `ClientDrained` or new credit.

use std::collections::{BTreeMap, HashMap};

use raftline_log::batch::entry_batches;
use raftline_log::LogError;
use raftline_netio::client_proto::{
    encode_batches, encode_response, ClientError, Response, SnapshotInfo, SnapshotResume, StartFrom,
};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{ClientId, Net, SendError, SendWithError};

use crate::replica::{FatalError, Replica};
use crate::replies::Replier;
use crate::snapshot_stream::{SnapshotStream, StreamError};

/// Batch bytes read from the log into one `Batches` frame at most.
const STREAM_FRAME_BYTES_MAX: usize = 1 << 20;
/// Frames one subscription may send per event-loop round before others get their turn.
const STREAM_FRAMES_PER_ROUND: usize = 4;

struct Subscription {
    next_offset: u64,
    credit_bytes: u64,
}

/// A consumer reading the served snapshot.
struct SnapshotRead {
    stream: SnapshotStream,
    credit_bytes: u64,
}

#[derive(Default)]
struct Client {
    subscriptions: BTreeMap<u64, Subscription>,
    snapshot_reads: BTreeMap<u64, SnapshotRead>,
    /// The connection's queue refused a frame; wait for `ClientDrained`.
    blocked: bool,
}

/// Every subscription of the node, by connection.
pub struct Subscriptions {
    replier: Replier,
    subscriptions_per_client_max: usize,
    clients: HashMap<ClientId, Client>,
    /// Batches read from the log for one frame, reused by every subscription (no fresh buffer
    /// per read); at most a frame's worth, or one batch when that batch alone is larger.
    read_buf: Vec<u8>,
    /// The served snapshot failed its checksum when a consumer asked for it: returned by the
    /// next [`Subscriptions::stream`], so that the node repairs it in place (as when sending it
    /// to a follower) instead of refusing every consumer until a restart.
    damage: Option<LogError>,
}

impl Subscriptions {
    /// No subscriptions yet; each connection may hold `subscriptions_per_client_max`.
    pub fn new(
        cluster_id: ClusterId,
        node_id: u64,
        subscriptions_per_client_max: usize,
    ) -> Subscriptions {
        Subscriptions {
            replier: Replier {
                cluster_id,
                node_id,
            },
            subscriptions_per_client_max,
            clients: HashMap::new(),
            read_buf: Vec::new(),
            damage: None,
        }
    }

    fn error(&self, net: &mut Net, client: ClientId, request_id: u64, error: ClientError) {
        self.replier.error(net, client, request_id, error);
    }

    /// Starts a subscription: answers `Subscribed` (resolved start, end of committed data now)
    /// before any batch, or `OffsetOutOfRange` when the start is not in the log.
    pub fn subscribe(
        &mut self,
        net: &mut Net,
        replica: &Replica,
        client: ClientId,
        subscription_id: u64,
        from: StartFrom,
        window_bytes: u64,
    ) {
        let log = replica.log();
        let (earliest, end) = (log.start_offset(), log.next_offset());
        let next_offset = match from {
            StartFrom::Earliest => earliest,
            StartFrom::Latest => replica.readable_end_offset(),
            StartFrom::Offset(n) => n,
        };
        if next_offset < earliest || next_offset > end {
            let error = ClientError::OffsetOutOfRange {
                requested: next_offset,
                earliest,
                end,
                snapshot_index: replica.snapshot_index().filter(|_| next_offset < earliest),
            };
            self.error(net, client, subscription_id, error);
            return;
        }
        if !self.has_room(net, client, subscription_id) {
            return;
        }
        let session = self.clients.entry(client).or_default();
        session.subscriptions.insert(
            subscription_id,
            Subscription {
                next_offset,
                credit_bytes: window_bytes,
            },
        );
        let subscribed = Response::Subscribed {
            subscription_id,
            start_offset: next_offset,
            end_offset: replica.readable_end_offset(),
        };
        self.replier.respond(net, client, &subscribed);
    }

    /// Whether `client` may open stream `subscription_id` (refused with a `BadRequest` when
    /// it holds the most streams a connection may).
    fn has_room(&mut self, net: &mut Net, client: ClientId, subscription_id: u64) -> bool {
        let max = self.subscriptions_per_client_max;
        let session = self.clients.entry(client).or_default();
        let held = session.subscriptions.len() + session.snapshot_reads.len();
        let reused = session.subscriptions.contains_key(&subscription_id)
            || session.snapshot_reads.contains_key(&subscription_id);
        if held >= max && !reused {
            let why = format!("at most {max} subscriptions per connection");
            let error = ClientError::BadRequest { why };
            self.error(net, client, subscription_id, error);
            return false;
        }
        true
    }

    /// Starts a read of the served snapshot (resumed at `resume`'s position if it names that
    /// snapshot): answers `SnapshotBegin`, then `stream` sends its records. With no snapshot
    /// and a log that starts at offset 0, the state below the log is empty: `SnapshotBegin`
    /// (index 0, no records) and `SnapshotEnd` at 0.
    pub fn subscribe_snapshot(
        &mut self,
        net: &mut Net,
        replica: &Replica,
        client: ClientId,
        subscription_id: u64,
        window_bytes: u64,
        resume: Option<SnapshotResume>,
    ) {
        if !self.has_room(net, client, subscription_id) {
            return;
        }
        let Some(served) = replica.served_snapshot() else {
            if replica.log().start_offset() == 0 {
                let info = SnapshotInfo {
                    index: 0,
                    term: 0,
                    cut_offset: 0,
                    records: 0,
                    position: 0,
                };
                let begin = Response::SnapshotBegin {
                    subscription_id,
                    info,
                };
                self.replier.respond(net, client, &begin);
                let end = Response::SnapshotEnd {
                    subscription_id,
                    cut_offset: 0,
                };
                self.replier.respond(net, client, &end);
            } else {
                let why = "this node holds no snapshot yet".to_string();
                self.error(
                    net,
                    client,
                    subscription_id,
                    ClientError::Unavailable { why },
                );
            }
            return;
        };
        let stream = match SnapshotStream::open(served, resume) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::error!(error = %e, "cannot stream the served snapshot");
                let why = format!("cannot read the snapshot: {e}");
                self.error(
                    net,
                    client,
                    subscription_id,
                    ClientError::Unavailable { why },
                );
                if let StreamError::Corrupt { source, .. } = e {
                    self.damage = Some(source);
                }
                return;
            }
        };
        let begin = Response::SnapshotBegin {
            subscription_id,
            info: stream.info(),
        };
        self.replier.respond(net, client, &begin);
        let read = SnapshotRead {
            stream,
            credit_bytes: window_bytes,
        };
        let session = self.clients.entry(client).or_default();
        session.snapshot_reads.insert(subscription_id, read);
    }

    /// Adds credit to a subscription or snapshot read (unknown ones are ignored: it may have
    /// just ended or failed).
    pub fn credit(&mut self, client: ClientId, subscription_id: u64, bytes: u64) {
        let Some(c) = self.clients.get_mut(&client) else {
            return;
        };
        if let Some(sub) = c.subscriptions.get_mut(&subscription_id) {
            sub.credit_bytes = sub.credit_bytes.saturating_add(bytes);
        } else if let Some(read) = c.snapshot_reads.get_mut(&subscription_id) {
            read.credit_bytes = read.credit_bytes.saturating_add(bytes);
        }
    }

    /// The connection can take more: resume its subscriptions.
    pub fn drained(&mut self, client: ClientId) {
        if let Some(c) = self.clients.get_mut(&client) {
            c.blocked = false;
        }
    }

    /// Forgets a closed connection (its pending appends still commit; their answers are dropped).
    pub fn closed(&mut self, client: ClientId) {
        self.clients.remove(&client);
    }

    /// Sends committed batches to every subscription that has credit and something new to read.
    /// `Err` for damage met reading the log, or the served snapshot's found since the last call.
    pub fn stream(&mut self, net: &mut Net, replica: &Replica) -> Result<(), FatalError> {
        if let Some(damage) = self.damage.take() {
            return Err(FatalError::Log(damage));
        }
        let readable_end = replica.readable_end_offset();
        let (cluster_id, node_id) = (self.replier.cluster_id, self.replier.node_id);
        let mut failed: Vec<(ClientId, u64, ClientError)> = Vec::new();
        for (&client, session) in self.clients.iter_mut() {
            if session.blocked {
                continue;
            }
            'subs: for (&sub_id, sub) in session.subscriptions.iter_mut() {
                for _ in 0..STREAM_FRAMES_PER_ROUND {
                    if sub.credit_bytes == 0 || sub.next_offset >= readable_end {
                        break;
                    }
                    let bytes_max = STREAM_FRAME_BYTES_MAX.min(sub.credit_bytes as usize);
                    let read_buf = &mut self.read_buf;
                    let batches =
                        match replica.read_committed_into(sub.next_offset, bytes_max, read_buf) {
                            Ok(b) => b,
                            Err(LogError::BelowStart { start_offset, .. }) => {
                                failed.push((
                                    client,
                                    sub_id,
                                    ClientError::OffsetOutOfRange {
                                        requested: sub.next_offset,
                                        earliest: start_offset,
                                        end: readable_end,
                                        snapshot_index: replica.snapshot_index(),
                                    },
                                ));
                                break;
                            }
                            Err(e) => return Err(FatalError::Log(e)),
                        };
                    let Some((last, _)) = batches.last() else {
                        break;
                    };
                    let next_offset = last.next_offset();
                    // A run goes out as its producers' batches, from the first one the
                    // subscription has not had.
                    let mut slices: Vec<&[u8]> = Vec::with_capacity(batches.len());
                    for (entry_header, range) in &batches {
                        let entry = &read_buf[range.clone()];
                        for inner in entry_batches(entry) {
                            let (h, inner) = inner.map_err(|source| FatalError::BadEntry {
                                index: entry_header.index,
                                source,
                            })?;
                            if h.next_offset() > sub.next_offset {
                                slices.push(&entry[inner]);
                            }
                        }
                    }
                    let sent_bytes: usize = slices.iter().map(|s| s.len()).sum();
                    // Encoded straight into the connection's queue: one copy of the batches.
                    let encode =
                        |b: &mut Vec<u8>| encode_batches(b, cluster_id, node_id, sub_id, &slices);
                    match net.send_client_with(client, encode) {
                        Ok(()) => {
                            sub.credit_bytes = sub.credit_bytes.saturating_sub(sent_bytes as u64);
                            sub.next_offset = next_offset;
                        }
                        Err(SendWithError::Refused(SendError::Full)) => {
                            session.blocked = true;
                            break 'subs;
                        }
                        Err(SendWithError::Refused(_)) => break 'subs,
                        Err(SendWithError::Encode(e)) => {
                            tracing::error!(error = %e, "cannot encode batches");
                            break;
                        }
                    }
                }
            }
            if !session.blocked {
                stream_snapshot_reads(&self.replier, net, client, session, &mut failed);
            }
        }
        for (client, sub_id, error) in failed {
            if let Some(c) = self.clients.get_mut(&client) {
                c.subscriptions.remove(&sub_id);
                c.snapshot_reads.remove(&sub_id);
            }
            self.error(net, client, sub_id, error);
        }
        Ok(())
    }
}

/// Sends each snapshot read of `session` up to [`STREAM_FRAMES_PER_ROUND`] frames of records
/// within its credit; a read whose last record went out gets `SnapshotEnd` and ends. A full
/// connection blocks the session (the frame's records are kept for the next turn); a read that
/// cannot go on is pushed to `failed`.
fn stream_snapshot_reads(
    replier: &Replier,
    net: &mut Net,
    client: ClientId,
    session: &mut Client,
    failed: &mut Vec<(ClientId, u64, ClientError)>,
) {
    let mut ended = Vec::new();
    'reads: for (&sub_id, read) in session.snapshot_reads.iter_mut() {
        for _ in 0..STREAM_FRAMES_PER_ROUND {
            if read.stream.done() {
                let cut_offset = read.stream.info().cut_offset;
                let end = Response::SnapshotEnd {
                    subscription_id: sub_id,
                    cut_offset,
                };
                replier.respond(net, client, &end);
                ended.push(sub_id);
                break;
            }
            if read.credit_bytes == 0 {
                break;
            }
            let bytes_max = (STREAM_FRAME_BYTES_MAX as u64).min(read.credit_bytes);
            let records = match read.stream.next_records(bytes_max) {
                Ok(records) => records,
                Err(e) => {
                    tracing::error!(error = %e, "snapshot read failed");
                    let why = format!("reading the snapshot failed: {e}");
                    failed.push((client, sub_id, ClientError::Unavailable { why }));
                    break;
                }
            };
            let sent_bytes: u64 = records.iter().map(|r| r.credit_bytes()).sum();
            let mut frame = Response::SnapshotRecords {
                subscription_id: sub_id,
                records,
            };
            let (cluster_id, node_id) = (replier.cluster_id, replier.node_id);
            let encode = |b: &mut Vec<u8>| encode_response(b, cluster_id, node_id, &frame);
            let sent = net.send_client_with(client, encode);
            let Response::SnapshotRecords { records, .. } = &mut frame else {
                unreachable!("built above");
            };
            match sent {
                Ok(()) => read.credit_bytes = read.credit_bytes.saturating_sub(sent_bytes),
                Err(SendWithError::Refused(SendError::Full)) => {
                    read.stream.unsend(std::mem::take(records));
                    session.blocked = true;
                    break 'reads;
                }
                Err(SendWithError::Refused(_)) => break 'reads,
                Err(SendWithError::Encode(e)) => {
                    tracing::error!(error = %e, "cannot encode snapshot records");
                    let why = format!("cannot encode snapshot records: {e}");
                    failed.push((client, sub_id, ClientError::Unavailable { why }));
                    break;
                }
            }
        }
    }
    for sub_id in ended {
        session.snapshot_reads.remove(&sub_id);
    }
}
