//! The append pipeline: a bounded window of appends in flight on the leader connection, resent
//! in order to the new leader after a failure (at-least-once).

use std::collections::VecDeque;
use std::time::Instant;

use raftline_log::BatchError;

use crate::client::leader::LeaderLink;
use crate::client::{ClientConfig, Error};
use crate::client_proto::{ClientError, Request, Response};

/// Room left in a frame for an append's metadata beside its batch (the archive is ~40 bytes).
const APPEND_META_BYTES_MAX: usize = 256;

/// One batch handed to the pipeline.
struct Pending {
    request_id: u64,
    batch: Vec<u8>,
    record_count: u64,
    tag: u64,
    attempts: u32,
}

/// The outcome of one batch.
pub(crate) struct Completed {
    /// The caller's tag for the batch.
    pub(crate) tag: u64,
    /// Records in the batch.
    pub(crate) record_count: u64,
    /// The node that answered.
    pub(crate) address: String,
    /// Base offset, or the node's refusal (not retried: retrying cannot fix it).
    pub(crate) result: Result<u64, ClientError>,
}

/// Appends in flight (sent, unanswered) and queued (not yet sent), in submission order.
pub(crate) struct Pipeline {
    config: ClientConfig,
    link: LeaderLink,
    window: usize,
    in_flight: VecDeque<Pending>,
    queued: VecDeque<Pending>,
    completed: Vec<Completed>,
    /// Sends of a batch after its first (to a new leader, or after `Busy`).
    resends: u64,
}

impl Pipeline {
    /// A pipeline keeping at most `window` appends in flight.
    pub(crate) fn new(config: ClientConfig, window: usize) -> Pipeline {
        assert!(
            window > 0,
            "the append window must hold at least one append"
        );
        Pipeline {
            link: LeaderLink::new(config.clone()),
            config,
            window,
            in_flight: VecDeque::new(),
            queued: VecDeque::new(),
            completed: Vec::new(),
            resends: 0,
        }
    }

    /// Finds the leader now rather than at the first append.
    pub(crate) fn connect(&mut self) -> Result<(), Error> {
        self.link.connection().map(|_| ())
    }

    /// Queues a batch and sends it, first waiting for answers while the window is full. If this
    /// fails, the batch stays queued and the next call (or `drain`) sends it.
    pub(crate) fn submit(
        &mut self,
        batch: Vec<u8>,
        record_count: u64,
        tag: u64,
    ) -> Result<(), Error> {
        // A frame over the limit would only make the node hang up, again on every resend.
        let limit =
            (self.config.frame_payload_bytes_max as usize).saturating_sub(APPEND_META_BYTES_MAX);
        if batch.len() > limit {
            return Err(Error::Batch(BatchError::TooLarge {
                bytes: batch.len(),
                limit,
            }));
        }
        let request_id = self.link.next_id();
        self.queued.push_back(Pending {
            request_id,
            batch,
            record_count,
            tag,
            attempts: 0,
        });
        self.pump()
    }

    /// How many times a batch was sent again (the retries a caller does not see).
    pub(crate) fn resends(&self) -> u64 {
        self.resends
    }

    /// Appends neither answered nor refused yet.
    pub(crate) fn unfinished(&self) -> usize {
        self.in_flight.len() + self.queued.len()
    }

    /// Waits until every batch is answered.
    pub(crate) fn drain(&mut self) -> Result<(), Error> {
        while self.unfinished() > 0 {
            self.pump()?;
            if !self.in_flight.is_empty() {
                self.await_one()?;
            }
        }
        Ok(())
    }

    /// Handles the answers that have already arrived, without waiting.
    pub(crate) fn poll(&mut self) -> Result<(), Error> {
        if self.in_flight.is_empty() {
            return Ok(());
        }
        loop {
            let conn = self.link.connection()?;
            let address = conn.address().to_string();
            match conn.recv(std::time::Duration::ZERO) {
                Ok(Some(response)) => self.handle(response, address)?,
                Ok(None) => return Ok(()),
                Err(e) => return self.recover(e.to_string()),
            }
        }
    }

    /// An idempotent producer's id and epoch, asked of the leader connection's node once every
    /// batch in flight is answered. On failure the connection is dropped (the next call finds
    /// the leader again).
    pub(crate) fn init_producer(&mut self) -> Result<(u64, i16), Error> {
        self.drain()?;
        let request_id = self.link.next_id();
        let timeout = self.config.request_timeout;
        let conn = self.link.connection()?;
        let address = conn.address().to_string();
        let answer = conn
            .send(&Request::InitProducer { request_id })
            .and_then(|()| conn.recv(timeout));
        let result = match answer {
            Ok(Some(Response::ProducerGranted {
                request_id: answered,
                producer_id,
                epoch,
            })) if answered == request_id => return Ok((producer_id, epoch)),
            Ok(Some(Response::Error { error, .. })) => Err(Error::Refused { address, error }),
            Ok(Some(other)) => Err(Error::Protocol {
                address,
                why: format!("expected a producer id, got {other:?}"),
            }),
            Ok(None) => Err(Error::Timeout { address, timeout }),
            Err(e) => Err(e),
        };
        self.link.reset(None);
        result
    }

    /// Forgets every unanswered batch (the caller reports them as failed with unknown outcome).
    pub(crate) fn abandon(&mut self) {
        self.in_flight.clear();
        self.queued.clear();
        self.completed.clear();
    }

    /// Outcomes since the last call, in the order they were answered.
    pub(crate) fn take_completed(&mut self) -> Vec<Completed> {
        std::mem::take(&mut self.completed)
    }

    /// Sends queued batches while the window has room, waiting for answers when it is full.
    fn pump(&mut self) -> Result<(), Error> {
        while !self.queued.is_empty() {
            if self.in_flight.len() >= self.window {
                self.await_one()?;
                continue;
            }
            let pending = self.queued.pop_front().expect("queue not empty");
            self.in_flight.push_back(pending);
            let sent = self.send(self.in_flight.len() - 1);
            if let Err(e) = sent {
                self.recover(e.to_string())?;
            }
        }
        Ok(())
    }

    fn send(&mut self, at: usize) -> Result<(), Error> {
        let ack = self.config.ack;
        let pending = &mut self.in_flight[at];
        if pending.attempts > 0 {
            self.resends += 1;
        }
        pending.attempts += 1;
        self.link
            .connection()?
            .send_append(pending.request_id, ack, &pending.batch)
    }

    /// Waits for one answer (at most the request timeout) and handles it.
    fn await_one(&mut self) -> Result<(), Error> {
        let timeout = self.config.request_timeout;
        let conn = self.link.connection()?;
        let address = conn.address().to_string();
        match conn.recv(timeout) {
            Ok(Some(response)) => self.handle(response, address),
            Ok(None) => self.recover(Error::Timeout { address, timeout }.to_string()),
            Err(e) => self.recover(e.to_string()),
        }
    }

    /// Handles one answer from the leader connection to `address`.
    fn handle(&mut self, response: Response, address: String) -> Result<(), Error> {
        match response {
            Response::Appended {
                request_id,
                base_offset,
                ..
            } => {
                self.complete(request_id, address, Ok(base_offset));
                Ok(())
            }
            Response::Error {
                error: ClientError::NotLeader { leader_address, .. },
                ..
            } => {
                self.link.reset(leader_address);
                self.recover(format!("{address} is no longer the leader"))
            }
            Response::Error {
                request_id,
                error: ClientError::Busy,
            } => {
                // Busy means "not appended": only that batch goes back (to the front of the
                // queue); the connection and the other appends in flight carry on.
                self.retry_later(request_id, format!("{address} is busy"))
            }
            Response::Error {
                error: error @ (ClientError::Unavailable { .. } | ClientError::Timeout),
                ..
            } => {
                std::thread::sleep(self.config.backoff_min);
                self.recover(format!("{address}: {error}"))
            }
            Response::Error {
                request_id,
                error: error @ ClientError::OutOfOrderSequence { .. },
            } if self.earlier_unfinished(request_id) => {
                // An earlier batch of this producer was not stored yet (refused for now, or
                // resent): this one goes back behind it, in order.
                self.retry_later(request_id, format!("{address}: {error}"))
            }
            Response::Error {
                request_id: 0,
                error,
            } => {
                self.link.reset(None);
                Err(Error::Refused { address, error })
            }
            Response::Error { request_id, error } => {
                self.complete(request_id, address, Err(error));
                Ok(())
            }
            other => {
                self.link.reset(None);
                Err(Error::Protocol {
                    address,
                    why: format!("unexpected answer to an append: {other:?}"),
                })
            }
        }
    }

    /// Whether a batch submitted before `request_id` is still unanswered (ids grow with
    /// submission order and are kept across resends).
    fn earlier_unfinished(&self, request_id: u64) -> bool {
        let earlier = |p: &Pending| p.request_id < request_id;
        self.in_flight.iter().any(earlier) || self.queued.iter().any(earlier)
    }

    /// Takes a refused-for-now batch out of the window and queues it in submission order
    /// (first, unless an earlier batch waits there too), after a pause.
    fn retry_later(&mut self, request_id: u64, why: String) -> Result<(), Error> {
        let Some(at) = self
            .in_flight
            .iter()
            .position(|p| p.request_id == request_id)
        else {
            return Ok(());
        };
        let pending = self.in_flight.remove(at).expect("position is in range");
        let at = self.queued.partition_point(|p| p.request_id < request_id);
        if pending.attempts >= self.config.attempts_max {
            let attempts = pending.attempts;
            self.queued.insert(
                at,
                Pending {
                    attempts: 0,
                    ..pending
                },
            );
            return Err(Error::AttemptsExhausted {
                attempts,
                last: why,
            });
        }
        self.queued.insert(at, pending);
        std::thread::sleep(self.config.backoff_min);
        Ok(())
    }

    fn complete(&mut self, request_id: u64, address: String, result: Result<u64, ClientError>) {
        // An answer for an id no longer in flight belongs to a connection already abandoned.
        if let Some(at) = self
            .in_flight
            .iter()
            .position(|p| p.request_id == request_id)
        {
            let done = self.in_flight.remove(at).expect("position is in range");
            self.completed.push(Completed {
                tag: done.tag,
                record_count: done.record_count,
                address,
                result,
            });
        }
    }

    /// After a failure: drop the connection, find the leader again and resend everything in
    /// flight, in order. Each batch may be sent `attempts_max` times; then this gives up. On
    /// giving up, the unanswered batches go back to the front of the queue (attempt counts
    /// reset), so a later `drain` sends them again in order.
    fn recover(&mut self, mut last: String) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            self.link.reset(None);
            let worst = self.in_flight.iter().map(|p| p.attempts).max().unwrap_or(0);
            if worst >= self.config.attempts_max {
                self.requeue_in_flight();
                return Err(Error::AttemptsExhausted {
                    attempts: worst,
                    last,
                });
            }
            let resent = (0..self.in_flight.len()).try_for_each(|at| self.send(at));
            let error = match resent {
                Ok(()) => return Ok(()),
                Err(e @ Error::NoLeader { .. }) => e,
                Err(e) if started.elapsed() >= self.config.failover_timeout => Error::NoLeader {
                    addresses: self.config.bootstrap.join(","),
                    last: e.to_string(),
                },
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            self.requeue_in_flight();
            return Err(error);
        }
    }

    fn requeue_in_flight(&mut self) {
        while let Some(mut pending) = self.in_flight.pop_back() {
            pending.attempts = 0;
            self.queued.push_front(pending);
        }
    }
}
