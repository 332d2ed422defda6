//! The portable backend: non-blocking sockets, level-triggered epoll, completions emulated by
//! trying each operation at once and again whenever epoll reports the socket ready.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use raftline_pinning::Waker;
use socket2::{SockAddr, Socket};

use super::{Completion, SocketId};

/// epoll token of the waker's eventfd (socket tokens are their ids, which never get this high).
const WAKER_TOKEN: u64 = u64::MAX;
/// Readiness events taken from the kernel per turn.
const EVENTS_PER_TURN_MAX: usize = 256;

pub(super) struct PollReactor {
    epoll: OwnedFd,
    sockets: HashMap<SocketId, PollSocket>,
    next_socket: u64,
    /// Completions already known (operations that finished at once), handed out next turn.
    ready: Vec<Completion>,
    waker: Waker,
    events: Vec<libc::epoll_event>,
    /// An epoll_ctl failure (ENOMEM, watch limit): reported by the next `wait`.
    failed: Option<io::Error>,
    /// Sockets whose pending operations changed this turn.
    dirty: Vec<SocketId>,
}

struct PollSocket {
    socket: Socket,
    accepting: bool,
    connecting: bool,
    recv: Option<Vec<u8>>,
    send: Option<(Vec<u8>, usize)>,
    /// Events registered with epoll; 0 = not registered (a socket nobody waits on must not
    /// report a level-triggered hang-up every turn).
    interest: u32,
    /// Listed in `PollReactor::dirty`: interest to be brought up to date before epoll_wait.
    dirty: bool,
}

impl PollReactor {
    pub(super) fn new(waker: Waker) -> io::Result<PollReactor> {
        // SAFETY: no memory arguments; the result is checked before use.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(raw) };
        epoll_ctl(
            &epoll,
            libc::EPOLL_CTL_ADD,
            waker.fd(),
            libc::EPOLLIN as u32,
            WAKER_TOKEN,
        )?;
        Ok(PollReactor {
            epoll,
            sockets: HashMap::new(),
            next_socket: 0,
            ready: Vec::new(),
            waker,
            events: Vec::with_capacity(EVENTS_PER_TURN_MAX),
            failed: None,
            dirty: Vec::new(),
        })
    }

    pub(super) fn adopt(&mut self, socket: Socket) -> io::Result<SocketId> {
        socket.set_nonblocking(true)?;
        let id = SocketId(self.next_socket);
        self.next_socket += 1;
        self.sockets.insert(
            id,
            PollSocket {
                socket,
                accepting: false,
                connecting: false,
                recv: None,
                send: None,
                interest: 0,
                dirty: false,
            },
        );
        Ok(id)
    }

    pub(super) fn socket(&self, id: SocketId) -> Option<&Socket> {
        self.sockets.get(&id).map(|s| &s.socket)
    }

    pub(super) fn accept(&mut self, listener: SocketId) {
        if let Some(entry) = self.live(listener) {
            debug_assert!(!entry.accepting, "one accept at a time");
            entry.accepting = true;
            self.mark_dirty(listener);
        }
    }

    pub(super) fn connect(&mut self, socket: Socket, addr: SocketAddr) -> io::Result<SocketId> {
        let id = self.adopt(socket)?;
        let entry = self.sockets.get_mut(&id).expect("just adopted");
        match entry.socket.connect(&SockAddr::from(addr)) {
            Ok(()) => self.ready.push(Completion::Connected {
                socket: id,
                result: Ok(()),
            }),
            Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {
                entry.connecting = true;
                self.mark_dirty(id);
            }
            Err(err) => self.ready.push(Completion::Connected {
                socket: id,
                result: Err(err),
            }),
        }
        Ok(id)
    }

    pub(super) fn recv(&mut self, socket: SocketId, buf: Vec<u8>) {
        if let Some(entry) = self.live(socket) {
            debug_assert!(entry.recv.is_none(), "one recv at a time");
            // Not tried now: most recvs are re-armed right after one completed and would hit
            // EAGAIN; level-triggered epoll reports the socket at once if bytes are waiting.
            entry.recv = Some(buf);
            self.mark_dirty(socket);
        }
    }

    pub(super) fn send(&mut self, socket: SocketId, buf: Vec<u8>, start: usize) {
        if let Some(entry) = self.live(socket) {
            debug_assert!(entry.send.is_none(), "one send at a time");
            entry.send = Some((buf, start));
            self.progress(socket, 0);
        }
    }

    pub(super) fn close(&mut self, id: SocketId) {
        // Dropping the socket closes the fd, which also removes it from the epoll set.
        if self.sockets.remove(&id).is_none() {
            return;
        }
        let mut orphans = Vec::new();
        self.ready.retain(|c| {
            if c.socket() != Some(id) {
                return true;
            }
            if let Completion::Accepted {
                result: Ok((accepted, _)),
                ..
            } = c
            {
                orphans.push(*accepted);
            }
            false
        });
        for orphan in orphans {
            self.sockets.remove(&orphan);
        }
    }

    pub(super) fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        self.apply_interest();
        if let Some(err) = self.failed.take() {
            return Err(err);
        }
        let timeout_ms = if self.ready.is_empty() {
            timeout_ms(timeout)
        } else {
            0
        };
        self.events.clear();
        // SAFETY: the kernel writes at most `capacity` events into the vector's buffer.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.capacity() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            // SAFETY: the kernel initialised the first `n` events.
            unsafe { self.events.set_len(n as usize) };
        }
        let events = std::mem::take(&mut self.events);
        for event in &events {
            let (token, mask) = (event.u64, event.events);
            if token == WAKER_TOKEN {
                self.waker.drain();
                self.ready.push(Completion::Woken);
            } else {
                self.progress(SocketId(token), mask);
            }
        }
        self.events = events;
        out.append(&mut self.ready);
        Ok(())
    }

    fn live(&mut self, id: SocketId) -> Option<&mut PollSocket> {
        let entry = self.sockets.get_mut(&id);
        debug_assert!(entry.is_some(), "operation on a closed socket {id:?}");
        entry
    }

    /// Tries the pending operations of `id` that `mask` (what epoll reported) may have made
    /// ready; a send is also tried with mask 0, when it is submitted.
    fn progress(&mut self, id: SocketId, mask: u32) {
        let Some(entry) = self.sockets.get_mut(&id) else {
            return;
        };
        let readable = mask & (libc::EPOLLIN | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        let mut accepted = None;
        if entry.accepting && readable {
            if let Some(result) = try_accept(&entry.socket) {
                entry.accepting = false;
                accepted = Some(result);
            }
        }
        let writable = mask & (libc::EPOLLOUT | libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0;
        if entry.connecting && writable {
            entry.connecting = false;
            let result = match entry.socket.take_error() {
                Ok(None) => Ok(()),
                Ok(Some(err)) | Err(err) => Err(err),
            };
            self.ready
                .push(Completion::Connected { socket: id, result });
        }
        if let Some(mut buf) = entry.recv.take_if(|_| readable) {
            match retry_interrupted(|| entry.socket.recv(buf.spare_capacity_mut())) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => entry.recv = Some(buf),
                result => {
                    if let Ok(n) = result {
                        // SAFETY: recv initialised `n` bytes of the spare capacity.
                        unsafe { buf.set_len(buf.len() + n) };
                    }
                    self.ready.push(Completion::Received {
                        socket: id,
                        buf,
                        result,
                    });
                }
            }
        }
        if let Some((buf, start)) = entry.send.take() {
            let sent = retry_interrupted(|| {
                entry
                    .socket
                    .send_with_flags(&buf[start..], libc::MSG_NOSIGNAL)
            });
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    entry.send = Some((buf, start))
                }
                result => self.ready.push(Completion::Sent {
                    socket: id,
                    buf,
                    start,
                    result,
                }),
            }
        }
        if let Some(result) = accepted {
            let result = result.and_then(|(socket, addr)| {
                socket.set_tcp_nodelay(true)?;
                let addr = super::accepted_addr(&addr)?;
                Ok((self.adopt(socket)?, addr))
            });
            self.ready.push(Completion::Accepted {
                listener: id,
                result,
            });
        }
        self.mark_dirty(id);
    }

    /// Interest changes are applied once per turn, just before epoll_wait: a recv that
    /// completes and is re-armed within one turn costs no epoll_ctl.
    fn mark_dirty(&mut self, id: SocketId) {
        if let Some(entry) = self.sockets.get_mut(&id) {
            if !entry.dirty {
                entry.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn apply_interest(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &id in &dirty {
            self.update_interest(id);
        }
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn update_interest(&mut self, id: SocketId) {
        let Some(entry) = self.sockets.get_mut(&id) else {
            return;
        };
        entry.dirty = false;
        let mut wanted = 0;
        if entry.accepting || entry.recv.is_some() {
            wanted |= libc::EPOLLIN as u32;
        }
        if entry.connecting || entry.send.is_some() {
            wanted |= libc::EPOLLOUT as u32;
        }
        if wanted == entry.interest {
            return;
        }
        let op = match (entry.interest, wanted) {
            (0, _) => libc::EPOLL_CTL_ADD,
            (_, 0) => libc::EPOLL_CTL_DEL,
            _ => libc::EPOLL_CTL_MOD,
        };
        match epoll_ctl(&self.epoll, op, entry.socket.as_raw_fd(), wanted, id.0) {
            Ok(()) => entry.interest = wanted,
            Err(err) => self.failed = Some(err),
        }
    }
}

/// One accept; `None` while no connection is waiting. Aborted handshakes are skipped.
fn try_accept(listener: &Socket) -> Option<io::Result<(Socket, SockAddr)>> {
    loop {
        match listener.accept() {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return None,
            Err(err)
                if err.kind() == io::ErrorKind::Interrupted
                    || err.raw_os_error() == Some(libc::ECONNABORTED) => {}
            result => return Some(result),
        }
    }
}

fn retry_interrupted(mut op: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match op() {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

fn epoll_ctl(
    epoll: &OwnedFd,
    op: libc::c_int,
    fd: RawFd,
    events: u32,
    token: u64,
) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `event` lives across the call; the kernel copies it.
    if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// epoll's timeout in ms, rounded up so a sub-millisecond deadline does not spin.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(t) => t
            .as_nanos()
            .div_ceil(1_000_000)
            .min(libc::c_int::MAX as u128) as libc::c_int,
    }
}
