//! The reactor's completion contract, run against both backends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use raftline_netio::reactor::{Backend, BackendKind, Completion, Reactor, SocketId};
use raftline_pinning::Waker;

/// Bounds how long a broken build takes to fail; never reached when things work.
const DEADLINE: Duration = Duration::from_secs(20);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn reactor(backend: Backend) -> (Reactor, Waker) {
    let waker = Waker::new().unwrap();
    let reactor = Reactor::new(backend, waker.clone()).unwrap();
    (reactor, waker)
}

/// Turns the loop until `pick` accepts a completion; other completions go to `others`.
fn next<T>(
    reactor: &mut Reactor,
    others: &mut Vec<Completion>,
    mut pick: impl FnMut(&mut Completion) -> Option<T>,
) -> T {
    let start = Instant::now();
    let mut batch = Vec::new();
    loop {
        for pos in 0..others.len() {
            if let Some(found) = pick(&mut others[pos]) {
                others.remove(pos);
                return found;
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no matching completion; saw {others:?}"
        );
        reactor
            .wait(Some(Duration::from_millis(100)), &mut batch)
            .unwrap();
        others.append(&mut batch);
    }
}

/// A connected pair: (client socket, server-side socket).
fn connected_pair(reactor: &mut Reactor, pending: &mut Vec<Completion>) -> (SocketId, SocketId) {
    let listener = reactor.listen(loopback()).unwrap();
    let addr = reactor.local_addr(listener).unwrap();
    reactor.accept(listener);
    let client = reactor.connect(addr).unwrap();
    next(reactor, pending, |c| match c {
        Completion::Connected { socket, result } if *socket == client => {
            result.as_ref().unwrap();
            Some(())
        }
        _ => None,
    });
    let server = next(reactor, pending, |c| match c {
        Completion::Accepted { result, .. } => Some(result.as_ref().unwrap().0),
        _ => None,
    });
    (client, server)
}

fn recv_exactly(
    reactor: &mut Reactor,
    pending: &mut Vec<Completion>,
    socket: SocketId,
    len: usize,
) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < len {
        reactor.recv(socket, Vec::with_capacity(64 << 10));
        let buf = next(reactor, pending, |c| match c {
            Completion::Received {
                socket: s,
                buf,
                result,
            } if *s == socket => {
                assert!(*result.as_ref().unwrap() > 0, "unexpected end of stream");
                Some(std::mem::take(buf))
            }
            _ => None,
        });
        got.extend_from_slice(&buf);
    }
    got
}

fn each_backend(test: impl Fn(Backend)) {
    for backend in [Backend::Uring, Backend::Poll] {
        eprintln!("backend {backend:?}");
        test(backend);
    }
}

#[test]
fn bytes_sent_arrive_in_order_on_both_backends() {
    each_backend(|backend| {
        let (mut reactor, _) = reactor(backend);
        let mut pending = Vec::new();
        let (client, server) = connected_pair(&mut reactor, &mut pending);
        // Larger than any socket buffer: the sends complete partially and are resumed.
        let data: Vec<u8> = (0..8 << 20).map(|i: u32| (i % 251) as u8).collect();
        let total = data.len();
        reactor.send(client, data.clone(), 0);
        let mut received = Vec::new();
        let mut sent = 0;
        reactor.recv(server, Vec::with_capacity(256 << 10));
        let mut batch = Vec::new();
        let start_time = Instant::now();
        while received.len() < total || sent < total {
            assert!(
                start_time.elapsed() < DEADLINE,
                "stalled at {sent} sent, {} received",
                received.len()
            );
            reactor
                .wait(Some(Duration::from_millis(100)), &mut batch)
                .unwrap();
            for c in batch.drain(..) {
                match c {
                    Completion::Sent {
                        buf, start, result, ..
                    } => {
                        sent = start + result.unwrap();
                        if sent < buf.len() {
                            reactor.send(client, buf, sent);
                        }
                    }
                    Completion::Received {
                        mut buf, result, ..
                    } => {
                        assert!(result.unwrap() > 0);
                        received.extend_from_slice(&buf);
                        if received.len() < total {
                            buf.clear();
                            reactor.recv(server, buf);
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert_eq!(sent, total);
        assert_eq!(received, data);
    });
}

#[test]
fn peer_close_is_end_of_stream_and_later_sends_fail() {
    each_backend(|backend| {
        let (mut reactor, _) = reactor(backend);
        let mut pending = Vec::new();
        let (client, server) = connected_pair(&mut reactor, &mut pending);
        reactor.send(client, b"last words".to_vec(), 0);
        assert_eq!(
            recv_exactly(&mut reactor, &mut pending, server, 10),
            b"last words"
        );
        reactor.close(client);
        reactor.recv(server, Vec::with_capacity(16));
        let n = next(&mut reactor, &mut pending, |c| match c {
            Completion::Received { result, .. } => Some(*result.as_ref().unwrap()),
            _ => None,
        });
        assert_eq!(n, 0, "end of stream");
        // The peer is gone: sending eventually fails (EPIPE / ECONNRESET), never panics.
        let start = Instant::now();
        loop {
            reactor.send(server, vec![0; 1024], 0);
            let result = next(&mut reactor, &mut pending, |c| match c {
                Completion::Sent { result, .. } => {
                    Some(result.as_ref().map(|n| *n).map_err(|e| e.kind()))
                }
                _ => None,
            });
            if result.is_err() {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "sends to a closed peer keep succeeding"
            );
        }
    });
}

#[test]
fn a_closed_socket_never_completes_again() {
    each_backend(|backend| {
        let (mut reactor, _) = reactor(backend);
        let mut pending = Vec::new();
        let (client, server) = connected_pair(&mut reactor, &mut pending);
        reactor.recv(server, Vec::with_capacity(16));
        reactor.close(server);
        reactor.send(client, b"after close".to_vec(), 0);
        // The client's send completes; nothing for the closed server socket ever shows up.
        next(&mut reactor, &mut pending, |c| match c {
            Completion::Sent { socket, .. } if *socket == client => Some(()),
            _ => None,
        });
        let mut batch = Vec::new();
        reactor
            .wait(Some(Duration::from_millis(50)), &mut batch)
            .unwrap();
        pending.append(&mut batch);
        assert!(
            pending
                .iter()
                .all(|c| !matches!(c, Completion::Received { socket, .. } if *socket == server)),
            "{pending:?}"
        );
    });
}

#[test]
fn connecting_to_a_closed_port_fails_cleanly() {
    each_backend(|backend| {
        let (mut reactor, _) = reactor(backend);
        let mut pending = Vec::new();
        let listener = reactor.listen(loopback()).unwrap();
        let addr = reactor.local_addr(listener).unwrap();
        reactor.close(listener);
        let socket = reactor.connect(addr).unwrap();
        let err = next(&mut reactor, &mut pending, |c| match c {
            Completion::Connected { socket: s, result } if *s == socket => {
                Some(result.as_ref().unwrap_err().kind())
            }
            _ => None,
        });
        assert_eq!(err, std::io::ErrorKind::ConnectionRefused);
        reactor.close(socket);
    });
}

#[test]
fn a_wake_from_another_thread_completes_a_blocked_wait() {
    each_backend(|backend| {
        let (mut reactor, waker) = reactor(backend);
        let remote = waker.clone();
        let thread = std::thread::spawn(move || remote.wake());
        let mut batch = Vec::new();
        // No timeout: only the wake can end this wait.
        while batch.is_empty() {
            reactor.wait(None, &mut batch).unwrap();
        }
        assert!(matches!(batch[..], [Completion::Woken]), "{batch:?}");
        thread.join().unwrap();
        // Acknowledged: a second wake is delivered again.
        waker.wake();
        batch.clear();
        while batch.is_empty() {
            reactor.wait(None, &mut batch).unwrap();
        }
        assert!(matches!(batch[..], [Completion::Woken]), "{batch:?}");
    });
}

#[test]
fn auto_picks_a_working_backend() {
    let (reactor, _) = reactor(Backend::Auto);
    assert!(matches!(
        reactor.kind(),
        BackendKind::Uring | BackendKind::Poll
    ));
}

#[test]
fn submit_hands_a_send_to_the_kernel_before_the_next_wait() {
    each_backend(|backend| {
        let (mut reactor, _waker) = reactor(backend);
        let mut pending = Vec::new();
        let listener = std::net::TcpListener::bind(loopback()).unwrap();
        let client = reactor.connect(listener.local_addr().unwrap()).unwrap();
        next(&mut reactor, &mut pending, |c| match c {
            Completion::Connected { socket, result } if *socket == client => {
                result.as_ref().unwrap();
                Some(())
            }
            _ => None,
        });
        let (mut peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(DEADLINE)).unwrap();
        reactor.send(client, b"early".to_vec(), 0);
        reactor.submit().unwrap();
        // No `wait` in between: the bytes are read by a plain blocking socket.
        let mut got = [0u8; 5];
        std::io::Read::read_exact(&mut peer, &mut got).unwrap();
        assert_eq!(&got, b"early", "{backend:?}");
        let sent = next(&mut reactor, &mut pending, |c| match c {
            Completion::Sent { result, .. } => Some(*result.as_ref().unwrap()),
            _ => None,
        });
        assert_eq!(sent, 5);
    });
}
