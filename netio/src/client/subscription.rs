//! Subscriptions: committed records from an offset, streamed by any node under credit-based
//! flow control, resumed on another node after a failure.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use raftline_log::batch::parse_header;
use raftline_log::{Batch, BatchError, Record};

use crate::client::connection::Connection;
use crate::client::{ClientConfig, Error};
use crate::client_proto::{ClientError, Request, Response, StartFrom};

/// One record delivered by a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The record's offset.
    pub offset: u64,
    /// The record.
    pub record: Record,
}

/// The records `first_offset..next_offset` of one batch, delivered by
/// [`Subscription::next_batch`] still encoded (header, CRC and archive validated): a reader that
/// does not need owned records pays no allocation per record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedBatch {
    batch: Batch,
    first_offset: u64,
}

impl ConsumedBatch {
    /// Offset of the first record delivered (past the start of the batch when the subscription
    /// started or resumed inside it).
    pub fn first_offset(&self) -> u64 {
        self.first_offset
    }

    /// One past the offset of the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.batch.header().next_offset()
    }

    /// Records delivered by this batch.
    pub fn record_count(&self) -> u64 {
        self.next_offset() - self.first_offset
    }

    /// The whole batch as stored (records before `first_offset` included).
    pub fn batch(&self) -> &Batch {
        &self.batch
    }

    /// The delivered records, decoded.
    pub fn records(&self) -> Result<Vec<ConsumedRecord>, BatchError> {
        let base = self.batch.header().base_offset;
        let skip = (self.first_offset - base) as usize;
        Ok(self
            .batch
            .records()?
            .into_iter()
            .enumerate()
            .skip(skip)
            .map(|(i, record)| ConsumedRecord {
                offset: base + i as u64,
                record,
            })
            .collect())
    }
}

/// Committed records from an offset, in offset order, each delivered once.
///
/// Iterate it (blocking), call [`Subscription::next_record`] with a timeout, or take whole
/// batches with [`Subscription::next_batch`] (no allocation per record). Flow control:
/// the node sends at most `subscribe_window_bytes` of batches beyond what this subscription has
/// taken in, and more credit is granted only as records are taken, so a slow consumer slows the
/// node's sending instead of filling memory. If the node fails (connection lost, no answer to an
/// idle probe, corrupt data, `Unavailable`), the subscription resumes on the next bootstrap node
/// from the offset after the last record delivered (for an `Earliest`/`Latest` subscription that
/// has delivered nothing yet: the start offset the first node confirmed).
pub struct Subscription {
    config: ClientConfig,
    from: StartFrom,
    next_offset: Option<u64>,
    conn: Option<Connection>,
    node_cursor: usize,
    subscription_id: u64,
    next_request_id: u64,
    /// Decoded records of `current`, not yet delivered.
    pending: VecDeque<ConsumedRecord>,
    /// The batch `pending` was decoded from.
    current: Option<ConsumedBatch>,
    /// Received batches, not yet delivered.
    batches: VecDeque<ConsumedBatch>,
    credit_owed: u64,
    probe: Option<(u64, Instant)>,
    last_heard: Instant,
    last_failure: String,
    end_offset_at_start: Option<u64>,
    done: bool,
}

impl Subscription {
    /// Subscribes on the first bootstrap node that confirms the subscription; a refusal such as
    /// `OffsetOutOfRange` is returned at once.
    pub fn open(config: ClientConfig, from: StartFrom) -> Result<Subscription, Error> {
        let next_offset = match from {
            StartFrom::Offset(n) => Some(n),
            StartFrom::Earliest | StartFrom::Latest => None,
        };
        let mut subscription = Subscription {
            config,
            from,
            next_offset,
            conn: None,
            node_cursor: 0,
            subscription_id: 1,
            next_request_id: 2,
            pending: VecDeque::new(),
            current: None,
            batches: VecDeque::new(),
            credit_owed: 0,
            probe: None,
            last_heard: Instant::now(),
            last_failure: String::from("no bootstrap address given"),
            end_offset_at_start: None,
            done: false,
        };
        subscription.reconnect()?;
        Ok(subscription)
    }

    /// The offset after the last record delivered to the caller (`None` until the first record
    /// of an `Earliest`/`Latest` subscription): where a new subscription would resume.
    pub fn next_offset(&self) -> Option<u64> {
        self.pending
            .front()
            .map(|r| r.offset)
            .or(self.batches.front().map(|b| b.first_offset))
            .or(self.next_offset)
    }

    /// One past the last committed offset the first node could stream when it confirmed the
    /// subscription: a reader that does not follow new records stops once `next_offset` reaches it.
    pub fn end_offset_at_start(&self) -> u64 {
        self.end_offset_at_start
            .expect("set by the confirmation `open` waits for")
    }

    /// The address of the node currently streaming, if connected.
    pub fn node_address(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.address())
    }

    /// The next record, waiting at most `timeout` (`None`: as long as it takes); `Ok(None)` if
    /// none arrived in time. An error is final (the subscription then yields nothing more).
    pub fn next_record(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<ConsumedRecord>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(record) = self.pending.pop_front() {
                return Ok(Some(record));
            }
            if let Some(batch) = self.batches.pop_front() {
                let records = batch.records().map_err(Error::Batch)?;
                self.pending.extend(records);
                self.current = Some(batch);
                continue;
            }
            if !self.receive(deadline)? {
                return Ok(None);
            }
        }
    }

    /// The rest of the next batch, waiting at most `timeout` (`None`: as long as it takes);
    /// `Ok(None)` if none arrived in time. Mixes with [`next_record`](Subscription::next_record):
    /// after some records of a batch were taken one by one, this returns the rest of that batch.
    /// An error is final.
    pub fn next_batch(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<ConsumedBatch>, Error> {
        if let Some(first) = self.pending.front().map(|r| r.offset) {
            let mut rest = self
                .current
                .take()
                .expect("pending records come from a batch");
            rest.first_offset = first;
            self.pending.clear();
            return Ok(Some(rest));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(batch) = self.batches.pop_front() {
                return Ok(Some(batch));
            }
            if !self.receive(deadline)? {
                return Ok(None);
            }
        }
    }

    /// Receives and handles one message (or fails over, or probes an idle node); `Ok(false)`
    /// once the deadline passed or the subscription ended.
    fn receive(&mut self, deadline: Option<Instant>) -> Result<bool, Error> {
        if self.done {
            return Ok(false);
        }
        if self.conn.is_none() {
            if let Err(e) = self.reconnect() {
                self.done = true;
                return Err(e);
            }
        }
        let now = Instant::now();
        let probe_at = match self.probe {
            Some((_, sent)) => sent + self.config.request_timeout,
            None => self.last_heard + self.config.idle_probe_interval,
        };
        let until = deadline.map_or(probe_at, |d| d.min(probe_at));
        let wait = until.saturating_duration_since(now);
        let conn = self.conn.as_mut().expect("connected above");
        match conn.recv(wait) {
            Ok(Some(response)) => {
                self.last_heard = Instant::now();
                if let Err(e) = self.handle(response) {
                    self.done = true;
                    return Err(e);
                }
            }
            Ok(None) => {
                self.on_idle();
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Err(e) => self.fail_over(e.to_string()),
        }
        Ok(true)
    }

    /// Calls `on_record` for every record until it returns `Break` (then `Ok`) or the
    /// subscription fails for good.
    pub fn for_each_record(
        mut self,
        mut on_record: impl FnMut(ConsumedRecord) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        loop {
            if let Some(record) = self.next_record(None)? {
                if on_record(record).is_break() {
                    return Ok(());
                }
            }
        }
    }

    /// Nothing arrived for a while: probe the node with a status request, or give up on it if
    /// the probe went unanswered.
    fn on_idle(&mut self) {
        let now = Instant::now();
        match self.probe {
            Some((_, sent)) if now >= sent + self.config.request_timeout => {
                self.fail_over(format!(
                    "no answer to a status probe within {:?}",
                    self.config.request_timeout
                ));
            }
            None if now >= self.last_heard + self.config.idle_probe_interval => {
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                let conn = self.conn.as_mut().expect("connected while idle");
                match conn.send(&Request::Status { request_id }) {
                    Ok(()) => self.probe = Some((request_id, now)),
                    Err(e) => self.fail_over(e.to_string()),
                }
            }
            _ => {}
        }
    }

    fn handle(&mut self, response: Response) -> Result<(), Error> {
        let address = self
            .conn
            .as_ref()
            .map_or(String::new(), |c| c.address().to_string());
        match response {
            Response::Batches {
                subscription_id,
                batches,
            } if subscription_id == self.subscription_id => {
                if let Err(why) = self.take_batches(&batches) {
                    self.fail_over(format!("{address} sent a bad batch: {why}"));
                }
                Ok(())
            }
            Response::StatusReply { request_id, .. }
                if self.probe.is_some_and(|(id, _)| id == request_id) =>
            {
                self.probe = None;
                Ok(())
            }
            Response::Error { error, .. } if is_node_local(&error) => {
                self.fail_over(format!("{address}: {error}"));
                Ok(())
            }
            Response::Error { error, .. } => Err(Error::Refused { address, error }),
            other => {
                self.fail_over(format!("{address} sent an unexpected {other:?}"));
                Ok(())
            }
        }
    }

    /// Validates the batches of one frame and queues those holding records at or after the
    /// resume point; grants credit for them.
    fn take_batches(&mut self, bytes: &[u8]) -> Result<(), String> {
        // `decode_response` checked that the bytes are whole batches, each with a valid header
        // and CRC, so they are split here by their headers alone; `Batch::decode` then
        // validates the archive and the record count.
        let mut rest = bytes;
        while !rest.is_empty() {
            let header = parse_header(rest).map_err(|e| e.to_string())?;
            let Some((batch, tail)) = rest.split_at_checked(header.total_bytes) else {
                return Err(format!(
                    "a batch of {} bytes is cut short",
                    header.total_bytes
                ));
            };
            rest = tail;
            let next = self.next_offset.unwrap_or(0);
            if header.record_count == 0 || header.next_offset() <= next {
                continue;
            }
            let batch = Batch::decode(batch.to_vec()).map_err(|e| e.to_string())?;
            let first_offset = header.base_offset.max(next);
            self.batches.push_back(ConsumedBatch {
                batch,
                first_offset,
            });
            self.next_offset = Some(header.next_offset());
        }
        self.credit_owed += bytes.len() as u64;
        if self.credit_owed >= self.config.subscribe_window_bytes / 2 {
            let credit = Request::Credit {
                subscription_id: self.subscription_id,
                bytes: self.credit_owed,
            };
            self.credit_owed = 0;
            if let Some(conn) = self.conn.as_mut() {
                if let Err(e) = conn.send(&credit) {
                    self.fail_over(e.to_string());
                }
            }
        }
        Ok(())
    }

    /// Abandons the current node; the next read resumes on the next one.
    fn fail_over(&mut self, why: String) {
        self.last_failure = why;
        self.conn = None;
        self.probe = None;
        self.credit_owed = 0;
        self.node_cursor += 1;
    }

    /// Subscribes on the nodes in turn, starting at the cursor, from the resume point; rounds
    /// are separated by an exponential backoff, all bounded by the fail-over timeout. A refusal
    /// no other node would lift (e.g. `OffsetOutOfRange`) ends the subscription.
    fn reconnect(&mut self) -> Result<(), Error> {
        let nodes = self.config.bootstrap.len();
        let deadline = Instant::now() + self.config.failover_timeout;
        let mut backoff = self.config.backoff_min;
        loop {
            for _ in 0..nodes {
                let address = self.config.bootstrap[self.node_cursor % nodes].clone();
                match self.subscribe_at(&address) {
                    Attempt::Subscribed(conn) => {
                        self.conn = Some(conn);
                        self.last_heard = Instant::now();
                        return Ok(());
                    }
                    Attempt::Refused(e) => return Err(e),
                    Attempt::NodeFailed(e) => {
                        self.last_failure = e.to_string();
                        self.node_cursor += 1;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::NoNode {
                    addresses: self.config.bootstrap.join(","),
                    last: self.last_failure.clone(),
                });
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = (backoff * 2).min(self.config.backoff_max);
        }
    }

    /// Subscribes at one node and waits for its confirmation, which fixes the resume point of
    /// an `Earliest`/`Latest` subscription that has not delivered anything yet.
    fn subscribe_at(&mut self, address: &str) -> Attempt {
        let mut conn = match Connection::open(address, &self.config) {
            Ok(conn) => conn,
            Err(e) if e.is_access_refused() => return Attempt::Refused(e),
            Err(e) => return Attempt::NodeFailed(e),
        };
        let from = match self.next_offset {
            Some(n) => StartFrom::Offset(n),
            None => self.from,
        };
        let request = Request::Subscribe {
            subscription_id: self.subscription_id,
            from,
            window_bytes: self.config.subscribe_window_bytes,
        };
        if let Err(e) = conn.send(&request) {
            return Attempt::NodeFailed(e);
        }
        let address = address.to_string();
        match conn.recv(self.config.request_timeout) {
            Ok(Some(Response::Subscribed {
                subscription_id,
                start_offset,
                end_offset,
            })) if subscription_id == self.subscription_id => {
                self.next_offset.get_or_insert(start_offset);
                self.end_offset_at_start.get_or_insert(end_offset);
                Attempt::Subscribed(conn)
            }
            Ok(Some(Response::Error { error, .. })) if is_node_local(&error) => {
                Attempt::NodeFailed(Error::Refused { address, error })
            }
            Ok(Some(Response::Error { error, .. })) => {
                Attempt::Refused(Error::Refused { address, error })
            }
            Ok(Some(other)) => Attempt::NodeFailed(Error::Protocol {
                address,
                why: format!("expected the subscription's confirmation, got {other:?}"),
            }),
            Ok(None) => Attempt::NodeFailed(Error::Timeout {
                address,
                timeout: self.config.request_timeout,
            }),
            Err(e) => Attempt::NodeFailed(e),
        }
    }
}

/// The outcome of subscribing at one node.
enum Attempt {
    /// Confirmed: stream from this connection.
    Subscribed(Connection),
    /// This node cannot serve now; another may.
    NodeFailed(Error),
    /// Refused for a reason no node would lift.
    Refused(Error),
}

/// Errors that concern only the node that sent them (another node may serve the request).
fn is_node_local(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Unavailable { .. }
            | ClientError::Busy
            | ClientError::Timeout
            | ClientError::NotLeader { .. }
    )
}

impl Iterator for Subscription {
    type Item = Result<ConsumedRecord, Error>;

    /// Blocks until the next record; `None` only after an error was returned.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.next_record(None) {
                Ok(Some(record)) => return Some(Ok(record)),
                Ok(None) if self.done => return None,
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
