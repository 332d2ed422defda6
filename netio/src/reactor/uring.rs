//! The io_uring backend: every operation is an SQE, one `io_uring_enter` per loop turn.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring, Probe};
use raftline_pinning::Waker;
use socket2::{SockAddr, Socket};

use super::{Completion, SocketId};

/// Submission queue size; operations beyond it wait in `backlog` until the next turn.
const RING_ENTRIES: u32 = 256;
/// user_data of SQEs whose completion carries nothing (cancellations, the start-up probe).
const IGNORED_USER_DATA: u64 = u64::MAX;
/// user_data of the poll on the waker's eventfd.
const WAKER_USER_DATA: u64 = u64::MAX - 1;
/// How many turns `Drop` waits for cancelled operations before it leaks their buffers.
const DROP_DRAIN_TURNS_MAX: usize = 100;

pub(super) struct UringReactor {
    ring: IoUring,
    /// In-flight operations, indexed by their SQE's user_data. An operation (and the buffer it
    /// owns) stays here until its CQE is reaped: that is what keeps the kernel's pointers valid.
    ops: Vec<Option<Op>>,
    free_ops: Vec<usize>,
    /// SQEs that did not fit the submission queue; pushed at the start of the next turn.
    backlog: VecDeque<squeue::Entry>,
    sockets: HashMap<SocketId, UringSocket>,
    next_socket: u64,
    waker: Waker,
    cqes: Vec<(u64, i32)>,
}

struct UringSocket {
    socket: Socket,
    inflight: u32,
    /// Closed by the caller; the fd is closed once `inflight` reaches 0.
    closing: bool,
}

struct Op {
    socket: SocketId,
    kind: OpKind,
}

enum OpKind {
    Accept,
    /// Boxed: the kernel reads the address after submission, and the box does not move when
    /// `ops` grows.
    Connect(Box<SockAddr>),
    Recv(Vec<u8>),
    Send(Vec<u8>, usize),
}

impl UringReactor {
    pub(super) fn new(waker: Waker) -> io::Result<UringReactor> {
        // COOP_TASKRUN: the kernel does not interrupt this thread (an IPI, costly in a VM) to
        // run a completion's task work; it runs at the thread's next io_uring_enter, which the
        // loop makes every turn anyway. Older kernels (< 5.19) refuse the flag: plain ring.
        let ring = match IoUring::builder().setup_coop_taskrun().build(RING_ENTRIES) {
            Ok(ring) => ring,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::new(RING_ENTRIES)?,
            Err(e) => return Err(e),
        };
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring lacks IORING_FEAT_EXT_ARG (Linux 5.11+)",
            ));
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Accept::CODE, "accept"),
            (opcode::Connect::CODE, "connect"),
            (opcode::Recv::CODE, "recv"),
            (opcode::Send::CODE, "send"),
            (opcode::PollAdd::CODE, "poll_add"),
            (opcode::AsyncCancel::CODE, "async_cancel"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring does not support {name}"),
                ));
            }
        }
        let mut reactor = UringReactor {
            ring,
            ops: Vec::new(),
            free_ops: Vec::new(),
            backlog: VecDeque::new(),
            sockets: HashMap::new(),
            next_socket: 0,
            waker,
            cqes: Vec::new(),
        };
        // Some sandboxes allow io_uring_setup but refuse io_uring_enter: prove a round trip.
        reactor.push(opcode::Nop::new().build().user_data(IGNORED_USER_DATA));
        reactor.ring.submit_and_wait(1)?;
        reactor.ring.completion().for_each(drop);
        reactor.arm_waker();
        Ok(reactor)
    }

    pub(super) fn adopt(&mut self, socket: Socket) -> SocketId {
        let id = SocketId(self.next_socket);
        self.next_socket += 1;
        self.sockets.insert(
            id,
            UringSocket {
                socket,
                inflight: 0,
                closing: false,
            },
        );
        id
    }

    pub(super) fn socket(&self, id: SocketId) -> Option<&Socket> {
        self.sockets
            .get(&id)
            .filter(|s| !s.closing)
            .map(|s| &s.socket)
    }

    pub(super) fn accept(&mut self, listener: SocketId) {
        self.start(listener, OpKind::Accept);
    }

    pub(super) fn connect(&mut self, socket: Socket, addr: SocketAddr) -> SocketId {
        let id = self.adopt(socket);
        self.start(id, OpKind::Connect(Box::new(SockAddr::from(addr))));
        id
    }

    pub(super) fn recv(&mut self, socket: SocketId, buf: Vec<u8>) {
        self.start(socket, OpKind::Recv(buf));
    }

    pub(super) fn send(&mut self, socket: SocketId, buf: Vec<u8>, start: usize) {
        self.start(socket, OpKind::Send(buf, start));
    }

    pub(super) fn close(&mut self, id: SocketId) {
        let Some(entry) = self.sockets.get_mut(&id) else {
            return;
        };
        if entry.inflight == 0 {
            self.sockets.remove(&id);
            return;
        }
        entry.closing = true;
        // Fails harmlessly on a socket that never connected; cancellation covers that case.
        let _ = entry.socket.shutdown(std::net::Shutdown::Both);
        let cancels: Vec<u64> = self
            .ops
            .iter()
            .enumerate()
            .filter(|(_, op)| op.as_ref().is_some_and(|op| op.socket == id))
            .map(|(index, _)| index as u64)
            .collect();
        for user_data in cancels {
            self.push(
                opcode::AsyncCancel::new(user_data)
                    .build()
                    .user_data(IGNORED_USER_DATA),
            );
        }
    }

    pub(super) fn submit(&mut self) -> io::Result<()> {
        self.flush_backlog()?;
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(err) if is_transient_enter_error(&err) => Ok(()),
            Err(err) => Err(err),
        }
    }

    pub(super) fn wait(
        &mut self,
        timeout: Option<Duration>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        self.flush_backlog()?;
        let ready = !self.ring.completion().is_empty();
        let entered = match timeout {
            _ if ready => self.ring.submit(),
            Some(t) if t.is_zero() => self.ring.submit(),
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match entered {
            Ok(_) => {}
            Err(err) if is_transient_enter_error(&err) => {}
            Err(err) => return Err(err),
        }
        self.reap(out);
        Ok(())
    }

    fn start(&mut self, id: SocketId, kind: OpKind) {
        let Some(entry) = self.sockets.get_mut(&id).filter(|s| !s.closing) else {
            debug_assert!(false, "operation on a closed socket {id:?}");
            return;
        };
        entry.inflight += 1;
        let fd = types::Fd(entry.socket.as_raw_fd());
        let index = self.free_ops.pop().unwrap_or_else(|| {
            self.ops.push(None);
            self.ops.len() - 1
        });
        let op = self.ops[index].insert(Op { socket: id, kind });
        // The pointers below go into the kernel. SAFETY argument for every `unsafe` consumer of
        // this SQE (the push): the buffer / address lives on the heap, owned by `self.ops[index]`,
        // which is neither dropped nor reused until the CQE with user_data `index` is reaped
        // (`complete`), or `Drop` has waited for it; moving the `Op` does not move the heap data.
        let sqe = match &mut op.kind {
            OpKind::Accept => opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            OpKind::Connect(addr) => {
                opcode::Connect::new(fd, addr.as_ptr().cast(), addr.len()).build()
            }
            OpKind::Recv(buf) => {
                let spare = buf.spare_capacity_mut();
                opcode::Recv::new(fd, spare.as_mut_ptr().cast(), len_u32(spare.len())).build()
            }
            OpKind::Send(buf, start) => {
                let bytes = &buf[*start..];
                opcode::Send::new(fd, bytes.as_ptr(), len_u32(bytes.len()))
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
        };
        self.push(sqe.user_data(index as u64));
    }

    fn arm_waker(&mut self) {
        let fd = types::Fd(self.waker.fd());
        self.push(
            opcode::PollAdd::new(fd, libc::POLLIN as u32)
                .build()
                .user_data(WAKER_USER_DATA),
        );
    }

    fn push(&mut self, sqe: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push_back(sqe);
            return;
        }
        // SAFETY: every SQE built here points only into memory owned by `self.ops` (see
        // `start`) or into nothing (poll, cancel, nop).
        if unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.backlog.push_back(sqe);
        }
    }

    fn flush_backlog(&mut self) -> io::Result<()> {
        while let Some(sqe) = self.backlog.pop_front() {
            // SAFETY: as in `push`; the backlog holds SQEs built by `start`/`close`/`arm_waker`.
            if unsafe { self.ring.submission().push(&sqe) }.is_err() {
                self.backlog.push_front(sqe);
                match self.ring.submit() {
                    Ok(_) => {}
                    Err(err) if is_transient_enter_error(&err) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for (user_data, result) in cqes.drain(..) {
            match user_data {
                IGNORED_USER_DATA => {}
                WAKER_USER_DATA => {
                    self.waker.drain();
                    out.push(Completion::Woken);
                    self.arm_waker();
                }
                index => self.complete(index as usize, result, out),
            }
        }
        self.cqes = cqes;
    }

    fn complete(&mut self, index: usize, result: i32, out: &mut Vec<Completion>) {
        let op = self.ops[index].take().expect("a CQE for a live operation");
        self.free_ops.push(index);
        let entry = self
            .sockets
            .get_mut(&op.socket)
            .expect("an operation's socket lives until the operation completes");
        entry.inflight -= 1;
        if entry.closing {
            if matches!(op.kind, OpKind::Accept) && result >= 0 {
                // SAFETY: a fresh fd from the kernel that nothing else owns; dropped = closed.
                drop(unsafe { Socket::from_raw_fd(result) });
            }
            if entry.inflight == 0 {
                self.sockets.remove(&op.socket);
            }
            return;
        }
        if result == -libc::EAGAIN || result == -libc::EINTR {
            self.start(op.socket, op.kind);
            return;
        }
        let outcome = if result < 0 {
            Err(io::Error::from_raw_os_error(-result))
        } else {
            Ok(result as usize)
        };
        let socket = op.socket;
        out.push(match op.kind {
            OpKind::Accept => Completion::Accepted {
                listener: socket,
                result: outcome.and_then(|fd| self.adopt_accepted(fd as RawFd)),
            },
            OpKind::Connect(_) => Completion::Connected {
                socket,
                result: outcome.map(drop),
            },
            OpKind::Recv(mut buf) => {
                if let Ok(n) = outcome {
                    assert!(n <= buf.capacity() - buf.len(), "kernel overran the buffer");
                    // SAFETY: the kernel initialised `n` bytes of the spare capacity.
                    unsafe { buf.set_len(buf.len() + n) };
                }
                Completion::Received {
                    socket,
                    buf,
                    result: outcome,
                }
            }
            OpKind::Send(buf, start) => Completion::Sent {
                socket,
                buf,
                start,
                result: outcome,
            },
        });
    }

    fn adopt_accepted(&mut self, fd: RawFd) -> io::Result<(SocketId, SocketAddr)> {
        // SAFETY: a fresh fd from the kernel's accept that nothing else owns.
        let socket = unsafe { Socket::from_raw_fd(fd) };
        socket.set_tcp_nodelay(true)?;
        let addr = super::accepted_addr(&socket.peer_addr()?)?;
        Ok((self.adopt(socket), addr))
    }
}

impl Drop for UringReactor {
    /// Cancels every operation and waits for the kernel to let go of its buffers; if it will
    /// not within a bounded wait, the buffers are leaked rather than freed under the kernel.
    fn drop(&mut self) {
        let live: Vec<SocketId> = self.sockets.keys().copied().collect();
        for id in live {
            self.close(id);
        }
        for _ in 0..DROP_DRAIN_TURNS_MAX {
            if self.ops.iter().all(Option::is_none) {
                return;
            }
            let mut discarded = Vec::new();
            if self
                .wait(Some(Duration::from_millis(10)), &mut discarded)
                .is_err()
            {
                break;
            }
        }
        if self.ops.iter().any(Option::is_some) {
            tracing::error!("io_uring operations still in flight at drop; leaking their buffers");
            std::mem::forget(std::mem::take(&mut self.ops));
        }
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn is_transient_enter_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}
