//! A non-blocking producer over many leader connections, driven by one thread (epoll): the
//! load generator of `raftline bench cluster`, and any client that needs hundreds of
//! connections without hundreds of threads.
//!
//! Each connection keeps a window of appends in flight. The caller hands over ready-made
//! batches (`Arc<[u8]>`, so one encoded batch can be sent any number of times) and gets one
//! [`AppendDone`] per append, carrying the instant its bytes were first handed to the socket
//! and the instant its answer was decoded: exact per-append latency, without a thread per
//! connection competing for the cores it measures.
//!
//! Same guarantees as the blocking [`raftline_netio::client::Producer`]: at-least-once (a connection that
//! fails, times out or is told `NotLeader` is re-opened to the leader and every unanswered
//! append on it is resent in order), `Busy` re-queues only the refused append, refusals that
//! retrying cannot fix complete the append with the node's error. Finding a new leader is
//! blocking (bounded by `failover_timeout`): rare, and it stalls every connection of this
//! producer meanwhile, which is what a leader change does to them anyway.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftline_netio::client::{leader_address, ClientConfig, Error};
use raftline_netio::client_proto::{decode_response, encode_append, ClientError, Response};
use raftline_netio::frame::{FrameDecoder, FrameType};

/// Room left in a frame for an append's metadata beside its batch.
const APPEND_META_BYTES_MAX: usize = 256;
/// Most epoll events taken per wait.
const EVENTS_MAX: usize = 256;
/// How often the request timeouts of the appends in flight are checked.
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_millis(10);

/// The outcome of one append handed to a [`MultiProducer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendDone {
    /// The connection it was submitted on (0-based).
    pub connection: usize,
    /// The caller's tag, as given to [`MultiProducer::submit`].
    pub tag: u64,
    /// When its bytes were first handed to a socket (just before that write).
    pub sent_at: Instant,
    /// When its answer was decoded.
    pub answered_at: Instant,
    /// Times it was sent (more than 1 after a fail-over or `Busy`).
    pub attempts: u32,
    /// The base offset it was committed at, or why the node refused it (not retried).
    pub result: Result<u64, ClientError>,
}

/// One append owned by a connection.
struct Pending {
    request_id: u64,
    batch: Arc<[u8]>,
    tag: u64,
    attempts: u32,
    /// Position in the connection's byte stream just after its frame (while not yet written).
    frame_end: u64,
    first_sent_at: Option<Instant>,
}

/// One leader connection and its appends.
struct Conn {
    stream: Option<TcpStream>,
    decoder: FrameDecoder,
    /// Encoded frames not yet written, from `out_written`.
    out: Vec<u8>,
    out_written: usize,
    /// Bytes encoded / written on the current stream since it was opened.
    encoded_total: u64,
    written_total: u64,
    /// Appends whose frames are in `out` or on the wire, in send order.
    in_flight: VecDeque<Pending>,
    /// Appends waiting for window room, a pause to end, or a connection.
    queued: VecDeque<Pending>,
    /// No sends (Busy) or no reconnect (failure) before this.
    paused_until: Option<Instant>,
    watching_writable: bool,
}

impl Conn {
    fn new(config: &ClientConfig) -> Conn {
        Conn {
            stream: None,
            decoder: FrameDecoder::new(config.frame_payload_bytes_max),
            out: Vec::new(),
            out_written: 0,
            encoded_total: 0,
            written_total: 0,
            in_flight: VecDeque::new(),
            queued: VecDeque::new(),
            paused_until: None,
            watching_writable: false,
        }
    }

    fn unfinished(&self) -> usize {
        self.in_flight.len() + self.queued.len()
    }
}

/// A producer driving `connections` leader connections from the caller's thread.
///
/// Call [`submit`](MultiProducer::submit) to queue appends, then
/// [`poll`](MultiProducer::poll) in a loop: it writes what was submitted, waits for answers
/// (at most the timeout given) and returns the finished appends. Nothing happens between
/// calls: the caller's loop is the event loop.
pub struct MultiProducer {
    config: ClientConfig,
    epoll: OwnedFd,
    conns: Vec<Conn>,
    /// The leader's client address as last known (None: ask the cluster).
    leader: Option<String>,
    /// Connections with bytes to write or appends to move into their window.
    dirty: Vec<usize>,
    is_dirty: Vec<bool>,
    next_request_id: u64,
    events: Vec<libc::epoll_event>,
    last_timeout_scan: Instant,
}

impl MultiProducer {
    /// Finds the leader and opens `connections` connections to it (each with a window of
    /// `config.window_appends` appends, acknowledged per `config.ack`).
    pub fn connect(config: ClientConfig, connections: usize) -> Result<MultiProducer, Error> {
        assert!(connections > 0, "a producer needs at least one connection");
        assert!(
            config.window_appends > 0,
            "the append window must hold at least one append"
        );
        // SAFETY: plain syscall; the returned fd is checked and then owned.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Io {
                address: "epoll".to_string(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut producer = MultiProducer {
            conns: (0..connections).map(|_| Conn::new(&config)).collect(),
            config,
            epoll,
            leader: None,
            dirty: Vec::new(),
            is_dirty: vec![false; connections],
            next_request_id: 1,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX],
            last_timeout_scan: Instant::now(),
        };
        for i in 0..connections {
            producer.reconnect(i)?;
        }
        Ok(producer)
    }

    /// Number of connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Appends connection `connection` can take before its window is full.
    pub fn room(&self, connection: usize) -> usize {
        self.config
            .window_appends
            .saturating_sub(self.conns[connection].unfinished())
    }

    /// Appends submitted and not finished yet, over all connections.
    pub fn unfinished(&self) -> usize {
        self.conns.iter().map(Conn::unfinished).sum()
    }

    /// Queues an append of `batch` (bytes of `raftline_log::Batch`) on `connection`; it is
    /// written by the next [`poll`](MultiProducer::poll) if the window has room, else when it
    /// has. Submitting beyond the window is allowed (the append waits in the queue).
    pub fn submit(&mut self, connection: usize, batch: Arc<[u8]>, tag: u64) -> Result<(), Error> {
        let limit =
            (self.config.frame_payload_bytes_max as usize).saturating_sub(APPEND_META_BYTES_MAX);
        if batch.len() > limit {
            return Err(Error::Batch(raftline_log::BatchError::TooLarge {
                bytes: batch.len(),
                limit,
            }));
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        self.conns[connection].queued.push_back(Pending {
            request_id,
            batch,
            tag,
            attempts: 0,
            frame_end: 0,
            first_sent_at: None,
        });
        self.mark_dirty(connection);
        Ok(())
    }

    /// Writes what was submitted, waits up to `timeout` for answers (not at all if `done` holds
    /// appends the caller has not taken yet), and appends the finished appends to `done`. An error is final for
    /// the run (no leader within the fail-over timeout, an append sent `attempts_max` times, a
    /// connection-level refusal such as `WrongCluster`); unfinished appends stay queued.
    pub fn poll(&mut self, timeout: Duration, done: &mut Vec<AppendDone>) -> Result<(), Error> {
        self.pump_dirty()?;
        let wait = if !done.is_empty() {
            Duration::ZERO
        } else {
            self.next_wake().map_or(timeout, |at| {
                at.saturating_duration_since(Instant::now()).min(timeout)
            })
        };
        let ready = self.epoll_wait(wait)?;
        for e in 0..ready {
            let event = self.events[e];
            let i = event.u64 as usize;
            if event.events & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                self.read(i, done)?;
            }
            if event.events & libc::EPOLLOUT as u32 != 0 {
                self.mark_dirty(i);
            }
        }
        self.resume_paused();
        self.scan_timeouts()?;
        // Refill the windows the answers opened, in this same turn.
        self.pump_dirty()
    }

    /// Polls until every submitted append has finished or `timeout` passed; returns whether
    /// everything finished.
    pub fn flush(&mut self, timeout: Duration, done: &mut Vec<AppendDone>) -> Result<bool, Error> {
        let deadline = Instant::now() + timeout;
        while self.unfinished() > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.poll(deadline - now, done)?;
        }
        Ok(true)
    }

    fn mark_dirty(&mut self, i: usize) {
        if !self.is_dirty[i] {
            self.is_dirty[i] = true;
            self.dirty.push(i);
        }
    }

    /// The earliest pause end (Busy back-off or reconnect), if any.
    fn next_wake(&self) -> Option<Instant> {
        self.conns.iter().filter_map(|c| c.paused_until).min()
    }

    fn resume_paused(&mut self) {
        let now = Instant::now();
        for i in 0..self.conns.len() {
            if self.conns[i].paused_until.is_some_and(|at| at <= now) {
                self.conns[i].paused_until = None;
                self.mark_dirty(i);
            }
        }
    }

    /// For each dirty connection: reconnect if needed, move queued appends into the window and
    /// write.
    fn pump_dirty(&mut self) -> Result<(), Error> {
        while let Some(i) = self.dirty.pop() {
            self.is_dirty[i] = false;
            if self.conns[i].paused_until.is_some() {
                continue;
            }
            if self.conns[i].stream.is_none() {
                if self.conns[i].unfinished() == 0 {
                    continue;
                }
                self.reconnect(i)?;
            }
            self.fill_window(i)?;
            if let Err(why) = self.write(i) {
                self.fail(i, why, None);
            }
        }
        Ok(())
    }

    /// Encodes queued appends into the send buffer while the window has room.
    fn fill_window(&mut self, i: usize) -> Result<(), Error> {
        let (window, ack, cluster_id, attempts_max) = (
            self.config.window_appends,
            self.config.ack,
            self.config.cluster_id,
            self.config.attempts_max,
        );
        let conn = &mut self.conns[i];
        while conn.in_flight.len() < window {
            let Some(mut pending) = conn.queued.pop_front() else {
                break;
            };
            if pending.attempts >= attempts_max {
                let attempts = pending.attempts;
                pending.attempts = 0;
                conn.queued.push_front(pending);
                return Err(Error::AttemptsExhausted {
                    attempts,
                    last: "the append failed on every attempt".to_string(),
                });
            }
            pending.attempts += 1;
            encode_append(
                &mut conn.out,
                cluster_id,
                pending.request_id,
                ack,
                &pending.batch,
            )
            .map_err(|e| Error::Protocol {
                address: "(encoding)".to_string(),
                why: e.to_string(),
            })?;
            conn.encoded_total = conn.written_total + (conn.out.len() - conn.out_written) as u64;
            pending.frame_end = conn.encoded_total;
            conn.in_flight.push_back(pending);
        }
        Ok(())
    }

    /// Writes as much of the send buffer as the socket takes; stamps the appends whose last
    /// byte went out with the instant just before that write.
    fn write(&mut self, i: usize) -> Result<(), String> {
        let epoll = self.epoll.as_raw_fd();
        let conn = &mut self.conns[i];
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        while conn.out_written < conn.out.len() {
            let before = Instant::now();
            match stream.write(&conn.out[conn.out_written..]) {
                Ok(0) => return Err("the connection accepts no more bytes".to_string()),
                Ok(n) => {
                    conn.out_written += n;
                    conn.written_total += n as u64;
                    // Stamped in order: stop at the first (from the back) already stamped.
                    for pending in conn.in_flight.iter_mut().rev() {
                        if pending.first_sent_at.is_some() {
                            break;
                        }
                        if pending.frame_end <= conn.written_total {
                            pending.first_sent_at = Some(before);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !conn.watching_writable {
                        conn.watching_writable = true;
                        epoll_modify(epoll, stream, i, true).map_err(|e| e.to_string())?;
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        conn.out.clear();
        conn.out_written = 0;
        if conn.watching_writable {
            conn.watching_writable = false;
            epoll_modify(epoll, stream, i, false).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Reads what arrived on connection `i` and handles every whole answer.
    fn read(&mut self, i: usize, done: &mut Vec<AppendDone>) -> Result<(), Error> {
        let conn = &mut self.conns[i];
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        match conn.decoder.fill_from(stream) {
            Ok(0) => {
                self.fail(i, "the node closed the connection".to_string(), None);
                return Ok(());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(())
            }
            Err(e) => {
                self.fail(i, e.to_string(), None);
                return Ok(());
            }
        }
        loop {
            let frame = match self.conns[i].decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.fail(i, format!("protocol error: {e}"), None);
                    return Ok(());
                }
            };
            if frame.header.cluster_id != self.config.cluster_id {
                return Err(Error::Protocol {
                    address: self.leader.clone().unwrap_or_default(),
                    why: format!(
                        "the node belongs to cluster {}, not {}",
                        frame.header.cluster_id, self.config.cluster_id
                    ),
                });
            }
            if frame.header.frame_type == FrameType::Keepalive {
                continue;
            }
            let response = match decode_response(frame) {
                Ok(response) => response,
                Err(e) => {
                    self.fail(i, format!("protocol error: {e}"), None);
                    return Ok(());
                }
            };
            let answered_at = Instant::now();
            self.handle(i, response, answered_at, done)?;
            if self.conns[i].stream.is_none() {
                return Ok(());
            }
        }
    }

    /// Handles one answer on connection `i`.
    fn handle(
        &mut self,
        i: usize,
        response: Response,
        answered_at: Instant,
        done: &mut Vec<AppendDone>,
    ) -> Result<(), Error> {
        let address = self.leader.clone().unwrap_or_default();
        match response {
            Response::Appended {
                request_id,
                base_offset,
                ..
            } => self.complete(i, request_id, answered_at, Ok(base_offset), done),
            Response::Error {
                error: ClientError::NotLeader { leader_address, .. },
                ..
            } => self.fail(
                i,
                format!("{address} is no longer the leader"),
                Some(leader_address),
            ),
            Response::Error {
                request_id,
                error: ClientError::Busy,
            } => {
                // Not appended: only this append goes back, first in line, after a pause.
                let conn = &mut self.conns[i];
                if let Some(at) = conn
                    .in_flight
                    .iter()
                    .position(|p| p.request_id == request_id)
                {
                    let pending = conn.in_flight.remove(at).expect("position is in range");
                    conn.queued.push_front(pending);
                    conn.paused_until = Some(Instant::now() + self.config.backoff_min);
                }
            }
            Response::Error {
                error: ClientError::Unavailable { .. } | ClientError::Timeout,
                ..
            } => {
                self.fail(i, format!("{address}: unavailable or timed out"), None);
                self.conns[i].paused_until = Some(Instant::now() + self.config.backoff_min);
            }
            Response::Error {
                request_id: 0,
                error,
            } => return Err(Error::Refused { address, error }),
            Response::Error { request_id, error } => {
                self.complete(i, request_id, answered_at, Err(error), done)
            }
            other => {
                return Err(Error::Protocol {
                    address,
                    why: format!("unexpected answer to an append: {other:?}"),
                })
            }
        }
        Ok(())
    }

    fn complete(
        &mut self,
        i: usize,
        request_id: u64,
        answered_at: Instant,
        result: Result<u64, ClientError>,
        done: &mut Vec<AppendDone>,
    ) {
        let conn = &mut self.conns[i];
        // Answers come in order on one connection, so the match is almost always the front.
        let Some(at) = conn
            .in_flight
            .iter()
            .position(|p| p.request_id == request_id)
        else {
            return;
        };
        let pending = conn.in_flight.remove(at).expect("position is in range");
        debug_assert!(
            pending.first_sent_at.is_some(),
            "an answer to an append not yet written"
        );
        done.push(AppendDone {
            connection: i,
            tag: pending.tag,
            sent_at: pending.first_sent_at.unwrap_or(answered_at),
            answered_at,
            attempts: pending.attempts,
            result,
        });
        if !conn.queued.is_empty() {
            self.mark_dirty(i);
        }
    }

    /// Connection `i` failed: close it, put its unanswered appends back in front of its queue
    /// (in order: they are resent first) and reconnect on the next pump.
    fn fail(&mut self, i: usize, why: String, hint: Option<Option<String>>) {
        tracing::debug!(
            connection = i,
            why,
            "load connection failed; resending its appends"
        );
        match hint {
            Some(Some(address)) => self.leader = Some(address),
            _ => self.leader = None,
        }
        let conn = &mut self.conns[i];
        conn.stream = None;
        conn.out.clear();
        conn.out_written = 0;
        conn.encoded_total = 0;
        conn.written_total = 0;
        conn.watching_writable = false;
        conn.decoder = FrameDecoder::new(self.config.frame_payload_bytes_max);
        while let Some(mut pending) = conn.in_flight.pop_back() {
            pending.frame_end = 0;
            conn.queued.push_front(pending);
        }
        self.mark_dirty(i);
    }

    /// Opens connection `i` to the leader (found first if unknown).
    fn reconnect(&mut self, i: usize) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.failover_timeout;
        loop {
            let address = match &self.leader {
                Some(address) => address.clone(),
                None => {
                    let address = leader_address(&self.config)?;
                    self.leader = Some(address.clone());
                    address
                }
            };
            match open_nonblocking(&address, &self.config) {
                Ok(stream) => {
                    epoll_add(self.epoll.as_raw_fd(), &stream, i).map_err(|source| Error::Io {
                        address: address.clone(),
                        source,
                    })?;
                    self.conns[i].stream = Some(stream);
                    return Ok(());
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(Error::NoLeader {
                        addresses: self.config.bootstrap.join(","),
                        last: e.to_string(),
                    })
                }
                Err(_) => {
                    self.leader = None;
                    std::thread::sleep(self.config.backoff_min);
                }
            }
        }
    }

    /// Fails the connections whose oldest written append waited longer than the request timeout.
    fn scan_timeouts(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        if now < self.last_timeout_scan + TIMEOUT_SCAN_INTERVAL {
            return Ok(());
        }
        self.last_timeout_scan = now;
        let timeout = self.config.request_timeout;
        for i in 0..self.conns.len() {
            let late = self.conns[i]
                .in_flight
                .front()
                .and_then(|p| p.first_sent_at)
                .is_some_and(|sent| now.duration_since(sent) > timeout);
            if late {
                self.fail(i, format!("no answer within {timeout:?}"), None);
            }
        }
        Ok(())
    }

    fn epoll_wait(&mut self, wait: Duration) -> Result<usize, Error> {
        // Round up so a sub-millisecond wait does not become a busy loop of zero timeouts.
        let ms = if wait.is_zero() {
            0
        } else {
            wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        };
        loop {
            // SAFETY: `events` is a valid buffer of EVENTS_MAX entries owned by self.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    self.events.as_mut_ptr(),
                    EVENTS_MAX as i32,
                    ms,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error::Io {
                    address: "epoll".to_string(),
                    source: e,
                });
            }
        }
    }
}

/// Connects (blocking, bounded by the connect timeout) then switches to non-blocking.
fn open_nonblocking(address: &str, config: &ClientConfig) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
    for addr in address.to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, config.connect_timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                stream.set_nonblocking(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn epoll_add(epoll: i32, stream: &TcpStream, i: usize) -> io::Result<()> {
    epoll_ctl(epoll, libc::EPOLL_CTL_ADD, stream, i, false)
}

fn epoll_modify(epoll: i32, stream: &TcpStream, i: usize, writable: bool) -> io::Result<()> {
    epoll_ctl(epoll, libc::EPOLL_CTL_MOD, stream, i, writable)
}

fn epoll_ctl(epoll: i32, op: i32, stream: &TcpStream, i: usize, writable: bool) -> io::Result<()> {
    let mut interest = libc::EPOLLIN | libc::EPOLLRDHUP;
    if writable {
        interest |= libc::EPOLLOUT;
    }
    let mut event = libc::epoll_event {
        events: interest as u32,
        u64: i as u64,
    };
    // SAFETY: both descriptors are open (owned by the caller); `event` outlives the call.
    let r = unsafe { libc::epoll_ctl(epoll, op, stream.as_raw_fd(), &mut event) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl std::fmt::Debug for MultiProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiProducer")
            .field("connections", &self.conns.len())
            .field("leader", &self.leader)
            .field("unfinished", &self.unfinished())
            .finish()
    }
}
