//! Reading across the truncation: the state the log's compacted prefix describes (a node's
//! snapshot: the latest record per key), then the log from the snapshot's cut, as one stream of
//! [`StateEvent`]s. A consumer that applies them ends with exactly the key → value map, and the
//! same last offset, as one that read every record from offset 0.
//!
//! Order: [`StateEvent::Reset`] (drop any state built so far) → the snapshot's records
//! ([`StateEvent::SnapshotRecord`], in key order; an empty value is a delete) →
//! [`StateEvent::CaughtUp`] at the cut → log records ([`StateEvent::Record`]). A key absent from
//! the snapshot is deleted as of the cut (or never existed).
//!
//! Fail-over: a snapshot read that loses its node resumes on the next bootstrap node at the
//! record it reached when that node holds the same snapshot (snapshots at one index are the same
//! on every node: the same committed log, in key order); otherwise that node's own snapshot
//! starts over with a new `Reset`, never a mix of two snapshots. The log phase is an ordinary
//! [`Subscription`] (its own fail-over); if the log it needs was truncated meanwhile, the state
//! is read again from a newer snapshot (a new `Reset`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::client::connection::Connection;
use crate::client::{ClientConfig, ConsumedRecord, Error, Subscription};
use crate::client_proto::{
    ClientError, Request, Response, SnapshotInfo, SnapshotRecord, SnapshotResume, StartFrom,
};

/// What a state subscription delivers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateEvent {
    /// A snapshot stream starts: drop any state built so far; its records follow.
    Reset(SnapshotInfo),
    /// The latest record of a key below the cut (empty value: deleted), with its original
    /// offset and timestamp.
    SnapshotRecord(SnapshotRecord),
    /// The state below `offset` is complete; the log's records from `offset` follow.
    CaughtUp {
        /// The cut.
        offset: u64,
    },
    /// A committed log record.
    Record(ConsumedRecord),
}

/// When a state subscription reads a snapshot first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateMode {
    /// Always: "the state, then the changes".
    Always,
    /// Only when the start offset is below the log's start (compacted away); else just the log.
    IfCompacted,
}

enum Phase {
    /// Reading a snapshot: the connection (none between nodes) and how far it got.
    Snapshot {
        conn: Option<Connection>,
        info: Option<SnapshotInfo>,
        received: u64,
        credit_owed: u64,
    },
    /// Reading the log (boxed: a subscription's buffers dwarf the snapshot phase's state).
    Log(Box<Subscription>),
}

/// The state below the log's start, then the log: see the module documentation.
pub struct StateSubscription {
    config: ClientConfig,
    phase: Phase,
    events: VecDeque<StateEvent>,
    node_cursor: usize,
    last_failure: String,
    /// Since when the snapshot phase has got nothing but failures (bounded by the fail-over
    /// timeout).
    failing_since: Option<Instant>,
    /// Where the log phase resumes if it must be re-opened (the next offset not delivered).
    next_offset: Option<u64>,
}

/// The stream id of a snapshot read (one per connection).
const SNAPSHOT_STREAM_ID: u64 = 1;

impl StateSubscription {
    /// Opens a state subscription from `from`: with [`StateMode::Always`], or when `from` is
    /// below the log's start, it reads a snapshot first; otherwise it is an ordinary
    /// subscription that reads the state again only if it later falls below the log's start.
    pub fn open(
        config: ClientConfig,
        from: StartFrom,
        mode: StateMode,
    ) -> Result<StateSubscription, Error> {
        let mut subscription = StateSubscription {
            config,
            phase: Phase::Snapshot {
                conn: None,
                info: None,
                received: 0,
                credit_owed: 0,
            },
            events: VecDeque::new(),
            node_cursor: 0,
            last_failure: String::new(),
            failing_since: None,
            next_offset: None,
        };
        if mode == StateMode::IfCompacted {
            match Subscription::open(subscription.config.clone(), from) {
                Ok(log) => subscription.phase = Phase::Log(Box::new(log)),
                Err(e) if is_compacted(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(subscription)
    }

    /// The next event, waiting at most `timeout` (`None`: as long as it takes); `Ok(None)` if
    /// none came in time. An error is final.
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<StateEvent>, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(event) = self.events.pop_front() {
                if let StateEvent::Record(r) = &event {
                    self.next_offset = Some(r.offset + 1);
                }
                return Ok(Some(event));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(None);
            }
            match &mut self.phase {
                Phase::Log(log) => match log.next_record(left) {
                    Ok(Some(record)) => self.events.push_back(StateEvent::Record(record)),
                    Ok(None) => return Ok(None),
                    Err(e) if is_compacted(&e) => self.restart_snapshot(),
                    Err(e) => return Err(e),
                },
                Phase::Snapshot { .. } => {
                    if !self.snapshot_step(left)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The snapshot read's node failed: move on to the next one, unless nothing but failures
    /// came for a whole fail-over timeout.
    fn snapshot_node_failed(&mut self, why: String) -> Result<bool, Error> {
        self.last_failure = why;
        self.node_cursor += 1;
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.config.failover_timeout {
            return Err(Error::NoNode {
                addresses: self.config.bootstrap.join(","),
                last: self.last_failure.clone(),
            });
        }
        std::thread::sleep(self.config.backoff_min);
        Ok(true)
    }

    /// In the log phase: one past the last committed offset the log subscription's first node
    /// could stream when it confirmed it (a reader that does not follow stops there).
    pub fn log_end_offset_at_start(&self) -> Option<u64> {
        match &self.phase {
            Phase::Log(log) => Some(log.end_offset_at_start()),
            Phase::Snapshot { .. } => None,
        }
    }

    /// In the log phase: the offset of the next log record to deliver (the cut right after
    /// `CaughtUp`).
    pub fn next_offset(&self) -> Option<u64> {
        match &self.phase {
            Phase::Log(_) => self.next_offset,
            Phase::Snapshot { .. } => None,
        }
    }

    /// Reads the state again from a snapshot (the log the subscription needed is gone).
    fn restart_snapshot(&mut self) {
        self.phase = Phase::Snapshot {
            conn: None,
            info: None,
            received: 0,
            credit_owed: 0,
        };
    }

    /// One step of the snapshot phase: connect if needed, then take one frame. Returns whether
    /// something happened (false: nothing arrived within `left`).
    fn snapshot_step(&mut self, left: Option<Duration>) -> Result<bool, Error> {
        let Phase::Snapshot {
            conn,
            info,
            received,
            credit_owed,
        } = &mut self.phase
        else {
            unreachable!("called in the snapshot phase");
        };
        if conn.is_none() {
            let resume = info.map(|i| SnapshotResume {
                index: i.index,
                position: *received,
            });
            *conn = Some(open_snapshot_read(
                &self.config,
                &mut self.node_cursor,
                &mut self.last_failure,
                resume,
            )?);
            *credit_owed = 0;
        }
        let c = conn.as_mut().expect("connected above");
        let wait = left.unwrap_or(self.config.request_timeout);
        let response = match c.recv(wait) {
            Ok(Some(response)) => response,
            Ok(None) if left.is_some() => return Ok(false),
            Ok(None) => {
                let why = format!("{} sent nothing within {wait:?}", c.address());
                *conn = None;
                return self.snapshot_node_failed(why);
            }
            Err(e) => {
                *conn = None;
                return self.snapshot_node_failed(e.to_string());
            }
        };
        self.failing_since = None;
        match response {
            Response::SnapshotBegin { info: begun, .. } => {
                let resumed = info.is_some_and(|i| i.index == begun.index)
                    && begun.position == *received
                    && begun.position > 0;
                if !resumed {
                    // Anything but a resume at exactly our position starts from record 0: a
                    // stream that skipped or repeated records would corrupt the state.
                    if begun.position != 0 {
                        return Err(Error::Protocol {
                            address: c.address().to_string(),
                            why: format!(
                                "snapshot {} resumed at record {}, not at {} or 0",
                                begun.index, begun.position, *received
                            ),
                        });
                    }
                    *received = 0;
                    self.events.push_back(StateEvent::Reset(begun));
                }
                *info = Some(begun);
            }
            Response::SnapshotRecords { records, .. } => {
                *received += records.len() as u64;
                *credit_owed += records
                    .iter()
                    .map(SnapshotRecord::credit_bytes)
                    .sum::<u64>();
                self.events
                    .extend(records.into_iter().map(StateEvent::SnapshotRecord));
                if *credit_owed >= self.config.subscribe_window_bytes / 2 {
                    let bytes = std::mem::take(credit_owed);
                    let credit = Request::Credit {
                        subscription_id: SNAPSHOT_STREAM_ID,
                        bytes,
                    };
                    if let Err(e) = c.send(&credit) {
                        *conn = None;
                        return self.snapshot_node_failed(e.to_string());
                    }
                }
            }
            Response::SnapshotEnd { cut_offset, .. } => {
                self.events
                    .push_back(StateEvent::CaughtUp { offset: cut_offset });
                self.next_offset = Some(cut_offset);
                match Subscription::open(self.config.clone(), StartFrom::Offset(cut_offset)) {
                    Ok(log) => self.phase = Phase::Log(Box::new(log)),
                    // Truncated past the cut already: read a newer snapshot.
                    Err(e) if is_compacted(&e) => self.restart_snapshot(),
                    Err(e) => return Err(e),
                }
            }
            Response::Error { error, .. } => {
                let why = format!("{}: {error}", c.address());
                *conn = None;
                return self.snapshot_node_failed(why);
            }
            other => {
                return Err(Error::Protocol {
                    address: c.address().to_string(),
                    why: format!("unexpected answer to a snapshot read: {other:?}"),
                })
            }
        }
        Ok(true)
    }
}

/// Whether `e` says the offset asked for was compacted away (below the log's start).
fn is_compacted(e: &Error) -> bool {
    matches!(
        e,
        Error::Refused {
            error: ClientError::OffsetOutOfRange { requested, earliest, .. },
            ..
        } if requested < earliest
    )
}

/// Starts a snapshot read on the bootstrap nodes in turn from `node_cursor`, rounds separated
/// by an exponential backoff, all bounded by the fail-over timeout.
fn open_snapshot_read(
    config: &ClientConfig,
    node_cursor: &mut usize,
    last_failure: &mut String,
    resume: Option<SnapshotResume>,
) -> Result<Connection, Error> {
    let nodes = config.bootstrap.len();
    let deadline = Instant::now() + config.failover_timeout;
    let mut backoff = config.backoff_min;
    loop {
        for _ in 0..nodes {
            let address = &config.bootstrap[*node_cursor % nodes];
            let request = Request::SubscribeSnapshot {
                subscription_id: SNAPSHOT_STREAM_ID,
                window_bytes: config.subscribe_window_bytes,
                resume,
            };
            match Connection::open(address, config).and_then(|mut conn| {
                conn.send(&request)?;
                Ok(conn)
            }) {
                Ok(conn) => return Ok(conn),
                Err(e) if e.is_access_refused() => return Err(e),
                Err(e) => {
                    *last_failure = e.to_string();
                    *node_cursor += 1;
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Error::NoNode {
                addresses: config.bootstrap.join(","),
                last: last_failure.clone(),
            });
        }
        std::thread::sleep(backoff.min(deadline - now));
        backoff = (backoff * 2).min(config.backoff_max);
    }
}
