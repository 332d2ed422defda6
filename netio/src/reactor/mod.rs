//! A small completion-based event loop for one thread: sockets and the thread's [`Waker`].
//!
//! The caller hands the reactor operations that own their buffers (`accept`, `connect`, `recv`
//! into a `Vec`'s spare capacity, `send` of a `Vec` from an offset) and collects
//! [`Completion`]s from [`Reactor::wait`], which also carries the buffers back. Two backends give
//! the same completions:
//! - **io_uring**: every operation is an SQE; one `io_uring_enter` per loop turn submits the
//!   batch and waits for completions (with the turn's timeout as an `EXT_ARG` timespec).
//! - **poll**: non-blocking sockets and level-triggered epoll; an operation is tried at once and,
//!   on EAGAIN, again when epoll reports readiness. Used where io_uring is refused.
//!
//! Contract (both backends): at most one operation of each kind (accept, connect, recv, send)
//! in flight per socket; a send may complete partially (the caller sends the rest); a recv of
//! `Ok(0)` is end of stream; errors are completions, never panics. [`Reactor::close`] ends a
//! socket at once from the caller's point of view: no completion for it is ever delivered again,
//! and the reactor frees its buffers and closes the fd once the kernel has let go of them.

mod poll;
mod uring;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftline_pinning::Waker;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Which backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// io_uring if the kernel allows it, else poll with one logged warning.
    #[default]
    Auto,
    /// io_uring or an error (no fallback).
    Uring,
    /// The portable epoll backend.
    Poll,
}

/// The backend a reactor actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// io_uring.
    Uring,
    /// epoll readiness turned into completions.
    Poll,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Uring => "io_uring",
            BackendKind::Poll => "poll",
        })
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "uring" | "io_uring" => Ok(Backend::Uring),
            "poll" => Ok(Backend::Poll),
            other => Err(format!(
                "unknown network backend {other:?}: use auto, uring or poll"
            )),
        }
    }
}

/// A socket owned by a reactor; ids are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId(u64);

/// A finished operation, with the buffer it owned.
#[derive(Debug)]
pub enum Completion {
    /// `accept(listener)` finished: a new connected socket (already a reactor socket) and the
    /// remote address.
    Accepted {
        /// The listening socket.
        listener: SocketId,
        /// The accepted socket, or why accepting failed.
        result: io::Result<(SocketId, SocketAddr)>,
    },
    /// `connect` finished.
    Connected {
        /// The connecting socket (close it on error).
        socket: SocketId,
        /// Whether the connection is established.
        result: io::Result<()>,
    },
    /// `recv` finished: `buf` grew by the bytes received; `Ok(0)` is end of stream.
    Received {
        /// The socket.
        socket: SocketId,
        /// The buffer handed in, its length extended by what arrived.
        buf: Vec<u8>,
        /// Bytes received or the error (e.g. ECONNRESET).
        result: io::Result<usize>,
    },
    /// `send` finished, possibly partially: `buf[start..start + n]` went out.
    Sent {
        /// The socket.
        socket: SocketId,
        /// The buffer handed in.
        buf: Vec<u8>,
        /// Offset the send started at.
        start: usize,
        /// Bytes sent or the error (e.g. EPIPE, ECONNRESET).
        result: io::Result<usize>,
    },
    /// The thread's [`Waker`] was woken (already acknowledged by the reactor).
    Woken,
}

impl Completion {
    fn socket(&self) -> Option<SocketId> {
        match self {
            Completion::Accepted { listener, .. } => Some(*listener),
            Completion::Connected { socket, .. }
            | Completion::Received { socket, .. }
            | Completion::Sent { socket, .. } => Some(*socket),
            Completion::Woken => None,
        }
    }
}

/// One thread's event loop over sockets and its waker.
pub struct Reactor {
    backend: Inner,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("backend", &self.kind())
            .finish()
    }
}

enum Inner {
    /// Boxed: the ring's bookkeeping is large and the enum is moved around once.
    Uring(Box<uring::UringReactor>),
    Poll(poll::PollReactor),
}

/// Logged once per process: every Net of a process falls back for the same reason.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl Reactor {
    /// A reactor on `backend` that reports wakes of `waker` as [`Completion::Woken`].
    pub fn new(backend: Backend, waker: Waker) -> io::Result<Reactor> {
        let backend = match backend {
            Backend::Poll => Inner::Poll(poll::PollReactor::new(waker)?),
            Backend::Uring => Inner::Uring(Box::new(uring::UringReactor::new(waker)?)),
            Backend::Auto => match uring::UringReactor::new(waker.clone()) {
                Ok(r) => Inner::Uring(Box::new(r)),
                Err(err) => {
                    if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            "io_uring unavailable ({err}); networking falls back to epoll"
                        );
                    }
                    Inner::Poll(poll::PollReactor::new(waker)?)
                }
            },
        };
        Ok(Reactor { backend })
    }

    /// The backend in use.
    pub fn kind(&self) -> BackendKind {
        match self.backend {
            Inner::Uring(_) => BackendKind::Uring,
            Inner::Poll(_) => BackendKind::Poll,
        }
    }

    /// Binds a listening TCP socket to `addr` (port 0: the OS picks; see [`Reactor::local_addr`]).
    pub fn listen(&mut self, addr: SocketAddr) -> io::Result<SocketId> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // A restarted node rebinds its port while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&SockAddr::from(addr))?;
        socket.listen(1024)?;
        Ok(match &mut self.backend {
            Inner::Uring(r) => r.adopt(socket),
            Inner::Poll(r) => r.adopt(socket)?,
        })
    }

    /// The local address of a socket.
    pub fn local_addr(&self, socket: SocketId) -> io::Result<SocketAddr> {
        let sock = match &self.backend {
            Inner::Uring(r) => r.socket(socket),
            Inner::Poll(r) => r.socket(socket),
        }
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such socket"))?;
        sock.local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an inet socket"))
    }

    /// Starts accepting one connection on `listener`.
    pub fn accept(&mut self, listener: SocketId) {
        match &mut self.backend {
            Inner::Uring(r) => r.accept(listener),
            Inner::Poll(r) => r.accept(listener),
        }
    }

    /// Creates a socket and starts connecting it to `addr`; completes with `Connected`.
    pub fn connect(&mut self, addr: SocketAddr) -> io::Result<SocketId> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_tcp_nodelay(true)?;
        match &mut self.backend {
            Inner::Uring(r) => Ok(r.connect(socket, addr)),
            Inner::Poll(r) => r.connect(socket, addr),
        }
    }

    /// Receives into the spare capacity of `buf` (which must have some).
    pub fn recv(&mut self, socket: SocketId, buf: Vec<u8>) {
        assert!(buf.capacity() > buf.len(), "recv needs spare capacity");
        match &mut self.backend {
            Inner::Uring(r) => r.recv(socket, buf),
            Inner::Poll(r) => r.recv(socket, buf),
        }
    }

    /// Sends `buf[start..]` (which must not be empty); may complete partially.
    pub fn send(&mut self, socket: SocketId, buf: Vec<u8>, start: usize) {
        assert!(start < buf.len(), "send needs bytes to send");
        match &mut self.backend {
            Inner::Uring(r) => r.send(socket, buf, start),
            Inner::Poll(r) => r.send(socket, buf, start),
        }
    }

    /// Closes `socket`: its operations are cancelled and never complete to the caller.
    pub fn close(&mut self, socket: SocketId) {
        match &mut self.backend {
            Inner::Uring(r) => r.close(socket),
            Inner::Poll(r) => r.close(socket),
        }
    }

    /// Submits the operations queued so far without waiting for any completion (the next
    /// [`Reactor::wait`] reaps them). A no-op for the poll backend, which tries sends at once.
    pub fn submit(&mut self) -> io::Result<()> {
        match &mut self.backend {
            Inner::Uring(r) => r.submit(),
            Inner::Poll(_) => Ok(()),
        }
    }

    /// Runs one loop turn: submits what was queued, waits up to `timeout` (`None`: until
    /// something completes) and appends the completions to `out`.
    pub fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        match &mut self.backend {
            Inner::Uring(r) => r.wait(timeout, out),
            Inner::Poll(r) => r.wait(timeout, out),
        }
    }
}

fn accepted_addr(addr: &SockAddr) -> io::Result<SocketAddr> {
    addr.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "accepted a non-inet socket"))
}
