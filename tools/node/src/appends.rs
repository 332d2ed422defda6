//! Client appends on the raft thread, from validation to acknowledgement.
//!
//! A round's valid appends are staged and proposed together as ONE Raft entry by the event loop
//! ([`Appends::take_proposal`] → `Replica::propose_run` → [`Appends::proposed`]); an append that
//! would make the entry exceed the batch limit starts the next proposal. An append is answered
//! once, by the first of: its entry committed (`Quorum`, the default) or durable here (`Leader`)
//! — with the offsets stamped at proposal — or the entry at its index committed with another term
//! (the proposal was lost with this node's leadership: `NotLeader`), or `append_timeout` passed
//! (`Timeout`: it may still commit).
//!
//! Before a proposal goes to the core, [`Appends::admit`] has the leader judge its batches
//! against the idempotent producers' dedup state (`producers.rs`): a resend of a stored batch is
//! not proposed again but answered with the original's offsets, once the original is decided
//! (registered at the original's index and term like any pending append); a batch that breaks
//! its producer's sequence or epoch is refused with a typed error.
//!
//! An append comes from a native client's `Append` or a Kafka `Produce` (`kafka/`): both are
//! staged, proposed and decided here alike; only the answer differs ([`Requester`]): a native
//! one is queued at once, a Kafka one is handed to the Kafka module ([`Appends::take_kafka_answers`]),
//! which orders it among its connection's responses.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_log::batch::BATCH_HEADER_BYTES;
use raftline_log::Batch;
use raftline_netio::client_proto::{encode_response, AckMode, ClientError, Response};
use raftline_netio::cluster_id::ClusterId;
use raftline_netio::net::{ClientId, Net};
use raftline_replicator::{Index, ProposeError, Term};

use crate::kafka::ProduceTicket;
use crate::metrics::Metrics;
use crate::producers::{ProducerIdError, ProducerIds, Verdict};
use crate::replica::{Committed, FatalError, ProposalError, Proposed, Replica};
use crate::replies::Replier;

/// Static parameters of the appends.
#[derive(Debug, Clone)]
pub struct AppendConfig {
    /// Our cluster (stamped into every frame).
    pub cluster_id: ClusterId,
    /// Our node id (sender of every response).
    pub node_id: u64,
    /// Client address of every node, for `NotLeader` hints.
    pub client_addresses: BTreeMap<u64, String>,
    /// Largest batch accepted from a producer.
    pub batch_bytes_max: usize,
    /// An append not acknowledged within this is answered `Timeout`.
    pub append_timeout: Duration,
}

/// Who waits for an append's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// A native client's `Append` request.
    Client {
        /// Its connection.
        client: ClientId,
        /// Its request id.
        request_id: u64,
    },
    /// A partition of a Kafka `Produce` request.
    Kafka(ProduceTicket),
    /// A Kafka produce with acks=0 on this connection: never answered; a failure closes the
    /// connection instead (Kafka's broker does the same, so the producer refreshes its
    /// metadata and learns of it).
    KafkaNoAck(ClientId),
}

/// How an append ended: the offset of its first record, or why not.
pub type Outcome = Result<u64, ClientError>;

struct PendingAppend {
    requester: Requester,
    term: Term,
    base_offset: u64,
    last_offset: u64,
    accepted: Instant,
}

/// Removes and returns the lowest-indexed pending append if its index is at most `index`.
fn pop_first_at_most(
    pending: &mut BTreeMap<PendingKey, PendingAppend>,
    index: Index,
) -> Option<(Index, PendingAppend)> {
    let first = pending.first_entry()?;
    (first.key().0 <= index).then(|| {
        let ((index, _), p) = first.remove_entry();
        (index, p)
    })
}

/// A validated append waiting for its proposal.
struct StagedAppend {
    requester: Requester,
    ack: AckMode,
    accepted: Instant,
    /// A resend of the batch at this place of the same proposal: answered like it.
    same_as: Option<usize>,
}

/// Appends to propose as one Raft entry: the batches for `Replica::propose_run`, and who waits
/// for them (handed back to [`Appends::proposed`]).
pub struct Proposal {
    /// The producers' batches, in order.
    pub batches: Vec<Batch>,
    /// The appends they came with, in the same order.
    pub waiting: Waiting,
    /// Bytes the entry will have.
    bytes: usize,
}

/// The appends of a [`Proposal`], in order.
pub struct Waiting(Vec<StagedAppend>);

/// A pending append's key: its entry's index, then a serial number (a run holds several
/// appends, and resends wait at their original's index).
type PendingKey = (Index, u64);

/// Every append of the node not yet answered.
pub struct Appends {
    cfg: AppendConfig,
    replier: Replier,
    /// Appends acknowledged at commit, by entry index and place in the entry.
    awaiting_commit: BTreeMap<PendingKey, PendingAppend>,
    /// Appends acknowledged once durable on this node, by entry index and place in the entry.
    awaiting_durable: BTreeMap<PendingKey, PendingAppend>,
    /// This round's validated appends, one proposal per entry's worth (the last one open).
    staged: VecDeque<Proposal>,
    /// No new appends are taken (the node is stopping).
    draining: bool,
    /// Decided Kafka appends, for the Kafka module to answer.
    kafka_answers: Vec<(ProduceTicket, Outcome)>,
    /// The next pending append's serial number.
    serial: u64,
    /// Producer ids this node hands out while it leads.
    producer_ids: ProducerIds,
    metrics: Arc<Metrics>,
}

/// Why no producer id was handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// A newer epoch of this producer is stored: the asking incarnation is fenced.
    #[error("a newer epoch ({current}) of this producer is stored")]
    Fenced {
        /// The epoch stored.
        current: i16,
    },
    /// This node cannot hand out ids (see `ProducerIdError`; logged).
    #[error("no producer id can be handed out: {0}")]
    Unavailable(String),
    /// The data directory's disk has no room to claim a block of ids.
    #[error("no producer id can be handed out: the disk of {} is full", .0.path.display())]
    DiskFull(raftline_log::DiskFull),
}

impl Appends {
    /// No appends yet; `producer_ids` hands out idempotent producers' ids.
    pub fn new(cfg: AppendConfig, producer_ids: ProducerIds, metrics: Arc<Metrics>) -> Appends {
        Appends {
            replier: Replier {
                cluster_id: cfg.cluster_id,
                node_id: cfg.node_id,
            },
            metrics,
            cfg,
            awaiting_commit: BTreeMap::new(),
            awaiting_durable: BTreeMap::new(),
            staged: VecDeque::new(),
            draining: false,
            kafka_answers: Vec::new(),
            serial: 0,
            producer_ids,
        }
    }

    /// Hands an idempotent producer its id and epoch: a new id at epoch 0, or, for a producer
    /// that names its id and epoch (bumping its epoch after an error it cannot resolve
    /// otherwise), the same id at the next epoch (a new id once the epoch is exhausted). Any
    /// node hands out ids (`producers.rs`: unique without coordination).
    pub fn grant_producer(
        &mut self,
        replica: &Replica,
        bump: Option<(u64, i16)>,
    ) -> Result<(u64, i16), GrantError> {
        if let Some((producer_id, epoch)) = bump {
            let current = replica.producer_table().get(producer_id).map(|p| p.epoch());
            if let Some(current) = current.filter(|&c| c > epoch) {
                return Err(GrantError::Fenced { current });
            }
            if epoch < i16::MAX - 1 {
                return Ok((producer_id, epoch + 1));
            }
        }
        let id = self.producer_ids.grant().map_err(|e| {
            tracing::error!(error = %e, "no producer id can be handed out");
            match e {
                ProducerIdError::Claim(io) if raftline_log::space::is_no_space(&io) => {
                    let path = self.producer_ids.dir().to_path_buf();
                    let free_bytes = raftline_log::space::free_bytes(&path).unwrap_or(0);
                    GrantError::DiskFull(raftline_log::DiskFull { path, free_bytes })
                }
                e => GrantError::Unavailable(e.to_string()),
            }
        })?;
        Ok((id, 0))
    }

    /// Appends still waiting for their acknowledgement.
    pub fn pending(&self) -> usize {
        self.awaiting_commit.len()
            + self.awaiting_durable.len()
            + self.staged.iter().map(|p| p.waiting.0.len()).sum::<usize>()
    }

    /// Refuse new appends from now on (`Unavailable`): the node is stopping.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Answers `requester` with `outcome`: a native client at once, a Kafka one through
    /// [`Appends::take_kafka_answers`].
    fn answer(&mut self, net: &mut Net, requester: Requester, outcome: Outcome, last_offset: u64) {
        match requester {
            Requester::Client { client, request_id } => {
                let response = match outcome {
                    Ok(base_offset) => Response::Appended {
                        request_id,
                        base_offset,
                        last_offset,
                    },
                    Err(error) => Response::Error { request_id, error },
                };
                self.replier.respond(net, client, &response);
            }
            Requester::Kafka(ticket) => self.kafka_answers.push((ticket, outcome)),
            Requester::KafkaNoAck(client) => {
                if let Err(error) = outcome {
                    net.close_client(
                        client,
                        &format!("a Kafka produce with acks=0 failed: {error}"),
                    );
                }
            }
        }
    }

    fn error(&mut self, net: &mut Net, requester: Requester, error: ClientError) {
        self.answer(net, requester, Err(error), 0);
    }

    /// Answers an append that got as far as a proposal with `error`, counted as a failed
    /// proposal (`raftline_server_proposals_failed_total`).
    fn fail(&mut self, net: &mut Net, requester: Requester, error: ClientError) {
        self.metrics
            .proposals_failed
            .fetch_add(1, Ordering::Relaxed);
        self.error(net, requester, error);
    }

    /// The Kafka appends decided since the last call, in the order they were decided.
    pub fn take_kafka_answers(&mut self) -> Vec<(ProduceTicket, Outcome)> {
        std::mem::take(&mut self.kafka_answers)
    }

    /// The `NotLeader` error naming the leader this node knows of.
    pub fn not_leader(&self, leader: Option<u64>) -> ClientError {
        ClientError::NotLeader {
            leader_id: leader,
            leader_address: leader.and_then(|id| self.cfg.client_addresses.get(&id).cloned()),
        }
    }

    /// The batch limit, for the Kafka module's own check before it validates a batch.
    pub fn batch_bytes_max(&self) -> usize {
        self.cfg.batch_bytes_max
    }

    /// The members' client addresses changed (the configuration did): leader hints use these.
    pub fn set_client_addresses(&mut self, addresses: BTreeMap<u64, String>) {
        self.cfg.client_addresses = addresses;
    }

    /// Handles an `Append`: validates the batch and stages it for the round's proposal;
    /// invalid ones are answered at once.
    pub fn append(
        &mut self,
        net: &mut Net,
        client: ClientId,
        request_id: u64,
        ack: AckMode,
        bytes: Vec<u8>,
    ) {
        let requester = Requester::Client { client, request_id };
        if bytes.len() > self.cfg.batch_bytes_max {
            let limit_bytes = self.cfg.batch_bytes_max as u64;
            self.error(net, requester, ClientError::TooLarge { limit_bytes });
            return;
        }
        let batch = match Batch::decode(bytes) {
            Ok(batch) if batch.header().record_count > 0 => batch,
            Ok(_) => {
                let why = "a batch must carry at least one record".to_string();
                self.error(net, requester, ClientError::BadRequest { why });
                return;
            }
            Err(e) => {
                let why = format!("invalid batch: {e}");
                self.error(net, requester, ClientError::BadRequest { why });
                return;
            }
        };
        self.stage(net, requester, ack, batch);
    }

    /// Stages a validated batch with at least one record (and within the batch limit) for the
    /// round's proposal; `requester` is answered when it is decided.
    pub fn stage(&mut self, net: &mut Net, requester: Requester, ack: AckMode, batch: Batch) {
        if self.draining {
            let why = "the node is shutting down".to_string();
            self.error(net, requester, ClientError::Unavailable { why });
            return;
        }
        let batch_bytes = batch.as_bytes().len();
        debug_assert!(batch_bytes <= self.cfg.batch_bytes_max + BATCH_HEADER_BYTES);
        self.metrics.batch_bytes.record(batch_bytes as u64);
        // The entry must fit the entry limit: a run adds its own header.
        let fits =
            |p: &Proposal| p.bytes + BATCH_HEADER_BYTES + batch_bytes <= self.cfg.batch_bytes_max;
        if !self.staged.back().is_some_and(fits) {
            self.staged.push_back(Proposal {
                batches: Vec::new(),
                waiting: Waiting(Vec::new()),
                bytes: 0,
            });
        }
        let open = self.staged.back_mut().expect("an open proposal");
        open.bytes += batch_bytes;
        open.batches.push(batch);
        open.waiting.0.push(StagedAppend {
            requester,
            ack,
            accepted: Instant::now(),
            same_as: None,
        });
    }

    /// The next entry's worth of staged appends, in arrival order, less those `refusal` refuses
    /// (answered at once with its error).
    pub fn take_proposal(
        &mut self,
        net: &mut Net,
        refusal: impl Fn(&Batch) -> Option<ClientError>,
    ) -> Option<Proposal> {
        loop {
            let staged = self.staged.pop_front()?;
            let mut proposal = Proposal {
                batches: Vec::with_capacity(staged.batches.len()),
                waiting: Waiting(Vec::with_capacity(staged.batches.len())),
                bytes: 0,
            };
            for (batch, s) in staged.batches.into_iter().zip(staged.waiting.0) {
                if let Some(error) = refusal(&batch) {
                    self.metrics
                        .appends_refused_state_full
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.error(net, s.requester, error);
                    continue;
                }
                proposal.bytes += batch.as_bytes().len();
                proposal.batches.push(batch);
                proposal.waiting.0.push(s);
            }
            if proposal.batches.is_empty() {
                continue;
            }
            self.metrics
                .entry_batches
                .record(proposal.batches.len() as u64);
            return Some(proposal);
        }
    }

    /// Has the leader judge a proposal's batches (idempotent producers): answers resends of
    /// stored batches with their original's offsets (now if it is committed, else once it is
    /// decided) and refuses batches that break their producer's sequence or epoch; returns what
    /// is left to propose, if anything.
    pub fn admit(
        &mut self,
        net: &mut Net,
        replica: &Replica,
        proposal: Proposal,
    ) -> Option<Proposal> {
        let verdicts = replica.judge(&proposal.batches);
        if verdicts.iter().all(|v| *v == Verdict::Fresh) {
            return Some(proposal);
        }
        let mut left = Proposal {
            batches: Vec::new(),
            waiting: Waiting(Vec::new()),
            bytes: proposal.bytes,
        };
        // Where each batch of `proposal` went in `left`.
        let mut kept_at = vec![0; verdicts.len()];
        let staged = proposal.waiting.0.into_iter();
        for (place, ((batch, mut s), verdict)) in proposal
            .batches
            .into_iter()
            .zip(staged)
            .zip(verdicts)
            .enumerate()
        {
            let requester = s.requester;
            let refuse = |producer_error| Some(producer_error);
            let error = match verdict {
                Verdict::Fresh => {
                    kept_at[place] = left.batches.len();
                    left.batches.push(batch);
                    left.waiting.0.push(s);
                    None
                }
                Verdict::SameAs(original) => {
                    s.same_as = Some(kept_at[original]);
                    left.waiting.0.push(s);
                    None
                }
                Verdict::Duplicate(original) => {
                    self.metrics
                        .producer_duplicates
                        .fetch_add(1, Ordering::Relaxed);
                    let pending = PendingAppend {
                        requester: s.requester,
                        term: original.term,
                        base_offset: original.base_offset,
                        last_offset: original.last_offset,
                        accepted: s.accepted,
                    };
                    let key = (original.index, self.next_serial());
                    match s.ack {
                        _ if original.index <= replica.readable_index() => {
                            self.acknowledge(net, &pending)
                        }
                        AckMode::None => self.acknowledge(net, &pending),
                        AckMode::Leader => {
                            self.awaiting_durable.insert(key, pending);
                        }
                        AckMode::Quorum => {
                            self.awaiting_commit.insert(key, pending);
                        }
                    }
                    None
                }
                Verdict::OutOfOrder {
                    producer_id,
                    expected,
                    got,
                } => refuse(ClientError::OutOfOrderSequence {
                    producer_id,
                    expected,
                    got,
                }),
                Verdict::StaleEpoch {
                    producer_id,
                    current,
                    got,
                } => refuse(ClientError::InvalidProducerEpoch {
                    producer_id,
                    current,
                    got,
                }),
                Verdict::UnknownProducer { producer_id } => {
                    refuse(ClientError::UnknownProducer { producer_id })
                }
                // Retriable and not stored: the new leader applies earlier terms' entries first.
                Verdict::NotReady => Some(ClientError::Busy),
            };
            if let Some(error) = error {
                self.metrics
                    .producer_refusals
                    .fetch_add(1, Ordering::Relaxed);
                self.error(net, requester, error);
            }
        }
        (!left.batches.is_empty()).then_some(left)
    }

    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// Registers the acknowledgements of a proposal the leader accepted, or answers all its
    /// appends with the reason it was refused.
    pub fn proposed(
        &mut self,
        net: &mut Net,
        waiting: Waiting,
        result: Result<Vec<Proposed>, ProposalError>,
    ) -> Result<(), FatalError> {
        let proposed = match result {
            Ok(p) => p,
            Err(ProposalError::Fatal(e)) => return Err(e),
            Err(ProposalError::Empty) => unreachable!("empty batches are refused when staged"),
            Err(ProposalError::DiskFull(full)) => {
                let error = ClientError::DiskFull {
                    path: full.path.display().to_string(),
                    free_bytes: full.free_bytes,
                };
                for s in &waiting.0 {
                    self.error(net, s.requester, error.clone());
                }
                return Ok(());
            }
            Err(ProposalError::Refused(refused)) => {
                let error = match refused {
                    ProposeError::NotLeader { leader } => self.not_leader(leader),
                    ProposeError::TooLarge { limit, .. } => {
                        ClientError::TooLarge { limit_bytes: limit }
                    }
                    ProposeError::Busy { .. } | ProposeError::DiskBacklog { .. } => {
                        ClientError::Busy
                    }
                    ProposeError::Transferring { to } => self.not_leader(Some(to)),
                };
                for s in &waiting.0 {
                    self.fail(net, s.requester, error.clone());
                }
                return Ok(());
            }
        };
        let mut fresh = proposed.iter();
        for s in waiting.0 {
            let proposed = match s.same_as {
                Some(original) => proposed[original],
                None => *fresh.next().expect("one proposed batch per fresh append"),
            };
            let pending = PendingAppend {
                requester: s.requester,
                term: proposed.term,
                base_offset: proposed.base_offset,
                last_offset: proposed.last_offset,
                accepted: s.accepted,
            };
            let key = (proposed.index, self.next_serial());
            match s.ack {
                AckMode::None => self.acknowledge(net, &pending),
                AckMode::Leader => {
                    self.awaiting_durable.insert(key, pending);
                }
                AckMode::Quorum => {
                    self.awaiting_commit.insert(key, pending);
                }
            }
        }
        Ok(())
    }

    fn acknowledge(&mut self, net: &mut Net, p: &PendingAppend) {
        self.answer(net, p.requester, Ok(p.base_offset), p.last_offset);
    }

    /// Answers the appends decided by newly committed entries.
    pub fn on_committed(&mut self, net: &mut Net, committed: &[Committed], leader: Option<u64>) {
        for c in committed {
            // Entries at or below a committed index are decided: this one won or lost.
            while let Some((index, p)) = pop_first_at_most(&mut self.awaiting_commit, c.index) {
                if index == c.index && p.term == c.term {
                    self.metrics
                        .append_commit_us
                        .record(p.accepted.elapsed().as_micros() as u64);
                    self.acknowledge(net, &p);
                } else {
                    self.fail(net, p.requester, self.not_leader(leader));
                }
            }
        }
    }

    /// Answers `Leader`-mode appends now durable here (`term_at` tells whether the entry at an
    /// index is still the proposed one).
    pub fn on_durable(
        &mut self,
        net: &mut Net,
        durable_index: Index,
        term_at: impl Fn(Index) -> Option<Term>,
        leader: Option<u64>,
    ) {
        while let Some((index, p)) = pop_first_at_most(&mut self.awaiting_durable, durable_index) {
            if term_at(index) == Some(p.term) {
                self.acknowledge(net, &p);
            } else {
                self.fail(net, p.requester, self.not_leader(leader));
            }
        }
    }

    /// Answers `Timeout` to appends older than the limit (they may still commit).
    pub fn expire(&mut self, net: &mut Net, now: Instant) {
        let timeout = self.cfg.append_timeout;
        let mut answers: Vec<PendingAppend> = Vec::new();
        for map in [&mut self.awaiting_commit, &mut self.awaiting_durable] {
            let expired: Vec<PendingKey> = map
                .iter()
                .filter(|(_, p)| now.duration_since(p.accepted) >= timeout)
                .map(|(&i, _)| i)
                .collect();
            answers.extend(expired.iter().filter_map(|i| map.remove(i)));
        }
        self.metrics
            .proposals_failed
            .fetch_add(answers.len() as u64, Ordering::Relaxed);
        for p in answers {
            match p.requester {
                Requester::Client { client, request_id } => {
                    let response = Response::Error {
                        request_id,
                        error: ClientError::Timeout,
                    };
                    // Best effort: a connection too full for a timeout answer is not closed
                    // for it.
                    let mut frame = Vec::new();
                    if encode_response(&mut frame, self.cfg.cluster_id, self.cfg.node_id, &response)
                        .is_ok()
                    {
                        let _ = net.send_client(client, frame);
                    }
                }
                requester => self.error(net, requester, ClientError::Timeout),
            }
        }
    }

    /// Answers every append still waiting with `Unavailable` (the node is stopping).
    pub fn fail_pending(&mut self, net: &mut Net, why: &str) {
        let all: Vec<Requester> = std::mem::take(&mut self.awaiting_commit)
            .into_values()
            .chain(std::mem::take(&mut self.awaiting_durable).into_values())
            .map(|p| p.requester)
            .chain(
                self.staged
                    .drain(..)
                    .flat_map(|p| p.waiting.0)
                    .map(|s| s.requester),
            )
            .collect();
        for requester in all {
            let error = ClientError::Unavailable {
                why: why.to_string(),
            };
            self.fail(net, requester, error);
        }
    }
}
