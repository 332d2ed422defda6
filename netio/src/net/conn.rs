//! One TCP connection's state: what it is, its frame decoder, its bounded send queue and, on a
//! TLS port, its TLS session (the queue holds plaintext; what goes to the socket is ciphertext).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::frame::FrameDecoder;

use super::close_reason::CloseReason;
use super::kafka_framing::KafkaFrameDecoder;
use super::tls::TlsSession;
use super::{ClientId, PeerConn};

/// Bytes per recv on a peer connection (replication streams: fewer loop turns per MiB); a
/// frame larger than the buffer is reassembled by the decoder.
const PEER_RECV_BUF_BYTES: usize = 256 << 10;
/// Bytes per recv on a client connection (many of them; requests are small or one batch).
const CLIENT_RECV_BUF_BYTES: usize = 64 << 10;
/// Small frames are copied into one buffer up to this size per send; larger ones go alone.
const COALESCE_BYTES: usize = 256 << 10;

/// What a connection is for; decides which frames it may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnKind {
    /// We opened it to send to peer `id`; the peer never sends on it.
    OutboundPeer(u64),
    /// A peer opened it; `None` until its `PeerHello` names the sender.
    InboundPeer(PeerConn, Option<u64>),
    /// A client opened it.
    Client(ClientId),
    /// A Kafka client opened it (on the Kafka port: Kafka's framing, not raftline frames).
    Kafka(ClientId),
}

impl std::fmt::Display for ConnKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnKind::OutboundPeer(id) => write!(f, "outbound connection to peer {id}"),
            ConnKind::InboundPeer(_, Some(id)) => {
                write!(f, "inbound connection from peer {id}")
            }
            ConnKind::InboundPeer(_, None) => {
                write!(f, "inbound peer connection (no hello yet)")
            }
            ConnKind::Client(id) => write!(f, "client {}", id.0),
            ConnKind::Kafka(id) => write!(f, "Kafka client {}", id.0),
        }
    }
}

/// A connection the Net owns.
pub(super) struct Conn {
    pub(super) kind: ConnKind,
    pub(super) remote: SocketAddr,
    pub(super) decoder: Decoder,
    /// The receive buffer while no recv is in flight.
    pub(super) recv_buf: Option<Vec<u8>>,
    /// Outbound: connected; inbound: its first whole frame arrived.
    pub(super) established: bool,
    pub(super) opened_at: Instant,
    pub(super) last_recv_at: Instant,
    /// Last time it sent a request (keepalives do not count): who goes first when the client
    /// slots are full.
    pub(super) last_request_at: Instant,
    /// Last time a send made progress (or was queued on an idle connection).
    pub(super) last_send_at: Instant,
    queue: VecDeque<Vec<u8>>,
    /// Queued plus in-flight bytes not yet sent.
    queued_bytes: usize,
    queue_bytes_max: usize,
    sending: bool,
    /// A coalescing buffer kept between sends.
    spare: Option<Vec<u8>>,
    /// Set when the queue reached the drained mark (or refused): report when it falls below.
    pub(super) drain_wanted: bool,
    /// Being closed once its queue is flushed (answers earned before bad input, an `Error`
    /// explaining the close): why, and when at the latest. Nothing more is read from it.
    pub(super) closing: Option<(CloseReason, Instant)>,
    /// A client whose answers pile up unread is not read from until they drain: its requests
    /// wait in the kernel, not in the node's memory.
    pub(super) read_paused: bool,
    /// While a frame is incomplete: since when, and the bytes received since (the progress
    /// rate a slowloris fails).
    pub(super) partial: Option<(Instant, u64)>,
    /// A client not read from while the node holds client reads ([`super::Net::hold_client_reads`]).
    pub(super) held: bool,
    /// On a TLS port: the session every byte goes through.
    pub(super) tls: Option<TlsSession>,
    /// TLS: bytes of the queue's first buffer already encrypted.
    front_encrypted: usize,
    /// TLS: plaintext bytes the send in flight carries (credited to `queued_bytes` when it
    /// completes; its ciphertext length differs).
    in_flight_plaintext: usize,
}

/// How a connection's received bytes are split.
pub(super) enum Decoder {
    /// raftline frames (peer and client ports).
    Raftline(FrameDecoder),
    /// Kafka requests (the Kafka port).
    Kafka(KafkaFrameDecoder),
}

impl Decoder {
    /// Takes received bytes (plaintext, on a TLS connection).
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        match self {
            Decoder::Raftline(d) => d.feed(bytes),
            Decoder::Kafka(d) => d.feed(bytes),
        }
    }
}

/// Why [`Conn::enqueue_with`] queued nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnqueueError<E> {
    /// The queue refused the frame.
    Refused(QueueRefusal),
    /// The frame could not be encoded.
    Encode(E),
}

/// A queue refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum QueueRefusal {
    /// Queue full.
    Full,
    /// The frame alone exceeds the queue.
    TooLarge,
}

impl Conn {
    pub(super) fn new(
        kind: ConnKind,
        remote: SocketAddr,
        decoder: Decoder,
        queue_bytes_max: usize,
        now: Instant,
    ) -> Conn {
        Conn {
            kind,
            remote,
            decoder,
            recv_buf: Some(Vec::with_capacity(match kind {
                ConnKind::Client(_) | ConnKind::Kafka(_) => CLIENT_RECV_BUF_BYTES,
                _ => PEER_RECV_BUF_BYTES,
            })),
            established: false,
            opened_at: now,
            last_recv_at: now,
            last_request_at: now,
            last_send_at: now,
            queue: VecDeque::new(),
            queued_bytes: 0,
            queue_bytes_max,
            sending: false,
            spare: None,
            drain_wanted: false,
            closing: None,
            read_paused: false,
            partial: None,
            held: false,
            tls: None,
            front_encrypted: 0,
            in_flight_plaintext: 0,
        }
    }

    /// Memory this connection holds: its send queue's buffers and its decoder's (capacities,
    /// not lengths: what the allocator gave them).
    pub(super) fn buffered_bytes(&self) -> usize {
        let decoder = match &self.decoder {
            Decoder::Raftline(d) => d.held_bytes(),
            Decoder::Kafka(d) => d.held_bytes(),
        };
        let queue: usize = self.queue.iter().map(Vec::capacity).sum();
        queue + decoder
    }

    /// Notes `bytes` received, after which `incomplete` bytes wait for the rest of a frame.
    pub(super) fn note_progress(&mut self, bytes: usize, incomplete: bool, now: Instant) {
        self.partial = match (incomplete, self.partial) {
            (false, _) => None,
            (true, None) => Some((now, bytes as u64)),
            (true, Some((since, got))) => Some((since, got + bytes as u64)),
        };
    }

    pub(super) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Nothing queued and nothing in flight (TLS handshake records included).
    pub(super) fn is_quiet(&self) -> bool {
        self.queued_bytes == 0 && !self.sending
    }

    /// Queues one whole frame, or refuses it without queueing anything.
    pub(super) fn enqueue(&mut self, frame: Vec<u8>, now: Instant) -> Result<(), QueueRefusal> {
        debug_assert!(!frame.is_empty(), "frames are never empty");
        if frame.len() > self.queue_bytes_max {
            return Err(QueueRefusal::TooLarge);
        }
        if self.queued_bytes + frame.len() > self.queue_bytes_max {
            return Err(QueueRefusal::Full);
        }
        if self.queued_bytes == 0 {
            // The stall clock starts when there is something to send.
            self.last_send_at = now;
        }
        self.queued_bytes += frame.len();
        self.queue.push_back(frame);
        Ok(())
    }

    /// Encodes one whole frame straight into the queue's last buffer (a fresh one when that is
    /// at the coalescing size): no buffer per frame, and frames queued back to back already form
    /// one send, so `next_send` does not copy them together. On a refusal (or an encoding error)
    /// nothing stays queued.
    pub(super) fn enqueue_with<E>(
        &mut self,
        now: Instant,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), EnqueueError<E>> {
        if self.queue.back().is_none_or(|b| b.len() >= COALESCE_BYTES) {
            let mut fresh = self.spare.take().unwrap_or_default();
            fresh.clear();
            self.queue.push_back(fresh);
        }
        let tail = self
            .queue
            .back_mut()
            .expect("a tail buffer was just ensured");
        let before = tail.len();
        let encoded = encode(tail);
        let added = tail.len() - before;
        let refusal = match encoded {
            Err(e) => Some(EnqueueError::Encode(e)),
            Ok(()) if added > self.queue_bytes_max => {
                Some(EnqueueError::Refused(QueueRefusal::TooLarge))
            }
            Ok(()) if self.queued_bytes + added > self.queue_bytes_max => {
                Some(EnqueueError::Refused(QueueRefusal::Full))
            }
            Ok(()) => None,
        };
        if let Some(refusal) = refusal {
            tail.truncate(before);
            if before == 0 {
                let empty = self.queue.pop_back().expect("the tail exists");
                self.spare.get_or_insert(empty);
            }
            return Err(refusal);
        }
        debug_assert!(added > 0, "frames are never empty");
        if self.queued_bytes == 0 {
            self.last_send_at = now;
        }
        self.queued_bytes += added;
        Ok(())
    }

    /// The next buffer to send if none is in flight: one large frame as is, or small frames
    /// copied together. Whole frames only, so a connection never carries half a frame twice.
    /// On TLS, the next ciphertext instead ([`Conn::next_tls_send`]).
    pub(super) fn next_send(&mut self) -> Option<Vec<u8>> {
        if self.sending {
            return None;
        }
        if self.tls.is_some() {
            return self.next_tls_send();
        }
        let first = self.queue.pop_front()?;
        self.sending = true;
        if first.len() >= COALESCE_BYTES || self.queue.is_empty() {
            return Some(first);
        }
        let mut buf = self.spare.take().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&first);
        while let Some(next) = self.queue.front() {
            if buf.len() + next.len() > COALESCE_BYTES {
                break;
            }
            buf.extend_from_slice(next);
            self.queue.pop_front();
        }
        Some(buf)
    }

    /// TLS: encrypts up to `COALESCE_BYTES` of queued plaintext (none during the handshake) and
    /// returns every record rustls has to send, handshake messages included. The plaintext
    /// stays counted in `queued_bytes` until this send completes, so the queue's bound and the
    /// node's buffer budget cover it; a frame larger than that is encrypted over several sends.
    fn next_tls_send(&mut self) -> Option<Vec<u8>> {
        let tls = self.tls.as_mut().expect("a TLS connection");
        if !tls.is_handshaking() {
            let mut handed = 0;
            while handed < COALESCE_BYTES {
                let Some(front) = self.queue.front() else {
                    break;
                };
                let take = (front.len() - self.front_encrypted).min(COALESCE_BYTES - handed);
                if tls.encrypt(&front[self.front_encrypted..][..take]).is_err() {
                    break; // the session failed: only its alert goes out
                }
                handed += take;
                self.front_encrypted += take;
                if self.front_encrypted == front.len() {
                    self.front_encrypted = 0;
                    let done = self.queue.pop_front().expect("the front exists");
                    if done.capacity() <= 2 * COALESCE_BYTES {
                        self.spare = Some(done);
                    }
                }
            }
        }
        let mut buf = self.spare.take().unwrap_or_default();
        buf.clear();
        self.in_flight_plaintext = tls.take_ciphertext(&mut buf);
        if buf.is_empty() {
            self.spare = Some(buf);
            return None;
        }
        self.sending = true;
        Some(buf)
    }

    /// Drops every queued frame not in flight (a connection that only waits to send a TLS
    /// alert before it closes).
    pub(super) fn discard_queue(&mut self) {
        for buf in self.queue.drain(..) {
            self.queued_bytes -= buf.len();
        }
        self.queued_bytes += std::mem::take(&mut self.front_encrypted);
        debug_assert_eq!(self.queued_bytes, self.in_flight_plaintext);
    }

    /// Accounts `sent` bytes of the buffer in flight; returns where to resume if unfinished.
    pub(super) fn sent(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        sent: usize,
        now: Instant,
    ) -> Option<(Vec<u8>, usize)> {
        debug_assert!(self.sending);
        self.last_send_at = now;
        let done = start + sent;
        if self.tls.is_some() {
            // Ciphertext: the plaintext it carries is credited once all of it is out.
            if done < buf.len() {
                return Some((buf, done));
            }
            debug_assert!(self.in_flight_plaintext <= self.queued_bytes);
            self.queued_bytes -= std::mem::take(&mut self.in_flight_plaintext);
            self.sending = false;
            if buf.capacity() <= 2 * COALESCE_BYTES {
                self.spare = Some(buf);
            }
            return None;
        }
        debug_assert!(sent <= self.queued_bytes);
        self.queued_bytes -= sent;
        if done < buf.len() {
            return Some((buf, done));
        }
        self.sending = false;
        if buf.capacity() <= 2 * COALESCE_BYTES {
            self.spare = Some(buf);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(queue_bytes_max: usize) -> Conn {
        Conn::new(
            ConnKind::Client(ClientId(1)),
            "127.0.0.1:1".parse().unwrap(),
            Decoder::Raftline(FrameDecoder::new(1 << 20)),
            queue_bytes_max,
            Instant::now(),
        )
    }

    #[test]
    fn a_full_queue_refuses_and_keeps_its_size() {
        let now = Instant::now();
        let mut c = conn(100);
        c.enqueue(vec![1; 60], now).unwrap();
        assert_eq!(c.enqueue(vec![2; 41], now), Err(QueueRefusal::Full));
        assert_eq!(c.enqueue(vec![2; 101], now), Err(QueueRefusal::TooLarge));
        assert_eq!(c.queued_bytes(), 60);
        c.enqueue(vec![3; 40], now).unwrap();
        assert_eq!(c.queued_bytes(), 100);
    }

    #[test]
    fn small_frames_are_coalesced_in_order_and_partial_sends_resume() {
        let now = Instant::now();
        let mut c = conn(1 << 20);
        for i in 0..3u8 {
            c.enqueue(vec![i; 10], now).unwrap();
        }
        let buf = c.next_send().unwrap();
        assert_eq!(buf.len(), 30);
        assert_eq!(&buf[..], &[[0; 10], [1; 10], [2; 10]].concat()[..]);
        assert!(c.next_send().is_none(), "one send in flight at a time");
        let (buf, resume) = c.sent(buf, 0, 12, now).unwrap();
        assert_eq!((resume, c.queued_bytes()), (12, 18));
        assert!(c.sent(buf, 12, 18, now).is_none());
        assert!(c.is_quiet());
    }

    #[test]
    fn frames_encoded_in_place_share_one_buffer_and_a_refusal_leaves_nothing() {
        let now = Instant::now();
        let mut c = conn(100);
        let put = |c: &mut Conn, byte: u8, len: usize| {
            c.enqueue_with(now, |b: &mut Vec<u8>| {
                b.extend(std::iter::repeat_n(byte, len));
                Ok::<(), ()>(())
            })
        };
        put(&mut c, 1, 30).unwrap();
        put(&mut c, 2, 30).unwrap();
        assert_eq!(
            put(&mut c, 3, 41),
            Err(EnqueueError::Refused(QueueRefusal::Full))
        );
        assert_eq!(
            c.enqueue_with(now, |b: &mut Vec<u8>| {
                b.push(9);
                Err("cannot encode")
            }),
            Err(EnqueueError::Encode("cannot encode"))
        );
        assert_eq!(c.queued_bytes(), 60);
        let buf = c.next_send().unwrap();
        assert_eq!(
            &buf[..],
            &[[1; 30], [2; 30]].concat()[..],
            "one buffer, in order"
        );
        assert!(c.sent(buf, 0, 60, now).is_none());
        assert_eq!(
            put(&mut c, 4, 101),
            Err(EnqueueError::Refused(QueueRefusal::TooLarge))
        );
        assert!(
            c.is_quiet() && c.next_send().is_none(),
            "nothing left queued"
        );
    }

    #[test]
    fn tls_encrypts_a_large_frame_over_several_sends_and_credits_the_queue_as_each_completes() {
        use super::super::tls::testing::{handshake, TestCa};
        use super::super::tls::TlsSession;
        let now = Instant::now();
        let ca = TestCa::new();
        let mut server = TlsSession::server(&ca.peer_tls(2).server).unwrap();
        let mut c = conn(4 << 20);
        c.tls = Some(TlsSession::client(&ca.peer_tls(1).client, "raftline-node-2").unwrap());
        let frame: Vec<u8> = (0..(3 * COALESCE_BYTES + 10) as u32)
            .map(|i| i as u8)
            .collect();
        c.enqueue(frame.clone(), now).unwrap();
        handshake(c.tls.as_mut().unwrap(), &mut server).unwrap();
        let mut got = Vec::new();
        let mut sends = 0;
        while let Some(buf) = c.next_send() {
            sends += 1;
            assert!(buf.len() < COALESCE_BYTES + 4096, "one slice per send");
            let (before, len) = (c.queued_bytes(), buf.len());
            let (buf, resume) = c.sent(buf, 0, len / 2, now).expect("unfinished");
            assert_eq!(
                c.queued_bytes(),
                before,
                "credited only once all of it is out"
            );
            server.receive(&buf, |p| got.extend_from_slice(p)).unwrap();
            assert!(c.sent(buf, resume, len - resume, now).is_none());
            assert!(c.queued_bytes() < before);
        }
        assert_eq!(sends, 4);
        assert!(c.is_quiet());
        assert_eq!(got, frame, "in order, whole");
    }

    #[test]
    fn a_large_frame_is_sent_without_copying_others_into_it() {
        let now = Instant::now();
        let mut c = conn(1 << 20);
        c.enqueue(vec![7; COALESCE_BYTES], now).unwrap();
        c.enqueue(vec![8; 10], now).unwrap();
        assert_eq!(c.next_send().unwrap().len(), COALESCE_BYTES);
    }
}
